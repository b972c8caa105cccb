"""The model record: what hsrm stores about a model in the ``hsrm`` block of its ``config.json``.

One typed, versioned dataclass with one reader and one writer. Every module that needs to know how
a model was trained (its objective, attribute weights, the ``max_length`` it saw, its reward scale,
its ExPO factor) reads it through :func:`read_record` or the loader
(:func:`hsrm.modeling.load_reward_model`), and every module that writes metadata goes through
:func:`write_record`. The block sits inside ``config.json`` so that the folder stays a plain
Hugging Face checkpoint: transformers keeps unknown config keys as they are.

    >>> r = ModelRecord(objective="regression", attributes=["helpfulness", "verbosity"], attribute_weights=[1.0, -0.5])
    >>> block = r.to_dict()
    >>> block["format_version"], block["attribute_weights"]
    (1, [1.0, -0.5])
    >>> ModelRecord.from_dict({**block, "added_by_a_later_hsrm": 3}).extra
    {'added_by_a_later_hsrm': 3}

Folders written before the record had a version (``format_version`` absent) hold the same keys and
read as version 0.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import InputError

RECORD_KEY = "hsrm"  # the block's name inside config.json
FORMAT_VERSION = 1
Objective = Literal["regression", "bt", "margin_bt", "scaled_bt", "justifier"]
OBJECTIVES = get_args(Objective)


class RecordError(InputError):
    """The ``hsrm`` block of a config.json is damaged or was written by a newer hsrm."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# field -> (what it must be, check); None is always allowed and means "not recorded".
_CHECKS: dict[str, tuple[str, Any]] = {
    "objective": (f"one of {OBJECTIVES}", lambda v: v in OBJECTIVES),
    "attributes": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(a, str) and a for a in v) and v),
    "attribute_weights": (
        "a list of finite numbers",
        lambda v: isinstance(v, list) and v and all(_is_number(w) for w in v),
    ),
    "max_length": (
        "a positive whole number of tokens",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    ),
    "base_model": ("text", lambda v: isinstance(v, str)),
    "init_from": ("text", lambda v: isinstance(v, str)),
    "train_data": ("text", lambda v: isinstance(v, str)),
    "lora": ("true or false", lambda v: isinstance(v, bool)),
    "reward_mean": ("a finite number", _is_number),
    "reward_std": ("a finite number ≥ 0", lambda v: _is_number(v) and v >= 0),
    "reward_stats_on": ("text", lambda v: isinstance(v, str)),
    "eval_metrics": ("a mapping of names to numbers", lambda v: isinstance(v, dict)),
    "expo": ("a mapping with a numeric 'alpha'", lambda v: isinstance(v, dict) and _is_number(v.get("alpha"))),
    "justification_set": ("text", lambda v: isinstance(v, str)),
    "justifier_target": ("text", lambda v: isinstance(v, str)),
    "flip_augmentation": ("true or false", lambda v: isinstance(v, bool)),
    "max_new_tokens": ("a positive whole number", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0),
    "format_version": ("a whole number ≥ 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
}


@dataclass
class ModelRecord:
    """What hsrm knows about a model folder. ``None`` means "not recorded" (a model hsrm did not train)."""

    objective: str | None = None  # regression | bt | margin_bt | scaled_bt | justifier
    attributes: list[str] | None = None  # names of the head's outputs, in order
    attribute_weights: list[float] | None = None  # scalar reward = outputs · weights (HelpSteer2-Preference app. E)
    max_length: int | None = None  # tokens per sequence the model was trained with (left truncation)
    base_model: str | None = None
    init_from: str | None = None  # the regression model a BT run started from (two-stage training)
    train_data: str | None = None
    lora: bool | None = None  # trained with LoRA (merged on save)
    reward_mean: float | None = None  # statistics of the *scalar* reward, on reward_stats_on
    reward_std: float | None = None
    reward_stats_on: str | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    expo: dict[str, Any] | None = None  # {weak, strong, alpha, formula, searched_on, metric, score, ...}
    justification_set: str | None = None  # justifier runs only
    justifier_target: str | None = None
    flip_augmentation: bool | None = None
    max_new_tokens: int | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys this hsrm does not know: kept, written back unchanged

    def __post_init__(self):
        self.validate()

    def validate(self, source: str = "the model record") -> None:
        """Raise :class:`RecordError` naming the field and what it must be."""
        for name, (expected, check) in _CHECKS.items():
            value = getattr(self, name)
            if value is not None and not check(value):
                raise RecordError(f"{source}: hsrm.{name} must be {expected}, got {value!r}")
        if self.format_version > FORMAT_VERSION:
            raise RecordError(
                f"{source}: written by a newer hsrm (record format {self.format_version}; this hsrm reads up "
                f"to {FORMAT_VERSION}); upgrade hsrm to use this model"
            )
        if self.attributes and self.attribute_weights and len(self.attributes) != len(self.attribute_weights):
            raise RecordError(
                f"{source}: {len(self.attribute_weights)} attribute_weights for {len(self.attributes)} "
                f"attributes {self.attributes}"
            )

    # -- conversion
    @classmethod
    def from_dict(cls, block: Any, source: str = "the model record") -> ModelRecord:
        if block is None:
            return cls()
        if not isinstance(block, dict):
            raise RecordError(f"{source}: the hsrm block must be a mapping, got {type(block).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in block.items() if k in known}
        values.setdefault("format_version", 0)  # written before the record was versioned
        if isinstance(values.get("attribute_weights"), list):  # JSON writes 1.0 as 1.0 but users write 1
            values["attribute_weights"] = [float(w) if _is_number(w) else w for w in values["attribute_weights"]]
        record = cls.__new__(cls)
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            setattr(record, f.name, values.get(f.name, default))
        record.extra = {k: v for k, v in block.items() if k not in known}
        if record.eval_metrics is None:
            record.eval_metrics = {}
        record.validate(source)
        return record

    def to_dict(self) -> dict[str, Any]:
        """The block as written: recorded fields only, the current format version, unknown keys kept."""
        self.validate()
        out = {
            k: v for k, v in asdict(self).items() if k not in ("extra", "format_version") and v not in (None, {}, [])
        }
        return {**self.extra, **out, "format_version": FORMAT_VERSION}

    # -- what the scorers need
    @property
    def num_outputs(self) -> int | None:
        return len(self.attributes) if self.attributes else None

    def output_names(self, num_labels: int) -> list[str]:
        if self.attributes and len(self.attributes) == num_labels:
            return list(self.attributes)
        return ["reward"] if num_labels == 1 else [f"output_{i}" for i in range(num_labels)]


def record_from_config(config: Any, source: str = "config.json") -> ModelRecord:
    """The record of a loaded ``transformers`` config (local folder or Hub id alike)."""
    block = config.get(RECORD_KEY) if isinstance(config, dict) else getattr(config, RECORD_KEY, None)
    return ModelRecord.from_dict(block, f"{source}")


def _config_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / "config.json"


def read_record(folder: str | os.PathLike) -> ModelRecord:
    """The record of a local model folder; an empty record for a folder without one (or a Hub id)."""
    path = _config_path(folder)
    if not path.is_file():
        return ModelRecord()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RecordError(
            f"{path} is not valid JSON ({err.msg}, line {err.lineno}); the model folder is damaged"
        ) from None
    if not isinstance(config, dict):
        raise RecordError(f"{path} does not hold a JSON object; the model folder is damaged")
    return record_from_config(config, str(path))


def write_record(folder: str | os.PathLike, record: ModelRecord) -> Path:
    """Store ``record`` as the ``hsrm`` block of ``folder/config.json``; every other key is kept.

    Written atomically (:mod:`hsrm.files`), so a crash leaves the old config.json whole.
    """
    from .files import atomic_write_json

    path = _config_path(folder)
    config = json.loads(path.read_text(encoding="utf-8"))
    config[RECORD_KEY] = record.to_dict()
    return atomic_write_json(path, config, sort_keys=True)


def reward_statistics(rewards: Sequence[float] | Any) -> dict[str, float]:
    """Mean and (population) standard deviation of scalar rewards, as recorded in ``reward_mean`` /
    ``reward_std``; empty when a reward is not finite (a diverged model is still saved, its scale unknown).

    >>> reward_statistics([1.0, 3.0]), reward_statistics([1.0, float("nan")])
    ({'reward_mean': 2.0, 'reward_std': 1.0}, {})
    """
    import logging

    import numpy as np

    values = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise InputError("reward statistics of no rewards")
    if not np.isfinite(values).all():
        logging.getLogger(__name__).warning(
            "%d of %d rewards are not finite: no reward statistics recorded",
            int((~np.isfinite(values)).sum()),
            values.size,
        )
        return {}
    return {"reward_mean": float(values.mean()), "reward_std": float(values.std())}
