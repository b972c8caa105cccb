"""`hsrm demo --quick` runs every step end to end and writes a complete report."""

import json

import pytest

from hsrm.cli import main as cli_main

pytestmark = pytest.mark.slow


def test_quick_demo_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["demo", "--output", str(out), "--quick"]) == 0
    console = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0 and summary["expo_alpha"] >= 1.0
    assert len(summary["best_of_n"]["rewards"]) == 4
    assert summary["rewardbench"]["sections"]
    for name in ("README.md", "training_curves.png", "reward_distributions.png", "expo_search.png", "rewardbench.json"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "README.md").read_text()
    best = summary["best_of_n"]["rewards"].index(max(summary["best_of_n"]["rewards"]))
    # the console summary ends with the Best-of-N table, every row of it, the best one marked
    assert [line.split(" | ")[0] for line in console.splitlines() if line.startswith("| ") and " | " in line][-4:] == \
        [f"| {i}{' (best)' if i == best else ''}" for i in range(4)]
    assert "held-out pairwise accuracy" in report and "hsrm expo --weak" in report and "## Embedding-path study" in report
    assert (out / "expo" / "expo_search.json").exists() and (out / "study" / "results.csv").exists()
    assert summary["heldout_accuracy_95ci"][0] <= summary["heldout_accuracy"] <= summary["heldout_accuracy_95ci"][1]
    rb_sections = summary["rewardbench"]["sections"]
    assert {"Chat", "Chat Hard"} <= set(rb_sections)  # per-subset sampling reaches both sections of the sample

    # The report's `hsrm evaluate` commands reproduce the report's numbers.
    import shlex

    block = report.split("## Reproduce each step", 1)[1]
    evaluate_lines = [line for line in block.splitlines() if line.startswith("hsrm evaluate")]
    assert len(evaluate_lines) == 2
    rb_again = tmp_path / "rb_again.json"
    assert cli_main([*shlex.split(evaluate_lines[0])[1:], "--output", str(rb_again)]) == 0
    assert json.loads(rb_again.read_text())["rewardbench"]["overall"] == pytest.approx(summary["rewardbench"]["overall"], abs=1e-9)
    expo_again = tmp_path / "expo_again.json"
    assert cli_main([*shlex.split(evaluate_lines[1])[1:], "--output", str(expo_again)]) == 0
    assert json.loads(expo_again.read_text())["metrics"]["accuracy"] == pytest.approx(summary["expo_heldout_accuracy"], abs=1e-9)
