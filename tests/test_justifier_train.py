"""Training the Pairwise Justifier end to end on a tiny causal LM: a learnable synthetic task
(the better response is the one containing "great"), label-only and full-justification targets,
LoRA merged into a plain causal-LM folder, `hsrm train` with the tiny recipe, and the
`hsrm evaluate --justifier` entry point."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import REPO_ROOT, write_jsonl
from hsrm.config import load_recipe

GOOD = ["yes great", "great answer", "thank you great"]
BAD = ["no", "bad terrible", "maybe sorry"]
FAST = {
    "learning_rate": 3e-3,
    "warmup_steps": 0,
    "per_device_train_batch_size": 8,
    "logging_steps": 5,
    "save_strategy": "no",
    "use_cpu": True,
    "disable_tqdm": True,
    "max_length": 256,
    "report_to": "none",
}


def synthetic_preference_rows(n: int, seed: int = 0) -> list[dict]:
    """HelpSteer2-Preference-shaped rows whose better response always contains "great"; the
    justifications carry their statement at the front, the back or both, with prefixes."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good_first = rng.random() < 0.5
        good, bad = rng.choice(GOOD), rng.choice(BAD)
        winner, loser = (1, 2) if good_first else (2, 1)
        strength = -rng.choice([1, 2, 3]) if good_first else rng.choice([1, 2, 3])
        styles = [
            f"@Response {winner} is better than @Response {loser}. @Response {winner} says great.",
            f"@Response {winner} says great. @Response {loser} does not.\nTherefore, @Response {winner} is better.",
            f"@Response {winner} is better. @Response {winner} says great. Overall, @Response {winner} is better.",
        ]
        rows.append(
            {
                "split": "train",
                "prompt": f"Say something nice {i % 5}",
                "response_1": good if good_first else bad,
                "response_2": bad if good_first else good,
                "all_preferences_unprocessed": [
                    {"strength": strength, "justification": rng.choice(styles)} for _ in range(3)
                ],
            }
        )
    return rows


def heldout_pairs(n: int = 16) -> list[dict]:
    rng = random.Random(123)
    return [{"prompt": f"Please reply {i}", "chosen": rng.choice(GOOD), "rejected": rng.choice(BAD)} for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded 2-core machine two threads
    made these runs ~12x slower (measured: 60 steps in 35 s vs 2.8 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    from hsrm.tiny import build_tiny_llama

    # hidden 64: at 32 the model memorises the training prompts but stays near chance on new ones.
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-causal"), causal_lm=True, hidden_size=64)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("justifier-data") / "pref.jsonl", synthetic_preference_rows(48))


def _losses(summary):
    return [h["loss"] for h in summary["log_history"] if "loss" in h]


def _judge(model_dir, pairs, max_new_tokens=8):
    from hsrm.justifier_eval import evaluate_justifier
    from hsrm.trainers.justifier import load_causal_lm

    model, tokenizer = load_causal_lm(str(model_dir))
    return evaluate_justifier(
        model, tokenizer, pairs, max_new_tokens=max_new_tokens, batch_size=32, show_progress=False
    )


@pytest.fixture(scope="module")
def label_model(tmp_path_factory, causal_dir, train_file):
    """Trained through `hsrm train recipes/justifier_tiny_cpu.yaml` (label target, flip augmentation)."""
    from hsrm.train import main as train_main

    out = tmp_path_factory.mktemp("runs") / "justifier-label"
    torch.manual_seed(0)
    summary = train_main(
        [
            str(REPO_ROOT / "recipes" / "justifier_tiny_cpu.yaml"),
            "--model_name_or_path",
            str(causal_dir),
            "--train_data",
            str(train_file),
            "--output_dir",
            str(out),
        ]
    )
    return out, summary


def test_label_target_learns_the_task_and_beats_chance(label_model, causal_dir):
    out, summary = label_model
    losses = _losses(summary)
    assert losses[-1] < 0.25 * losses[0], losses
    untrained = _judge(causal_dir, heldout_pairs())["metrics"]
    trained = _judge(out, heldout_pairs())
    metrics = trained["metrics"]
    # Chance is 0.5 with a parseable answer; the random model does not even produce one.
    assert untrained["accuracy"] <= 0.5 and untrained["parse_failure_rate"] > 0.5
    assert metrics["accuracy"] >= 0.9, metrics
    assert metrics["both_orders_accuracy"] >= 0.8 and metrics["position_bias_rate"] <= 0.2
    assert metrics["parse_failure_rate"] == 0.0
    assert {e["generated"] for e in trained["examples"]} <= {"@Response 1", "@Response 2"}


def test_saved_folder_is_a_plain_causal_lm(label_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = label_model
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hsrm"]["objective"] == "justifier" and config["hsrm"]["justifier_target"] == "label"
    assert config["hsrm"]["flip_augmentation"] is True
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    model = AutoModelForCausalLM.from_pretrained(str(out))  # no hsrm import needed
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert model.config.vocab_size == len(tokenizer)
    assert summary["data"]["train"]["examples"] == 2 * 48 * 3  # all set: 3 per task, doubled by flips


def test_full_justification_target_trains(tmp_path, causal_dir, train_file):
    from hsrm.train import run_training

    torch.manual_seed(0)
    cfg = load_recipe(
        None,
        {
            **FAST,
            "objective": "justifier",
            "model_name_or_path": str(causal_dir),
            "train_data": str(train_file),
            "justification_set": "overall",
            "justifier_target": "full",
            "flip_augmentation": True,
            "max_steps": 40,
            "output_dir": str(tmp_path / "full"),
        },
    )
    summary = run_training(cfg)
    losses = _losses(summary)
    assert losses[-1] < 0.35 * losses[0], losses
    accuracies = [h["target_token_accuracy"] for h in summary["log_history"] if "target_token_accuracy" in h]
    assert accuracies[-1] > accuracies[0] + 0.15, accuracies
    # What the model learned to write has the trained shape: an elaboration, then a parseable statement.
    result = _judge(tmp_path / "full", heldout_pairs(4), max_new_tokens=40)
    assert result["metrics"]["parse_failure_rate"] <= 0.25
    assert any("better" in e["generated"] and "\n" in e["generated"] for e in result["examples"])


def test_lora_is_merged_into_a_plain_folder(tmp_path, causal_dir, train_file):
    from safetensors.torch import load_file

    from hsrm.train import run_training

    cfg = load_recipe(
        None,
        {
            **FAST,
            "objective": "justifier",
            "model_name_or_path": str(causal_dir),
            "train_data": str(train_file),
            "justifier_target": "statement",
            "use_lora": True,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.0,
            "max_steps": 6,
            "output_dir": str(tmp_path / "lora"),
        },
    )
    summary = run_training(cfg)
    out = tmp_path / "lora"
    assert not (out / "adapter_config.json").exists()
    merged, base = load_file(str(out / "model.safetensors")), load_file(str(causal_dir / "model.safetensors"))
    assert set(merged) == set(base)  # same tensor names: no lora_A / lora_B left
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all(k.endswith(".weight") and "proj" in k for k in changed), changed
    assert summary["lora"] is True


def test_plain_pairs_train_the_label_target_and_refuse_the_others(tmp_path, causal_dir):
    from hsrm.train import run_training

    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"q{i}", "chosen": GOOD[i % 3], "rejected": BAD[i % 3]} for i in range(12)],
    )
    with pytest.raises(ValueError, match="justifier_target: label"):
        run_training(
            load_recipe(
                None,
                {
                    **FAST,
                    "objective": "justifier",
                    "model_name_or_path": str(causal_dir),
                    "train_data": str(pairs),
                    "justifier_target": "full",
                    "output_dir": str(tmp_path / "x"),
                },
            )
        )
    summary = run_training(
        load_recipe(
            None,
            {
                **FAST,
                "objective": "justifier",
                "model_name_or_path": str(causal_dir),
                "train_data": str(pairs),
                "justifier_target": "label",
                "flip_augmentation": True,
                "max_steps": 2,
                "output_dir": str(tmp_path / "pairs-run"),
            },
        )
    )
    assert summary["data"]["train"]["examples"] == 24


def test_evaluate_cli_on_pairs_and_rewardbench(tmp_path, label_model, capsys):
    from hsrm.evaluation import main

    out, _ = label_model
    pairs = write_jsonl(tmp_path / "heldout.jsonl", heldout_pairs(6))
    report_path = tmp_path / "eval.json"
    result = main(["--justifier", "--model", str(out), "--data", str(pairs), "--output", str(report_path)])
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "position bias" in printed and "parse failures" in printed
    written = json.loads(report_path.read_text())
    assert written["metrics"] == json.loads(json.dumps(result["metrics"]))
    assert written["settings"]["max_new_tokens"] == 8  # taken from the model's training config
    assert len(written["examples"]) == 12 and {e["order"] for e in written["examples"]} == {
        "chosen_first",
        "chosen_second",
    }

    rb_rows = [
        {
            "prompt": p["prompt"],
            "chosen": p["chosen"],
            "rejected": p["rejected"],
            "chosen_model": "a",
            "rejected_model": "b",
            "subset": s,
            "id": i,
        }
        for i, (p, s) in enumerate(zip(heldout_pairs(6), ["alpacaeval-easy"] * 3 + ["llmbar-natural"] * 3))
    ]
    rb = write_jsonl(tmp_path / "rb.jsonl", rb_rows)
    result = main(["--justifier", "--model", str(out), "--data", str(rb), "--max_new_tokens", "6"])
    assert set(result["metrics"]["rewardbench"]["sections"]) == {"Chat", "Chat Hard"}
    assert "RewardBench sections" in capsys.readouterr().out


def test_evaluate_refuses_a_scalar_reward_model(tiny_model_dir, tmp_path):
    from hsrm.evaluation import main

    pairs = write_jsonl(tmp_path / "p.jsonl", heldout_pairs(2))
    with pytest.raises(ValueError, match="scalar reward model"):
        main(["--justifier", "--model", str(tiny_model_dir), "--data", str(pairs)])


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO_ROOT / "recipes").glob("justifier_*.yaml")))
def test_justifier_recipes_follow_the_paper(recipe):
    path = REPO_ROOT / "recipes" / recipe
    header = path.read_text().splitlines()[0]
    assert header.startswith("# ") and recipe in header and ("hsrm.train" in header or "hsrm train" in header)
    cfg = load_recipe(path, {"output_dir": "/tmp/unused", "bf16": False, "use_cpu": True})
    assert cfg.objective == "justifier"
    if "tiny" in recipe:
        return
    # Appendix E: 1 epoch, global batch 128 (2 per GPU x 8 GPUs x 8 accumulation), constant LR in {1,2,3}e-6
    # after 10 warm-up steps.
    assert cfg.num_train_epochs == 1 and cfg.per_device_train_batch_size * 8 * cfg.gradient_accumulation_steps == 128
    assert cfg.learning_rate in (1e-6, 2e-6, 3e-6) and cfg.warmup_steps == 10
    assert getattr(cfg.lr_scheduler_type, "value", cfg.lr_scheduler_type) == "constant_with_warmup"
    assert cfg.data_format == "helpsteer2_preference"
