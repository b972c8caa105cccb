"""Shared fixtures: a tiny Llama reward model and tokenizer built once per session, and the path
to ../shared/data when it exists. Nothing here touches the network."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# Two CI cores: one torch thread per test process (tiny models are slower with more).
torch.set_num_threads(1)  # tiny models: thread overhead outweighs any parallel gain
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tokenized training data is cached by fingerprint under datasets' cache (hsrm.data.tokenize): a
# session gets its own, so no test reads what an earlier checkout of the code wrote. Subprocess runs
# inherit it, as the ranks of a real run share one cache.
if "HF_DATASETS_CACHE" not in os.environ:
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hsrm-tests-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama sequence classifier (1 output) with a BPE tokenizer whose pad == eos."""
    from hsrm.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture
def nest(tmp_path, tiny_model_dir):
    """A user's folder holding two models (weak and strong) and notes of their own."""
    root = tmp_path / "nest"
    shutil.copytree(tiny_model_dir, root / "weak")
    shutil.copytree(tiny_model_dir, root / "strong")
    (root / "notes.txt").write_text("my experiment notes\n")
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def make_learnable_pairs(n: int, seed: int = 0, with_strength: bool = True) -> list[dict]:
    """Pairs whose chosen side is always a polite, on-topic answer and whose rejected side is a
    short rude one: a tiny model learns this in a few dozen steps."""
    import random

    rng = random.Random(seed)
    good = [
        "The capital of France is Paris.",
        "Thank you, here is a clear answer.",
        "Yes, please bake bread with flour and water.",
    ]
    bad = ["no", "bad terrible wrong", "maybe rude"]
    rows = []
    for i in range(n):
        row = {"prompt": f"Question {i}: how to bake bread?", "chosen": rng.choice(good), "rejected": rng.choice(bad)}
        if with_strength:
            row["strength"] = rng.choice([1, 2, 3])
        rows.append(row)
    return rows
