"""Train a reward model from a recipe.

    hsrm train recipes/tiny_bt.yaml --max_steps 20
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m hsrm.train recipes/scaled_bt.yaml

Reads: setup (config → data → model) → train → record → save (plain HF folder + hsrm metadata),
the same lifecycle for every objective (:func:`run_training`); the config is read, never written back.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from .config import PAIRWISE_OBJECTIVES, RewardConfig, train_cli_options
from .data.auto import load_pairs_any, load_ratings_any
from .data.tokenize import tokenize_pairs, tokenize_ratings
from .default_model import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_HUB_ID
from .errors import InputError, TrainingInterrupted
from .modeling import scalar_reward
from .record import ModelRecord, reward_statistics

# The trainers (and with them transformers' Trainer, peft and accelerate) are imported where a run
# needs them, not here: `hsrm train --help` reads only the options.

logger = logging.getLogger("hsrm.train")


def load_datasets(cfg: RewardConfig, tokenizer):
    """Tokenized (train, eval-or-None) datasets and a summary of what loading kept and cut."""
    if not cfg.train_data:
        raise InputError("no train_data: set it in the recipe or pass --train_data FILE")
    summary: dict[str, Any] = {}

    def load(role: str, source: str, split: str, limit: int | None):
        if cfg.objective == "regression":
            ds, report = load_ratings_any(
                source, split, cfg.attributes, on_error=cfg.on_bad_rows, limit=limit, return_report=True
            )
        else:
            ds, report = load_pairs_any(
                source, split, cfg.data_format, on_error=cfg.on_bad_rows, limit=limit, return_report=True
            )
            if cfg.objective in ("margin_bt", "scaled_bt") and "has_margin" in ds.column_names:
                ds = require_margins(ds, report, source, cfg)
        # One process per cache tokenizes and writes it (hsrm.data.tokenize); the others then read it.
        with cfg.cache_writers_first(desc=f"tokenizing the {role} data"):
            if cfg.objective == "regression":
                tokenized, stats = tokenize_ratings(
                    ds, tokenizer, cfg.attributes, cfg.max_length, num_proc=cfg.dataset_num_proc
                )
            else:
                tokenized, stats = tokenize_pairs(ds, tokenizer, cfg.max_length, num_proc=cfg.dataset_num_proc)
        summary[role] = {"load": report.summary(), "truncation": stats.summary()}
        logger.info("%s | %s", report.summary(), stats.summary())
        if len(tokenized) == 0:
            raise InputError(
                f"{source} ({split}): no usable rows after filtering ({report.summary()}); nothing to train on"
            )
        return tokenized

    train = load("train", cfg.train_data, cfg.train_split, cfg.max_train_samples)
    evaluation = load("eval", cfg.eval_data, cfg.eval_split, cfg.max_eval_samples) if cfg.eval_data else None
    return train, evaluation, summary


def require_margins(ds, report, source: str, cfg: RewardConfig):
    """Margin and Scaled BT read a preference strength from every pair: a pair without one is not
    given 1.0 silently. ``on_bad_rows: skip`` drops such pairs and counts them."""
    from .data.io import DataError

    missing = [i for i, has in enumerate(ds["has_margin"]) if not has]
    if len(missing) == len(ds):
        raise InputError(
            f"{source}: objective {cfg.objective} needs a preference strength per pair, and the data has none; "
            "use objective 'bt' or add a 'margin'/'strength' column"
        )
    if not missing:
        return ds
    if cfg.on_bad_rows != "skip":
        raise DataError(
            source,
            missing[0],
            "margin",
            f"no preference strength, and objective {cfg.objective} needs one on "
            f"every pair ({len(missing)} of {len(ds)} pairs have none); add it, or set on_bad_rows: skip "
            "to drop those pairs (counted)",
        )
    report.drop("no preference strength", len(missing))
    report.rows_kept -= len(missing)
    logger.warning(
        "%s: %d of %d pairs have no preference strength; skipped (on_bad_rows: skip)", source, len(missing), len(ds)
    )
    return ds.filter(lambda has: has, input_columns="has_margin")


def training_arguments(cfg: RewardConfig, *, has_eval: bool) -> RewardConfig:
    """The arguments the Trainer runs with, derived from ``cfg`` (a copy; the config itself is never
    written back): checkpoints under ``output_dir/checkpoints``, so the model folder holds only the
    final model; no evaluation without an evaluation set; no gradient checkpointing with
    ``train_top_layers`` (it would make the embedding output require grad and backpropagate through
    every frozen layer, which keeps no activations anyway)."""
    from transformers.trainer_utils import IntervalStrategy

    args = copy.copy(cfg)
    args.output_dir = f"{cfg.output_dir}/checkpoints"
    if not has_eval:
        args.eval_strategy = IntervalStrategy.NO
        args.load_best_model_at_end = False
    if cfg.train_top_layers and cfg.gradient_checkpointing:
        logger.warning("gradient_checkpointing turned off: with train_top_layers the frozen layers keep no activations")
        args.gradient_checkpointing = False
        if hasattr(args, "activation_checkpointing"):
            # Newer transformers 5.x (5.25 here) renamed it: the old name is an alias resolved once at init; the Trainer
            # reads the new one, so setting only the old name here would leave checkpointing on.
            args.activation_checkpointing = False
    return args


def make_trainer(cfg: RewardConfig, model, tokenizer, train_ds, eval_ds):
    """The trainer of ``cfg.objective``, running with :func:`training_arguments`."""
    from .data.collators import JustifierCollator, PackedPointwiseCollator, PointwiseCollator
    from .packing import check_packing_support
    from .trainers.base import compute_dtype
    from .trainers.justifier import JustifierTrainer
    from .trainers.pairwise import PairwiseRewardTrainer, pairwise_metrics
    from .trainers.pointwise import PointwiseRewardTrainer, regression_metrics

    args = training_arguments(cfg, has_eval=eval_ds is not None)
    pad_id = tokenizer.pad_token_id
    if cfg.objective == "justifier":
        return JustifierTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            data_collator=JustifierCollator(pad_id),
        )
    if cfg.padding_free:  # one packed row per micro-batch (issue 8); refuses attention paths that would mix sequences
        check_packing_support(model, device=args.device, dtype=compute_dtype(cfg))
    if cfg.objective == "regression":
        trainer_cls, collator, metrics = (
            PointwiseRewardTrainer,
            PackedPointwiseCollator(pad_id) if cfg.padding_free else PointwiseCollator(pad_id),
            regression_metrics(cfg.attributes, cfg.attribute_weights),
        )
    elif cfg.objective in PAIRWISE_OBJECTIVES:
        trainer_cls, collator, metrics = PairwiseRewardTrainer, pair_collator(cfg, model, pad_id), pairwise_metrics
    else:
        raise InputError(f"unknown objective {cfg.objective!r}")
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=metrics,
    )


def pair_collator(cfg: RewardConfig, model, pad_id: int):
    """How pairs reach the model: one row per pair with the prompt computed once
    (``share_prompts``, exact wherever :func:`hsrm.engine.shared_prefix_fallback` allows it), each
    side a packed sequence (``padding_free``), or each side a padded row."""
    from .data.collators import PackedPairwiseCollator, PairwiseCollator, SharedPromptPairCollator
    from .engine import shared_prefix_fallback

    if cfg.share_prompts:
        # A pair row holds up to 2 × max_length tokens: a sliding window must cover it whole.
        why = "padding_free packs each side (sharing runs in the padded layout)" if cfg.padding_free else None
        why = why or shared_prefix_fallback(model, cfg.max_length)
        if why is None:
            logger.info(
                "share_prompts: a pair whose sides share a prompt (16 tokens or more) is one row "
                "[prompt | chosen | rejected], the prompt computed once"
            )
            return SharedPromptPairCollator(pad_id)
        logger.info("share_prompts: each side of a pair computed whole: %s", why)
    return PackedPairwiseCollator(pad_id) if cfg.padding_free else PairwiseCollator(pad_id)


def resolve_resume(value: str | bool | None, checkpoint_dir: str) -> str | None:
    """``true``/``last`` → the newest *complete* checkpoint (or a fresh start if there is none);
    a path → that checkpoint, which must be complete."""
    from .trainers.base import CHECKPOINT_COMPLETE, complete_checkpoints

    if value in (None, False, "", "no", "false", "False"):
        return None
    if value in (True, "yes", "true", "True", "last", "latest"):
        found = complete_checkpoints(checkpoint_dir)
        if not found:
            logger.warning("resume asked, but %s holds no complete checkpoint: starting from step 0", checkpoint_dir)
            return None
        return str(found[-1])
    path = Path(str(value))
    if not (path / CHECKPOINT_COMPLETE).exists():
        raise InputError(
            f"{path} is not a complete hsrm checkpoint (no {CHECKPOINT_COMPLETE}; a save may have been "
            "interrupted): pick an earlier one or use --resume_from_checkpoint true"
        )
    return str(path)


def resuming(cfg: RewardConfig) -> bool:
    return cfg.resume_from_checkpoint not in (None, False, "", "no", "false", "False")


def run_key(cfg: RewardConfig) -> dict[str, Any]:
    """What defines a training run's results, kept in its folder's run record (``hsrm.files``): a
    resume must find the same, so ``--resume_from_checkpoint`` never continues, or overwrites, a
    folder that holds an input model, another model or another run. Data files by content."""
    from .files import file_fingerprint

    def where(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path

    return {
        "verb": "train",
        "objective": cfg.objective,
        "model": where(cfg.model_name_or_path),
        "init_from": where(cfg.init_from),
        "train_data": file_fingerprint(cfg.train_data),
        "eval_data": file_fingerprint(cfg.eval_data),
        "attributes": list(cfg.attributes),
        "lora": bool(cfg.use_lora),
        "seed": cfg.seed,
    }


def claim_output_dir(cfg: RewardConfig):
    """The output rule (docs/reliability.md), held for the whole run: a run writes into a new or empty
    ``output_dir``, its own folder when resuming (recognised by its run record: :func:`run_key`),
    or, with ``overwrite``, a folder it first empties; never into a folder that is, holds
    or lies inside one of its inputs, resuming or not. Its lock refuses a second run to the same
    folder, naming the first; the main process holds it for every process of the run."""
    from .files import claimed_run_folder

    def wait_for_all() -> None:
        if cfg.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    return claimed_run_folder(
        cfg.output_dir,
        run_key(cfg),
        inputs=[cfg.train_data, cfg.eval_data, cfg.model_name_or_path, cfg.init_from],
        overwrite=cfg.overwrite,
        resume=resuming(cfg),
        flag="--output",
        overwrite_flag="--overwrite",
        main_process=cfg.process_index == 0,
        wait_for_all=wait_for_all,
    )


def start_processes(cfg: RewardConfig) -> None:
    """Set up the process group before any model is built: ZeRO-3 partitions weights inside
    from_pretrained (zero.Init) and must already see the world size there."""
    _ = cfg.device
    if cfg.deepspeed:
        from .errors import require_extra

        deepspeed = require_extra("deepspeed", "deepspeed", "--deepspeed")

        # On the CPU path transformers creates the torch process group itself; DeepSpeed's own
        # comm layer must adopt it before zero.Init asks it for the world size.
        deepspeed.init_distributed(dist_backend=cfg.ddp_backend or None)


def run_training(cfg: RewardConfig) -> dict[str, Any]:
    """Train, save the final model at ``cfg.output_dir``, and return a summary.

    One lifecycle for the scalar trainers and the justifier: set up (data, model), train (resume
    from the newest complete checkpoint, graceful stop on SIGTERM, complete-marked checkpoints),
    describe the model (its record), save it through a staging folder with no token in it. Only
    the set-up and the record differ between the two.
    """
    start_processes(cfg)
    with claim_output_dir(cfg):
        return train_and_save(cfg)


def train_and_save(cfg: RewardConfig) -> dict[str, Any]:
    """:func:`run_training` once ``output_dir`` is this run's."""
    from transformers import set_seed

    from .trainers.base import (
        build_model,
        check_engine_engaged,
        check_resumable,
        complete_checkpoints,
        describe_parallelism,
        save_trained_model,
    )
    from .trainers.justifier import build_justifier_model, justifier_record, prepare_justifier_run

    # Seed before the model is built: a backbone without a score head gets a freshly initialised one
    # (and LoRA its adapters), and the Trainer only seeds later, in its own __init__.
    set_seed(cfg.seed)
    generative = cfg.objective == "justifier"
    if generative:
        model, tokenizer, train_ds, eval_ds, data_summary = prepare_justifier_run(cfg)
    else:
        model, tokenizer = build_model(cfg)
        train_ds, eval_ds, data_summary = load_datasets(cfg, tokenizer)
    trainer = make_trainer(cfg, model, tokenizer, train_ds, eval_ds)
    check_engine_engaged(trainer)
    parallelism = describe_parallelism(trainer)
    logger.info("training on %s", parallelism)
    checkpoints = trainer.args.output_dir
    resume_from = resolve_resume(cfg.resume_from_checkpoint, checkpoints)
    check_resumable(resume_from, trainer)
    result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.graceful_stop.requested:
        found = complete_checkpoints(checkpoints)
        raise TrainingInterrupted(trainer.state.global_step, str(found[-1]) if found else None)
    if generative:
        record, extra = justifier_record(cfg, trainer, eval_ds), {}
        save_trained_model(
            trainer, cfg, cfg.output_dir, record, bare_model=lambda: build_justifier_model(cfg, with_lora=False)
        )
    else:
        record, extra = scalar_record(cfg, trainer, train_ds, eval_ds)
        save_trained_model(trainer, cfg, cfg.output_dir, record, bare_model=lambda: build_model(cfg, with_lora=False))
    return {
        "output_dir": cfg.output_dir,
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "parallelism": parallelism,
        "log_history": trainer.state.log_history,
        "data": data_summary,
        **record.to_dict(),
        **extra,
    }


def scalar_record(cfg: RewardConfig, trainer, train_ds, eval_ds) -> tuple[ModelRecord, dict[str, Any]]:
    """The record of a trained reward model (reward statistics and final metrics on the validation
    set, or on the first 256 training rows) and the validation rewards; names the outputs of a
    regression head in its config."""
    stats_source = eval_ds if eval_ds is not None else train_ds.select(range(min(len(train_ds), 256)))
    prediction = trainer.predict(stats_source, metric_key_prefix="eval")
    eval_metrics = {k: float(v) for k, v in prediction.metrics.items() if isinstance(v, (int, float))}
    # The statistics describe the scalar reward every scorer returns: outputs · attribute_weights
    # (or the first output) for regression, each side of every pair for BT.
    predictions = torch.as_tensor(prediction.predictions, dtype=torch.float64)
    # Shapes: (n,) for rated responses, (n, 2) chosen/rejected for pairs.
    rewards = scalar_reward(predictions, cfg.attribute_weights) if cfg.objective == "regression" else predictions
    stats = reward_statistics(rewards.numpy().reshape(-1))  # empty when not finite: the model is saved anyway
    base_model = cfg.model_name_or_path
    record = ModelRecord(
        objective=cfg.objective,
        attributes=list(cfg.attributes),
        attribute_weights=cfg.attribute_weights,
        base_model=cfg.init_from or (DEFAULT_MODEL_HUB_ID if base_model in DEFAULT_MODEL_ALIASES else base_model),
        init_from=cfg.init_from,
        train_data=cfg.train_data,
        max_length=cfg.max_length,
        reward_stats_on="validation" if eval_ds is not None else "train (first 256 rows; no validation set given)",
        **stats,
        eval_metrics=eval_metrics,
        lora=bool(cfg.use_lora),
    )
    if cfg.objective == "regression":
        names = list(cfg.attributes)
        model_ref = trainer.model
        inner = getattr(model_ref, "get_base_model", lambda: model_ref)()
        inner.config.id2label = dict(enumerate(names))
        inner.config.label2id = {n: i for i, n in enumerate(names)}
    # the scalar reward of every validation row ((n,) rated responses, (n, 2) chosen/rejected pairs),
    # for callers that plot them without scoring the set again; not written to config.json
    return record, {"eval_rewards": rewards.numpy() if eval_ds is not None else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from .options import print_result

    cfg, output = train_cli_options(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = run_training(cfg)
    lines = [
        f"saved {summary['output_dir']} ({summary['objective']}, {summary['global_step']} steps, "
        f"train loss {summary['train_loss']:.4f})"
    ]
    if summary.get("reward_stats_on") == "validation":  # scalar runs with eval_data (justifier runs have no such block)
        shown = {
            k.removeprefix("eval_"): round(v, 4)
            for k, v in summary["eval_metrics"].items()
            if not k.endswith(("runtime", "per_second"))
        }
        lines.append(f"validation ({len(summary['eval_rewards'])} rows): {shown}")
    if cfg.process_index == 0:  # one summary per run, not one per rank
        print_result({k: v for k, v in summary.items() if k != "eval_rewards"}, "\n".join(lines), output.json)
    return summary


if __name__ == "__main__":  # torchrun / accelerate launch -m hsrm.train
    from .cli import end_process

    main()
    end_process(0)
