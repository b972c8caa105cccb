"""Evaluate a generative Pairwise Justifier (HelpSteer2-Preference §3.2, §4).

    hsrm evaluate --justifier --model DIR --data SOURCE [--output F.json] [--max-new-tokens N]

Every pair is judged twice, with the chosen response first and then second. The verdict is the
last "@Response N … better" statement of the generated text (or a bare "@Response N" from a
label-only model); text with neither is *unparseable* and counts as wrong.

Metrics, over n pairs and 2n judgements:
  accuracy              = correct judgements / 2n
  both_orders_accuracy  = pairs judged correctly in both orders / n
  position_bias_rate    = pairs whose two verdicts name the same *position* / n (the verdict
                          followed the position, not the content; 0 for an unbiased judge)
  response_1_rate       = parsed verdicts naming @Response 1 / parsed verdicts (0.5 = no lean)
  parse_failure_rate    = unparseable judgements / 2n
On RewardBench data also per-subset accuracy and the section scores (Σ subset accuracy ×
official count / Σ count over the subsets present; overall = mean of the sections present).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from .errors import InputError

logger = logging.getLogger("hsrm.justifier_eval")

ORDERS = ("chosen_first", "chosen_second")  # where the chosen response sits: @Response 1, @Response 2
JUSTIFIER_FALLBACK_MAX_LENGTH = 4096  # prompt (two responses) + generation, when the model records none


# -------------------------------------------------------------------------------------- metrics
def justifier_metrics(
    verdicts_chosen_first: Sequence[int | None], verdicts_chosen_second: Sequence[int | None]
) -> dict[str, float]:
    """Metrics of a judge from its verdicts (1, 2 or None = unparseable) on each pair shown with the
    chosen response first (correct verdict 1) and second (correct verdict 2).

    >>> m = justifier_metrics([1, 1, None], [2, 1, 2])
    >>> m["accuracy"], m["both_orders_accuracy"], m["position_bias_rate"], m["parse_failure_rate"]
    (0.6666666666666666, 0.3333333333333333, 0.3333333333333333, 0.16666666666666666)
    """
    if len(verdicts_chosen_first) != len(verdicts_chosen_second):
        raise InputError("one verdict per pair and order is needed: the two lists differ in length")
    n = len(verdicts_chosen_first)
    if n == 0:
        raise InputError("no pairs to score")
    first, second = list(verdicts_chosen_first), list(verdicts_chosen_second)
    correct_first = [v == 1 for v in first]
    correct_second = [v == 2 for v in second]
    parsed = [v for v in first + second if v is not None]
    return {
        "pairs": n,
        "judgements": 2 * n,
        "accuracy": (sum(correct_first) + sum(correct_second)) / (2 * n),
        "accuracy_chosen_first": sum(correct_first) / n,
        "accuracy_chosen_second": sum(correct_second) / n,
        "both_orders_accuracy": sum(a and b for a, b in zip(correct_first, correct_second)) / n,
        "position_bias_rate": sum(a is not None and a == b for a, b in zip(first, second)) / n,
        "response_1_rate": (sum(v == 1 for v in parsed) / len(parsed)) if parsed else float("nan"),
        "parse_failure_rate": sum(v is None for v in first + second) / (2 * n),
        "parse_failures": sum(v is None for v in first + second),
    }


# ----------------------------------------------------------------------------------- generation
def end_of_turn_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a generated turn: EOS, the model's generation EOS and known end-of-turn
    tokens (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``)."""
    ids = {tokenizer.eos_token_id}
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>") if t in vocab}
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if generation_eos is not None:
        ids |= set(generation_eos if isinstance(generation_eos, (list, tuple)) else [generation_eos])
    return sorted(i for i in ids if i is not None)


def generate_justifications(
    model,
    tokenizer,
    comparisons: Sequence[tuple[Any, str, str]],
    *,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    max_length: int | None = JUSTIFIER_FALLBACK_MAX_LENGTH,
    show_progress: bool = True,
) -> list[str]:
    """Greedy justifications for ``(prompt, response_1, response_2)`` comparisons, in order.

    Prompts are rendered exactly as in training (:func:`encode_justifier_prompt`), left-padded,
    and batched by length so little compute goes to padding.
    """
    import torch
    from tqdm.auto import tqdm

    from .data.justifications import encode_justifier_prompt, truncation_summary
    from .data.render import TruncationStats, pad_sequences

    stats = TruncationStats()
    reserve = max_new_tokens if max_length is not None and max_length > 2 * max_new_tokens else 0
    encoded = [
        encode_justifier_prompt(tokenizer, p, r1, r2, max_length, reserve=reserve, stats=stats)
        for p, r1, r2 in comparisons
    ]
    if stats.truncated:
        logger.info(truncation_summary(stats))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = end_of_turn_ids(tokenizer, model)
    device = next(model.parameters()).device
    texts: list[str] = [""] * len(encoded)
    model.eval()
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="judging", disable=not show_progress or len(batches) < 2):
        index = order[start : start + batch_size]
        ids, mask = pad_sequences([encoded[i] for i in index], pad_id, side="left")
        with torch.no_grad():
            output = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=pad_id,
            )
        for row, i in enumerate(index):
            texts[i] = tokenizer.decode(output[row, ids.shape[1] :], skip_special_tokens=True).strip()
    return texts


def evaluate_justifier(
    model,
    tokenizer,
    pairs,
    *,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    max_length: int | None = JUSTIFIER_FALLBACK_MAX_LENGTH,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Judge every pair in both orders; ``pairs`` has ``prompt, chosen, rejected`` (+ ``subset``).
    Returns ``{"metrics": …, "examples": [one record per judgement]}``."""
    from .data.justifications import parse_verdict

    rows = pairs.to_list() if hasattr(pairs, "to_list") else list(pairs)
    if not rows:
        raise InputError("no pairs to evaluate")
    comparisons = []
    for row in rows:
        comparisons.append((row["prompt"], row["chosen"], row["rejected"]))  # chosen is @Response 1
        comparisons.append((row["prompt"], row["rejected"], row["chosen"]))  # chosen is @Response 2
    texts = generate_justifications(
        model,
        tokenizer,
        comparisons,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    verdicts = [parse_verdict(t) for t in texts]
    first, second = verdicts[0::2], verdicts[1::2]
    metrics: dict[str, Any] = justifier_metrics(first, second)
    if rows and "subset" in rows[0]:
        from .evaluation import rewardbench_scores

        # Each pair is judged twice (chosen shown first, then second): 2n verdicts for the one RewardBench scorer.
        subsets = [r["subset"] for r in rows]
        correct = [v == 1 for v in first] + [v == 2 for v in second]
        metrics["rewardbench"] = rewardbench_scores(subsets + subsets, correct)
    examples = []
    for k, (text, verdict) in enumerate(zip(texts, verdicts)):
        pair, order = divmod(k, 2)
        correct_position = 1 if order == 0 else 2
        record = {
            "pair": pair,
            "order": ORDERS[order],
            "verdict": verdict,
            "correct": verdict == correct_position,
            "parsed": verdict is not None,
            "generated": text,
        }
        if "subset" in rows[pair]:
            record["subset"] = rows[pair]["subset"]
        examples.append(record)
    return {"metrics": metrics, "examples": examples}


# ------------------------------------------------------------------------------------------- CLI
def _model_record(path: str):
    """The justifier's model record; a scalar reward model is refused with a pointer to the right verb."""
    import os

    from .record import ModelRecord, read_record

    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        return ModelRecord()
    with open(config_path, encoding="utf-8") as handle:
        architectures = json.load(handle).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        raise InputError(
            f"{path} is a scalar reward model ({architectures[0]}), not a generative justifier; "
            "evaluate it without --justifier"
        )
    return read_record(path)


def run_justifier_evaluation(opts) -> tuple[dict[str, Any], str]:
    """``hsrm evaluate --justifier``: (result, human summary) for :class:`hsrm.options.EvaluateOptions`."""
    import torch

    from .data.auto import detect_format, load_pairs_any
    from .files import atomic_write_json, check_output
    from .trainers.justifier import load_causal_lm

    if opts.output:
        check_output(opts.output, inputs=[opts.data, opts.model], overwrite=opts.overwrite)
    record = _model_record(opts.model)
    max_new_tokens = opts.max_new_tokens or record.max_new_tokens or 512
    if record.justifier_target == "label" and opts.max_new_tokens is None:
        max_new_tokens = min(max_new_tokens, 16)  # "@Response N" and the end of turn
    # The same precedence as every scorer (user, then the record); a justifier's prompt holds two
    # responses, so a model without a record gets twice the scalar default.
    max_length = opts.max_length or record.max_length or JUSTIFIER_FALLBACK_MAX_LENGTH
    fmt = detect_format(opts.data, "pairs") if opts.data_format == "auto" else opts.data_format
    split = opts.split or ("val" if fmt == "helpsteer2_preference" else "train")
    pairs = load_pairs_any(opts.data, split, fmt, limit=opts.limit, on_error=opts.on_bad_rows)
    if opts.limit is not None:
        pairs = pairs.select(range(min(opts.limit, len(pairs))))
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = opts.dtype if opts.dtype not in (None, "auto") else ("bfloat16" if device.startswith("cuda") else "float32")
    model, tokenizer = load_causal_lm(opts.model, dtype=dtype)
    model.to(device)
    result = evaluate_justifier(
        model, tokenizer, pairs, max_new_tokens=max_new_tokens, batch_size=opts.batch_size, max_length=max_length
    )
    result["settings"] = {
        "model": opts.model,
        "data": opts.data,
        "split": split,
        "format": fmt,
        "max_new_tokens": max_new_tokens,
        "max_length": max_length,
        "device": device,
        "dtype": dtype,
    }
    m = result["metrics"]
    lines = [
        f"justifier on {opts.data}: {m['pairs']} pairs x 2 orders | accuracy {m['accuracy']:.4f} | "
        f"both orders {m['both_orders_accuracy']:.4f} | position bias {m['position_bias_rate']:.4f} | "
        f"parse failures {m['parse_failure_rate']:.4f} ({m['parse_failures']})"
    ]
    if "rewardbench" in m:
        bench = m["rewardbench"]
        sections = ", ".join(f"{name} {section['score']:.4f}" for name, section in bench["sections"].items())
        lines.append(
            f"RewardBench sections: {sections}"
            + (f" | overall {bench['overall']:.4f}" if bench["overall"] is not None else "")
        )
    if opts.output:
        lines.append(f"wrote {atomic_write_json(opts.output, result)}")
    return result, "\n".join(lines)
