"""Which attention paths keep packed sequences apart, and ``hsrm_varlen``: PyTorch's varlen FlashAttention
kernel as a transformers attention function (registered explicitly, by the code that loads a model with it)."""

from __future__ import annotations

import functools

import torch

from ..errors import InputError
from ..modeling import body_and_score_head
from .batch import cu_seqlens_from_position_ids

VARLEN_ATTENTION = "hsrm_varlen"
# Paths on which transformers (or hsrm_varlen) keeps packed sequences apart; anything else could
# silently let one sequence attend to the previous one.
PACKING_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", VARLEN_ATTENTION)
# Paths that read cumulative sequence lengths directly instead of a mask.
VARLEN_KWARG_ATTENTION = ("flash_attention_2", "flash_attention_3", VARLEN_ATTENTION)


def varlen_kernel():
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
        out[start:end] = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scaling, dropout_p=dropout
        ).transpose(0, 1)
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
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if kwargs.get("sliding_window") or kwargs.get("softcap") or kwargs.get("s_aux") is not None:
        # Only plain causal attention is implemented here; a silent full window would change the model.
        raise InputError(
            f"{VARLEN_ATTENTION} supports plain causal attention only; this model's attention uses a sliding "
            "window, soft-capping or sinks: use attn_implementation flex_attention or flash_attention_2"
        )
    cu_seqlens, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu_seqlens is None or longest is None:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(query.shape[2], device=query.device).unsqueeze(0)
        cu_seqlens, longest = cu_seqlens_from_position_ids(position_ids)
    cu_seqlens = cu_seqlens.to(device=query.device, dtype=torch.int32)
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, H, D)
    dropout = dropout if module.training else 0.0
    kernel = varlen_kernel()
    if kernel is not None and _use_varlen_kernel(q, dropout):
        out = _call_varlen_kernel(kernel, q, k, v, cu_seqlens, int(longest), scaling)
    else:
        out = _per_sequence_sdpa(q, k, v, cu_seqlens, scaling, dropout)
    return out.unsqueeze(0), None


def _use_varlen_kernel(query: torch.Tensor, dropout: float) -> bool:
    """PyTorch's varlen kernel is FlashAttention: CUDA, half precision, no dropout."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0


@functools.cache
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


def _varlen_mask(
    batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None, **kwargs
):
    """Mask builder for ``hsrm_varlen``: none when nothing is padded (packed or full rows: the
    attention reads the lengths itself), SDPA's boolean mask when a padded batch comes through."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(
        batch_size,
        q_length,
        kv_length,
        q_offset,
        kv_offset,
        mask_function or causal_mask_function,
        attention_mask,
        **kwargs,
    )


def register_varlen_attention() -> str:
    """Make ``attn_implementation="hsrm_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION, _varlen_mask)
    return VARLEN_ATTENTION


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
        raise InputError(
            f"{type(model).__name__} has no transformer body with a `score` head; padding_free needs an "
            "AutoModelForSequenceClassification-style model (set padding_free: false)"
        )
    name = attention_implementation(model)
    if name not in PACKING_ATTENTION:
        raise InputError(
            f"attn_implementation {name!r} does not keep packed sequences apart; use one of "
            f"{', '.join(PACKING_ATTENTION)} or set padding_free: false"
        )
    parameter = next(model.parameters())
    device = torch.device(device) if device is not None else parameter.device
    dtype = dtype or parameter.dtype
    if name == "sdpa" and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        raise InputError(
            "packed rows with attn_implementation sdpa in half precision on CUDA drift past bf16 noise "
            "(0.0547 against 0.0391 on an H200, bench/results/h200-2026-12-04); use attn_implementation "
            "hsrm_varlen (or auto), or set padding_free: false"
        )
    return name
