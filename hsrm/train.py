"""Train a reward model from a recipe.

    hsrm train recipes/tiny_bt.yaml --max_steps 20
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m hsrm.train recipes/scaled_bt.yaml

Reads: setup (config → data → model) → train → save (plain HF folder + hsrm metadata).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch

from .config import PAIRWISE_OBJECTIVES, RewardConfig, train_cli_options
from .data.auto import load_pairs_any, load_ratings_any
from .modeling import DEFAULT_MODEL_HUB_ID, DEFAULT_MODEL_ALIASES, scalar_reward
from .record import ModelRecord, reward_statistics
from .trainers.base import (CHECKPOINT_COMPLETE, TrainingInterrupted, build_model, complete_checkpoints, save_reward_model,
                            tokenize_pairs, tokenize_ratings)
from .trainers.pairwise import PairwiseRewardTrainer, pairwise_metrics
from .trainers.pointwise import PointwiseRewardTrainer, regression_metrics

logger = logging.getLogger("hsrm.train")


def load_datasets(cfg: RewardConfig, tokenizer):
    """Tokenized (train, eval-or-None) datasets and a summary of what loading kept and cut."""
    if not cfg.train_data:
        raise ValueError("no train_data: set it in the recipe or pass --train_data FILE")
    summary: dict[str, Any] = {}

    def load(role: str, source: str, split: str, limit: int | None):
        if cfg.objective == "regression":
            ds, report = load_ratings_any(source, split, cfg.attributes, on_error=cfg.on_bad_rows, limit=limit, return_report=True)
            tokenized, stats = tokenize_ratings(ds, tokenizer, cfg.attributes, cfg.max_length)
        else:
            ds, report = load_pairs_any(source, split, cfg.data_format, on_error=cfg.on_bad_rows, limit=limit, return_report=True)
            if cfg.objective in ("margin_bt", "scaled_bt") and "has_margin" in ds.column_names:
                ds = require_margins(ds, report, source, cfg)
            tokenized, stats = tokenize_pairs(ds, tokenizer, cfg.max_length)
        summary[role] = {"load": report.summary(), "truncation": stats.summary()}
        logger.info("%s | %s", report.summary(), stats.summary())
        if len(tokenized) == 0:
            raise ValueError(f"{source} ({split}): no usable rows after filtering ({report.summary()}); nothing to train on")
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
        raise ValueError(f"{source}: objective {cfg.objective} needs a preference strength per pair, and the data has none; "
                         "use objective 'bt' or add a 'margin'/'strength' column")
    if not missing:
        return ds
    if cfg.on_bad_rows != "skip":
        raise DataError(source, missing[0], "margin", f"no preference strength, and objective {cfg.objective} needs one on "
                        f"every pair ({len(missing)} of {len(ds)} pairs have none); add it, or set on_bad_rows: skip "
                        "to drop those pairs (counted)")
    report.drop("no preference strength", len(missing))
    report.rows_kept -= len(missing)
    logger.warning("%s: %d of %d pairs have no preference strength; skipped (on_bad_rows: skip)", source, len(missing), len(ds))
    return ds.filter(lambda has: has, input_columns="has_margin")


def make_trainer(cfg: RewardConfig, model, tokenizer, train_ds, eval_ds):
    from .data.render import PairwiseCollator, PointwiseCollator
    from .packing import PackedPairwiseCollator, PackedPointwiseCollator, check_packing_support

    if eval_ds is None:
        cfg.eval_strategy = "no"
        cfg.load_best_model_at_end = False
    pad_id = tokenizer.pad_token_id
    if cfg.padding_free:  # one packed row per micro-batch (issue 8); refuses attention paths that would mix sequences
        check_packing_support(model)
    pointwise_collator = PackedPointwiseCollator(pad_id) if cfg.padding_free else PointwiseCollator(pad_id)
    pairwise_collator = PackedPairwiseCollator(pad_id) if cfg.padding_free else PairwiseCollator(pad_id)
    if cfg.objective == "regression":
        trainer_cls, collator, metrics = PointwiseRewardTrainer, pointwise_collator, regression_metrics(cfg.attributes, cfg.attribute_weights)
    elif cfg.objective in PAIRWISE_OBJECTIVES:
        trainer_cls, collator, metrics = PairwiseRewardTrainer, pairwise_collator, pairwise_metrics
    else:
        raise ValueError(f"objective {cfg.objective!r} is trained by `hsrm train` with the justifier trainer")
    return trainer_cls(model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                       data_collator=collator, compute_metrics=metrics)


def resolve_resume(value: str | bool | None, checkpoint_dir: str) -> str | None:
    """``true``/``last`` → the newest *complete* checkpoint (or a fresh start if there is none);
    a path → that checkpoint, which must be complete."""
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
        raise ValueError(f"{path} is not a complete hsrm checkpoint (no {CHECKPOINT_COMPLETE}; a save may have been "
                         "interrupted): pick an earlier one or use --resume_from_checkpoint true")
    return str(path)


def resuming(cfg: RewardConfig) -> bool:
    return cfg.resume_from_checkpoint not in (None, False, "", "no", "false", "False")


def prepare_output_dir(cfg: RewardConfig) -> None:
    """The output rule (docs/reliability.md): a run writes into a new or empty ``output_dir``, its own
    folder when resuming, or, with ``overwrite_output_dir``, a folder it first empties; never into a
    folder that is or holds one of its inputs."""
    import shutil

    from .files import check_output

    if resuming(cfg):
        return
    target = Path(cfg.output_dir)
    check_output(target, inputs=[cfg.train_data, cfg.eval_data, cfg.model_name_or_path, cfg.init_from],
                 overwrite=cfg.overwrite_output_dir, flag="--output_dir")  # every rank: they all raise alike
    if cfg.overwrite_output_dir and target.is_dir() and any(target.iterdir()):
        with cfg.main_process_first(local=False, desc="emptying output_dir"):
            if cfg.process_index == 0 and target.is_dir():
                logger.warning("overwrite_output_dir: removing what %s holds (a previous run)", target)
                shutil.rmtree(target)


def run_training(cfg: RewardConfig) -> dict[str, Any]:
    """Train, save the final model at ``cfg.output_dir``, and return a summary."""
    # Set up the process group now: ZeRO-3 partitions weights inside from_pretrained (zero.Init)
    # and must already see the world size there.
    _ = cfg.device
    prepare_output_dir(cfg)
    if cfg.objective == "justifier":
        from .trainers.justifier import run_justifier_training

        return run_justifier_training(cfg)
    if cfg.deepspeed:
        import deepspeed

        # On the CPU path transformers creates the torch process group itself; DeepSpeed's own
        # comm layer must adopt it before zero.Init asks it for the world size.
        deepspeed.init_distributed(dist_backend=cfg.ddp_backend or None)
    # Seed before the model is built: a backbone without a score head gets a freshly initialised one,
    # and the Trainer only seeds later, in its own __init__.
    from transformers import set_seed

    set_seed(cfg.seed)
    model, tokenizer = build_model(cfg)
    train_ds, eval_ds, data_summary = load_datasets(cfg, tokenizer)
    final_dir = cfg.output_dir
    # Checkpoints live under the model folder, so the folder itself holds only the final model.
    cfg.output_dir = f"{final_dir}/checkpoints"
    trainer = make_trainer(cfg, model, tokenizer, train_ds, eval_ds)
    result = trainer.train(resume_from_checkpoint=resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir))
    if trainer.graceful_stop.requested:
        found = complete_checkpoints(cfg.output_dir)
        cfg.output_dir = final_dir
        raise TrainingInterrupted(trainer.state.global_step, str(found[-1]) if found else None)
    eval_metrics: dict[str, float] = {}
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
        objective=cfg.objective, attributes=list(cfg.attributes), attribute_weights=cfg.attribute_weights,
        base_model=cfg.init_from or (DEFAULT_MODEL_HUB_ID if base_model in DEFAULT_MODEL_ALIASES else base_model),
        init_from=cfg.init_from, train_data=cfg.train_data, max_length=cfg.max_length,
        reward_stats_on="validation" if eval_ds is not None else "train (first 256 rows; no validation set given)",
        **stats, eval_metrics=eval_metrics, lora=bool(cfg.use_lora))
    model_ref = trainer.model
    if cfg.objective == "regression":
        names = list(cfg.attributes)
        base_model = getattr(model_ref, "get_base_model", lambda: model_ref)()
        base_model.config.id2label = dict(enumerate(names))
        base_model.config.label2id = {n: i for i, n in enumerate(names)}
    save_reward_model(trainer, cfg, final_dir, record)
    cfg.output_dir = final_dir
    summary = {"output_dir": final_dir, "train_loss": result.training_loss, "global_step": result.global_step,
               "log_history": trainer.state.log_history, "data": data_summary, **record.to_dict(),
               # the scalar reward of every validation row ((n,) rated responses, (n, 2) chosen/rejected
               # pairs), for callers that plot them without scoring the set again; not written to config.json
               "eval_rewards": rewards.numpy() if eval_ds is not None else None}
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from .options import print_result

    cfg, output = train_cli_options(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = run_training(cfg)
    lines = [f"saved {summary['output_dir']} ({summary['objective']}, {summary['global_step']} steps, "
             f"train loss {summary['train_loss']:.4f})"]
    if summary.get("reward_stats_on") == "validation":  # scalar runs with eval_data (justifier runs have no such block)
        shown = {k.removeprefix("eval_"): round(v, 4) for k, v in summary["eval_metrics"].items()
                 if not k.endswith(("runtime", "per_second"))}
        lines.append(f"validation ({len(summary['eval_rewards'])} rows): {shown}")
    print_result({k: v for k, v in summary.items() if k != "eval_rewards"}, "\n".join(lines), output.json)
    return summary


if __name__ == "__main__":
    main()
