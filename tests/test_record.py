"""The model record (config.json's `hsrm` block) and the one loader that reads it (issue 16)."""

from __future__ import annotations

import json
import shutil

import pytest

from hsrm.record import FORMAT_VERSION, ModelRecord, RecordError, read_record, reward_statistics, write_record

# What `hsrm train` wrote on main at 816971a for a five-attribute regression model: no format_version.
OLD_BLOCK = {
    "objective": "regression",
    "attributes": ["helpfulness", "correctness", "coherence", "complexity", "verbosity"],
    "attribute_weights": [0.3, 0.2, 0.1, 0.1, -0.4],
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "init_from": None,
    "train_data": "nvidia/HelpSteer2",
    "max_length": 64,
    "reward_stats_on": "validation",
    "reward_mean": 1.25,
    "reward_std": 0.5,
    "eval_metrics": {"eval_loss": 0.7},
    "lora": False,
}


def with_block(model_dir, folder, block):
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["hsrm"] = block
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def five_output_dir(tmp_path_factory, tiny_tokenizer):
    from hsrm.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("five"), num_labels=5, seed=2, tokenizer=tiny_tokenizer)


def test_a_folder_written_by_the_previous_main_reads_and_scores_with_its_weights(tmp_path, five_output_dir):
    import torch

    from hsrm.scoring import RewardScorer

    folder = with_block(five_output_dir, tmp_path / "old", OLD_BLOCK)
    record = read_record(folder)
    assert record.format_version == 0 and record.attribute_weights == OLD_BLOCK["attribute_weights"]
    assert record.max_length == 64 and record.reward_mean == 1.25 and record.init_from is None
    scorer = RewardScorer(str(folder))
    assert scorer.attribute_weights == OLD_BLOCK["attribute_weights"] and scorer.max_length == 64
    outputs = scorer.score_ids([[5, 6, 7, 8]], all_outputs=True)
    expected = outputs @ torch.tensor(OLD_BLOCK["attribute_weights"])
    assert scorer.score_ids([[5, 6, 7, 8]]).item() == pytest.approx(expected.item(), abs=1e-6)


def test_write_keeps_unknown_keys_and_every_other_config_key(tmp_path, tiny_model_dir):
    folder = with_block(tiny_model_dir, tmp_path / "m", {"objective": "bt", "note_from_a_later_hsrm": {"x": 1}})
    before = json.loads((folder / "config.json").read_text())
    record = read_record(folder)
    assert record.extra == {"note_from_a_later_hsrm": {"x": 1}}
    write_record(folder, ModelRecord(**{**record.__dict__, "reward_mean": 0.5, "reward_std": 2.0}))
    after = json.loads((folder / "config.json").read_text())
    assert {k: v for k, v in after.items() if k != "hsrm"} == {k: v for k, v in before.items() if k != "hsrm"}
    assert after["hsrm"] == {
        "objective": "bt",
        "note_from_a_later_hsrm": {"x": 1},
        "reward_mean": 0.5,
        "reward_std": 2.0,
        "format_version": FORMAT_VERSION,
    }


@pytest.mark.parametrize(
    "block, message",
    [
        ({"attribute_weights": "abc"}, "hsrm.attribute_weights must be a list of finite numbers, got 'abc'"),
        ({"attribute_weights": [1, float("nan")]}, "attribute_weights must be a list of finite numbers"),
        ({"max_length": -5}, "hsrm.max_length must be a positive whole number"),
        ({"objective": "sigmoid"}, "hsrm.objective must be one of"),
        ({"reward_std": -1.0}, "reward_std must be a finite number ≥ 0"),
        ({"attributes": ["a", "b"], "attribute_weights": [1.0]}, "1 attribute_weights for 2 attributes"),
        ({"format_version": FORMAT_VERSION + 1}, "written by a newer hsrm"),
        ("not a mapping", "the hsrm block must be a mapping"),
    ],
)
def test_a_damaged_block_is_refused_with_the_field_named(tmp_path, tiny_model_dir, block, message):
    folder = with_block(tiny_model_dir, tmp_path / "m", block)
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_record(folder)
    from hsrm.scoring import RewardScorer

    with pytest.raises(ValueError, match="config.json"):
        RewardScorer(str(folder))


def test_invalid_json_and_missing_folders(tmp_path):
    assert read_record(tmp_path / "nothing-here") == ModelRecord()  # a Hub id or a folder without config: no record
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        read_record(tmp_path)


def test_weights_that_do_not_fit_the_head_are_refused(tmp_path, tiny_model_dir):
    from hsrm.scoring import RewardScorer

    folder = with_block(tiny_model_dir, tmp_path / "m", {"attribute_weights": [1.0, 2.0]})
    with pytest.raises(ValueError, match="2 attribute weights recorded for a head with 1 outputs"):
        RewardScorer(str(folder))


def test_reward_statistics_by_hand():
    assert reward_statistics([1.0, 2.0, 3.0, 6.0]) == {
        "reward_mean": 3.0,
        "reward_std": pytest.approx(1.8708287, abs=1e-7),
    }


# ----------------------------------------------------------------------------- the one loader
def test_loader_refuses_a_causal_lm(tmp_path, tiny_tokenizer):
    from hsrm.modeling import load_reward_model
    from hsrm.tiny import build_tiny_llama

    causal = build_tiny_llama(tmp_path / "lm", causal_lm=True, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="is a LlamaForCausalLM, not a reward model"):
        load_reward_model(str(causal))


def test_loader_refuses_a_classifier_whose_head_is_not_in_the_checkpoint(tmp_path, tiny_model_dir):
    """A sequence-classifier config whose weights lack `score.weight` would get a random head."""
    from safetensors.torch import load_file, save_file

    from hsrm.modeling import load_reward_model

    folder = tmp_path / "headless"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    del weights["score.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no trained score head.*score.weight"):
        load_reward_model(str(folder))
    model, tokenizer, record = load_reward_model(str(tiny_model_dir), device="cpu")
    assert not model.training and record == ModelRecord()
