"""What every hsrm trainer shares: model set-up, the loss contract with ``transformers.Trainer``
(gradient accumulation and several processes), metric logging gathered across processes, the
non-finite guard, graceful stop, crash-safe checkpoints, and saving a plain Hugging Face folder.

The loop belongs to ``transformers.Trainer``; subclasses override ``compute_loss``,
``prediction_step`` and ``count_loss_items`` only. DeepSpeed and multi-GPU come in through
``TrainingArguments``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..config import RewardConfig
from ..errors import InputError, NonFiniteLossError
from ..modeling import apply_lora, build_reward_model, freeze_lower_layers, load_reward_model, read_rewards_in_forward
from ..record import ModelRecord, write_record

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ model
def compute_dtype(cfg: RewardConfig) -> torch.dtype:
    """The precision the forward pass runs in: the autocast of ``bf16`` / ``fp16``, else the weights'."""
    from ..modeling import torch_dtype

    if cfg.bf16:
        return torch.bfloat16
    if cfg.fp16:
        return torch.float16
    weights = torch_dtype(cfg.model_dtype)
    return weights if isinstance(weights, torch.dtype) else torch.float32


def training_attention(cfg: RewardConfig) -> str | None:
    """``attn_implementation`` as the model is built with it: ``auto`` is hsrm's choice
    (:func:`hsrm.modeling.default_attention`: ``hsrm_varlen`` on CUDA in half precision, else the
    model's default); any other value is passed through."""
    from ..modeling import default_attention

    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    return default_attention(cfg.device, compute_dtype(cfg))


def build_model(cfg: RewardConfig, *, with_lora: bool | None = None):
    """(model, tokenizer) for a run: the backbone, or ``init_from`` a trained reward model.
    ``with_lora=False`` builds the bare base an adapter is merged into.

    Two-stage training (HelpSteer2-Preference §3.2): a BT run initialised from a regression model
    keeps its body and its *helpfulness* head (row 0 of a five-attribute head).
    """
    attention = training_attention(cfg)
    if cfg.init_from:
        # A trained reward model: the loader refuses a folder without a trained head.
        model, tokenizer, _ = load_reward_model(
            cfg.init_from,
            dtype=cfg.model_dtype,
            device=None,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=attention,
        )
        model.train()
        init_labels = model.config.num_labels
        if init_labels != cfg.num_labels:
            if cfg.num_labels != 1:
                raise InputError(
                    f"init_from {cfg.init_from} has {init_labels} outputs; can only reduce to the helpfulness head"
                )
            helpfulness = model.score.weight.data[:1].clone()
            model.score = torch.nn.Linear(helpfulness.shape[1], 1, bias=False, dtype=helpfulness.dtype)
            model.score.weight.data.copy_(helpfulness)
            model.config.num_labels = 1
            model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    else:
        model, tokenizer = build_reward_model(
            cfg.model_name_or_path,
            num_labels=cfg.num_labels,
            dtype=cfg.model_dtype,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=attention,
        )
    model.config.use_cache = False
    read_rewards_in_forward(model)  # the Trainer calls the model, so DDP, FSDP2 and ZeRO see the reward read
    if cfg.use_lora if with_lora is None else with_lora:
        model = apply_lora(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules or "all-linear",
        )
    if cfg.train_top_layers:
        trainable, total = freeze_lower_layers(model, cfg.train_top_layers)
        logger.info(
            "train_top_layers=%d: %s of %s parameters trainable", cfg.train_top_layers, f"{trainable:,}", f"{total:,}"
        )
    return model, tokenizer


# ---------------------------------------------------------------------------------------- trainer
CHECKPOINT_COMPLETE = "hsrm_checkpoint_complete"  # written last: a checkpoint without it is half-written


class NonFiniteGuard(TrainerCallback):
    """A NaN/inf loss or gradient skips the optimizer step (no moment or weight-decay update) and is
    logged; after ``limit`` consecutive skips training stops with an error naming the step.

    Without DeepSpeed the guard acts before the step: it drops every gradient, so AdamW skips the
    step entirely. Under DeepSpeed, accelerate runs ``engine.step()`` inside ``backward``, before any
    callback, and ZeRO keeps the gradients in its own partitions (``p.grad`` is None); DeepSpeed
    itself skips a step whose gradient norm is not finite (fp32, and bf16/fp16 with its default
    ``check_grad_overflow``), so the guard reads that verdict after the step and counts it alike.
    A DeepSpeed config that sets ``check_grad_overflow: false`` lets such a step through unseen.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.skipped_steps: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if _deepspeed_steps_in_backward(optimizer):
            return
        params = [p for p in model.parameters() if p.grad is not None]
        # One device sync for the whole model, not one per parameter.
        finite = bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all()) if params else True
        if not finite:
            for p in params:
                p.grad = None
        self._count(state, finite)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if _deepspeed_steps_in_backward(optimizer):
            self._count(state, finite=not optimizer.step_was_skipped)

    def _count(self, state, finite: bool) -> None:
        if finite:
            self.consecutive = 0
            return
        step = state.global_step + 1  # the step being taken
        self.consecutive += 1
        self.skipped_steps.append(step)
        logger.warning("non-finite loss or gradient at step %d: update skipped (%d in a row)", step, self.consecutive)
        if self.consecutive >= self.limit:
            raise NonFiniteLossError(
                f"training stopped at step {step}: {self.consecutive} consecutive non-finite losses or "
                "gradients (check the learning rate, the data's margins, or train in float32)"
            )


def _deepspeed_steps_in_backward(optimizer) -> bool:
    """accelerate's DeepSpeed optimizer wrapper: its ``step()`` is a no-op, the engine stepped in backward."""
    from accelerate.utils import is_deepspeed_available

    if not is_deepspeed_available():  # accelerate exports the wrapper only beside deepspeed (the optional extra)
        return False
    from accelerate.utils import DeepSpeedOptimizerWrapper

    return isinstance(optimizer, DeepSpeedOptimizerWrapper)


class GracefulStop(TrainerCallback):
    """On SIGTERM/SIGINT, finish the current step, write a checkpoint, and stop. A second signal stops
    at once: a step that never ends (a compile of minutes, a hung collective) must not make the
    process unkillable by anything short of SIGKILL (seen on an H200: `timeout`'s SIGTERM could not
    end a flex-attention compile)."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        import signal

        if self.requested:  # the second signal: the previous handlers take it, now
            logger.warning("signal %d received again: stopping now, without a checkpoint", signum)
            self.restore()
            signal.raise_signal(signum)
            return
        logger.warning(
            "signal %d received: will checkpoint at the next step boundary and stop (send it again to stop now)", signum
        )
        self.requested = True

    def restore(self) -> None:
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def on_train_begin(self, args, state, control, **kwargs):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()


class RewardTrainerBase(Trainer):
    """Adds the loss contract, per-step metrics gathered across processes, the non-finite guard,
    graceful stop on SIGTERM and crash-safe checkpoints to ``transformers.Trainer``.

    The loss of an optimizer step is the mean over the loss items (pairs, rated values, target
    tokens) of the whole accumulated batch on every process, whatever its split into micro-batches
    and processes (issue 19). The Trainer's own mechanism carries it: :meth:`get_batch_samples`
    counts the items of the step (``count_loss_items``; the Trainer's default counts ``labels`` !=
    -100 tokens, which is neither pairs nor rated responses), ``compute_loss`` returns Σ loss of its
    micro-batch / that count (:meth:`mean_over_step`), and ``loss_is_scaled_for_ga = True`` tells
    the Trainer not to divide by the accumulation steps again.
    """

    loss_is_scaled_for_ga = True
    # Per-item training metrics logged every logging_steps, as means over every item on every
    # process since the last log; a name in ``metrics_with_spread`` logs ``{name}_mean`` and ``{name}_std``.
    logged_metrics: tuple[str, ...] = ()
    metrics_with_spread: tuple[str, ...] = ("reward",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metric_sums: dict[str, torch.Tensor] = {}  # name → [Σ x, Σ x², count] since the last log, this process
        self.nonfinite_guard = NonFiniteGuard(getattr(self.args, "max_consecutive_nonfinite", 5))
        self.graceful_stop = GracefulStop()
        self.add_callback(self.nonfinite_guard)
        self.add_callback(self.graceful_stop)

    def get_train_dataloader(self):
        """``max_tokens_per_batch`` set: micro-batches filled up to a token budget (hsrm.packing)."""
        if getattr(self.args, "max_tokens_per_batch", None):
            from ..packing import token_budget_dataloader

            return token_budget_dataloader(self)
        return super().get_train_dataloader()

    # ------------------------------------------------------------------------------ loss contract
    def count_loss_items(self, batch: dict) -> int | torch.Tensor:
        """How many items of ``batch`` the loss averages over (pairs, rated values, target tokens)."""
        raise NotImplementedError

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """The micro-batches of one optimizer step and the number of loss items they hold: summed
        over every process when ``average_tokens_across_devices`` (the Trainer's default), as the
        Trainer's own ``_get_num_items_in_batch`` does for tokens. Under a token budget the
        micro-batches hold different numbers of pairs, so only this count weighs every pair equally."""
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batch_samples:
            return batch_samples, None
        count = torch.as_tensor(sum(self.count_loss_items(batch) for batch in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count.reshape(1)).sum()
        return batch_samples, count

    def mean_over_step(self, loss_sum: torch.Tensor, items: int, num_items_in_batch) -> torch.Tensor:
        """This micro-batch's share of the step's mean: Σ loss / the step's item count. Without a count
        (evaluation, or ``compute_loss`` called on its own) the micro-batch's own mean."""
        if num_items_in_batch is None:
            return loss_sum / max(items, 1)
        loss = loss_sum / num_items_in_batch
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            # DDP and DeepSpeed average gradients over processes, and the count spans them all:
            # undo the average, as Trainer.compute_loss does for a model's own loss.
            loss = loss * self.accelerator.num_processes
        return loss

    # ----------------------------------------------------------------------------------- metrics
    def accumulate_metrics(self, values: dict[str, torch.Tensor]) -> None:
        """Add per-item values (one per pair, rated value or target token) to the sums logged at the
        next training log. Non-finite values are left out: a skipped step must not poison the window."""
        for name, value in values.items():
            value = value.detach().reshape(-1).to(torch.float64)
            finite = torch.isfinite(value)
            value = torch.where(finite, value, torch.zeros_like(value))
            sums = torch.stack([value.sum(), (value * value).sum(), finite.sum().to(torch.float64)])
            previous = self._metric_sums.get(name)
            self._metric_sums[name] = sums if previous is None else previous + sums.to(previous.device)

    def _gathered_metrics(self) -> dict[str, float]:
        """The metric means (and spreads) over every item on every process since the last log."""
        if not self.logged_metrics:
            return {}
        sums = torch.zeros(len(self.logged_metrics), 3, dtype=torch.float64, device=self.args.device)
        for row, name in enumerate(self.logged_metrics):
            if name in self._metric_sums:
                sums[row] = self._metric_sums[name].to(sums.device)
        self._metric_sums.clear()
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")  # every process logs at the same step
        logs: dict[str, float] = {}
        for name, (total, squares, count) in zip(self.logged_metrics, sums.tolist()):
            if count == 0:
                continue
            mean = total / count
            if name in self.metrics_with_spread:
                logs[f"{name}_mean"] = round(mean, 6)
                logs[f"{name}_std"] = round(math.sqrt(max(squares / count - mean * mean, 0.0)), 6)
            else:
                logs[name] = round(mean, 6)
        return logs

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: the metrics gathered since the previous one
            logs.update(self._gathered_metrics())
            if self.nonfinite_guard.skipped_steps:
                logs["skipped_nonfinite_steps"] = len(self.nonfinite_guard.skipped_steps)
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        """transformers writes a checkpoint in place; hsrm marks it complete only after every file
        is written, and resume ignores checkpoints without the mark (a crash mid-save). Its files get
        the umask's modes (safetensors and torch.save leave 0600)."""
        from ..files import honour_umask

        with token_withheld(self.args):
            super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.parallel_mode.value == "distributed":
            import torch.distributed as dist

            dist.barrier()
        if self.is_world_process_zero() and folder.exists():
            (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle of the arguments: not needed to resume
            honour_umask(folder)
            (folder / CHECKPOINT_COMPLETE).write_text(json.dumps({"global_step": self.state.global_step}))


def check_engine_engaged(trainer: Trainer) -> None:
    """Refuse a run that asked for FSDP or DeepSpeed (an accelerate config, ``--fsdp``, ``--deepspeed``)
    but would train without it: accelerate turns FSDP on only on GPU-like devices, so an FSDP config
    launched on CPU processes silently trains with DDP — every rank holding the whole model."""
    from ..errors import UserError

    def asked(env: str, option) -> bool:
        return os.environ.get(env, "false").lower() == "true" or bool(option)

    if asked("ACCELERATE_USE_FSDP", trainer.args.fsdp) and not trainer.is_fsdp_enabled:
        raise UserError(
            f"FSDP was asked for, but accelerate would train with {describe_parallelism(trainer)} instead: it "
            "enables FSDP only on GPUs (and NPU/XPU…), not on CPU processes. Launch on GPUs, or drop the FSDP config"
        )
    if asked("ACCELERATE_USE_DEEPSPEED", trainer.args.deepspeed) and not trainer.is_deepspeed_enabled:
        raise UserError(
            f"DeepSpeed was asked for, but accelerate would train with {describe_parallelism(trainer)} instead; "
            "on CPU pass the ZeRO config as --deepspeed ds_configs/zero2.json (or zero3.json) and launch with torchrun"
        )


def describe_parallelism(trainer: Trainer) -> str:
    """How the run is spread, in words: ``1 process``, ``DDP on 2 processes (1 node)``, ``FSDP2 …``,
    ``DeepSpeed ZeRO-3 …``; logged at the start and kept in the run's summary."""
    state = trainer.accelerator.state
    processes = state.num_processes
    if processes == 1 and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return "1 process"
    if trainer.is_deepspeed_enabled:
        stage = state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
        engine = f"DeepSpeed ZeRO-{stage}"
    elif trainer.is_fsdp_enabled:
        engine = f"FSDP{state.fsdp_plugin.fsdp_version}"
    else:
        engine = "DDP"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    nodes = max(processes // max(local, 1), 1)
    return f"{engine} on {processes} process{'es' if processes > 1 else ''} ({nodes} node{'s' if nodes > 1 else ''})"


def check_resumable(checkpoint: str | None, trainer: Trainer) -> None:
    """Refuse, in one line, a checkpoint this launch cannot load: FSDP with SHARDED_STATE_DICT writes
    the model and optimizer as torch.distributed.checkpoint shards (``pytorch_model_fsdp_0/``), which
    only an FSDP run reads (the Trainer would stop with "only supported when using PyTorch FSDP")."""
    from ..errors import UserError

    if checkpoint is None or trainer.is_fsdp_enabled:
        return
    if any(Path(checkpoint).glob("pytorch_model_fsdp_*")):
        raise UserError(
            f"{checkpoint} was written by FSDP as sharded torch.distributed.checkpoint files (pytorch_model_fsdp_0/), "
            f"which only an FSDP run loads, and this run is {describe_parallelism(trainer)}: resume it with the "
            "same FSDP launch (accelerate launch --config_file recipes/accelerate/fsdp2.yaml ...)"
        )


def complete_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints with the completion mark, oldest first; half-written ones are left out."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in root.glob("checkpoint-*"):
        step = folder.name.rsplit("-", 1)[-1]
        if not step.isdigit():
            continue
        if (folder / CHECKPOINT_COMPLETE).exists():
            found.append((int(step), folder))
        else:
            logger.warning("ignoring %s: it has no completion mark (a save was interrupted)", folder)
    return [folder for _, folder in sorted(found)]


# ------------------------------------------------------------------------------------------ save
@contextlib.contextmanager
def token_withheld(args):
    """transformers pickles the arguments into every save (``training_args.bin``): while it writes,
    they hold no ``hub_token``, so no file, not even one a crash leaves in a staging folder, has it."""
    token = getattr(args, "hub_token", None)
    args.hub_token = None
    try:
        yield
    finally:
        args.hub_token = token


def new_run_staging_dir(trainer: Trainer, target: Path) -> Path:
    """A new staging folder beside ``target`` for this save (:func:`hsrm.files.new_staging_dir`:
    never one an interrupted run left, which is reported and left alone), the same for every
    process: DeepSpeed's save is collective and every rank must write to the one folder."""
    from accelerate.utils import broadcast_object_list

    from ..files import new_staging_dir

    chosen = [str(new_staging_dir(target)) if trainer.is_world_process_zero() else None]
    broadcast_object_list(chosen)
    return Path(chosen[0])


def save_trained_model(
    trainer: Trainer, cfg: RewardConfig, output_dir: str, record: ModelRecord, bare_model: Callable[[], tuple[Any, Any]]
) -> None:
    """Write a plain transformers folder at ``output_dir``: a sequence classifier for scalar runs,
    a causal LM for the justifier; loadable with no hsrm import, with the run's record in config.json.

    The files are written to a new staging folder beside the target (a unique name per save: a
    crash's leftovers are never reused), a LoRA adapter is merged into ``bare_model()`` (the run's
    base without LoRA) when ``merge_lora_on_save``, and ``config.json`` is moved in last
    (:func:`commit_staged_folder`), so a crash midway never leaves something that loads as a model.
    No pickle is kept, and none is written with ``hub_token`` in it (:func:`token_withheld`).
    """
    from ..files import atomic_write_json, new_staging_dir

    target = Path(output_dir)
    staging = new_run_staging_dir(trainer, target)
    with token_withheld(trainer.args):
        write_full_model(trainer, staging)  # collective under DeepSpeed and FSDP: every rank calls it
    if not trainer.is_world_process_zero():
        return
    is_peft = hasattr(trainer.model, "peft_config") or (staging / "adapter_config.json").exists()
    if is_peft and cfg.merge_lora_on_save:
        from peft import PeftModel

        base, tokenizer = bare_model()
        merged = PeftModel.from_pretrained(base, str(staging)).merge_and_unload()
        adapter, staging = staging, new_staging_dir(target)
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        shutil.rmtree(adapter)
    elif trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(str(staging))
    (staging / "training_args.bin").unlink(missing_ok=True)
    config_path = staging / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        config["use_cache"] = True  # training switched the KV cache off; inference and generation want it
        atomic_write_json(config_path, config, sort_keys=True)
        write_record(staging, record)
    commit_staged_folder(staging, target)
    logger.info("saved %s to %s", "justifier" if record.objective == "justifier" else "reward model", target)


def write_full_model(trainer: Trainer, folder: Path) -> None:
    """The trained weights, whole, as a ``save_pretrained`` folder, whatever the engine. Every rank
    calls it. Under FSDP the Trainer's own ``save_model`` writes what ``fsdp_state_dict_type`` says —
    a sharded torch.distributed.checkpoint folder for SHARDED_STATE_DICT, which no Hugging Face tool
    loads — so the full state dict is gathered here onto the main process (on CPU) and saved from it.
    The Trainer's path covers one process, DDP and DeepSpeed (ZeRO-3 gathers the 16-bit weights)."""
    if not trainer.is_fsdp_enabled:
        trainer.save_model(str(folder))
        return
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # collective; the full tensors on rank 0
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True)


def commit_staged_folder(staging: Path, target: Path) -> None:
    """Move a fully written model folder into place with ``config.json`` last: until it lands, the
    target is not loadable, so a crash midway never leaves a half-written model that loads."""
    from ..files import honour_umask

    honour_umask(staging)  # safetensors writes 0600: others on a shared machine could not read the model
    target.mkdir(parents=True, exist_ok=True)
    if (target / "config.json").exists():
        os.remove(target / "config.json")  # the old model stops being loadable before its files change
    for name in sorted(os.listdir(staging), key=lambda n: n == "config.json"):
        destination = target / name
        if destination.is_dir():
            shutil.rmtree(destination)
        os.replace(staging / name, destination)
    shutil.rmtree(staging, ignore_errors=True)
