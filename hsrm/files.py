"""Atomic file writes: a reader never sees half a file, and the new file honours the umask.

The text goes to a new temporary file beside the target (opened with ``open(..., "x")``, so its
mode is what ``open()`` would give the target: 0666 minus the umask, unlike ``mkstemp``'s 0600),
then replaces the target with one ``os.replace``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO


def atomic_write(path: str | os.PathLike, write: Callable[[TextIO], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            write(handle)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_write_json(path: str | os.PathLike, payload: Any, **dumps: Any) -> Path:
    dumps.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(payload, **dumps) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    def write(handle: TextIO) -> None:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    return atomic_write(path, write)
