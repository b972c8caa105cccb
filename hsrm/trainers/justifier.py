"""Generative Pairwise Justifier trainer (HelpSteer2-Preference §3.2, appendix C).

A causal LM learns to write the preference justification for

    {prompt} @Response 1:\\n{response_1}\\n@Response 2:\\n{response_2}\\nBetween @Response 1 and @Response 2, which is better?

sent as the user turn of its chat template; the assistant turn is the target. The loss is the
usual SFT cross-entropy on the assistant turn only (labels are -100 on the prompt and padding):

    L = -(1/N) Σ_{t ∈ target} log p_θ(y_t | x, y_<t),   N = target tokens in the (global) batch

    hsrm train recipes/justifier_tiny_cpu.yaml
    hsrm evaluate --justifier --model runs/justifier-tiny --data PAIRS.jsonl

Reads: setup (config → tokenizer → data → model [+ LoRA]) → train (transformers.Trainer) →
save a plain ``AutoModelForCausalLM`` folder (LoRA merged) with hsrm metadata in config.json.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RewardConfig
from ..data.justifications import (JUSTIFICATION_SETS, JUSTIFIER_TARGETS, encode_justifier_example,
                                   label_examples_from_pairs, load_justification_examples, truncation_summary)
from ..data.render import TruncationStats, ensure_chat_template, pad_sequences
from ..modeling import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_HUB_ID
from ..record import ModelRecord, write_record
from .base import RewardTrainerBase, commit_staged_folder

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # positions that carry no loss (prompt, assistant header, padding)


# ------------------------------------------------------------------------------------------- data
def load_justifier_examples(cfg: RewardConfig, source: str, split: str, limit: int | None):
    """(list of example dicts, LoadReport) for one source.

    HelpSteer2-Preference rows give justification targets; plain pairs (HH-RLHF, generic
    ``prompt/chosen/rejected``, RewardBench) have no justification and serve the label target only.
    """
    from ..data.auto import detect_format, load_pairs_any

    fmt = detect_format(source, "pairs") if cfg.data_format == "auto" else cfg.data_format
    if fmt == "helpsteer2_preference":
        ds, report = load_justification_examples(
            source, split, justification_set=cfg.justification_set, target=cfg.justifier_target,
            flip_augmentation=cfg.flip_augmentation, seed=cfg.seed, on_error=cfg.on_bad_rows, limit=limit,
            return_report=True)
        return ds.to_list(), report
    if cfg.justifier_target != "label":
        raise ValueError(f"{source}: format {fmt!r} has no written justifications, so justifier_target "
                         f"{cfg.justifier_target!r} cannot be built; use justifier_target: label or HelpSteer2-Preference data")
    pairs, report = load_pairs_any(source, split, fmt, on_error=cfg.on_bad_rows, limit=limit, return_report=True)
    return label_examples_from_pairs(pairs, seed=cfg.seed, flip_augmentation=cfg.flip_augmentation), report


def tokenize_justifier_examples(examples: list[dict], tokenizer, max_length: int | None):
    """Examples → a ``datasets.Dataset`` of ``input_ids, labels`` (+ the stats of what was cut).
    Examples whose target alone exceeds ``max_length`` are dropped and counted."""
    import datasets
    from tqdm.auto import tqdm

    stats = TruncationStats()
    out: dict[str, list] = {"input_ids": [], "labels": []}
    too_long = 0
    for example in tqdm(examples, desc="tokenizing justifier examples", disable=len(examples) < 2000):
        encoded = encode_justifier_example(tokenizer, example["prompt"], example["response_1"], example["response_2"],
                                           example["target"], max_length, stats)
        if encoded is None:
            too_long += 1
            continue
        out["input_ids"].append(encoded[0])
        out["labels"].append(encoded[1])
    summary = truncation_summary(stats) + (f"; {too_long} examples dropped (target longer than max_length)" if too_long else "")
    logger.info("tokenized %d justifier examples: %s", len(out["input_ids"]), summary)
    return datasets.Dataset.from_dict(out), summary


@dataclass
class JustifierCollator:
    """Pre-tokenized ``input_ids`` / ``labels`` → a right-padded batch; padding gets label -100.

    >>> c = JustifierCollator(pad_id=0)
    >>> b = c([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}])
    >>> b["input_ids"].tolist(), b["attention_mask"].tolist(), b["labels"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[1, 1, 1], [1, 1, 0]], [[-100, 6, 7], [-100, 9, -100]])
    """

    pad_id: int

    def __call__(self, features: list[dict]) -> dict:
        ids, mask = pad_sequences([f["input_ids"] for f in features], self.pad_id, "right")
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, feature in enumerate(features):
            labels[row, : len(feature["labels"])] = torch.tensor(feature["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------------------------------- trainer
class JustifierTrainer(RewardTrainerBase):
    """``transformers.Trainer`` with the causal-LM loss on target tokens (the model's own loss,
    normalised by the number of target tokens across gradient accumulation), plus the
    next-token accuracy on target tokens as a logged metric (the base adds the non-finite guard)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            with torch.no_grad():
                predicted = outputs.logits[:, :-1].argmax(-1)
                targets = inputs["labels"][:, 1:]
                scored = targets != IGNORE_INDEX
                if scored.any():
                    self.store_metrics({"target_token_accuracy": (predicted[scored] == targets[scored]).float().mean().item()})
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Only the loss: gathering (batch, length, vocab) logits for a whole eval set would not fit.
        return super().prediction_step(model, inputs, True, ignore_keys=ignore_keys)


# ------------------------------------------------------------------------------------------ model
def _torch_dtype(name: str):
    table = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"model_dtype {name!r}: choose one of {sorted(table)}")
    return table[name]


def load_causal_lm(name_or_path: str | None, *, dtype: str = "float32", trust_remote_code: bool = False,
                   attn_implementation: str | None = None):
    """(causal LM, tokenizer). The tokenizer gets a chat template if it has none and a pad token
    (its EOS) if it has none: padding is masked out of the loss, so the pad id does not matter,
    and the saved folder keeps the tokenizer's vocabulary unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..modeling import check_model_folder, resolve_model_path

    path = resolve_model_path(name_or_path)
    check_model_folder(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code,
                                                 use_safetensors=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_justifier_model(cfg: RewardConfig, *, with_lora: bool | None = None):
    model, tokenizer = load_causal_lm(cfg.model_name_or_path, dtype=cfg.model_dtype, trust_remote_code=cfg.trust_remote_code,
                                      attn_implementation=cfg.attn_implementation)
    model.config.use_cache = False
    if cfg.use_lora if with_lora is None else with_lora:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_target_modules or "all-linear")
        model = get_peft_model(model, lora)
    return model, tokenizer


def save_justifier_model(trainer, cfg: RewardConfig, output_dir: str, record: ModelRecord) -> None:
    """A plain ``AutoModelForCausalLM`` folder at ``output_dir`` (LoRA merged unless
    ``merge_lora_on_save`` is false), written beside it first and moved in with config.json
    last, so a crash never leaves a folder that loads as a model."""
    target = Path(output_dir)
    staging = target.parent / f".{target.name}.saving"
    trainer.save_model(str(staging))  # collective under DeepSpeed: every rank calls it
    if not trainer.is_world_process_zero():
        return
    is_peft = hasattr(trainer.model, "peft_config") or (staging / "adapter_config.json").exists()
    if is_peft and cfg.merge_lora_on_save:
        from peft import PeftModel

        base, tokenizer = build_justifier_model(cfg, with_lora=False)
        merged = PeftModel.from_pretrained(base, str(staging)).merge_and_unload()
        shutil.rmtree(staging)
        merged.config.use_cache = True
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
    elif trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(str(staging))
    config_path = staging / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        config["use_cache"] = True  # training switched the KV cache off; generation wants it
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
        write_record(staging, record)
    commit_staged_folder(staging, target)
    logger.info("saved justifier to %s", target)


# ------------------------------------------------------------------------------------------- run
def check_justifier_config(cfg: RewardConfig) -> None:
    if cfg.justification_set not in JUSTIFICATION_SETS:
        raise ValueError(f"justification_set {cfg.justification_set!r}: choose one of {JUSTIFICATION_SETS}")
    if cfg.justifier_target not in JUSTIFIER_TARGETS:
        raise ValueError(f"justifier_target {cfg.justifier_target!r}: choose one of {JUSTIFIER_TARGETS}")
    if cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {cfg.max_new_tokens}")
    if not cfg.train_data:
        raise ValueError("no train_data: set it in the recipe or pass --train_data FILE")
    if getattr(cfg, "padding_free", False) or getattr(cfg, "max_tokens_per_batch", None):
        raise ValueError("padding_free / max_tokens_per_batch are not supported by the justifier trainer yet; "
                         "remove them (sequences are right-padded per batch)")


def run_justifier_training(cfg: RewardConfig) -> dict[str, Any]:
    """Train a Pairwise Justifier from ``cfg``, save it at ``cfg.output_dir``, return a summary."""
    check_justifier_config(cfg)
    # Examples first: a data problem is reported before minutes go into loading a large model.
    sources = {"train": (cfg.train_data, cfg.train_split, cfg.max_train_samples)}
    if cfg.eval_data:
        sources["eval"] = (cfg.eval_data, cfg.eval_split, cfg.max_eval_samples)
    loaded = {role: load_justifier_examples(cfg, *spec) for role, spec in sources.items()}
    model, tokenizer = build_justifier_model(cfg)

    data_summary: dict[str, Any] = {}
    tokenized: dict[str, Any] = {}
    for role, (examples, report) in loaded.items():
        tokenized[role], truncation = tokenize_justifier_examples(examples, tokenizer, cfg.max_length)
        data_summary[role] = {"load": report.summary(), "truncation": truncation, "examples": len(tokenized[role])}
        logger.info("%s | %s", report.summary(), truncation)
        if len(tokenized[role]) == 0:
            source, split, _ = sources[role]
            raise ValueError(f"{source} ({split}): no usable justifier examples ({report.summary()}); nothing to train on")
    train_ds, eval_ds = tokenized["train"], tokenized.get("eval")
    if eval_ds is None:
        cfg.eval_strategy = "no"
        cfg.load_best_model_at_end = False

    final_dir = cfg.output_dir
    cfg.output_dir = f"{final_dir}/checkpoints"  # the model folder itself holds only the final model
    trainer = JustifierTrainer(model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                               data_collator=JustifierCollator(tokenizer.pad_token_id))
    result = trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    eval_metrics = {k: float(v) for k, v in trainer.evaluate().items()} if eval_ds is not None else {}
    record = ModelRecord(
        objective="justifier", justification_set=cfg.justification_set, justifier_target=cfg.justifier_target,
        flip_augmentation=bool(cfg.flip_augmentation), max_new_tokens=cfg.max_new_tokens,
        base_model=DEFAULT_MODEL_HUB_ID if cfg.model_name_or_path in DEFAULT_MODEL_ALIASES else cfg.model_name_or_path,
        train_data=cfg.train_data, max_length=cfg.max_length, eval_metrics=eval_metrics, lora=bool(cfg.use_lora))
    save_justifier_model(trainer, cfg, final_dir, record)
    cfg.output_dir = final_dir
    return {"output_dir": final_dir, "train_loss": result.training_loss, "global_step": result.global_step,
            "log_history": trainer.state.log_history, "data": data_summary, **record.to_dict()}
