"""`hsrm study`: a tiny synthetic grid end to end (table, summary, plots, resume), every shipped
study file, and the direction of the paper's cross-prompt finding on the similar design."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hsrm.embedding.study import StudyConfig, load_study, run_setup, run_study
from hsrm.embedding.synthetic import SyntheticWorld

REPO_ROOT = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted(
    p
    for folder in (REPO_ROOT / "recipes" / "studies", REPO_ROOT / "hsrm" / "recipes" / "studies")  # + package data
    for p in folder.glob("*.yaml")
    if p.read_text().startswith("# hsrm study ")
)  # the folder also holds `hsrm active` files
TINY_FIT = {"hidden": [32, 16], "max_epochs": 8, "batch_size": 128}


def tiny_study(tmp_path: Path, **changes) -> dict:
    study = {
        "name": "tiny-test",
        "output": str(tmp_path / "out"),
        "data": {
            "synthetic": {
                "dim": 16,
                "latent_dim": 4,
                "nuisance_dim": 4,
                "n_train_prompts": 300,
                "n_test_prompts": 20,
                "test_responses": 30,
            }
        },
        "grid": {
            "methods": ["bt-mlp", "clf-lgb"],
            "betas": [1.0],
            "annotation_counts": [300],
            "designs": ["random"],
            "pairings": ["in-prompt"],
            "seeds": [0],
        },
        "grids": [
            {"betas": [0.5, 1.0, 5.0]},
            {"annotation_counts": [100, 300]},
            {"pairings": ["in-prompt", "cross-prompt"]},
            {"designs": ["similar", "diverse"], "pairings": ["in-prompt", "cross-prompt"]},
        ],
        "fit": TINY_FIT,
        "lgb_params": {"num_iterations": 20},
        "n_jobs": 1,  # one process here (worker start-up dominates tiny fits); two are tested below
    }
    study.update(changes)
    return study


def test_study_cli_writes_table_summary_plots_and_resumes(tmp_path, capsys):
    from hsrm.cli import main

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(tmp_path)))
    config = load_study(path)
    setups = config.setups()
    # 2 methods × (3 β + 1 extra count + 1 extra pairing + 4 design/pairing) distinct setups
    assert len(setups) == 2 * (3 + 1 + 1 + 4)
    assert main(["study", str(path)]) == 0
    out = tmp_path / "out"
    import pandas as pd

    table = pd.read_csv(out / "results.csv")
    assert len(table) == len(setups)
    for column in (
        "method",
        "beta",
        "n_annotations",
        "design",
        "pairing",
        "seed",
        "error_rate",
        "expected_error_rate",
        "bon_gain",
        "oracle_gain",
        "spearman",
        "fit_seconds",
    ):
        assert column in table.columns
    # Lower β, more annotation errors, near the σ(β|Δr|) expectation.
    by_beta = table[(table.design == "random") & (table.pairing == "in-prompt") & (table.n_annotations == 300)]
    rates = by_beta.groupby("beta")["error_rate"].mean()
    assert rates[0.5] > rates[1.0] > rates[5.0]
    assert np.allclose(table["error_rate"], table["expected_error_rate"], atol=0.1)
    for name in (
        "fig1_methods.png",
        "fig2_error_rate.png",
        "fig3_annotations.png",
        "fig4_cross_prompt.png",
        "fig5_designs.png",
        "summary.md",
        "study.json",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "fig2_error_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| similar | cross-prompt |" in (out / "summary.md").read_text()
    # One finished file per setup; a rerun fits only the setups whose file is missing.
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == len(setups)
    lost = out / "runs" / "clf-lgb__beta5.0__n300__random__in-prompt__s0.json"
    row = json.loads(lost.read_text())
    assert {k: row[k] for k in ("method", "beta", "n_annotations", "seed")} == {
        "method": "clf-lgb",
        "beta": 5.0,
        "n_annotations": 300,
        "seed": 0,
    }
    lost.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in runs if p != lost}
    capsys.readouterr()
    assert main(["study", str(path), "--table-format", "parquet", "--no-plots"]) == 0
    assert {p: p.stat().st_mtime_ns for p in runs if p != lost} == stamps  # nothing else refitted
    refitted = json.loads(lost.read_text())
    refitted.pop("fit_seconds"), row.pop("fit_seconds")  # wall time: the only thing a refit may change
    assert refitted == row
    assert len(pd.read_parquet(out / "results.parquet")) == len(setups)


def test_worker_plan_honours_n_jobs_up_to_the_cpu_count(monkeypatch, caplog):
    from hsrm.embedding.runner import worker_plan

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_plan(3, 10) == (3, 2)  # three processes asked, three run, sharing 8 CPUs' threads
    assert worker_plan(3, 1) == (1, 8)  # never more processes than tasks
    assert not caplog.records
    with caplog.at_level("WARNING", logger="hsrm.embedding.runner"):
        assert worker_plan(12, 20) == (8, 1)
    assert "n_jobs 12: this machine has 8 CPUs, so 8 worker processes run" in caplog.text
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert worker_plan(2, 10) == (2, 1)


@pytest.mark.slow
def test_two_workers_give_the_same_table_as_one(tmp_path):
    grid = {
        "methods": ["clf-mlp", "clf-lgb"],
        "betas": [1.0, 3.0],
        "annotation_counts": [200],
        "designs": ["random"],
        "pairings": ["in-prompt"],
        "seeds": [0],
    }
    tables = []
    for jobs in (1, 2):
        config = StudyConfig(**tiny_study(tmp_path / f"j{jobs}", grid=grid, grids=[], n_jobs=jobs, plots=False))
        tables.append(run_study(config, progress=False).sort_values(["method", "beta"]).reset_index(drop=True))
    for column in ("bon_gain", "spearman", "error_rate"):
        np.testing.assert_allclose(tables[0][column], tables[1][column], rtol=1e-6)


def test_run_setup_is_deterministic_and_methods_share_annotations():
    world = SyntheticWorld(dim=8, latent_dim=3, nuisance_dim=2)
    train, test = world.train_test(150, 10, test_responses=20)
    setup = {
        "method": "clf-mlp",
        "beta": 2.0,
        "n_annotations": 150,
        "design": "random",
        "pairing": "cross-prompt",
        "seed": 3,
    }
    a = run_setup(setup, train, test, {"hidden": [8, 4], "max_epochs": 3})
    b = run_setup(setup, train, test, {"hidden": [8, 4], "max_epochs": 3})
    other = run_setup(dict(setup, method="clf-lgb"), train, test, lgb_params={"num_iterations": 5})
    assert a["bon_gain"] == b["bon_gain"] and a["spearman"] == b["spearman"]
    assert a["error_rate"] == other["error_rate"] and a["n_pairs"] == 150  # same labels whatever the method


def test_study_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        StudyConfig(grid={"methods": ["svm"]})
    with pytest.raises(ValueError, match="unknown grid axes"):
        StudyConfig(grid={"beta": [1.0]})
    with pytest.raises(ValueError, match="data must be"):
        StudyConfig(data={"files": "x"})
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: y\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_study(path)


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.name for p in STUDY_FILES])
def test_every_shipped_study_file_parses(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# hsrm study "), "the header line is the exact launch command"
    config = load_study(path)
    assert config.setups(), path
    if "embeddings" in config.data:
        spec = config.data["embeddings"]
        assert str(spec["path"] if isinstance(spec, dict) else spec).endswith(".npz")


@pytest.mark.slow
def test_cross_prompt_beats_in_prompt_when_same_prompt_pairs_are_similar():
    """Section 6.3 / figure 5, on synthetic data over three seeds: with the similar design the
    in-prompt labels are nearly coin flips, and re-pairing the same responses across prompts gives
    a clearly better reward model (BoN gain and Spearman)."""
    world = SyntheticWorld(dim=32, latent_dim=6, nuisance_dim=6, seed=1)
    train, test = world.train_test(1500, 30, test_responses=50)
    gains = {"in-prompt": [], "cross-prompt": []}
    rhos = {"in-prompt": [], "cross-prompt": []}
    for seed in range(3):
        for pairing in gains:
            row = run_setup(
                {
                    "method": "bt-mlp",
                    "beta": 1.0,
                    "n_annotations": 1500,
                    "design": "similar",
                    "pairing": pairing,
                    "seed": seed,
                },
                train,
                test,
                {"hidden": [64, 32], "max_epochs": 10},
            )
            gains[pairing].append(row["bon_gain"])
            rhos[pairing].append(row["spearman"])
    assert min(gains["cross-prompt"]) > max(gains["in-prompt"]), gains
    assert np.mean(rhos["cross-prompt"]) > np.mean(rhos["in-prompt"]) + 0.1, rhos


def test_study_on_an_embeddings_file_splits_it_by_prompt(tmp_path):
    """data: {embeddings: FILE.npz} (what `hsrm embed` writes with a golden reward), relative to base_dir."""
    SyntheticWorld(dim=8, latent_dim=3, nuisance_dim=2).sample(40, 6).save(tmp_path / "pool.npz")
    grid = {"methods": ["bt-mlp"], "annotation_counts": [60], "seeds": [0]}
    config = StudyConfig(
        **tiny_study(
            tmp_path,
            data={"embeddings": {"path": "pool.npz", "test_fraction": 0.25}},
            grid=grid,
            grids=[],
            plots=False,
            output="out",
        )
    )
    table = run_study(config, base_dir=tmp_path, progress=False)
    assert len(table) == 1 and table["test_prompts"].item() == 10 and table["test_responses"].item() == 60
    assert json.loads((tmp_path / "out" / "study.json").read_text())["data"]["data"] == str(tmp_path / "pool.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz: no such embeddings file"):
        run_study(
            StudyConfig(**tiny_study(tmp_path, data={"embeddings": "missing.npz"}, output="out2")),
            base_dir=tmp_path,
        )
