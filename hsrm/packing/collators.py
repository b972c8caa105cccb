"""Training collators: pre-tokenized pairs or rated responses → one packed row."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import pack


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
        batch = pack(sequences, pad_id=self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of).model_inputs()
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
        sequences = [f["input_ids"] for f in features]
        batch = pack(sequences, pad_id=self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of).model_inputs()
        batch["labels"] = torch.tensor([list(f["labels"]) for f in features], dtype=torch.float32)
        return batch
