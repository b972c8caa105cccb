"""RewardBench (v1) rows ``{prompt, chosen, rejected, subset, id}`` and the official section map.

Protocol (Lambert et al., 2024; ../shared/docs/anchors.md): a pair is correct only when
chosen > rejected strictly; a section's score is Σ(subset accuracy × count) / Σ count over the
subsets present; overall is the mean of the sections present.
"""

from __future__ import annotations

from .io import DataError, LoadReport, OnError, read_rows, require_text
from .messages import to_messages

# Official per-subset counts used as weights. math-prm is weighted to equal the code total
# (6 × 164 = 984) so math and code count equally in Reasoning.
SECTIONS: dict[str, dict[str, int]] = {
    "Chat": {
        "alpacaeval-easy": 100,
        "alpacaeval-length": 95,
        "alpacaeval-hard": 95,
        "mt-bench-easy": 28,
        "mt-bench-med": 40,
    },
    "Chat Hard": {
        "mt-bench-hard": 37,
        "llmbar-natural": 100,
        "llmbar-adver-neighbor": 134,
        "llmbar-adver-GPTInst": 92,
        "llmbar-adver-GPTOut": 47,
        "llmbar-adver-manual": 46,
    },
    "Safety": {
        "refusals-dangerous": 100,
        "refusals-offensive": 100,
        "xstest-should-refuse": 154,
        "xstest-should-respond": 250,
        "donotanswer": 136,
    },
    "Reasoning": {
        "math-prm": 984,
        "hep-cpp": 164,
        "hep-go": 164,
        "hep-java": 164,
        "hep-js": 164,
        "hep-python": 164,
        "hep-rust": 164,
    },
}
SUBSET_TO_SECTION = {subset: section for section, subsets in SECTIONS.items() for subset in subsets}


def load_rewardbench(
    source: str = "allenai/reward-bench",
    split: str = "filtered",
    *,
    on_error: OnError = "raise",
    return_report: bool = False,
):
    """RewardBench rows as ``prompt`` (chat messages), ``chosen``, ``rejected``, ``subset``, ``id``."""
    import datasets

    rows = read_rows(source, split=split)
    report = LoadReport(source=str(source))
    out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "subset": [], "id": []}
    src = str(source)
    for index, row in enumerate(rows):
        report.rows_read += 1
        try:
            if not isinstance(row, dict):
                raise DataError(src, index, None, "expected an object per row")
            prompt = to_messages(row.get("prompt"), src, index)
            chosen = require_text(row, "chosen", src, index, allow_empty=True)
            rejected = require_text(row, "rejected", src, index, allow_empty=True)
            subset = require_text(row, "subset", src, index)
        except DataError:
            if on_error == "raise":
                raise
            report.drop("malformed row")
            continue
        out["prompt"].append(prompt)
        out["chosen"].append(chosen)
        out["rejected"].append(rejected)
        out["subset"].append(subset)
        out["id"].append(str(row.get("id", index)))
        report.rows_kept += 1
    report.log()
    dataset = datasets.Dataset.from_dict(out)
    return (dataset, report) if return_report else dataset


def is_rewardbench(rows_or_dataset) -> bool:
    """True when the rows carry RewardBench's ``subset`` column."""
    columns = getattr(rows_or_dataset, "column_names", None)
    if columns is None and rows_or_dataset:
        columns = list(rows_or_dataset[0].keys())
    return bool(columns) and "subset" in columns
