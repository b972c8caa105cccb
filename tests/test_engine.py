"""One reward engine and one model record (issue 16).

Every path that produces a reward — training-time predictions, `hsrm evaluate`, the ExPO search at
α = 1, `hsrm score`, `RewardScorer`, the RLOO reward function, `hsrm embed --golden-model` — gives,
for a 5-attribute regression model trained with attribute weights and for a BT model, the value an
independent plain-transformers computation gives: the model's own chat template, left truncation to
the length the model was trained with, the hidden state of the last token of the unpadded sequence
through the score head, times the weights. fp32 on CPU, within 1e-5.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from conftest import write_jsonl

WEIGHTS = [0.3, 0.2, 0.1, 0.1, -0.4]  # the example; helpfulness alone would differ from the weighted sum
TRAIN_MAX_LENGTH = 48  # short, so that some conversations below are cut: a path that ignored it would differ
ATTRIBUTES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
WORDS = (
    "bread flour water yeast salt knead bake the quick brown fox jumps over the lazy dog Paris France capital "
    "thank you please python list dict string numbers"
).split()


def conversation_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) texts of very different lengths: a few tokens to well over TRAIN_MAX_LENGTH."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.choice([2, 5, 30])))
        response = " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 4, 12, 40])))
        rows.append((f"Q{i}: {prompt}?", response))
    return rows


def plain_rewards(model_dir, conversations, weights=None, max_length=TRAIN_MAX_LENGTH) -> np.ndarray:
    """The independent computation: plain transformers, one unpadded sequence at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, response in conversations:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -max_length:]
            last = model.model(input_ids=ids).last_hidden_state[
                0, -1
            ]  # no padding: the last token is the last real one
            outputs = model.score(last).double()
            out.append(float(outputs @ torch.tensor(weights, dtype=torch.float64)) if weights else float(outputs[0]))
    return np.asarray(out)


# ------------------------------------------------------------------------------------- models
class Trained:
    """A trained model folder, the conversations of its validation file, and the run summary."""

    def __init__(self, folder, data, conversations, summary, weights, kind):
        self.folder, self.data, self.conversations, self.summary, self.weights, self.kind = (
            folder,
            data,
            conversations,
            summary,
            weights,
            kind,
        )


def train(tmp_path, tiny_model_dir, settings: dict):
    from hsrm.config import load_recipe
    from hsrm.train import run_training

    base = {
        "model_name_or_path": str(tiny_model_dir),
        "max_length": TRAIN_MAX_LENGTH,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "eval_split": "train",
        "seed": 0,
    }
    return run_training(load_recipe(None, {**base, **settings, "output_dir": str(tmp_path / "model")}))


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("regression")
    rng = random.Random(1)
    rows = [
        {"prompt": p, "response": r, **{a: rng.randint(0, 4) for a in ATTRIBUTES}} for p, r in conversation_rows(12, 1)
    ]
    data = write_jsonl(tmp / "ratings.jsonl", rows)
    summary = train(
        tmp,
        tiny_model_dir,
        {
            "objective": "regression",
            "attributes": ["all"],
            "attribute_weights": WEIGHTS,
            "train_data": str(data),
            "eval_data": str(data),
        },
    )
    conversations = [(r["prompt"], r["response"]) for r in rows]
    return Trained(tmp / "model", data, conversations, summary, WEIGHTS, "ratings")


@pytest.fixture(scope="module")
def bt_model(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("bt")
    chosen, rejected = conversation_rows(10, 2), conversation_rows(10, 3)
    rows = [{"prompt": c[0], "chosen": c[1], "rejected": r[1]} for c, r in zip(chosen, rejected)]
    data = write_jsonl(tmp / "pairs.jsonl", rows)
    summary = train(tmp, tiny_model_dir, {"objective": "bt", "train_data": str(data), "eval_data": str(data)})
    conversations = [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]
    return Trained(tmp / "model", data, conversations, summary, None, "pairs")


@pytest.fixture(params=["regression_model", "bt_model"])
def trained(request):
    return request.getfixturevalue(request.param)


# ----------------------------------------------------------------------------- every reward path
def training_time(trained, tmp_path):
    rewards = np.asarray(trained.summary["eval_rewards"])
    return rewards.reshape(-1) if rewards.ndim == 1 else np.concatenate([rewards[:, 0], rewards[:, 1]])


def hsrm_evaluate(trained, tmp_path):
    from hsrm.cli import main as cli
    from hsrm.evaluation import scalar_rewards

    out = tmp_path / "eval.json"
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(trained.folder),
                "--data",
                str(trained.data),
                "--output",
                str(out),
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    return np.asarray(scalar_rewards(json.loads(out.read_text())))


def expo_search_at_one(trained, tmp_path):
    from hsrm.evaluation import scalar_rewards
    from hsrm.expo import search_factor

    search = search_factor(
        str(trained.folder),
        str(trained.folder),
        str(trained.data),
        coarse=(1.5, 1.5, 0.1),
        fine_radius=0,
        batch_size=4,
        progress=False,
    )
    return np.asarray(scalar_rewards(search["results"][1.0]))


def hsrm_score(trained, tmp_path):
    from hsrm.cli import main as cli

    data = write_jsonl(
        tmp_path / "candidates.jsonl", [{"prompt": p, "responses": [r]} for p, r in trained.conversations]
    )
    out = tmp_path / "scored.jsonl"
    assert (
        cli(["score", "--model", str(trained.folder), "--data", str(data), "--output", str(out), "--batch-size", "5"])
        == 0
    )
    return np.asarray([json.loads(line)["rewards"][0] for line in out.read_text().splitlines()])


def reward_scorer(trained, tmp_path):
    from hsrm.scoring import RewardScorer

    prompts, responses = zip(*trained.conversations)
    return np.asarray(RewardScorer(str(trained.folder), batch_size=2).score(list(prompts), list(responses)))


def rloo_reward_function(trained, tmp_path):
    from hsrm.rloo import RLOOSetup, reward_function

    function = reward_function(RLOOSetup(reward_model=str(trained.folder)))
    prompts = [[{"role": "user", "content": p}] for p, _ in trained.conversations]  # TRL's conversational format
    completions = [[{"role": "assistant", "content": r}] for _, r in trained.conversations]
    return np.asarray(function(prompts=prompts, completions=completions, completion_ids=None))


def embed_golden_model(trained, tmp_path):
    from hsrm.cli import main as cli

    data = write_jsonl(tmp_path / "responses.jsonl", [{"prompt": p, "response": r} for p, r in trained.conversations])
    out = tmp_path / "emb.npz"
    assert (
        cli(
            [
                "embed",
                "--data",
                str(data),
                "--output",
                str(out),
                "--backbone",
                str(trained.folder),
                "--cache",
                "none",
                "--golden-model",
                str(trained.folder),
            ]
        )
        == 0
    )
    return np.load(out)["golden"]


PATHS = [
    training_time,
    hsrm_evaluate,
    expo_search_at_one,
    hsrm_score,
    reward_scorer,
    rloo_reward_function,
    embed_golden_model,
]


@pytest.mark.parametrize("path", PATHS, ids=[p.__name__ for p in PATHS])
def test_every_reward_path_equals_plain_transformers(trained, path, tmp_path):
    expected = plain_rewards(trained.folder, trained.conversations, trained.weights)
    got = path(trained, tmp_path)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert expected.std() > 1e-3, "rewards must differ between texts, or the comparison proves nothing"


def test_the_weights_and_the_recorded_length_matter(regression_model):
    """Control: the first output alone, or no truncation, differ from the reference by far more than 1e-5."""
    reference = plain_rewards(regression_model.folder, regression_model.conversations, WEIGHTS)
    first_output = plain_rewards(regression_model.folder, regression_model.conversations, None)
    untruncated = plain_rewards(regression_model.folder, regression_model.conversations, WEIGHTS, max_length=10_000)
    assert np.abs(first_output - reference).max() > 1e-2
    assert np.abs(untruncated - reference).max() > 1e-3


def test_recorded_reward_statistics_are_those_of_the_scalar_validation_rewards(trained):
    from hsrm.record import read_record

    record = read_record(trained.folder)
    expected = plain_rewards(trained.folder, trained.conversations, trained.weights)
    assert record.reward_stats_on == "validation"
    assert record.reward_mean == pytest.approx(expected.mean(), abs=1e-5)
    assert record.reward_std == pytest.approx(expected.std(), abs=1e-5)
    assert record.max_length == TRAIN_MAX_LENGTH and record.attribute_weights == trained.weights


@pytest.mark.parametrize("model_fixture", ["regression_model", "bt_model"])
def test_packed_and_padded_layouts_agree(request, model_fixture):
    from hsrm.scoring import RewardScorer

    trained = request.getfixturevalue(model_fixture)
    prompts, responses = zip(*trained.conversations)
    rewards = {
        layout: np.asarray(
            RewardScorer(str(trained.folder), layout=layout, max_tokens=100, batch_size=3).score(
                list(prompts), list(responses)
            )
        )
        for layout in ("padded", "packed")
    }
    np.testing.assert_allclose(rewards["packed"], rewards["padded"], rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------ precedence
def test_max_length_precedence(bt_model, tmp_path):
    """User > benchmark protocol > model record > 2048, capped at the model's context (1024 here)."""
    from hsrm.evaluation import evaluate_model
    from hsrm.modeling import resolve_max_length
    from hsrm.record import ModelRecord
    from hsrm.scoring import RewardScorer

    assert RewardScorer(str(bt_model.folder)).max_length == TRAIN_MAX_LENGTH
    assert RewardScorer(str(bt_model.folder), max_length=20).max_length == 20
    assert RewardScorer(str(bt_model.folder), protocol_max_length=30).max_length == 30
    rb = write_jsonl(
        tmp_path / "rb.jsonl", [{"prompt": "q", "chosen": "yes good", "rejected": "no", "subset": "alpacaeval-easy"}]
    )
    assert (
        evaluate_model(str(bt_model.folder), str(rb), progress=False)["max_length"] == 1024
    )  # RewardBench 2048, capped
    assert evaluate_model(str(bt_model.folder), str(rb), max_length=16, progress=False)["max_length"] == 16
    assert evaluate_model(str(bt_model.folder), str(bt_model.data), progress=False)["max_length"] == TRAIN_MAX_LENGTH
    assert resolve_max_length(None, ModelRecord()) == 2048
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="positive number of tokens"):
            resolve_max_length(bad, None)
