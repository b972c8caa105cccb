"""The scoring engine: rewards of pre-tokenized sequences, in one of two layouts.

Every verb that needs a reward calls :func:`score_sequences` — ``hsrm score`` and
:class:`hsrm.scoring.RewardScorer`, ``hsrm serve``, ``hsrm evaluate``, the ExPO factor search, the
RLOO reward function, ``hsrm embed --golden-model``, the demo and ``bench/throughput.py`` — and the
engine reads each reward through :func:`hsrm.modeling.reward_outputs`, as the trainers do. A text
therefore gets the same reward everywhere, whatever it was batched with (reward-bench#137).

Layouts:

* ``padded``: sequences sorted by length (longest first, so an out-of-memory error shows on the
  first batch) and right-padded in batches of ``batch_size``; little padding once sorted.
* ``packed``: sequences concatenated into rows of at most ``max_tokens`` tokens with per-sequence
  position ids (:func:`hsrm.packing.pack`): no pad token is computed at all. It needs an attention
  path that keeps packed sequences apart (:func:`hsrm.packing.check_packing_support`).
* ``auto``: packed on CUDA with a varlen attention path (``hsrm_varlen`` in half precision,
  ``flash_attention_2``/``_3``), where it was measured faster (docs/speed.md: 193,400 against
  166,300 real tokens/s on an H200); padded otherwise. On CPU the packed paths build a
  block-diagonal mask over the whole row (eager/sdpa), which costs more than the little padding
  that sorting leaves (``bench/throughput.py --model-shape tiny --device cpu`` prints both), and
  flex attention stays out of ``auto`` because its first call compiles for minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch

from .errors import InputError
from .modeling import reward_outputs, scalar_reward

Layout = Literal["auto", "padded", "packed"]
LAYOUTS = get_args(Layout)
DEFAULT_BATCH_SIZE = 8  # sequences per padded batch
DEFAULT_MAX_TOKENS = 16384  # tokens per packed row


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    >>> length_sorted_batches([3, 9, 1, 7, 5], 2)
    [[1, 3], [4, 0], [2]]
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def choose_layout(model, layout: str = "auto") -> str:
    """``padded`` or ``packed`` for this model on its device (see the module docstring)."""
    from .packing.attention import (
        VARLEN_ATTENTION,
        VARLEN_KWARG_ATTENTION,
        attention_implementation,
        check_packing_support,
        varlen_kernel,
    )

    if layout not in LAYOUTS:
        raise InputError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if layout == "padded":
        return "padded"
    if layout == "packed":
        check_packing_support(model)
        return "packed"
    parameter = next(model.parameters())
    attention = attention_implementation(model)
    if parameter.device.type != "cuda" or attention not in VARLEN_KWARG_ATTENTION:
        return "padded"
    if attention == VARLEN_ATTENTION and (
        parameter.dtype not in (torch.float16, torch.bfloat16) or varlen_kernel() is None
    ):
        return "padded"  # hsrm_varlen would fall back to one SDPA call per sequence
    return "packed"


def batches(
    sequences: Sequence[Sequence[int]],
    layout: str,
    *,
    pad_id: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
):
    """Yield ``(indices, batch)``: the input positions of each batch's sequences and the batch
    (a padded ``{input_ids, attention_mask}`` or a packed ``{input_ids, position_ids, last_index,
    cu_seqlens, max_seqlen}``) as :func:`hsrm.modeling.reward_outputs` reads it."""
    from .data.render import pad_sequences
    from .packing import pack, token_budget_batches

    if layout == "packed":
        if max_tokens is None or max_tokens < 1:
            raise InputError(f"max_tokens must be a positive number of tokens, got {max_tokens!r}")
        for row in token_budget_batches([(len(s),) for s in sequences], max_tokens, "packed"):
            yield row, pack([sequences[i] for i in row], pad_id=pad_id).model_inputs()
    elif layout == "padded":
        for indices in length_sorted_batches([len(s) for s in sequences], batch_size):
            ids, mask = pad_sequences([sequences[i] for i in indices], pad_id, "right")
            yield indices, {"input_ids": ids, "attention_mask": mask}
    else:
        raise InputError(f"layout must be 'padded' or 'packed' here, not {layout!r} (choose_layout resolves 'auto')")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.inference_mode()
def score_sequences(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    layout: str = "auto",
    pad_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    attribute_weights: Sequence[float] | None = None,
    all_outputs: bool = False,
    progress: bool = False,
    desc: str = "scoring",
) -> torch.Tensor:
    """Rewards of pre-tokenized sequences, in input order, as float32 on the CPU.

    Returns shape (n,) — the scalar reward, ``scalar_reward(outputs, attribute_weights)``: the
    weighted sum of the head's outputs when weights are given, else its first output — or, with
    ``all_outputs``, the raw head outputs (n, num_labels). Each reward is read at its sequence's
    last real token, so neither the layout nor the batch changes it beyond float rounding.
    """
    from tqdm.auto import tqdm

    num_labels = int(getattr(model.config, "num_labels", 1))
    if not sequences:
        return torch.zeros((0, num_labels) if all_outputs else (0,), dtype=torch.float32)
    empty = next((i for i, s in enumerate(sequences) if len(s) == 0), None)
    if empty is not None:
        raise InputError(f"sequence {empty} is empty; every sequence needs at least one token")
    chosen = choose_layout(model, layout)
    if pad_id is None:
        pad_id = getattr(model.config, "pad_token_id", None)
        pad_id = pad_id if isinstance(pad_id, int) else 0  # any id works: the mask, not the id, marks padding
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    width = num_labels if all_outputs else None
    results = torch.empty((len(sequences), width) if width else (len(sequences),), dtype=torch.float32)
    plan = list(batches(sequences, chosen, pad_id=pad_id, batch_size=batch_size, max_tokens=max_tokens))
    try:
        for indices, batch in tqdm(plan, desc=desc, unit="batch", disable=not progress, leave=False):
            outputs = reward_outputs(model, to_device(batch, device)).float()
            values = outputs if all_outputs else scalar_reward(outputs, attribute_weights)
            results[torch.as_tensor(indices)] = values.cpu()
    finally:
        model.train(was_training)
    return results


def packing_discrepancy(model, sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, float]:
    """Largest |packed − padded| and |padded(batch) − padded(one at a time)| head outputs for the same
    sequences: the first must not exceed the second's order of magnitude (bf16 noise, issue 8)."""
    everything = {"pad_id": pad_id, "all_outputs": True, "batch_size": len(sequences)}
    packed = score_sequences(model, sequences, layout="packed", max_tokens=sum(map(len, sequences)), **everything)
    padded = score_sequences(model, sequences, layout="padded", **everything)
    alone = score_sequences(model, sequences, layout="padded", **{**everything, "batch_size": 1})
    return {
        "packed_vs_padded": float((packed - padded).abs().max()),
        "padded_vs_alone": float((padded - alone).abs().max()),
        "packed_vs_alone": float((packed - alone).abs().max()),
    }
