"""What the pointwise and pairwise trainers share: model set-up, tokenization, metric logging,
the non-finite guard, and saving a plain Hugging Face folder.

The loop belongs to ``transformers.Trainer``; subclasses override ``compute_loss`` and
``prediction_step`` only. DeepSpeed and multi-GPU come in through ``TrainingArguments``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..config import RewardConfig
from ..data.render import TruncationStats, encode
from ..modeling import apply_lora, build_reward_model, freeze_lower_layers, load_reward_model
from ..record import ModelRecord, write_record

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ model
def build_model(cfg: RewardConfig, *, with_lora: bool | None = None):
    """(model, tokenizer) for a run: the backbone, or ``init_from`` a trained reward model.
    ``with_lora=False`` builds the bare base an adapter is merged into.

    Two-stage training (HelpSteer2-Preference §3.2): a BT run initialised from a regression model
    keeps its body and its *helpfulness* head (row 0 of a five-attribute head).
    """
    if cfg.init_from:
        # A trained reward model: the loader refuses a folder without a trained head.
        model, tokenizer, _ = load_reward_model(cfg.init_from, dtype=cfg.model_dtype, device=None,
                                                trust_remote_code=cfg.trust_remote_code,
                                                attn_implementation=cfg.attn_implementation)
        model.train()
        init_labels = model.config.num_labels
        if init_labels != cfg.num_labels:
            if cfg.num_labels != 1:
                raise ValueError(f"init_from {cfg.init_from} has {init_labels} outputs; can only reduce to the helpfulness head")
            helpfulness = model.score.weight.data[:1].clone()
            model.score = torch.nn.Linear(helpfulness.shape[1], 1, bias=False, dtype=helpfulness.dtype)
            model.score.weight.data.copy_(helpfulness)
            model.config.num_labels = 1
            model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    else:
        model, tokenizer = build_reward_model(cfg.model_name_or_path, num_labels=cfg.num_labels, dtype=cfg.model_dtype,
                                              trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation)
    model.config.use_cache = False
    if cfg.use_lora if with_lora is None else with_lora:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules or "all-linear")
    if cfg.train_top_layers:
        trainable, total = freeze_lower_layers(model, cfg.train_top_layers)
        logger.info("train_top_layers=%d: %s of %s parameters trainable", cfg.train_top_layers, f"{trainable:,}", f"{total:,}")
        if cfg.gradient_checkpointing:
            # Checkpointing makes the embedding output require grad, which would backpropagate through
            # every frozen layer; the frozen layers keep no activations anyway.
            logger.warning("gradient_checkpointing turned off: with train_top_layers the frozen layers keep no activations")
            cfg.gradient_checkpointing = False
    return model, tokenizer


# ----------------------------------------------------------------------------------- tokenization
def tokenize_pairs(dataset, tokenizer, max_length: int):
    """Pairs → ``chosen_ids, rejected_ids, margin``; truncation counted, no row dropped."""
    import datasets

    stats = TruncationStats()
    out: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], "margin": []}
    rejected_prompts = dataset["rejected_prompt"] if "rejected_prompt" in dataset.column_names else None
    for i, row in enumerate(dataset):
        out["chosen_ids"].append(encode(tokenizer, row["prompt"], row["chosen"], max_length, stats))
        other_prompt = rejected_prompts[i] if rejected_prompts is not None else row["prompt"]
        out["rejected_ids"].append(encode(tokenizer, other_prompt, row["rejected"], max_length, stats))
        out["margin"].append(float(row.get("margin", 1.0)))
    logger.info("tokenized %d pairs: %s", len(dataset), stats.summary())
    return datasets.Dataset.from_dict(out), stats


def tokenize_ratings(dataset, tokenizer, attributes, max_length: int):
    """Rated responses → ``input_ids, labels`` (one float per attribute)."""
    import datasets

    stats = TruncationStats()
    out: dict[str, list] = {"input_ids": [], "labels": []}
    for row in dataset:
        out["input_ids"].append(encode(tokenizer, row["prompt"], row["response"], max_length, stats))
        out["labels"].append([float(row[a]) for a in attributes])
    logger.info("tokenized %d rated responses: %s", len(dataset), stats.summary())
    return datasets.Dataset.from_dict(out), stats


# ---------------------------------------------------------------------------------------- trainer
CHECKPOINT_COMPLETE = "hsrm_checkpoint_complete"  # written last: a checkpoint without it is half-written


class NonFiniteLossError(RuntimeError):
    pass


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived: a checkpoint was written at the step boundary and training stopped."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"training interrupted at step {step}; resume with --resume_from_checkpoint true "
                         f"(checkpoint: {checkpoint})")


class NonFiniteGuard(TrainerCallback):
    """Before each optimizer step: if any gradient is NaN/inf (a NaN loss makes them all NaN), drop
    every gradient so AdamW skips the step entirely (no moment or weight-decay update), and log it.
    After ``limit`` consecutive skips, stop with an error naming the step."""

    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.skipped_steps: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for p in model.parameters() if p.grad is not None]
        # One device sync for the whole model, not one per parameter.
        finite = bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all()) if params else True
        if finite:
            self.consecutive = 0
            return
        step = state.global_step + 1  # the step being taken
        for p in params:
            p.grad = None
        self.consecutive += 1
        self.skipped_steps.append(step)
        logger.warning("non-finite loss or gradient at step %d: update skipped (%d in a row)", step, self.consecutive)
        if self.consecutive >= self.limit:
            raise NonFiniteLossError(f"training stopped at step {step}: {self.consecutive} consecutive non-finite losses or "
                                     "gradients (check the learning rate, the data's margins, or train in float32)")


class GracefulStop(TrainerCallback):
    """On SIGTERM/SIGINT, finish the current step, write a checkpoint, and stop."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        logger.warning("signal %d received: will checkpoint at the next step boundary and stop", signum)
        self.requested = True

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
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class RewardTrainerBase(Trainer):
    """Adds per-step metric logging, the non-finite guard, graceful stop on SIGTERM and
    crash-safe checkpoints to ``transformers.Trainer``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metric_sums: dict[str, float] = defaultdict(float)
        self._metric_counts: dict[str, int] = defaultdict(int)
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

    def store_metrics(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if math.isfinite(float(value)):
                self._metric_sums[key] += float(value)
                self._metric_counts[key] += 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Training logs carry "loss"; add the metric means gathered since the last log.
        if "loss" in logs and self._metric_counts:
            for key in list(self._metric_sums):
                logs[key] = round(self._metric_sums[key] / max(self._metric_counts[key], 1), 6)
            self._metric_sums.clear()
            self._metric_counts.clear()
        if "loss" in logs and self.nonfinite_guard.skipped_steps:
            logs["skipped_nonfinite_steps"] = len(self.nonfinite_guard.skipped_steps)
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        """transformers writes a checkpoint in place; hsrm marks it complete only after every file
        is written, and resume ignores checkpoints without the mark (a crash mid-save)."""
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.parallel_mode.value == "distributed":
            import torch.distributed as dist

            dist.barrier()
        if self.is_world_process_zero() and folder.exists():
            (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle that may hold hub_token
            (folder / CHECKPOINT_COMPLETE).write_text(json.dumps({"global_step": self.state.global_step}))


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
def save_reward_model(trainer: Trainer, cfg: RewardConfig, output_dir: str, record: ModelRecord) -> None:
    """Write a plain ``AutoModelForSequenceClassification`` folder at ``output_dir``.

    The files are written to a temporary folder beside the target, a LoRA adapter is merged when
    asked, and ``config.json`` is moved in last: a folder without it cannot be loaded, so a crash
    midway never leaves something that loads as a model.
    """
    target = Path(output_dir)
    staging = target.parent / f".{target.name}.saving"
    trainer.save_model(str(staging))  # collective under DeepSpeed: every rank calls it
    if not trainer.is_world_process_zero():
        return
    model = trainer.model
    is_peft = hasattr(model, "peft_config") or (staging / "adapter_config.json").exists()
    if is_peft and cfg.merge_lora_on_save:
        from peft import PeftModel

        base, tokenizer = build_model(cfg, with_lora=False)
        merged = PeftModel.from_pretrained(base, str(staging)).merge_and_unload()
        shutil.rmtree(staging)
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
    elif trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(str(staging))
    # training_args.bin is a pickle (and may hold hub_token): a model folder does not need it.
    (staging / "training_args.bin").unlink(missing_ok=True)
    if (staging / "config.json").exists():
        write_record(staging, record)
    commit_staged_folder(staging, target)
    logger.info("saved reward model to %s", target)


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


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
