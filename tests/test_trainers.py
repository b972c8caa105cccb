"""Scalar trainers on the tiny model: every objective learns, two-stage init, LoRA merge, saved folders."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl
from hsrm.config import load_recipe
from hsrm.data.collators import PairwiseCollator
from hsrm.modeling import reward_outputs
from hsrm.record import ModelRecord
from hsrm.train import run_training

FAST = {
    "max_steps": 24,
    "learning_rate": 3e-3,
    "warmup_steps": 0,
    "per_device_train_batch_size": 4,
    "logging_steps": 4,
    "save_strategy": "no",
    "use_cpu": True,
    "seed": 0,
    "max_length": 128,
    "report_to": "none",
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", make_learnable_pairs(48))


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory):
    import random

    rng = random.Random(0)
    rows = []
    for i in range(48):
        good = rng.random() < 0.5
        rows.append(
            {
                "prompt": f"Question {i}",
                "response": "Thank you, here is a clear answer." if good else "no bad",
                "helpfulness": 4 if good else 0,
                "correctness": 3 if good else 1,
                "coherence": 4,
                "complexity": 1,
                "verbosity": 2 if good else 0,
            }
        )
    return write_jsonl(tmp_path_factory.mktemp("ratings") / "ratings.jsonl", rows)


def train(tmp_path, model_dir, data, **overrides):
    cfg = load_recipe(
        None,
        {
            **FAST,
            "model_name_or_path": str(model_dir),
            "train_data": str(data),
            "output_dir": str(tmp_path / "out"),
            **overrides,
        },
    )
    return run_training(cfg)


def losses(summary):
    return [entry["loss"] for entry in summary["log_history"] if "loss" in entry]


@pytest.mark.parametrize("objective", ["bt", "margin_bt", "scaled_bt"])
def test_pairwise_objectives_learn(tmp_path, tiny_model_dir, pairs_file, objective):
    summary = train(tmp_path, tiny_model_dir, pairs_file, objective=objective)
    curve = losses(summary)
    assert curve[-1] < 0.5 * curve[0], curve
    logged = summary["log_history"][0]
    assert {"accuracy", "margin", "reward_mean", "reward_std"} <= set(logged)
    assert summary["eval_metrics"]["eval_accuracy"] > 0.9  # on the training rows it was fitted to


@pytest.mark.parametrize("attributes", [["helpfulness"], ["all"]])
def test_regression_learns_and_saves_plain_folder(tmp_path, tiny_model_dir, ratings_file, attributes):
    summary = train(tmp_path, tiny_model_dir, ratings_file, objective="regression", attributes=attributes)
    curve = losses(summary)
    assert curve[-1] < 0.5 * curve[0], curve
    out = Path(summary["output_dir"])
    model = AutoModelForSequenceClassification.from_pretrained(str(out))  # no hsrm involved
    n = 1 if attributes == ["helpfulness"] else 5
    assert model.config.num_labels == n and model.config.id2label[0] == "helpfulness"
    meta = json.loads((out / "config.json").read_text())["hsrm"]
    assert meta["objective"] == "regression" and len(meta["attributes"]) == n
    assert {"reward_mean", "reward_std", "base_model"} <= set(meta)


def test_two_stage_init_carries_body_and_helpfulness_head(tmp_path, tiny_model_dir, ratings_file, pairs_file):
    regression = train(tmp_path / "reg", tiny_model_dir, ratings_file, objective="regression", attributes=["all"])
    reg_model = AutoModelForSequenceClassification.from_pretrained(regression["output_dir"])
    from hsrm.config import load_recipe as lr
    from hsrm.trainers.base import build_model

    cfg = lr(
        None,
        {
            **FAST,
            "objective": "scaled_bt",
            "init_from": regression["output_dir"],
            "train_data": str(pairs_file),
            "output_dir": str(tmp_path / "bt"),
        },
    )
    bt_model, _ = build_model(cfg)
    assert bt_model.config.num_labels == 1
    assert torch.equal(bt_model.score.weight, reg_model.score.weight[:1])
    for name, value in reg_model.model.state_dict().items():
        assert torch.equal(bt_model.model.state_dict()[name], value), name
    summary = train(
        tmp_path / "bt2", tiny_model_dir, pairs_file, objective="scaled_bt", init_from=regression["output_dir"]
    )
    assert (
        json.loads((Path(summary["output_dir"]) / "config.json").read_text())["hsrm"]["init_from"]
        == regression["output_dir"]
    )


def test_lora_merged_folder_scores_like_the_unmerged_model(tmp_path, tiny_model_dir, pairs_file):
    from hsrm.config import load_recipe as lr
    from hsrm.train import load_datasets, make_trainer
    from hsrm.trainers.base import build_model, save_trained_model

    cfg = lr(
        None,
        {
            **FAST,
            "objective": "bt",
            "use_lora": True,
            "lora_r": 4,
            "model_name_or_path": str(tiny_model_dir),
            "train_data": str(pairs_file),
            "output_dir": str(tmp_path / "ckpt"),
        },
    )
    model, tokenizer = build_model(cfg)
    train_ds, _, _ = load_datasets(cfg, tokenizer)
    trainer = make_trainer(cfg, model, tokenizer, train_ds, None)
    trainer.train()
    save_trained_model(
        trainer,
        cfg,
        str(tmp_path / "merged"),
        ModelRecord(objective="bt"),
        bare_model=lambda: build_model(cfg, with_lora=False),
    )
    batch = PairwiseCollator(tokenizer.pad_token_id)([train_ds[i] for i in range(6)])
    model.eval()
    with torch.no_grad():
        unmerged = reward_outputs(model, batch).squeeze(-1)
        merged_model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
        merged = reward_outputs(merged_model, batch).squeeze(-1)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert unmerged.abs().max() > 0.1  # the adapter and head did learn something
    assert merged.tolist() == pytest.approx(unmerged.tolist(), abs=1e-4)


def test_unknown_objective_and_keys_are_errors():
    with pytest.raises(ValueError, match="--objective 'scaled-bt': choose one of regression, bt, margin_bt, scaled_bt"):
        load_recipe(None, {"objective": "scaled-bt"})
    with pytest.raises(ValueError, match="learning_rte \\(did you mean learning_rate\\?\\)"):
        load_recipe(None, {"learning_rte": 1e-5})


def test_margin_objective_without_margins_is_an_error(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "nomargin.jsonl", make_learnable_pairs(8, with_strength=False))
    with pytest.raises(ValueError, match="needs a preference strength"):
        train(tmp_path, tiny_model_dir, data, objective="margin_bt")


def test_empty_dataset_after_filtering_is_an_error_before_training(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "q", "chosen": "same", "rejected": "same"}])
    with pytest.raises(ValueError, match="no usable rows after filtering"):
        train(tmp_path, tiny_model_dir, data, on_bad_rows="skip")


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO_ROOT / "recipes").glob("*.yaml")))
def test_every_recipe_parses(recipe):
    path = REPO_ROOT / "recipes" / recipe
    header = path.read_text().splitlines()[0]
    assert header.startswith("# ") and ("hsrm" in header), "a recipe starts with its exact launch command"
    if "objective" not in path.read_text() and "rloo" in recipe:
        pytest.skip("not a reward-model recipe")
    # bf16 recipes are for GPUs; TrainingArguments refuses bf16 on a CPU-only machine, so only that is overridden.
    cfg = load_recipe(path, {"output_dir": "/tmp/unused", "bf16": False, "use_cpu": True})
    assert cfg.objective in ("regression", "bt", "margin_bt", "scaled_bt", "justifier")


def test_train_top_layers_changes_only_the_top_blocks_and_head(tmp_path, tiny_model_dir, pairs_file, caplog):
    from safetensors.torch import load_file

    before = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    with caplog.at_level("WARNING"):
        summary = train(
            tmp_path, tiny_model_dir, pairs_file, objective="bt", train_top_layers=1, gradient_checkpointing=True
        )
    after = load_file(str(Path(summary["output_dir"]) / "model.safetensors"))
    # The tiny Llama has 2 decoder layers: layer 0 and the embeddings are frozen, layer 1, the final norm
    # and the score head train.
    frozen = [k for k in before if k.startswith(("model.embed_tokens", "model.layers.0."))]
    trained = [k for k in before if k.startswith(("model.layers.1.", "score"))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight") and "norm" not in k)
    assert losses(summary)[-1] < losses(summary)[0]
    assert "gradient_checkpointing turned off" in caplog.text


@pytest.mark.parametrize("name", ["gradient_checkpointing", "activation_checkpointing"])
def test_train_top_layers_turns_checkpointing_off_under_either_name(name):
    from hsrm.config import RewardConfig
    from hsrm.train import training_arguments

    if name not in RewardConfig.__dataclass_fields__:
        pytest.skip(f"this transformers has no {name}")
    cfg = load_recipe(
        None,
        {"objective": "bt", "train_data": "x.jsonl", "output_dir": "/tmp/unused", "train_top_layers": 1, name: True},
    )
    args = training_arguments(cfg, has_eval=False)
    # what the Trainer reads: activation_checkpointing where transformers has it, else gradient_checkpointing
    assert getattr(args, "activation_checkpointing", args.gradient_checkpointing) is False
    assert args.gradient_checkpointing is False
    assert getattr(cfg, name) is True  # the config itself is left as given


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"train_top_layers": 0}, "at least 1"),
        ({"train_top_layers": 3}, "only 2 decoder layers"),
        ({"train_top_layers": 1, "use_lora": True}, "do not combine"),
    ],
)
def test_train_top_layers_rejects_bad_values(tmp_path, tiny_model_dir, pairs_file, bad, message):
    with pytest.raises(ValueError, match=message):
        train(tmp_path, tiny_model_dir, pairs_file, objective="bt", **bad)


def test_a_run_leaves_its_config_as_it_was(tmp_path, tiny_model_dir, pairs_file):
    """The config is read, never written back (issue 19): checkpoints under output_dir/checkpoints,
    evaluation off without eval data and no gradient checkpointing with train_top_layers are all
    the run's own arguments."""
    cfg = load_recipe(
        None,
        {
            **FAST,
            "max_steps": 2,
            "objective": "bt",
            "model_name_or_path": str(tiny_model_dir),
            "train_data": str(pairs_file),
            "output_dir": str(tmp_path / "out"),
            "train_top_layers": 1,
            "gradient_checkpointing": True,
            "eval_strategy": "steps",
            "eval_steps": 1,
            "save_strategy": "steps",
            "save_steps": 2,
        },
    )
    before = cfg.to_dict()
    summary = run_training(cfg)
    assert cfg.to_dict() == before
    assert (
        summary["output_dir"] == str(tmp_path / "out") and (tmp_path / "out" / "checkpoints" / "checkpoint-2").is_dir()
    )
