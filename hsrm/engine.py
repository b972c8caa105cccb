"""The scoring engine: rewards of pre-tokenized sequences, in one of two layouts.

Every verb that needs a reward calls :func:`score_sequences` — ``hsrm score`` and
:class:`hsrm.scoring.RewardScorer`, ``hsrm serve``, ``hsrm evaluate``, the ExPO factor search, the
RLOO reward function, ``hsrm embed --golden-model``, the demo and ``bench/throughput.py`` — and the
engine reads each reward through :func:`hsrm.modeling.reward_outputs`, as the trainers do. A text
therefore gets the same reward everywhere, whatever it was batched with (reward-bench#137).

Layouts:

* ``padded``: sequences sorted by length (longest first, so an out-of-memory error shows on the
  first batch) and right-padded in batches of ``batch_size``; little padding once sorted.
* ``packed``: sequences concatenated into rows of at most ``max_tokens`` tokens with per-sequence
  position ids (:func:`hsrm.packing.pack`): no pad token is computed at all. It needs an attention
  path that keeps packed sequences apart (:func:`hsrm.packing.check_packing_support`).
* ``auto``: packed on CUDA with a varlen attention path (``hsrm_varlen`` in half precision,
  ``flash_attention_2``/``_3``), where it was measured faster (docs/speed.md: 193,400 against
  166,300 real tokens/s on an H200); padded otherwise. On CPU the packed paths build a
  block-diagonal mask over the whole row (eager/sdpa), which costs more than the little padding
  that sorting leaves (``bench/throughput.py --model-shape tiny --device cpu`` prints both), and
  flex attention stays out of ``auto`` because its first call compiles for minutes.

Shared prompts (``share_prompts``, on by default; issue 32): sequences that begin with the same
token ids — the responses of a Best-of-N group, the chosen and rejected of a pair, a GRPO group
sent to ``hsrm serve`` — are grouped by their longest common token-id prefix
(:func:`shared_prefix_groups`, from the ids after templating and truncation, never from the text).
Each group's prefix runs once with a KV cache; the continuations run against that cache, repeated
over the group's rows, with positions continuing the prefix, and each reward is read at the
sequence's last real token by the same :func:`hsrm.modeling.reward_outputs`. In fp32 the rewards
equal the unshared ones within float rounding (tests/test_shared_prompts.py). Sharing applies to
the padded layout with eager or SDPA attention on a causal decoder; otherwise the engine scores
unshared — the packed layout (CUDA), other attention paths, bidirectional encoders, a sliding
window shorter than twice the longest sequence — and says why in ``stats["fallback"]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from .errors import InputError
from .modeling import reward_outputs, scalar_reward

Layout = Literal["auto", "padded", "packed"]
LAYOUTS = get_args(Layout)
DEFAULT_BATCH_SIZE = 8  # sequences per padded batch
DEFAULT_MAX_TOKENS = 16384  # tokens per packed row
# Shorter common prefixes are scored unshared: sharing them saves less than the extra forward call costs.
MIN_SHARED_PREFIX = 16  # tokens
SHARED_ATTENTION = ("eager", "sdpa")  # attention paths whose padded masks keep a cached prefix exact


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    >>> length_sorted_batches([3, 9, 1, 7, 5], 2)
    [[1, 3], [4, 0], [2]]
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


# What one more forward pass costs on the CPU, in padded positions. Measured on bench/serve.py's
# requests (2.5 M-parameter model, one thread, engine alone, best of 3 on a loaded machine): each
# request's 8 sequences in one padded call ran at 0.41× the in-process engine's tokens/s; cut by
# padding_runs with 16, 32, 64 and 128 here at 0.87, 0.78, 1.04 and 0.85× (hsrm serve, issue 33).
CPU_FORWARD_TOKENS = 64


def padding_runs(lengths: Sequence[int], batch_size: int, forward_tokens: int = CPU_FORWARD_TOKENS) -> list[list[int]]:
    """Indices cut into batches of at most ``batch_size`` sequences, longest first, that compute the
    fewest positions: each batch costs its padded positions (members × longest) plus
    ``forward_tokens``. The cheapest cut of the length-sorted order, by dynamic programming.

    A CPU computes every padded position at full price and gains little from wide batches, so one
    client's 8 sequences of mixed length, padded to the longest, computed about twice their real
    tokens (``bench/serve.py``); cut where the lengths jump, they compute little more than their own.

    >>> padding_runs([100, 10, 95, 12], 4)  # one batch: 4 × 100 + 64; these two: 2 × 100 + 2 × 12 + 2 × 64
    [[0, 2], [3, 1]]
    >>> padding_runs([50, 50, 50], 2)
    [[0, 1], [2]]
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    cost, cut = [0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(max(0, end - batch_size), end):  # order[start] is the batch's longest
            total = cost[start] + forward_tokens + (end - start) * lengths[order[start]]
            if total <= cost[end]:  # ties: the later cut, fuller batches first
                cost[end], cut[end] = total, start
    runs, end = [], len(order)
    while end:
        runs.append(order[cut[end] : end])
        end = cut[end]
    return runs[::-1]


def choose_layout(model, layout: str = "auto") -> str:
    """``padded`` or ``packed`` for this model on its device (see the module docstring)."""
    from .packing.attention import (
        VARLEN_ATTENTION,
        VARLEN_KWARG_ATTENTION,
        attention_implementation,
        check_packing_support,
        varlen_kernel,
    )

    if layout not in LAYOUTS:
        raise InputError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if layout == "padded":
        return "padded"
    if layout == "packed":
        check_packing_support(model)
        return "packed"
    parameter = next(model.parameters())
    attention = attention_implementation(model)
    if parameter.device.type != "cuda" or attention not in VARLEN_KWARG_ATTENTION:
        return "padded"
    if attention == VARLEN_ATTENTION and (
        parameter.dtype not in (torch.float16, torch.bfloat16) or varlen_kernel() is None
    ):
        return "padded"  # hsrm_varlen would fall back to one SDPA call per sequence
    return "packed"


def batches(
    sequences: Sequence[Sequence[int]],
    layout: str,
    *,
    pad_id: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    forward_tokens: int | None = None,
):
    """Yield ``(indices, batch)``: the input positions of each batch's sequences and the batch
    (a padded ``{input_ids, attention_mask}`` or a packed ``{input_ids, position_ids, last_index,
    cu_seqlens, max_seqlen}``) as :func:`hsrm.modeling.reward_outputs` reads it. Padded batches
    are :func:`padding_runs` of ``forward_tokens`` when given (the CPU), else
    :func:`length_sorted_batches`."""
    from .data.render import pad_sequences
    from .packing import pack, token_budget_batches

    if layout == "packed":
        if max_tokens is None or max_tokens < 1:
            raise InputError(f"max_tokens must be a positive number of tokens, got {max_tokens!r}")
        for row in token_budget_batches([(len(s),) for s in sequences], max_tokens, "packed"):
            yield row, pack([sequences[i] for i in row], pad_id=pad_id).model_inputs()
    elif layout == "padded":
        lengths = [len(s) for s in sequences]
        cut = padding_runs(lengths, batch_size, forward_tokens) if forward_tokens else None
        for indices in cut or length_sorted_batches(lengths, batch_size):
            ids, mask = pad_sequences([sequences[i] for i in indices], pad_id, "right")
            yield indices, {"input_ids": ids, "attention_mask": mask}
    else:
        raise InputError(f"layout must be 'padded' or 'packed' here, not {layout!r} (choose_layout resolves 'auto')")


def shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids two sequences can share: their longest common prefix, capped so that
    each keeps at least one token of its own, at which its reward is read (a duplicate, or a
    sequence that is a prefix of the other, still gets its own read position).

    >>> shared_prefix_length([1, 2, 3, 4], [1, 2, 5]), shared_prefix_length([1, 2], [1, 2, 3])
    (2, 1)
    >>> shared_prefix_length([7], [8]), shared_prefix_length([7], [7])
    (0, 0)
    """
    import numpy as np

    width = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:width]) != np.asarray(b[:width]))
    common = int(differ[0]) if differ.size else width
    return max(min(common, len(a) - 1, len(b) - 1), 0)


def pair_prompt_length(chosen: Sequence[int], rejected: Sequence[int]) -> int:
    """The prompt a pair computes once in training (:class:`hsrm.data.collators.SharedPromptPairCollator`):
    :func:`shared_prefix_length`, or 0 — each side a row of its own — below :data:`MIN_SHARED_PREFIX`
    tokens, where a row twice as long would cost more attention than the prompt saves. Left
    truncation often cuts the two sides at different places, and they then share nothing.

    >>> pair_prompt_length([1] * 20 + [2], [1] * 20 + [3]), pair_prompt_length([1, 2, 3], [1, 2, 4])
    (20, 0)
    """
    shared = shared_prefix_length(chosen, rejected)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def shared_prefix_groups(
    sequences: Sequence[Sequence[int]], min_prefix: int = MIN_SHARED_PREFIX
) -> list[tuple[int, list[int]]]:
    """``(prefix_length, members)`` of the groups whose prefix the engine computes once.

    Sorted lexicographically, sequences sharing a prefix are neighbours, and a run's common prefix
    is the smallest common prefix of adjacent pairs. Each is capped at the shorter length minus one,
    so every continuation keeps at least one token: a sequence that is a prefix of another (or a
    duplicate) is still read at its own last token. Runs nest (a system prompt shared by all, a user
    prompt by each Best-of-N group); the partition kept is the one computing the fewest tokens,
    ``(size − 1) × prefix`` saved per group, with groups of at least two members and ``min_prefix``
    tokens. Sequences in no group are scored unshared.

    >>> shared_prefix_groups([[1, 2, 3, 4], [9, 9], [1, 2, 3, 5, 6], [1, 2, 3]], min_prefix=2)
    [(2, [3, 0, 2])]
    >>> shared_prefix_groups([[1, 2, 3, 4], [1, 2, 3, 4]], min_prefix=2)  # duplicates: one token each to read
    [(3, [0, 1])]
    """
    order = sorted(range(len(sequences)), key=lambda i: tuple(sequences[i]))
    caps = [shared_prefix_length(sequences[a], sequences[b]) for a, b in zip(order, order[1:])]
    # The runs form a tree (a Cartesian tree of ``caps``): a run splits where its smallest cap is.
    # Built top-down, then solved bottom-up without recursion (the tree can be thousands deep).
    if len(order) < 2:
        return []
    nodes, children = [(0, len(order) - 1)], [[]]  # (first, last) positions in ``order``, inclusive
    index = 0
    while index < len(nodes):  # nodes grows as runs split
        lo, hi = nodes[index]
        smallest = min(caps[lo:hi])
        start = lo
        for end in [k for k in range(lo, hi) if caps[k] == smallest] + [hi]:
            if end > start:  # a run of one sequence shares nothing
                children[index].append(len(nodes))
                nodes.append((start, end))
                children.append([])
            start = end + 1
        index += 1
    best: list[tuple[int, list]] = [(0, [])] * len(nodes)
    for index in reversed(range(len(nodes))):
        lo, hi = nodes[index]
        prefix = min(caps[lo:hi])
        split_saving = sum(best[c][0] for c in children[index])
        whole_saving = (hi - lo) * prefix if prefix >= min_prefix else 0
        if whole_saving > 0 and whole_saving >= split_saving:
            best[index] = (whole_saving, [(prefix, order[lo : hi + 1])])
        else:
            best[index] = (split_saving, [g for c in children[index] for g in best[c][1]])
    return best[0][1]


def transformer_body(model):
    """The transformer body the engine runs: a sequence classifier's (under any wrapper), or the
    model itself when it is a bare body (``AutoModel``, what ``hsrm embed`` reads hidden states
    from); None for anything else (a causal LM, a classifier without a ``score`` head)."""
    from .modeling import body_and_score_head

    body, head = body_and_score_head(model)
    if body is None and head is None and hasattr(model, "get_input_embeddings"):
        return model
    return body if head is not None else None


def shared_prefix_fallback(model, longest: int) -> str | None:
    """Why this model cannot score a cached prefix exactly (so the engine scores unshared), or None.

    Exactness needs attention that is causal — a prefix's keys must not depend on what follows it,
    which rules out bidirectional encoders (DeBERTa, BERT reward models) — a body that takes a cache
    and position ids, an attention path whose padded mask keeps the cached prefix's padding out
    (eager and SDPA; FlashAttention's padded path assumes left padding), and no sliding window the
    padded layout could cross (windows are counted in cache slots, which padding stretches).
    """
    import inspect

    from .modeling import cache_argument

    body = transformer_body(model)
    if body is None:
        return "no transformer body with a score head"
    attention = getattr(body.config, "_attn_implementation", None)
    if attention not in SHARED_ATTENTION:
        return f"attention {attention!r} (sharing needs {' or '.join(SHARED_ATTENTION)})"
    parameters = inspect.signature(body.forward).parameters
    if cache_argument(body) not in parameters or "position_ids" not in parameters:
        return f"{type(body).__name__} takes no KV cache and position ids"
    causal = [m.is_causal for m in body.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if not causal or not all(causal):
        return f"{type(body).__name__} has bidirectional (or unknown) attention"
    window = getattr(body.config, "sliding_window", None)
    if isinstance(window, int) and window < 2 * longest:
        return f"sliding window of {window} tokens, sequences up to {longest}"
    return None


# A prefix pass takes the next (shorter) prefix while its padded positions stay within this factor
# of its real tokens: Best-of-N prompts are few and their lengths heavy-tailed, so one padded pass
# over all of them could compute more padding than sharing saves.
PREFIX_PADDING = 1.25


def prefix_batches(groups: Sequence[tuple[int, Sequence[int]]], batch_size: int) -> list[list[list]]:
    """The order of the shared work: ``batch_size`` groups at a time, longest prefix first; each
    such batch split into prefix passes (forward calls) of similar lengths (:data:`PREFIX_PADDING`).
    The members' continuations of a batch are then sorted by length across its groups and cut into
    batches: a Best-of-N group's own responses vary too much in length to make a batch with little padding.

    >>> prefix_batches([(4, [0, 1]), (9, [2, 3, 4]), (8, [5, 6]), (2, [7, 8])], 3)  # 3 × 9 > 1.25 × (9 + 8 + 4)
    [[[(9, [2, 3, 4]), (8, [5, 6])], [(4, [0, 1])]], [[(2, [7, 8])]]]
    """
    ordered = sorted(groups, key=lambda group: -group[0])
    batches = []
    for start in range(0, len(ordered), batch_size):
        passes: list[list] = []
        for group in ordered[start : start + batch_size]:
            current = passes[-1] if passes else None
            if current and (len(current) + 1) * current[0][0] <= PREFIX_PADDING * (
                sum(length for length, _ in current) + group[0]
            ):
                current.append(group)
            else:
                passes.append([group])
        batches.append(passes)
    return batches


def continuation_runs(lengths: Sequence[int], batch_size: int, forward_tokens: int | None) -> list:
    """The continuation batches of one batch of groups, as positions in ``lengths`` (sorted longest
    first): :func:`padding_runs` of ``forward_tokens`` on the CPU, else ``batch_size`` at a time.

    >>> continuation_runs([90, 80, 8, 7], 4, 64), continuation_runs([90, 80, 8, 7], 4, None)
    ([[0, 1], [2, 3]], [range(0, 4)])
    """
    if forward_tokens:
        return padding_runs(lengths, batch_size, forward_tokens)
    return [range(start, min(start + batch_size, len(lengths))) for start in range(0, len(lengths), batch_size)]


def shared_prefix_batches(
    model,
    sequences: Sequence[Sequence[int]],
    groups: Sequence[tuple[int, Sequence[int]]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    forward_tokens: int | None = None,
):
    """Yield ``(indices, batch)`` for the members of ``groups`` (see :func:`shared_prefix_groups`):
    continuation batches that :func:`hsrm.modeling.reward_outputs` reads like padded ones.

    Each prefix pass of :func:`prefix_batches` runs right-padded in one forward call that keeps its
    KV cache; each group keeps its own rows of it, cut to its length. The members' continuations
    then run, longest first, ``batch_size`` rows at a time (or the :func:`padding_runs` of
    ``forward_tokens``, on the CPU), against their prefix's keys and values
    (copied per row into one tensor per layer, right-padded to the chunk's longest prefix:
    attention takes one key row per query row), with the mask [prefix mask | continuation mask]
    and positions continuing from each prefix's length.
    """
    from transformers import DynamicCache

    from .data.render import pad_sequences

    body = transformer_body(model)
    for passes in prefix_batches(groups, batch_size):
        taken, cached = [], []  # the groups of this batch, and each one's [(keys, values) per layer]
        for part in passes:
            prefixes = [list(sequences[members[0]][:length]) for length, members in part]
            prefix_ids, prefix_mask = pad_sequences(prefixes, pad_id, "right")
            out = body(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device), use_cache=True)
            layers = (getattr(out, "cache", None) or out.past_key_values).layers
            for row, (length, members) in enumerate(part):
                taken.append((length, members))
                cached.append([(layer.keys[row, :, :length], layer.values[row, :, :length]) for layer in layers])
        rows = [(i, g) for g, (_, members) in enumerate(taken) for i in members]
        rows.sort(key=lambda row: -(len(sequences[row[0]]) - taken[row[1]][0]))
        for run in continuation_runs([len(sequences[i]) - taken[g][0] for i, g in rows], batch_size, forward_tokens):
            chunk = [rows[k] for k in run]
            lengths = [taken[g][0] for _, g in chunk]
            width = max(lengths)
            prefix_mask = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
            keys_values = []
            for layer, (keys, values) in enumerate(cached[chunk[0][1]]):
                heads, _, dim = keys.shape
                k = keys.new_zeros((len(chunk), heads, width, dim))
                v = values.new_zeros((len(chunk), heads, width, dim))
                for row, (_, g) in enumerate(chunk):
                    k[row, :, : lengths[row]], v[row, :, : lengths[row]] = cached[g][layer]
                keys_values.append((k, v))
            for row, length in enumerate(lengths):
                prefix_mask[row, :length] = 1
            ids, mask = pad_sequences([list(sequences[i][taken[g][0] :]) for i, g in chunk], pad_id, "right")
            ids, mask = ids.to(device), mask.to(device)
            yield (
                [i for i, _ in chunk],
                {
                    "input_ids": ids,
                    "attention_mask": torch.cat([prefix_mask, mask], dim=1),
                    "position_ids": torch.tensor(lengths, device=device)[:, None]
                    + torch.arange(ids.shape[1], device=device)[None],
                    "cache": DynamicCache(ddp_cache_data=keys_values),
                },
            )


class PlannedBatches:
    """The batches of one engine call, in order, as ``(indices, batch)``; ``len`` is their number
    (for a progress bar) before any runs. Iterating fills ``stats["positions_computed"]``."""

    def __init__(self, parts, total: int, positions: int, stats: dict | None):
        self.parts, self.total, self.positions, self.stats = parts, total, positions, stats

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        for indices, batch in self.parts:
            self.positions += batch["input_ids"].numel()
            yield indices, batch
        if self.stats is not None:
            self.stats["positions_computed"] = self.positions


def planned_batches(
    model,
    sequences: Sequence[Sequence[int]],
    layout: str,
    *,
    pad_id: int,
    batch_size: int,
    max_tokens: int,
    share_prompts: bool,
    device: torch.device,
    stats: dict | None = None,
) -> PlannedBatches:
    """Every batch of an engine call over ``sequences`` (the reward read of :func:`score_sequences`,
    the hidden states of ``hsrm embed``), ``layout`` resolved (``padded`` or ``packed``): with
    ``share_prompts`` and a model that allows it (:func:`shared_prefix_fallback`), the groups of
    :func:`shared_prefix_groups` as continuation batches of their cached prefixes; every other
    sequence in :func:`batches`. ``stats`` as :func:`score_sequences` documents it."""
    forward_tokens = CPU_FORWARD_TOKENS if torch.device(device).type == "cpu" else None
    groups, fallback = [], None
    if share_prompts:
        fallback = (
            f"{layout} layout (sharing runs in the padded one)"
            if layout != "padded"
            else shared_prefix_fallback(model, max(map(len, sequences)))
        )
        groups = shared_prefix_groups(sequences) if fallback is None else []
    in_group = {i for _, members in groups for i in members}
    alone = [i for i in range(len(sequences)) if i not in in_group]
    plan = [
        ([alone[k] for k in indices], batch)
        for indices, batch in (
            batches(
                [sequences[i] for i in alone],
                layout,
                pad_id=pad_id,
                batch_size=batch_size,
                max_tokens=max_tokens,
                forward_tokens=forward_tokens,
            )
            if alone
            else ()
        )
    ]
    shared = shared_prefix_batches(
        model, sequences, groups, pad_id=pad_id, batch_size=batch_size, device=device, forward_tokens=forward_tokens
    )
    grouped = prefix_batches(groups, batch_size)
    total = len(plan) + sum(
        len(
            continuation_runs(
                sorted(
                    (len(sequences[i]) - length for part in passes for length, members in part for i in members),
                    reverse=True,
                ),
                batch_size,
                forward_tokens,
            )
        )
        for passes in grouped
    )
    positions = sum(len(part) * part[0][0] for passes in grouped for part in passes)  # the prefix passes
    if stats is not None:
        tokens = sum(map(len, sequences))
        stats.update(
            sequences=len(sequences),
            shared_sequences=len(in_group),
            shared_groups=len(groups),
            tokens=tokens,
            tokens_computed=tokens - sum((len(members) - 1) * length for length, members in groups),
            fallback=fallback,
        )
    return PlannedBatches(itertools.chain(plan, shared), total, positions, stats)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.inference_mode()
def score_sequences(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    layout: str = "auto",
    pad_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    attribute_weights: Sequence[float] | None = None,
    all_outputs: bool = False,
    progress: bool = False,
    desc: str = "scoring",
    share_prompts: bool = True,
    stats: dict | None = None,
) -> torch.Tensor:
    """Rewards of pre-tokenized sequences, in input order, as float32 on the CPU.

    Returns shape (n,) — the scalar reward, ``scalar_reward(outputs, attribute_weights)``: the
    weighted sum of the head's outputs when weights are given, else its first output — or, with
    ``all_outputs``, the raw head outputs (n, num_labels). Each reward is read at its sequence's
    last real token, so neither the layout, the batch nor prompt sharing changes it beyond float rounding.

    ``share_prompts``: compute each common token-id prefix once (module docstring); where the model
    or layout cannot do that exactly, the sequences are scored unshared. ``stats``, when given, is
    filled with what was computed: ``sequences``, ``shared_sequences``, ``shared_groups``,
    ``tokens`` (in the sequences), ``tokens_computed`` (prefixes once), ``positions_computed``
    (what the forward passes ran, padding included) and ``fallback`` (why nothing was shared, or None).
    """
    from tqdm.auto import tqdm

    num_labels = int(getattr(model.config, "num_labels", 1))
    if not sequences:
        return torch.zeros((0, num_labels) if all_outputs else (0,), dtype=torch.float32)
    empty = next((i for i, s in enumerate(sequences) if len(s) == 0), None)
    if empty is not None:
        raise InputError(f"sequence {empty} is empty; every sequence needs at least one token")
    chosen = choose_layout(model, layout)
    if pad_id is None:
        pad_id = getattr(model.config, "pad_token_id", None)
        pad_id = pad_id if isinstance(pad_id, int) else 0  # any id works: the mask, not the id, marks padding
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    width = num_labels if all_outputs else None
    results = torch.empty((len(sequences), width) if width else (len(sequences),), dtype=torch.float32)
    work = planned_batches(
        model,
        sequences,
        chosen,
        pad_id=pad_id,
        batch_size=batch_size,
        max_tokens=max_tokens,
        share_prompts=share_prompts,
        device=device,
        stats=stats,
    )
    try:
        for indices, batch in tqdm(work, total=len(work), desc=desc, unit="batch", disable=not progress, leave=False):
            outputs = reward_outputs(model, to_device(batch, device)).float()
            values = outputs if all_outputs else scalar_reward(outputs, attribute_weights)
            results[torch.as_tensor(indices)] = values.cpu()
    finally:
        model.train(was_training)
    return results


def packing_discrepancy(model, sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, float]:
    """Largest |packed − padded| and |padded(batch) − padded(one at a time)| head outputs for the same
    sequences: the first must not exceed the second's order of magnitude (bf16 noise, issue 8)."""
    everything = {"pad_id": pad_id, "all_outputs": True, "batch_size": len(sequences), "share_prompts": False}
    packed = score_sequences(model, sequences, layout="packed", max_tokens=sum(map(len, sequences)), **everything)
    padded = score_sequences(model, sequences, layout="padded", **everything)
    alone = score_sequences(model, sequences, layout="padded", **{**everything, "batch_size": 1})
    return {
        "packed_vs_padded": float((packed - padded).abs().max()),
        "padded_vs_alone": float((padded - alone).abs().max()),
        "packed_vs_alone": float((packed - alone).abs().max()),
    }
