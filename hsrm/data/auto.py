"""Pick the right loader for a source: by an explicit format name, or by looking at the first row."""

from __future__ import annotations

from typing import Literal, get_args

from ..errors import InputError
from .helpsteer import load_helpsteer2_preference, load_helpsteer2_ratings
from .helpsteer3 import load_helpsteer3_preference
from .io import DataError, OnError, is_local_source, read_rows
from .pairs import load_preference_pairs
from .rewardbench import load_rewardbench

DataFormat = Literal[
    "auto",
    "helpsteer2_preference",
    "helpsteer2_ratings",
    "helpsteer3_preference",
    "pairs",
    "rewardbench",
    "rewardbench2",
    "rmbench",
]
FORMATS = get_args(DataFormat)[1:]  # every format but "auto"
EVALUATION_ONLY = {"rewardbench2": "best-of-N rows", "rmbench": "rows of three chosen and three rejected responses"}


def detect_format(source: str, want: Literal["pairs", "ratings"] = "pairs") -> str:
    """The format of a source from its first row (local files) or its name (Hub ids)."""
    if not is_local_source(source):
        lowered = source.lower()
        if "helpsteer3" in lowered:
            return "helpsteer3_preference"
        if "helpsteer" in lowered:
            return "helpsteer2_ratings" if want == "ratings" else "helpsteer2_preference"
        if "reward-bench-2" in lowered or "rewardbench2" in lowered or "rewardbench-2" in lowered:
            return "rewardbench2"
        if "rm-bench" in lowered or "rmbench" in lowered:
            return "rmbench"
        if "reward-bench" in lowered or "rewardbench" in lowered:
            return "rewardbench"
        return "pairs"
    rows = read_rows(source)
    if not rows:
        raise DataError(source, None, None, "the file holds no rows")
    return format_of_row(rows[0], source)


def format_of_row(first, source: str, *, responses: bool = False) -> str:
    """The format a source's first row says, by its fields. ``responses``: rows of one response each
    (``prompt`` + ``response``, with or without ratings) are ``"responses"`` — what ``hsrm embed`` reads
    besides the pairwise formats — instead of HelpSteer2 ratings."""
    first = first if isinstance(first, dict) else {}
    if responses and "response" in first and not ("chosen" in first and "rejected" in first):
        return "responses"
    if "all_preferences_unprocessed" in first or "response_1" in first:
        return "helpsteer2_preference"
    if "overall_preference" in first and "response1" in first:
        return "helpsteer3_preference"
    if isinstance(first.get("chosen"), list) and ("num_correct" in first or "total_completions" in first):
        return "rewardbench2"
    if isinstance(first.get("chosen"), list) and "domain" in first:
        return "rmbench"
    if "helpfulness" in first and "response" in first:
        return "helpsteer2_ratings"
    if "subset" in first and "chosen" in first:
        return "rewardbench"
    if "chosen" in first and "rejected" in first:
        return "pairs"
    choices = ("responses", *FORMATS) if responses else FORMATS
    raise DataError(
        source, 0, None, f"cannot tell the format from the fields {sorted(first)}; set data_format to one of {choices}"
    )


def load_pairs_any(
    source: str,
    split: str = "train",
    data_format: str = "auto",
    on_error: OnError = "raise",
    limit: int | None = None,
    return_report: bool = False,
):
    """Pairs ``prompt, chosen, rejected, margin`` from any pairwise format (HelpSteer2-Preference's
    strength becomes the margin)."""
    fmt = detect_format(source, "pairs") if data_format == "auto" else data_format
    if fmt == "helpsteer2_preference":
        ds, report = load_helpsteer2_preference(source, split, on_error=on_error, return_report=True)
        ds = ds.map(lambda row: {"margin": float(row["strength"])})
    elif fmt == "rewardbench":
        ds, report = load_rewardbench(source, on_error=on_error, return_report=True)
        ds = ds.map(lambda row: {"margin": 1.0})
    elif fmt == "pairs":
        ds, report = load_preference_pairs(source, split, on_error=on_error, limit=limit, return_report=True)
    elif fmt == "helpsteer3_preference":
        ds, report = load_helpsteer3_preference(source, split, on_error=on_error, limit=limit, return_report=True)
    elif fmt in EVALUATION_ONLY:
        raise InputError(
            f"{source}: {fmt} holds {EVALUATION_ONLY[fmt]}, not training pairs; evaluate with it (hsrm evaluate)"
        )
    else:
        raise InputError(f"{source}: format {fmt!r} holds ratings, not pairs; use objective 'regression'")
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    return (ds, report) if return_report else ds


def load_ratings_any(
    source: str,
    split: str = "train",
    attributes=("helpfulness",),
    on_error: OnError = "raise",
    limit: int | None = None,
    return_report: bool = False,
):
    ds, report = load_helpsteer2_ratings(source, split, attributes, on_error=on_error, return_report=True)
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    return (ds, report) if return_report else ds
