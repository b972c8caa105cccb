"""Evaluate a reward model: RewardBench sections, pairwise accuracy, or rating errors.

    hsrm evaluate --model runs/scaled-bt --data ../shared/data/rewardbench_sample/reward_bench_filtered_sample.jsonl
    hsrm evaluate --model runs/scaled-bt --data pairs.jsonl --output pairs_eval.json
    hsrm evaluate --model runs/regression --data ../shared/data/helpsteer1/nvidia_HelpSteer_sample.jsonl
    hsrm evaluate --justifier --model runs/justifier --data PAIRS.jsonl   (a generative justifier: hsrm.justifier_eval)

What is measured depends on the data (detected from its first row, or ``--data-format``):

* RewardBench rows ``{prompt, chosen, rejected, subset}`` (Lambert et al., 2024; HelpSteer2-Preference
  §3.1): per-subset accuracy, where a pair counts only when r(chosen) > r(rejected) *strictly*
  (a tie is wrong); section score = Σ_s acc_s · w_s / Σ_s w_s over the section's subsets present,
  with w_s the official counts in ``hsrm.data.rewardbench.SECTIONS`` (math-prm weighted 984 so
  math equals code in Reasoning); overall = mean of the sections present.
* RewardBench 2, RM-Bench and HelpSteer3-Preference (the 2025 benchmarks; their scoring in
  :mod:`hsrm.benchmark_scores`): best-of-N and Ties subset scores; the 3×3 style matrix per domain;
  accuracy per domain and language;
* any other preference pairs: accuracy (strict) and mean margin r(chosen) − r(rejected);
* ratings (HelpSteer-style): MAE, RMSE and Pearson r per attribute the model predicts.

Rewards come from the scoring engine through :class:`hsrm.scoring.RewardScorer`: the model's chat
template, left truncation, the head read at the last real token, the scalar reward of the model's
record. ``--max-length`` defaults to RewardBench's 2048 on RewardBench data (its protocol) and to the
length the model was trained with on any other data (``hsrm.modeling.resolve_max_length``). Any
trained ``AutoModelForSequenceClassification`` folder works, not only hsrm's.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .benchmark_scores import grouped_accuracy, rewardbench2_scores, rmbench_scores
from .data.render import TruncationStats, encode_batch, encode_pairs
from .data.rewardbench import SECTIONS, SUBSET_TO_SECTION
from .data.rewardbench2 import SUBSETS as REWARDBENCH2_SUBSETS
from .engine import DEFAULT_BATCH_SIZE
from .errors import InputError
from .files import atomic_write_json, check_output
from .metrics import pairwise_summary
from .record import reward_statistics
from .scoring import RewardScorer, nonfinite_rewards_message

logger = logging.getLogger(__name__)

EVAL_KINDS = ("rewardbench", "pairs", "ratings", "rewardbench2", "rmbench", "helpsteer3")
EVAL_FORMATS = (
    "rewardbench",
    "rewardbench2",
    "rmbench",
    "pairs",
    "helpsteer2_preference",
    "helpsteer2_ratings",
    "helpsteer3_preference",
)
# Rows whose every sequence belongs to one item: a best-of-N row, or an RM-Bench row (3 chosen + 3 rejected).
GROUPED_KINDS = ("rewardbench2", "rmbench")
# Benchmark protocols that fix the sequence length: RewardBench scores every model at 2048 tokens,
# cut from the left (allenai/reward-bench), whatever length the model was trained with.
PROTOCOL_MAX_LENGTH = {"rewardbench": 2048, "rewardbench2": 2048}  # RewardBench 2's run_v2.py: --max_length 2048
DEFAULT_SPLITS = {
    "rewardbench": "filtered",
    "helpsteer2_preference": "val",
    "helpsteer2_ratings": "validation",
    "pairs": "test",
    "rewardbench2": "test",
    "rmbench": "train",
    "helpsteer3_preference": "validation",
}


# ------------------------------------------------------------------------------ pure metrics
def rewardbench_scores(subsets: Sequence[str], correct: Sequence[bool]) -> dict[str, Any]:
    """RewardBench v1 scores from per-pair correctness (``correct`` = chosen > rejected strictly).

    Section score = Σ acc_s · w_s / Σ w_s over the section's subsets present (w_s: official counts);
    overall = mean of the sections present. Subsets outside the official map are reported but
    count in no section.
    """
    if len(subsets) != len(correct):
        raise InputError(f"{len(subsets)} subset labels for {len(correct)} results")
    per_subset: dict[str, dict[str, Any]] = {}
    for subset, ok in zip(subsets, correct):
        entry = per_subset.setdefault(subset, {"section": SUBSET_TO_SECTION.get(subset), "n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(bool(ok))
    for entry in per_subset.values():
        entry["accuracy"] = entry["correct"] / entry["n"]
    sections: dict[str, dict[str, Any]] = {}
    for section, weights in SECTIONS.items():
        present = [s for s in weights if s in per_subset]
        if not present:
            continue
        total = sum(weights[s] for s in present)
        score = sum(per_subset[s]["accuracy"] * weights[s] for s in present) / total
        sections[section] = {
            "score": score,
            "subsets_present": len(present),
            "subsets_official": len(weights),
            "n": sum(per_subset[s]["n"] for s in present),
        }
    overall = sum(v["score"] for v in sections.values()) / len(sections) if sections else None
    return {
        "subsets": dict(sorted(per_subset.items(), key=lambda kv: _subset_order(kv[0]))),
        "sections": sections,
        "overall": overall,
        "sections_missing": [s for s in SECTIONS if s not in sections],
        "unscored_subsets": sorted(s for s in per_subset if s not in SUBSET_TO_SECTION),
    }


def _subset_order(subset: str) -> tuple[int, int, str]:
    names = list(SECTIONS)
    section = SUBSET_TO_SECTION.get(subset)
    if section is None:
        return (len(names), 0, subset)
    return (names.index(section), list(SECTIONS[section]).index(subset), subset)


def rating_metrics(predictions: torch.Tensor, labels: torch.Tensor, attributes: Sequence[str]) -> dict[str, float]:
    """MAE, RMSE and Pearson r per attribute (the pointwise trainer's own metric function, so
    training-time and offline numbers are the same computation)."""
    from types import SimpleNamespace

    from .metrics import regression_metrics

    eval_pred = SimpleNamespace(predictions=predictions.double().numpy(), label_ids=labels.double().numpy())
    return regression_metrics(list(attributes))(eval_pred)


# ------------------------------------------------------------------------------ data
@dataclass
class EvalSet:
    """Validation data tokenized once, so it can be scored again cheaply (the ExPO search does)."""

    kind: str  # one of EVAL_KINDS
    source: str
    sequences: list[list[int]]  # pairs: all chosen rows, then all rejected rows; grouped kinds: row after row
    n_items: int
    sizes: list[int] = field(default_factory=list)  # grouped kinds: sequences per row (RewardBench 2: chosen first)
    num_correct: list[int] = field(default_factory=list)  # RewardBench 2: correct completions per row
    groups: dict[str, list[str]] = field(
        default_factory=dict
    )  # per-row labels: domain, language (RM-Bench, HelpSteer3)
    subsets: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)  # ratings: data attribute per model output used
    output_index: list[int] = field(default_factory=list)  # ratings: which head output predicts it
    labels: torch.Tensor | None = None
    load_summary: str = ""
    truncation: str = ""
    split: str = ""


def detect_kind(source: str, data_format: str = "auto") -> str:
    from .data.auto import detect_format

    fmt = detect_format(source, "pairs") if data_format == "auto" else data_format
    if fmt not in EVAL_FORMATS:
        raise InputError(f"unknown data format {fmt!r}; use auto or one of {', '.join(EVAL_FORMATS)}")
    return fmt


def first_per_subset(subsets: Sequence[str], per_subset: int) -> list[int]:
    """Indices of the first ``per_subset`` rows of every subset, in data order.

    >>> first_per_subset(["a", "b", "a", "a", "b"], 2)
    [0, 1, 2, 4]
    """
    taken: dict[str, int] = defaultdict(int)
    keep = []
    for index, subset in enumerate(subsets):
        if taken[subset] < per_subset:
            taken[subset] += 1
            keep.append(index)
    return keep


def _grouped_eval_set(
    fmt: str, source: str, split: str, tokenizer, *, limit, max_length, on_error, per_subset
) -> EvalSet:
    """RewardBench 2 and RM-Bench rows: every completion of a row, tokenized, row after row."""
    from .data.rewardbench2 import load_rewardbench2
    from .data.rmbench import load_rmbench

    stats = TruncationStats()
    if fmt == "rewardbench2":
        rows, report = load_rewardbench2(source, split, on_error=on_error, limit=None if per_subset else limit)
        if per_subset is not None:
            rows = [rows[i] for i in first_per_subset([r["subset"] for r in rows], per_subset)][:limit]
        texts = [(row["prompt"], completion) for row in rows for completion in row["completions"]]
        sizes = [len(row["completions"]) for row in rows]
        extra = {"num_correct": [row["num_correct"] for row in rows], "subsets": [row["subset"] for row in rows]}
    else:
        rows, report = load_rmbench(source, split, on_error=on_error, limit=limit)
        texts = [(row["prompt"], response) for row in rows for response in row["chosen"] + row["rejected"]]
        sizes = [len(row["chosen"]) + len(row["rejected"]) for row in rows]
        extra = {"groups": {"domain": [row["domain"] for row in rows]}}
    if not rows:
        raise InputError(f"{source} ({split}): no usable rows ({report.summary()})")
    sequences, cut = encode_batch(
        tokenizer, [prompt for prompt, _ in texts], [response for _, response in texts], max_length
    )
    stats.add(cut)
    return EvalSet(
        fmt,
        str(source),
        sequences,
        len(rows),
        sizes=sizes,
        ids=[row["id"] for row in rows],
        load_summary=report.summary(),
        truncation=stats.summary(),
        split=split,
        **extra,
    )


def load_eval_set(
    source: str,
    tokenizer,
    *,
    data_format: str = "auto",
    split: str | None = None,
    limit: int | None = None,
    max_length: int | None,
    model_attributes: Sequence[str] = ("reward",),
    on_error: str = "raise",
    per_subset: int | None = None,
) -> EvalSet:
    """Load ``source`` and tokenize it with ``tokenizer`` exactly as training does. ``per_subset`` keeps
    the first N rows of every RewardBench subset (a quick run that still reaches every section)."""
    from .data.auto import load_pairs_any, load_ratings_any
    from .data.helpsteer import ATTRIBUTES
    from .data.rewardbench import load_rewardbench

    fmt = detect_kind(str(source), data_format)
    split = split or DEFAULT_SPLITS[fmt]
    stats = TruncationStats()
    if fmt == "helpsteer2_ratings":
        # Each model output named like a HelpSteer attribute is compared with that rating; an
        # unnamed single output (a BT model) is compared with helpfulness.
        pairs = [(a, k) for k, a in enumerate(model_attributes) if a in ATTRIBUTES] or [("helpfulness", 0)]
        attributes = [a for a, _ in pairs]
        ds, report = load_ratings_any(source, split, attributes, on_error=on_error, limit=limit, return_report=True)
        sequences, cut = encode_batch(tokenizer, ds["prompt"], ds["response"], max_length)
        stats.add(cut)
        labels = torch.tensor([[float(row[a]) for a in attributes] for row in ds], dtype=torch.float64)
        return EvalSet(
            "ratings",
            str(source),
            sequences,
            len(ds),
            attributes=attributes,
            output_index=[k for _, k in pairs],
            labels=labels,
            load_summary=report.summary(),
            truncation=stats.summary(),
            split=split,
        )
    if per_subset is not None and fmt not in ("rewardbench", "rewardbench2"):
        raise InputError(f"per_subset needs RewardBench-format data (rows with a 'subset'); {source} is {fmt}")
    if per_subset is not None and per_subset < 1:
        raise InputError(f"per_subset must be at least 1, not {per_subset}")
    if fmt in GROUPED_KINDS:
        return _grouped_eval_set(
            fmt,
            str(source),
            split,
            tokenizer,
            limit=limit,
            max_length=max_length,
            on_error=on_error,
            per_subset=per_subset,
        )
    if fmt == "rewardbench":
        ds, report = load_rewardbench(source, split, on_error=on_error, return_report=True)
        if per_subset is not None:
            ds = ds.select(first_per_subset(ds["subset"], per_subset))
        if limit is not None and len(ds) > limit:
            ds = ds.select(range(limit))
    else:
        ds, report = load_pairs_any(source, split, fmt, on_error=on_error, limit=limit, return_report=True)
    if len(ds) == 0:
        raise InputError(f"{source} ({split}): no usable pairs ({report.summary()})")
    (chosen, chosen_cut), (rejected, rejected_cut) = encode_pairs(
        tokenizer, ds["prompt"], ds["chosen"], ds["rejected"], max_length
    )
    stats.add(chosen_cut + rejected_cut)
    kind = {"rewardbench": "rewardbench", "helpsteer3_preference": "helpsteer3"}.get(fmt, "pairs")
    groups = {name: list(ds[name]) for name in ("domain", "language")} if kind == "helpsteer3" else {}
    return EvalSet(
        kind,
        str(source),
        chosen + rejected,
        len(ds),
        subsets=list(ds["subset"]) if kind == "rewardbench" else [],
        ids=list(ds["id"]) if "id" in ds.column_names else [],
        load_summary=report.summary(),
        truncation=stats.summary(),
        split=split,
        groups=groups,
    )


# ------------------------------------------------------------------------------ evaluation
def evaluate_prepared(scorer: RewardScorer, eval_set: EvalSet) -> dict[str, Any]:
    """Score ``eval_set`` with ``scorer``'s current weights; return the metrics as a dict."""
    result: dict[str, Any] = {"format": eval_set.kind, "data": eval_set.source, "n": eval_set.n_items}
    if eval_set.kind == "ratings":
        outputs = scorer.score_ids(eval_set.sequences, all_outputs=True, desc="scoring ratings")
        predictions = outputs[:, eval_set.output_index]
        result["rewards"] = scorer.scalar(outputs).tolist()  # the scalar reward of each rated response
        # The reward statistics describe the scalar reward, whichever outputs the data rates.
        result["metrics"] = {
            **rating_metrics(predictions, eval_set.labels, eval_set.attributes),
            **reward_statistics(result["rewards"]),
        }
        first = eval_set.attributes[0]
        result["primary_metric"] = {
            "name": f"{first}_pearson",
            "value": result["metrics"].get(f"{first}_pearson", float("nan")),
        }
        return result
    if eval_set.kind in GROUPED_KINDS:
        return _evaluate_grouped(scorer, eval_set, result)
    rewards = scorer.score_ids(eval_set.sequences, desc="scoring pairs")
    n = eval_set.n_items
    chosen, rejected = rewards[:n], rewards[n:]
    result["rewards"] = {"chosen": chosen.tolist(), "rejected": rejected.tolist()}  # per pair, in data order
    result["metrics"] = pairwise_summary(chosen.tolist(), rejected.tolist())
    result["primary_metric"] = {"name": "accuracy", "value": result["metrics"]["accuracy"]}
    if eval_set.kind == "rewardbench":
        bench = rewardbench_scores(eval_set.subsets, (chosen > rejected).tolist())
        result["rewardbench"] = bench
        if bench["overall"] is not None:
            result["primary_metric"] = {"name": "rewardbench_overall", "value": bench["overall"]}
    if eval_set.kind == "helpsteer3":  # HelpSteer3-Preference: accuracy per domain and per language
        result["helpsteer3"] = {
            name: grouped_accuracy(labels, chosen.tolist(), rejected.tolist())
            for name, labels in eval_set.groups.items()
        }
    return result


def _evaluate_grouped(scorer: RewardScorer, eval_set: EvalSet, result: dict[str, Any]) -> dict[str, Any]:
    """RewardBench 2 (best-of-N rows, Ties) and RM-Bench (3 chosen × 3 rejected styles)."""
    flat = scorer.score_ids(eval_set.sequences, desc=f"scoring {eval_set.kind}").tolist()
    rows, start = [], 0
    for size in eval_set.sizes:
        rows.append(flat[start : start + size])
        start += size
    result["rewards"] = rows  # every completion's reward, row by row, in data order
    result["metrics"] = reward_statistics(flat)
    if eval_set.kind == "rewardbench2":
        bench = rewardbench2_scores(eval_set.subsets, eval_set.ids, eval_set.num_correct, rows)
        result["rewardbench2"] = bench
        result["primary_metric"] = {"name": "rewardbench2_overall", "value": bench["overall"]}
    else:
        bench = rmbench_scores(eval_set.groups["domain"], [r[:3] for r in rows], [r[3:] for r in rows])
        result["rmbench"] = bench
        result["primary_metric"] = {"name": "rmbench_average", "value": bench["overall"]["average"]}
    return result


def scalar_rewards(result: dict[str, Any]) -> list[float]:
    """Every scalar reward an evaluation computed: both sides of every pair, every rated response, or
    every completion of every best-of-N / RM-Bench row."""
    rewards = result["rewards"]
    if isinstance(rewards, dict):
        return rewards["chosen"] + rewards["rejected"]
    return [r for row in rewards for r in row] if rewards and isinstance(rewards[0], list) else list(rewards)


def primary_metric(result: dict[str, Any]) -> float:
    """The one number a factor search maximises: RewardBench overall, else pairwise accuracy,
    else the helpfulness Pearson r."""
    return float(result["primary_metric"]["value"])


def prepare_evaluation(
    model: str,
    data: str,
    *,
    data_format: str = "auto",
    split: str | None = None,
    limit: int | None = None,
    on_bad_rows: str = "raise",
    per_subset: int | None = None,
    scorer: RewardScorer | None = None,
    shard_into: str | os.PathLike | None = None,
    **scorer_options: Any,
) -> tuple[RewardScorer, EvalSet]:
    """The scorer and the evaluation set as ``hsrm evaluate`` and the ExPO search read them: on benchmark
    data the scorer's ``max_length`` defaults to the benchmark protocol's (``scorer_options`` are
    :class:`RewardScorer`'s), and the set is tokenized at the scorer's length. ``shard_into``: the output
    path whose parts folder keeps finished shards, scored across this launch's processes (hsrm.shards)."""
    kind = detect_kind(str(data), data_format)  # a missing or unreadable data file fails before the model loads
    scorer = scorer or RewardScorer(
        model, protocol_max_length=PROTOCOL_MAX_LENGTH.get(kind), protocol_name=f"{kind} protocol", **scorer_options
    )
    if shard_into is not None:
        scorer.shard(shard_into)
    eval_set = load_eval_set(
        data,
        scorer.tokenizer,
        data_format=data_format,
        split=split,
        limit=limit,
        max_length=scorer.max_length,
        model_attributes=scorer.attributes,
        on_error=on_bad_rows,
        per_subset=per_subset,
    )
    return scorer, eval_set


def evaluate_model(
    model: str,
    data: str,
    *,
    data_format: str = "auto",
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int | None = None,
    dtype: str | None = "float32",
    device: str | None = None,
    progress: bool = True,
    scorer: RewardScorer | None = None,
    on_bad_rows: str = "raise",
    per_subset: int | None = None,
    **scorer_options: Any,
) -> dict[str, Any]:
    """Score ``data`` with the reward model at ``model``. ``on_bad_rows="skip"`` skips and counts rows
    that cannot be evaluated (an empty response, chosen identical to rejected) instead of stopping.
    ``max_length=None``: the benchmark's protocol length on RewardBench data, else the model record's.
    ``scorer_options``: :class:`RewardScorer`'s other keywords (``layout``, ``max_tokens`` …)."""
    scorer, eval_set = prepare_evaluation(
        model,
        data,
        data_format=data_format,
        split=split,
        limit=limit,
        on_bad_rows=on_bad_rows,
        per_subset=per_subset,
        scorer=scorer,
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
        device=device,
        progress=progress,
        **scorer_options,
    )
    logger.info("%s | %s", eval_set.load_summary, eval_set.truncation)
    result = evaluate_prepared(scorer, eval_set)
    result.update(
        {
            "model": scorer.model_dir,
            "split": eval_set.split,
            "max_length": scorer.max_length,
            "dtype": str(dtype or "float32"),
            "load": eval_set.load_summary,
            "truncation": eval_set.truncation,
            "attribute_weights": scorer.attribute_weights,
        }
    )
    return result


# ------------------------------------------------------------------------------ report
def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of the result (percentages with one decimal, as RewardBench reports)."""
    lines = [f"model: {result.get('model', '?')}", f"data:  {result['data']} ({result['format']}, {result['n']} items)"]
    metrics = result["metrics"]
    if result["format"] == "ratings":
        lines.append(f"{'attribute':<14}{'MAE':>8}{'RMSE':>8}{'Pearson':>9}")
        for name in [k[: -len("_mae")] for k in metrics if k.endswith("_mae")]:
            pearson = metrics.get(f"{name}_pearson")
            lines.append(
                f"{name:<14}{metrics[f'{name}_mae']:>8.3f}{metrics[f'{name}_rmse']:>8.3f}"
                f"{('—' if pearson is None else f'{pearson:.3f}'):>9}"
            )
        return "\n".join(lines)
    if "rewardbench" in result:
        bench = result["rewardbench"]
        lines.append(f"{'subset':<26}{'section':<11}{'n':>6}{'correct':>9}{'acc %':>8}")
        for subset, entry in bench["subsets"].items():
            lines.append(
                f"{subset:<26}{entry['section'] or '(none)':<11}{entry['n']:>6}{entry['correct']:>9}"
                f"{_pct(entry['accuracy']):>8}"
            )
        lines.append("")
        lines.append(f"{'section':<26}{'subsets':>17}{'score %':>9}")
        for section in SECTIONS:
            entry = bench["sections"].get(section)
            if entry is None:
                lines.append(f"{section:<26}{'0 of ' + str(len(SECTIONS[section])):>17}{'—':>9}")
            else:
                lines.append(
                    f"{section:<26}{str(entry['subsets_present']) + ' of ' + str(entry['subsets_official']):>17}"
                    f"{_pct(entry['score']):>9}"
                )
        present = len(bench["sections"])
        label = f"overall (mean of {present} section{'s' if present != 1 else ''})"
        lines.append(f"{label:<43}{_pct(bench['overall']):>9}")
        if bench["sections_missing"]:
            lines.append(
                f"note: no data for {', '.join(bench['sections_missing'])}; overall is not comparable to the "
                "leaderboard"
            )
    if "rewardbench2" in result:
        return "\n".join(lines + _rewardbench2_lines(result["rewardbench2"], metrics))
    if "rmbench" in result:
        return "\n".join(lines + _rmbench_lines(result["rmbench"], metrics))
    if "helpsteer3" in result:
        for name, table in result["helpsteer3"].items():
            lines.append(f"{name:<26}{'n':>6}{'correct':>9}{'acc %':>8}")
            lines += [f"{group:<26}{e['n']:>6}{e['correct']:>9}{_pct(e['accuracy']):>8}" for group, e in table.items()]
            lines.append("")
    lines.append(
        f"pairwise accuracy {_pct(metrics['accuracy'])} % ({metrics['ties']} ties counted wrong), "
        f"mean margin {metrics['margin']:.4f}, reward mean {metrics['reward_mean']:.4f} ± {metrics['reward_std']:.4f}"
    )
    return "\n".join(lines)


def _rewardbench2_lines(bench: dict[str, Any], metrics: dict[str, float]) -> list[str]:
    lines = [f"{'subset':<26}{'n':>6}{'score %':>9}"]
    for subset in REWARDBENCH2_SUBSETS:
        entry = bench["subsets"].get(subset)
        lines.append(f"{subset:<26}{entry['n'] if entry else 0:>6}{_pct(entry['score']) if entry else '—':>9}")
    lines += [
        f"{subset:<26}{entry['n']:>6}{_pct(entry['score']):>9}  (not a RewardBench 2 subset: not in the overall)"
        for subset, entry in bench["subsets"].items()
        if subset in bench["unscored_subsets"]
    ]
    present = len(REWARDBENCH2_SUBSETS) - len(bench["subsets_missing"])
    lines.append(f"{'overall (' + str(present) + ' of 6 subsets)':<32}{_pct(bench['overall']):>9}")
    if bench["ties"]:
        t = bench["ties"]
        lines.append(
            f"Ties: tied accuracy {_pct(t['tied_accuracy'])}, ref accuracy {_pct(t['ref_accuracy'])}, correctness "
            f"preferred {_pct(t['correctness_preferred'])} (hard {_pct(t['correctness_preferred_hard'])}), margin "
            f"score {t['correctness_margin_score']:.3f} over {t['paired_prompts']} paired prompts"
        )
    if bench["subsets_missing"]:
        lines.append(
            f"note: no data for {', '.join(bench['subsets_missing'])}; overall is not comparable to the leaderboard"
        )
    lines.append(f"reward mean {metrics['reward_mean']:.4f} ± {metrics['reward_std']:.4f}")
    return lines


def _rmbench_lines(bench: dict[str, Any], metrics: dict[str, float]) -> list[str]:
    lines = [
        f"{'domain':<10}{'n':>6}{'hard %':>9}{'normal %':>10}{'easy %':>9}{'avg %':>8}   style matrix % "
        "(rows: chosen, columns: rejected; concise, detailed, markdown)"
    ]
    for domain, entry in bench["domains"].items():
        cells = " | ".join(" ".join(f"{100 * v:5.1f}" for v in row) for row in entry["matrix"])
        lines.append(
            f"{domain:<10}{entry['n']:>6}{_pct(entry['hard']):>9}{_pct(entry['normal']):>10}{_pct(entry['easy']):>9}"
            f"{_pct(entry['average']):>8}   {cells}"
        )
    overall = bench["overall"]
    lines.append(
        f"{'overall':<10}{'':>6}{_pct(overall['hard']):>9}{_pct(overall['normal']):>10}{_pct(overall['easy']):>9}"
        f"{_pct(overall['average']):>8}   (mean over {len(bench['domains'])} domains)"
    )
    if bench["domains_missing"]:
        lines.append(
            f"note: no data for {', '.join(bench['domains_missing'])}; overall is not comparable to the paper's"
        )
    lines.append(f"reward mean {metrics['reward_mean']:.4f} ± {metrics['reward_std']:.4f}")
    return lines


def default_output_path(model: str, data: str) -> Path:
    """``<model>/evaluation/<data name>.json`` for a local model folder (``hsrm push`` puts it in the
    model card), else ``<model name>.<data name>.eval.json`` in the current folder."""
    name = Path(str(data).rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    name = name.replace("/", "__") if not os.path.exists(data) else name
    if os.path.isdir(model) and os.access(model, os.W_OK):
        return Path(model) / "evaluation" / f"{name}.json"
    return Path(f"{Path(model.rstrip('/')).name}.{name}.eval.json")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from .options import EvaluateOptions, parse_options, print_result
    from .shards import parts_folder, process_group, remove_parts

    opts = parse_options(EvaluateOptions, argv, prog="hsrm evaluate", description=EvaluateOptions.__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if opts.justifier:
        # A generative pairwise justifier is judged by its generated verdicts, not a scalar head.
        from .justifier_eval import run_justifier_evaluation

        result, summary = run_justifier_evaluation(opts)
        print_result(result, summary, opts.json)
        return result
    output = opts.output or default_output_path(opts.model, opts.data)
    check_output(  # before minutes of scoring; <model>/evaluation/ is evaluate's own place in a model folder
        output,
        inputs=[opts.data, opts.model],
        overwrite=opts.overwrite,
        own_folders=[Path(opts.model) / "evaluation"],
    )
    result = evaluate_model(
        opts.model,
        opts.data,
        data_format=opts.data_format,
        split=opts.split,
        limit=opts.limit,
        on_bad_rows=opts.on_bad_rows,
        per_subset=opts.per_subset,
        shard_into=output,  # across the processes of torchrun/accelerate launch; resumable
        **opts.engine_settings(),
    )
    refusal = nonfinite_rewards_message(scalar_rewards(result), f"of {opts.data}")
    if refusal:  # its accuracy would read "0.0 %" as if the model were merely bad
        raise InputError(refusal)
    if process_group()[0] != 0:  # the metrics are every process's; rank 0 writes and reports them
        return result
    path = atomic_write_json(output, result)
    remove_parts(parts_folder(output))
    print_result(result, f"{format_report(result)}\nwrote {path}", opts.json)
    return result
