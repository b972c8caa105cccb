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
* ``hsrm_varlen`` (:func:`hsrm.packing.attention.register_varlen_attention`, called by
  :func:`hsrm.modeling.load_reward_model` and the trainers when a model asks for it): PyTorch's own
  FlashAttention-2 varlen kernel (``torch.nn.attention.varlen.varlen_attn``, CUDA, bf16/fp16) with
  the same cumulative lengths, no mask and no extra package. On CPU or in fp32 it runs exact
  per-sequence SDPA instead.

On a GPU pick the path by measurement (``bench/throughput.py`` times them); on CPU use eager or
sdpa. Token-budget batching (:class:`TokenBudgetBatchSampler`) fills each micro-batch up to a
number of tokens instead of a number of pairs, keeping the two sides of a pair together.

The package is split by concern: :mod:`.batch` (the packed row), :mod:`.attention` (which attention
paths keep packed sequences apart, and ``hsrm_varlen``) and :mod:`.sampler` (token-budget
micro-batches); the training collators, packed and padded, are :mod:`hsrm.data.collators`.
Importing it registers nothing with transformers.
"""

from .attention import (
    PACKING_ATTENTION,
    VARLEN_ATTENTION,
    VARLEN_KWARG_ATTENTION,
    attention_implementation,
    check_packing_support,
    register_varlen_attention,
    varlen_attention_forward,
)
from .batch import PackedBatch, cu_seqlens_from_position_ids, pack
from .sampler import (
    TokenBudgetBatchSampler,
    batch_cost,
    dataset_item_lengths,
    split_to_multiple,
    token_budget_batches,
    token_budget_dataloader,
)

__all__ = [
    "PACKING_ATTENTION",
    "VARLEN_ATTENTION",
    "VARLEN_KWARG_ATTENTION",
    "PackedBatch",
    "TokenBudgetBatchSampler",
    "attention_implementation",
    "batch_cost",
    "check_packing_support",
    "cu_seqlens_from_position_ids",
    "dataset_item_lengths",
    "pack",
    "register_varlen_attention",
    "split_to_multiple",
    "token_budget_batches",
    "token_budget_dataloader",
    "varlen_attention_forward",
]
