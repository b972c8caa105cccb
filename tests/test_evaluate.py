"""hsrm evaluate: RewardBench section arithmetic against hand computation (ties wrong), pairwise
accuracy and margin, rating errors, and the --justifier hand-off."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from conftest import write_jsonl
from hsrm.evaluation import pairwise_summary, rewardbench_scores


def test_rewardbench_sections_match_hand_computation():
    subsets = [
        "alpacaeval-easy",
        "alpacaeval-easy",
        "mt-bench-easy",  # Chat
        "llmbar-natural",
        "llmbar-natural",  # Chat Hard
        "math-prm",
        "hep-python",  # Reasoning
        "not-a-subset",
    ]
    correct = [True, False, True, True, False, True, False, True]
    got = rewardbench_scores(subsets, correct)
    chat = (0.5 * 100 + 1.0 * 28) / (100 + 28)  # = 0.609375
    chat_hard = 0.5  # one subset present
    reasoning = (1.0 * 984 + 0.0 * 164) / (984 + 164)  # math-prm weighted 984
    assert got["sections"]["Chat"]["score"] == pytest.approx(0.609375)
    assert got["sections"]["Chat"]["score"] == pytest.approx(chat)
    assert got["sections"]["Chat Hard"]["score"] == pytest.approx(chat_hard)
    assert got["sections"]["Reasoning"]["score"] == pytest.approx(reasoning)
    assert got["overall"] == pytest.approx((chat + chat_hard + reasoning) / 3)
    assert got["sections_missing"] == ["Safety"]
    assert got["unscored_subsets"] == ["not-a-subset"]
    assert got["subsets"]["alpacaeval-easy"] == {"section": "Chat", "n": 2, "correct": 1, "accuracy": 0.5}


def test_pairwise_summary_counts_ties_as_wrong():
    got = pairwise_summary([1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 4.0, -1.0])
    assert got["accuracy"] == 0.5 and got["ties"] == 1
    assert got["margin"] == pytest.approx((0 + 1 - 1 + 1) / 4)
    with pytest.raises(ValueError, match="as many chosen"):
        pairwise_summary([1.0], [])


def _independent_reward(model, tokenizer, prompt: str, response: str) -> float:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, 0])


def test_evaluate_cli_on_handmade_rewardbench_file(tmp_path, tiny_model_dir, capsys):
    """End to end on a hand-made RewardBench file. Each pair is oriented (using an independent
    forward pass) so that the model gets a chosen pattern right and wrong; the section scores are
    then worked out by hand with the official weights written out literally."""
    from hsrm.cli import main as cli
    from hsrm.modeling import load_reward_model

    # (subset, prompt, response a, response b, should the model get it right?)
    rows = [
        ("alpacaeval-easy", "How do I bake bread?", "Mix flour, water, yeast and salt.", "no", True),
        ("alpacaeval-easy", "What is the capital of France?", "Paris.", "The capital of France is Paris.", False),
        ("alpacaeval-easy", "Tie?", "exactly the same text", "exactly the same text", None),  # a tie: counts as wrong
        ("mt-bench-med", "Say thank you.", "Thank you!", "bad terrible wrong", True),
        ("llmbar-natural", "Python list?", "print([1, 2, 3])", "maybe rude", True),
        ("llmbar-natural", "Numbers?", "0 1 2 3", "yes no maybe", False),
        ("donotanswer", "Something dangerous", "Sorry, I cannot help with that.", "Sure, here is how.", True),
        ("hep-go", "Go code?", "func main() {}", "print('x')", False),
        ("math-prm", "2+2?", "4", "5", True),
    ]
    model, tokenizer, _ = load_reward_model(str(tiny_model_dir), device="cpu")
    records = []
    for i, (subset, prompt, a, b, right) in enumerate(rows):
        a_wins = _independent_reward(model, tokenizer, prompt, a) > _independent_reward(model, tokenizer, prompt, b)
        chosen, rejected = (a, b) if right is None or a_wins == right else (b, a)
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "subset": subset, "id": i})
    data = write_jsonl(tmp_path / "rb.jsonl", records)
    out = tmp_path / "result.json"
    assert (
        cli(
            ["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--batch-size", "1"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    chat = ((1 / 3) * 100 + 1.0 * 40) / (100 + 40)  # alpacaeval-easy 1 of 3 (tie wrong), mt-bench-med 1 of 1
    chat_hard = 0.5  # llmbar-natural 1 of 2
    safety = 1.0  # donotanswer 1 of 1
    reasoning = (0.0 * 164 + 1.0 * 984) / (164 + 984)  # hep-go 0 of 1, math-prm 1 of 1 (weight 984)
    sections = result["rewardbench"]["sections"]
    assert sections["Chat"]["score"] == pytest.approx(chat, abs=1e-12)
    assert sections["Chat Hard"]["score"] == pytest.approx(chat_hard, abs=1e-12)
    assert sections["Safety"]["score"] == pytest.approx(safety, abs=1e-12)
    assert sections["Reasoning"]["score"] == pytest.approx(reasoning, abs=1e-12)
    assert result["rewardbench"]["overall"] == pytest.approx((chat + chat_hard + safety + reasoning) / 4, abs=1e-12)
    assert result["rewardbench"]["subsets"]["alpacaeval-easy"]["correct"] == 1
    assert result["metrics"]["ties"] == 1
    assert result["primary_metric"]["name"] == "rewardbench_overall"
    assert "Chat Hard" in printed and "overall (mean of 4 sections)" in printed and f"{100 * chat:.1f}" in printed


def test_pairs_accuracy_and_margin_match_independent_rewards(tmp_path, tiny_model_dir):
    from hsrm.evaluation import evaluate_model
    from hsrm.modeling import load_reward_model

    rows = [
        {"prompt": f"Question {i}?", "chosen": c, "rejected": r}
        for i, (c, r) in enumerate(
            [
                ("Paris.", "no"),
                ("Thank you, here is a clear answer.", "bad"),
                ("yes", "maybe rude"),
                ("Bake bread with flour.", "terrible"),
            ]
        )
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = evaluate_model(str(tiny_model_dir), str(data), batch_size=3, progress=False)
    model, tokenizer, _ = load_reward_model(str(tiny_model_dir), device="cpu")
    margins = [
        _independent_reward(model, tokenizer, r["prompt"], r["chosen"])
        - _independent_reward(model, tokenizer, r["prompt"], r["rejected"])
        for r in rows
    ]
    assert result["format"] == "pairs" and result["n"] == 4
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean([m > 0 for m in margins]))
    assert result["metrics"]["margin"] == pytest.approx(np.mean(margins), abs=1e-5)
    assert "rewardbench" not in result


def test_ratings_mae_rmse_pearson(tmp_path, tiny_model_dir):
    from hsrm.evaluation import evaluate_model
    from hsrm.modeling import load_reward_model

    rows = [
        {
            "prompt": f"Question {i}?",
            "response": r,
            "helpfulness": h,
            "correctness": 2,
            "coherence": 3,
            "complexity": 1,
            "verbosity": 1,
        }
        for i, (r, h) in enumerate([("Paris.", 4), ("no", 0), ("Thank you!", 3), ("bad terrible", 1), ("yes", 2)])
    ]
    data = write_jsonl(tmp_path / "ratings.jsonl", rows)
    result = evaluate_model(str(tiny_model_dir), str(data), batch_size=2, progress=False)
    model, tokenizer, _ = load_reward_model(str(tiny_model_dir), device="cpu")
    pred = np.array([_independent_reward(model, tokenizer, r["prompt"], r["response"]) for r in rows])
    label = np.array([r["helpfulness"] for r in rows], dtype=float)
    metrics = result["metrics"]
    assert result["format"] == "ratings"
    assert metrics["helpfulness_mae"] == pytest.approx(np.abs(pred - label).mean(), abs=1e-5)
    assert metrics["helpfulness_rmse"] == pytest.approx(math.sqrt(((pred - label) ** 2).mean()), abs=1e-5)
    assert metrics["helpfulness_pearson"] == pytest.approx(np.corrcoef(pred, label)[0, 1], abs=1e-3)


def test_justifier_flag_forwards_the_options(monkeypatch, capsys):
    from hsrm.evaluation import main

    seen = {}
    fake = types.ModuleType("hsrm.justifier_eval")
    fake.run_justifier_evaluation = lambda opts: (seen.setdefault("opts", opts) and {"done": True}, "judged")
    monkeypatch.setitem(sys.modules, "hsrm.justifier_eval", fake)
    main(["--justifier", "--model", "some/dir", "--data", "rb.jsonl", "--max-new-tokens", "7"])
    assert seen["opts"].justifier and seen["opts"].model == "some/dir" and seen["opts"].max_new_tokens == 7
    assert capsys.readouterr().out.strip() == "judged"


def test_justifier_is_in_evaluate_help(capsys):
    from hsrm.cli import main

    assert main(["evaluate", "--help"]) == 0
    printed = capsys.readouterr().out
    assert "--justifier" in printed and "--max_new_tokens" in printed


@pytest.mark.shared_data
def test_real_rewardbench_sample_first_rows(shared_data, tiny_model_dir):
    from hsrm.evaluation import evaluate_model

    source = shared_data / "rewardbench_sample" / "reward_bench_filtered_sample.jsonl"
    result = evaluate_model(str(tiny_model_dir), str(source), limit=24, max_length=128, batch_size=8, progress=False)
    bench = result["rewardbench"]
    assert result["n"] == 24 and list(bench["subsets"]) == ["alpacaeval-easy"]
    assert list(bench["sections"]) == ["Chat"]
    assert bench["overall"] == bench["subsets"]["alpacaeval-easy"]["accuracy"]
    assert bench["subsets"]["alpacaeval-easy"]["n"] == 24
    assert 0 < result["metrics"]["reward_std"]  # real text gives distinct rewards


def test_bad_rows_stop_evaluation_unless_skipped_and_counted(tmp_path, tiny_model_dir, capsys):
    from hsrm.data.io import DataError
    from hsrm.evaluation import evaluate_model, main

    rows = [
        {"prompt": "Q1?", "chosen": "Paris.", "rejected": "no"},
        {"prompt": "Q2?", "chosen": "same", "rejected": "same"},
        {"prompt": "Q3?", "chosen": "Yes, gladly.", "rejected": ""},
        {"prompt": "Q4?", "chosen": "Bake it.", "rejected": "bad"},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2 \(counting from 1\), field .rejected.: identical"):
        evaluate_model(str(tiny_model_dir), str(data), progress=False)
    kept = evaluate_model(str(tiny_model_dir), str(data), progress=False, on_bad_rows="skip")
    assert kept["n"] == 2 and "kept 2" in kept["load"]
    result = main(
        [
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--on-bad-rows",
            "skip",
            "--output",
            str(tmp_path / "eval.json"),
        ]
    )
    assert result["n"] == 2 and json.loads((tmp_path / "eval.json").read_text())["n"] == 2


def test_per_subset_keeps_the_first_rows_of_every_subset(tmp_path, tiny_model_dir):
    from hsrm.evaluation import evaluate_model

    subsets = ["alpacaeval-easy"] * 5 + ["llmbar-natural"] * 3 + ["alpacaeval-easy"] * 2 + ["mt-bench-hard"]
    rows = [
        {"prompt": f"Q{i}?", "chosen": f"A good answer {i}.", "rejected": "no", "subset": s, "id": str(i)}
        for i, s in enumerate(subsets)
    ]
    data = write_jsonl(tmp_path / "rb.jsonl", rows)
    result = evaluate_model(str(tiny_model_dir), str(data), data_format="rewardbench", per_subset=2, progress=False)
    assert result["n"] == 5  # 2 alpacaeval-easy (rows 0, 1) + 2 llmbar-natural + 1 mt-bench-hard
    assert {k: v["n"] for k, v in result["rewardbench"]["subsets"].items()} == {
        "alpacaeval-easy": 2,
        "llmbar-natural": 2,
        "mt-bench-hard": 1,
    }
    assert set(result["rewardbench"]["sections"]) >= {"Chat", "Chat Hard"}
    with pytest.raises(ValueError, match="per_subset needs RewardBench"):
        evaluate_model(
            str(tiny_model_dir), str(write_jsonl(tmp_path / "p.jsonl", rows[:2])), data_format="pairs", per_subset=2
        )
