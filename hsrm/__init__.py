"""hsrm: train, evaluate and serve reward models for LLM alignment."""

__version__ = "0.1.0"

from . import losses  # noqa: F401  (pure functions, cheap to import)
