"""Reliability promises (issue 9): exact resume after SIGTERM or a kill, crash-safe saves, the
non-finite guard, safe loading, token hygiene, hostile input, determinism.

The run lifecycle is one for every objective (issue 19): the resume, crash-safe and token tests run
for a scalar reward model and for the generative justifier alike."""

import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import hsrm.train as train_module
from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl
from hsrm.cli import main as cli_main
from hsrm.config import load_recipe
from hsrm.errors import NonFiniteLossError, TrainingInterrupted
from hsrm.files import RUN_RECORD
from hsrm.modeling import load_reward_model
from hsrm.train import run_training
from hsrm.trainers.base import CHECKPOINT_COMPLETE

BASE = {
    "max_steps": 12,
    "learning_rate": 2e-3,
    "warmup_steps": 0,
    "per_device_train_batch_size": 4,
    "logging_steps": 1,
    "use_cpu": True,
    "seed": 7,
    "data_seed": 7,
    "max_length": 96,
    "disable_tqdm": True,
    "objective": "scaled_bt",
    "lr_scheduler_type": "linear",
    "weight_decay": 0.01,
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("rel") / "pairs.jsonl", make_learnable_pairs(40, seed=3))


def config(model_dir, data, out, **extra):
    return load_recipe(
        None, {**BASE, "model_name_or_path": str(model_dir), "train_data": str(data), "output_dir": str(out), **extra}
    )


# The justifier learns the label target from the same plain pairs (hsrm.trainers.justifier).
KINDS = {"scalar": {}, "justifier": {"objective": "justifier", "justifier_target": "label", "max_length": 128}}


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory, tiny_tokenizer):
    from hsrm.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("rel-causal"), causal_lm=True, tokenizer=tiny_tokenizer)


@pytest.fixture(scope="module", params=list(KINDS))
def kind(request, tiny_model_dir, causal_dir):
    """(the backbone, the config keys) of a scalar run and of a justifier run."""
    return (causal_dir if request.param == "justifier" else tiny_model_dir), KINDS[request.param]


def step_losses(log_history):
    return {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, kind, pairs):
    model_dir, keys = kind
    out = tmp_path_factory.mktemp("full") / "model"
    summary = run_training(config(model_dir, pairs, out, save_strategy="steps", save_steps=4, **keys))
    return out, summary


class SigtermAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step; the trainer must finish the step first


def test_sigterm_checkpoints_at_step_boundary_and_resume_is_exact(tmp_path, kind, pairs, uninterrupted, monkeypatch):
    (model_dir, keys), (full_dir, full) = kind, uninterrupted
    out = tmp_path / "model"
    original = train_module.make_trainer

    def with_sigterm(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(SigtermAtStep(5))
        return trainer

    monkeypatch.setattr(train_module, "make_trainer", with_sigterm)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 6") as info:
        run_training(config(model_dir, pairs, out, save_strategy="steps", save_steps=4, **keys))
    assert info.value.checkpoint.endswith("checkpoint-6")
    assert (out / "checkpoints" / "checkpoint-6" / CHECKPOINT_COMPLETE).exists()
    assert not (out / "config.json").exists()  # an interrupted run presents no final model
    monkeypatch.setattr(train_module, "make_trainer", original)
    resumed = run_training(
        config(model_dir, pairs, out, save_strategy="steps", save_steps=4, resume_from_checkpoint="true", **keys)
    )
    assert_same_weights(full_dir, out)
    full_losses, resumed_losses = step_losses(full["log_history"]), step_losses(resumed["log_history"])
    # The checkpoint carries the log of steps 1-6; the resumed run adds 7-12: the whole history matches.
    assert set(resumed_losses) == set(range(1, 13))
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(full_losses[step], abs=1e-6), step


def test_killed_run_resumes_from_last_complete_checkpoint_ignoring_a_half_written_one(
    tmp_path, kind, pairs, uninterrupted
):
    (model_dir, keys), (full_dir, full) = kind, uninterrupted
    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)
    # What a kill at step 10 leaves: the run's record (written when it started, hsrm.files.RUN_RECORD),
    # checkpoints 4 and 8 complete ...
    shutil.copy(full_dir / RUN_RECORD, out / RUN_RECORD)
    for step in (4, 8):
        shutil.copytree(full_dir / "checkpoints" / f"checkpoint-{step}", out / "checkpoints" / f"checkpoint-{step}")
    # ... and, for a kill during a save, a checkpoint-12 whose files are partly written and unmarked.
    half = out / "checkpoints" / "checkpoint-12"
    shutil.copytree(full_dir / "checkpoints" / "checkpoint-12", half)
    (half / CHECKPOINT_COMPLETE).unlink()
    (half / "model.safetensors").write_bytes((half / "model.safetensors").read_bytes()[:100])
    os.remove(half / "trainer_state.json")
    with pytest.raises(ValueError, match="half-written checkpoint"):
        load_reward_model(str(half))
    resumed = run_training(
        config(model_dir, pairs, out, save_strategy="steps", save_steps=4, resume_from_checkpoint="true", **keys)
    )
    assert_same_weights(full_dir, out)
    assert set(step_losses(resumed["log_history"])) == set(range(1, 13))
    for step, loss in step_losses(resumed["log_history"]).items():
        assert loss == pytest.approx(step_losses(full["log_history"])[step], abs=1e-6)


def test_final_save_interrupted_midway_leaves_nothing_loadable(tmp_path, kind, pairs, monkeypatch):
    import hsrm.trainers.base as base

    real_replace = os.replace
    moved = []
    out = tmp_path / "model"

    def crash_after_first_file(src, dst):
        if Path(dst).parent != out:  # files written inside the staging folder
            return real_replace(src, dst)
        if moved:
            raise KeyboardInterrupt("simulated crash during save")
        moved.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(base.os, "replace", crash_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        run_training(config(kind[0], pairs, out, max_steps=2, save_strategy="no", **kind[1]))
    assert moved and not (out / "config.json").exists()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_reward_model(str(out))


def test_nonfinite_steps_are_skipped_and_logged(tmp_path, tiny_model_dir, pairs, monkeypatch):
    from hsrm.trainers import pairwise

    calls = {"n": 0}
    real = pairwise.PairwiseRewardTrainer.pair_loss

    def sometimes_nan(self, chosen, rejected, margin, **kwargs):
        loss = real(self, chosen, rejected, margin, **kwargs)
        if self.model.training and self.state.global_step in (2, 3):
            calls["n"] += 1
            return loss * float("nan")
        return loss

    monkeypatch.setattr(pairwise.PairwiseRewardTrainer, "pair_loss", sometimes_nan)
    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    original = train_module.make_trainer
    monkeypatch.setattr(
        train_module, "make_trainer", lambda *a, **k: (lambda t: (t.add_callback(Snapshot()), t)[1])(original(*a, **k))
    )
    summary = run_training(config(tiny_model_dir, pairs, tmp_path / "model", max_steps=6, save_strategy="no"))
    assert calls["n"] == 2
    for name, value in snapshots[2].items():  # steps 3 and 4 (global_step 2→4) applied no update
        assert torch.equal(value, snapshots[4][name]), name
    assert any(not torch.equal(snapshots[4][k], snapshots[5][k]) for k in snapshots[4])  # training went on
    assert summary["log_history"][-2].get("skipped_nonfinite_steps", 0) == 2 or any(
        e.get("skipped_nonfinite_steps") == 2 for e in summary["log_history"]
    )


def test_consecutive_nonfinite_steps_stop_with_the_step_named(tmp_path, tiny_model_dir, pairs, monkeypatch):
    from hsrm.trainers import pairwise

    monkeypatch.setattr(
        pairwise.PairwiseRewardTrainer, "pair_loss", lambda self, c, r, m, **kwargs: (c - r).mean() * float("nan")
    )
    with pytest.raises(NonFiniteLossError, match="stopped at step 3: 3 consecutive"):
        run_training(
            config(
                tiny_model_dir, pairs, tmp_path / "model", max_steps=6, save_strategy="no", max_consecutive_nonfinite=3
            )
        )


def test_same_seed_same_losses(tmp_path, tiny_model_dir, pairs):
    a = run_training(config(tiny_model_dir, pairs, tmp_path / "a", max_steps=6, save_strategy="no"))
    b = run_training(config(tiny_model_dir, pairs, tmp_path / "b", max_steps=6, save_strategy="no"))
    assert step_losses(a["log_history"]) == step_losses(b["log_history"])
    assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_token_never_written_or_logged(tmp_path, kind, pairs, monkeypatch, capsys, caplog):
    secret = "hf_SuperSecretTokenValue1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    caplog.set_level("DEBUG")
    out = tmp_path / "model"
    run_training(
        config(kind[0], pairs, out, max_steps=4, save_strategy="steps", save_steps=2, hub_token=secret, **kind[1])
    )
    assert (out / "config.json").exists() and any((out / "checkpoints").iterdir())  # both were written, and searched
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err + caplog.text
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_safe_loading_defaults():
    import inspect

    from hsrm import modeling
    from hsrm.config import RewardConfig

    assert inspect.signature(modeling.load_reward_model).parameters["trust_remote_code"].default is False
    assert RewardConfig.__dataclass_fields__["trust_remote_code"].default is False
    offenders = []
    for path in (REPO_ROOT / "hsrm").rglob("*.py"):
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path}:{line_no}")
            if re.search(r"trust_remote_code\s*=\s*True", line):
                offenders.append(f"{path}:{line_no}")
    assert not offenders


def test_cli_train_on_malformed_data_is_one_clear_line_and_no_output(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": 3, "rejected": "b"}\n')
    out = tmp_path / "model"
    code = cli_main(
        [
            "train",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_data",
            str(bad),
            "--output_dir",
            str(out),
            "--use_cpu",
            "true",
            "--max_steps",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "bad.jsonl, row 2 (counting from 1), field 'chosen': expected text" in err and "Traceback" not in err
    assert not (out / "config.json").exists()


def test_same_seed_same_new_score_head_on_a_bare_backbone(tmp_path, pairs):
    """A causal-LM backbone has no score head: the new head is initialised from the run's seed, so two
    runs with one seed give the same model, and another seed gives another head."""
    from hsrm.tiny import build_tiny_llama

    backbone = build_tiny_llama(tmp_path / "backbone", causal_lm=True)
    torch.manual_seed(1)  # whatever the caller's RNG state, the run's seed decides
    a = run_training(config(backbone, pairs, tmp_path / "a", max_steps=2, save_strategy="no"))
    torch.manual_seed(2)
    b = run_training(config(backbone, pairs, tmp_path / "b", max_steps=2, save_strategy="no"))
    assert step_losses(a["log_history"]) == step_losses(b["log_history"])
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    run_training(config(backbone, pairs, tmp_path / "c", max_steps=2, save_strategy="no", seed=8))
    assert not torch.equal(weights(tmp_path / "a")["score.weight"], weights(tmp_path / "c")["score.weight"])


def test_a_second_sigterm_stops_at_once(tmp_path):
    """The first SIGTERM asks for a checkpoint at the next step boundary; when the step never ends,
    a second one ends the process (as the default handler would)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    script = tmp_path / "stuck.py"
    script.write_text(
        "import os, signal, time\n"
        "from hsrm.trainers.base import GracefulStop\n"
        "stop = GracefulStop()\n"
        "stop.on_train_begin(None, None, None)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.2)\n"
        "assert stop.requested, 'the first signal only asks'\n"
        "print('asked', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
        "print('still running')\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.stdout.strip() == "asked" and done.returncode == -signal.SIGTERM, (done.stdout, done.stderr[-2000:])


END_PROCESS_SCRIPT = """
import atexit, sys, tempfile
import torch.distributed as dist
from hsrm.cli import end_process

if sys.argv[1] == "group":
    dist.init_process_group("gloo", store=dist.FileStore(tempfile.mktemp(), 1), rank=0, world_size=1)
# the handlers run after the group is gone, as logging's and the trackers' would
atexit.register(lambda: print("atexit ran; group initialized:", dist.is_initialized(), flush=True))
print("returned", end_process(3), flush=True)
"""


@pytest.mark.parametrize("group", ["group", "none"])
def test_end_process_exits_at_once_only_when_a_process_group_is_up(group):
    """With a process group, end_process tears it down, runs the atexit handlers and exits with the
    code given, skipping interpreter finalization (where Gloo's worker threads abort the process,
    pytorch/pytorch#38228); without one it returns the code and the process ends normally."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", END_PROCESS_SCRIPT, group], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    lines = done.stdout.splitlines()
    if group == "group":
        assert done.returncode == 3, done.stderr
        assert lines == ["atexit ran; group initialized: False"]
    else:
        assert done.returncode == 0, done.stderr
        assert lines == ["returned 3", "atexit ran; group initialized: False"]


def test_the_hsrm_script_and_launched_modules_end_through_end_process():
    """`hsrm` (the console script), `-m hsrm.train` and `-m hsrm.rloo` (what torchrun and accelerate
    launch start) all leave through end_process."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "hsrm"]
    assert script.value == "hsrm.cli:run"
    for module in ("train", "rloo"):
        text = (REPO_ROOT / "hsrm" / f"{module}.py").read_text()
        main_block = text[text.index('if __name__ == "__main__":') :]
        assert "main()\n    end_process(0)" in main_block, module
