"""Padding-free packing and token-budget batching for reward-model training and scoring.

A micro-batch of sequences becomes one row: the token ids concatenated, with position ids that
restart at 0 for every sequence and no attention mask. transformers recognises that layout from
the position ids alone and keeps attention inside each sequence, so no pad token is ever computed
(TRL pads every batch to its longest sequence and reaches a quarter of the unpadded throughput:
docs/speed.md, anchors.md). The reward is read at each sequence's last token, exactly as
:func:`hsrm.modeling.reward_outputs` reads it at the last position whose mask is 1 in a padded batch.

How each attention path confines attention to a sequence (transformers 5.23):

* ``eager``, ``sdpa``: ``masking_utils.find_packed_sequence_indices`` turns the position ids into
  sequence ids (a new sequence wherever the position does not grow by exactly 1) and
  ``create_causal_mask`` builds a (1, 1, T, T) block-diagonal causal mask. Exact, but the mask is
  materialised: O(T²) memory and time (10,500 tokens/s on an H100 for sdpa, anchors.md).
* ``flex_attention``: the same sequence ids become a compiled ``BlockMask``; fully masked blocks
  are skipped (43,800 tokens/s measured in anchors.md).
* ``flash_attention_2`` / ``_3`` (package ``flash-attn``): ``cu_seq_lens_q/k`` and
  ``max_length_q/k``, passed here as keyword arguments, select ``flash_attn_varlen_func``; without
  them transformers derives them from the position ids at every layer.
* ``hsrm_varlen`` (registered by this module): PyTorch's own FlashAttention-2 varlen kernel
  (``torch.nn.attention.varlen.varlen_attn``, CUDA, bf16/fp16) with the same cumulative lengths,
  no mask and no extra package. On CPU or in fp32 it runs exact per-sequence SDPA instead.

On a GPU pick the path by measurement (``bench/throughput.py`` times them); on CPU use eager or
sdpa. Token-budget batching (:class:`TokenBudgetBatchSampler`) fills each micro-batch up to a
number of tokens instead of a number of pairs, keeping the two sides of a pair together.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch

from .modeling import body_and_score_head, reward_outputs

logger = logging.getLogger(__name__)

VARLEN_ATTENTION = "hsrm_varlen"
# Paths on which transformers (or hsrm_varlen) keeps packed sequences apart; anything else could
# silently let one sequence attend to the previous one.
PACKING_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", VARLEN_ATTENTION)
# Paths that read cumulative sequence lengths directly instead of a mask.
VARLEN_KWARG_ATTENTION = ("flash_attention_2", "flash_attention_3", VARLEN_ATTENTION)


# ------------------------------------------------------------------------------------- packing
@dataclass
class PackedBatch:
    """Sequences concatenated into one row.

    ``cu_seqlens`` holds the start offset of every sequence and then the end of the last one
    (FlashAttention's layout); ``last_index`` is where each sequence's reward is read. Filler
    tokens added by ``pad_to_multiple_of`` sit after ``cu_seqlens[-1]`` as a sequence of their own
    that no real token attends to.
    """

    input_ids: torch.Tensor  # (1, T) long
    position_ids: torch.Tensor  # (1, T) long, 0 at the start of every sequence
    cu_seqlens: torch.Tensor  # (n + 1,) int32
    last_index: torch.Tensor  # (n,) long
    max_seqlen: int  # longest sequence (filler included), as FlashAttention wants it

    @property
    def num_sequences(self) -> int:
        return int(self.last_index.shape[0])

    @property
    def num_tokens(self) -> int:
        """Real tokens (filler excluded)."""
        return int(self.cu_seqlens[-1])

    def attention_cu_seqlens(self) -> torch.Tensor:
        """Cumulative lengths covering the whole row, the filler segment included."""
        width = self.input_ids.shape[1]
        if width == self.num_tokens:
            return self.cu_seqlens
        return torch.cat([self.cu_seqlens, torch.tensor([width], dtype=self.cu_seqlens.dtype)])


def pack(sequences: Sequence[Sequence[int]], *, pad_id: int = 0, pad_to_multiple_of: int | None = None) -> PackedBatch:
    """Concatenate token sequences into one (1, T) row with per-sequence position ids.

    >>> b = pack([[5, 6, 7], [8], [9, 10]])
    >>> b.input_ids.tolist(), b.position_ids.tolist()
    ([[5, 6, 7, 8, 9, 10]], [[0, 1, 2, 0, 0, 1]])
    >>> b.cu_seqlens.tolist(), b.last_index.tolist(), b.max_seqlen
    ([0, 3, 4, 6], [2, 3, 5], 3)
    >>> pack([[5, 6, 7]], pad_id=0, pad_to_multiple_of=4).position_ids.tolist()
    [[0, 1, 2, 0]]
    """
    if not sequences:
        raise ValueError("pack: no sequences to pack")
    lengths = [len(s) for s in sequences]
    if min(lengths) == 0:
        raise ValueError(f"pack: sequence {lengths.index(0)} is empty; every sequence needs at least one token")
    total = sum(lengths)
    filler = (-total) % pad_to_multiple_of if pad_to_multiple_of else 0
    ids = torch.empty(total + filler, dtype=torch.long)
    offset = 0
    for seq in sequences:
        ids[offset:offset + len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        offset += len(seq)
    ids[total:] = pad_id
    length_tensor = torch.tensor(lengths + ([filler] if filler else []), dtype=torch.long)
    starts = torch.cumsum(length_tensor, 0) - length_tensor
    # position = index − start of its sequence
    positions = torch.arange(total + filler) - torch.repeat_interleave(starts, length_tensor)
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return PackedBatch(input_ids=ids.unsqueeze(0), position_ids=positions.unsqueeze(0), cu_seqlens=cu_seqlens,
                       last_index=cu_seqlens[1:].long() - 1, max_seqlen=max(lengths + [filler]))


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cumulative lengths covering the row, longest sequence) of a packed (1, T) position-id row:
    a sequence starts wherever the position does not grow by exactly 1 (transformers' rule).

    >>> cu, longest = cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 0, 1]]))
    >>> cu.tolist(), longest
    ([0, 3, 4, 6], 3)
    """
    row = position_ids.reshape(-1)
    new_sequence = torch.ones_like(row, dtype=torch.bool)
    new_sequence[1:] = row[1:] != row[:-1] + 1
    starts = new_sequence.nonzero().reshape(-1).to(torch.int32)
    cu = torch.cat([starts, torch.tensor([row.numel()], dtype=torch.int32, device=row.device)])
    return cu, int((cu[1:] - cu[:-1]).max())


# ---------------------------------------------------------------------------- varlen attention
def _torch_varlen_attn():
    """PyTorch's FlashAttention varlen function, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _per_sequence_sdpa(query, key, value, cu_seqlens, scaling, dropout):
    """Exact reference: causal SDPA on each sequence alone. query (T, Hq, D), key/value (T, Hkv, D)."""
    import torch.nn.functional as F

    groups = query.shape[1] // key.shape[1]
    out = torch.empty_like(query)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q = query[start:end].transpose(0, 1)
        k = key[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        v = value[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        out[start:end] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                        dropout_p=dropout).transpose(0, 1)
    return out


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function ``hsrm_varlen``.

    Shapes follow transformers: query (B, Hq, T, D), key/value (B, Hkv, T, D); returns (B, T, Hq, D).
    A packed row (B = 1, no mask) runs variable-length attention over ``cu_seq_lens_q`` (or the
    lengths read from ``position_ids``); padded or plain batches go to transformers' SDPA with the
    mask it built, so the path is safe for any batch.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if kwargs.get("sliding_window") or kwargs.get("softcap") or kwargs.get("s_aux") is not None:
        # Only plain causal attention is implemented here; a silent full window would change the model.
        raise ValueError(f"{VARLEN_ATTENTION} supports plain causal attention only; this model's attention uses a sliding "
                         "window, soft-capping or sinks: use attn_implementation flex_attention or flash_attention_2")
    cu_seqlens, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu_seqlens is None or longest is None:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(query.shape[2], device=query.device).unsqueeze(0)
        cu_seqlens, longest = cu_seqlens_from_position_ids(position_ids)
    cu_seqlens = cu_seqlens.to(device=query.device, dtype=torch.int32)
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, H, D)
    dropout = dropout if module.training else 0.0
    kernel = _torch_varlen_attn()
    if kernel is not None and _use_varlen_kernel(q, dropout):
        out = _call_varlen_kernel(kernel, q, k, v, cu_seqlens, int(longest), scaling)
    else:
        out = _per_sequence_sdpa(q, k, v, cu_seqlens, scaling, dropout)
    return out.unsqueeze(0), None


def _use_varlen_kernel(query: torch.Tensor, dropout: float) -> bool:
    """PyTorch's varlen kernel is FlashAttention: CUDA, half precision, no dropout."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0


@functools.lru_cache(maxsize=None)
def _parameter_names(function) -> frozenset:
    import inspect

    return frozenset(inspect.signature(function).parameters)


def _call_varlen_kernel(kernel, q, k, v, cu_seqlens, longest: int, scaling):
    """Causal varlen attention over (T, H, D) tensors, across the torch versions' signatures
    (``window_size=(-1, 0)`` means causal; older releases took ``is_causal``; ``enable_gqa`` is recent)."""
    parameters = _parameter_names(kernel)
    kwargs = {"scale": scaling}
    kwargs.update({"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True})
    if k.shape[1] != q.shape[1]:  # grouped-query attention
        if "enable_gqa" in parameters:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return kernel(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, cu_seqlens, longest, longest, **kwargs)


def _varlen_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None, **kwargs):
    """Mask builder for ``hsrm_varlen``: none when nothing is padded (packed or full rows: the
    attention reads the lengths itself), SDPA's boolean mask when a padded batch comes through."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function or causal_mask_function,
                     attention_mask, **kwargs)


def register_varlen_attention() -> str:
    """Make ``attn_implementation="hsrm_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION, _varlen_mask)
    return VARLEN_ATTENTION


register_varlen_attention()


def attention_implementation(model) -> str | None:
    body, _ = body_and_score_head(model)
    config = getattr(body if body is not None else model, "config", None)
    return getattr(config, "_attn_implementation", None)


def check_packing_support(model, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> str:
    """The model's attention path, or a ValueError when packing would be unsafe or impossible.

    ``device`` and ``dtype`` are where and in what precision the forward pass will run (default: the
    model's parameters'). ``sdpa`` is refused for packed rows in half precision on CUDA: on an H200
    its packed bf16 rewards differed from the padded ones by 0.0547, more than the padded path's own
    batch-size noise of 0.0391 (bench/results/h200-2026-12-04/gpu_tests_not_flex.log), and it builds
    a T × T mask besides; ``hsrm_varlen`` passed the same test."""
    body, head = body_and_score_head(model)
    if body is None or head is None:
        raise ValueError(f"{type(model).__name__} has no transformer body with a `score` head; padding_free needs an "
                         "AutoModelForSequenceClassification-style model (set padding_free: false)")
    name = attention_implementation(model)
    if name not in PACKING_ATTENTION:
        raise ValueError(f"attn_implementation {name!r} does not keep packed sequences apart; use one of "
                         f"{', '.join(PACKING_ATTENTION)} or set padding_free: false")
    parameter = next(model.parameters())
    device = torch.device(device) if device is not None else parameter.device
    dtype = dtype or parameter.dtype
    if name == "sdpa" and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        raise ValueError("packed rows with attn_implementation sdpa in half precision on CUDA drift past bf16 noise "
                         "(0.0547 against 0.0391 on an H200, bench/results/h200-2026-12-04); use attn_implementation "
                         "hsrm_varlen (or auto), or set padding_free: false")
    return name


# ----------------------------------------------------------------------------------- collators
def _packed_fields(sequences: list, pad_id: int, pad_to_multiple_of: int | None) -> dict:
    batch = pack(sequences, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
    return {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "last_index": batch.last_index,
            "cu_seqlens": batch.attention_cu_seqlens(), "max_seqlen": batch.max_seqlen}


@dataclass
class PackedPairwiseCollator:
    """Pre-tokenized pairs → one packed row: all chosen sequences, then all rejected ones, so reward
    ``i`` and reward ``n + i`` are the two sides of pair ``i`` (as in ``PairwiseCollator``).

    >>> c = PackedPairwiseCollator(pad_id=0)
    >>> b = c([{"chosen_ids": [5, 6, 7], "rejected_ids": [8], "margin": 2.0}])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["last_index"].tolist(), b["margin"].tolist()
    ([[5, 6, 7, 8]], [[0, 1, 2, 0]], [2, 3], [2.0])
    """

    pad_id: int = 0
    pad_to_multiple_of: int | None = None  # bucket row widths (fewer shapes for compiled flex attention)

    def __call__(self, features: list[dict]) -> dict:
        sequences = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
        batch = _packed_fields(sequences, self.pad_id, self.pad_to_multiple_of)
        batch["margin"] = torch.tensor([float(f.get("margin", 1.0)) for f in features], dtype=torch.float32)
        return batch


@dataclass
class PackedPointwiseCollator:
    """Rated responses → one packed row and a (n, attributes) target.

    >>> c = PackedPointwiseCollator(pad_id=0)
    >>> b = c([{"input_ids": [4, 5], "labels": [3.0]}, {"input_ids": [6], "labels": [1.0]}])
    >>> b["input_ids"].tolist(), b["last_index"].tolist(), b["labels"].tolist()
    ([[4, 5, 6]], [1, 2], [[3.0], [1.0]])
    """

    pad_id: int = 0
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict:
        batch = _packed_fields([f["input_ids"] for f in features], self.pad_id, self.pad_to_multiple_of)
        batch["labels"] = torch.tensor([list(f["labels"]) for f in features], dtype=torch.float32)
        return batch


# ------------------------------------------------------------------------- token-budget batching
Cost = Literal["packed", "padded"]


def batch_cost(items: Sequence[Sequence[int]], cost: Cost) -> int:
    """Tokens a micro-batch occupies: the sum of all lengths when packed; rows × longest when padded.

    >>> batch_cost([(3, 1), (2, 2)], "packed"), batch_cost([(3, 1), (2, 2)], "padded")
    (8, 12)
    """
    lengths = [n for item in items for n in item]
    return sum(lengths) if cost == "packed" else len(lengths) * max(lengths)


def token_budget_batches(item_lengths: Sequence[Sequence[int]], max_tokens: int, cost: Cost = "packed",
                         order: Sequence[int] | None = None) -> list[list[int]]:
    """Group items (a pair = its two lengths, a rated response = one) into micro-batches of at most
    ``max_tokens`` tokens, longest first. An item is never split; one that alone exceeds the budget
    gets a micro-batch of its own.

    Padded: consecutive items in length order (so a batch's rows have similar lengths). Packed:
    the longest remaining items while they fit, then topped up with the shortest ones, which fills
    rows close to the budget. ``order`` (a permutation) breaks ties between equal lengths.

    >>> token_budget_batches([(5,), (1,), (4,), (2,), (3,)], 6, "packed")
    [[0, 1], [2, 3], [4]]
    >>> token_budget_batches([(5,), (1,), (4,), (2,), (3,)], 6, "padded")
    [[0], [2], [4, 3], [1]]
    """
    if max_tokens is None or max_tokens < 1:
        raise ValueError(f"max_tokens_per_batch must be a positive number of tokens, got {max_tokens!r}")
    if cost not in ("packed", "padded"):
        raise ValueError(f"cost must be 'packed' or 'padded', not {cost!r}")
    items = [tuple(lengths) for lengths in item_lengths]
    rank = {index: r for r, index in enumerate(order)} if order is not None else {}
    key = (lambda i: (-sum(items[i]), rank.get(i, i))) if cost == "packed" else (lambda i: (-max(items[i]), rank.get(i, i)))
    queue = sorted(range(len(items)), key=key)
    batches: list[list[int]] = []
    head, tail = 0, len(queue) - 1
    while head <= tail:
        batch = [queue[head]]
        head += 1
        if cost == "padded":
            width, rows = max(items[batch[0]]), len(items[batch[0]])
            while head <= tail and (rows + len(items[queue[head]])) * width <= max_tokens:
                rows += len(items[queue[head]])
                batch.append(queue[head])
                head += 1
        else:
            used = sum(items[batch[0]])
            while head <= tail and used + sum(items[queue[head]]) <= max_tokens:
                used += sum(items[queue[head]])
                batch.append(queue[head])
                head += 1
            while head <= tail and used + sum(items[queue[tail]]) <= max_tokens:
                used += sum(items[queue[tail]])
                batch.append(queue[tail])
                tail -= 1
        batches.append(batch)
    return batches


class TokenBudgetBatchSampler:
    """A batch sampler for ``DataLoader(batch_sampler=...)``: micro-batches of dataset indices
    holding at most ``max_tokens`` tokens (see :func:`token_budget_batches`).

    The grouping is computed once from a seeded shuffle (so ``len`` is fixed and a resumed run sees
    the same batches); the order of the micro-batches is reshuffled every epoch from ``seed`` and the
    epoch (``set_epoch``, which accelerate calls, or a count of iterations). Batches vary in size,
    so there is deliberately no ``batch_size`` attribute: accelerate then deals whole micro-batches to
    the processes in turn (process r takes micro-batches r, r + W, …), and ``num_replicas`` = W makes
    their count a multiple of W (the largest ones are split in two), so that accelerate never repeats
    a micro-batch to even the processes out: every item is seen exactly once per epoch.
    """

    drop_last = False

    def __init__(self, item_lengths: Sequence[Sequence[int] | int], max_tokens: int, *, cost: Cost = "packed",
                 seed: int = 0, shuffle: bool = True, num_replicas: int = 1):
        items = [(n,) if isinstance(n, int) else tuple(n) for n in item_lengths]
        if not items:
            raise ValueError("TokenBudgetBatchSampler: the dataset is empty")
        self.max_tokens, self.cost, self.seed, self.shuffle = max_tokens, cost, seed, shuffle
        order = list(range(len(items)))
        if shuffle:
            random.Random(seed).shuffle(order)
        self.batches = split_to_multiple(token_budget_batches(items, max_tokens, cost, order=order), num_replicas)
        oversized = sum(1 for b in self.batches if len(b) == 1 and batch_cost([items[b[0]]], cost) > max_tokens)
        if oversized:
            logger.warning("%d items exceed max_tokens_per_batch=%d on their own; each goes in a micro-batch alone",
                           oversized, max_tokens)
        self.epoch = 0
        self._explicit_epoch = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._explicit_epoch = int(epoch), True

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        if not self._explicit_epoch:
            self.epoch += 1
        for index in order:
            yield list(self.batches[index])


def split_to_multiple(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Split the largest micro-batches in two until their count is a multiple of ``multiple`` (the
    number of processes); each item stays in exactly one micro-batch.

    >>> split_to_multiple([[0, 1, 2, 3], [4, 5], [6]], 2)
    [[0, 1], [2, 3], [4, 5], [6]]
    """
    batches = [list(b) for b in batches]
    while len(batches) % multiple:
        largest = max(range(len(batches)), key=lambda i: (len(batches[i]), -i))
        if len(batches[largest]) < 2:
            raise ValueError(f"{sum(map(len, batches))} items cannot make a multiple of {multiple} micro-batches: "
                             "fewer items than processes")
        half = len(batches[largest]) // 2
        batches[largest:largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches


def dataset_item_lengths(dataset) -> list[tuple[int, ...]]:
    """Token lengths per item of a tokenized pairs (``chosen_ids``, ``rejected_ids``) or ratings
    (``input_ids``) dataset."""
    columns = getattr(dataset, "column_names", None) or list(dataset[0].keys())
    if "chosen_ids" in columns and "rejected_ids" in columns:
        return [(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
    if "input_ids" in columns:
        return [(len(ids),) for ids in dataset["input_ids"]]
    raise ValueError(f"cannot batch by tokens: the dataset has neither chosen_ids/rejected_ids nor input_ids (columns {columns})")


def token_budget_dataloader(trainer):
    """The training DataLoader of a ``transformers.Trainer`` whose args set ``max_tokens_per_batch``:
    token-budget micro-batches (packed cost when ``padding_free``), prepared by accelerate."""
    from torch.utils.data import DataLoader

    args = trainer.args
    cost: Cost = "packed" if getattr(args, "padding_free", False) else "padded"
    sampler = TokenBudgetBatchSampler(dataset_item_lengths(trainer.train_dataset), args.max_tokens_per_batch,
                                      cost=cost, seed=args.data_seed if args.data_seed is not None else args.seed,
                                      num_replicas=args.world_size)
    logger.info("token-budget batching: %d micro-batches of ≤ %d %s tokens (per_device_train_batch_size is not used)",
                len(sampler), args.max_tokens_per_batch, cost)
    workers = args.dataloader_num_workers
    loader = DataLoader(trainer.train_dataset, batch_sampler=sampler, collate_fn=trainer.data_collator, num_workers=workers,
                        pin_memory=args.dataloader_pin_memory, persistent_workers=workers > 0 and args.dataloader_persistent_workers,
                        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None)
    return trainer.accelerator.prepare(loader)


# ------------------------------------------------------------------------------------- checks
def packing_discrepancy(model, sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, float]:
    """Largest |packed − padded| and |padded(batch) − padded(one at a time)| head outputs for the same
    sequences: the first must not exceed the second's order of magnitude (bf16 noise, issue 8)."""
    from .engine import batches, to_device

    device = next(model.parameters()).device

    def outputs(layout: str, groups: list[list[int]]) -> torch.Tensor:
        rows: list[torch.Tensor | None] = [None] * len(sequences)
        for group in groups:  # one batch per group: all sequences together, or each alone
            members = [sequences[i] for i in group]
            for indices, batch in batches(members, layout, pad_id=pad_id, batch_size=len(group),
                                          max_tokens=sum(len(s) for s in members)):
                values = reward_outputs(model, to_device(batch, device)).float()
                for position, index in enumerate(indices):
                    rows[group[index]] = values[position]
        return torch.stack(rows)  # type: ignore[arg-type]

    everything, one_by_one = [list(range(len(sequences)))], [[i] for i in range(len(sequences))]
    with torch.inference_mode():
        packed, padded, alone = outputs("packed", everything), outputs("padded", everything), outputs("padded", one_by_one)
    return {"packed_vs_padded": float((packed - padded).abs().max()),
            "padded_vs_alone": float((padded - alone).abs().max()),
            "packed_vs_alone": float((packed - alone).abs().max())}


__all__ = ["PackedBatch", "pack", "PackedPairwiseCollator", "PackedPointwiseCollator", "TokenBudgetBatchSampler",
           "token_budget_batches", "token_budget_dataloader", "check_packing_support", "register_varlen_attention",
           "packing_discrepancy"]
