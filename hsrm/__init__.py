"""hsrm: train, evaluate and serve reward models for LLM alignment.

The public API (each name is imported on first use, so ``import hsrm`` stays cheap)::

    import hsrm

    model, tokenizer, record = hsrm.load_reward_model("runs/scaled-bt")   # a plain HF folder or Hub id
    scorer = hsrm.RewardScorer("runs/scaled-bt")                           # also a TRL reward function
    hsrm.score("runs/scaled-bt", ["What is 2+2?"], ["4"])                  # -> [reward]
    hsrm.evaluate("runs/scaled-bt", "reward_bench_filtered_sample.jsonl")  # the report `hsrm evaluate` prints
    hsrm.extrapolate("runs/sft-rm", "runs/scaled-bt", 0.5, "runs/expo")   # ExPO: θ_strong + α(θ_strong − θ_weak)
    hsrm.losses.scaled_bt_loss(chosen_rewards, rejected_rewards, margins)

Everything else lives in its module (``hsrm.engine``, ``hsrm.packing``, ``hsrm.embedding`` …).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "load_reward_model": ("hsrm.modeling", "load_reward_model"),
    "RewardScorer": ("hsrm.scoring", "RewardScorer"),
    "score": ("hsrm.scoring", "score"),
    "score_sequences": ("hsrm.engine", "score_sequences"),
    "evaluate": ("hsrm.evaluation", "evaluate_model"),
    "extrapolate": ("hsrm.expo", "extrapolate_folder"),
    "ModelRecord": ("hsrm.record", "ModelRecord"),
    "read_record": ("hsrm.record", "read_record"),
    "RewardConfig": ("hsrm.config", "RewardConfig"),
    "JustifierConfig": ("hsrm.config", "JustifierConfig"),
    "losses": ("hsrm.losses", None),
}

__all__ = [
    "JustifierConfig",
    "ModelRecord",
    "RewardConfig",
    "RewardScorer",
    "__version__",
    "evaluate",
    "extrapolate",
    "load_reward_model",
    "losses",
    "read_record",
    "score",
    "score_sequences",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from . import losses
    from .config import JustifierConfig, RewardConfig
    from .engine import score_sequences
    from .evaluation import evaluate_model as evaluate
    from .expo import extrapolate_folder as extrapolate
    from .modeling import load_reward_model
    from .record import ModelRecord, read_record
    from .scoring import RewardScorer, score


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hsrm' has no attribute {name!r}")
    module_name, attribute = _PUBLIC[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
