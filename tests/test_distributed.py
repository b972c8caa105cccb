"""Scale-out: DDP, FSDP2, ZeRO-2 and ZeRO-3 on two CPU processes (gloo), and a simulated two-node
launch, train the same model as one process over the same global batch.

Every run is a real launch in a subprocess (torchrun or accelerate launch, as a user types it) of
3 optimizer steps of Bradley-Terry with gradient accumulation 2 on a tiny Llama: one process with
micro-batches of 4 pairs, or two processes with micro-batches of 2, so each step sees the same 8
pairs. With plain SGD each logged loss and every saved weight equal the one-process run's (1e-6).

accelerate 1.16 enables FSDP only on GPU-like devices and silently trains with DDP on CPU
processes; the FSDP2 launches go through :func:`hsrm.testing.allow_fsdp_on_cpu`, which lifts that
one condition so that accelerate's own FSDP2 preparation (``fully_shard``) runs here as on GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

BIN = Path(sys.executable).parent
STEPS = 3
# 1 process: micro-batches of 4 pairs; 2 processes: 2 pairs each; accumulation 2 → 8 pairs a step.
COMMON = [
    "--objective", "bt", "--max_steps", str(STEPS), "--learning_rate", "0.1", "--optim", "sgd",
    "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--gradient_accumulation_steps", "2",
    "--logging_steps", "1", "--save_strategy", "no", "--max_length", "128", "--disable_tqdm", "true",
    "--use_cpu", "true", "--seed", "0", "--json", "true",
]  # fmt: skip
TWO_PROCESSES = ["--per_device_train_batch_size", "2", "--ddp_backend", "gloo"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*extra: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *extra, "-m"]


def accelerate_fsdp2(*extra: str) -> list[str]:
    config = str(REPO_ROOT / "recipes" / "accelerate" / "fsdp2.yaml")
    return [
        str(BIN / "accelerate"), "launch", "--config_file", config, "--num_processes", "2",
        "--mixed_precision", "no", "--main_process_port", str(free_port()), *extra, "-m", "hsrm.testing",
    ]  # fmt: skip


ENGINES = {
    "ddp": (lambda: torchrun(), [], "DDP"),
    "fsdp2": (lambda: accelerate_fsdp2(), [], "FSDP2"),
    "zero2": (lambda: torchrun(), ["--deepspeed", str(REPO_ROOT / "ds_configs" / "zero2.json")], "DeepSpeed ZeRO-2"),
    "zero3": (lambda: torchrun(), ["--deepspeed", str(REPO_ROOT / "ds_configs" / "zero3.json")], "DeepSpeed ZeRO-3"),
}


@dataclass
class Run:
    output: Path
    summary: dict
    stdout: str
    stderr: str

    @property
    def losses(self) -> list[float]:
        return [entry["loss"] for entry in self.summary["log_history"] if "loss" in entry]

    def weights(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.output / "model.safetensors"))


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def summary_of(stdout: str) -> dict:
    """The --json document hsrm train prints last (the Trainer prints its log lines before it)."""
    lines = stdout.splitlines()
    return json.loads("\n".join(lines[lines.index("{") :]))


def train(launcher: list[str], args: list[str], output: Path, *, expect_ok: bool = True) -> Run:
    command = [*launcher, "hsrm.train", *args, "--output_dir", str(output)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    if not expect_ok:
        return Run(output, {}, done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return Run(output, summary_of(done.stdout), done.stdout, done.stderr)


def assert_same_run(run: Run, reference: Run, *, weights_atol: float = 1e-6, loss_atol: float = 1e-6) -> None:
    assert len(run.losses) == len(reference.losses) == STEPS
    assert run.losses == pytest.approx(reference.losses, abs=loss_atol, rel=0), (run.losses, reference.losses)
    mine, theirs = run.weights(), reference.weights()
    assert mine.keys() == theirs.keys()
    worst = max((mine[name] - theirs[name]).abs().max().item() for name in mine)
    assert worst <= weights_atol, f"largest weight difference {worst:.3g}"
    moved = max((theirs[name] - initial).abs().max().item() for name, initial in TINY_WEIGHTS.items() if name in theirs)
    assert moved > max(10 * weights_atol, 1e-4)  # the runs trained: equality is not two untouched models


TINY_WEIGHTS: dict[str, torch.Tensor] = {}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    from safetensors.torch import load_file

    TINY_WEIGHTS.update(load_file(str(tiny_model_dir / "model.safetensors")))
    return tiny_model_dir


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("dist-data") / "pairs.jsonl", make_learnable_pairs(48))


class Runs:
    """Runs made once per module and shared by the tests (the one-process references)."""

    def __init__(self, root: Path):
        self.root = root
        self.made: dict[str, Run] = {}

    def once(self, key: str, launcher: list[str], args: list[str]) -> Run:
        if key not in self.made:
            self.made[key] = train(launcher, args, self.root / key)
        return self.made[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("dist-runs"))


def one_process(runs: Runs, key: str, args: list[str]) -> Run:
    return runs.once(key, [sys.executable, "-m"], args + ["--per_device_train_batch_size", "4"])


def reference(runs: Runs, model_dir: Path, pairs: Path, packed: bool) -> Run:
    layout = "packed" if packed else "padded"
    return one_process(runs, f"one-{layout}", data_args(model_dir, pairs) + ["--padding_free", str(packed)])


def data_args(model_dir: Path, pairs: Path) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_data", str(pairs), *COMMON]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("engine", list(ENGINES))
def test_two_processes_train_what_one_process_trains(engine, packed, runs, model_dir, pairs):
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed")
    launcher, engine_args, label = ENGINES[engine]
    one = reference(runs, model_dir, pairs, packed)
    args = data_args(model_dir, pairs) + TWO_PROCESSES + ["--padding_free", str(packed), *engine_args]
    run = train(launcher(), args, runs.root / f"{engine}-{packed}")
    assert run.summary["parallelism"] == f"{label} on 2 processes (1 node)"  # the engine asked for really ran
    assert_same_run(run, one)
    assert run.stdout.count('"parallelism"') == 1  # one summary for the run, not one per rank
    assert not (run.output / "training_args.bin").exists()
    if engine == "fsdp2" and not packed:
        assert_loads_with_plain_transformers_and_scores_alike(run.output, one.output)


def assert_loads_with_plain_transformers_and_scores_alike(folder: Path, reference: Path) -> None:
    """The FSDP2 folder is a plain transformers folder: no hsrm import, the same rewards as the
    one-process folder (transformers' own forward: the last non-pad token, pad != eos here)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]  # not FSDPLlama…
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    texts = ["The capital of France is Paris.", "no", "Thank you, here is a clear answer."]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    rewards = []
    for path in (folder, reference):
        model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        with torch.no_grad():
            rewards.append(model(**batch).logits[:, 0])
    assert torch.allclose(rewards[0], rewards[1], atol=1e-5, rtol=0), rewards
    assert rewards[1].std() > 0


def test_two_simulated_nodes_train_what_one_process_trains(runs, model_dir, pairs):
    """torchrun --nnodes 2 on one machine: global rank 0 alone writes the folder and prints the summary."""
    one = reference(runs, model_dir, pairs, False)
    output = runs.root / "two-nodes"
    port = str(free_port())
    args = data_args(model_dir, pairs) + TWO_PROCESSES + ["--output_dir", str(output)]
    nodes = [
        subprocess.Popen(
            [
                str(BIN / "torchrun"),
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                "-m",
                "hsrm.train",
                *args,
            ],
            cwd=REPO_ROOT,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stdout[-2000:] + stderr[-5000:]
    first, second = outputs
    run = Run(output, summary_of(first[0]), *first)
    assert run.summary["parallelism"] == "DDP on 2 processes (2 nodes)"
    assert '"parallelism"' not in second[0]  # the second node prints no summary
    assert "saved reward model" in first[1] and "saved reward model" not in second[1]
    assert_same_run(run, one)


def test_fsdp2_lora_with_activation_checkpointing_trains_what_one_process_trains(runs, model_dir, pairs):
    """LoRA (merged on save) under FSDP2 with FSDP's activation checkpointing, packed, against one
    process with transformers' activation checkpointing. LoRA dropout off: each process draws its own."""
    lora = ["--use_lora", "true", "--lora_r", "4", "--lora_dropout", "0", "--padding_free", "true"]
    base = data_args(model_dir, pairs) + lora
    one = one_process(runs, "lora-one", base + ["--gradient_checkpointing", "true"])
    run = train(
        accelerate_fsdp2("--fsdp_activation_checkpointing", "true"), base + TWO_PROCESSES, runs.root / "lora-fsdp2"
    )
    assert run.summary["parallelism"] == "FSDP2 on 2 processes (1 node)"
    assert not any(name.endswith(("lora_A.weight", "lora_B.weight")) for name in run.weights())  # merged
    assert_same_run(run, one)


def test_fsdp2_in_bf16_mixed_precision_trains_what_one_process_trains_to_bf16_precision(runs, model_dir, pairs):
    """fsdp2.yaml's own mixed precision (bf16 parameters in compute, fp32 master weights): the run is
    the fp32 one-process run to bf16's precision, and not the fp32 run itself (bf16 really engaged)."""
    one = reference(runs, model_dir, pairs, False)
    launcher = accelerate_fsdp2()
    launcher[launcher.index("no")] = "bf16"  # --mixed_precision
    run = train(launcher, data_args(model_dir, pairs) + TWO_PROCESSES + ["--bf16", "true"], runs.root / "fsdp2-bf16")
    assert_same_run(run, one, weights_atol=2e-3, loss_atol=2e-3)
    differences = [abs(a - b) for a, b in zip(run.losses, one.losses)]
    assert max(differences) > 1e-5, differences


def test_fsdp2_sharded_checkpoint_resumes_exactly_and_is_refused_by_one_process(runs, model_dir, pairs, tmp_path):
    """AdamW (its moments are in the sharded optimizer state): resuming the step-2 checkpoint gives
    the uninterrupted run's step-3 loss and weights. A one-process run is refused in one line."""
    adamw = [arg for arg in data_args(model_dir, pairs)]
    adamw[adamw.index("sgd")] = "adamw_torch"
    adamw[adamw.index("0.1")] = "0.01"
    adamw[adamw.index("no")] = "steps"  # save_strategy
    adamw += ["--save_steps", "2"]
    whole = train(accelerate_fsdp2(), adamw + TWO_PROCESSES, tmp_path / "whole")
    checkpoint = whole.output / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir()  # sharded (torch.distributed.checkpoint)
    resumed = train(
        accelerate_fsdp2(), adamw + TWO_PROCESSES + ["--resume_from_checkpoint", str(checkpoint)], tmp_path / "resumed"
    )
    assert_same_run(resumed, whole, weights_atol=0.0, loss_atol=1e-5)

    one_process = [arg for arg in adamw] + ["--per_device_train_batch_size", "4"]
    command = [sys.executable, "-m", "hsrm.cli", "train", *one_process]
    command += ["--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "one")]
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("hsrm train: error:") and "written by FSDP" in last and "1 process" in last, last
    assert not (tmp_path / "one" / "config.json").exists()


@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_the_justifier_trains_under_fsdp2_and_zero3_as_on_one_process(engine, runs, pairs):
    """The generative justifier (a causal LM, the model's own loss) on the label target."""
    if engine == "zero3":
        pytest.importorskip("deepspeed")
    from hsrm.tiny import build_tiny_llama

    causal = runs.root / "causal"
    if not causal.exists():
        build_tiny_llama(causal, causal_lm=True, hidden_size=64)
    args = data_args(causal, pairs)
    args[args.index("bt")] = "justifier"
    args += ["--justifier_target", "label"]
    one = one_process(runs, "justifier-one", args)
    launcher, engine_args, label = ENGINES[engine]
    run = train(launcher(), args + TWO_PROCESSES + engine_args, runs.root / f"justifier-{engine}")
    assert run.summary["parallelism"] == f"{label} on 2 processes (1 node)"
    assert json.loads((run.output / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert one.losses[-1] < one.losses[0]  # it trained
    mine, theirs = run.weights(), one.weights()
    assert max((mine[k] - theirs[k]).abs().max().item() for k in theirs) <= 1e-6
    assert run.losses == pytest.approx(one.losses, abs=1e-5, rel=0)
