"""Training configuration: ``TrainingArguments`` subclasses, read by the options layer.

A recipe is a serialised :class:`RewardConfig` (or :class:`JustifierConfig` for ``objective:
justifier``); ``hsrm train RECIPE.yaml --key value`` (or ``--config RECIPE.yaml``) overrides any key
through :mod:`hsrm.options`. Unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from transformers import TrainingArguments

from .errors import InputError
from .options import OVERWRITE_ALIASES, OnBadRows, OptionsError, ResultFormat, check_choices, parse_options
from .record import Objective  # one list: what a run may train is what a model record may say

TrainFormat = Literal["auto", "helpsteer2_preference", "helpsteer2_ratings", "helpsteer3_preference", "pairs"]

PAIRWISE_OBJECTIVES = ("bt", "margin_bt", "scaled_bt")


@dataclass
class RewardConfig(TrainingArguments):
    """Everything a reward-model run needs. Defaults follow HelpSteer2-Preference appendix E where
    it gives one (AdamW, constant LR after 10 warm-up steps, 1 epoch for BT, 2 for regression)."""

    # --- model
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "backbone path or Hub id; empty = embedded SmolLM2-135M-Instruct", "aliases": ["--model"]},
    )
    init_from: str | None = field(
        default=None, metadata={"help": "a trained regression RM folder to start BT from (two-stage)"}
    )
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32",
        metadata={"help": "the weights' precision (auto: the checkpoint's own)", "aliases": ["--dtype"]},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "auto (hsrm_varlen on CUDA in bf16/fp16, else the model's default) | hsrm_varlen | sdpa | eager "
            "| flex_attention | flash_attention_2; empty = the model's default"
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run model code from the Hub (off unless you trust it)"}
    )
    # --- objective
    objective: Objective = field(
        default="bt", metadata={"help": "what to train: Likert regression, a Bradley-Terry loss, or a justifier"}
    )
    attributes: list[str] = field(
        default_factory=lambda: ["helpfulness"], metadata={"help": "regression targets; ['all'] = five"}
    )
    attribute_weights: list[float] | None = field(
        default=None, metadata={"help": "scalar reward = weights · attributes"}
    )
    center_rewards_coefficient: float = field(default=0.0, metadata={"help": "× mean (r_c + r_r)²; 0 = off"})
    # --- data
    train_data: str | None = field(
        default=None, metadata={"help": "file (.jsonl/.jsonl.gz/.parquet) or Hub id", "aliases": ["--data"]}
    )
    eval_data: str | None = field(default=None, metadata={"help": "validation source; empty = none"})
    data_format: TrainFormat = field(
        default="auto", metadata={"help": "the training data's format (auto: told from its first row or Hub id)"}
    )
    train_split: str = field(default="train", metadata={"help": "split of a Hub dataset (or of a file's split column)"})
    eval_split: str = field(default="val", metadata={"help": "split of eval_data"})
    max_length: int = field(
        default=2048, metadata={"help": "tokens per sequence; longer ones lose prompt tokens from the left"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training rows"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N validation rows"})
    on_bad_rows: OnBadRows = field(
        default="raise",
        metadata={"help": "unusable rows: raise (stop at the first) or skip (skip, count and log them)"},
    )
    dataset_num_proc: int | None = field(
        default=None,
        metadata={
            "help": "processes that tokenize the data (datasets.map num_proc); "
            "empty = this process, with the fast tokenizer's own threads"
        },
    )
    # --- speed (issue 8; hsrm/packing/, docs/speed.md)
    padding_free: bool = field(
        default=False,
        metadata={"help": "pack each micro-batch into one row with per-sequence position ids (no pad tokens)"},
    )
    share_prompts: bool = field(
        default=True,
        metadata={
            "help": "pairs: compute each pair's prompt once, one row [prompt | chosen | rejected] (exact; "
            "padded layout with eager or SDPA attention, else each side whole, and the log says why)"
        },
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={
            "help": "tokens per micro-batch (replaces per_device_train_batch_size); empty = a fixed number of pairs"
        },
    )
    # --- partial fine-tuning: the cheap middle ground between a frozen-backbone probe and full fine-tuning
    train_top_layers: int | None = field(
        default=None,
        metadata={
            "help": "train only the top N decoder layers, the final norm and the head; "
            "the embeddings and lower layers stay frozen (empty = all)"
        },
    )
    # --- LoRA
    use_lora: bool = field(
        default=False, metadata={"help": "train a LoRA adapter (and the score head) instead of every weight"}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA path"})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "empty = all linear layers"})
    merge_lora_on_save: bool = field(
        default=True, metadata={"help": "save a plain sequence classifier, not an adapter"}
    )
    # --- reliability
    max_consecutive_nonfinite: int = field(
        default=5, metadata={"help": "stop after this many skipped non-finite steps"}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "replace what --output holds (a previous run); without it a non-empty folder is refused "
            "unless resuming",
            "aliases": list(OVERWRITE_ALIASES),
        },
    )

    # TrainingArguments defaults that suit reward models.
    output_dir: str | None = field(
        default="runs/reward-model",
        metadata={"help": "the model folder to write (checkpoints go in its checkpoints/)", "aliases": ["--output"]},
    )
    learning_rate: float = field(default=2e-6)
    lr_scheduler_type: str = field(default="constant_with_warmup")
    warmup_steps: float = field(default=10)
    num_train_epochs: float = field(default=1.0)
    per_device_train_batch_size: int = field(
        default=4,
        metadata={
            "help": "pairs (or rated responses) per device per micro-batch",
            "aliases": ["--batch-size", "--batch_size"],
        },
    )
    per_device_eval_batch_size: int = field(default=8)
    logging_steps: float = field(default=10)
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "where to log (none, tensorboard, wandb …)"}
    )
    remove_unused_columns: bool = field(default=False)
    save_only_model: bool = field(default=False)
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP: look for parameters without a gradient after every backward (off: every trainable "
            "parameter feeds the reward, and the search costs an extra pass over the graph each step)"
        },
    )

    def __post_init__(self):
        check_choices(self)
        if self.objective == "justifier" and not isinstance(self, JustifierConfig):
            raise InputError(
                "objective justifier is configured by JustifierConfig (hsrm train picks it from the objective)"
            )
        if isinstance(self.attributes, str):  # RewardConfig(attributes="helpfulness") is one name, not eleven letters
            self.attributes = [self.attributes]
        if self.attributes == ["all"]:
            self.attributes = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
        if self.objective != "regression" and self.attributes != ["helpfulness"]:
            # a pairwise or justifier run trains one output, the reward, and records it as helpfulness:
            # other names would be recorded wrong (before: silently replaced)
            raise InputError(
                f"attributes {self.attributes} with objective {self.objective}: only a regression run trains named "
                "attributes; drop attributes (the reward is recorded as helpfulness) or use objective regression"
            )
        for name in (
            "max_length",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "max_tokens_per_batch",
            "gradient_accumulation_steps",
            "dataset_num_proc",
        ):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a positive whole number, got {value!r}")
        if self.attribute_weights is not None and len(self.attribute_weights) != len(self.attributes):
            raise InputError(f"{len(self.attribute_weights)} attribute_weights for {len(self.attributes)} attributes")
        if self.train_top_layers is not None:
            if self.train_top_layers < 1:
                raise InputError(
                    f"train_top_layers must be at least 1, not {self.train_top_layers} (leave it empty to train "
                    "every layer)"
                )
            if self.use_lora:
                raise InputError(
                    "train_top_layers and use_lora do not combine: pick LoRA on every layer or full fine-tuning of "
                    "the top layers"
                )
        if self.deepspeed:  # TrainingArguments would fail deep inside accelerate without it
            from .errors import require_extra

            require_extra("deepspeed", "deepspeed", "deepspeed (a ZeRO config)")
        super().__post_init__()

    @contextlib.contextmanager
    def cache_writers_first(self, desc: str):
        """Run the body on the processes that write a cache before the processes that read it: the
        global main process first (the one writer when the cache is on storage every node shares),
        then the main process of each node (the one writer of a node-local cache), then the rest.
        Each level is one barrier on every rank, so the nesting cannot deadlock."""
        with self.main_process_first(local=False, desc=desc), self.main_process_first(local=True, desc=desc):
            yield

    @property
    def num_labels(self) -> int:
        return len(self.attributes) if self.objective == "regression" else 1


@dataclass
class JustifierConfig(RewardConfig):
    """A generative pairwise justifier run (HelpSteer2-Preference §3.2, appendix C): the reward-model
    run's keys plus the justifier's own."""

    justification_set: Literal["overall", "all"] = field(
        default="overall", metadata={"help": "justifier: one justification per task (overall) or up to three (all)"}
    )
    justifier_target: Literal["full", "statement", "label"] = field(
        default="full", metadata={"help": "justifier: what it learns to write (full: elaboration then statement)"}
    )
    flip_augmentation: bool = field(
        default=False, metadata={"help": "justifier: also train on each example with the responses swapped"}
    )
    max_new_tokens: int = field(
        default=512, metadata={"help": "justifier: tokens generated per verdict when evaluating"}
    )


JUSTIFIER_KEYS = tuple(f.name for f in fields(JustifierConfig) if f.name not in {g.name for g in fields(RewardConfig)})


def train_options(argv: list[str] | None = None, defaults: dict[str, Any] | None = None) -> RewardConfig:
    """``hsrm train`` options: a :class:`JustifierConfig` for ``objective: justifier``, else a
    :class:`RewardConfig` (whose keys exclude the justifier's). ``--help`` lists every key of both."""
    return train_cli_options(argv, defaults)[0]


def train_cli_options(
    argv: list[str] | None = None, defaults: dict[str, Any] | None = None
) -> tuple[RewardConfig, ResultFormat]:
    """(config, output format) of ``hsrm train``: see :func:`train_options`."""
    argv = list(argv or [])
    options = dict(
        prog="hsrm train",
        description="Train a reward model (or a generative justifier) from a recipe.",
        positional="config",
        defaults=defaults,
    )
    cfg, output = parse_options(
        (JustifierConfig, ResultFormat), argv, **options
    )  # the superset: --help and the objective
    if cfg.objective == "justifier":
        return cfg, output
    try:
        return parse_options((RewardConfig, ResultFormat), argv, **options)
    except OptionsError as err:
        used = [k for k in JUSTIFIER_KEYS if k in str(err)]
        if used:
            raise OptionsError(f"{', '.join(used)}: justifier options, but the objective is {cfg.objective}") from None
        raise


def load_recipe(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> RewardConfig:
    """A recipe YAML (or nothing) plus values → a validated config, typed exactly as on the command line."""
    return train_options([f"--config={path}"] if path is not None else [], defaults=overrides)
