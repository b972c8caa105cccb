"""Generative Pairwise Justifier trainer (HelpSteer2-Preference §3.2, appendix C).

A causal LM learns to write the preference justification for

    {prompt} @Response 1:\\n{response_1}\\n@Response 2:\\n{response_2}\\n
    Between @Response 1 and @Response 2, which is better?

(one string: the line break after the last ``\\n`` is only this page's)

sent as the user turn of its chat template; the assistant turn is the target. The loss is the
usual SFT cross-entropy on the assistant turn only (labels are -100 on the prompt and padding):

    L = -(1/N) Σ_{t ∈ target} log p_θ(y_t | x, y_<t),   N = target tokens of the whole step

(N counts every micro-batch of the optimizer step on every process, so gradient accumulation and
several processes give the step of one large batch.)

    hsrm train recipes/justifier_tiny_cpu.yaml
    hsrm evaluate --justifier --model runs/justifier-tiny --data PAIRS.jsonl

The run itself (resume, graceful stop, checkpoints, the staged final save) is the one every
objective goes through, :func:`hsrm.train.run_training`; this module supplies the justifier's data,
model, trainer and record.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..config import JustifierConfig
from ..data.collators import IGNORE_INDEX
from ..data.justifications import (
    JUSTIFICATION_SETS,
    JUSTIFIER_TARGETS,
    label_examples_from_pairs,
    load_justification_examples,
)
from ..data.render import ensure_chat_template
from ..data.tokenize import tokenize_justifier_examples
from ..default_model import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_HUB_ID
from ..errors import InputError
from ..modeling import torch_dtype
from ..record import ModelRecord
from .base import RewardTrainerBase

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- data
def load_justifier_examples(cfg: JustifierConfig, source: str, split: str, limit: int | None):
    """(a ``datasets.Dataset`` of examples, LoadReport) for one source.

    HelpSteer2-Preference rows give justification targets; plain pairs (HH-RLHF, generic
    ``prompt/chosen/rejected``, RewardBench) have no justification and serve the label target only.
    """
    from ..data.auto import detect_format, load_pairs_any

    fmt = detect_format(source, "pairs") if cfg.data_format == "auto" else cfg.data_format
    if fmt == "helpsteer2_preference":
        ds, report = load_justification_examples(
            source,
            split,
            justification_set=cfg.justification_set,
            target=cfg.justifier_target,
            flip_augmentation=cfg.flip_augmentation,
            seed=cfg.seed,
            on_error=cfg.on_bad_rows,
            limit=limit,
            return_report=True,
        )
        return ds, report
    if cfg.justifier_target != "label":
        raise InputError(
            f"{source}: format {fmt!r} has no written justifications, so justifier_target "
            f"{cfg.justifier_target!r} cannot be built; use justifier_target: label or HelpSteer2-Preference data"
        )
    import datasets

    pairs, report = load_pairs_any(source, split, fmt, on_error=cfg.on_bad_rows, limit=limit, return_report=True)
    examples = label_examples_from_pairs(pairs, seed=cfg.seed, flip_augmentation=cfg.flip_augmentation)
    columns = ("prompt", "response_1", "response_2", "target", "label", "flipped")
    return (
        datasets.Dataset.from_list(examples) if examples else datasets.Dataset.from_dict({c: [] for c in columns})
    ), report


# ---------------------------------------------------------------------------------------- trainer
class JustifierTrainer(RewardTrainerBase):
    """``transformers.Trainer`` with the causal-LM loss on target tokens and the next-token accuracy
    on target tokens as a logged metric (the base adds the lifecycle and the guard).

    The loss is the model's own: given ``num_items_in_batch`` (the target tokens of the whole step,
    :meth:`count_loss_items`) it sums and divides by it, and ``Trainer.compute_loss`` multiplies by
    the processes. Whether the model took the count is the Trainer's own rule
    (``model_accepts_loss_kwargs``), so ``loss_is_scaled_for_ga`` is left to the Trainer (None).
    """

    loss_is_scaled_for_ga = None
    logged_metrics = ("target_token_accuracy",)

    def count_loss_items(self, batch: dict):
        return (batch["labels"][..., 1:] != IGNORE_INDEX).sum()  # the loss predicts token t + 1 from t

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            with torch.no_grad():
                predicted = outputs.logits[:, :-1].argmax(-1)
                targets = inputs["labels"][:, 1:]
                scored = targets != IGNORE_INDEX
                self.accumulate_metrics({"target_token_accuracy": (predicted[scored] == targets[scored]).float()})
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Only the loss: gathering (batch, length, vocab) logits for a whole eval set would not fit.
        return super().prediction_step(model, inputs, True, ignore_keys=ignore_keys)


# ------------------------------------------------------------------------------------------ model
def load_causal_lm(
    name_or_path: str | None,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """(causal LM, tokenizer). The tokenizer gets a chat template if it has none and a pad token
    (its EOS) if it has none: padding is masked out of the loss, so the pad id does not matter,
    and the saved folder keeps the tokenizer's vocabulary unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..default_model import resolve_model_path
    from ..modeling import check_model_folder

    path = resolve_model_path(name_or_path)
    check_model_folder(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_justifier_model(cfg: JustifierConfig, *, with_lora: bool | None = None):
    model, tokenizer = load_causal_lm(
        cfg.model_name_or_path,
        dtype=cfg.model_dtype,
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
    )
    model.config.use_cache = False
    if cfg.use_lora if with_lora is None else with_lora:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules or "all-linear",
        )
        model = get_peft_model(model, lora)
    return model, tokenizer


# ------------------------------------------------------------------------------------------- run
def check_justifier_config(cfg: JustifierConfig) -> None:
    if cfg.justification_set not in JUSTIFICATION_SETS:
        raise InputError(f"justification_set {cfg.justification_set!r}: choose one of {JUSTIFICATION_SETS}")
    if cfg.justifier_target not in JUSTIFIER_TARGETS:
        raise InputError(f"justifier_target {cfg.justifier_target!r}: choose one of {JUSTIFIER_TARGETS}")
    if cfg.max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, not {cfg.max_new_tokens}")
    if not cfg.train_data:
        raise InputError("no train_data: set it in the recipe or pass --train_data FILE")
    if getattr(cfg, "padding_free", False) or getattr(cfg, "max_tokens_per_batch", None):
        raise InputError(
            "padding_free / max_tokens_per_batch are not supported by the justifier trainer yet; "
            "remove them (sequences are right-padded per batch)"
        )


def prepare_justifier_run(cfg: JustifierConfig):
    """(model, tokenizer, train, eval-or-None, data summary) of a justifier run. The examples are
    read first: a data problem is reported before minutes go into loading a large model."""
    check_justifier_config(cfg)
    sources = {"train": (cfg.train_data, cfg.train_split, cfg.max_train_samples)}
    if cfg.eval_data:
        sources["eval"] = (cfg.eval_data, cfg.eval_split, cfg.max_eval_samples)
    loaded = {role: load_justifier_examples(cfg, *spec) for role, spec in sources.items()}
    model, tokenizer = build_justifier_model(cfg)
    data_summary: dict[str, Any] = {}
    tokenized: dict[str, Any] = {}
    for role, (examples, report) in loaded.items():
        # One process per cache tokenizes and writes it (hsrm.data.tokenize); the others then read it.
        with cfg.cache_writers_first(desc=f"tokenizing the {role} justifier examples"):
            tokenized[role], truncation = tokenize_justifier_examples(
                examples, tokenizer, cfg.max_length, num_proc=cfg.dataset_num_proc
            )
        data_summary[role] = {"load": report.summary(), "truncation": truncation, "examples": len(tokenized[role])}
        logger.info("%s | %s", report.summary(), truncation)
        if len(tokenized[role]) == 0:
            source, split, _ = sources[role]
            raise InputError(
                f"{source} ({split}): no usable justifier examples ({report.summary()}); nothing to train on"
            )
    return model, tokenizer, tokenized["train"], tokenized.get("eval"), data_summary


def justifier_record(cfg: JustifierConfig, trainer: JustifierTrainer, eval_ds) -> ModelRecord:
    """The record of a trained justifier; the validation loss when there is a validation set."""
    eval_metrics = {k: float(v) for k, v in trainer.evaluate().items()} if eval_ds is not None else {}
    return ModelRecord(
        objective="justifier",
        justification_set=cfg.justification_set,
        justifier_target=cfg.justifier_target,
        flip_augmentation=bool(cfg.flip_augmentation),
        max_new_tokens=cfg.max_new_tokens,
        base_model=DEFAULT_MODEL_HUB_ID if cfg.model_name_or_path in DEFAULT_MODEL_ALIASES else cfg.model_name_or_path,
        train_data=cfg.train_data,
        max_length=cfg.max_length,
        eval_metrics=eval_metrics,
        lora=bool(cfg.use_lora),
    )
