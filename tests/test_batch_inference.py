"""Batch inference at scale (issue 31): ``hsrm score`` and ``hsrm evaluate`` in shards, across the
processes of ``torchrun -m hsrm …``, resumable from ``OUTPUT.parts/``; the same bytes as one process."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, write_jsonl
from hsrm import shards
from hsrm.cli import main

BIN = Path(sys.executable).parent
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    rng = random.Random(0)
    text = lambda low, high: " ".join(rng.choices(WORDS, k=rng.randint(low, high)))  # noqa: E731
    rows = [{"prompt": text(2, 30), "responses": [text(1, 40) for _ in range(4)]} for _ in range(24)]
    return write_jsonl(tmp_path_factory.mktemp("bon") / "candidates.jsonl", rows)


@contextlib.contextmanager
def one_thread():
    """The in-process run with the launched processes' thread count (OMP_NUM_THREADS=1): float sums
    split over another number of threads round differently, and the comparison is byte for byte."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def launch_two(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), "-m", "hsrm", *argv]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_write_the_same_bytes_as_one(tmp_path, tiny_model_dir, candidates):
    common = ["score", "--model", str(tiny_model_dir), "--data", str(candidates), "--batch-size", "4"]
    with one_thread():
        assert main([*common, "--output", str(tmp_path / "one.jsonl")]) == 0
    done = launch_two(*common, "--output", str(tmp_path / "two.jsonl"), cwd=tmp_path)
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert done.stdout.count("scored 96 responses to 24 prompts") == 1  # rank 0 alone reports
    assert "rank 0 of 2" in done.stderr and "rank 1 of 2" in done.stderr  # each rank logs its share once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]  # no parts left


@pytest.mark.slow
def test_two_processes_evaluate_to_the_same_metrics_and_rewards(tmp_path, tiny_model_dir):
    from conftest import make_learnable_pairs

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(20))
    common = ["evaluate", "--model", str(tiny_model_dir), "--data", str(pairs), "--batch-size", "3"]
    with one_thread():
        assert main([*common, "--output", str(tmp_path / "one.json")]) == 0
    launch_two(*common, "--output", str(tmp_path / "two.json"), cwd=tmp_path)
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert two["metrics"] == one["metrics"] and two["rewards"] == one["rewards"]
    assert not (tmp_path / "two.json.parts").exists()


@pytest.mark.slow
def test_two_processes_embed_the_same_arrays(tmp_path, tiny_model_dir):
    import numpy as np

    from conftest import make_learnable_pairs

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(20))
    common = ["embed", "--model", str(tiny_model_dir), "--data", str(pairs), "--batch-size", "3", "--cache", "none"]
    with one_thread():
        assert main([*common, "--output", str(tmp_path / "one.npz")]) == 0
    done = launch_two(*common, "--output", str(tmp_path / "two.npz"), cwd=tmp_path)
    assert sum(line.startswith("wrote ") for line in done.stdout.splitlines()) == 1  # rank 0 alone reports
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert sorted(one.files) == sorted(two.files)
        for name in one.files:
            if name != "meta":
                np.testing.assert_allclose(two[name], one[name], atol=1e-5, rtol=0)


class Killed(Exception):
    pass


def test_a_killed_job_resumes_and_scores_only_the_rest(tmp_path, tiny_model_dir, candidates, monkeypatch, capsys):
    argv = ["score", "--model", str(tiny_model_dir), "--data", str(candidates), "--batch-size", "4"]
    assert main([*argv, "--output", str(tmp_path / "whole.jsonl")]) == 0
    capsys.readouterr()
    real = shards.score_sequences
    scored: list[int] = []

    def counted(model, sequences, **engine):
        if len(scored) == 1 and killing:  # the job dies while its second shard is computed
            raise Killed
        scored.append(len(sequences))
        return real(model, sequences, **engine)

    monkeypatch.setattr(shards, "score_sequences", counted)
    output = tmp_path / "scored.jsonl"
    killing = True
    assert main([*argv, "--output", str(output)]) == 1
    parts = tmp_path / "scored.jsonl.parts"
    assert len(list(parts.glob("part-*.npy"))) == 1 and not output.exists()
    first_shard = scored[0]
    killing, scored[:] = False, []
    assert main([*argv, "--output", str(output)]) == 0
    assert f"reused {first_shard} rewards from {parts}" in capsys.readouterr().out
    assert sum(scored) == 96 - first_shard  # only the remaining sequences went through the engine
    assert output.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert not parts.exists()


def test_a_rerun_with_another_model_is_refused_in_one_line(tmp_path, tiny_model_dir, candidates, monkeypatch, capsys):
    from hsrm.tiny import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other", seed=7)

    def killed(*args, **kwargs):
        raise Killed

    output = tmp_path / "scored.jsonl"
    with monkeypatch.context() as patch:
        patch.setattr(shards, "score_sequences", killed)
        assert main(["score", "--model", str(tiny_model_dir), "--data", str(candidates), "--output", str(output)]) == 1
    capsys.readouterr()
    assert main(["score", "--model", str(other), "--data", str(candidates), "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("hsrm score: error: ")
    assert "scored.jsonl.parts" in err and "weights differ" in err


def test_shards_depend_on_the_data_alone_and_balance_tokens():
    lengths = [random.Random(1).randint(1, 500) for _ in range(5000)]
    cut = shards.contiguous_shards(lengths)
    assert [i for r in cut for i in r] == list(range(5000))  # contiguous, in order, each sequence once
    assert len(cut) >= shards.MIN_SHARDS and max(map(len, cut)) <= shards.SHARD_SEQUENCES
    tokens = [sum(lengths[i] for i in r) for r in cut]
    for world in (2, 3, 8):
        loads = [sum(tokens[s] for s in owned) for owned in shards.assign_shards(tokens, world)]
        assert max(loads) - min(loads) <= max(tokens)  # no rank holds more than one shard beyond another


def test_bench_runs_at_a_tiny_size():
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "batch_inference.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 processes / 1 process:" in done.stdout
