"""Embeddings of (prompt, response) pairs from a frozen backbone, with a resumable disk cache.

An embedding is the hidden state of the *last real token* (the last position whose attention
mask is 1) of the conversation rendered by the tokenizer's chat template and left-truncated to
``max_length`` — exactly the tokens and the position the full-LLM reward model reads
(hsrm.data.render.encode, hsrm.modeling.last_token_index), so the two paths see the same input.
Paper: Sun et al. (2024), appendix D.4 (Gemma-2b embeddings of every generated response).

Layers: ``layer=-1`` (default) is the final, normalised hidden state (what a score head sees);
``layer=k`` for 0 ≤ k ≤ L is ``hidden_states[k]`` (0 = token embeddings), negative values count
from the end of that list.

Cache layout (append-only, safe to interrupt)::

    CACHE/<model key>/layer_<k>/<shard>.vectors.npy   (n, d) float32, written first
    CACHE/<model key>/layer_<k>/<shard>.keys.npy      (n,) sha256 of the token ids, written last

A shard counts only once its keys file exists (written by atomic rename), so a run killed midway
loses at most the texts since the last flush; the next run embeds only keys not yet present. The
model key hashes the resolved model path, its config.json, the size and mtime of its weight files
and the compute dtype: retraining a folder in place starts a fresh cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..engine import DEFAULT_MAX_TOKENS
from ..errors import InputError
from ..files import atomic_save_npy, atomic_save_npz, read_arrays
from ..modeling import DEFAULT_MAX_LENGTH

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_EVERY = 512  # texts per cache shard: bounds what an interruption can lose


def text_key(token_ids: Sequence[int]) -> str:
    """Cache key of one input: sha256 of its final token ids (template and truncation included)."""
    return hashlib.sha256(np.asarray(token_ids, dtype=np.int64).tobytes()).hexdigest()


# ---------------------------------------------------------------- the cache


class EmbeddingCache:
    """Append-only store of embeddings for one (model, layer), keyed by :func:`text_key`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._where: dict[str, tuple[Path, int]] = {}  # key → (vectors file, row)
        self._open: dict[Path, np.ndarray] = {}
        for keys_file in sorted(self.folder.glob("*.keys.npy")):
            vectors_file = keys_file.with_name(keys_file.name.replace(".keys.npy", ".vectors.npy"))
            if not vectors_file.exists():
                logger.warning("cache shard %s has keys but no vectors; ignored", keys_file)
                continue
            for row, key in enumerate(np.load(keys_file, allow_pickle=False)):
                self._where[str(key)] = (vectors_file, row)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors of ``keys`` (all must be present), shape (len(keys), d)."""
        rows = []
        for key in keys:
            path, row = self._where[key]
            if path not in self._open:
                self._open[path] = np.load(path, mmap_mode="r", allow_pickle=False)
            rows.append(np.asarray(self._open[path][row], dtype=np.float32))
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append one shard. Vectors are written before keys, each by atomic rename."""
        if len(keys) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(keys) != len(vectors):
            raise InputError(f"EmbeddingCache.put: {len(keys)} keys for {len(vectors)} vectors")
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        vectors_file = self.folder / f"{stem}.vectors.npy"
        keys_file = self.folder / f"{stem}.keys.npy"
        atomic_save_npy(vectors_file, vectors)
        atomic_save_npy(keys_file, np.asarray(list(keys), dtype="U64"))
        for row, key in enumerate(keys):
            self._where[str(key)] = (vectors_file, row)


def model_cache_key(model_path: str, dtype_name: str) -> str:
    """A readable, collision-safe folder name for a backbone at a compute dtype."""
    digest = hashlib.sha256()
    digest.update(os.path.abspath(model_path).encode() if os.path.isdir(model_path) else model_path.encode())
    digest.update(dtype_name.encode())
    if os.path.isdir(model_path):
        config = Path(model_path) / "config.json"
        if config.exists():
            digest.update(config.read_bytes())
        for weights in sorted(Path(model_path).glob("*.safetensors")):
            stat = weights.stat()
            digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_path.rstrip("/")).name)[:40] or "model"
    return f"{name}-{dtype_name}-{digest.hexdigest()[:12]}"


# ---------------------------------------------------------------- the backbone


@dataclass
class Backbone:
    """A frozen transformer body (no head), its tokenizer, and where and how it runs."""

    model: object
    tokenizer: object
    path: str
    device: str
    dtype_name: str

    @property
    def num_hidden_states(self) -> int:
        """Entries of ``hidden_states``: the token embeddings plus one per layer."""
        return int(self.model.config.num_hidden_layers) + 1

    def resolve_layer(self, layer: int) -> int:
        """Layer index in [0, L]; −1 is the last (L)."""
        n = self.num_hidden_states
        index = layer if layer >= 0 else n + layer
        if not 0 <= index < n:
            raise InputError(f"layer {layer} is out of range for a model with {n - 1} layers (use −{n}…{n - 1})")
        return index

    def cache_key(self) -> str:
        return model_cache_key(self.path, self.dtype_name)


def load_backbone(name_or_path: str | None = None, *, device: str | None = None, dtype: str | None = None) -> Backbone:
    """The body of any decoder or sequence-classifier folder, loaded by
    :func:`hsrm.modeling.load_backbone_model`; bf16 on GPU and fp32 on CPU unless ``dtype`` says
    otherwise, and on GPU hsrm's default attention path, which the engine's packed layout needs."""
    import torch

    from ..default_model import resolve_model_path
    from ..modeling import default_attention, load_backbone_model, pick_device, torch_dtype

    path = resolve_model_path(name_or_path)
    where = pick_device(device)
    compute_dtype = torch_dtype(dtype or ("bfloat16" if where.type == "cuda" else "float32"))
    if not isinstance(compute_dtype, torch.dtype):  # "auto": the dtype keys the cache, so it must be named
        raise InputError("dtype auto: name the compute dtype (bfloat16, float16 or float32); it keys the cache")
    model, tokenizer = load_backbone_model(
        path, dtype=compute_dtype, device=where, attn_implementation=default_attention(where, compute_dtype)
    )
    return Backbone(model, tokenizer, path, str(where), str(compute_dtype).replace("torch.", ""))


# ---------------------------------------------------------------- embedding


@dataclass
class EmbedReport:
    """What one call did: inputs, distinct inputs, found in the cache, computed, forward passes."""

    inputs: int = 0
    distinct: int = 0
    from_cache: int = 0
    computed: int = 0
    shared: int = 0  # of those computed, read against a prompt computed once (share_prompts)
    forward_passes: int = 0
    truncated: int = 0
    seconds: float = 0.0
    cache_folder: str | None = None
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.inputs} inputs ({self.distinct} distinct): {self.from_cache} from cache, {self.computed} "
            f"embedded ({self.shared} of them against a prompt computed once) "
            f"in {self.forward_passes} batches, {self.truncated} left-truncated, {self.seconds:.1f} s"
        )


def _body_layout(body, layout: str) -> str:
    """:func:`hsrm.engine.choose_layout` for a body without a head: its explicit ``packed`` check
    (:func:`hsrm.packing.check_packing_support`) asks for a score head, which an embedding backbone has
    not; what packing needs of the body itself is an attention path that keeps packed sequences apart."""
    from ..engine import choose_layout
    from ..packing.attention import PACKING_ATTENTION, attention_implementation

    if layout != "packed":
        return choose_layout(body, layout)
    name = attention_implementation(body)
    if name not in PACKING_ATTENTION:
        raise InputError(
            f"--layout packed: attention {name!r} does not keep packed sequences apart; use padded "
            f"(or auto), or a backbone running one of {', '.join(PACKING_ATTENTION)}"
        )
    return "packed"


def embedding_batches(
    backbone: Backbone,
    sequences: list[list[int]],
    layer_index: int,
    *,
    layout: str = "auto",
    batch_size: int = 16,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    share_prompts: bool = True,
    stats: dict | None = None,
):
    """Yield ``(indices, states)``: hidden states (k, d) float32 at the last real token of the
    sequences at ``indices``, batched by the scoring engine (:func:`hsrm.engine.planned_batches`:
    length-sorted padded batches, or packed token-budget rows on CUDA with a varlen attention path;
    with ``share_prompts`` each common token-id prefix computed once, as in scoring) and read by
    :func:`hsrm.modeling.last_token_states`, the helper every reward is read through."""
    import torch

    from ..engine import planned_batches, to_device
    from ..modeling import last_token_states

    pad_id = backbone.tokenizer.pad_token_id if backbone.tokenizer.pad_token_id is not None else 0
    # the final, normalised state is last_hidden_state; any other layer needs every hidden state
    hidden_layer = None if layer_index == backbone.num_hidden_states - 1 else layer_index
    chosen = _body_layout(backbone.model, layout)
    with torch.inference_mode():
        for indices, batch in planned_batches(
            backbone.model,
            sequences,
            chosen,
            pad_id=pad_id,
            batch_size=batch_size,
            max_tokens=max_tokens,
            share_prompts=share_prompts,
            device=backbone.device,
            stats=stats,
        ):
            states = last_token_states(backbone.model, to_device(batch, backbone.device), hidden_layer=hidden_layer)
            yield indices, states.float().cpu().numpy()


def embed_conversations(
    backbone: Backbone,
    prompts: Sequence,
    responses: Sequence[str],
    *,
    layer: int = -1,
    max_length: int | None = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
    cache_dir: str | os.PathLike | None = None,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    layout: str = "auto",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    share_prompts: bool = True,
) -> tuple[np.ndarray, EmbedReport]:
    """(n, d) float32 embeddings of prompt + response conversations, and a report.

    prompts: chat-message lists (or plain strings, taken as one user turn); responses: strings.
    Identical inputs are embedded once; with ``cache_dir`` only inputs missing from the cache are
    embedded, in the engine's batches (:func:`embedding_batches`; ``layout``, ``batch_size``,
    ``max_tokens`` and ``share_prompts`` as in :func:`hsrm.engine.score_sequences`: length-sorted,
    longest first, so memory problems show at once; a prompt shared by several responses computed
    once), and flushed to the cache every ``flush_every`` texts. The missing inputs, in token-id
    order (a prompt's responses side by side, as ``hsrm score`` orders them), are cut into shards of
    whole batches (:mod:`hsrm.shards`) and,
    under torchrun or accelerate launch, spread over the processes, each of which returns every
    embedding; the shards (and so the batches) do not depend on the number of processes, so
    neither do the embeddings.
    """
    from tqdm.auto import tqdm

    from ..data.messages import to_messages
    from ..data.render import TruncationStats, encode_batch
    from ..shards import assign_shards, contiguous_shards, gather_from_processes, process_group

    if len(prompts) != len(responses):
        raise InputError(f"embed: {len(prompts)} prompts but {len(responses)} responses")
    if batch_size < 1:
        raise InputError(f"batch_size must be ≥ 1, got {batch_size}")
    start = time.perf_counter()
    layer_index = backbone.resolve_layer(layer)
    stats = TruncationStats()
    token_ids, cut = encode_batch(backbone.tokenizer, [to_messages(p) for p in prompts], list(responses), max_length)
    stats.add(cut)
    keys = [text_key(ids) for ids in token_ids]
    report = EmbedReport(inputs=len(keys), truncated=stats.truncated)
    first_row = {}
    for row, key in enumerate(keys):
        first_row.setdefault(key, row)
    report.distinct = len(first_row)

    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(Path(cache_dir) / backbone.cache_key() / f"layer_{layer_index}")
        report.cache_folder = str(cache.folder)
    vectors: dict[str, np.ndarray] = {}
    missing = [k for k in first_row if cache is None or k not in cache]
    report.from_cache = report.distinct - len(missing)
    missing.sort(key=lambda k: token_ids[first_row[k]])
    rank, world = process_group()
    if world > 1:  # every process has read the cache before any writes to it: the same `missing` everywhere
        import torch.distributed as dist

        dist.barrier()
    lengths = [len(token_ids[first_row[k]]) for k in missing]
    shards = contiguous_shards(lengths, multiple=batch_size)  # whole batches: the batches of one process
    mine = assign_shards([sum(lengths[i] for i in shard) for shard in shards], world)[rank]

    pending_keys: list[str] = []
    pending_vectors: list[np.ndarray] = []

    def flush():
        if cache is not None and pending_keys:
            cache.put(pending_keys, np.concatenate(pending_vectors))
        pending_keys.clear()
        pending_vectors.clear()

    def record(batch_keys: list[str], states: np.ndarray):
        report.forward_passes += 1
        report.computed += len(batch_keys)
        vectors.update(zip(batch_keys, states))
        pending_keys.extend(batch_keys)
        pending_vectors.append(states)
        progress.update(len(batch_keys))
        if len(pending_keys) >= flush_every:
            flush()

    progress = tqdm(
        total=sum(len(shards[s]) for s in mine),
        desc=f"embed (layer {layer_index})",
        unit="text",
        leave=False,
        disable=None if rank == 0 else True,
    )
    try:
        for shard_keys in ([missing[i] for i in shards[s]] for s in mine):
            shard_stats: dict = {}
            for indices, states in embedding_batches(
                backbone,
                [token_ids[first_row[k]] for k in shard_keys],
                layer_index,
                layout=layout,
                batch_size=batch_size,
                max_tokens=max_tokens,
                share_prompts=share_prompts,
                stats=shard_stats,
            ):
                batch_keys = [shard_keys[i] for i in indices]
                record(batch_keys, states)
            report.shared += shard_stats.get("shared_sequences", 0)
    finally:
        progress.close()
        flush()  # what was computed survives an interruption (KeyboardInterrupt included)
    if world > 1:
        parts = gather_from_processes((vectors, report.computed, report.forward_passes, report.shared))
        vectors = {key: vec for part, *_ in parts for key, vec in part.items()}
        report.computed, report.forward_passes, report.shared = (sum(p[k] for p in parts) for k in (1, 2, 3))

    cached_keys = [k for k in first_row if k not in vectors]
    if cached_keys:
        for key, vec in zip(cached_keys, cache.get(cached_keys)):
            vectors[key] = vec
    dim = next(iter(vectors.values())).shape[-1] if vectors else 0
    out = np.empty((len(keys), dim), dtype=np.float32)
    for row, key in enumerate(keys):
        out[row] = vectors[key]
    report.seconds = time.perf_counter() - start
    logger.info("embed: %s", report.summary())
    return out, report


# ---------------------------------------------------------------- files in, .npz out


@dataclass
class EmbeddedData:
    """What ``hsrm embed`` writes: one row per response, prompts grouped, pairs when the input had them.

    :meth:`load` is the one reader of embedding files — ``hsrm fit``, ``hsrm study``, ``hsrm active``
    pools and ``hsrm select`` all read through it, with one contract: ``embeddings`` (n, dim), finite,
    is required; ``prompt_ids``, ``golden`` and the pairs are optional, and a verb that needs one asks
    for it with :meth:`require`, which names the missing array and how to write it.
    """

    embeddings: np.ndarray
    prompt_ids: np.ndarray | None = None
    golden: np.ndarray | None = None
    pair_first: np.ndarray | None = None
    pair_second: np.ndarray | None = None
    pair_first_wins: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    path: str | None = field(default=None, repr=False, compare=False)  # the file it was read from, for messages

    def save(self, path: str | os.PathLike) -> None:
        arrays = {"embeddings": self.embeddings, "meta": np.asarray(json.dumps(self.meta))}
        for name in ("prompt_ids", "golden", "pair_first", "pair_second", "pair_first_wins"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        atomic_save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddedData:
        """An ``.npz`` as ``hsrm embed`` (or :meth:`ResponsePool.save`) writes it, or an ``.npy`` array
        (n, dim) of embeddings alone, which is memory-mapped: a large pool is read as it is used."""
        path = Path(path)
        if path.suffix == ".npy":
            data = {"embeddings": read_arrays(path, "embeddings array (.npy, shape (n, dim))", mmap=True)}
        else:
            data = read_arrays(path, "embeddings file (write one with `hsrm embed`)")
            if not isinstance(data, dict) or "embeddings" not in data:
                found = ", ".join(data) if isinstance(data, dict) else "one unnamed array"
                raise InputError(
                    f"{path}: not an embeddings file: no `embeddings` array (found {found or 'none'}); "
                    "give an .npz from `hsrm embed` or an .npy of shape (n, dim)"
                )
        embeddings = data["embeddings"]
        if embeddings.ndim != 2:
            raise InputError(f"{path}: embeddings must be 2-D (n, dim), got shape {embeddings.shape}")
        broken = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        if len(broken):  # a model fitted on them scores NaN everywhere, and its accuracy reads 0.0
            shown = ", ".join(str(row + 1) for row in broken[:10]) + (", …" if len(broken) > 10 else "")
            raise InputError(
                f"{path}: {len(broken)} of {len(embeddings)} embedding rows hold NaN or infinite values "
                f"(rows {shown}, counting from 1); embed them again or drop them"
            )
        for name in ("prompt_ids", "golden"):
            if name in data and len(data[name]) != len(embeddings):
                raise InputError(f"{path}: {len(data[name])} `{name}` for {len(embeddings)} embeddings; one per row")
        names = ("prompt_ids", "golden", "pair_first", "pair_second", "pair_first_wins")
        meta = json.loads(str(data["meta"])) if "meta" in data else {}
        return cls(embeddings, *(data.get(name) for name in names), meta=meta, path=str(path))

    def require(self, *names: str, purpose: str) -> None:
        """Refuse, in one line, a file that lacks an array ``purpose`` needs."""
        how = {
            "prompt_ids": "embed it with `hsrm embed` (which groups responses by prompt)",
            "golden": "embed with --golden-column or --golden-model",
        }
        for name in names:
            if getattr(self, name) is None:
                raise InputError(
                    f"{self.path or 'these embeddings'}: no `{name}` array, which {purpose} needs; "
                    f"{how.get(name, 'embed a pairwise file with `hsrm embed`')}"
                )

    @property
    def has_pairs(self) -> bool:
        return self.pair_first is not None

    def pool(self):
        """As a :class:`ResponsePool` (needs golden rewards and prompt ids)."""
        from .annotate import ResponsePool

        self.require("golden", "prompt_ids", purpose="a pool of responses with a golden reward")
        return ResponsePool(self.embeddings, self.golden, self.prompt_ids)


# what `hsrm embed --data-format` reads: prompt + response rows, or one of the pairwise formats
EmbedFormat = Literal["auto", "responses", "pairs", "helpsteer2_preference", "helpsteer3_preference", "rewardbench"]


def _prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def read_conversations(
    source: str,
    *,
    limit: int | None = None,
    golden_column: str | None = None,
    on_error: str = "raise",
    data_format: EmbedFormat = "auto",
    split: str | None = None,
):
    """Responses from a file of pairs (``chosen``/``rejected``, HH-RLHF transcripts included, or
        another pairwise ``data_format``) or of single responses (``prompt``, ``response``[, golden
        column]). ``auto`` tells them apart by the first row (:func:`hsrm.data.auto.format_of_row`, which
    also knows the pairwise formats by their fields); ``split`` keeps one split (of a Hub
        dataset, or a file's ``split`` column; default: every row).

        Returns (prompts, responses, prompt_ids, golden or None, pairs or None) where pairs is
        (first, second, first_wins) indexing the responses (chosen first, so first_wins is all True).
    """
    from ..data.io import DataError, in_split, is_local_source, read_rows
    from ..data.messages import response_text, to_messages

    rows = read_rows(source, split=split)
    if not rows:
        raise DataError(source, None, None, "no rows" + (f" in split {split!r}" if split else ""))
    first = rows[0] if isinstance(rows[0], dict) else {}
    if data_format == "auto":
        from ..data.auto import format_of_row

        data_format = format_of_row(first, source, responses=True)
    prompts, responses, golden = [], [], []
    prompt_index: dict[str, int] = {}
    prompt_ids = []

    def add(prompt, response, score=None):
        key = _prompt_key(prompt)
        prompt_ids.append(prompt_index.setdefault(key, len(prompt_index)))
        prompts.append(prompt)
        responses.append(response)
        golden.append(score)

    if data_format != "responses":
        from ..data.auto import load_pairs_any

        pairs = load_pairs_any(  # the loader logs what it kept and dropped
            source, split=split or "train", data_format=data_format, limit=limit, on_error=on_error
        )
        firsts, seconds = [], []
        for row in pairs:
            firsts.append(len(responses))
            add(row["prompt"], row["chosen"])
            seconds.append(len(responses))
            add(row["prompt"], row["rejected"])
        pair_arrays = (np.asarray(firsts), np.asarray(seconds), np.ones(len(firsts), dtype=bool))
        golden_array = None
        if golden_column:
            raise InputError("--golden-column applies to single-response rows; for pairs use --golden-model")
    else:
        if "response" not in first:
            raise InputError(
                f"{source}: rows need `prompt` + `response` (or `chosen` + `rejected`); found {sorted(first)}"
            )
        if split is not None and is_local_source(source):  # a Hub dataset's split was read as asked
            rows = [row for row in rows if isinstance(row, dict) and in_split(row.get("split"), split)]
        for index, row in enumerate(rows[:limit] if limit else rows):
            score = None
            if golden_column:
                value = row.get(golden_column)
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise DataError(source, index, golden_column, "missing or not a number (the golden reward column)")
                score = float(row[golden_column])
            add(to_messages(row.get("prompt"), source, index), response_text(row.get("response"), source, index), score)
        pair_arrays = None
        golden_array = np.asarray(golden, dtype=np.float64) if golden_column else None
    return prompts, responses, np.asarray(prompt_ids, dtype=np.int64), golden_array, pair_arrays
