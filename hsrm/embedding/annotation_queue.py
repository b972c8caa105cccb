"""`hsrm select`'s annotation queue: the state machine behind the live selection protocol, apart
from its command line (:mod:`hsrm.embedding.active_cli` parses the options and prints the summary).

    from hsrm.embedding.annotation_queue import select_step
    select_step("state", embeddings="pool.npz", batch_size=100)   # first call: a new queue, first batch
    select_step("state")                                           # every later call: ingest, retrain, next batch

The `hsrm select` file protocol (docs/active.md has a worked example)
--------------------------------------------------------------------
STATE_DIR holds everything; nothing else is written.

  state.json        the settings fixed at the first call (pool paths and shapes, model sizes,
                    seed), the strategy and batch size of the last call, and the round counter.
  batch_NNNN.jsonl  the pairs to annotate now, one JSON object per line:
                      {"pair_id": 17, "first": 3, "second": 8, …fields of the pairs file…, "label": null}
                    Annotators replace ``null`` with 1 (first preferred), 0 (second preferred) or
                    "skip" (neither: the pair is dropped, never asked again). ``true``/``false``,
                    "first"/"second" are accepted too. Do not change the other fields.
  labels.jsonl      every label ingested so far: {"pair_id", "first", "second", "label", "batch"}.
  model/            the BT-MLP trained on labels.jsonl (reload with hsrm.embedding.models.load_model).

Each call: if a batch is pending, read it; when every row has a label (or ``--partial``, which
keeps unlabelled rows in the pool), append the labels to labels.jsonl, retrain the model from
scratch on all of them, and write the next batch, chosen by the strategy from the pairs not yet
labelled, skipped or pending (a random subset of ``--candidates`` of them, 20,000 as in the
paper). The first batch has no model and is chosen by ``--initial-strategy`` (random).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingFileError
from ..files import atomic_write_json, atomic_write_jsonl, check_output, read_arrays
from .active import CandidatePairs, SelectionOptions, check_strategy, select_pairs
from .extract import EmbeddedData

STATE_FILE = "state.json"
LABELS_FILE = "labels.jsonl"
MODEL_DIR = "model"


# ----------------------------------------------------------------------------------------------
# the pool
# ----------------------------------------------------------------------------------------------


def load_pool_pairs(
    path: str | Path | None, n_items: int, prompt_ids: np.ndarray | None
) -> tuple[np.ndarray, list[dict]]:
    """Candidate pairs (N, 2) and per-pair extra fields to show annotators.

    ``.jsonl`` rows {"first": i, "second": j, …}: any other field (prompt, responses, ids) is
    copied into the batch files. ``.npy``: an (N, 2) integer array. No file: every in-prompt pair
    of the pool's ``prompt_ids`` (the .npz must carry them).
    """
    if path is None:
        if prompt_ids is None:
            raise InputError(
                "no --pairs given and the embeddings carry no prompt_ids to pair responses within; pass --pairs"
            )
        from ..metrics import group_by_prompt
        from .annotate import in_prompt_pairs

        pairs = in_prompt_pairs(group_by_prompt(prompt_ids))
        return pairs, [{"prompt_id": _plain(prompt_ids[a])} for a, _ in pairs]
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"pairs file {path} does not exist")
    if path.suffix == ".npy":
        pairs = read_arrays(path, "pairs array (.npy, shape (N, 2))")
        extras = [{} for _ in range(len(pairs))]
    else:
        from ..data.io import read_rows

        rows = read_rows(str(path))
        firsts, seconds, extras = [], [], []
        for index, row in enumerate(rows):
            for name in ("first", "second"):
                value = row.get(name)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise InputError(
                        f"{path} row {index}: `{name}` must be an integer row of the embeddings, got {value!r}"
                    )
            firsts.append(row["first"])
            seconds.append(row["second"])
            extras.append({k: v for k, v in row.items() if k not in ("first", "second", "label", "pair_id")})
        pairs = np.array([firsts, seconds], dtype=np.int64).T.reshape(-1, 2)
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise InputError(f"{path}: pairs must be (N, 2) integers, got {pairs.shape} {pairs.dtype}")
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n_items):
        raise InputError(
            f"{path}: pairs refer to rows {pairs.min()}..{pairs.max()} but the embeddings have {n_items} rows"
        )
    if len(pairs) and np.any(pairs[:, 0] == pairs[:, 1]):
        row = int(np.flatnonzero(pairs[:, 0] == pairs[:, 1])[0])
        raise InputError(f"{path}: row {row} pairs a response with itself")
    return pairs.astype(np.int64), extras


def _plain(value):
    return value.item() if hasattr(value, "item") else value


LABEL_VALUES = {1: 1, 0: 0, "first": 1, "second": 0, "1": 1, "0": 0, "skip": "skip"}


def parse_label(value: Any, where: str) -> int | str | None:
    """1 (first preferred), 0 (second preferred), "skip", or None (not labelled yet)."""
    if value is None:
        return None
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, float) and key in (0.0, 1.0):
        key = int(key)
    if key not in LABEL_VALUES:
        raise InputError(
            f'{where}: label {value!r} is not one of 1 (first preferred), 0 (second preferred), "skip" or null'
        )
    return LABEL_VALUES[key]


# ----------------------------------------------------------------------------------------------
# the queue's files
# ----------------------------------------------------------------------------------------------


def _read_state(state_dir: Path) -> dict | None:
    path = state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise InputError(f"{path} line {number}: not valid JSON ({err.msg}); fix the line and rerun") from err
    return rows


def pool_pair_problem(row: dict, pool_pairs: np.ndarray) -> str | None:
    """Why a row's ``pair_id``, ``first`` and ``second`` are not a pair of the pool, or None."""
    pair_id = row.get("pair_id")
    if isinstance(pair_id, bool) or not isinstance(pair_id, int) or not 0 <= pair_id < len(pool_pairs):
        return f"`pair_id` {pair_id!r} is not a pair of the pool; do not edit it"
    if [row.get("first"), row.get("second")] != [int(x) for x in pool_pairs[pair_id]]:
        return f"`first`/`second` do not match pair {pair_id} of the pool; do not edit them"
    return None


def read_labels(state_dir: Path, pool_pairs: np.ndarray) -> list[dict]:
    """The labels ingested so far, each checked against the pool: a labels.jsonl edited by hand (or
    not written by ``hsrm select``) is named with its line, not met later as a KeyError."""
    path = state_dir / LABELS_FILE
    labels = _read_jsonl(path)
    for number, row in enumerate(labels, 1):
        row = row if isinstance(row, dict) else {}
        if pool_pair_problem(row, pool_pairs) or row.get("label") not in (0, 1):
            raise InputError(
                f"{path} line {number}: not a label `hsrm select` ingested ({{pair_id, first, second, label 0|1}} "
                f"of a pool pair); got {row!r}. Labels go in the pending batch file, not in {LABELS_FILE}"
            )
    return labels


# ----------------------------------------------------------------------------------------------
# one call
# ----------------------------------------------------------------------------------------------


def select_step(
    state_dir: str | Path,
    *,
    embeddings: str | None = None,
    pairs: str | None = None,
    strategy: str | None = None,
    batch_size: int | None = None,
    initial_strategy: str | None = None,
    candidates: int | None = None,
    hidden: list[int] | None = None,
    max_epochs: int | None = None,
    seed: int | None = None,
    partial: bool = False,
) -> dict:
    """One turn of the live protocol (module docstring): open the queue, ingest the pending batch
    and retrain, then write the next batch. Returns a summary dict (the CLI prints it)."""
    if strategy is not None:
        check_strategy(strategy)
    if initial_strategy not in (None, "random", "det_xtx"):
        raise InputError(f"--initial-strategy must be random or det_xtx, got {initial_strategy!r}")
    state_dir = Path(state_dir)
    state, items, pool_pairs, extras = open_queue(
        state_dir,
        embeddings=embeddings,
        pairs=pairs,
        settings={"hidden": hidden, "seed": seed},
        changes={"strategy": strategy, "batch_size": batch_size, "candidates": candidates, "max_epochs": max_epochs},
        initial_strategy=initial_strategy,
    )
    pending_before = state["pending"]
    ingested = _ingest_pending(state_dir, state, pool_pairs, partial)
    if state["pending"] != pending_before:
        # record the ingestion at once, so a crash while retraining never ingests the batch twice
        atomic_write_json(state_dir / STATE_FILE, state)
    labels = read_labels(state_dir, pool_pairs)
    model = None
    train_seconds = None
    if ingested or (labels and not (state_dir / MODEL_DIR / "config.json").exists()):
        model, train_seconds = _retrain(state_dir, state, items, labels)
    elif labels:
        from .models import load_model

        model = load_model(state_dir / MODEL_DIR)

    # the pool still open: not labelled, not skipped (pending was just ingested or is re-chosen)
    closed = np.zeros(len(pool_pairs), dtype=bool)
    closed[[row["pair_id"] for row in labels]] = True
    closed[state["skipped"]] = True
    open_ids = np.flatnonzero(~closed)
    summary = {
        "state_dir": str(state_dir),
        "labels": len(labels),
        "ingested_now": ingested,
        "open_pairs": int(len(open_ids)),
    }
    if train_seconds is not None:
        summary["train_seconds"] = round(train_seconds, 2)
    if state["pending"] is not None:
        summary["pending"] = state["pending"]
        summary["message"] = "the pending batch is not fully labelled yet; label it (or pass --partial) and call again"
    elif len(open_ids) == 0:
        summary["message"] = "every pair of the pool is labelled or skipped; nothing left to select"
    else:
        summary.update(_write_next_batch(state_dir, state, model, items, pool_pairs, extras, labels, open_ids))
    atomic_write_json(state_dir / STATE_FILE, state)
    return summary


def open_queue(
    state_dir: Path,
    *,
    embeddings: str | None,
    pairs: str | None,
    settings: dict[str, Any],
    changes: dict[str, Any],
    initial_strategy: str | None,
) -> tuple[dict, np.ndarray, np.ndarray, list[dict]]:
    """(state, embeddings, pool pairs, their extra fields): a new queue from ``embeddings`` and
    ``pairs`` on the first call (STATE_DIR must not exist), else the one state.json describes, with the
    pool checked against it. ``settings`` are fixed at the first call; ``changes`` may change later."""
    state = _read_state(state_dir)
    if state is None:
        if embeddings is None:
            raise InputError(
                f"{state_dir} has no {STATE_FILE}: the first call needs --embeddings (and --pairs "
                "unless the .npz has prompt_ids)"
            )
        # a new STATE_DIR, never a folder of the user's (its model/ would be replaced) nor an input
        check_output(state_dir, inputs=[embeddings, pairs], flag="STATE_DIR", overwrite_flag=None)
        pool = EmbeddedData.load(embeddings)  # read before the folder is made: bad inputs leave nothing
        pool_pairs, extras = load_pool_pairs(pairs, len(pool.embeddings), pool.prompt_ids)
        state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "embeddings": str(Path(embeddings).resolve()),
            "pairs": None if pairs is None else str(Path(pairs).resolve()),
            "n_items": int(len(pool.embeddings)),
            "dim": int(pool.embeddings.shape[1]),
            "n_pairs": int(len(pool_pairs)),
            "strategy": changes["strategy"] or "dopt",
            "batch_size": int(changes["batch_size"] or 100),
            "initial_strategy": initial_strategy or "random",
            "candidates": int(changes["candidates"] or 20000),
            "hidden": settings["hidden"] or [64, 64, 64],
            "max_epochs": int(changes["max_epochs"] or 30),
            "seed": int(settings["seed"] or 0),
            "selection": {},
            "round": 0,
            "pending": None,
            "skipped": [],
        }
    else:
        for name, value in (("embeddings", embeddings), ("pairs", pairs), *settings.items()):
            if value is not None:
                raise InputError(
                    f"--{name} is fixed at the first call ({state.get(name)!r}); start a new STATE_DIR to change it"
                )
        pool = EmbeddedData.load(state["embeddings"])
        if pool.embeddings.shape != (state["n_items"], state["dim"]):
            raise InputError(
                f"{state['embeddings']} changed since the first call: shape {pool.embeddings.shape}, expected "
                f"{(state['n_items'], state['dim'])}"
            )
        pool_pairs, extras = load_pool_pairs(state["pairs"], len(pool.embeddings), pool.prompt_ids)
        if len(pool_pairs) != state["n_pairs"]:
            raise InputError(
                f"the pairs changed since the first call: {len(pool_pairs)} rows, expected {state['n_pairs']}"
            )
        state.update({name: value for name, value in changes.items() if value is not None})
    check_strategy(state["strategy"])
    if state["batch_size"] < 1:
        raise InputError(f"--batch-size must be positive, got {state['batch_size']}")
    return state, pool.embeddings, pool_pairs, extras


def _write_next_batch(
    state_dir: Path,
    state: dict,
    model,
    items: np.ndarray,
    pool_pairs: np.ndarray,
    extras: list[dict],
    labels: list[dict],
    open_ids: np.ndarray,
) -> dict:
    """Choose the next batch among ``open_ids`` (a random subset of ``candidates`` of them) by the
    strategy — the initial one while there is no model — write it, and mark it pending."""
    rng = np.random.default_rng([state["seed"], state["round"]])
    if len(open_ids) > state["candidates"]:
        open_ids = np.sort(rng.choice(open_ids, size=state["candidates"], replace=False))
    k = min(state["batch_size"], len(open_ids))
    strategy = state["strategy"] if model is not None else state["initial_strategy"]
    labelled_ids = np.array([row["pair_id"] for row in labels], dtype=np.int64)
    start = time.perf_counter()
    chosen = select_pairs(
        model,
        CandidatePairs(items, pool_pairs[open_ids]),
        k,
        strategy,
        labelled=CandidatePairs(items, pool_pairs[labelled_ids]) if len(labelled_ids) else None,
        seed=rng,
        options=SelectionOptions(**state["selection"]),
    )
    select_seconds = time.perf_counter() - start
    state["round"] += 1
    batch_path = state_dir / f"batch_{state['round']:04d}.jsonl"
    rows = []
    for pair_id in open_ids[chosen]:
        first, second = (int(x) for x in pool_pairs[pair_id])
        rows.append({"pair_id": int(pair_id), "first": first, "second": second, **extras[pair_id], "label": None})
    atomic_write_jsonl(batch_path, rows)
    state["pending"] = batch_path.name
    return {
        "batch_file": str(batch_path),
        "batch_size": int(k),
        "strategy": strategy,
        "select_seconds": round(select_seconds, 3),
        "round": state["round"],
    }


def _ingest_pending(state_dir: Path, state: dict, pool_pairs: np.ndarray, partial: bool) -> int:
    """Move the labels of the pending batch into labels.jsonl; returns how many were ingested.
    Leaves ``state['pending']`` set when the batch is not fully labelled and ``partial`` is off."""
    if state["pending"] is None:
        return 0
    path = state_dir / state["pending"]
    if not path.exists():
        raise MissingFileError(f"the pending batch {path} is missing; restore it (state.json points to it)")
    rows = _read_jsonl(path)
    parsed = []
    for number, row in enumerate(rows, 1):
        where = f"{path} line {number}"
        problem = pool_pair_problem(row, pool_pairs)
        if problem:
            raise InputError(f"{where}: {problem}")
        parsed.append((row["pair_id"], parse_label(row.get("label"), where)))
    missing = sum(label is None for _, label in parsed)
    if missing and not partial:
        return 0
    batch_number = int(path.stem.split("_")[-1])
    labels = read_labels(state_dir, pool_pairs)
    already = {row["pair_id"] for row in labels}
    new = []
    for pair_id, label in parsed:
        if label in (0, 1) and pair_id not in already:
            already.add(pair_id)
            first, second = (int(x) for x in pool_pairs[pair_id])
            new.append({"pair_id": pair_id, "first": first, "second": second, "label": label, "batch": batch_number})
    # rewritten whole, atomically: a crash leaves the old labels or the new ones, never half a line
    atomic_write_jsonl(state_dir / LABELS_FILE, labels + new)
    state["skipped"] = sorted(set(state["skipped"]) | {pair_id for pair_id, label in parsed if label == "skip"})
    state["pending"] = None
    return len(new)


def _retrain(state_dir: Path, state: dict, items: np.ndarray, labels: list[dict]):
    """Fit the BT-MLP from scratch on every label and save it to STATE_DIR/model."""
    from .models import fit_bt_mlp, save_model

    if len(labels) < 2:
        return None, None
    first = np.array([row["first"] for row in labels], dtype=np.int64)
    second = np.array([row["second"] for row in labels], dtype=np.int64)
    wins = np.array([row["label"] == 1 for row in labels])
    start = time.perf_counter()
    model = fit_bt_mlp(
        np.asarray(items[first]),
        np.asarray(items[second]),
        wins,
        hidden=tuple(state["hidden"]),
        max_epochs=state["max_epochs"],
        seed=state["seed"],
    )
    seconds = time.perf_counter() - start
    save_model(model, state_dir / MODEL_DIR)
    return model, seconds
