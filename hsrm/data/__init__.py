"""Data loaders (one module per source format), rendering, tokenization and collators."""

from .collators import (
    JustifierCollator,
    PackedPairwiseCollator,
    PackedPointwiseCollator,
    PairwiseCollator,
    PointwiseCollator,
)
from .helpsteer import (
    ATTRIBUTES,
    load_helpsteer2_preference,
    load_helpsteer2_ratings,
    overall_preference,
    three_most_similar,
)
from .io import DataError, LoadReport, read_rows
from .messages import parse_hh_transcript, split_helpsteer_turns, to_messages
from .pairs import flip_pair, load_preference_pairs, split_hh_pair
from .render import (
    encode,
    encode_batch,
    encode_pairs,
    ensure_distinct_pad_token,
    render_text,
)
from .rewardbench import SECTIONS, load_rewardbench
from .tokenize import tokenize_justifier_examples, tokenize_pairs, tokenize_ratings

__all__ = [
    "ATTRIBUTES",
    "DataError",
    "JustifierCollator",
    "LoadReport",
    "PackedPairwiseCollator",
    "PackedPointwiseCollator",
    "PairwiseCollator",
    "PointwiseCollator",
    "SECTIONS",
    "encode",
    "encode_batch",
    "encode_pairs",
    "ensure_distinct_pad_token",
    "flip_pair",
    "load_helpsteer2_preference",
    "load_helpsteer2_ratings",
    "load_preference_pairs",
    "load_rewardbench",
    "overall_preference",
    "parse_hh_transcript",
    "read_rows",
    "render_text",
    "split_helpsteer_turns",
    "split_hh_pair",
    "three_most_similar",
    "to_messages",
    "tokenize_justifier_examples",
    "tokenize_pairs",
    "tokenize_ratings",
]
