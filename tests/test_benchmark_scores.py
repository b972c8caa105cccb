"""The 2025 benchmarks (issue 22): RewardBench 2, RM-Bench, HelpSteer3-Preference.

Scores are checked against values worked out by hand from allenai's and THU-KEG's definitions; the
`hsrm evaluate` runs are checked against the same scores computed from rewards of an independent
plain-transformers forward."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import REPO_ROOT, write_jsonl
from hsrm.benchmark_scores import (
    best_of_n_score,
    grouped_accuracy,
    matrix_averages,
    rewardbench2_scores,
    rmbench_scores,
    style_matrix,
    ties_score,
)

DATA = REPO_ROOT / "tests" / "data"


# ---------------------------------------------------------------------------------- RewardBench 2
def test_best_of_four_with_two_and_three_way_ties_at_the_top():
    assert best_of_n_score([3.0, 1.0, 2.0, 0.0]) == 1.0
    assert best_of_n_score([3.0, 3.0, 2.0, 0.0]) == 0.5  # the correct completion ties two ways for the top
    assert best_of_n_score([3.0, 1.0, 3.0, 3.0]) == pytest.approx(1 / 3)  # three ways
    assert best_of_n_score([2.0, 3.0, 3.0, 1.0]) == 0.0  # another completion is higher
    # subset score = the mean over rows: (1 + 1/2 + 1/3 + 0) / 4
    bench = rewardbench2_scores(
        ["Math"] * 4, ["a", "b", "c", "d"], [1] * 4, [[3, 1, 2, 0], [3, 3, 2, 0], [3, 1, 3, 3], [2, 3, 3, 1]]
    )
    assert bench["subsets"]["Math"] == {"score": pytest.approx((1 + 0.5 + 1 / 3) / 4), "n": 4}
    assert bench["overall"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)  # the mean of the one subset present
    assert bench["subsets_missing"] == ["Factuality", "Precise IF", "Safety", "Focus", "Ties"]


def test_ties_where_ref_is_accurate_and_tied_is_not():
    """Prompt 0. ref: correct 5 vs incorrect [1, 2] → accurate, correct-incorrect margin 5 − 2 = 3.
    tied: correct [5, 3] vs incorrect [4, 0] → not accurate (3 < 4), spread 5 − 3 = 2, margin 3 − 4 = −1.
    correctness preferred: −1 > 2? no; hard: min(3, −1) = −1 > 2? no; margin score tanh(−1/2 − 1) = tanh(−1.5)."""
    t = ties_score(["ref:0", "tied:0"], [[5, 1, 2], [5, 3, 4, 0]], [1, 2])
    assert (t["ref_accuracy"], t["tied_accuracy"]) == (1.0, 0.0)
    assert (t["correctness_preferred"], t["correctness_preferred_hard"]) == (0.0, 0.0)
    assert t["correctness_margin_score"] == pytest.approx(math.tanh(-1.5))
    assert t["score"] == pytest.approx(0.30 * 0 + 0.30 * 1 + 0.20 * 0 + 0.20 * 0 + 0.01 * math.tanh(-1.5))


def test_ties_with_a_different_correct_margin_of_zero():
    """Prompt 1: tied's two correct answers score exactly alike (spread 0). ref: 4 vs [1] → margin 3;
    tied: [4, 4] vs [1, 2] → margin 2, accurate. preferred: 2 > 0 yes; hard: min(3, 2) = 2 > 0 yes;
    margin score: 2 / 0 is +inf in allenai's numpy → tanh → 1. Prompt 2 (spread 0, a tied margin of 0
    too: 0 / 0 is NaN → 0): ref 2 vs [2] → margin 0, not accurate; tied [2, 2] vs [2] → margin 0."""
    t = ties_score(["ref:1", "tied:1", "ref:2", "tied:2"], [[4, 1], [4, 4, 1, 2], [2, 2], [2, 2, 2]], [1, 2, 1, 2])
    assert (t["ref_accuracy"], t["tied_accuracy"]) == (0.5, 0.5)
    assert (
        t["correctness_preferred"] == 0.5 and t["correctness_preferred_hard"] == 0.5
    )  # prompt 1 yes, prompt 2 (0 > 0) no
    assert t["correctness_margin_score"] == pytest.approx((1.0 + 0.0) / 2)
    assert t["paired_prompts"] == 2
    assert t["score"] == pytest.approx(0.30 * 0.5 + 0.30 * 0.5 + 0.20 * 0.5 + 0.20 * 0.5 + 0.01 * 0.5)


def test_rewardbench2_overall_is_the_mean_of_six_subsets():
    subsets = ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties", "Ties"]
    rewards = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [5, 1, 2], [5, 3, 4, 0]]
    bench = rewardbench2_scores(subsets, ["f", "p", "m", "s", "o", "ref:0", "tied:0"], [1, 1, 1, 1, 1, 1, 2], rewards)
    ties = 0.30 + 0.01 * math.tanh(-1.5)
    assert [bench["subsets"][s]["score"] for s in subsets[:6]] == pytest.approx([1, 0.5, 0, 1, 1 / 3, ties])
    assert bench["overall"] == pytest.approx((1 + 0.5 + 0 + 1 + 1 / 3 + ties) / 6) and bench["subsets_missing"] == []


# -------------------------------------------------------------------------------------- RM-Bench
def test_rmbench_matrix_and_its_triangles_by_hand():
    """Two prompts. Prompt A: chosen [3, 2, 1] vs rejected [2.5, 2.5, 0.5]; prompt B: chosen [1, 1, 4] vs
    rejected [0, 2, 3]. Cell (i, j) counts chosen[i] > rejected[j]:
        A: [[1,1,1],[0,0,1],[0,0,1]]   B: [[1,0,0],[1,0,0],[1,1,1]]   → mean [[1,.5,.5],[.5,0,.5],[.5,.5,1]]
    hard = (0.5 + 0.5 + 0.5) / 3, normal = (1 + 0 + 1) / 3, easy = (0.5 + 0.5 + 0.5) / 3."""
    chosen, rejected = [[3, 2, 1], [1, 1, 4]], [[2.5, 2.5, 0.5], [0, 2, 3]]
    assert style_matrix(chosen, rejected) == [[1.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 1.0]]
    averages = matrix_averages(style_matrix(chosen, rejected))
    assert averages == {
        "hard": pytest.approx(0.5),
        "normal": pytest.approx(2 / 3),
        "easy": pytest.approx(0.5),
        "average": pytest.approx(5 / 9),
    }
    bench = rmbench_scores(["chat", "chat", "safety"], chosen + [[1, 1, 1]], rejected + [[0, 0, 2]])
    assert bench["domains"]["safety"]["matrix"] == [[1.0, 1.0, 0.0]] * 3
    assert bench["overall"]["hard"] == pytest.approx((0.5 + 1 / 3) / 2)  # safety: upper cells 1, 0, 0 → 1/3
    assert bench["domains_missing"] == ["math", "code"]


# ---------------------------------------------------------------------------------- HelpSteer3
def test_helpsteer3_rows_negative_positive_zero_and_a_three_turn_context(tiny_tokenizer):
    from hsrm.data.helpsteer3 import load_helpsteer3_preference
    from hsrm.data.render import encode

    ds, report = load_helpsteer3_preference(str(DATA / "helpsteer3_sample.jsonl"), "train", return_report=True)
    assert len(ds) == 7 and report.dropped == {"no preference (overall_preference 0)": 1}
    rows = [json.loads(line) for line in (DATA / "helpsteer3_sample.jsonl").read_text().splitlines()]
    assert ds[0]["chosen"] == rows[0]["response1"] and ds[0]["margin"] == 2.0  # −2: response 1 better, strength 2
    assert ds[1]["chosen"] == rows[1]["response2"] and ds[1]["margin"] == 3.0  # +3: response 2 better
    three_turns = ds[2]
    assert [m["role"] for m in three_turns["prompt"]] == ["user", "assistant", "user"]
    # Token by token: the chosen sequence is the chat template over the three turns plus the chosen reply.
    messages = rows[2]["context"] + [{"role": "assistant", "content": rows[2]["response1"]}]
    expected = tiny_tokenizer(tiny_tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)[
        "input_ids"
    ]
    assert encode(tiny_tokenizer, three_turns["prompt"], three_turns["chosen"], None) == expected
    assert ds["domain"][:3] == ["general", "general", "code"] and ds["language"][2] == "python"


def test_helpsteer3_bad_rows_name_the_field_or_are_counted(tmp_path):
    from hsrm.data.helpsteer3 import load_helpsteer3_preference
    from hsrm.data.io import DataError

    good = {
        "domain": "general",
        "language": "english",
        "context": [{"role": "user", "content": "q"}],
        "response1": "a",
        "response2": "b",
        "overall_preference": 1,
    }
    bad = [
        dict(good, overall_preference=5),
        dict(good, context=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
    ]
    path = write_jsonl(tmp_path / "hs3.jsonl", [good, *bad])
    with pytest.raises(DataError, match=r"row 2 \(counting from 1\), field 'overall_preference'"):
        load_helpsteer3_preference(str(path))
    ds, report = load_helpsteer3_preference(str(path), on_error="skip", return_report=True)
    assert len(ds) == 1 and report.dropped == {"malformed row": 2}


def test_grouped_accuracy():
    assert grouped_accuracy(["a", "b", "a"], [1, 1, 0], [0, 2, 0]) == {
        "a": {"n": 2, "correct": 1, "accuracy": 0.5},
        "b": {"n": 1, "correct": 0, "accuracy": 0.0},
    }


# ------------------------------------------------------------------------------- hsrm evaluate
def plain_reward(model, tokenizer, prompt, response) -> float:
    messages = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + [
        {"role": "assistant", "content": response}
    ]
    ids = tokenizer(
        tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False, return_tensors="pt"
    )
    with torch.no_grad():
        return float(model.score(model.model(input_ids=ids["input_ids"]).last_hidden_state[0, -1])[0])


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return lambda prompt, response: plain_reward(model, tokenizer, prompt, response)


def run_evaluate(tiny_model_dir, data, tmp_path, capsys) -> tuple[dict, str]:
    from hsrm.cli import main

    out = tmp_path / "result.json"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_evaluate_rewardbench2_file(tiny_model_dir, tmp_path, capsys, plain):
    result, printed = run_evaluate(tiny_model_dir, DATA / "rewardbench2_sample.jsonl", tmp_path, capsys)
    rows = [json.loads(line) for line in (DATA / "rewardbench2_sample.jsonl").read_text().splitlines()]
    rewards = [[plain(r["prompt"], c) for c in r["chosen"] + r["rejected"]] for r in rows]
    expected = rewardbench2_scores(
        [r["subset"] for r in rows], [r["id"] for r in rows], [r["num_correct"] for r in rows], rewards
    )
    assert (
        result["format"] == "rewardbench2" and result["max_length"] == 1024
    )  # the protocol's 2048, capped at the context
    for subset, entry in expected["subsets"].items():
        assert result["rewardbench2"]["subsets"][subset]["score"] == pytest.approx(entry["score"], abs=1e-9), subset
    assert result["primary_metric"]["value"] == pytest.approx(expected["overall"])
    assert "overall (6 of 6 subsets)" in printed and "Ties: tied accuracy" in printed


def test_evaluate_rmbench_file(tiny_model_dir, tmp_path, capsys, plain):
    from hsrm.data.rmbench import paper_domain

    result, printed = run_evaluate(tiny_model_dir, DATA / "rmbench_sample.jsonl", tmp_path, capsys)
    rows = [json.loads(line) for line in (DATA / "rmbench_sample.jsonl").read_text().splitlines()]
    chosen = [[plain(r["prompt"], c) for c in r["chosen"]] for r in rows]
    rejected = [[plain(r["prompt"], c) for c in r["rejected"]] for r in rows]
    expected = rmbench_scores([paper_domain(r["domain"]) for r in rows], chosen, rejected)
    assert result["format"] == "rmbench" and set(result["rmbench"]["domains"]) == {"chat", "math", "code", "safety"}
    for domain, entry in expected["domains"].items():
        assert result["rmbench"]["domains"][domain]["matrix"] == entry["matrix"], domain
    assert result["rmbench"]["overall"] == pytest.approx(expected["overall"])
    assert "style matrix" in printed and "overall" in printed


def test_evaluate_helpsteer3_file(tiny_model_dir, tmp_path, capsys, plain):
    result, printed = run_evaluate(tiny_model_dir, DATA / "helpsteer3_sample.jsonl", tmp_path, capsys)
    rows = [json.loads(line) for line in (DATA / "helpsteer3_sample.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["overall_preference"] != 0]
    correct = [
        plain(r["context"], r["response1"] if r["overall_preference"] < 0 else r["response2"])
        > plain(r["context"], r["response2"] if r["overall_preference"] < 0 else r["response1"])
        for r in rows
    ]
    assert result["format"] == "helpsteer3" and result["n"] == 7  # the 0-preference row is dropped and counted
    assert "dropped 1 (no preference" in result["load"]
    assert result["metrics"]["accuracy"] == pytest.approx(sum(correct) / len(correct))
    by_domain = result["helpsteer3"]["domain"]
    assert {d: e["n"] for d, e in by_domain.items()} == {"code": 2, "general": 2, "multilingual": 2, "stem": 1}
    assert set(result["helpsteer3"]["language"]) == {"chinese", "english", "french", "javascript", "python"}
    assert "multilingual" in printed


def test_formats_are_detected_from_rows_and_hub_ids():
    from hsrm.data.auto import detect_format

    assert detect_format(str(DATA / "rewardbench2_sample.jsonl")) == "rewardbench2"
    assert detect_format(str(DATA / "rmbench_sample.jsonl")) == "rmbench"
    assert detect_format(str(DATA / "helpsteer3_sample.jsonl")) == "helpsteer3_preference"
    assert (
        detect_format("allenai/reward-bench-2") == "rewardbench2"
        and detect_format("allenai/reward-bench") == "rewardbench"
    )
    assert (
        detect_format("THU-KEG/RM-Bench") == "rmbench" and detect_format("nvidia/HelpSteer3") == "helpsteer3_preference"
    )


def test_helpsteer3_trains_scaled_bt(tmp_path, tiny_model_dir):
    from hsrm.config import load_recipe
    from hsrm.train import run_training

    recipe = load_recipe(REPO_ROOT / "recipes" / "scaled_bt_helpsteer3.yaml", {"bf16": False, "use_cpu": True})
    assert recipe.objective == "scaled_bt" and recipe.data_format == "helpsteer3_preference"
    data = str(DATA / "helpsteer3_sample.jsonl")
    summary = run_training(
        load_recipe(
            None,
            {
                "objective": "scaled_bt",
                "model_name_or_path": str(tiny_model_dir),
                "train_data": data,
                "eval_data": data,
                "eval_split": "validation",
                "max_steps": 2,
                "use_cpu": True,
                "save_strategy": "no",
                "per_device_train_batch_size": 4,
                "max_length": 64,
                "output_dir": str(tmp_path / "m"),
            },
        )
    )
    assert summary["global_step"] == 2 and "dropped 1 (no preference" in summary["data"]["train"]["load"]
