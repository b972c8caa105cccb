"""Generic preference pairs, Anthropic HH-RLHF transcripts, and flip augmentation.

Generic rows: ``{prompt, chosen, rejected}`` as text or chat-message lists, optional ``margin`` or
``strength``. HH-RLHF rows: ``{chosen, rejected}`` full transcripts; the shared prefix becomes the
prompt and each final assistant turn the response.

Flip augmentation swaps the two sides of a positional pair. In-prompt and cross-prompt pairs of
responses (Sun, Shen & Ton 2024, section 4 and appendix D) are built on the lightweight path:
``hsrm.embedding.annotate``.
"""

from __future__ import annotations

import math

from ..errors import InputError
from .io import DataError, LoadReport, OnError, read_rows
from .messages import parse_hh_transcript, response_text, to_messages


def split_hh_pair(chosen: str, rejected: str) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen reply, rejected reply) from two HH-RLHF transcripts.

    The prompt is the longest common message prefix; what follows must be one assistant turn on
    each side, otherwise the pair is not a single-response comparison and is rejected.
    """
    chosen_msgs, rejected_msgs = parse_hh_transcript(chosen), parse_hh_transcript(rejected)
    if len(chosen_msgs) < 2 or len(rejected_msgs) < 2:
        raise InputError("transcript has no assistant reply")
    prompt_c, prompt_r = chosen_msgs[:-1], rejected_msgs[:-1]
    if prompt_c != prompt_r:
        raise InputError("the two transcripts differ before their last assistant turn")
    if chosen_msgs[-1]["role"] != "assistant" or rejected_msgs[-1]["role"] != "assistant":
        raise InputError("a transcript does not end with an assistant turn")
    return prompt_c, chosen_msgs[-1]["content"], rejected_msgs[-1]["content"]


def _margin(row: dict, source: str, index: int) -> float | None:
    for name in ("margin", "strength"):
        if name in row and row[name] is not None:
            value = row[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DataError(source, index, name, f"expected a finite number, got {value!r}")
            if name == "strength" and value <= 0:
                raise DataError(source, index, name, f"a preference strength must be positive, got {value}")
            return float(value)
    return None


def load_preference_pairs(
    source: str,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    limit: int | None = None,
    return_report: bool = False,
):
    """Preference pairs as ``prompt`` (chat messages), ``chosen``, ``rejected`` and ``margin``
    (the row's margin/strength, or 1.0 where it has none; ``has_margin`` says which).

    HH-RLHF transcripts (rows with no ``prompt`` and ``\\n\\nHuman:`` text) are split on their
    shared prefix. ``limit`` keeps the first N usable pairs.
    """
    import datasets

    rows = read_rows(source, split=split)
    report = LoadReport(source=str(source))
    out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "margin": [], "has_margin": []}
    src = str(source)
    for index, row in enumerate(rows):
        if limit is not None and report.rows_kept >= limit:
            break
        report.rows_read += 1
        try:
            if not isinstance(row, dict):
                raise DataError(src, index, None, "expected an object per row")
            for name in ("chosen", "rejected"):
                if row.get(name) is None:
                    raise DataError(src, index, name, "missing")
            if row.get("prompt") is None and isinstance(row["chosen"], str) and "\n\nHuman:" in row["chosen"]:
                if not isinstance(row["rejected"], str):
                    raise DataError(src, index, "rejected", "expected an HH-RLHF transcript")
                try:
                    prompt, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"])
                except ValueError as err:
                    raise DataError(src, index, "chosen", f"HH-RLHF transcript: {err}") from None
                if not chosen.strip() or not rejected.strip():
                    raise DataError(src, index, "chosen" if not chosen.strip() else "rejected", "empty response")
            else:
                if row.get("prompt") is None:
                    raise DataError(src, index, "prompt", "missing")
                prompt = to_messages(row["prompt"], src, index)
                chosen = response_text(row["chosen"], src, index, "chosen")
                rejected = response_text(row["rejected"], src, index, "rejected")
            if chosen == rejected:
                raise DataError(src, index, "rejected", "identical to chosen: the pair carries no preference")
            margin = _margin(row, src, index)
        except DataError as err:
            if on_error == "raise":
                raise
            report.drop(err.problem if "HH-RLHF" in err.problem else f"{err.field or 'row'}: {err.problem}")
            continue
        out["prompt"].append(prompt)
        out["chosen"].append(chosen)
        out["rejected"].append(rejected)
        out["margin"].append(1.0 if margin is None else margin)
        out["has_margin"].append(margin is not None)
        report.rows_kept += 1
    report.log()
    dataset = datasets.Dataset.from_dict(out)
    return (dataset, report) if return_report else dataset


def flip_pair(row: dict) -> dict:
    """Swap the positions of a positional pair (``response_1``/``response_2``) and negate its
    signed preference, so position carries no label information (flip augmentation)."""
    flipped = dict(row)
    flipped["response_1"], flipped["response_2"] = row["response_2"], row["response_1"]
    if "overall_preference" in row:
        flipped["overall_preference"] = -row["overall_preference"]
    return flipped
