"""Training collators: tokenized rows → the batch a trainer's step takes, every data shape in one place.

* padded (:class:`PairwiseCollator`, :class:`PointwiseCollator`): rows padded to the longest, with an
  attention mask; the reward is read at the last position whose mask is 1;
* packed (:class:`PackedPairwiseCollator`, :class:`PackedPointwiseCollator`, ``padding_free: true``):
  one row of concatenated sequences, position ids restarting at 0 per sequence (:func:`hsrm.packing.pack`);
* shared-prompt pairs (:class:`SharedPromptPairCollator`, ``share_prompts: true``, the default for
  pairs in the padded layout): one row per pair, ``[prompt | chosen | rejected]``, the prompt computed
  once (two rows for a pair whose sides share too little);
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


# Segment ids of a shared-prompt pair row (:class:`SharedPromptPairCollator`): a token attends to the
# earlier tokens of its own segment and to the shared prompt, never to the other response.
PROMPT_SEGMENT, CHOSEN_SEGMENT, REJECTED_SEGMENT, PAD_SEGMENT = 0, 1, 2, 3


@dataclass
class SharedPromptPairCollator:
    """Pre-tokenized pairs → rows in which a pair's prompt is computed once (issue 32): a pair whose
    sides share a prompt is one row, ``[prompt | chosen | rejected]``; one whose sides share too
    little (:func:`hsrm.engine.pair_prompt_length`: under 16 tokens, e.g. cut from the left at
    different places) is two rows, as in :class:`PairwiseCollator`. The prompt is the longest common
    token-id prefix of the ids after templating and truncation, never taken from the text.

    ``segment_ids`` mark prompt, chosen, rejected and padding, from which
    :func:`hsrm.modeling.last_token_states` builds the attention mask: the rejected tokens see the
    prompt and themselves, not the chosen ones; ``position_ids`` continue from the prompt on both
    sides, so each side computes exactly what it computes as a sequence of its own. ``last_index``
    holds flat indices into the (rows × width) hidden states: every chosen end, then every rejected
    end, the order of the other pair collators' rewards.

    >>> c = SharedPromptPairCollator(pad_id=0)
    >>> b = c([{"chosen_ids": [5] * 16 + [7], "rejected_ids": [5] * 16 + [8, 9], "margin": 2.0},
    ...        {"chosen_ids": [4], "rejected_ids": [3]}])
    >>> b["input_ids"][:, 14:].tolist(), b["segment_ids"][:, 14:].tolist()
    ([[5, 5, 7, 8, 9], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], [[0, 0, 1, 2, 2], [3, 3, 3, 3, 3], [3, 3, 3, 3, 3]])
    >>> b["input_ids"][1:, :2].tolist(), b["segment_ids"][1:, :2].tolist()
    ([[4, 0], [3, 0]], [[1, 3], [2, 3]])
    >>> b["position_ids"][0, 15:].tolist(), b["last_index"].tolist(), b["margin"].tolist()
    ([15, 16, 16, 17], [16, 19, 18, 38], [2.0, 1.0])
    """

    pad_id: int

    shares_prompts = True  # token budgets count the rows it makes (hsrm.packing.dataset_item_lengths)

    def __call__(self, features: list[dict]) -> dict:
        import torch

        from ..engine import pair_prompt_length

        rows, segments, positions, chosen_ends, rejected_ends = [], [], [], [], []
        for f in features:
            chosen, rejected = list(f["chosen_ids"]), list(f["rejected_ids"])
            prompt = pair_prompt_length(chosen, rejected)
            if prompt:
                rows.append(chosen + rejected[prompt:])
                segments.append(
                    [PROMPT_SEGMENT] * prompt
                    + [CHOSEN_SEGMENT] * (len(chosen) - prompt)
                    + [REJECTED_SEGMENT] * (len(rejected) - prompt)
                )
                positions.append(list(range(len(chosen))) + list(range(prompt, len(rejected))))
                chosen_ends.append((len(rows) - 1, len(chosen) - 1))
            else:
                rows += [chosen, rejected]
                segments += [[CHOSEN_SEGMENT] * len(chosen), [REJECTED_SEGMENT] * len(rejected)]
                positions += [list(range(len(chosen))), list(range(len(rejected)))]
                chosen_ends.append((len(rows) - 2, len(chosen) - 1))
            rejected_ends.append((len(rows) - 1, len(rows[-1]) - 1))
        ids, _ = pad_sequences(rows, self.pad_id, "right")
        width = ids.shape[1]
        segment_ids = torch.full_like(ids, PAD_SEGMENT)
        position_ids = torch.zeros_like(ids)
        for row, (segment, position) in enumerate(zip(segments, positions)):
            segment_ids[row, : len(segment)] = torch.tensor(segment)
            position_ids[row, : len(position)] = torch.tensor(position)
        last_index = [row * width + end for row, end in chosen_ends + rejected_ends]
        margin = torch.tensor([float(f.get("margin", 1.0)) for f in features], dtype=torch.float32)
        return {
            "input_ids": ids,
            "segment_ids": segment_ids,
            "position_ids": position_ids,
            "last_index": torch.tensor(last_index, dtype=torch.long),
            "margin": margin,
        }


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
