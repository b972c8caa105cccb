"""Backbones with a scalar head and the reward read at the last real token.

The reward of a sequence is the score head applied to the final hidden state at the *last
position whose attention mask is 1* (OpenRLHF's rule). It is therefore the same whatever the
padding side or pad id (pitfall trl#2778), and saved folders stay plain
``AutoModelForSequenceClassification`` checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .default_model import resolve_model_path
from .errors import InputError, MissingFileError

logger = logging.getLogger(__name__)


def check_model_exists(path: str) -> None:
    """A clear error for a local path that does not exist (anything that is not a Hub id ``owner/name``)."""
    if os.path.exists(path):
        return
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~")) and all(path.split("/"))
    # `runs/model` where ./runs exists is a local folder that is missing, not the Hub user "runs"
    if not looks_like_hub_id or os.path.isdir(path.split("/")[0]):
        raise MissingFileError(f"model folder {path} does not exist")


def load_model_config(path: str, trust_remote_code: bool = False):
    """``AutoConfig`` of a local folder or Hub id; a Hub id this machine cannot reach is one line
    (transformers says "couldn't connect to huggingface.co" whatever the user meant)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        if os.path.exists(path):
            raise
        from .errors import UserError

        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{path}: no such local folder, and not a Hugging Face Hub model this machine can load ({reason})"
        ) from None


def check_model_folder(path: str) -> None:
    """A clear error for a local folder that is not a loadable safetensors model."""
    if not os.path.isdir(path):
        return  # a Hub id: transformers reports its own errors
    if not os.path.exists(os.path.join(path, "config.json")):
        raise MissingFileError(f"{path} has no config.json: not a Hugging Face model folder")
    names = os.listdir(path)
    if os.path.basename(os.path.normpath(path)).startswith("checkpoint-") and not (
        "hsrm_checkpoint_complete" in names or "trainer_state.json" in names
    ):
        raise InputError(f"{path} is a half-written checkpoint (its save was interrupted); use an earlier checkpoint")
    if not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        if any(n.endswith((".bin", ".pt", ".pth")) for n in names):
            raise InputError(
                f"{path} holds only pickle weights (.bin/.pt); hsrm loads safetensors only. "
                "Convert them with `save_pretrained(..., safe_serialization=True)` in a trusted environment."
            )
        raise MissingFileError(f"{path} has no *.safetensors weights")
    check_safetensors_files(path, [n for n in names if n.endswith(".safetensors")])


def check_safetensors_files(folder: str, names: Sequence[str]) -> None:
    """A damaged (truncated, overwritten) weights file is one line naming it, not safetensors' Rust
    error from deep inside from_pretrained. Reads each file's header only."""
    from safetensors import SafetensorError, safe_open

    for name in names:
        try:
            with safe_open(os.path.join(folder, name), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            from .errors import UserError

            raise UserError(
                f"{os.path.join(folder, name)} is damaged ({err}); save or download the model again"
            ) from None


# Any of these makes a folder's tokenizer loadable (fast tokenizer, its config, or a slow tokenizer's vocabulary).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
)


def check_reward_architecture(path: str, config) -> None:
    """Refuse a model whose architecture has no score head (a causal LM, a bare backbone): every
    verb that reads or publishes a reward model (the loader below, ``hsrm push``) asks this."""
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise InputError(
            f"{path} is a {architectures[0]}, not a reward model: it has no trained score head, so its "
            "rewards would be random. Train one from it (hsrm train --model_name_or_path ...) first"
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from .data.render import ensure_chat_template

    path = resolve_model_path(name_or_path)
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, n)) for n in TOKENIZER_FILES):
        from .errors import UserError

        raise UserError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])} …): save the tokenizer into the "
            "model folder (tokenizer.save_pretrained(folder))"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)
    return tokenizer


# One table of dtype names for every verb (--dtype, model_dtype, RewardScorer(dtype=...)).
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def torch_dtype(dtype: torch.dtype | str | None, default: torch.dtype | str = torch.float32) -> torch.dtype | str:
    """A torch dtype from a name (``"auto"`` is passed through for ``from_pretrained``).

    >>> torch_dtype("bf16"), torch_dtype(None)
    (torch.bfloat16, torch.float32)
    """
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


def build_reward_model(
    name_or_path: str | None,
    num_labels: int = 1,
    *,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    tokenizer=None,
):
    """(model, tokenizer) to *train*: any decoder as ``AutoModelForSequenceClassification`` with
    ``num_labels`` outputs. A backbone without a head (or with another head size) gets a fresh one;
    the pad token is made distinct from EOS. To score with a trained model use :func:`load_reward_model`."""
    from transformers import AutoModelForSequenceClassification

    from .data.render import ensure_distinct_pad_token

    path = resolve_model_path(name_or_path)
    check_model_exists(path)
    check_model_folder(path)
    config = load_model_config(path, trust_remote_code)
    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = _register_attention(attn_implementation)
    same_head = getattr(config, "num_labels", None) == num_labels
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=num_labels,
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        ignore_mismatched_sizes=not same_head,
        **kwargs,
    )
    tokenizer = tokenizer or load_tokenizer(path, trust_remote_code=trust_remote_code)
    ensure_distinct_pad_token(tokenizer, model)
    return model, tokenizer


def _register_attention(name: str) -> str:
    """hsrm's own attention path must be registered with transformers before a model asks for it."""
    if name == "hsrm_varlen":
        from .packing import register_varlen_attention

        register_varlen_attention()
    return name


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto": this process's GPU when there is one (so each accelerate rank scores on its
    own device), else the CPU."""
    if device not in (None, "auto"):
        from .errors import UserError

        try:
            chosen = torch.device(device)
        except RuntimeError as err:
            raise UserError(f"device {device!r}: {err}") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            why = "this torch build has no CUDA" if not torch.backends.cuda.is_built() else "no GPU is visible"
            raise UserError(f"device {device!r}: {why}; use --device cpu, or leave --device out")
        return chosen
    if torch.cuda.is_available():
        # LOCAL_RANK is set by accelerate/torchrun before any CUDA device is selected; without it
        # every rank of an RLOO run would put its reward model on GPU 0.
        local_rank = int(os.environ.get("LOCAL_RANK", -1))
        index = local_rank if 0 <= local_rank < torch.cuda.device_count() else torch.cuda.current_device()
        return torch.device("cuda", index)
    return torch.device("cpu")


def default_attention(device: torch.device, dtype: torch.dtype | str) -> str | None:
    """The attention path hsrm picks (``attn_implementation: auto``, and a scorer given none):
    PyTorch's varlen FlashAttention (``hsrm_varlen``) on CUDA in half precision, where packing pays
    (4.38× TRL's training throughput on an H200, bench/results/h200-2026-12-04); else transformers'
    own default. ``hsrm_varlen`` runs padded batches through SDPA, so it is safe for both layouts."""
    from .packing.attention import varlen_kernel

    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and varlen_kernel() is not None:
        return "hsrm_varlen"
    return None


def load_reward_model(
    name_or_path: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """(model, tokenizer, record) of a *trained* reward model, in eval mode on ``device`` ("auto":
    this process's GPU if any, else the CPU; ``None``: where ``from_pretrained`` put it, as training wants).

    The one loader of every verb that reads a reward (score, evaluate, ExPO, RLOO, embed
    --golden-model, serve). It keeps the head the folder has and refuses a model whose score head
    would be newly initialised (a causal LM, a backbone): transformers only logs that, and the
    rewards would be random. Safetensors only; ``trust_remote_code`` off unless asked.
    ``record`` is the folder's :class:`hsrm.record.ModelRecord` (empty for models hsrm did not train).
    """
    from transformers import AutoModelForSequenceClassification

    from .data.render import ensure_distinct_pad_token
    from .record import record_from_config

    path = resolve_model_path(os.path.expanduser(name_or_path) if isinstance(name_or_path, str) else name_or_path)
    check_model_exists(path)
    check_model_folder(path)
    config = load_model_config(path, trust_remote_code)
    check_reward_architecture(path, config)
    dtype = torch_dtype(dtype)
    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = _register_attention(attn_implementation)
    with quiet_transformers():  # the missing-head report below replaces transformers' log line
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            output_loading_info=True,
            **kwargs,
        )
    _, head = body_and_score_head(model)
    missing = [k for k in info.get("missing_keys", []) if k == "score" or k.startswith("score.")]
    if head is None or missing:
        raise InputError(
            f"{path} holds no trained score head ({', '.join(missing) or 'no score module'} not in the checkpoint): "
            "its rewards would be random. Use a folder written by hsrm train / hsrm expo, or any trained "
            "AutoModelForSequenceClassification reward model"
        )
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    ensure_distinct_pad_token(tokenizer, model)
    record = record_from_config(model.config, os.path.join(path, "config.json") if os.path.isdir(path) else path)
    if record.attribute_weights is not None and len(record.attribute_weights) != model.config.num_labels:
        raise InputError(
            f"{path}: {len(record.attribute_weights)} attribute weights recorded for a head with "
            f"{model.config.num_labels} outputs; the folder is damaged"
        )
    if device is not None:
        model.to(pick_device(device))
    return model.eval(), tokenizer, record


@contextlib.contextmanager
def quiet_transformers():
    """transformers' loading reports at ERROR only: the loaders below say what matters themselves."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_backbone_model(
    name_or_path: str | None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """(body, tokenizer): the transformer body of any decoder or sequence-classifier folder
    (``AutoModel``, no head), frozen, in eval mode on ``device`` — what ``hsrm embed`` reads hidden
    states from, at the position :func:`last_token_states` reads every reward at. Same path, folder
    checks, dtype names, device choice and tokenizer as :func:`load_reward_model`; a classifier's
    score head is left out (``AutoModel`` does not use it: expected, so not logged)."""
    from transformers import AutoModel

    path = resolve_model_path(os.path.expanduser(name_or_path) if isinstance(name_or_path, str) else name_or_path)
    check_model_exists(path)
    check_model_folder(path)
    kwargs = {"attn_implementation": _register_attention(attn_implementation)} if attn_implementation else {}
    with quiet_transformers():
        model = AutoModel.from_pretrained(
            path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs
        )
    model.to(pick_device(device)).eval().requires_grad_(False)
    return model, load_tokenizer(path, trust_remote_code=trust_remote_code)


DEFAULT_MAX_LENGTH = 2048  # tokens per sequence when neither the user, a benchmark protocol nor the model record says


def resolve_max_length(
    explicit: int | None, record=None, model_config=None, *, protocol: int | None = None, protocol_name: str = ""
) -> int:
    """Tokens kept per sequence (cut from the left), by one rule for every verb:

    1. ``explicit`` — what the user asked for (``--max-length``, ``RewardScorer(max_length=...)``);
    2. ``protocol`` — a benchmark's own setting (RewardBench: 2048);
    3. the model record's ``max_length`` — what the model was trained with;
    4. :data:`DEFAULT_MAX_LENGTH`.

    The result is capped at the model's context (``max_position_embeddings``): past it the positions
    are meaningless (RoPE) or out of range (learned).

    >>> resolve_max_length(None, None), resolve_max_length(512, None), resolve_max_length(None, None, protocol=2048)
    (2048, 512, 2048)
    """
    if explicit is not None and (isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1):
        raise InputError(f"max_length must be a positive number of tokens, got {explicit!r}")
    recorded = getattr(record, "max_length", None)
    value, source = next(
        (v, name)
        for v, name in (
            (explicit, "asked for"),
            (protocol, f"{protocol_name or 'protocol'}"),
            (recorded, "the model record"),
            (DEFAULT_MAX_LENGTH, "default"),
        )
        if v is not None
    )
    context = getattr(model_config, "max_position_embeddings", None)
    if isinstance(context, int) and 0 < context < value:
        logger.warning(
            "max_length %d (%s) exceeds the model's context of %d tokens; using %d", value, source, context, context
        )
        value = context
    return value


def _unwrap(model):
    """The transformers model under a PEFT wrapper. Engine wrappers (DDP, DeepSpeed, FSDP) are not
    looked under: the reward is read through the wrapped model's forward (:func:`read_rewards_in_forward`)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row; right or left padding alike."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.to(positions.dtype)).argmax(-1)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks of a (possibly wrapped) model: the ModuleList whose length is
    ``config.num_hidden_layers`` (``model.layers`` in Llama/Qwen/Mistral, ``transformer.h`` in GPT-2)."""
    inner = _unwrap(model)
    count = getattr(inner.config, "num_hidden_layers", None)
    stacks = [m for m in inner.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if not stacks:
        raise InputError(f"{type(inner).__name__}: no list of {count} decoder layers found; train_top_layers needs one")
    return stacks[0]


def freeze_lower_layers(model, top_layers: int) -> tuple[int, int]:
    """Freeze everything but the top ``top_layers`` decoder blocks, the modules after the stack (the
    final norm) and the score head. Returns (trainable, total) parameter counts.

    The embeddings and the lower blocks then build no autograd graph at all, so a training step costs
    about one forward pass plus a backward through the top blocks only.
    """
    layers = decoder_layers(model)
    if top_layers > len(layers):
        raise InputError(f"train_top_layers={top_layers} but the model has only {len(layers)} decoder layers")
    body, _ = body_and_score_head(model)
    frozen = {id(p) for layer in layers[: len(layers) - top_layers] for p in layer.parameters()}
    embeddings = body.get_input_embeddings() if body is not None and hasattr(body, "get_input_embeddings") else None
    if embeddings is not None:
        frozen |= {id(p) for p in embeddings.parameters()}
    for name, module in body.named_children() if body is not None else ():  # position embeddings (GPT-2 wpe)
        if "embed" in name or name == "wpe":
            frozen |= {id(p) for p in module.parameters()}
    trainable = total = 0
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) not in frozen)
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


def body_and_score_head(model):
    """(transformer body, ``score`` head) of a sequence classifier under any wrapper; either is
    None when the model has no such part. Shared by the padded and the packed forward."""
    inner = _unwrap(model)
    head = getattr(inner, "score", None)
    body = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    return body, head


def last_token_states(body, batch: Mapping[str, Any], *, hidden_layer: int | None = None) -> torch.Tensor:
    """Hidden states (n, hidden) of a transformer ``body`` at each sequence's last real token.

    ``batch`` is padded — ``input_ids`` and ``attention_mask`` (n, width), read at the last position
    whose mask is 1, whatever the padding side or pad id — or packed — one (1, T) row with
    ``position_ids`` restarting at 0 per sequence and ``last_index`` (n,), optionally ``cu_seqlens``
    and ``max_seqlen`` (:func:`hsrm.packing.pack`). ``hidden_layer`` picks an entry of
    ``hidden_states`` (0 = token embeddings); ``None`` is the final, normalised one.

    Packed rows run with ``attention_mask=None``: transformers then keeps sequences apart from the
    position ids (a block-diagonal mask for eager/sdpa/flex, varlen kernels for flash and
    ``hsrm_varlen``, which also get the cumulative lengths so no layer recomputes them), and
    ``use_cache=False`` because a cache turns that detection off.

    A shared-prompt pair batch (:class:`hsrm.data.collators.SharedPromptPairCollator`) holds one row
    per pair with ``segment_ids``, ``position_ids`` and ``last_index`` (flat indices into rows × width):
    it runs with the mask :func:`segment_attention_mask` builds, and is read at those indices.

    A padded batch may also continue cached prefixes (:mod:`hsrm.engine`, shared prompts): ``cache``
    holds the prefixes' keys and values (one row per sequence), ``position_ids`` continue each prefix,
    and ``attention_mask`` spans [prefix | continuation]; the last real token lies in the continuation.
    """
    kwargs: dict[str, Any] = {"use_cache": False}
    if hidden_layer is not None:
        kwargs["output_hidden_states"] = True
    if batch.get("segment_ids") is not None:
        input_ids = batch["input_ids"]
        mask = segment_attention_mask(batch["segment_ids"], body)
        out = body(input_ids=input_ids, position_ids=batch["position_ids"], attention_mask=mask, **kwargs)
        hidden = out.last_hidden_state if hidden_layer is None else out.hidden_states[hidden_layer]
        return hidden.flatten(0, 1)[batch["last_index"].to(hidden.device)]
    if "last_index" in batch:
        from .packing import VARLEN_KWARG_ATTENTION, cu_seqlens_from_position_ids

        input_ids, position_ids = batch["input_ids"], batch["position_ids"]
        if input_ids.shape[0] != 1:
            raise InputError(f"packed input_ids must be one row, got shape {tuple(input_ids.shape)}")
        if getattr(body.config, "_attn_implementation", None) in VARLEN_KWARG_ATTENTION:
            cu_seqlens, longest = batch.get("cu_seqlens"), batch.get("max_seqlen")
            if cu_seqlens is None or longest is None:
                cu_seqlens, longest = cu_seqlens_from_position_ids(position_ids)
            cu_seqlens = cu_seqlens.to(device=input_ids.device, dtype=torch.int32)
            kwargs.update(
                cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=int(longest), max_length_k=int(longest)
            )
        out = body(input_ids=input_ids, position_ids=position_ids, attention_mask=None, **kwargs)
        hidden = out.last_hidden_state if hidden_layer is None else out.hidden_states[hidden_layer]
        return hidden[0, batch["last_index"].to(hidden.device)]
    mask = batch["attention_mask"]
    if batch.get("cache") is not None:
        # A continuation batch (hsrm.engine's shared prompts): the ids continue a prefix whose keys and
        # values are in the cache; the mask covers [prefix | continuation], the positions continue the prefix.
        # use_cache=True: some architectures read a given cache only when asked to use one.
        kwargs.update({cache_argument(body): batch["cache"], "position_ids": batch["position_ids"], "use_cache": True})
    out = body(input_ids=batch["input_ids"], attention_mask=mask, **kwargs)
    hidden = out.last_hidden_state if hidden_layer is None else out.hidden_states[hidden_layer]
    # The hidden states cover the ids only: a cached prefix shifts the mask's last real position by its width.
    index = (last_token_index(mask) - (mask.shape[-1] - batch["input_ids"].shape[-1])).to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def segment_attention_mask(segment_ids: torch.Tensor, body) -> torch.Tensor:
    """The (rows, 1, width, width) attention mask of shared-prompt pair rows: causal, and a token sees
    the shared prompt (segment 0) and its own segment only — the rejected side never sees the chosen
    one; padding sees padding, so no query row is empty (an empty one gives NaN in SDPA).
    Boolean (True = attend) for SDPA; additive (0 or the dtype's lowest) for eager attention, which
    adds the mask to its scores. transformers passes a 4-D mask through unchanged.

    >>> segment_attention_mask(torch.tensor([[0, 1, 2]]), None)[0, 0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    """
    from .data.collators import PROMPT_SEGMENT

    width = segment_ids.shape[-1]
    causal = torch.ones((width, width), dtype=torch.bool, device=segment_ids.device).tril()
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = (causal & ((key == PROMPT_SEGMENT) | (key == query)))[:, None]
    if getattr(getattr(body, "config", None), "_attn_implementation", "sdpa") != "eager":
        return allowed
    dtype = next(body.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def cache_argument(body) -> str:
    """The name under which ``body.forward`` takes a KV cache: ``cache`` since transformers 5.2x,
    ``past_key_values`` before (still accepted there, with a deprecation warning)."""
    import inspect

    parameters = inspect.signature(body.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def reward_outputs(model, batch: Mapping[str, Any]) -> torch.Tensor:
    """Head outputs (n, num_labels) of a padded or packed batch (see :func:`last_token_states`).

    The one place hsrm reads a reward: the trainers (with gradients), the scoring engine
    (:mod:`hsrm.engine`) and through it every verb. The body runs once; the score head is applied
    only at the gathered positions.
    """
    body, head = body_and_score_head(model)
    if head is None or body is None:
        raise InputError(
            f"{type(_unwrap(model)).__name__} has no transformer body with a `score` head: hsrm reads rewards "
            "from AutoModelForSequenceClassification-style models"
        )
    states = last_token_states(body, batch)
    # A peft ModulesToSaveWrapper replaces inner.score; take it from the (possibly wrapped) model.
    return head(states.to(head.weight.dtype if hasattr(head, "weight") else states.dtype))


# The keys of a padded or packed batch that the reward read takes (the rest — margins, labels — are the loss's).
REWARD_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "last_index",
    "cu_seqlens",
    "max_seqlen",
    "segment_ids",
)


def reward_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a training batch that :func:`reward_forward` reads (the model's inputs, no targets)."""
    return {key: batch[key] for key in REWARD_INPUT_KEYS if batch.get(key) is not None}


def reward_forward(self, input_ids=None, attention_mask=None, **batch):
    """``forward`` of a sequence classifier being trained by hsrm: the head outputs (n, num_labels)
    at each sequence's last real token of a padded or packed batch, through :func:`reward_outputs`,
    returned as transformers' own ``SequenceClassifierOutputWithPast`` (``logits``). Keys other than
    the reward read's (``labels`` and the like) are ignored: the trainers compute their own losses."""
    from transformers.modeling_outputs import SequenceClassifierOutputWithPast

    inputs = reward_inputs({"input_ids": input_ids, "attention_mask": attention_mask, **batch})
    return SequenceClassifierOutputWithPast(logits=reward_outputs(self, inputs))


def read_rewards_in_forward(model):
    """Make ``model``'s own ``forward`` read the reward the way hsrm does (:func:`reward_forward`).

    Why the model's own forward and not a training-time wrapper module: the Trainer must call the
    model it was given, so that every engine runs its machinery around the reward read — DDP's
    reducer arms its bucketed, overlapped all-reduce; FSDP2 unshards and reshards the parameters;
    ZeRO-3 gathers them — and a wrapper module would hide the ``PreTrainedModel`` from the
    Trainer's save, PEFT and gradient-checkpointing paths and prefix every saved parameter name.
    Replacing ``forward`` on this instance only keeps the class, the parameter names and
    ``config.architectures``, so the saved folder stays a plain ``AutoModelForSequenceClassification``
    folder; transformers' own forward could not serve as it is: it pools by pad id (wrong when
    pad == eos, trl#2778) and has no packed layout. Under PEFT the inner model's forward is the
    one replaced; PEFT's forward passes the packed keys through to it.
    """
    import types

    inner = _unwrap(model)
    inner.forward = types.MethodType(reward_forward, inner)
    return model


def scalar_reward(outputs: torch.Tensor, attribute_weights: Sequence[float] | None = None) -> torch.Tensor:
    """The scalar reward of a (batch, n) head output: the only output, the helpfulness output (the
    first) of a five-attribute model, or a weighted sum when weights are given (appendix E)."""
    if attribute_weights is not None:
        weights = torch.as_tensor(attribute_weights, dtype=outputs.dtype, device=outputs.device)
        if weights.numel() != outputs.shape[-1]:
            raise InputError(f"{weights.numel()} attribute weights for a head with {outputs.shape[-1]} outputs")
        return outputs @ weights
    return outputs[:, 0]


def apply_lora(
    model,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: Sequence[str] | str | None = "all-linear",
):
    """Wrap with a LoRA adapter; the score head is trained in full and saved with the adapter."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=["score"],
    )
    return get_peft_model(model, config)
