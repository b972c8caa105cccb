"""Atomic file writes: a reader never sees half a file, and the new file honours the umask.

Every hsrm file that a reader may see while it is being written goes through here: text, JSON, JSONL
and NumPy arrays (``atomic_save_npy``/``atomic_save_npz``).

The text goes to a new temporary file beside the target (opened with ``open(..., "x")``, so its
mode is what ``open()`` would give the target: 0666 minus the umask, unlike ``mkstemp``'s 0600),
then replaces the target with one ``os.replace``.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, TextIO

from .errors import InputError

logger = logging.getLogger(__name__)


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


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by ``None``: ``json.dumps`` would write the literals
    ``NaN``/``Infinity``, which are not JSON (``JSON.parse`` and most readers refuse the whole file).
    Verbs refuse non-finite rewards before they get here; this keeps a file valid whatever slips by
    (an undefined metric, such as a correlation over one value, reads as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def json_text(payload: Any, **dumps: Any) -> str:
    """``json.dumps`` that always writes valid JSON (:func:`finite_or_null`; ``allow_nan=False`` checks it)."""
    try:
        return json.dumps(payload, allow_nan=False, **dumps)
    except ValueError:  # a non-finite float somewhere: write null instead
        return json.dumps(finite_or_null(payload), allow_nan=False, **dumps)


def atomic_write_json(path: str | os.PathLike, payload: Any, **dumps: Any) -> Path:
    dumps.setdefault("indent", 2)
    return atomic_write_text(path, json_text(payload, **dumps) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    def write(handle: TextIO) -> None:
        for row in rows:
            handle.write(json_text(row, ensure_ascii=False) + "\n")

    return atomic_write(path, write)


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """``numpy.save`` without pickles, atomically (the name is kept as given: no ``.npy`` added)."""
    import numpy as np

    return atomic_write(path, lambda handle: np.save(handle, np.asarray(array), allow_pickle=False), binary=True)


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez`` atomically (the name is kept as given: no ``.npz`` added)."""
    import numpy as np

    return atomic_write(path, lambda handle: np.savez(handle, **arrays), binary=True)


def read_arrays(path: str | os.PathLike, what: str, *, mmap: bool = False):
    """The arrays of an ``.npz`` (a dict, read whole) or the array of an ``.npy``; or one line naming
    the file when it is missing, empty, truncated or not NumPy's format. NumPy raises EOFError,
    BadZipFile, zlib or ValueError errors for those, from deep inside and naming no file.
    ``mmap``: map an ``.npy`` instead of reading it."""
    import zipfile
    import zlib

    import numpy as np

    from .errors import DamagedFileError, MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such {what}")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {name: loaded[name] for name in loaded.files}
        return loaded
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        size = path.stat().st_size
        state = "the file is empty" if size == 0 else f"{size} bytes, damaged or truncated: {err}"
        raise DamagedFileError(f"{path}: not a readable {what} ({state}); write it again") from None


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
    for stale in sorted(target.parent.glob(f".{glob.escape(target.name)}.*.staging")):
        # a run that was killed mid-save; it may hold a token or half a model: left for you to inspect
        logger.warning("%s is left from an interrupted save (not used, not removed); delete it when done", stale)
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
    own_folders: Iterable[str | os.PathLike] = (),
    overwrite_flag: str | None = "--overwrite",
) -> Path:
    """The one output rule of every verb that writes (docs/reliability.md):

    * never write into or over one of the verb's inputs: the output may not be an input, a folder
      that holds one, nor anything inside an input folder (whichever file is named: a model's
      ``config.json`` is the model) — except inside ``own_folders``, the sub-folders of an input
      where the verb keeps its own outputs (``hsrm evaluate``'s ``<model>/evaluation/``);
      paths compared resolved, symlinks followed;
    * never replace the working folder or a folder that holds it;
    * never replace something that exists (a file, or a folder that is not empty) unless
      ``overwrite`` is set (``overwrite_flag``: the flag that sets it; None: the verb has none).

    Raises ``ValueError`` with one line saying what exists and which flag allows it.
    """
    target = Path(path).expanduser().resolve()
    allowed = [Path(folder).expanduser().resolve() for folder in own_folders]
    for item in inputs:
        if item is None or str(item) == "":
            continue
        source = Path(item).expanduser().resolve()
        if _is_same_or_inside(source, target):
            what = "is" if source == target else "holds"
            raise InputError(f"{flag} {path} {what} the input {item}; it would be overwritten: choose another {flag}")
        if source.is_dir() and source in target.parents and not any(_is_same_or_inside(target, a) for a in allowed):
            raise InputError(
                f"{flag} {path} is inside the input folder {item}; it would change that input: choose a path outside it"
            )
    if _is_same_or_inside(Path.cwd().resolve(), target):
        raise InputError(f"{flag} {path} is the working folder or holds it; choose a new {flag}")
    exists = (
        target.is_file() or (target.is_dir() and any(target.iterdir())) or (target.exists() and not target.is_dir())
    )
    if exists and not overwrite:
        kind = "folder" if target.is_dir() else "file"
        allow = f"pass {overwrite_flag} to replace it, or " if overwrite_flag else ""
        raise InputError(f"{flag} {path} already exists ({kind}); {allow}choose another {flag}")
    return target


# ------------------------------------------------------------------------------ runs that resume
RUN_RECORD = ".hsrm_run.json"  # inside a run's output folder: what defines its results


def check_run_folder(
    folder: str | os.PathLike,
    key: dict[str, Any],
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    resume: bool = True,
    flag: str = "--output",
    overwrite_flag: str | None = "--overwrite",
) -> str:
    """The output rule (:func:`check_output`) for a run that can be continued (train, rloo, study,
    active, select): its folder is new or empty ("new"), or holds this run's own record
    (:data:`RUN_RECORD`) with the same ``key`` — everything that defines the results: data
    fingerprint, setup, seeds — and ``resume`` is on ("resume"), or ``overwrite`` allows replacing
    it ("replace"). A folder holding another run, an input model or anything else is refused in one
    line; an input is refused even with ``overwrite``. ``overwrite_flag``: the flag that allows
    replacing (None: the verb has none)."""
    target = check_output(folder, inputs=inputs, overwrite=True, flag=flag)  # the input and working-folder rules
    key = as_recorded(key)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return "new"
    if overwrite:
        return "replace"
    or_replace = f", or pass {overwrite_flag} to replace it" if overwrite_flag else ", or remove it first"
    recorded = read_run_record(target)
    if recorded is None:
        raise InputError(
            f"{flag} {folder} already exists and holds no run of this kind to resume (no {RUN_RECORD}); "
            f"choose another {flag}{or_replace}"
        )
    if recorded != key:
        changed = sorted(name for name in set(recorded) | set(key) if recorded.get(name) != key.get(name))
        raise InputError(
            f"{flag} {folder} holds a run with other inputs ({', '.join(changed)} differ); its results would "
            f"be mixed with this run's: choose another {flag}{or_replace}"
        )
    if not resume:
        raise InputError(
            f"{flag} {folder} already exists (a run of the same setup); resume it, choose another {flag}{or_replace}"
        )
    return "resume"


@contextmanager
def claimed_run_folder(
    folder: str | os.PathLike,
    key: dict[str, Any],
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    resume: bool = True,
    flag: str = "--output",
    overwrite_flag: str | None = "--overwrite",
    main_process: bool = True,
    wait_for_all: Callable[[], Any] = lambda: None,
) -> Iterator[str]:
    """Hold ``folder`` for a run while the block runs: its lock (:func:`output_lock`), the output rule
    (:func:`check_run_folder`), then — new or replaced — an empty folder with this run's record.
    Yields "new", "resume" or "replace".

    Several processes of one run (torchrun, accelerate) count as one owner: only ``main_process``
    takes the lock and writes; every process checks, and ``wait_for_all`` (a barrier) makes the
    others check before the main one writes and start after it has."""
    import shutil

    inputs = list(inputs)
    with output_lock(folder, flag=flag) if main_process else nullcontext():
        state = check_run_folder(
            folder, key, inputs=inputs, overwrite=overwrite, resume=resume, flag=flag, overwrite_flag=overwrite_flag
        )
        wait_for_all()
        target = Path(folder)
        if main_process and state != "resume":
            if state == "replace" and target.exists():
                logger.warning("%s: removing what %s holds (a previous run)", overwrite_flag, target)
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            target.mkdir(parents=True, exist_ok=True)
            write_run_record(target, key)
        wait_for_all()
        yield state


def as_recorded(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` as its record reads back (tuples as lists, paths as text), so the two compare equal."""
    return json.loads(json.dumps(key, default=str))


def read_run_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded.get("key") if isinstance(recorded, dict) else None


def write_run_record(folder: str | os.PathLike, key: dict[str, Any]) -> Path:
    """Mark ``folder`` as this run's own (:func:`check_run_folder` recognises it on a rerun)."""
    return atomic_write_json(Path(folder) / RUN_RECORD, {"key": as_recorded(key)})


def file_fingerprint(path: str | os.PathLike | None) -> str | None:
    """The SHA-256 of a file's bytes (of every file, in name order, for a folder): a rerun with other
    data has another fingerprint, whatever the file is called."""
    import hashlib

    if path is None:
        return None
    source = Path(path)
    if not source.exists():
        return str(path)  # a Hub id or a synthetic source: its name is what defines it
    digest = hashlib.sha256()
    for file in sorted(source.rglob("*")) if source.is_dir() else [source]:
        if file.is_file():
            digest.update(str(file.relative_to(source) if source.is_dir() else "").encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ one writer at a time
class OutputLocked(InputError):
    """Another live process writes to the same output."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock of ``output`` lies beside it, so that replacing the output whole keeps the lock."""
    target = Path(output).expanduser().resolve()
    return target.parent / f".{target.name}.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextmanager
def output_lock(output: str | os.PathLike, *, flag: str = "--output") -> Iterator[Path]:
    """Hold the lock of ``output`` while the block runs: one writer per output. The lock file
    (``.NAME.lock`` beside it) is created atomically (``O_CREAT | O_EXCL``) and names its owner's pid
    and host; a second writer is refused in one line naming the first. A lock left by a process that
    died (same host, pid gone) is taken over with a warning. Only one process of a multi-process run
    (its main process) takes it: the others write where that one says."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    for _attempt in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                held = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                held = {}  # being written this instant, or damaged: read it again
            pid, host = held.get("pid"), held.get("host")
            if isinstance(pid, int) and host == owner["host"] and not _process_alive(pid):
                logger.warning("%s: taking over the lock of process %d on %s, which is gone", output, pid, host)
                with suppress(OSError, ValueError):
                    if json.loads(path.read_text(encoding="utf-8")) == held:  # not a newer owner's meanwhile
                        path.unlink()
                continue
            if pid is None:
                import time

                time.sleep(0.2)
                continue
            raise OutputLocked(
                f"{flag} {output} is being written by process {pid} on {host} (lock {path}); wait for it to "
                "finish or choose another output"
            ) from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(owner))
        break
    else:
        raise OutputLocked(f"{flag} {output}: could not take the lock {path}; remove it if no run is writing there")
    try:
        yield path
    finally:
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == owner["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass
