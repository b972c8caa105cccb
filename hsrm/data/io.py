"""Reading rows from a local file or a Hub dataset, and the error/report types every loader shares.

A *source* is a path to ``.jsonl``, ``.jsonl.gz``, ``.json`` or ``.parquet``, or a Hub dataset id
(``nvidia/HelpSteer2``). Loaders validate each row and either raise :class:`DataError` naming the
row and the field, or, with ``on_error="skip"``, count the skip in a :class:`LoadReport`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InputError

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


class DataError(InputError):
    """A row that cannot be used, with where it came from and what is wrong with it.

    ``row`` is the 0-based position of the row among the source's rows (what ``enumerate`` gives);
    messages show it counted from 1, with blank lines not counted, the same rule for every error:

    >>> str(DataError("pairs.jsonl", 0, "chosen", "missing"))
    "pairs.jsonl, row 1 (counting from 1), field 'chosen': missing"
    """

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        where = f"{source}" + (f", row {row + 1} (counting from 1)" if row is not None else "")
        where += f", field {field!r}" if field else ""
        super().__init__(f"{where}: {problem}")


@dataclass
class LoadReport:
    """What a loader read, kept, dropped (by reason) and truncated; logged, never silent."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def summary(self) -> str:
        parts = [f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}"]
        parts += [f"dropped {n} ({reason})" for reason, n in sorted(self.dropped.items())]
        return "; ".join(parts)

    def log(self) -> None:
        logger.info(self.summary())


def is_local_source(source: str | os.PathLike) -> bool:
    text = str(source)
    return os.path.exists(text) or text.endswith(LOCAL_SUFFIXES)


def _read_bytes(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # not gzip, or cut short
        raise DataError(
            path,
            None,
            None,
            f"not a complete gzip file ({type(err).__name__}: {err}); the download or copy may have been cut short",
        ) from None


def _iter_json_lines(path: str) -> Iterator[dict]:
    raw_bytes = _read_bytes(path)
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        before = raw_bytes[: err.start].decode("utf-8", errors="replace")
        row = sum(1 for line in before.split("\n")[:-1] if line.strip())  # rows that end before the bad byte
        line_no = before.count("\n") + 1
        raise DataError(
            path, row, None, f"not valid UTF-8 at byte {err.start} (file line {line_no}); re-encode the file as UTF-8"
        ) from None
    if path.endswith((".json", ".json.gz")) and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(path, None, None, f"not valid JSON: {err.msg} at file line {err.lineno}") from None
        for row in rows:
            yield row
        return
    row_index = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                path,
                row_index,
                None,
                f"not valid JSON ({err.msg}, file line {line_no}); each line must hold one JSON object",
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                path, row_index, None, f"expected a JSON object, got {type(row).__name__} (file line {line_no})"
            )
        row_index += 1
        yield row


def load_checked_rows(
    source: str | os.PathLike,
    parse_row: Callable[[dict, str, int], dict[str, Any] | str],
    *,
    split: str | None = None,
    data_dir: str | None = None,
    on_error: OnError = "raise",
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """The rows of ``source`` through ``parse_row(row, source, index)``, which returns the row to keep,
    or a reason (a string) to drop it, counted under that reason. A malformed row (not an object, or
    one ``parse_row`` raises :class:`DataError` for) stops the load with ``on_error="raise"``, else it is
    dropped and counted. Stops after ``limit`` kept rows; the report is logged."""
    src = str(source)
    report = LoadReport(source=src)
    kept: list[dict[str, Any]] = []
    for index, row in enumerate(read_rows(source, split=split, data_dir=data_dir)):
        report.rows_read += 1
        try:
            if not isinstance(row, dict):
                raise DataError(src, index, None, "expected an object per row")
            parsed = parse_row(row, src, index)
        except DataError:
            if on_error == "raise":
                raise
            report.drop("malformed row")
            continue
        if isinstance(parsed, str):
            report.drop(parsed)
            continue
        kept.append(parsed)
        report.rows_kept += 1
        if limit is not None and len(kept) >= limit:
            break
    report.log()
    return kept, report


def in_split(row_split: Any, split: str | None) -> bool:
    """Whether a row whose ``split`` column holds ``row_split`` belongs to ``split`` (``None`` on
    either side: every row does); ``validation``, ``valid`` and ``test`` all mean HelpSteer2's ``val``.

    >>> in_split("validation", "val"), in_split("train", "val"), in_split(None, "train")
    (True, False, True)
    """
    if split is None or row_split is None:
        return True
    aliases = {"val": "val", "validation": "val", "valid": "val", "test": "val", "train": "train"}
    return aliases.get(str(row_split).lower(), str(row_split)) == aliases.get(split.lower(), split)


def read_rows(source: str | os.PathLike, split: str | None = None, data_dir: str | None = None) -> list[dict[str, Any]]:
    """All rows of a local file, or of one split of a Hub dataset, as plain dicts.

    For local files ``split`` is not applied here: HelpSteer2-Preference keeps its split in a
    ``split`` column, which the loader filters.
    """
    path = str(source)
    if is_local_source(path):
        if not os.path.exists(path):
            raise DataError(path, None, None, "file not found")
        if os.path.isdir(path):
            raise DataError(path, None, None, f"is a folder, not a data file ({', '.join(LOCAL_SUFFIXES)})")
        if path.endswith(".parquet"):
            import pyarrow
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except (pyarrow.ArrowException, OSError) as err:
                raise DataError(path, None, None, f"not a readable Parquet file ({err})") from None
        return list(_iter_json_lines(path))
    # A Hub id: datasets handles download and caching; offline this raises its own clear error.
    import datasets

    try:
        ds = datasets.load_dataset(path, data_dir=data_dir, split=split or "train")
    except Exception as err:  # network or name errors: say what to do instead
        raise DataError(
            path,
            None,
            None,
            f"could not load from the Hugging Face Hub ({type(err).__name__}: {err}); "
            "pass a local .jsonl/.jsonl.gz/.parquet file instead",
        ) from None
    return ds.to_list()


def require_text(row: dict, name: str, source: str, index: int, allow_empty: bool = False) -> str:
    """The field as a string, or a DataError naming row and field."""
    if name not in row or row[name] is None:
        raise DataError(source, index, name, "missing")
    value = row[name]
    if not isinstance(value, str):
        raise DataError(source, index, name, f"expected text, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(source, index, name, "empty text")
    return value
