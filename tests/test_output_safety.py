"""Never lose a user's data, never score with a random head, one line instead of a traceback (issue 17).

Each data-loss test snapshots what existed before (every file's bytes) and checks it is identical
after the refused command.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl
from hsrm.cli import main as cli


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(capsys, verb: str, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hsrm {verb}: error: "), last
    for needle in needles:
        assert needle in last, (needle, last)
    return last


# ------------------------------------------------------------------------------------ data loss
def test_push_stage_never_deletes_an_existing_folder_or_the_model(tmp_path, nest, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mywork = tmp_path / "mywork"
    mywork.mkdir()
    (mywork / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    for stage, needle in ((mywork, "already exists"), (nest, "holds the input"), (nest / "strong", "is the input")):
        assert (
            cli(["push", "--model", str(nest / "strong"), "--repo-id", "me/x", "--dry-run", "--output", str(stage)])
            == 1
        )
        one_line_error(capsys, "push", needle)
    assert (
        cli(
            [
                "push",
                "--model",
                str(nest / "strong"),
                "--repo-id",
                "me/x",
                "--dry-run",
                "--output",
                str(nest / "strong" / "card"),
                "--overwrite",
            ]
        )
        == 1
    )
    one_line_error(capsys, "push", "is inside the input folder")
    assert snapshot(tmp_path) == before
    # --overwrite replaces a stage that holds no input; the default stage is refused the second time
    assert (
        cli(
            [
                "push",
                "--model",
                str(nest / "strong"),
                "--repo-id",
                "me/x",
                "--dry-run",
                "--output",
                str(mywork),
                "--overwrite",
            ]
        )
        == 0
    )
    assert (mywork / "README.md").exists() and not (mywork / "thesis.tex").exists()
    assert cli(["push", "--model", str(nest / "strong"), "--repo-id", "me/x", "--dry-run"]) == 0
    assert cli(["push", "--model", str(nest / "strong"), "--repo-id", "me/x", "--dry-run"]) == 1
    one_line_error(capsys, "push", "strong.hub already exists", "--overwrite")


def test_expo_out_never_replaces_its_inputs_or_the_working_folder(tmp_path, nest, capsys, monkeypatch):
    monkeypatch.chdir(nest)
    before = snapshot(nest)
    for out, needle in (("nest", "holds the input"), (".", "holds the input"), ("strong", "is the input")):
        target = str(nest) if out == "nest" else out
        assert (
            cli(["expo", "--weak", "weak", "--strong", "strong", "--alpha", "1.5", "--output", target, "--overwrite"])
            == 1
        )
        one_line_error(capsys, "expo", needle)
    assert snapshot(nest) == before
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "file.txt").write_text("keep")
    assert (
        cli(
            [
                "expo",
                "--weak",
                str(nest / "weak"),
                "--strong",
                str(nest / "strong"),
                "--alpha",
                "1.5",
                "--output",
                ".",
                "--overwrite",
            ]
        )
        == 1
    )
    one_line_error(capsys, "expo", "working folder")
    assert (work / "file.txt").read_text() == "keep"
    (work / "old-out").mkdir()
    (work / "old-out" / "mine.txt").write_text("x")
    assert (
        cli(
            [
                "expo",
                "--weak",
                str(nest / "weak"),
                "--strong",
                str(nest / "strong"),
                "--alpha",
                "1.5",
                "--output",
                "old-out",
            ]
        )
        == 1
    )
    one_line_error(capsys, "expo", "old-out already exists", "--overwrite")
    assert (work / "old-out" / "mine.txt").read_text() == "x"
    assert not [p for p in work.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_score_evaluate_embed_never_replace_an_input_or_an_existing_output(tmp_path, tiny_model_dir, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(4, with_strength=False))
    candidates = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": "q", "responses": ["a", "b"]}])
    existing = tmp_path / "old.json"
    existing.write_text('{"precious": true}')
    before = snapshot(tmp_path)
    assert cli(["score", "--model", str(tiny_model_dir), "--data", str(candidates), "--output", str(candidates)]) == 1
    one_line_error(capsys, "score", "is the input")
    assert cli(["score", "--model", str(tiny_model_dir), "--data", str(candidates), "--output", str(existing)]) == 1
    one_line_error(capsys, "score", "already exists", "--overwrite")
    assert cli(["evaluate", "--model", str(tiny_model_dir), "--data", str(pairs), "--output", str(existing)]) == 1
    one_line_error(capsys, "evaluate", "already exists", "--overwrite")
    assert (
        cli(["evaluate", "--model", str(tiny_model_dir), "--data", str(pairs), "--output", str(pairs), "--overwrite"])
        == 1
    )
    one_line_error(capsys, "evaluate", "is the input")
    assert (
        cli(
            [
                "embed",
                "--data",
                str(pairs),
                "--backbone",
                str(tiny_model_dir),
                "--output",
                str(existing),
                "--cache",
                "none",
            ]
        )
        == 1
    )
    one_line_error(capsys, "embed", "already exists")
    assert (
        cli(
            [
                "embed",
                "--data",
                str(pairs),
                "--backbone",
                str(tiny_model_dir),
                "--output",
                str(pairs),
                "--cache",
                "none",
                "--overwrite",
            ]
        )
        == 1
    )
    one_line_error(capsys, "embed", "is the input")
    assert snapshot(tmp_path) == before
    assert (
        cli(
            [
                "score",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(candidates),
                "--output",
                str(existing),
                "--overwrite",
            ]
        )
        == 0
    )
    assert json.loads(existing.read_text().splitlines()[0])["best_index"] in (0, 1)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_honour_the_umask(tmp_path, tiny_model_dir, umask):
    """A trained model, an extrapolated model, scores and an evaluation are readable as the umask says
    (0644 under 022, 0640 under 027), not 0600 as mkstemp and safetensors leave them."""
    from hsrm.config import load_recipe
    from hsrm.train import run_training

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(4, with_strength=False))
    previous = os.umask(umask)
    try:
        run_training(
            load_recipe(
                None,
                {
                    "model_name_or_path": str(tiny_model_dir),
                    "train_data": str(pairs),
                    "max_steps": 1,
                    "per_device_train_batch_size": 2,
                    "use_cpu": True,
                    "save_strategy": "no",
                    "output_dir": str(tmp_path / "bt"),
                    "max_length": 64,
                },
            )
        )
        assert (
            cli(
                [
                    "expo",
                    "--weak",
                    str(tiny_model_dir),
                    "--strong",
                    str(tmp_path / "bt"),
                    "--alpha",
                    "1.5",
                    "--output",
                    str(tmp_path / "expo"),
                ]
            )
            == 0
        )
        assert (
            cli(
                [
                    "evaluate",
                    "--model",
                    str(tmp_path / "bt"),
                    "--data",
                    str(pairs),
                    "--output",
                    str(tmp_path / "e.json"),
                ]
            )
            == 0
        )
    finally:
        os.umask(previous)
    expected_file, expected_dir = 0o666 & ~umask, 0o777 & ~umask
    for path in [
        tmp_path / "bt" / "model.safetensors",
        tmp_path / "bt" / "config.json",
        tmp_path / "expo" / "model.safetensors",
        tmp_path / "e.json",
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == expected_file, path
    for folder in (tmp_path / "bt", tmp_path / "expo"):
        assert stat.S_IMODE(folder.stat().st_mode) == expected_dir, folder


def test_training_refuses_a_non_empty_output_dir_unless_resuming_or_overwriting(tmp_path, tiny_model_dir, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(4, with_strength=False))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("a,b\n")
    common = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--train_data",
        str(pairs),
        "--max_steps",
        "1",
        "--use_cpu",
        "true",
        "--save_strategy",
        "no",
        "--per_device_train_batch_size",
        "2",
    ]
    assert cli(["train", *common, "--output_dir", str(out)]) == 1
    one_line_error(capsys, "train", "already exists", "--overwrite")
    assert (out / "results.csv").read_text() == "a,b\n"
    assert cli(["train", *common, "--output_dir", str(tmp_path)]) == 1  # holds the training data
    one_line_error(capsys, "train", "holds the input")
    assert cli(["train", *common, "--output_dir", str(out), "--overwrite"]) == 0
    assert (out / "config.json").exists() and not (out / "results.csv").exists()


# ------------------------------------------------------------------------------ silent garbage
def test_a_causal_lm_is_refused_by_evaluate_and_score(tmp_path, tiny_tokenizer, capsys):
    from hsrm.tiny import build_tiny_llama

    lm = build_tiny_llama(tmp_path / "lm", causal_lm=True, tokenizer=tiny_tokenizer)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(4, with_strength=False))
    candidates = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": "q", "responses": ["a", "b"]}])
    assert cli(["evaluate", "--model", str(lm), "--data", str(pairs), "--output", str(tmp_path / "e.json")]) == 1
    one_line_error(capsys, "evaluate", str(lm), "not a reward model")
    assert cli(["score", "--model", str(lm), "--data", str(candidates), "--output", str(tmp_path / "s.jsonl")]) == 1
    one_line_error(capsys, "score", "LlamaForCausalLM, not a reward model")
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize("value", ["-5", "0"])
def test_non_positive_max_length_is_refused(tmp_path, tiny_model_dir, capsys, value):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(4, with_strength=False))
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(pairs),
                "--max-length",
                value,
                "--output",
                str(tmp_path / "e.json"),
            ]
        )
        == 1
    )
    one_line_error(capsys, "evaluate", "--max-length must be a positive whole number")
    assert (
        cli(
            [
                "train",
                "--model_name_or_path",
                str(tiny_model_dir),
                "--train_data",
                str(pairs),
                "--max_length",
                value,
                "--output_dir",
                str(tmp_path / "m"),
                "--use_cpu",
                "true",
            ]
        )
        == 1
    )
    one_line_error(capsys, "train", "max_length must be a positive whole number")


def test_one_attribute_is_a_one_element_list():
    from hsrm.config import load_recipe

    cfg = load_recipe(None, {"objective": "regression", "attributes": "helpfulness", "output_dir": "/tmp/x"})
    assert cfg.attributes == ["helpfulness"] and cfg.num_labels == 1
    from hsrm.config import train_options

    assert train_options(["--objective", "regression", "--attributes", "helpfulness"]).attributes == ["helpfulness"]
    assert train_options(["--objective", "regression", "--attributes", "helpfulness", "verbosity"]).attributes == [
        "helpfulness",
        "verbosity",
    ]


def test_margin_objectives_need_a_strength_on_every_pair(tmp_path, tiny_model_dir, capsys):
    from hsrm.config import load_recipe
    from hsrm.modeling import load_tokenizer
    from hsrm.train import load_datasets

    rows = make_learnable_pairs(6, with_strength=True)
    del rows[2]["strength"], rows[4]["strength"]
    data = write_jsonl(tmp_path / "partial.jsonl", rows)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    for objective in ("margin_bt", "scaled_bt"):
        cfg = load_recipe(None, {"objective": objective, "train_data": str(data), "output_dir": str(tmp_path / "o")})
        with pytest.raises(
            ValueError,
            match=r"partial.jsonl, row 3 \(counting from 1\), field 'margin': no preference "
            r"strength.*\(2 of 6 pairs have none\)",
        ):
            load_datasets(cfg, tokenizer)
        cfg = load_recipe(
            None,
            {"objective": objective, "train_data": str(data), "output_dir": str(tmp_path / "o"), "on_bad_rows": "skip"},
        )
        train, _, summary = load_datasets(cfg, tokenizer)
        assert len(train) == 4 and "dropped 2 (no preference strength)" in summary["train"]["load"]
        assert sorted(train["margin"]) == sorted(float(r["strength"]) for r in rows if "strength" in r)
    bt = load_recipe(None, {"objective": "bt", "train_data": str(data), "output_dir": str(tmp_path / "o")})
    assert len(load_datasets(bt, tokenizer)[0]) == 6  # plain BT reads no strength


# -------------------------------------------------------------------------- one line, exit 1
@pytest.fixture
def broken_sources(tmp_path):
    folder = tmp_path / "a-folder.jsonl"
    folder.mkdir()
    rows = "".join(json.dumps(r) + "\n" for r in make_learnable_pairs(40, with_strength=False)).encode()
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(rows)[:60])
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_bytes(rows)
    return {
        "a folder": (folder, "is a folder"),
        "a truncated .gz": (truncated, "not a complete gzip file"),
        "a .gz that is not gzip": (not_gzip, "not a complete gzip file"),
    }


@pytest.mark.parametrize("kind", ["a folder", "a truncated .gz", "a .gz that is not gzip"])
def test_unreadable_data_is_one_line_in_every_verb(tmp_path, tiny_model_dir, broken_sources, capsys, kind):
    source, needle = broken_sources[kind]
    runs = {
        "train": [
            "train",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_data",
            str(source),
            "--use_cpu",
            "true",
            "--output_dir",
            str(tmp_path / "m"),
        ],
        "evaluate": [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(source),
            "--output",
            str(tmp_path / "e.json"),
        ],
        "score": [
            "score",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(source),
            "--output",
            str(tmp_path / "s.jsonl"),
        ],
        "embed": [
            "embed",
            "--backbone",
            str(tiny_model_dir),
            "--data",
            str(source),
            "--output",
            str(tmp_path / "x.npz"),
        ],
    }
    for verb, argv in runs.items():
        assert cli(argv) == 1, verb
        one_line_error(capsys, verb, str(source), needle)


def test_malformed_recipe_and_missing_model_are_one_line(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("objective: bt\n  max_steps: [1, 2\n")
    assert cli(["train", str(recipe)]) == 1
    one_line_error(capsys, "train", "bad.yaml: not valid YAML at line")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(2, with_strength=False))
    assert (
        cli(
            [
                "train",
                "--model_name_or_path",
                str(tmp_path / "no-such-model"),
                "--train_data",
                str(pairs),
                "--use_cpu",
                "true",
                "--output_dir",
                str(tmp_path / "m"),
            ]
        )
        == 1
    )
    one_line_error(capsys, "train", "no-such-model does not exist")


def test_help_piped_into_a_reader_that_leaves_is_not_a_traceback():
    """`hsrm train --help | head`: the reader closes the pipe early. `true` reads nothing and exits at
    once, so the pipe is always closed by the time hsrm writes (with `head` the help may fit in the
    pipe's buffer before head exits, and the test could not fail)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    pipeline = f"{sys.executable} -m hsrm.cli train --help | true"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, env=env, timeout=120
    )
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    # argparse's help printer drops a write error itself (exit 0); anything else printed that hits the
    # closed pipe exits as a writer killed by SIGPIPE would (128 + 13)
    assert done.returncode in (0, 141)


def test_row_numbers_follow_one_rule(tmp_path):
    """Rows count from 1 and blank lines are not rows, for a JSON error and a field error alike."""
    from hsrm.data.io import DataError
    from hsrm.data.pairs import load_preference_pairs

    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    broken = tmp_path / "broken.jsonl"
    broken.write_text(f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(DataError, match=r"row 3 \(counting from 1\): not valid JSON .*file line 4"):
        load_preference_pairs(str(broken))
    missing = tmp_path / "missing.jsonl"
    missing.write_text(f"{good}\n\n{good}\n" + json.dumps({"prompt": "q", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match=r"row 3 \(counting from 1\), field 'chosen': missing"):
        load_preference_pairs(str(missing))


def test_numpy_arrays_are_written_atomically_and_honour_the_umask(tmp_path):
    """The .npy/.npz writers round-trip exactly, keep the name as given, leave the old file whole when
    the write fails, and give the mode ``open()`` would (0666 minus the umask)."""
    import numpy as np

    from hsrm.files import atomic_save_npy, atomic_save_npz

    previous = os.umask(0o027)
    try:
        vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
        npy = atomic_save_npy(tmp_path / "vectors.bin", vectors)
        npz = atomic_save_npz(tmp_path / "arrays.npz", a=vectors, b=np.array([1, 2]))
    finally:
        os.umask(previous)
    assert npy.name == "vectors.bin"
    np.testing.assert_array_equal(np.load(npy), vectors)
    with np.load(npz) as loaded:
        np.testing.assert_array_equal(loaded["a"], vectors)
        np.testing.assert_array_equal(loaded["b"], [1, 2])
    assert (npy.stat().st_mode & 0o777) == 0o640
    with pytest.raises(ValueError):
        atomic_save_npy(npy, np.array([object()], dtype=object))  # pickles are refused
    np.testing.assert_array_equal(np.load(npy), vectors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz", "vectors.bin"]


def test_staged_folder_moves_a_whole_folder_or_nothing(tmp_path):
    """The one staging helper (expo, push, the default-model cache): a failed block leaves the old
    output and no staging folder; a finished one replaces it whole; keep_existing keeps a winner's."""
    from hsrm.files import staged_folder

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(target) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "old.txt").read_text() == "old"
    with staged_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    with staged_folder(target, keep_existing=True) as staging:
        (staging / "loser.txt").write_text("loser")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "out"
    ]
