"""RewardBench 2 rows (Malik et al., 2025, arXiv 2506.01937; Hub ``allenai/reward-bench-2``, split ``test``).

A row is one prompt with several completions: ``chosen`` (a list: one correct completion, or several
for Ties), ``rejected`` (a list), ``num_correct``, ``num_incorrect``, ``total_completions``,
``subset`` ∈ Factuality, Precise IF, Math, Safety, Focus, Ties, and ``id`` (``ref:N`` / ``tied:N`` in
Ties). The scoring lives in :mod:`hsrm.benchmark_scores`.
"""

from __future__ import annotations

from typing import Any

from .io import DataError, LoadReport, OnError, load_checked_rows
from .messages import to_messages

SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")
HUB_ID = "allenai/reward-bench-2"
DEFAULT_SPLIT = "test"


def _texts(row: dict, name: str, source: str, index: int) -> list[str]:
    value = row.get(name)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DataError(source, index, name, "expected a non-empty list of completion texts")
    return list(value)


def load_rewardbench2(
    source: str = HUB_ID, split: str = DEFAULT_SPLIT, *, on_error: OnError = "raise", limit: int | None = None
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Rows ``{prompt (messages), completions (chosen first), num_correct, subset, id}`` and the load report.

    ``num_correct`` must equal the number of chosen completions, and Ties ids must read ``ref:N`` or
    ``tied:N``: the scoring depends on both.
    """
    return load_checked_rows(source, _parse_row, split=split, on_error=on_error, limit=limit)


def _parse_row(row: dict, src: str, index: int) -> dict[str, Any]:
    prompt = to_messages(row.get("prompt"), src, index)
    chosen, rejected = _texts(row, "chosen", src, index), _texts(row, "rejected", src, index)
    subset = row.get("subset")
    if not isinstance(subset, str) or not subset:
        raise DataError(src, index, "subset", "missing")
    num_correct = row.get("num_correct", len(chosen))
    if isinstance(num_correct, bool) or not isinstance(num_correct, int) or num_correct != len(chosen):
        raise DataError(src, index, "num_correct", f"{num_correct!r}, but the row has {len(chosen)} chosen completions")
    row_id = str(row.get("id", index))
    if subset.lower() == "ties" and row_id.split(":", 1)[0] not in ("ref", "tied"):
        raise DataError(src, index, "id", f"a Ties id reads ref:N or tied:N, got {row_id!r}")
    completions = chosen + rejected
    return {"prompt": prompt, "completions": completions, "num_correct": num_correct, "subset": subset, "id": row_id}
