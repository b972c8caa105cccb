"""Golden rewards, simulated annotators, and every pair builder of the lightweight path.

Paper: Sun et al. (2024), section 4 and appendix D.5. An annotator compares two responses
whose golden rewards differ by Δr and labels the better one correctly with probability

    P(correct | Δr) = ξ(|Δr|) = σ(β·|Δr|),

β = 0 being a coin flip and β → ∞ a perfect annotator (eq. 23–24). The expected error rate of a
set of pairs is therefore mean(1 − σ(β|Δr_i|)).

Pair designs (section 6.3, ``build_pairs``, what ``hsrm study`` and ``hsrm fit --beta`` annotate):
*random* (two random responses of a prompt), *similar* (the two middle-ranked responses of a
prompt by golden reward: ranks 5 and 6 of 10), *diverse* (the best and the worst). Each design
fixes which responses are shown to annotators; the pairing decides whether they are compared
within their prompt (in-prompt) or shuffled against responses of other prompts (cross-prompt,
"X-Prompt" in the paper's figures), so both see the same responses.

Candidate pools (``in_prompt_pairs``, ``cross_prompt_pairs``, ``round_candidates``, what
``hsrm active`` and ``hsrm select`` choose from): every pair within each prompt, or distinct
random pairs across prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from ..errors import InputError

Design = Literal["random", "similar", "diverse"]  # which of a prompt's responses annotators compare
Pairing = Literal["in-prompt", "cross-prompt"]
DESIGNS, PAIRINGS = get_args(Design), get_args(Pairing)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1 / (1 + e^{−x}), numerically stable for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def correct_label_probability(delta: np.ndarray, beta: float) -> np.ndarray:
    """ξ(Δr) = σ(β·|Δr|) (eq. 23): the chance an annotator orders a pair like the golden reward."""
    if beta < 0:
        raise InputError(f"beta must be ≥ 0 (0 = random annotator), got {beta}")
    return sigmoid(beta * np.abs(np.asarray(delta, dtype=np.float64)))


def expected_error_rate(golden_first: np.ndarray, golden_second: np.ndarray, beta: float) -> float:
    """Theoretical annotation error rate of a design: mean over pairs of 1 − σ(β|Δr|)."""
    delta = np.asarray(golden_first, dtype=np.float64) - np.asarray(golden_second, dtype=np.float64)
    return float(np.mean(1.0 - correct_label_probability(delta, beta)))


def simulate_annotations(
    golden_first: np.ndarray, golden_second: np.ndarray, beta: float, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Noisy labels ``first_wins`` (bool, one per pair): correct with probability σ(β|Δr|).

    A pair with Δr = 0 has no correct answer; it is a coin flip (σ(0) = ½ either way).
    """
    rng = np.random.default_rng(rng)
    golden_first = np.asarray(golden_first, dtype=np.float64)
    golden_second = np.asarray(golden_second, dtype=np.float64)
    if golden_first.shape != golden_second.shape:
        raise InputError(f"golden_first {golden_first.shape} and golden_second {golden_second.shape} differ in shape")
    truth = golden_first > golden_second
    correct = rng.random(truth.shape) < correct_label_probability(golden_first - golden_second, beta)
    return np.where(correct, truth, ~truth)


def observed_error_rate(golden_first: np.ndarray, golden_second: np.ndarray, first_wins: np.ndarray) -> float:
    """Fraction of annotated pairs whose label disagrees with the golden order (ties excluded)."""
    golden_first = np.asarray(golden_first, dtype=np.float64)
    golden_second = np.asarray(golden_second, dtype=np.float64)
    decided = golden_first != golden_second
    if not decided.any():
        return float("nan")
    wrong = (golden_first > golden_second) != np.asarray(first_wins, dtype=bool)
    return float(wrong[decided].mean())


# ---------------------------------------------------------------- pair designs


def select_design(
    prompt_ids: Sequence, golden: np.ndarray, design: str, rng: np.random.Generator | int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Two responses per prompt (prompts with at least two): (first, second) index arrays.

    * random: two distinct responses drawn uniformly;
    * similar: the two middle-ranked by golden reward — sorted ascending, positions ⌊n/2⌋−1 and
      ⌊n/2⌋ (ranks 5 and 6 of 10);
    * diverse: the highest and the lowest golden reward.
    The order inside a pair is random, so position carries no information.
    """
    if design not in DESIGNS:
        raise InputError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    rng = np.random.default_rng(rng)
    golden = np.asarray(golden, dtype=np.float64)
    prompt_ids = np.asarray(prompt_ids)
    if len(golden) != len(prompt_ids):
        raise InputError(f"{len(prompt_ids)} prompt ids but {len(golden)} golden rewards")
    _, first_seen, inverse = np.unique(prompt_ids, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    # Responses sorted by (prompt, golden reward): each prompt is a contiguous, ranked block.
    ranked = np.lexsort((golden, inverse))
    sizes = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    usable = np.argsort(first_seen)  # prompts in order of first appearance
    usable = usable[sizes[usable] >= 2]
    if len(usable) == 0:
        raise InputError("no prompt has two or more responses; in-prompt designs need at least two per prompt")
    start, size = starts[usable], sizes[usable]
    if design == "random":
        # Two distinct uniform positions: a in [0, n), b in [0, n−1) shifted past a.
        pos_a = (rng.random(len(size)) * size).astype(np.int64)
        pos_b = (rng.random(len(size)) * (size - 1)).astype(np.int64)
        pos_b = pos_b + (pos_b >= pos_a)
    elif design == "similar":
        pos_a, pos_b = size // 2 - 1, size // 2
    else:
        pos_a, pos_b = size - 1, np.zeros_like(size)
    first, second = ranked[start + pos_a], ranked[start + pos_b]
    swap = rng.random(len(first)) < 0.5
    first, second = np.where(swap, second, first), np.where(swap, first, second)
    return first.astype(np.int64), second.astype(np.int64)


def cross_prompt_shuffle(
    first: np.ndarray,
    second: np.ndarray,
    prompt_ids: Sequence,
    rng: np.random.Generator | int | None = None,
    max_tries: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-pair the same responses at random so that the two sides of every pair come from
    different prompts (the paper's X-Prompt annotation of a design's responses)."""
    rng = np.random.default_rng(rng)
    prompt_ids = np.asarray(prompt_ids)
    pool = np.concatenate([first, second])
    if len(np.unique(prompt_ids[pool])) < 2:
        raise InputError("cross-prompt pairs need responses from at least two prompts")
    n = len(first)
    for _ in range(max_tries):
        perm = rng.permutation(pool)
        a, b = perm[:n], perm[n : 2 * n]
        clash = prompt_ids[a] == prompt_ids[b]
        # Repair the few same-prompt pairs by swapping their second side with random other pairs.
        for i in np.flatnonzero(clash):
            for j in rng.permutation(n):
                if prompt_ids[a[i]] != prompt_ids[b[j]] and prompt_ids[a[j]] != prompt_ids[b[i]]:
                    b[i], b[j] = b[j], b[i]
                    break
        if not np.any(prompt_ids[a] == prompt_ids[b]):
            return a, b
    raise InputError("could not pair responses across prompts (one prompt dominates the pool)")


def in_prompt_pairs(groups: Sequence[np.ndarray]) -> np.ndarray:
    """Every unordered pair of responses within each prompt: (Σ n_p(n_p−1)/2, 2) item indices."""
    blocks = []
    for members in groups:
        if len(members) >= 2:
            a, b = np.triu_indices(len(members), k=1)
            blocks.append(np.stack([members[a], members[b]], axis=1))
    return np.concatenate(blocks) if blocks else np.zeros((0, 2), dtype=np.int64)


def cross_prompt_pairs(
    members: np.ndarray, prompt_ids: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_pairs`` distinct random pairs of ``members`` (item indices) answering different prompts."""
    if len(np.unique(prompt_ids[members])) < 2:
        raise InputError("cross-prompt pairs need responses to at least two prompts")
    found: dict[tuple[int, int], None] = {}
    possible = len(members) * (len(members) - 1) // 2
    for _ in range(100):
        draw = members[rng.integers(len(members), size=(2 * (n_pairs - len(found)) + 16, 2))]
        draw = draw[prompt_ids[draw[:, 0]] != prompt_ids[draw[:, 1]]]
        for a, b in draw:
            key = (int(min(a, b)), int(max(a, b)))
            if key not in found:
                found[key] = None
                if len(found) == n_pairs:
                    break
        if len(found) >= min(n_pairs, possible):
            break
    return np.array(list(found), dtype=np.int64).reshape(-1, 2)


def round_candidates(
    prompt_groups: Sequence[np.ndarray],
    prompt_ids: np.ndarray,
    pairing: str,
    prompts_per_round: int,
    n_candidates: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The candidate pairs of one round of the active loop: draw prompts, pair their responses, keep
    ``n_candidates`` at random, each in a random order (position carries no information)."""
    chosen = rng.choice(len(prompt_groups), size=min(prompts_per_round, len(prompt_groups)), replace=False)
    groups = [prompt_groups[i] for i in chosen]
    if pairing == "in-prompt":
        pairs = in_prompt_pairs(groups)
        if len(pairs) > n_candidates:
            pairs = pairs[rng.choice(len(pairs), size=n_candidates, replace=False)]
    else:
        pairs = cross_prompt_pairs(np.concatenate(groups), prompt_ids, n_candidates, rng)
    swap = rng.random(len(pairs)) < 0.5
    return np.where(swap[:, None], pairs[:, ::-1], pairs)


def pair_keys(pairs: np.ndarray, n_items: int) -> np.ndarray:
    """One integer per unordered pair of items, to find pairs already annotated."""
    return np.minimum(pairs[:, 0], pairs[:, 1]) * n_items + np.maximum(pairs[:, 0], pairs[:, 1])


@dataclass
class AnnotatedPairs:
    """Index pairs into a response pool with their noisy labels and the golden rewards of both sides."""

    first: np.ndarray
    second: np.ndarray
    first_wins: np.ndarray
    golden_first: np.ndarray
    golden_second: np.ndarray

    @property
    def error_rate(self) -> float:
        return observed_error_rate(self.golden_first, self.golden_second, self.first_wins)

    @property
    def mean_abs_delta(self) -> float:
        return float(np.mean(np.abs(self.golden_first - self.golden_second)))

    def expected_error_rate(self, beta: float) -> float:
        return expected_error_rate(self.golden_first, self.golden_second, beta)


def build_pairs(
    prompt_ids: Sequence,
    golden: np.ndarray,
    *,
    design: str = "random",
    pairing: str = "in-prompt",
    n_pairs: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs for ``n_pairs`` annotations.

    The design picks two responses per prompt; when ``n_pairs`` exceeds the number of prompts the
    random design is drawn again (new random pairs of the same prompts) until there are enough,
    while similar/diverse, which hold one fixed pair per prompt, raise. When fewer are asked for,
    a random subset of prompts is kept. Cross-prompt pairing then re-pairs those responses.
    """
    if pairing not in PAIRINGS:
        raise InputError(f"unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")
    rng = np.random.default_rng(rng)
    first, second = select_design(prompt_ids, golden, design, rng)
    if n_pairs is not None:
        if n_pairs < 1:
            raise InputError(f"n_pairs must be positive, got {n_pairs}")
        while len(first) < n_pairs:
            if design != "random":
                raise InputError(
                    f"the {design} design yields one pair per prompt ({len(first)} here); "
                    f"asked for {n_pairs} annotations: use more prompts or fewer annotations"
                )
            more_first, more_second = select_design(prompt_ids, golden, design, rng)
            first, second = np.concatenate([first, more_first]), np.concatenate([second, more_second])
        keep = np.sort(rng.choice(len(first), size=n_pairs, replace=False))
        first, second = first[keep], second[keep]
    if pairing == "cross-prompt":
        first, second = cross_prompt_shuffle(first, second, prompt_ids, rng)
    return first, second


def annotate_pairs(
    prompt_ids: Sequence,
    golden: np.ndarray,
    *,
    beta: float,
    design: str = "random",
    pairing: str = "in-prompt",
    n_pairs: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> AnnotatedPairs:
    """Build pairs with :func:`build_pairs` and label them with a σ(β|Δr|) annotator."""
    rng = np.random.default_rng(rng)
    golden = np.asarray(golden, dtype=np.float64)
    first, second = build_pairs(prompt_ids, golden, design=design, pairing=pairing, n_pairs=n_pairs, rng=rng)
    labels = simulate_annotations(golden[first], golden[second], beta, rng)
    return AnnotatedPairs(first, second, labels, golden[first], golden[second])


# ---------------------------------------------------------------- golden rewards from a full reward model


def golden_from_reward_model(
    model_path: str,
    prompts: Sequence,
    responses: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    attribute_weights: Sequence[float] | str | None = "auto",
    device: str | None = None,
    dtype: str = "float32",
) -> np.ndarray:
    """Golden rewards r(x, y) from a trained reward-model folder: exactly what ``hsrm score`` gives
    (:class:`hsrm.scoring.RewardScorer`: the model's chat template, left truncation to
    ``max_length`` — by default the length it was trained with — and the scalar reward of its
    record, recorded attribute weights included; ``attribute_weights`` overrides them)."""
    from ..scoring import RewardScorer

    if len(prompts) != len(responses):
        raise InputError(f"{len(prompts)} prompts but {len(responses)} responses")
    scorer = RewardScorer(
        model_path,
        batch_size=batch_size,
        max_length=max_length,
        attribute_weights=attribute_weights,
        device=device,
        dtype=dtype,
        progress=True,
    )
    return np.asarray(scorer.score(list(prompts), list(responses), desc="golden reward"), dtype=np.float64)


# ---------------------------------------------------------------- a pool of responses with golden rewards


@dataclass
class ResponsePool:
    """Responses as embeddings (n, d), their golden rewards (n,) and the prompt each answers (n,).

    Stored as ``.npz`` with arrays ``embeddings``, ``golden``, ``prompt_ids`` (what ``hsrm embed``
    writes when it knows a golden reward); read back with ``EmbeddedData.load(path).pool()``, the
    one reader of embedding files (:mod:`hsrm.embedding.extract`).
    """

    embeddings: np.ndarray
    golden: np.ndarray
    prompt_ids: np.ndarray

    def __post_init__(self):
        self.embeddings = np.asarray(self.embeddings)
        self.golden = np.asarray(self.golden, dtype=np.float64).reshape(-1)
        self.prompt_ids = np.asarray(self.prompt_ids).reshape(-1)
        if self.embeddings.ndim != 2:
            raise InputError(f"ResponsePool: embeddings must be (n, d), got shape {self.embeddings.shape}")
        if not (len(self.embeddings) == len(self.golden) == len(self.prompt_ids)):
            raise InputError(
                f"ResponsePool: {len(self.embeddings)} embeddings, {len(self.golden)} golden rewards and "
                f"{len(self.prompt_ids)} prompt ids; they must match"
            )
        if not np.all(np.isfinite(self.golden)):
            raise InputError("ResponsePool: golden rewards contain NaN or infinite values")

    def __len__(self) -> int:
        return len(self.golden)

    def subset(self, index: np.ndarray) -> ResponsePool:
        return ResponsePool(self.embeddings[index], self.golden[index], self.prompt_ids[index])

    def split_by_prompt(
        self, test_fraction: float, rng: np.random.Generator | int | None = None
    ) -> tuple[ResponsePool, ResponsePool]:
        """(train, test): whole prompts go to one side, so test prompts are never seen in training."""
        if not 0.0 < test_fraction < 1.0:
            raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rng = np.random.default_rng(rng)
        prompts = np.unique(self.prompt_ids)
        if len(prompts) < 2:
            raise InputError("splitting by prompt needs at least two prompts")
        n_test = min(max(1, int(round(len(prompts) * test_fraction))), len(prompts) - 1)
        test_prompts = rng.choice(prompts, size=n_test, replace=False)
        is_test = np.isin(self.prompt_ids, test_prompts)
        return self.subset(np.flatnonzero(~is_test)), self.subset(np.flatnonzero(is_test))

    def save(self, path) -> None:
        from ..files import atomic_save_npz

        atomic_save_npz(path, embeddings=self.embeddings, golden=self.golden, prompt_ids=self.prompt_ids)
