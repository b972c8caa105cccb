"""How good is a learned reward on held-out prompts, judged by the golden reward.

Paper: Sun et al. (2024), section 6 ("Evaluation of Learned Reward Models"): Best-of-N with
N = 500 responses per test prompt; the gain is the golden reward of the response the learned
model ranks first, minus the mean golden reward of the N responses (the improvement over the
base model's average sample), averaged over test prompts. Shen et al. (2025) add the per-prompt
Spearman correlation between learned and golden rewards.

All functions take flat arrays (one entry per response) and ``prompt_ids`` grouping them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .annotate import group_by_prompt


def _check(scores: np.ndarray, golden: np.ndarray, prompt_ids: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    golden = np.asarray(golden, dtype=np.float64).reshape(-1)
    prompt_ids = np.asarray(prompt_ids)
    if not (len(scores) == len(golden) == len(prompt_ids)):
        raise InputError(
            f"scores ({len(scores)}), golden ({len(golden)}) and prompt_ids ({len(prompt_ids)}) must have "
            "one entry per response"
        )
    if len(scores) == 0:
        raise InputError("no responses to evaluate")
    return scores, golden, prompt_ids


def _blocks(prompt_ids: np.ndarray):
    """(order, n) when every prompt has the same number n of responses: ``order`` reshapes to
    (prompts, n) blocks; else (None, None)."""
    groups = group_by_prompt(prompt_ids)
    sizes = {len(g) for g in groups}
    if len(sizes) == 1:
        return np.concatenate(groups), sizes.pop(), groups
    return None, None, groups


def _best_of_n_picks(scores: np.ndarray, golden: np.ndarray, prompt_ids: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: the golden reward of the response ``scores`` rank first (ties: first index), and
    the mean golden reward of the prompt's responses."""
    scores, golden, prompt_ids = _check(scores, golden, prompt_ids)
    order, n, groups = _blocks(prompt_ids)
    if order is not None:
        s, g = scores[order].reshape(-1, n), golden[order].reshape(-1, n)
        return g[np.arange(len(g)), s.argmax(1)], g.mean(1)
    return (np.array([golden[m][np.argmax(scores[m])] for m in groups]), np.array([golden[m].mean() for m in groups]))


def best_of_n_reward(scores: np.ndarray, golden: np.ndarray, prompt_ids: Sequence) -> float:
    """mean over prompts of  golden[argmax_i score_i]: the Best-of-N reward (Shen et al. 2025, section 5.1)."""
    return float(np.mean(_best_of_n_picks(scores, golden, prompt_ids)[0]))


def best_of_n_gain(scores: np.ndarray, golden: np.ndarray, prompt_ids: Sequence) -> float:
    """mean over prompts of  golden[argmax_i score_i] − mean_i golden_i   (ties: first index)."""
    picked, means = _best_of_n_picks(scores, golden, prompt_ids)
    return float(np.mean(picked - means))


def oracle_best_of_n_gain(golden: np.ndarray, prompt_ids: Sequence) -> float:
    """The largest achievable gain: the golden reward ranking itself (max − mean)."""
    return best_of_n_gain(golden, golden, prompt_ids)


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), like scipy's rankdata."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def per_prompt_spearman(scores: np.ndarray, golden: np.ndarray, prompt_ids: Sequence) -> float:
    """Mean over prompts of Spearman's ρ between learned and golden rewards of the prompt's
    responses: the Pearson correlation of their ranks. Prompts with fewer than 2 responses, or
    constant rewards on either side, have no ρ and are skipped (NaN if none is left)."""
    scores, golden, prompt_ids = _check(scores, golden, prompt_ids)
    order, n, groups = _blocks(prompt_ids)
    if order is not None:
        blocks = [(scores[order].reshape(-1, n), golden[order].reshape(-1, n))]
    else:
        blocks = [(scores[m][None, :], golden[m][None, :]) for m in groups]
    rhos = []
    for s, g in blocks:
        if s.shape[1] < 2:
            continue
        rs, rg = _rank(s), _rank(g)
        rs -= rs.mean(1, keepdims=True)
        rg -= rg.mean(1, keepdims=True)
        denom = np.sqrt((rs**2).sum(1) * (rg**2).sum(1))
        valid = denom > 0
        rhos.append((rs * rg).sum(1)[valid] / denom[valid])
    rhos = np.concatenate(rhos) if rhos else np.array([])
    return float(rhos.mean()) if len(rhos) else float("nan")


def pairwise_accuracy(scores_first: np.ndarray, scores_second: np.ndarray, first_wins: np.ndarray) -> float:
    """Fraction of pairs the learned reward orders like the labels (ties count as wrong)."""
    first_wins = np.asarray(first_wins, dtype=bool)
    predicted = np.asarray(scores_first) > np.asarray(scores_second)
    strict = np.asarray(scores_first) != np.asarray(scores_second)
    return float(np.mean((predicted == first_wins) & strict))


def evaluate_scores(scores: np.ndarray, golden: np.ndarray, prompt_ids: Sequence) -> dict:
    """The study's metrics on one test set: BoN gain, oracle gain, their ratio, per-prompt Spearman."""
    gain = best_of_n_gain(scores, golden, prompt_ids)
    oracle = oracle_best_of_n_gain(golden, prompt_ids)
    return {
        "bon_gain": gain,
        "oracle_gain": oracle,
        "bon_gain_fraction": gain / oracle if oracle > 0 else float("nan"),
        "spearman": per_prompt_spearman(scores, golden, prompt_ids),
    }


def mean_sd_text(mean: float, sd: float, n: int) -> str:
    """``mean ± sd`` over ``n`` seeds; the mean alone with one seed (a spread of one value says nothing).

    >>> mean_sd_text(0.5, 0.1, 3), mean_sd_text(0.5, 0.0, 1)
    ('0.500 ± 0.100', '0.500')
    """
    return f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f}"
