"""Batch inference at scale: one scoring job spread over the processes of a launch, resumable.

``hsrm score`` and ``hsrm evaluate`` score through :class:`ShardedScoring`, in one process or
under ``torchrun --nproc_per_node N -m hsrm score …`` / ``accelerate launch -m hsrm score …``
(on one node or several):

* The sequences, in token-id order (so that those sharing a prompt are neighbours), are cut into
  contiguous **shards** of about equal token counts (at least
  ``MIN_SHARDS`` of them, at most ``SHARD_SEQUENCES`` sequences each). The cut depends on the data
  alone, never on the number of processes, and each shard is scored by the one engine
  (:func:`hsrm.engine.score_sequences`) exactly as a one-process run scores it: the output is the
  same bytes with 1 or N processes. Contiguous shards keep a Best-of-N group's responses together.
* Shards go to processes by token count, largest first to the least loaded (so no rank idles while
  another has a long tail), and every process receives every reward at the end (one all-gather);
  the caller's rank 0 writes.
* With a parts folder (``OUTPUT.parts/``), each finished shard is written there atomically, with a
  run record saying which model, data and options it came from (:func:`hsrm.files.claimed_run_folder`).
  Rerunning the same command reuses the finished shards and says how many sequences it reused; a
  rerun with another model, data or options is refused in one line. The caller removes the folder
  after writing its output.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import score_sequences
from .errors import InputError

logger = logging.getLogger(__name__)

SHARD_SEQUENCES = 2048  # at most this many sequences per shard: a killed job loses at most one shard per rank
MIN_SHARDS = 16  # at least this many shards (when there are enough sequences): the ranks' loads even out
PART_PREFIX = "part-"


def process_group() -> tuple[int, int]:
    """(rank, world size) of this process: from the torch process group, which is started here when a
    launcher (torchrun, accelerate launch) set ``WORLD_SIZE`` > 1 and nothing started it yet."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # gloo on CPU, nccl on GPUs; sets this process's device from LOCAL_RANK
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_from_processes(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order, on every process (one all-gather of pickled objects)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    return everyone


def contiguous_shards(lengths: Sequence[int], multiple: int = 1) -> list[range]:
    """Contiguous ranges of about equal token counts: about ``MIN_SHARDS`` of them (fewer when there
    are fewer batches), each a whole number of ``multiple`` sequences (a batch; the last may be short)
    and at most ``SHARD_SEQUENCES``. Depends on ``lengths`` and ``multiple`` alone, never on the processes.

    >>> contiguous_shards([5] * 3)
    [range(0, 1), range(1, 2), range(2, 3)]
    >>> [len(r) for r in contiguous_shards([1] * 40)]
    [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1]
    >>> [len(r) for r in contiguous_shards([1] * 40, multiple=8)]
    [8, 8, 8, 8, 8]
    """
    multiple = max(1, int(multiple))
    cap = max(multiple, SHARD_SEQUENCES // multiple * multiple)
    target = sum(lengths) / max(1, min(MIN_SHARDS, -(-len(lengths) // multiple)))  # tokens per shard
    shards, start, held = [], 0, 0
    for i, length in enumerate(lengths):
        held += length
        size = i + 1 - start
        if size % multiple == 0 and (held >= target or size >= cap):
            shards.append(range(start, i + 1))
            start, held = i + 1, 0
    if start < len(lengths):
        shards.append(range(start, len(lengths)))
    return shards


def assign_shards(tokens: Sequence[int], world: int) -> list[list[int]]:
    """Shard indices per rank, each rank's in order: largest shards first, each to the rank with the
    fewest tokens so far.

    >>> assign_shards([10, 1, 1, 8], 2)
    [[0], [1, 2, 3]]
    """
    loads, owned = [0] * world, [[] for _ in range(world)]
    for shard in sorted(range(len(tokens)), key=lambda s: (-tokens[s], s)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owned[rank].append(shard)
        loads[rank] += tokens[shard]
    return [sorted(shards) for shards in owned]


def sequences_digest(sequences: Sequence[Sequence[int]]) -> str:
    """SHA-256 of the token ids: the data, its template and its truncation, as the engine sees them."""
    digest = hashlib.sha256()
    for ids in sequences:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def model_identity(path: str) -> dict[str, Any]:
    """What names a model's weights cheaply: its folder, config.json's bytes, each weight file's size
    and time (hashing gigabytes of weights on every run would cost more than a shard)."""
    from .files import file_fingerprint

    folder = Path(path)
    if not folder.is_dir():
        return {"model": str(path)}
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {
        "model": str(folder.resolve()),
        "config": file_fingerprint(folder / "config.json"),
        "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights],
    }


def parts_folder(output: str | os.PathLike) -> Path:
    """Where a job writing ``output`` keeps its finished shards."""
    return Path(f"{output}.parts")


def remove_parts(folder: str | os.PathLike) -> None:
    """Delete a parts folder after the output is written: only the part files and the run's record,
    then the folder if nothing else is left (hsrm never deletes what it did not write)."""
    from .files import RUN_RECORD

    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if (path.name.startswith(PART_PREFIX) and path.suffix == ".npy") or path.name == RUN_RECORD:
            path.unlink()
    if not any(folder.iterdir()):
        shutil.rmtree(folder)


class ShardedScoring:
    """``score_sequences`` over shards, spread over this launch's processes, kept in ``parts``.

    ``key`` says what defines the results besides the token ids (the model, the engine's options);
    the parts folder's run record holds it, so a rerun reuses shards only when both agree."""

    def __init__(self, parts: str | os.PathLike | None = None, key: dict[str, Any] | None = None):
        self.parts = Path(parts) if parts is not None else None
        self.key = dict(key or {})
        self.rank, self.world = process_group()
        self.reused = self.scored = 0  # sequences taken from the parts folder, and scored now (all ranks)

    # -- the parts folder
    def part_file(self, shard: int) -> Path:
        return self.parts / f"{PART_PREFIX}{shard:06d}.npy"

    @contextmanager
    def claimed_parts(self, key: dict[str, Any]):
        from .files import claimed_run_folder

        if self.parts is None:
            yield
            return

        def wait_for_all() -> None:
            if self.world > 1:
                import torch.distributed as dist

                dist.barrier()

        with claimed_run_folder(
            self.parts,
            key,
            flag="--output",  # the parts folder belongs to the output: another --output starts afresh
            overwrite_flag=None,
            main_process=self.rank == 0,
            wait_for_all=wait_for_all,
        ):
            yield

    def remove_parts(self) -> None:
        """Delete the parts folder once the output is written (rank 0; see :func:`remove_parts`)."""
        if self.parts is not None and self.rank == 0:
            remove_parts(self.parts)

    # -- scoring
    def score(self, model, sequences: Sequence[Sequence[int]], **engine: Any) -> torch.Tensor:
        """What ``score_sequences(model, sequences, **engine)`` returns, computed shard by shard."""
        from tqdm.auto import tqdm

        from .files import atomic_save_npy, read_arrays

        # In token-id order, sequences that share a prompt sit side by side, so a shard keeps a
        # pair's or a Best-of-N group's members together and the engine computes their prompt once
        # (input order would split pairwise evaluation's all-chosen-then-all-rejected lists).
        order = sorted(range(len(sequences)), key=lambda i: sequences[i])
        sequences = [sequences[i] for i in order]
        shards = contiguous_shards([len(s) for s in sequences], multiple=engine.get("batch_size", 1))
        tokens = [sum(len(sequences[i]) for i in shard) for shard in shards]
        mine = assign_shards(tokens, self.world)[self.rank]
        plain = {k: v for k, v in engine.items() if k not in ("progress", "desc")}
        key = {
            **self.key,
            "sequences": sequences_digest(sequences),
            "shards": len(shards),
            "engine": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in plain.items()},
        }
        if self.world > 1:
            logger.info(
                "rank %d of %d: %d of %d shards, %d sequences, %d of %d tokens",
                self.rank,
                self.world,
                len(mine),
                len(shards),
                sum(len(shards[s]) for s in mine),
                sum(tokens[s] for s in mine),
                sum(tokens),
            )
        values: dict[int, torch.Tensor] = {}
        reused = scored = 0
        with self.claimed_parts(key):
            show = bool(engine.get("progress")) and self.rank == 0
            for shard in tqdm(mine, desc=engine.get("desc", "scoring"), unit="shard", disable=not show):
                if self.parts is not None and self.part_file(shard).exists():
                    values[shard] = torch.from_numpy(np.array(read_arrays(self.part_file(shard), "part")))
                    reused += len(shards[shard])
                    continue
                subset = [sequences[i] for i in shards[shard]]
                values[shard] = score_sequences(model, subset, **{**plain, "progress": False})
                scored += len(subset)
                if self.parts is not None:
                    atomic_save_npy(self.part_file(shard), values[shard].numpy())
            parts = gather_from_processes((values, reused, scored))  # one collective: rewards and counts
        gathered = {shard: tensor for part, _, _ in parts for shard, tensor in part.items()}
        self.reused, self.scored = sum(part[1] for part in parts), sum(part[2] for part in parts)
        if not gathered:
            return score_sequences(model, [], **plain)
        if len(gathered) != len(shards):
            raise InputError(f"{len(shards) - len(gathered)} shards came back from no process")
        in_order = torch.cat([gathered[s] for s in range(len(shards))])
        results = torch.empty_like(in_order)
        results[torch.as_tensor(order)] = in_order
        return results
