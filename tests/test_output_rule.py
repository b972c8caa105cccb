"""Never lose a user's data, round 2 (issue 29): one output rule for every writer, resume included;
new staging folders; one writer per output; runs keyed by their inputs; no silent NaN.

Each data-loss test snapshots every file that existed before (bytes) and checks it is identical
after the refused command. The command that showed the old behaviour is in each test's docstring.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from test_output_safety import one_line_error, snapshot

from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl
from hsrm.cli import main as cli

TRAIN = ["--max_steps", "1", "--use_cpu", "true", "--per_device_train_batch_size", "2", "--max_length", "64"]


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", make_learnable_pairs(4, with_strength=False))


def train_args(model, data, out):
    return ["train", "--model_name_or_path", str(model), "--train_data", str(data), "--output_dir", str(out)]


# ------------------------------------------------------------------------- 1. resume, input folders
def test_resume_never_writes_into_an_input_another_model_or_another_run(tmp_path, nest, pairs, capsys):
    """Old: `hsrm train --model_name_or_path nest/weak ... --output_dir nest/weak --resume_from_checkpoint
    true` overwrote the input model, rc 0 (and any other model folder likewise)."""
    resume = ["--resume_from_checkpoint", "true", "--save_strategy", "no", *TRAIN]
    before = snapshot(tmp_path)
    weak = nest / "weak"
    assert cli([*train_args(weak, pairs, weak), *resume]) == 1
    one_line_error(capsys, "train", "is the input")
    assert cli([*train_args(weak, pairs, weak), *resume, "--overwrite"]) == 1
    one_line_error(capsys, "train", "is the input")
    assert cli([*train_args(weak, pairs, nest / "strong"), *resume]) == 1  # another model: no run record
    one_line_error(capsys, "train", "holds no run of this kind to resume", "--overwrite")
    assert snapshot(tmp_path) == before
    # its own folder resumes; the same folder with other data is another run
    out = tmp_path / "run"
    assert cli([*train_args(weak, pairs, out), *TRAIN, "--save_strategy", "no"]) == 0
    assert cli([*train_args(weak, pairs, out), *resume]) == 0
    other = write_jsonl(tmp_path / "other.jsonl", make_learnable_pairs(4, seed=9, with_strength=False))
    mine = snapshot(out)
    assert cli([*train_args(weak, other, out), *resume]) == 1
    one_line_error(capsys, "train", "holds a run with other inputs (train_data differ)")
    assert snapshot(out) == mine


def test_an_output_inside_an_input_folder_is_refused_even_with_overwrite(tmp_path, nest, pairs, capsys):
    """Old: `hsrm evaluate --model M --output M/config.json --overwrite` (and score, embed) replaced the
    model's config.json, rc 0; `hsrm expo --output WEAK/sub` wrote inside the weak model's folder."""
    candidates = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": "q", "responses": ["a", "b"]}])
    model = nest / "strong"
    before = snapshot(tmp_path)
    for verb, args in (
        ("evaluate", ["--model", str(model), "--data", str(pairs)]),
        ("score", ["--model", str(model), "--data", str(candidates)]),
        ("embed", ["--backbone", str(model), "--data", str(pairs), "--cache", "none"]),
    ):
        for name in ("config.json", "tokenizer_config.json"):
            assert cli([verb, *args, "--output", str(model / name), "--overwrite"]) == 1
            one_line_error(capsys, verb, "is inside the input folder")
    assert (
        cli(
            ["expo", "--weak", str(nest / "weak"), "--strong", str(model), "--alpha", "1.5"]
            + ["--output", str(nest / "weak" / "expo")]
        )
        == 1
    )
    one_line_error(capsys, "expo", "is inside the input folder")
    assert snapshot(tmp_path) == before
    # evaluate's own place in a model folder is still its default
    assert cli(["evaluate", "--model", str(model), "--data", str(pairs)]) == 0
    assert (model / "evaluation" / "pairs.json").is_file()


# ------------------------------------------------------------------------- 2. staging folders
def test_final_save_never_reuses_a_stale_staging_folder_nor_writes_a_token(
    tmp_path, tiny_model_dir, pairs, monkeypatch, caplog
):
    """Old: the final save staged in a fixed `.NAME.saving`; after a kill mid-save the rerun merged the
    stale LoRA adapter left there into its own model (max difference 49.9), and the leftover
    `training_args.bin` held --hub_token."""
    from transformers import Trainer

    from hsrm.config import load_recipe
    from hsrm.train import run_training

    secret = "hf_SuperSecretTokenValue1234567890"
    keys = {
        "model_name_or_path": str(tiny_model_dir),
        "train_data": str(pairs),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "use_cpu": True,
        "save_strategy": "no",
        "max_length": 64,
        "seed": 3,
        "hub_token": secret,
    }
    out = tmp_path / "model"
    real_save = Trainer._save

    def killed_after_writing(self, output_dir=None, state_dict=None):
        real_save(self, output_dir, state_dict)
        raise KeyboardInterrupt("killed during the final save")

    monkeypatch.setattr(Trainer, "_save", killed_after_writing)
    with pytest.raises(KeyboardInterrupt):
        run_training(load_recipe(None, {**keys, "output_dir": str(out)}))
    monkeypatch.setattr(Trainer, "_save", real_save)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".model.") and p.is_dir()]
    assert len(left) == 1 and (left[0] / "model.safetensors").exists()  # what the kill left
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    # a stale adapter where the old code staged: a rerun must not pick it (nor the kill's leftover) up
    stale = tmp_path / ".model.saving"
    stale.mkdir()
    (stale / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}')
    leftovers = {p.name: snapshot(p) for p in (stale, left[0])}
    caplog.set_level("WARNING")
    run_training(load_recipe(None, {**keys, "output_dir": str(out), "overwrite": True}))
    assert {p.name: snapshot(p) for p in (stale, left[0])} == leftovers  # reported, left alone
    assert f"{left[0]} is left from an interrupted save" in caplog.text
    run_training(load_recipe(None, {**keys, "output_dir": str(tmp_path / "clean")}))
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "clean" / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------- 3. one writer per output
def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(
    tmp_path, tiny_model_dir, pairs, capsys, caplog
):
    """Old: two `hsrm train` runs to one output_dir at once both saved (the second with
    --overwrite_output_dir true removed the first's folder while it trained); the first run's model
    and checkpoints were silently lost."""
    out = tmp_path / "run"
    args = [*train_args(tiny_model_dir, pairs, out), "--use_cpu", "true", "--per_device_train_batch_size", "2"]
    args += ["--max_length", "64", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "1"]
    first = subprocess.Popen(  # a long run, still writing to `out`
        [sys.executable, "-m", "hsrm.cli", *args, "--max_steps", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints").is_dir() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "checkpoints").is_dir(), "the first run never started training"
        first.send_signal(signal.SIGSTOP)  # hold still while the second one tries
        before = snapshot(tmp_path)
        for extra in (["--overwrite"], ["--resume_from_checkpoint", "true"]):
            assert cli([*args, "--max_steps", "1", *extra]) == 1
            one_line_error(capsys, "train", f"is being written by process {first.pid} on")
        assert snapshot(tmp_path) == before
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock
        first.wait()
    from hsrm.files import lock_path

    assert lock_path(out).exists()
    caplog.set_level("WARNING")
    assert cli([*args, "--max_steps", "1", "--overwrite"]) == 0
    assert f"taking over the lock of process {first.pid}" in caplog.text
    assert not lock_path(out).exists()  # released at the end of the run


# ------------------------------------------------------------------------- 4. rloo, select
def test_rloo_never_writes_into_or_over_its_reward_model(tmp_path, nest, capsys):
    """Old: `hsrm rloo recipes/rloo_tiny.yaml --reward_model R --output_dir R` replaced the reward model
    with the policy, rc 0 (rloo had no output rule)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    recipe = str(REPO_ROOT / "recipes" / "rloo_tiny.yaml")
    for out, extra, needle in (
        (nest / "strong", [], "is the input"),
        (nest / "strong", ["--overwrite"], "is the input"),
        (nest, ["--overwrite"], "holds the input"),
        (nest / "strong" / "policy", ["--overwrite"], "is inside the input folder"),
        (mine, [], "holds no run of this kind to resume"),
    ):
        assert cli(["rloo", recipe, "--reward_model", str(nest / "strong"), "--output_dir", str(out), *extra]) == 1
        one_line_error(capsys, "rloo", needle)
    assert snapshot(tmp_path) == before


def test_select_never_takes_over_a_folder_it_did_not_create(tmp_path, capsys):
    """Old: `hsrm select DIR --embeddings pool.npz` took a user's DIR; once labels came, retraining
    replaced DIR/model and deleted the user's model/notes.txt, rc 0."""
    from hsrm.embedding.synthetic import SyntheticWorld

    SyntheticWorld(dim=10, latent_dim=3, nuisance_dim=1).sample(12, 6, seed=0).save(tmp_path / "pool.npz")
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    assert cli(["select", str(mine), "--embeddings", str(tmp_path / "pool.npz"), "--batch-size", "4"]) == 1
    one_line_error(capsys, "select", f"STATE_DIR {mine} already exists (folder); choose another STATE_DIR")
    assert snapshot(tmp_path) == before
    state = tmp_path / "state"
    assert cli(["select", str(state), "--embeddings", str(tmp_path / "pool.npz"), "--batch-size", "4"]) == 0
    assert cli(["select", str(state)]) == 0  # its own folder: the next call continues it


# ------------------------------------------------------------------------- 5. studies keyed by inputs
def test_a_study_rerun_with_other_inputs_is_refused_and_keeps_its_rows(tmp_path, capsys):
    """Old: `hsrm study S.yaml` rerun into the same output_dir with other data reused the old rows and
    rewrote study.json to claim the new setup."""
    import yaml
    from test_embedding_study import tiny_study

    grid = {"methods": ["bt-mlp"], "betas": [1.0], "annotation_counts": [100], "designs": ["random"]}
    study = tiny_study(tmp_path, grids=[], grid={**grid, "pairings": ["in-prompt"], "seeds": [0]}, plots=False)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert cli(["study", str(path)]) == 0
    out = tmp_path / "out"
    before = snapshot(out)
    study["data"]["synthetic"]["dim"] = 12
    path.write_text(yaml.safe_dump(study))
    assert cli(["study", str(path)]) == 1
    one_line_error(capsys, "study", "holds a run with other inputs (data differ)")
    assert snapshot(out) == before
    assert cli(["study", str(path), "--output_dir", str(tmp_path / "out12")]) == 0  # a new run: a new folder


def test_an_active_study_rerun_with_other_inputs_is_refused(tmp_path, capsys):
    """Old: `hsrm active S.yaml` rerun with another annotator β reused the finished runs' rows."""
    config = tmp_path / "study.yaml"
    config.write_text(
        "synthetic: {dim: 8, latent_dim: 2, nuisance_dim: 1}\ntrain_prompts: 30\ntest_prompts: 4\n"
        "test_responses: 10\nstrategies: [random]\nbatch_sizes: [10]\nseeds: [0]\nannotations: 10\n"
        f"prompts_per_round: 6\ncandidates_per_round: 100\nhidden: [8]\nmax_epochs: 2\noutput_dir: {tmp_path / 'out'}\n"
    )
    assert cli(["active", str(config)]) == 0
    before = snapshot(tmp_path / "out")
    assert cli(["active", str(config), "--beta", "5.0"]) == 1
    one_line_error(capsys, "active", "holds a run with other inputs (beta differ)")
    assert snapshot(tmp_path / "out") == before
    assert cli(["active", str(config), "--seeds", "[0, 1]"]) == 0  # more seeds of the same study: resumed


# ------------------------------------------------------------------------- 6. no silent NaN
@pytest.fixture
def nan_model(tmp_path, tiny_model_dir):
    """A reward model whose score head is NaN: every reward it gives is NaN."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["score.weight"][:] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_score_and_evaluate_refuse_non_finite_rewards(tmp_path, nan_model, pairs, capsys):
    """Old: `hsrm score` with a NaN model wrote NaN literals (not JSON) and best_index 0; `hsrm evaluate`
    reported "0.0 %"; both rc 0."""
    candidates = write_jsonl(tmp_path / "cands.jsonl", [{"prompt": "q", "responses": ["a", "b", "c"]}])
    score = ["score", "--model", str(nan_model), "--data", str(candidates), "--output", str(tmp_path / "s.jsonl")]
    assert cli(score) == 1
    one_line_error(capsys, "score", "non-finite reward (NaN or infinity) for item(s) [0, 1, 2] (3 of 3)")
    evaluate = ["evaluate", "--model", str(nan_model), "--data", str(pairs), "--output", str(tmp_path / "e.json")]
    assert cli(evaluate) == 1
    one_line_error(capsys, "evaluate", "non-finite reward", "(8 of 8)")  # 4 pairs: both sides
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "e.json").exists()


def test_fit_refuses_non_finite_embeddings_naming_the_rows(tmp_path, capsys):
    """Old: `hsrm fit` on embeddings with one NaN row "fitted", every score NaN, eval_pair_accuracy 0.0, rc 0."""
    from hsrm.embedding.synthetic import SyntheticWorld

    pool = SyntheticWorld(dim=10, latent_dim=3, nuisance_dim=1).sample(12, 6, seed=0)
    pool.embeddings[4, 2] = np.nan
    pool.save(tmp_path / "pool.npz")
    before = snapshot(tmp_path)
    fit = ["fit", "--embeddings", str(tmp_path / "pool.npz"), "--method", "bt-mlp", "--beta", "1.0"]
    assert cli([*fit, "--output", str(tmp_path / "fitted")]) == 1
    one_line_error(capsys, "fit", f"1 of {len(pool.embeddings)} embedding rows hold NaN", "(rows 5, counting from 1)")
    assert snapshot(tmp_path) == before


def test_expo_refuses_non_finite_weights(tmp_path, nest, capsys):
    """Old: `hsrm expo --alpha 1e45` (any α that overflows the dtype) wrote a model of inf/NaN weights, rc 0."""
    from safetensors.torch import load_file, save_file

    strong = nest / "strong" / "model.safetensors"
    weights = load_file(str(strong))
    weights["score.weight"] += 0.5
    save_file(weights, str(strong), metadata={"format": "pt"})
    before = snapshot(tmp_path)
    expo = ["expo", "--weak", str(nest / "weak"), "--strong", str(nest / "strong"), "--output", str(tmp_path / "x")]
    assert cli([*expo, "--alpha", "1e45"]) == 1
    one_line_error(capsys, "expo", "α = 1e+45 gives", "non-finite weights in score.weight", "smaller --alpha")
    assert snapshot(tmp_path) == before  # and no staging folder left


def test_json_outputs_are_valid_json(tmp_path):
    """Old: atomic_write_json / atomic_write_jsonl (every JSON file hsrm writes) wrote the literal NaN,
    which JSON.parse refuses."""
    from hsrm.files import atomic_write_json, atomic_write_jsonl

    payload = {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2}
    expected = {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2}

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    assert strict(atomic_write_json(tmp_path / "a.json", payload).read_text()) == expected
    assert strict(atomic_write_jsonl(tmp_path / "a.jsonl", [payload]).read_text()) == expected


# ------------------------------------------------------------------------- 7. push, modes
def test_push_refuses_a_folder_without_a_reward_head(tmp_path, tiny_tokenizer, capsys):
    """Old: `hsrm push --dry-run` on a causal LM prepared a reward-model card tagged text-classification, rc 0."""
    from hsrm.tiny import build_tiny_llama

    lm = build_tiny_llama(tmp_path / "lm", causal_lm=True, tokenizer=tiny_tokenizer)
    before = snapshot(tmp_path)
    assert cli(["push", "--model", str(lm), "--repo-id", "me/lm", "--dry-run"]) == 1
    one_line_error(capsys, "push", "LlamaForCausalLM, not a reward model")
    assert snapshot(tmp_path) == before and not (tmp_path / "lm.hub").exists()


def test_checkpoints_and_pushed_files_honour_the_umask(tmp_path, tiny_model_dir, pairs):
    """Old: checkpoint files were 0600 (safetensors, torch.save), and push hard-linked a 0600 weights
    file into the upload folder with its 0600 mode."""
    from hsrm.config import load_recipe
    from hsrm.train import run_training

    previous = os.umask(0o022)
    try:
        model = tmp_path / "mine"
        shutil.copytree(tiny_model_dir, model)
        os.chmod(model / "model.safetensors", 0o600)  # the user's file, as they keep it
        assert cli(["push", "--model", str(model), "--repo-id", "me/x", "--dry-run"]) == 0
        run_training(
            load_recipe(
                None,
                {
                    "model_name_or_path": str(tiny_model_dir),
                    "train_data": str(pairs),
                    "max_steps": 2,
                    "per_device_train_batch_size": 2,
                    "use_cpu": True,
                    "save_strategy": "steps",
                    "save_steps": 1,
                    "output_dir": str(tmp_path / "run"),
                    "max_length": 64,
                },
            )
        )
    finally:
        os.umask(previous)
    assert stat.S_IMODE((model / "model.safetensors").stat().st_mode) == 0o600  # the source is left as it is
    written = [*(tmp_path / "mine.hub").rglob("*"), *(tmp_path / "run" / "checkpoints").rglob("*")]
    assert len([p for p in written if p.name == "model.safetensors"]) == 3
    wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in written if p.is_file()}
    assert {path: mode for path, mode in wrong.items() if mode != "0o644"} == {}


def test_rloo_writes_no_hub_token_into_its_checkpoints_or_folder(tmp_path, tiny_model_dir):
    """Old: `hsrm rloo recipes/rloo_tiny.yaml --hub_token hf_… --save_steps 1` pickled the token into
    every checkpoint's and the final folder's training_args.bin."""
    recipe = str(REPO_ROOT / "recipes" / "rloo_tiny.yaml")
    secret = "hf_rloo_secret_token_0123456789"
    out = tmp_path / "policy"
    argv = ["rloo", recipe, "--reward_model", str(tiny_model_dir), "--output_dir", str(out)]
    assert cli(argv + ["--hub_token", secret, "--save_strategy", "steps", "--save_steps", "1"]) == 0
    written = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written)  # the pickle is there, without the token
    assert not [path for path in written if secret.encode() in path.read_bytes()]
