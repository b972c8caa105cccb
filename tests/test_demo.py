"""`hsrm demo --quick` runs every step end to end and writes a complete report."""

import json

import pytest

from hsrm.cli import main as cli_main

pytestmark = pytest.mark.slow


def test_quick_demo_writes_a_complete_report(tmp_path):
    out = tmp_path / "report"
    assert cli_main(["demo", "--out", str(out), "--quick"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0 and summary["expo_alpha"] >= 1.0
    assert len(summary["best_of_n"]["rewards"]) == 4
    assert summary["rewardbench"]["sections"]
    for name in ("README.md", "training_curves.png", "reward_distributions.png", "expo_search.png", "rewardbench.json"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "README.md").read_text()
    assert "held-out pairwise accuracy" in report and "hsrm expo --weak" in report and "## Embedding-path study" in report
    assert (out / "expo" / "expo_search.json").exists() and (out / "study" / "results.csv").exists()
