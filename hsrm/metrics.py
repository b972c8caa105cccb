"""The numbers hsrm reports about rewards, each computed in one place: Best-of-N, pairwise
accuracy and margins, rating errors and correlation, per-prompt Spearman, binary entropy.

Used by ``hsrm score`` (the Best-of-N pick), ``hsrm evaluate`` and the trainers' evaluation
(pairwise accuracy and margins; MAE, RMSE and Pearson r of ratings), the demo, and the lightweight
path's studies, ``hsrm fit`` and active selection (Best-of-N gain, Spearman, entropy).

Best-of-N on a golden reward — Sun et al. (2024), section 6 ("Evaluation of Learned Reward Models"):
N = 500 responses per test prompt; the gain is the golden reward of the response the learned
model ranks first, minus the mean golden reward of the N responses (the improvement over the
base model's average sample), averaged over test prompts. Shen et al. (2025) add the per-prompt
Spearman correlation between learned and golden rewards. Those functions take flat arrays (one
entry per response) and ``prompt_ids`` grouping them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError


def best_of_n(rewards, axis: int = -1):
    """Index of the highest reward (along ``axis``); the first one on ties.

    >>> best_of_n([0.1, 0.7, 0.7, -2.0]), best_of_n([[1.0, 3.0], [2.0, 2.0]]).tolist()
    (1, [1, 0])
    """
    picks = np.argmax(np.asarray(rewards), axis=axis)
    return int(picks) if np.ndim(picks) == 0 else picks


def group_by_prompt(prompt_ids: Sequence) -> list[np.ndarray]:
    """Indices of each prompt's responses, prompts in order of first appearance."""
    prompt_ids = np.asarray(prompt_ids)
    _, first_seen, inverse = np.unique(prompt_ids, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    members = np.argsort(inverse, kind="stable")
    groups = np.split(members, np.cumsum(np.bincount(inverse))[:-1])
    return [groups[k] for k in np.argsort(first_seen)]


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
        return g[np.arange(len(g)), best_of_n(s, axis=1)], g.mean(1)
    return (np.array([golden[m][best_of_n(scores[m])] for m in groups]), np.array([golden[m].mean() for m in groups]))


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


def pairwise_summary(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float]:
    """Accuracy with ties counted wrong, the tie count, mean margin, and reward mean/std over both sides.

    >>> summary = pairwise_summary([2.0, 1.0, 0.5], [1.0, 1.0, 1.5])
    >>> {k: round(v, 6) for k, v in summary.items()}
    {'n_pairs': 3, 'accuracy': 0.333333, 'ties': 1, 'margin': 0.0, 'reward_mean': 1.166667, 'reward_std': 0.471405}
    """
    c = np.asarray(chosen, dtype=np.float64).reshape(-1)
    r = np.asarray(rejected, dtype=np.float64).reshape(-1)
    if c.shape != r.shape or c.size == 0:
        raise InputError(f"need as many chosen as rejected rewards, and at least one ({c.size} vs {r.size})")
    both = np.stack([c, r], axis=1).reshape(-1)  # pair by pair, the order the trainer's predictions come in
    return {
        "n_pairs": int(c.size),
        "accuracy": float((c > r).mean()),
        "ties": int((c == r).sum()),
        "margin": float((c - r).mean()),
        "reward_mean": float(both.mean()),
        "reward_std": float(both.std()),
    }


def pairwise_metrics(eval_pred) -> dict[str, float]:
    """The pairwise trainer's ``compute_metrics``: :func:`pairwise_summary` of its predictions, shape
    (pairs, 2) = (chosen, rejected) rewards, without the counts (Trainer logs averages)."""
    rewards = np.asarray(eval_pred.predictions, dtype=np.float64)
    summary = pairwise_summary(rewards[:, 0], rewards[:, 1])
    return {name: summary[name] for name in ("accuracy", "margin", "reward_mean", "reward_std")}


def regression_metrics(attributes, attribute_weights=None):
    """MAE, RMSE and Pearson r per attribute; mean/std of the scalar reward (outputs · weights, or the first output)."""

    def compute(eval_pred) -> dict[str, float]:
        predictions = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, len(attributes))
        labels = np.asarray(eval_pred.label_ids, dtype=np.float64).reshape(-1, len(attributes))
        metrics: dict[str, float] = {}
        for k, name in enumerate(attributes):
            error = predictions[:, k] - labels[:, k]
            metrics[f"{name}_mae"] = float(np.abs(error).mean())
            metrics[f"{name}_rmse"] = float(np.sqrt((error**2).mean()))
            if predictions[:, k].std() > 0 and labels[:, k].std() > 0:
                metrics[f"{name}_pearson"] = float(np.corrcoef(predictions[:, k], labels[:, k])[0, 1])
        reward = (
            predictions @ np.asarray(attribute_weights, dtype=np.float64) if attribute_weights else predictions[:, 0]
        )
        metrics["reward_mean"] = float(reward.mean())
        metrics["reward_std"] = float(reward.std())
        return metrics

    return compute


def pairwise_accuracy(scores_first: np.ndarray, scores_second: np.ndarray, first_wins: np.ndarray) -> float:
    """Fraction of pairs the learned reward orders like the labels (ties count as wrong)."""
    first_wins = np.asarray(first_wins, dtype=bool)
    chosen = np.where(first_wins, scores_first, scores_second)
    rejected = np.where(first_wins, scores_second, scores_first)
    return pairwise_summary(chosen, rejected)["accuracy"]


def _x_log_x(x: np.ndarray) -> np.ndarray:
    """x log x with 0 log 0 = 0 (its limit), in x's dtype."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(x), 0.0)


def binary_entropy(p, q=None) -> np.ndarray:
    """Bernoulli entropy in nats, −p log p − q log q, elementwise, in the input's dtype.

    ``q`` defaults to 1 − p, computed as ``log1p(−p)``, which keeps the digits 1 − p rounds away when p
    is small; pass ``q`` when it is known more exactly — p = σ(x) with q = σ(−x): 1 − σ(x) rounds to 0
    long before σ(−x) underflows. 0 log 0 = 0, so no clipping epsilon is needed.

    >>> binary_entropy([0.5, 0.1, 0.0, 1.0]).round(6).tolist() == [0.693147, 0.325083, 0.0, 0.0]
    True
    """
    p = np.asarray(p)
    if q is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            q_log_q = np.where(p < 1, (1 - p) * np.log1p(-p), 0.0)
    else:
        q_log_q = _x_log_x(np.asarray(q))
    return -(_x_log_x(p) + q_log_q)


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
