"""The online active loop (`hsrm active`) and the live selection protocol (`hsrm select`), tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hsrm.embedding.annotate import cross_prompt_pairs, in_prompt_pairs, round_candidates
from hsrm.embedding.loop import ActiveStudyConfig, load_active_study, run_active_study

REPO = Path(__file__).resolve().parents[1]


def tiny_study(tmp_path, **overrides) -> ActiveStudyConfig:
    values = dict(
        synthetic={"dim": 12, "latent_dim": 3, "nuisance_dim": 2},
        train_prompts=60,
        test_prompts=6,
        test_responses=20,
        strategies=["random", "dopt", "pa_dopt", "entropy", "maxdiff", "det_xtx", "coreset", "batchbald"],
        batch_sizes=[20],
        seeds=[0],
        annotations=40,
        prompts_per_round=10,
        candidates_per_round=300,
        hidden=[16, 16],
        max_epochs=4,
        selection={"batchbald_samples": 16, "batchbald_configurations": 32},
        output=str(tmp_path / "study"),
    )
    values.update(overrides)
    return ActiveStudyConfig(**values)


# ---------------------------------------------------------------- candidates of a round


def test_in_prompt_pairs_are_all_45_pairs_of_10_responses():
    groups = [np.arange(10), np.arange(10, 20), np.array([20])]
    pairs = in_prompt_pairs(groups)
    assert len(pairs) == 2 * 45  # the one-response prompt yields nothing
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 90
    assert all((a < 10) == (b < 10) for a, b in pairs)  # never across prompts


def test_cross_prompt_pairs_are_distinct_and_across_prompts():
    prompt_ids = np.repeat(np.arange(20), 10)
    rng = np.random.default_rng(0)
    pairs = cross_prompt_pairs(np.arange(200), prompt_ids, 1000, rng)
    assert len(pairs) == 1000
    assert np.all(prompt_ids[pairs[:, 0]] != prompt_ids[pairs[:, 1]])
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 1000


def test_round_candidates_draw_prompts_and_keep_the_requested_number():
    prompt_ids = np.repeat(np.arange(50), 10)
    groups = [np.arange(10 * i, 10 * i + 10) for i in range(50)]
    pairs = round_candidates(groups, prompt_ids, "in-prompt", 8, 300, np.random.default_rng(0))
    assert len(pairs) == 300  # 8 prompts × 45 = 360 pairs, 300 kept
    assert len(np.unique(prompt_ids[pairs])) <= 8
    assert np.all(prompt_ids[pairs[:, 0]] == prompt_ids[pairs[:, 1]])


# ---------------------------------------------------------------- the loop end to end


def test_active_study_runs_end_to_end_and_writes_table_and_plots(tmp_path):
    config = tiny_study(tmp_path)
    results = run_active_study(config)
    out = Path(config.output)
    assert (out / "results.csv").exists() and (out / "summary.md").exists() and (out / "efficiency.png").exists()
    assert len(results) == 8 * 2  # 8 strategies × 2 rounds of 20
    assert sorted(results["annotations"].unique().tolist()) == [20, 40]
    for column in ("one_minus_spearman", "bon_reward", "bon_gain", "batch_error_rate", "select_seconds"):
        assert results[column].notna().all(), column
    first = results[results["round"] == 1]
    # one seed: every strategy gets the same first (random) batch and trains the same model on it
    assert first["one_minus_spearman"].nunique() == 1 and first["bon_reward"].nunique() == 1
    assert "| in-prompt | 20 | dopt | 40 |" in (out / "summary.md").read_text()
    # a second call finds every run finished and only rebuilds the table
    (out / "efficiency.png").unlink()
    again = run_active_study(config)
    assert again.equals(results) and (out / "efficiency.png").exists()


def test_cross_prompt_and_batch_size_sweep_draw_their_figures(tmp_path):
    config = tiny_study(
        tmp_path,
        strategies=["random", "dopt"],
        pairings=["in-prompt", "cross-prompt"],
        batch_sizes=[10, 20],
        annotations=20,
    )
    results = run_active_study(config)
    assert set(results["pairing"]) == {"in-prompt", "cross-prompt"}
    assert results.groupby("batch_size")["round"].max().to_dict() == {10: 2, 20: 1}
    cross = results[results["pairing"] == "cross-prompt"]
    assert cross["candidates"].max() == 300  # cross-prompt pairs are plentiful: the full cut is kept
    assert (Path(config.output) / "batch_sizes.png").exists() and (Path(config.output) / "pairings.png").exists()


def test_study_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="--strategies 'dop': choose one of random, dopt"):
        tiny_study(tmp_path, strategies=["dop"])
    with pytest.raises(ValueError, match="unknown keys: batch_size \\(did you mean batch_sizes\\?\\)"):
        load_active_study(None, {"batch_size": 10})
    with pytest.raises(ValueError, match="exceeds the annotation budget"):
        tiny_study(tmp_path, batch_sizes=[100])
    with pytest.raises(ValueError, match="selection: unknown option"):
        tiny_study(tmp_path, selection={"rigde": 1.0})


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "studies").glob("active_*.yaml")), ids=lambda p: p.name)
def test_every_shipped_active_study_parses(path):
    # the header line is the exact launch command (architecture.md: one YAML per experiment)
    assert path.read_text().splitlines()[0].startswith(f"# hsrm active recipes/studies/{path.name}")
    config = load_active_study(path)
    assert config.strategies and config.batch_sizes


def test_hsrm_active_cli_runs_a_tiny_study(tmp_path, capsys):
    from hsrm.cli import main

    config = tmp_path / "study.yaml"
    config.write_text(
        "synthetic: {dim: 8, latent_dim: 2, nuisance_dim: 1}\ntrain_prompts: 30\ntest_prompts: 4\ntest_responses: 10\n"
        "strategies: [random, dopt]\nbatch_sizes: [10]\nseeds: [0]\nannotations: 10\nprompts_per_round: 6\n"
        "candidates_per_round: 100\nhidden: [8]\nmax_epochs: 2\n"
    )
    assert (
        main(
            ["active", str(config), "--output-dir", str(tmp_path / "out"), "--seeds", "[0, 1]", "--strategies", "dopt"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| in-prompt | 10 | dopt | 10 |" in printed and "from 2 runs" in printed
    assert main(["active", str(config), "--strategies", "nope"]) == 1


# ---------------------------------------------------------------- hsrm select: the live protocol


@pytest.fixture()
def pool_file(tmp_path):
    from hsrm.embedding.synthetic import SyntheticWorld

    pool = SyntheticWorld(dim=10, latent_dim=3, nuisance_dim=1).sample(12, 6, seed=0)
    pool.save(tmp_path / "pool.npz")
    return tmp_path / "pool.npz", pool


def _label_pending(state_dir: Path, golden, override=None) -> list[dict]:
    state = json.loads((state_dir / "state.json").read_text())
    path = state_dir / state["pending"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["label"] = override(i, row) if override else int(golden[row["first"]] > golden[row["second"]])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_select_protocol_round_trip(pool_file, tmp_path):
    from hsrm.embedding.annotation_queue import select_step
    from hsrm.embedding.models import load_model

    path, pool = pool_file
    state_dir = tmp_path / "state"
    first = select_step(state_dir, embeddings=str(path), batch_size=8, strategy="dopt", hidden=[8], max_epochs=3)
    assert first["strategy"] == "random" and first["batch_size"] == 8 and first["open_pairs"] == 12 * 15
    rows = [json.loads(line) for line in Path(first["batch_file"]).read_text().splitlines()]
    assert all(
        row["label"] is None and pool.prompt_ids[row["first"]] == pool.prompt_ids[row["second"]] == row["prompt_id"]
        for row in rows
    )
    # nothing labelled yet: the batch stays pending, nothing is retrained
    waiting = select_step(state_dir)
    assert waiting["pending"] == "batch_0001.jsonl" and waiting["labels"] == 0
    # label it (one pair skipped): ingested, retrained, next batch chosen by D-opt among the rest
    labelled = _label_pending(
        state_dir,
        pool.golden,
        lambda i, r: (
            "skip" if i == 0 else ("first" if pool.golden[r["first"]] > pool.golden[r["second"]] else "second")
        ),
    )
    second = select_step(state_dir)
    assert (
        second["ingested_now"] == 7
        and second["labels"] == 7
        and second["strategy"] == "dopt"
        and second["open_pairs"] == 180 - 8
    )
    stored = [json.loads(line) for line in (state_dir / "labels.jsonl").read_text().splitlines()]
    assert [r["pair_id"] for r in stored] == [r["pair_id"] for r in labelled[1:]]
    assert all(r["label"] == int(pool.golden[r["first"]] > pool.golden[r["second"]]) for r in stored)
    assert load_model(state_dir / "model").input_dim == 10
    next_ids = {json.loads(line)["pair_id"] for line in Path(second["batch_file"]).read_text().splitlines()}
    assert next_ids.isdisjoint(r["pair_id"] for r in labelled)  # never asks a labelled or skipped pair again
    # the strategy may change between calls; the model settings may not
    _label_pending(state_dir, pool.golden)
    third = select_step(state_dir, strategy="pa_dopt", batch_size=5)
    assert third["strategy"] == "pa_dopt" and third["batch_size"] == 5 and third["labels"] == 15
    with pytest.raises(ValueError, match="fixed at the first call"):
        select_step(state_dir, hidden=[4])


def test_select_rejects_edited_pairs_and_bad_labels(pool_file, tmp_path):
    from hsrm.embedding.annotation_queue import select_step

    path, pool = pool_file
    state_dir = tmp_path / "state"
    select_step(state_dir, embeddings=str(path), batch_size=4, hidden=[8], max_epochs=2)
    _label_pending(state_dir, pool.golden, lambda i, r: "maybe" if i == 2 else 1)
    with pytest.raises(ValueError, match="line 3: label 'maybe'"):
        select_step(state_dir)
    rows = _label_pending(state_dir, pool.golden)
    rows[0]["second"] = rows[0]["first"]
    (state_dir / "batch_0001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="do not match pair"):
        select_step(state_dir)
    with pytest.raises(ValueError, match="needs --embeddings"):
        select_step(tmp_path / "fresh")


def test_select_partial_batch_returns_unlabelled_rows_to_the_pool(pool_file, tmp_path):
    from hsrm.embedding.annotation_queue import select_step

    path, pool = pool_file
    state_dir = tmp_path / "state"
    select_step(state_dir, embeddings=str(path), batch_size=6, hidden=[8], max_epochs=2)
    _label_pending(state_dir, pool.golden, lambda i, r: None if i >= 3 else 1)
    assert select_step(state_dir)["pending"] == "batch_0001.jsonl"
    step = select_step(state_dir, partial=True)
    assert step["ingested_now"] == 3 and step["open_pairs"] == 180 - 3


def test_hsrm_select_cli_with_jsonl_pairs_passes_extra_fields_through(tmp_path, capsys):
    from hsrm.cli import main

    rng = np.random.default_rng(0)
    np.save(tmp_path / "items.npy", rng.standard_normal((30, 5)).astype(np.float32))
    with open(tmp_path / "pairs.jsonl", "w") as handle:
        for i in range(40):
            a, b = rng.choice(30, 2, replace=False)
            handle.write(
                json.dumps({"first": int(a), "second": int(b), "prompt": f"q{i}", "response_1": "x", "response_2": "y"})
                + "\n"
            )
    state = tmp_path / "state"
    assert (
        main(
            [
                "select",
                str(state),
                "--embeddings",
                str(tmp_path / "items.npy"),
                "--pairs",
                str(tmp_path / "pairs.jsonl"),
                "--batch-size",
                "5",
                "--hidden",
                "8",
                "--max-epochs",
                "2",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    row = json.loads(Path(summary["batch_file"]).read_text().splitlines()[0])
    assert set(row) == {"pair_id", "first", "second", "prompt", "response_1", "response_2", "label"}
    assert row["prompt"] == f"q{row['pair_id']}"
