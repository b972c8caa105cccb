"""A plain install (no deepspeed extra) trains, and asking for an extra that is missing is one line.

deepspeed is hidden from a subprocess the way an install without it looks to accelerate and
transformers: ``importlib.util.find_spec`` does not find it and importing it fails.
"""

import subprocess
import sys

import pytest

from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl

HIDE_DEEPSPEED = """
import importlib.util, sys
_find_spec = importlib.util.find_spec
def find_spec(name, *args, **kwargs):
    return None if name.split(".")[0] == "deepspeed" else _find_spec(name, *args, **kwargs)
importlib.util.find_spec = find_spec
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "deepspeed":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Hide())
from hsrm.cli import run
sys.argv = ["hsrm"] + sys.argv[1:]
sys.exit(run())
"""


def hsrm_without_deepspeed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", HIDE_DEEPSPEED, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("plain") / "pairs.jsonl", make_learnable_pairs(8))


def train_args(model_dir, pairs, output):
    return [
        "train",
        "recipes/tiny_bt.yaml",
        "--model_name_or_path",
        str(model_dir),
        "--train_data",
        str(pairs),
        "--output_dir",
        str(output),
        "--max_steps",
        "2",
        "--disable_tqdm",
        "true",
    ]


def test_training_without_the_deepspeed_extra_takes_its_steps_and_saves(tmp_path, tiny_model_dir, pairs):
    # Before: ImportError: cannot import name 'DeepSpeedOptimizerWrapper' from 'accelerate.utils' at step 1.
    done = hsrm_without_deepspeed(*train_args(tiny_model_dir, pairs, tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "config.json").exists()
    assert "DeepSpeedOptimizerWrapper" not in done.stderr


def test_asking_for_deepspeed_without_it_names_the_extra_in_one_line(tmp_path, tiny_model_dir, pairs):
    args = train_args(tiny_model_dir, pairs, tmp_path / "out") + ["--deepspeed", "ds_configs/zero2.json"]
    done = hsrm_without_deepspeed(*args)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("hsrm train: error:") and "pip install 'hsrm[deepspeed]'" in last, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_converting_the_default_model_without_gguf_names_the_offline_extra(tmp_path, monkeypatch):
    # Before: transformers' own ImportError from deep inside from_pretrained(gguf_file=...).
    import importlib.util

    from hsrm.default_model import convert_gguf_default
    from hsrm.errors import MissingExtraError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "gguf" else find_spec(name))
    with pytest.raises(MissingExtraError, match=r"pip install 'hsrm\[offline\]'"):
        convert_gguf_default(tmp_path / "model.gguf", tmp_path / "converted")
    assert not (tmp_path / "converted").exists()
