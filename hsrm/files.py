"""Atomic file writes: a reader never sees half a file, and the new file honours the umask.

Every hsrm file that a reader may see while it is being written goes through here: text, JSON, JSONL
and NumPy arrays (``atomic_save_npy``/``atomic_save_npz``).

The text goes to a new temporary file beside the target (opened with ``open(..., "x")``, so its
mode is what ``open()`` would give the target: 0666 minus the umask, unlike ``mkstemp``'s 0600),
then replaces the target with one ``os.replace``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any], *, binary: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``.

    The handle is a UTF-8 text handle, or a binary one with ``binary=True``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as handle:
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


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """``numpy.save`` without pickles, atomically (the name is kept as given: no ``.npy`` added)."""
    import numpy as np

    return atomic_write(path, lambda handle: np.save(handle, np.asarray(array), allow_pickle=False), binary=True)


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez`` atomically (the name is kept as given: no ``.npz`` added)."""
    import numpy as np

    return atomic_write(path, lambda handle: np.savez(handle, **arrays), binary=True)


# ------------------------------------------------------------------------------ output safety
def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(folder: str | os.PathLike, *, skip_linked: bool = False) -> None:
    """Give every file and folder under ``folder`` the mode ``open()`` and ``mkdir`` would: libraries
    that write through a temporary file (safetensors, ``tempfile.mkdtemp``) leave 0600/0700, so on a
    shared machine nobody else could read a model hsrm wrote. ``skip_linked`` leaves hard-linked
    files alone (they are someone else's files too)."""
    mask = current_umask()
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink() or (skip_linked and path.is_file() and path.stat().st_nlink > 1):
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def new_staging_dir(target: str | os.PathLike) -> Path:
    """A new, empty folder beside ``target`` to assemble an output in (never one that already
    existed), with the umask's mode; the caller renames it into place or removes it."""
    import tempfile

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    os.chmod(staging, 0o777 & ~current_umask())
    return staging


@contextmanager
def staged_folder(
    target: str | os.PathLike, *, skip_linked: bool = False, keep_existing: bool = False
) -> Iterator[Path]:
    """Assemble a folder output in a new staging folder beside ``target`` and move it into place whole.

    The block fills the yielded folder; when it ends without error the files get the umask's modes
    (:func:`honour_umask`) and the folder replaces ``target``, which the caller has already cleared
    with :func:`check_output`. ``keep_existing``: a ``target`` that appeared meanwhile (another
    process won the race) is kept and the staging folder dropped. On any error nothing is moved and
    the staging folder is removed, so an interrupted run never leaves a half-written output."""
    import shutil

    target = Path(target)
    staging = new_staging_dir(target)
    try:
        yield staging
        honour_umask(staging, skip_linked=skip_linked)
        if target.exists() and not keep_existing:  # allowed by overwrite (check_output)
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if not target.exists():
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _is_same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    flag: str = "--output",
) -> Path:
    """The one output rule of every verb that writes (docs/reliability.md):

    * never write over one of the verb's inputs: the output may not be an input, nor a folder that
      holds one (paths compared resolved, symlinks followed);
    * never replace the working folder or a folder that holds it;
    * never replace something that exists (a file, or a folder that is not empty) unless
      ``overwrite`` is set.

    Raises ``ValueError`` with one line saying what exists and which flag allows it.
    """
    target = Path(path).expanduser().resolve()
    for item in inputs:
        if item is None or str(item) == "":
            continue
        source = Path(item).expanduser().resolve()
        if _is_same_or_inside(source, target):
            what = "is" if source == target else "holds"
            raise ValueError(f"{flag} {path} {what} the input {item}; it would be overwritten: choose another {flag}")
    if _is_same_or_inside(Path.cwd().resolve(), target):
        raise ValueError(f"{flag} {path} is the working folder or holds it; choose a new {flag}")
    exists = (
        target.is_file() or (target.is_dir() and any(target.iterdir())) or (target.exists() and not target.is_dir())
    )
    if exists and not overwrite:
        kind = "folder" if target.is_dir() else "file"
        raise ValueError(
            f"{flag} {path} already exists ({kind}); pass --overwrite to replace it, or choose another {flag}"
        )
    return target
