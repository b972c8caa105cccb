"""The Trainer contracts (issue 19): one optimizer step is the same whatever its split.

* Gradient accumulation: batch B × GA 1, B/2 × GA 2 and B/4 × GA 4 over the same rows log the same
  loss and metrics and end with the same weights, for every trainer (pointwise with 1 and 5 outputs,
  the three BT objectives padded and packed, the justifier); the first logged loss equals the mean
  over the step's pairs (rated values, target tokens) computed here, by hand, from the initial model.
* Token budget: micro-batches of different sizes weigh every pair alike (= one fixed batch).
* Two processes (gloo): the logged loss and accuracy equal one process over the same global batch.
* DeepSpeed ZeRO-2: a NaN step is skipped and counted, and the run stops with the guard's message.
"""

from __future__ import annotations

import copy
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl
from hsrm.config import load_recipe
from hsrm.train import load_datasets, make_trainer
from hsrm.trainers.base import build_model

STEP = {
    "max_steps": 3,
    "learning_rate": 1e-3,
    "warmup_steps": 0,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "save_strategy": "no",
    "use_cpu": True,
    "seed": 0,
    "data_seed": 0,
    "max_length": 96,
    "disable_tqdm": True,
    "report_to": "none",
    "weight_decay": 0.0,
}
SPLITS = [(8, 1), (4, 2), (2, 4)]  # (per-device batch, accumulation steps): 8 rows per optimizer step
LOGGED = ("loss", "grad_norm", "accuracy", "margin", "reward_mean", "reward_std", "mae", "target_token_accuracy")


# ------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rows = make_learnable_pairs(24, seed=5)
    for i, row in enumerate(rows):  # lengths that differ, so padding and packing matter
        row["chosen"] += " please" * (i * 7 % 30)
    return write_jsonl(tmp_path_factory.mktemp("contract-pairs") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory):
    rng = random.Random(2)
    rows = [
        {
            "prompt": f"Question {i}",
            "response": ("Thank you, here is a clear answer." if i % 2 else "no") + " yes" * rng.randrange(0, 25),
            **{a: rng.randrange(5) for a in ("helpfulness", "correctness", "coherence", "complexity", "verbosity")},
        }
        for i in range(24)
    ]
    return write_jsonl(tmp_path_factory.mktemp("contract-ratings") / "ratings.jsonl", rows)


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory, tiny_tokenizer):
    from hsrm.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("contract-causal"), causal_lm=True, tokenizer=tiny_tokenizer)


@pytest.fixture(scope="module")
def justifier_pairs_file(tmp_path_factory):
    rng = random.Random(4)
    rows = [
        {
            "prompt": f"Say something {i}" + " please" * rng.randrange(0, 12),
            "chosen": "yes great" + " great" * rng.randrange(0, 8),
            "rejected": "no",
        }
        for i in range(24)
    ]
    return write_jsonl(tmp_path_factory.mktemp("contract-justifier") / "pairs.jsonl", rows)


class RecordingCollator:
    """Keeps the features of every micro-batch, to recompute the first step's loss by hand."""

    def __init__(self, inner):
        self.inner, self.features = inner, []

    def __call__(self, features):
        self.features.append(features)
        return self.inner(features)


def train_steps(tmp_path, model_dir, data, **overrides):
    """(training logs per step, final weights, features of every micro-batch, initial model) of a short run."""
    from hsrm.trainers.justifier import prepare_justifier_run

    cfg = load_recipe(
        None,
        {
            **STEP,
            "model_name_or_path": str(model_dir),
            "train_data": str(data),
            "output_dir": str(tmp_path / "out"),
            **overrides,
        },
    )
    torch.manual_seed(cfg.seed)  # a five-output head is new: the same seed gives every split the same one
    if cfg.objective == "justifier":
        model, tokenizer, train_ds, _, _ = prepare_justifier_run(cfg)
    else:
        model, tokenizer = build_model(cfg)
        train_ds, _, _ = load_datasets(cfg, tokenizer)
    initial = copy.deepcopy(model)
    trainer = make_trainer(cfg, model, tokenizer, train_ds, None)
    recorder = RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    trainer.train()
    logs = [{k: v for k, v in entry.items() if k in LOGGED} for entry in trainer.state.log_history if "loss" in entry]
    return logs, {k: v.detach().clone() for k, v in model.state_dict().items()}, recorder.features, initial.eval()


# --------------------------------------------------------------- losses worked out independently
def pair_loss_by_hand(model, features, objective: str) -> float:
    """Mean over pairs of the BT-family loss, one sequence at a time, no hsrm loss code."""
    from hsrm.modeling import reward_outputs

    def reward(ids):
        return reward_outputs(
            model, {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        )[0, 0]

    total = 0.0
    with torch.no_grad():
        for f in features:
            delta, m = (reward(f["chosen_ids"]) - reward(f["rejected_ids"])).double(), float(f["margin"])
            total += {
                "bt": -F.logsigmoid(delta),
                "margin_bt": -F.logsigmoid(delta - m),
                "scaled_bt": -m * F.logsigmoid(delta),
            }[objective]
    return float(total) / len(features)


def regression_loss_by_hand(model, features) -> float:
    from hsrm.modeling import reward_outputs

    squared, values = 0.0, 0
    with torch.no_grad():
        for f in features:
            ids = f["input_ids"]
            out = reward_outputs(
                model, {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
            )[0]
            squared += float(((out.double() - torch.tensor(f["labels"], dtype=torch.float64)) ** 2).sum())
            values += len(f["labels"])
    return squared / values


def target_token_loss_by_hand(model, features) -> float:
    """Σ −log p(target token) over every target token of the step / their number."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for f in features:
            ids, labels = torch.tensor([f["input_ids"]]), torch.tensor(f["labels"])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            targets = labels[1:]
            scored = targets != -100
            total -= float(log_probs[scored.nonzero().reshape(-1), targets[scored]].sum())
            tokens += int(scored.sum())
    return total / tokens


CASES = {
    "regression-1": dict(objective="regression", attributes=["helpfulness"]),
    "regression-5": dict(objective="regression", attributes=["all"]),
    "bt-padded": dict(objective="bt"),
    "margin_bt-padded": dict(objective="margin_bt"),
    "scaled_bt-padded": dict(objective="scaled_bt"),
    "bt-packed": dict(objective="bt", padding_free=True),
    "margin_bt-packed": dict(objective="margin_bt", padding_free=True),
    "scaled_bt-packed": dict(objective="scaled_bt", padding_free=True),
    "justifier": dict(objective="justifier", justifier_target="label", flip_augmentation=False, max_length=128),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_accumulation_gives_the_step_of_one_batch(
    tmp_path, tiny_model_dir, causal_dir, pairs_file, ratings_file, justifier_pairs_file, case
):
    overrides = CASES[case]
    objective = overrides["objective"]
    model_dir = causal_dir if objective == "justifier" else tiny_model_dir
    data = {"regression": ratings_file, "justifier": justifier_pairs_file}.get(objective, pairs_file)
    runs = {
        split: train_steps(
            tmp_path / f"b{split[0]}",
            model_dir,
            data,
            per_device_train_batch_size=split[0],
            gradient_accumulation_steps=split[1],
            **overrides,
        )
        for split in SPLITS
    }
    logs, weights, features, initial = runs[(8, 1)]
    assert len(logs) == 3 and len(features[0]) == 8
    # The first step's loss, by hand from the initial model over the 8 rows of that step.
    if objective == "regression":
        expected = regression_loss_by_hand(initial, features[0])
    elif objective == "justifier":
        expected = target_token_loss_by_hand(initial, features[0])
    else:
        expected = pair_loss_by_hand(initial, features[0], objective)
    assert logs[0]["loss"] == pytest.approx(expected, rel=1e-5)
    for split in SPLITS[1:]:
        split_logs, split_weights, split_features, _ = runs[split]
        batch, accumulation = split
        # the same 8 rows make the first step, only cut differently
        first_step = [f for micro in split_features[:accumulation] for f in micro]
        assert sorted(map(str, first_step)) == sorted(map(str, features[0]))
        for whole, split_log in zip(logs, split_logs):
            assert whole.keys() == split_log.keys()
            for key, value in whole.items():
                assert split_log[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (split, key)
        for name, value in weights.items():
            assert torch.allclose(split_weights[name], value, rtol=0, atol=1e-6), (split, name)
    assert any(not torch.equal(weights[name], value) for name, value in initial.state_dict().items())  # it trained


# ------------------------------------------------------------------------------------ token budget
def test_token_budget_weighs_every_pair_equally(tmp_path, tiny_model_dir, pairs_file):
    """One optimizer step over every pair: micro-batches filled to a token budget (different numbers
    of pairs each, accumulated) give the step of one fixed batch of all the pairs."""
    from hsrm.packing import TokenBudgetBatchSampler, dataset_item_lengths

    cfg = load_recipe(
        None,
        {
            **STEP,
            "model_name_or_path": str(tiny_model_dir),
            "train_data": str(pairs_file),
            "output_dir": str(tmp_path / "probe"),
        },
    )
    _, tokenizer = build_model(cfg)
    train_ds, _, _ = load_datasets(cfg, tokenizer)
    budget = 600
    sampler = TokenBudgetBatchSampler(dataset_item_lengths(train_ds), budget, cost="packed", seed=0)
    sizes = sorted(len(b) for b in sampler.batches)
    assert sizes[0] < sizes[-1], sizes  # micro-batches of different numbers of pairs: the case that mattered
    n = len(train_ds)
    budgeted = train_steps(
        tmp_path / "budget",
        tiny_model_dir,
        pairs_file,
        objective="bt",
        max_steps=1,
        padding_free=True,
        max_tokens_per_batch=budget,
        gradient_accumulation_steps=len(sampler),
    )
    fixed = train_steps(
        tmp_path / "fixed",
        tiny_model_dir,
        pairs_file,
        objective="bt",
        max_steps=1,
        per_device_train_batch_size=n,
        gradient_accumulation_steps=1,
    )
    assert sum(len(f) for f in budgeted[2]) == n and len(fixed[2][0]) == n
    assert budgeted[0][0]["loss"] == pytest.approx(pair_loss_by_hand(fixed[3], fixed[2][0], "bt"), rel=1e-5)
    for key, value in fixed[0][0].items():
        assert budgeted[0][0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for name, value in fixed[1].items():
        assert torch.allclose(budgeted[1][name], value, rtol=0, atol=1e-6), name


# ------------------------------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], *, timeout: int = 300) -> subprocess.CompletedProcess:
    runner = Path(sys.executable).parent / "torchrun"
    command = [str(runner), "--nproc_per_node", "2", "--master_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_log_the_loss_and_accuracy_of_one(tmp_path, tiny_model_dir, pairs_file):
    """2 processes × 4 pairs (gloo) against 1 process × 8 pairs: the same global batch per step."""
    out = tmp_path / "two"
    flags = {"objective": "bt", "per_device_train_batch_size": 4, "save_strategy": "steps", "save_steps": 3}
    args = [
        "-m",
        "hsrm.train",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--train_data",
        str(pairs_file),
        "--output_dir",
        str(out),
        "--ddp_backend",
        "gloo",
    ]
    for key, value in {**STEP, **flags}.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    done = torchrun(args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    two = [e for e in state["log_history"] if "loss" in e]
    one, _, features, initial = train_steps(
        tmp_path / "one", tiny_model_dir, pairs_file, objective="bt", per_device_train_batch_size=8
    )
    assert len(two) == len(one) == 3
    assert one[0]["loss"] == pytest.approx(pair_loss_by_hand(initial, features[0], "bt"), rel=1e-5)
    for a, b in zip(one, two):
        for key in ("loss", "accuracy", "margin", "reward_mean", "reward_std"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert {e["accuracy"] for e in one} != {one[0]["accuracy"]}  # the accuracy moved: not a constant compared


@pytest.mark.deepspeed
@pytest.mark.slow
def test_deepspeed_zero2_nan_steps_are_skipped_and_stop_the_run(tmp_path, tiny_model_dir, pairs_file):
    """Under DeepSpeed the engine steps inside backward; DeepSpeed skips the non-finite step and the
    guard counts it: the run stops with the guard's message, naming the step."""
    pytest.importorskip("deepspeed")
    driver = tmp_path / "nan_from_step_2.py"
    driver.write_text(
        "import sys\n"
        "from hsrm.trainers.pairwise import PairwiseRewardTrainer\n"
        "real = PairwiseRewardTrainer.pair_loss\n"
        "def nan_from_step_2(self, chosen, rejected, margin, **kwargs):\n"
        "    loss = real(self, chosen, rejected, margin, **kwargs)\n"
        "    return loss * float('nan') if self.model.training and self.state.global_step >= 1 else loss\n"
        "PairwiseRewardTrainer.pair_loss = nan_from_step_2\n"
        "from hsrm.cli import main\n"
        "sys.exit(main(['train'] + sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    done = torchrun(
        [
            str(driver),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_data",
            str(pairs_file),
            "--output_dir",
            str(out),
            "--objective",
            "bt",
            "--max_steps",
            "6",
            "--per_device_train_batch_size",
            "2",
            "--learning_rate",
            "1e-3",
            "--warmup_steps",
            "0",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--max_length",
            "64",
            "--disable_tqdm",
            "true",
            "--max_consecutive_nonfinite",
            "2",
            "--deepspeed",
            str(REPO_ROOT / "ds_configs" / "zero2.json"),
            "--ddp_backend",
            "gloo",
            "--use_cpu",
            "true",
        ]
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "non-finite loss or gradient at step 2: update skipped (1 in a row)" in output, output[-5000:]
    assert "training stopped at step 3: 2 consecutive non-finite losses or gradients" in output, output[-5000:]
    assert not (out / "config.json").exists()
