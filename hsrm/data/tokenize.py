"""Training data → token ids: pairs, rated responses and justifier examples, as ``datasets`` columns.

Every source goes through one batched ``datasets.map`` (a batch of rows → one chat-template call and
one call into the fast tokenizer's backend, :mod:`hsrm.data.render`), optionally over ``num_proc``
processes, and is cached by fingerprint: the input dataset's fingerprint, the tokenizer's
definition and chat template, ``max_length`` and :data:`TOKENIZED_FORMAT`. The training run wraps
the calls in ``main_process_first``, so the first process writes the cache and the others read it.
How much truncation cut is kept per row in the cached data, so the counts are the same from a cache.

    tokenized, stats = tokenize_pairs(pairs, tokenizer, max_length=2048)   # chosen_ids, rejected_ids, margin

The ids are exactly those of :func:`hsrm.data.render.encode`, one example at a time (tests/test_tokenize.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .justifications import encode_justifier_examples, truncation_summary
from .render import TruncationStats, encode_batch, encode_pairs

logger = logging.getLogger(__name__)

TOKENIZED_FORMAT = 1  # part of every cache key: bump it when the ids written for the same input change
CACHE_FOLDER = "hsrm_tokenized"  # under datasets' cache (HF_DATASETS_CACHE)


def tokenize_pairs(dataset, tokenizer, max_length: int | None, *, num_proc: int | None = None):
    """Pairs (``prompt``, ``chosen``, ``rejected``, optional ``margin`` and ``rejected_prompt``) →
    ``chosen_ids, rejected_ids, margin`` and the truncation stats; no row is dropped."""
    tokenized = map_cached(dataset, _pair_rows, "pairs", tokenizer, max_length, num_proc)
    stats = _truncation_stats(tokenized, ("chosen_tokens_cut", "rejected_tokens_cut"))
    logger.info("tokenized %d pairs: %s", len(tokenized), stats.summary())
    return tokenized.remove_columns(["chosen_tokens_cut", "rejected_tokens_cut"]), stats


def tokenize_ratings(
    dataset, tokenizer, attributes: Sequence[str], max_length: int | None, *, num_proc: int | None = None
):
    """Rated responses (``prompt``, ``response``, one column per attribute) → ``input_ids, labels``
    (one float per attribute) and the truncation stats."""
    tokenized = map_cached(
        dataset, _rating_rows, "ratings", tokenizer, max_length, num_proc, attributes=list(attributes)
    )
    stats = _truncation_stats(tokenized, ("tokens_cut",))
    logger.info("tokenized %d rated responses: %s", len(tokenized), stats.summary())
    return tokenized.remove_columns(["tokens_cut"]), stats


def tokenize_justifier_examples(dataset, tokenizer, max_length: int | None, *, num_proc: int | None = None):
    """Justifier examples (``prompt``, ``response_1``, ``response_2``, ``target``) → ``input_ids,
    labels`` and a summary of what was cut. Examples whose target alone exceeds ``max_length`` are
    dropped and counted."""
    tokenized = map_cached(dataset, _justifier_rows, "justifier", tokenizer, max_length, num_proc)
    fits = tokenized["target_fits"]
    stats = TruncationStats()
    stats.add(cut for cut, kept in zip(tokenized["prompt_tokens_cut"], fits) if kept)
    too_long = len(tokenized) - stats.sequences
    kept = tokenized.filter(lambda flags: flags, input_columns="target_fits", batched=True) if too_long else tokenized
    summary = truncation_summary(stats) + (
        f"; {too_long} examples dropped (target longer than max_length)" if too_long else ""
    )
    logger.info("tokenized %d justifier examples: %s", len(kept), summary)
    return kept.remove_columns(["prompt_tokens_cut", "target_fits"]), summary


# ------------------------------------------------------------------------------ one batch of rows
def _pair_rows(batch: dict, tokenizer, max_length: int | None) -> dict:
    prompts = batch["prompt"]
    (chosen, chosen_cut), (rejected, rejected_cut) = encode_pairs(
        tokenizer,
        prompts,
        batch["chosen"],
        batch["rejected"],
        max_length,
        rejected_prompts=batch.get("rejected_prompt"),
    )
    margins = [float(m) for m in batch["margin"]] if "margin" in batch else [1.0] * len(prompts)
    return {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "margin": margins,
        "chosen_tokens_cut": chosen_cut,
        "rejected_tokens_cut": rejected_cut,
    }


def _rating_rows(batch: dict, tokenizer, max_length: int | None, attributes: list[str]) -> dict:
    ids, cut = encode_batch(tokenizer, batch["prompt"], batch["response"], max_length)
    labels = [[float(value) for value in row] for row in zip(*(batch[a] for a in attributes))]
    return {"input_ids": ids, "labels": labels, "tokens_cut": cut}


def _justifier_rows(batch: dict, tokenizer, max_length: int | None) -> dict:
    encoded = encode_justifier_examples(
        tokenizer, batch["prompt"], batch["response_1"], batch["response_2"], batch["target"], max_length
    )
    # A dropped example keeps a row here (empty ids, target_fits False) so the count survives the cache.
    return {
        "input_ids": [e[0] if e else [] for e in encoded],
        "labels": [e[1] if e else [] for e in encoded],
        "prompt_tokens_cut": [e[2] if e else 0 for e in encoded],
        "target_fits": [e is not None for e in encoded],
    }


# ----------------------------------------------------------------------------------- the map
def map_cached(
    dataset,
    rows: Callable[..., dict],
    kind: str,
    tokenizer,
    max_length: int | None,
    num_proc: int | None,
    **options: Any,
):
    """``dataset.map(rows, batched=True)`` into a cache file named by the fingerprint of everything
    the ids depend on (an in-memory dataset gets no cache file from ``datasets`` itself)."""
    import datasets
    from datasets.fingerprint import Hasher

    fn_kwargs = {"tokenizer": tokenizer, "max_length": max_length, **options}
    if len(dataset) == 0:  # map never calls the function on no rows, so the columns would be missing
        return datasets.Dataset.from_dict(rows({name: [] for name in dataset.column_names}, **fn_kwargs))
    fingerprint = Hasher.hash(
        [kind, TOKENIZED_FORMAT, dataset._fingerprint, tokenizer_fingerprint(tokenizer), max_length, options]
    )
    cache_file = None
    if datasets.is_caching_enabled():
        folder = Path(datasets.config.HF_DATASETS_CACHE) / CACHE_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        cache_file = str(folder / f"{kind}-{fingerprint}.arrow")
    return dataset.map(
        rows,
        batched=True,
        fn_kwargs=fn_kwargs,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        cache_file_name=cache_file,
        new_fingerprint=fingerprint,
        load_from_cache_file=True,
        desc=f"tokenizing {kind}",
    )


def tokenizer_fingerprint(tokenizer) -> str:
    """What the ids depend on: the tokenizer's own definition (a fast tokenizer's JSON, which holds
    every added token) and its chat template."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else Hasher.hash(tokenizer)
    return Hasher.hash(
        [
            type(tokenizer).__name__,
            definition,
            getattr(tokenizer, "chat_template", None),
            bool(getattr(tokenizer, "split_special_tokens", False)),
        ]
    )


def _truncation_stats(tokenized, columns: Sequence[str]) -> TruncationStats:
    stats = TruncationStats()
    for column in columns:
        stats.add(tokenized[column])
    return stats
