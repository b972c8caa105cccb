"""RM-Bench rows (Liu et al., ICLR 2025; Hub ``THU-KEG/RM-Bench``): three chosen and three rejected
responses per prompt, in the same three styles in the same order — concise, detailed plain text,
detailed markdown — and a ``domain`` (chat, code, math, safety-refuse, safety-response; the paper
reports safety-refuse and safety-response together as safety). Scoring: :mod:`hsrm.benchmark_scores`.
"""

from __future__ import annotations

from typing import Any

from .io import DataError, LoadReport, OnError, load_checked_rows
from .messages import to_messages

STYLES = ("concise", "detailed", "detailed markdown")
DOMAINS = ("chat", "math", "code", "safety")
HUB_ID = "THU-KEG/RM-Bench"
DEFAULT_SPLIT = "train"


def paper_domain(domain: str) -> str:
    """The reported domain: safety-refuse and safety-response are both safety.

    >>> paper_domain("safety-refuse"), paper_domain("chat")
    ('safety', 'chat')
    """
    return "safety" if domain.startswith("safety") else domain


def load_rmbench(
    source: str = HUB_ID, split: str = DEFAULT_SPLIT, *, on_error: OnError = "raise", limit: int | None = None
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Rows ``{prompt (messages), chosen [3], rejected [3], domain, id}`` and the load report."""
    return load_checked_rows(source, _parse_row, split=split, on_error=on_error, limit=limit)


def _parse_row(row: dict, src: str, index: int) -> dict[str, Any]:
    prompt = to_messages(row.get("prompt"), src, index)
    sides = {}
    for name in ("chosen", "rejected"):
        value = row.get(name)
        if not isinstance(value, list) or len(value) != len(STYLES) or not all(isinstance(v, str) for v in value):
            raise DataError(src, index, name, f"expected {len(STYLES)} responses ({', '.join(STYLES)})")
        sides[name] = list(value)
    domain = row.get("domain")
    if not isinstance(domain, str) or paper_domain(domain) not in DOMAINS:
        known = "chat, math, code, safety-refuse, safety-response"
        raise DataError(src, index, "domain", f"{domain!r} is not one of {known}")
    return {
        "prompt": prompt,
        "chosen": sides["chosen"],
        "rejected": sides["rejected"],
        "domain": paper_domain(domain),
        "id": str(row.get("id", index)),
    }
