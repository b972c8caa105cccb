"""HelpSteer2 ratings and HelpSteer2-Preference, with the paper's pre-processing.

Paper: Wang et al. (2024), HelpSteer2-Preference, section 2 "Data Pre-processing":
  1. drop individual "neither response is valid" annotations (strength −100);
  2. take the three most similar individual preferences;
  3. exclude the task when the spread (max − min) of those three is more than two
     (e.g. [−3, −1, 2, 3] → [−1, 2, 3], spread 4, excluded);
  4. overall preference = their mean rounded to the closest integer; exclude an overall 0.
Negative strength means response 1 is better; |strength| ∈ {1, 2, 3} is the preference strength.
"""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from .io import DataError, LoadReport, OnError, in_split, read_rows, require_text
from .messages import split_helpsteer_turns

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
NEITHER_VALID = -100
MAX_SPREAD = 2


# ----------------------------------------------------------------------------- preference rules
def three_most_similar(strengths: Sequence[int]) -> tuple[int, ...]:
    """The three annotations with the smallest spread (max − min).

    Ties in spread are broken by the smaller variance, then by annotation order, so the choice is
    deterministic. With three or fewer annotations all are kept.
    """
    values = tuple(int(s) for s in strengths)
    if len(values) <= 3:
        return values

    def key(combo: tuple[int, ...]) -> tuple[int, float]:
        mean = sum(combo) / 3
        return (max(combo) - min(combo), sum((v - mean) ** 2 for v in combo))

    return min(itertools.combinations(values, 3), key=key)  # min keeps the first on equal keys


def round_half_away(x: float) -> int:
    """Closest integer; .5 (possible only with two annotations) rounds away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def parse_annotations(raw: Any, source: str, index: int) -> list[int]:
    """``all_preferences_unprocessed``: a list of ``{strength, justification}``, or its Python repr."""
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)  # literal_eval: data, never code
        except (ValueError, SyntaxError):
            raise DataError(
                source, index, "all_preferences_unprocessed", "a string that is not a Python/JSON list literal"
            ) from None
    if not isinstance(raw, (list, tuple)):
        raise DataError(source, index, "all_preferences_unprocessed", f"expected a list, got {type(raw).__name__}")
    strengths = []
    for k, item in enumerate(raw):
        value = item.get("strength") if isinstance(item, dict) else item
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise DataError(
                source,
                index,
                "all_preferences_unprocessed",
                f"annotation {k} has strength {value!r}, expected an integer",
            )
        value = int(value)
        if value != NEITHER_VALID and not -3 <= value <= 3:
            raise DataError(
                source,
                index,
                "all_preferences_unprocessed",
                f"annotation {k} has strength {value}, expected −3…3 or −100",
            )
        strengths.append(value)
    return strengths


def overall_preference(strengths: Sequence[int]) -> tuple[int | None, str | None]:
    """(overall strength, None) or (None, reason it is excluded), following section 2."""
    valid = [s for s in strengths if s != NEITHER_VALID]
    if not valid:
        return None, "no valid annotation (all −100 or none)"
    similar = three_most_similar(valid)
    if max(similar) - min(similar) > MAX_SPREAD:
        return None, "spread of the three most similar > 2"
    overall = round_half_away(sum(similar) / len(similar))
    if overall == 0:
        return None, "overall preference 0"
    return overall, None


def load_helpsteer2_preference(
    source: str = "nvidia/HelpSteer2", split: str = "train", *, on_error: OnError = "raise", return_report: bool = False
):
    """HelpSteer2-Preference as pairs: ``prompt`` (chat messages), ``chosen``, ``rejected``,
    ``strength`` (1–3), plus ``response_1``, ``response_2`` and ``overall_preference`` (−3…3).

    ``source``: the Hub id (``data_dir="preference"`` is used) or a local .jsonl/.jsonl.gz/.parquet
    with the Hub's schema. ``split`` selects rows by their ``split`` column (``train``/``val``).
    """
    import datasets

    # The Hub's preference file is one "train" split whose rows carry split = train | val.
    rows = read_rows(source, split="train", data_dir="preference")
    report = LoadReport(source=str(source))
    out: dict[str, list] = {
        k: [] for k in ("prompt", "chosen", "rejected", "strength", "response_1", "response_2", "overall_preference")
    }
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(str(source), index, None, "expected an object per row")
        if not in_split(row.get("split"), split):
            continue
        report.rows_read += 1
        try:
            prompt = require_text(row, "prompt", str(source), index)
            r1 = require_text(row, "response_1", str(source), index)
            r2 = require_text(row, "response_2", str(source), index)
            if "all_preferences_unprocessed" in row and row["all_preferences_unprocessed"] is not None:
                strengths = parse_annotations(row["all_preferences_unprocessed"], str(source), index)
            elif "preference_strength" in row:  # already processed upstream: one overall value
                strengths = parse_annotations([row["preference_strength"]], str(source), index)
            else:
                raise DataError(
                    str(source), index, "all_preferences_unprocessed", "missing (and no preference_strength)"
                )
            if r1 == r2:
                raise DataError(str(source), index, "response_2", "identical to response_1")
        except DataError:
            if on_error == "raise":
                raise
            report.drop("malformed row")
            continue
        overall, reason = overall_preference(strengths)
        if reason:
            report.drop(reason)
            continue
        chosen, rejected = (r1, r2) if overall < 0 else (r2, r1)
        out["prompt"].append(split_helpsteer_turns(prompt))
        out["chosen"].append(chosen)
        out["rejected"].append(rejected)
        out["strength"].append(abs(overall))
        out["response_1"].append(r1)
        out["response_2"].append(r2)
        out["overall_preference"].append(overall)
        report.rows_kept += 1
    report.log()
    dataset = datasets.Dataset.from_dict(out)
    return (dataset, report) if return_report else dataset


def _rating(row: dict, name: str, source: str, index: int) -> float:
    if name not in row or row[name] is None:
        raise DataError(source, index, name, "missing rating")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(source, index, name, f"expected a number 0–4, got {type(value).__name__} {value!r}")
    if not (0 <= value <= 4) or math.isnan(value):
        raise DataError(source, index, name, f"rating {value} is outside 0–4")
    return float(value)


def load_helpsteer2_ratings(
    source: str = "nvidia/HelpSteer2",
    split: str = "train",
    attributes: Sequence[str] = ("helpfulness",),
    *,
    on_error: OnError = "raise",
    return_report: bool = False,
):
    """HelpSteer2 (or HelpSteer) Likert ratings: ``prompt`` (chat messages), ``response`` and one
    float column per selected attribute (0–4). ``attributes="all"`` selects the five."""
    import datasets

    attributes = ATTRIBUTES if attributes == "all" else tuple(attributes)
    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown or not attributes:
        raise InputError(f"unknown attributes {unknown}; choose from {ATTRIBUTES} or 'all'")
    rows = read_rows(source, split="validation" if split in ("val", "validation") else split)
    report = LoadReport(source=str(source))
    out: dict[str, list] = {"prompt": [], "response": [], **{a: [] for a in attributes}}
    for index, row in enumerate(rows):
        if isinstance(row, dict) and not in_split(row.get("split"), split):
            continue
        report.rows_read += 1
        try:
            if not isinstance(row, dict):
                raise DataError(str(source), index, None, "expected an object per row")
            prompt = require_text(row, "prompt", str(source), index)
            response = require_text(row, "response", str(source), index)
            ratings = {a: _rating(row, a, str(source), index) for a in attributes}
        except DataError:
            if on_error == "raise":
                raise
            report.drop("malformed row")
            continue
        out["prompt"].append(split_helpsteer_turns(prompt))
        out["response"].append(response)
        for a in attributes:
            out[a].append(ratings[a])
        report.rows_kept += 1
    report.log()
    dataset = datasets.Dataset.from_dict(out)
    return (dataset, report) if return_report else dataset
