"""HelpSteer3-Preference (Wang et al., 2025; Hub ``nvidia/HelpSteer3``, ``preference/train.jsonl.gz`` and
``preference/validation.jsonl.gz``).

A row: ``domain``, ``language``, ``context`` (a list of ``{role, content}`` turns, the last one the
user's), ``response1``, ``response2``, ``overall_preference`` (−3…3; negative means response 1 is
better, 0 means no preference) and ``individual_preference`` (the annotators' ``{score, reasoning,
feedback1, feedback2}``). As pairs: chosen is the preferred response, the margin (Scaled BT's
strength) is ``|overall_preference|``, and a 0 row is dropped and counted — it orders nothing.
"""

from __future__ import annotations

from .io import DataError, OnError, load_checked_rows, require_text
from .messages import to_messages

HUB_ID = "nvidia/HelpSteer3"
DATA_DIR = "preference"  # the Hub repo's folder of the preference files
SPLITS = {"train": "train", "val": "validation", "validation": "validation"}
COLUMNS = ("prompt", "chosen", "rejected", "margin", "has_margin", "domain", "language")


def load_helpsteer3_preference(
    source: str = HUB_ID,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    limit: int | None = None,
    return_report: bool = False,
):
    """Pairs ``prompt`` (the context as chat messages), ``chosen``, ``rejected``, ``margin``
    (``|overall_preference|``), ``has_margin``, ``domain``, ``language``, as a ``datasets.Dataset``."""
    import datasets

    rows, report = load_checked_rows(
        source, _parse_row, split=SPLITS.get(split, split), data_dir=DATA_DIR, on_error=on_error, limit=limit
    )
    dataset = datasets.Dataset.from_dict({column: [row[column] for row in rows] for column in COLUMNS})
    return (dataset, report) if return_report else dataset


def _parse_row(row: dict, src: str, index: int) -> dict | str:
    context = to_messages(row.get("context"), src, index, "context")
    if context[-1]["role"] != "user":
        raise DataError(src, index, "context", "the last turn must be the user's: the two responses answer it")
    first = require_text(row, "response1", src, index)
    second = require_text(row, "response2", src, index)
    preference = row.get("overall_preference")
    if isinstance(preference, bool) or not isinstance(preference, int) or not -3 <= preference <= 3:
        raise DataError(src, index, "overall_preference", f"expected a whole number in −3…3, got {preference!r}")
    if preference == 0:
        return "no preference (overall_preference 0)"
    chosen, rejected = (first, second) if preference < 0 else (second, first)
    return {
        "prompt": context,
        "chosen": chosen,
        "rejected": rejected,
        "margin": float(abs(preference)),
        "has_margin": True,
        "domain": str(row.get("domain") or "unknown"),
        "language": str(row.get("language") or "unknown"),
    }
