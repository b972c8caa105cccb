"""Command-line overrides and recipe files, without importing transformers (the embedding CLIs use
this too and stay light)."""

from __future__ import annotations

import os
from typing import Any

import yaml


def coerce(text: str) -> Any:
    """A command-line value as YAML would read it: 3 → int, 1e-6 → float, true → bool, [a, b] → list."""
    if text.strip().lower() in ("yes", "no", "on", "off", "y", "n"):
        return text  # YAML 1.1 would read `--save_strategy no` as False
    value = yaml.safe_load(text)
    if isinstance(value, str):  # PyYAML reads "1e-6" (no dot) as text
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--flag`` pairs into a dict."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}; overrides look like --key value")
        key = token[2:].replace("-", "_")
        if "=" in key:
            key, raw = key.split("=", 1)
            overrides[key] = coerce(raw)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            overrides[key] = coerce(argv[i + 1])
            i += 2
        else:
            overrides[key] = True
            i += 1
    return overrides


def read_yaml_mapping(path: str | os.PathLike, what: str = "a recipe") -> dict[str, Any]:
    """The top-level mapping of a YAML file, or a clear error when the file holds something else."""
    with open(path, encoding="utf-8") as handle:
        try:
            loaded = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ValueError(f"{path}: not valid YAML{line} ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: {what} must be a YAML mapping of keys")
    return loaded
