"""Training collators: tokenized rows → the batch a trainer's step takes, every data shape in one place.

* padded (:class:`PairwiseCollator`, :class:`PointwiseCollator`): rows padded to the longest, with an
  attention mask; the reward is read at the last position whose mask is 1;
* packed (:class:`PackedPairwiseCollator`, :class:`PackedPointwiseCollator`, ``padding_free: true``):
  one row of concatenated sequences, position ids restarting at 0 per sequence (:func:`hsrm.packing.pack`);
* generative (:class:`JustifierCollator`): right-padded ids with the SFT labels, -100 where no loss is taken.

A pair's chosen sides come first and its rejected sides after them, in both layouts, so reward ``i``
and reward ``n + i`` are the two sides of pair ``i``. torch is imported when a batch is built, so
``import hsrm.data`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

from .render import pad_sequences

IGNORE_INDEX = -100  # positions that carry no loss (prompt, assistant header, padding)


@dataclass
class PairwiseCollator:
    """Pre-tokenized pairs → one batch holding all chosen rows then all rejected rows, so a pair
    goes through the model in a single forward pass.

    >>> c = PairwiseCollator(pad_id=0)
    >>> b = c([{"chosen_ids": [5, 6, 7], "rejected_ids": [8], "margin": 2.0}])
    >>> b["input_ids"].tolist(), b["attention_mask"].tolist(), b["margin"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]], [2.0])
    """

    pad_id: int
    padding_side: str = "right"

    def __call__(self, features: list[dict]) -> dict:
        import torch

        sequences = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
        ids, mask = pad_sequences(sequences, self.pad_id, self.padding_side)
        margin = torch.tensor([float(f.get("margin", 1.0)) for f in features], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "margin": margin}


@dataclass
class PointwiseCollator:
    """Pre-tokenized responses with their attribute ratings → a padded batch and a (batch, n) target.

    >>> c = PointwiseCollator(pad_id=0)
    >>> b = c([{"input_ids": [4, 5], "labels": [3.0]}, {"input_ids": [6], "labels": [1.0]}])
    >>> b["input_ids"].tolist(), b["labels"].tolist()
    ([[4, 5], [6, 0]], [[3.0], [1.0]])
    """

    pad_id: int
    padding_side: str = "right"

    def __call__(self, features: list[dict]) -> dict:
        import torch

        ids, mask = pad_sequences([f["input_ids"] for f in features], self.pad_id, self.padding_side)
        labels = torch.tensor([list(f["labels"]) for f in features], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


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
        import torch

        from ..packing.batch import pack

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
        import torch

        from ..packing.batch import pack

        sequences = [f["input_ids"] for f in features]
        batch = pack(sequences, pad_id=self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of).model_inputs()
        batch["labels"] = torch.tensor([list(f["labels"]) for f in features], dtype=torch.float32)
        return batch


@dataclass
class JustifierCollator:
    """Pre-tokenized ``input_ids`` / ``labels`` → a right-padded batch; padding gets label -100.

    >>> c = JustifierCollator(pad_id=0)
    >>> b = c([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}])
    >>> b["input_ids"].tolist(), b["attention_mask"].tolist(), b["labels"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[1, 1, 1], [1, 1, 0]], [[-100, 6, 7], [-100, 9, -100]])
    """

    pad_id: int

    def __call__(self, features: list[dict]) -> dict:
        import torch

        ids, mask = pad_sequences([f["input_ids"] for f in features], self.pad_id, "right")
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, feature in enumerate(features):
            labels[row, : len(feature["labels"])] = torch.tensor(feature["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
