"""hsrm.metrics: each number checked against an independent computation (scipy, or by hand)."""

from __future__ import annotations

from types import SimpleNamespace

import mpmath
import numpy as np
import pytest
from scipy import stats

from hsrm.metrics import (
    best_of_n,
    binary_entropy,
    pairwise_accuracy,
    pairwise_metrics,
    pairwise_summary,
)


def test_best_of_n_is_the_first_argmax_in_one_group_and_along_an_axis():
    assert best_of_n([0.1, 0.7, 0.7, -2.0]) == 1 and isinstance(best_of_n([1.0]), int)
    assert best_of_n([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], axis=1).tolist() == [1, 0]


def test_binary_entropy_matches_exact_arithmetic_and_has_no_epsilon():
    p = np.array([1e-300, 1e-13, 1e-6, 0.2, 0.5, 0.9, 1 - 1e-9])
    with mpmath.workdps(50):  # exact reference: scipy's entropy([p, 1 - p]) loses 1 − p's digits for small p
        expected = np.array(
            [float(-mpmath.mpf(x) * mpmath.log(x) - (1 - mpmath.mpf(x)) * mpmath.log1p(-mpmath.mpf(x))) for x in p]
        )
    assert np.allclose(binary_entropy(p), expected, rtol=1e-7, atol=0)
    assert np.allclose(binary_entropy(p[3:]), [stats.entropy([x, 1 - x]) for x in p[3:]], rtol=1e-12)
    assert binary_entropy(np.array([0.0, 1.0])).tolist() == [0.0, 0.0]  # 0 log 0 = 0, not an epsilon's value
    # p = σ(x) with q = σ(−x) given: exact where 1 − σ(x) has rounded to 0
    x = 40.0
    p, q = 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(x))
    assert p == 1.0 and binary_entropy(p) == 0.0
    assert binary_entropy(p, q) == pytest.approx(-q * np.log(q), rel=1e-12)
    assert binary_entropy(np.float32([0.25]), np.float32([0.75])).dtype == np.float32


def test_pairwise_summary_metrics_and_accuracy_by_hand():
    chosen, rejected = [2.0, 1.0, 0.5, 3.0], [1.0, 1.0, 1.5, -1.0]
    summary = pairwise_summary(chosen, rejected)
    both = np.array(chosen + rejected)
    assert summary["accuracy"] == 0.5 and summary["ties"] == 1 and summary["n_pairs"] == 4
    assert summary["margin"] == pytest.approx((1 + 0 - 1 + 4) / 4)
    assert summary["reward_mean"] == pytest.approx(both.mean()) and summary["reward_std"] == pytest.approx(both.std())
    logged = pairwise_metrics(SimpleNamespace(predictions=np.array([chosen, rejected]).T))
    assert logged == {k: summary[k] for k in ("accuracy", "margin", "reward_mean", "reward_std")}
    # labels may say the second response wins; a tie is wrong either way
    assert pairwise_accuracy(np.array([1.0, 1.0, 0.0]), np.array([0.0, 2.0, 0.0]), [True, False, False]) == 2 / 3
