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
    assert [line.split(" | ")[0] for line in console.splitlines() if line.startswith("| ") and " | " in line][-4:] == [
        f"| {i}{' (best)' if i == best else ''}" for i in range(4)
    ]
    assert (
        "held-out pairwise accuracy" in report and "hsrm expo --weak" in report and "## Embedding-path study" in report
    )
    assert (out / "expo" / "expo_search.json").exists() and (out / "study" / "results.csv").exists()
    assert summary["heldout_accuracy_95ci"][0] <= summary["heldout_accuracy"] <= summary["heldout_accuracy_95ci"][1]
    rb_sections = summary["rewardbench"]["sections"]
    assert {"Chat", "Chat Hard"} <= set(rb_sections)  # per-subset sampling reaches both sections of the sample

    # The report's `hsrm evaluate` commands reproduce the report's numbers.
    import shlex

    assert report.splitlines()[0].startswith("# hsrm demo report: ")  # the first line says where the data came from
    assert "hsrm serve --model" in report and "hsrm push --model" in report  # the next steps
    block = report.split("## Reproduce each step", 1)[1].split("## Next steps", 1)[0]
    evaluate_lines = [line for line in block.splitlines() if line.startswith("hsrm evaluate")]
    assert len(evaluate_lines) == 2
    rb_again = tmp_path / "rb_again.json"
    assert cli_main([*shlex.split(evaluate_lines[0])[1:], "--output", str(rb_again)]) == 0
    assert json.loads(rb_again.read_text())["rewardbench"]["overall"] == pytest.approx(
        summary["rewardbench"]["overall"], abs=1e-9
    )
    expo_again = tmp_path / "expo_again.json"
    assert cli_main([*shlex.split(evaluate_lines[1])[1:], "--output", str(expo_again)]) == 0
    assert json.loads(expo_again.read_text())["metrics"]["accuracy"] == pytest.approx(
        summary["expo_heldout_accuracy"], abs=1e-9
    )


def test_a_demo_on_generated_data_does_not_name_the_real_sets(tmp_path, monkeypatch):
    import hsrm.default_model as default_model
    import hsrm.demo as demo

    monkeypatch.setattr(demo, "SHARED", tmp_path / "no-shared-here")
    monkeypatch.setattr(default_model, "_hub_reachable", lambda timeout=3.0: False)
    out = tmp_path / "report"
    assert cli_main(["demo", "--output", str(out), "--quick"]) == 0
    report = (out / "README.md").read_text()
    assert report.startswith("# hsrm demo report: GENERATED")
    results = report.split("## Results", 1)[1].split("## Best-of-N", 1)[0]
    assert "generated pairs" in results and "generated RewardBench-style sample" in results
    assert "HH-RLHF" not in results and "| 3. RewardBench" not in results


# ------------------------------------------------------------------------------ where the data comes from
def test_data_dir_then_shared_then_hub_then_generated(tmp_path, monkeypatch, caplog):
    import datasets

    import hsrm.default_model as default_model
    import hsrm.demo as demo

    monkeypatch.setattr(demo, "SHARED", tmp_path / "no-shared-here")
    monkeypatch.setattr(default_model, "_hub_reachable", lambda timeout=3.0: False)
    generated = demo.data_sources(tmp_path, profile=demo.QUICK)
    assert generated["note"].startswith("GENERATED") and "pass --data-dir" in generated["note"]
    assert "falls back to a GENERATED toy data set" in caplog.text

    # The Hub branch, with a stand-in for datasets.load_dataset (no network in tests): it asks for the
    # right repos, folders and splits and keeps the sizes the demo uses.
    asked = []

    def fake_load_dataset(repo, data_dir=None, split=None):
        asked.append((repo, data_dir, split))
        if repo == "Anthropic/hh-rlhf":
            rows = [
                {
                    "chosen": f"\n\nHuman: q{i}?\n\nAssistant: good {i}",
                    "rejected": f"\n\nHuman: q{i}?\n\nAssistant: bad",
                }
                for i in range(500)
            ]
        elif repo == "nvidia/HelpSteer2":
            rows = [
                {
                    "prompt": f"q{i}",
                    "response": "r",
                    **{a: 2 for a in ("helpfulness", "correctness", "coherence", "complexity", "verbosity")},
                }
                for i in range(300)
            ]
        else:
            rows = [
                {"prompt": "q", "chosen": "a", "rejected": "b", "subset": s, "id": i}
                for i, s in enumerate(["alpacaeval-easy"] * 20 + ["mt-bench-hard"] * 20)
            ]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(default_model, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = demo.data_sources(tmp_path / "work", profile=demo.QUICK)
    assert hub["note"].startswith("real data from the Hugging Face Hub")
    assert sorted(asked) == sorted(
        [
            ("Anthropic/hh-rlhf", "helpful-base", "test"),
            ("Anthropic/hh-rlhf", "helpful-online", "test"),
            ("Anthropic/hh-rlhf", "helpful-rejection-sampled", "test"),
            ("nvidia/HelpSteer2", None, "train"),
            ("allenai/reward-bench", None, "filtered"),
        ]
    )
    rb_rows = [json.loads(line) for line in open(hub["rewardbench"])]
    assert len(rb_rows) == 2 * demo.QUICK.rewardbench_per_subset  # the first N of every subset
    assert len(open(hub["train_pairs"]).read().splitlines()) == demo.QUICK.bt_pairs + 64

    # An explicit folder wins over everything, and must hold the files.
    folder = tmp_path / "copy"
    for role, (relative, _) in demo.DATA_FILES.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text("")
    assert demo.data_sources(tmp_path, str(folder))["note"].startswith(f"real data from {folder}")
    (folder / "helpsteer1" / "nvidia_HelpSteer_sample.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="lacks helpsteer1/nvidia_HelpSteer_sample.jsonl"):
        demo.data_sources(tmp_path, str(folder))


def test_the_report_folder_may_not_hold_the_data_dir_even_with_overwrite(tmp_path):
    import hsrm.demo as demo

    data = tmp_path / "report" / "mydata"
    data.mkdir(parents=True)
    (data / "kept.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match=r"--output .*report holds the input .*mydata"):
        demo.run_demo(tmp_path / "report", quick=True, overwrite=True, data_dir=str(data))
    assert (data / "kept.jsonl").read_text() == '{"a": 1}\n'
