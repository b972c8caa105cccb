"""The one experiment runner of the lightweight path, shared by ``hsrm study`` and ``hsrm active``.

A study is a grid of named tasks: for ``hsrm study`` (study.py) a task is one setup, one fitted
reward model; for ``hsrm active`` (loop.py) one run of the online annotation loop. ``run_tasks``
runs the tasks not finished yet in joblib worker processes and writes each one's result to
``OUTPUT/runs/<name>.json`` (atomically) the moment it is done, so a study that is interrupted, or
grown by a new axis value, resumes with what is missing; ``write_tables`` then writes the results
table and the summary. The figures are drawn by plots.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


def expand_grid(axes: dict[str, Sequence]) -> list[dict]:
    """Every combination of the axes' values, as dicts keyed like ``axes``; the first axis varies slowest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def worker_plan(n_jobs: int, n_tasks: int) -> tuple[int, int]:
    """(worker processes, threads per process): ``n_jobs`` processes, but no more than there are CPUs
    (said in a log line) or tasks; each process gets its share of the CPUs, at most ``OMP_NUM_THREADS``."""
    cpus = os.cpu_count() or 1
    if n_jobs > cpus:
        logger.warning("n_jobs %d: this machine has %d CPUs, so %d worker processes run", n_jobs, cpus, cpus)
    workers = max(1, min(n_jobs, cpus, n_tasks))
    threads = max(1, cpus // workers)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        # respect a caller's thread cap: oversubscribed OpenMP (LightGBM, torch) spins and crawls
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    return workers, threads


def _named(name: str, run_task: Callable[..., Any], *args) -> tuple[str, Any]:
    return name, run_task(*args)


def run_tasks(
    out: Path,
    tasks: dict[str, Any],
    run_task: Callable[..., Any],
    shared: tuple = (),
    *,
    n_jobs: int = 1,
    desc: str = "study",
    progress: bool = True,
) -> dict[str, Any]:
    """Call ``run_task(task, *shared, threads)`` for every task (name → task) that has no
    ``out/runs/<name>.json`` yet, in up to ``n_jobs`` processes (one: in this process), and store each
    JSON result there as it arrives. Returns name → result for every task, in the order of ``tasks``."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    todo = [name for name in tasks if not (runs / f"{name}.json").exists()]
    workers, threads = worker_plan(n_jobs, len(todo))
    logger.info(
        "%s: %d tasks (%d already done), %d worker processes × %d threads",
        desc,
        len(tasks),
        len(tasks) - len(todo),
        workers,
        threads,
    )
    jobs = (delayed(_named)(name, run_task, tasks[name], *shared, threads) for name in todo)
    finished = Parallel(n_jobs=workers, return_as="generator_unordered")(jobs)
    for name, result in tqdm(finished, total=len(todo), desc=desc, disable=None if progress else True):
        atomic_write_json(runs / f"{name}.json", result, indent=None)
    return {name: json.loads((runs / f"{name}.json").read_text()) for name in tasks}


def write_tables(out: Path, table, summary: str, table_format: str = "csv") -> None:
    """``results.csv`` (or ``results.parquet``) and ``summary.md``, each written atomically."""
    if table_format == "parquet":
        atomic_write(out / "results.parquet", lambda handle: table.to_parquet(handle, index=False), binary=True)
    else:
        atomic_write(out / "results.csv", lambda handle: table.to_csv(handle, index=False))
    atomic_write_text(out / "summary.md", summary)
