"""The packed row: sequences concatenated, position ids restarting at 0 for each (see :mod:`hsrm.packing`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError


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

    def model_inputs(self) -> dict:
        """The batch as :func:`hsrm.modeling.reward_outputs` reads it."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "last_index": self.last_index,
            "cu_seqlens": self.attention_cu_seqlens(),
            "max_seqlen": self.max_seqlen,
        }


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
        raise InputError("pack: no sequences to pack")
    lengths = [len(s) for s in sequences]
    if min(lengths) == 0:
        raise InputError(f"pack: sequence {lengths.index(0)} is empty; every sequence needs at least one token")
    total = sum(lengths)
    filler = (-total) % pad_to_multiple_of if pad_to_multiple_of else 0
    ids = torch.empty(total + filler, dtype=torch.long)
    offset = 0
    for seq in sequences:
        ids[offset : offset + len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        offset += len(seq)
    ids[total:] = pad_id
    length_tensor = torch.tensor(lengths + ([filler] if filler else []), dtype=torch.long)
    starts = torch.cumsum(length_tensor, 0) - length_tensor
    # position = index − start of its sequence
    positions = torch.arange(total + filler) - torch.repeat_interleave(starts, length_tensor)
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return PackedBatch(
        input_ids=ids.unsqueeze(0),
        position_ids=positions.unsqueeze(0),
        cu_seqlens=cu_seqlens,
        last_index=cu_seqlens[1:].long() - 1,
        max_seqlen=max(lengths + [filler]),
    )


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
