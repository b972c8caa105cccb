"""Selection strategies of hsrm.embedding.active (Shen, Sun & Ton 2025, section 3).

Each strategy is checked on a hand-built candidate set whose right answer is worked out in the
test, and D-opt is checked against a finite-difference gradient of log det and, on a linear BT
problem with a known weight vector, against random selection.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hsrm.embedding.active import (
    STRATEGIES,
    CandidatePairs,
    LastLayer,
    SelectionOptions,
    batchbald_select,
    coreset_sensitivities,
    dopt_scores,
    entropy_scores,
    laplace_posterior_samples,
    last_layer_of,
    select_pairs,
    sigmoid,
)


def differences_as_candidates(differences) -> CandidatePairs:
    """Candidate pairs whose feature differences are exactly ``differences`` (second side = 0)."""
    differences = np.asarray(differences, dtype=np.float64)
    return CandidatePairs.from_sides(differences, np.zeros_like(differences))


# ---------------------------------------------------------------- every strategy: the contract


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_select_pairs_returns_k_unique_valid_indices_with_an_mlp(strategy):
    from hsrm.embedding.models import MLPRewardModel

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = MLPRewardModel(12, (16, 8))
    items = rng.standard_normal((300, 12)).astype(np.float32)
    pairs = rng.integers(0, 300, size=(700, 2))
    labelled = rng.integers(0, 300, size=(40, 2))
    chosen = select_pairs(model, (items, pairs), 37, strategy, labelled=(items, labelled), seed=3)
    assert chosen.shape == (37,)
    assert len(np.unique(chosen)) == 37
    assert chosen.min() >= 0 and chosen.max() < 700
    # deterministic given the seed
    assert np.array_equal(chosen, select_pairs(model, (items, pairs), 37, strategy, labelled=(items, labelled), seed=3))


def test_adapter_reads_features_and_bias_free_head_of_the_bt_mlp():
    from hsrm.embedding.models import MLPRewardModel

    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    model = MLPRewardModel(6, (10, 5))
    first, second = rng.standard_normal((20, 6)).astype(np.float32), rng.standard_normal((20, 6)).astype(np.float32)
    layer = last_layer_of(model)
    with torch.no_grad():
        expected_phi = model.features(torch.from_numpy(first)).numpy()
    np.testing.assert_allclose(layer.features(first), expected_phi, rtol=1e-6)
    # Δr̂ = (Φ1 − Φ2)·β equals the model's own reward difference (no bias in the last layer)
    delta = (layer.features(first) - layer.features(second)) @ layer.weight
    np.testing.assert_allclose(delta, model.score(first) - model.score(second), rtol=1e-4, atol=1e-6)


def test_input_errors_are_clear():
    candidates = differences_as_candidates(np.eye(3))
    with pytest.raises(ValueError, match="did you mean 'dopt'"):
        select_pairs(LastLayer.linear(np.zeros(3)), candidates, 1, "d-opt")
    with pytest.raises(ValueError, match="cannot select 4 pairs from 3"):
        select_pairs(LastLayer.linear(np.zeros(3)), candidates, 4, "dopt")
    with pytest.raises(ValueError, match="needs a trained model"):
        select_pairs(None, candidates, 1, "entropy")
    with pytest.raises(ValueError, match="positive integer"):
        select_pairs(None, candidates, 0, "random")
    with pytest.raises(ValueError, match="index items"):
        CandidatePairs(np.zeros((2, 3)), np.array([[0, 2]]))
    # no model yet: random and det_xtx still work
    assert len(select_pairs(None, candidates, 2, "det_xtx")) == 2


# ---------------------------------------------------------------- prediction-only strategies


REWARD_DIFFERENCES = np.array([4.0, 0.1, -3.0, -0.3, 2.0, 0.05])


def test_entropy_picks_the_pairs_with_p_closest_to_one_half():
    candidates = differences_as_candidates(np.stack([REWARD_DIFFERENCES, np.zeros(6)], axis=1))
    chosen = select_pairs(LastLayer.linear(np.array([1.0, 0.0])), candidates, 3, "entropy")
    # p = σ(Δr): |p − ½| smallest for Δr = 0.05, 0.1, −0.3, in that order
    assert chosen.tolist() == [5, 1, 3]
    # the score is the Bernoulli entropy of p, checked against the formula
    p = 1 / (1 + np.exp(-REWARD_DIFFERENCES))
    np.testing.assert_allclose(
        entropy_scores(REWARD_DIFFERENCES), -(p * np.log(p) + (1 - p) * np.log(1 - p)), rtol=1e-10
    )


def test_maxdiff_picks_the_extremes():
    candidates = differences_as_candidates(np.stack([REWARD_DIFFERENCES, np.zeros(6)], axis=1))
    chosen = select_pairs(LastLayer.linear(np.array([1.0, 0.0])), candidates, 3, "maxdiff")
    assert chosen.tolist() == [0, 2, 4]  # |Δr| = 4, 3, 2


# ---------------------------------------------------------------- D-optimal design and det(XᵀX)


def test_dopt_score_is_the_gradient_of_log_det_at_w_equal_one():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((30, 4))
    delta = d @ np.array([1.0, -0.5, 2.0, 0.0])
    v = sigmoid(delta) * sigmoid(-delta)
    information = (d * v[:, None]).T @ d
    ridge = 1e-3 * np.trace(information) / 4 + 1e-12  # the documented λ = ridge · tr(I)/h

    def log_det(w):
        return np.linalg.slogdet((d * (w * v)[:, None]).T @ d + ridge * np.eye(4))[1]

    eps = 1e-6
    numeric = np.array(
        [(log_det(np.ones(30) + eps * e) - log_det(np.ones(30) - eps * e)) / (2 * eps) for e in np.eye(30)]
    )
    np.testing.assert_allclose(dopt_scores(d, delta, ridge=1e-3), numeric, rtol=1e-4)


# e1 pairs: a comparison with p ≈ 0.5 (A) and a near-certain one with a long difference (B);
# C: the only pair along e2, with Δr = 0
INFORMATIVE = np.array([[0.5, 0.0], [4.0, 0.0], [0.0, 1.0]])
WEIGHT = np.array([2.0, 0.0])  # Δr: A = 1 (p = 0.73), B = 8 (p = 0.9997), C = 0


def test_dopt_prefers_uncovered_directions_and_informative_comparisons():
    chosen = select_pairs(LastLayer.linear(WEIGHT), differences_as_candidates(INFORMATIVE), 2, "dopt")
    # C is alone along e2 (leverage ≈ 1); A carries 0.197·0.25 of e1's information, B only 3e-4·16
    assert chosen.tolist() == [2, 0]


def test_det_xtx_ignores_predictions():
    chosen = select_pairs(LastLayer.linear(WEIGHT), differences_as_candidates(INFORMATIVE), 2, "det_xtx")
    # without p(1−p), B's long difference dominates e1: d_iᵀ(XᵀX)⁻¹d_i = 16/16.25 for B vs 0.25/16.25 for A
    assert sorted(chosen.tolist()) == [1, 2]


def test_dopt_spreads_over_directions_where_candidates_are_rare():
    # 10 pairs along e1, one along e2, equal p: the lone e2 pair has the largest leverage
    d = np.vstack([np.tile([1.0, 0.0], (10, 1)), [[0.0, 1.0]]])
    assert select_pairs(LastLayer.linear(np.zeros(2)), differences_as_candidates(d), 1, "dopt").tolist() == [10]


def test_pa_dopt_avoids_directions_the_labelled_pairs_cover():
    # 3 candidates along e1, 5 along e2: plain D-opt prefers the rarer e1 (leverage 1/3 > 1/5) …
    d = np.vstack([np.tile([1.0, 0.0], (3, 1)), np.tile([0.0, 1.0], (5, 1))])
    candidates = differences_as_candidates(d)
    model = LastLayer.linear(np.zeros(2))
    assert sorted(select_pairs(model, candidates, 3, "dopt").tolist()) == [0, 1, 2]
    # … but 20 labelled pairs along e1 already cover it: past-aware D-opt turns to e2
    labelled = differences_as_candidates(np.tile([1.0, 0.0], (20, 1)))
    assert set(select_pairs(model, candidates, 3, "pa_dopt", labelled=labelled).tolist()) <= {3, 4, 5, 6, 7}
    # and without a labelled set it is plain D-opt
    assert np.array_equal(select_pairs(model, candidates, 3, "pa_dopt"), select_pairs(model, candidates, 3, "dopt"))


# ---------------------------------------------------------------- coreset (Huggins et al. 2016)


def test_coreset_sensitivities_match_the_formula_computed_point_by_point():
    rng = np.random.default_rng(0)
    # two tight, far-apart clusters, so k-means with k = 2 recovers them exactly
    z = np.vstack([rng.normal(0, 0.1, (7, 2)) + [5, 0], rng.normal(0, 0.1, (4, 2)) - [5, 0]])
    clusters = [np.arange(7), np.arange(7, 11)]
    radius = 0.7
    expected = []
    for n in range(len(z)):
        total = 0.0
        for members in clusters:
            rest = members[members != n]
            total += len(rest) * np.exp(-radius * np.linalg.norm(z[rest].mean(0) - z[n]))
        expected.append(len(z) / (1 + total))
    np.testing.assert_allclose(coreset_sensitivities(z, n_clusters=2, radius=radius), expected, rtol=1e-9)


def test_coreset_samples_outliers_far_more_often_than_dense_points():
    rng = np.random.default_rng(0)
    # 95 pairs in one dense blob, 5 outliers; the model's weight sets the radius R = ‖β̂‖ = 1
    d = np.vstack(
        [
            rng.normal(0, 0.05, (95, 2)) + [1.0, 0.0],
            rng.normal(0, 0.05, (5, 2)) + [[1, 6], [1, -6], [6, 6], [-6, 1], [1, 9]],
        ]
    )
    model, candidates = LastLayer.linear(np.array([1.0, 0.0])), differences_as_candidates(d)
    hits = np.zeros(100)
    for seed in range(100):
        hits[select_pairs(model, candidates, 5, "coreset", seed=seed)] += 1
    assert hits[95:].mean() > 10 * hits[:95].mean()
    assert not np.array_equal(
        select_pairs(model, candidates, 5, "coreset", seed=1), select_pairs(model, candidates, 5, "coreset", seed=2)
    )


def test_coreset_clusters_are_seeded_and_fitted_on_a_subsample():
    import warnings

    from hsrm.embedding.active import _kmeans_labels

    rng = np.random.default_rng(1)
    truth = rng.integers(3, size=6000)
    z = 8.0 * np.eye(3)[truth] + rng.normal(0, 0.3, (6000, 3))  # three far-apart blobs
    labels = _kmeans_labels(z, 3, seed=4)  # fitted on 4,096 of the 6,000 rows, then applied to all
    assert len(set(zip(labels.tolist(), truth.tolist()))) == 3  # the blobs, whatever the numbering
    np.testing.assert_array_equal(labels, _kmeans_labels(z, 3, seed=4))
    # fewer distinct points than clusters: the empty clusters weigh nothing, and nothing is printed
    twice_five = np.repeat(np.eye(2), 5, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sensitivities = coreset_sensitivities(twice_five, n_clusters=10, radius=1.0)
    # own cluster: 4 others at distance 0; the other: 5 points at distance √2
    np.testing.assert_allclose(sensitivities, 10 / (1 + 4 + 5 * np.exp(-np.sqrt(2))), rtol=1e-12)


# ---------------------------------------------------------------- BatchBALD with a Bayesian last layer


def _bald(probabilities):
    def h(p):
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))

    return h(probabilities.mean(1)) - h(probabilities).mean(1)


def test_batchbald_first_pick_is_bald_and_it_skips_a_duplicate():
    rng = np.random.default_rng(0)
    s = 400
    a = sigmoid(rng.normal(0, 3.0, s))  # very uncertain about pair A: large disagreement between posterior draws
    b = sigmoid(rng.normal(0, 2.0, s))  # B: a little less, and independent of A
    probabilities = np.stack([a, a, b, sigmoid(rng.normal(0, 0.3, s))])  # A, a copy of A, B, a dull pair
    bald = _bald(probabilities)
    assert bald[0] == bald[1] > bald[2] > bald[3]
    chosen = batchbald_select(probabilities, 2, np.random.default_rng(1), n_configurations=512)
    # top-2 BALD would take A and its copy; the joint mutual information knows the copy adds nothing
    assert chosen[0] in (0, 1) and chosen[1] == 2


def exact_joint_mutual_information(probabilities: np.ndarray, batch: list[int]) -> float:
    """I(y_B; θ) = H(y_B) − E_θ H(y_B | θ) with θ uniform over the S posterior draws (the columns of
    ``probabilities``: P(y_i = 1 | θ_s)), by summing over all 2^|B| label configurations of the batch."""
    rows = probabilities[batch]  # (b, S)
    joint_entropy = 0.0
    for labels in itertools.product((1, 0), repeat=len(batch)):
        likelihood = np.prod(np.where(np.array(labels)[:, None] == 1, rows, 1 - rows), axis=0)  # P(labels | θ_s)
        marginal = likelihood.mean()
        joint_entropy -= marginal * np.log(marginal)
    # given θ the labels are independent Bernoulli draws: their entropies add up
    conditional = -(rows * np.log(rows) + (1 - rows) * np.log(1 - rows)).sum(0).mean()
    return joint_entropy - conditional


def exact_greedy(probabilities: np.ndarray, k: int) -> tuple[list[int], float]:
    """The greedy maximiser of the exact joint mutual information (ties: the lower index), and its
    smallest winning margin over the steps: the best gain minus that of the best candidate that is not
    a copy of the winner (how accurate a Monte Carlo estimate must be to pick the same)."""
    batch, margin = [], np.inf
    for _ in range(k):
        others = [i for i in range(len(probabilities)) if i not in batch]
        gains = np.array([exact_joint_mutual_information(probabilities, batch + [i]) for i in others])
        best = int(np.argmax(gains))
        rivals = [g for i, g in zip(others, gains) if not np.array_equal(probabilities[i], probabilities[others[best]])]
        margin = min([margin, gains[best] - max(rivals)] if rivals else [margin])
        batch.append(others[best])
    return batch, margin


def test_exact_joint_mutual_information_by_hand():
    # one pair, two equally likely posterior draws that are sure of opposite winners: one full bit
    certain = np.array([[1 - 1e-12, 1e-12]])
    assert exact_joint_mutual_information(certain, [0]) == pytest.approx(np.log(2), abs=1e-9)
    # a pair and its copy: once the first label is seen, the copy's label is known too, so no more information
    assert exact_joint_mutual_information(np.vstack([certain, certain]), [0, 1]) == pytest.approx(np.log(2), abs=1e-9)
    # two pairs each splitting four draws a different way: two bits
    four = np.array([[1, 1, 0, 0], [1, 0, 1, 0]]) * (1 - 2e-12) + 1e-12
    assert exact_joint_mutual_information(four, [0, 1]) == pytest.approx(2 * np.log(2), abs=1e-9)


def test_batchbald_picks_the_greedy_maximiser_of_the_exact_joint_mutual_information():
    # Six posterior draws. A and its copy split them {0,1,2} / {3,4,5} and have the largest BALD; C splits
    # them another way, {0,3} / {1,4} / {2,5} by degrees, with a little less BALD; the rest are dull.
    a = np.array([0.92, 0.9, 0.88, 0.1, 0.12, 0.08])
    c = np.array([0.85, 0.5, 0.15, 0.85, 0.5, 0.15])
    dull = [[0.6, 0.55, 0.5, 0.5, 0.45, 0.4], np.full(6, 0.5), [0.7, 0.3, 0.7, 0.3, 0.6, 0.4]]
    probabilities = np.vstack([a, a, c, *dull])
    bald = _bald(probabilities)
    naive = list(np.argsort(-bald, kind="stable")[:3])  # the bug to catch: top-k by per-pair BALD
    assert naive[:2] == [0, 1]
    batch, margin = exact_greedy(probabilities, 3)
    assert batch[:2] == [0, 2] and batch != naive  # the exact joint information skips the copy
    assert margin > 0.02  # far beyond the Monte Carlo error of 20,000 configurations (~0.004 nats)
    for block in (64, 2):  # 2: the lazy greedy re-evaluates two candidates per step and trusts stale bounds
        chosen = batchbald_select(probabilities, 3, np.random.default_rng(0), n_configurations=20000, block=block)
        assert chosen.tolist() == batch, block


def test_batchbald_agrees_with_the_exact_greedy_on_random_problems():
    """Posterior predictive draws of a linear BT model: 8 candidate pairs, 12 draws of θ, batches of 3."""
    rng = np.random.default_rng(7)
    checked = 0
    while checked < 6:
        differences, theta = rng.normal(size=(8, 3)), rng.normal(scale=1.5, size=(12, 3))
        probabilities = sigmoid(differences @ theta.T)
        batch, margin = exact_greedy(probabilities, 3)
        if margin < 0.02:  # a near tie: any estimator may pick either, so it tests nothing
            continue
        chosen = batchbald_select(probabilities, 3, np.random.default_rng(checked), n_configurations=20000, block=3)
        assert chosen.tolist() == batch, (checked, margin)
        checked += 1


def test_batchbald_strategy_on_features_avoids_the_duplicate():
    d = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 1.5], [0.3, 0.3]])
    options = SelectionOptions(batchbald_prior_precision=1.0, batchbald_samples=300, batchbald_configurations=512)
    chosen = select_pairs(
        LastLayer.linear(np.array([0.01, 0.0])), differences_as_candidates(d), 2, "batchbald", options=options
    )
    assert chosen[0] in (0, 1) and chosen[1] == 2


def test_laplace_posterior_has_the_inverse_fisher_plus_prior_covariance():
    rng = np.random.default_rng(0)
    weight = np.array([0.5, -1.0, 0.2])
    labelled = rng.standard_normal((50, 3))
    samples = laplace_posterior_samples(weight, labelled, 40000, rng, prior_precision=2.0)
    v = sigmoid(labelled @ weight) * sigmoid(-(labelled @ weight))
    covariance = np.linalg.inv((labelled * v[:, None]).T @ labelled + 2.0 * np.eye(3))
    np.testing.assert_allclose(samples.mean(0), weight, atol=0.01)
    np.testing.assert_allclose(np.cov(samples.T), covariance, atol=0.05 * np.abs(covariance).max())


# ---------------------------------------------------------------- random


def test_random_is_seeded_uniform_and_needs_no_model():
    candidates = differences_as_candidates(np.zeros((50, 2)))
    first = select_pairs(None, candidates, 10, "random", seed=5)
    assert np.array_equal(first, select_pairs(None, candidates, 10, "random", seed=5))
    counts = np.zeros(50)
    for seed in range(400):
        counts[select_pairs(None, candidates, 10, "random", seed=seed)] += 1
    # each pair is drawn with probability 10/50: 80 of 400 times in expectation, sd ≈ 8
    assert counts.min() > 50 and counts.max() < 110


# ---------------------------------------------------------------- linear BT: D-opt needs fewer labels than random


def _fit_logistic(d, y, l2=1.0, steps=30):
    """MAP logistic regression (Newton) with a N(0, I/l2) prior: the linear BT model on d_i."""
    w = np.zeros(d.shape[1])
    for _ in range(steps):
        p = sigmoid(d @ w)
        gradient = d.T @ (p - y) + l2 * w
        hessian = (d * (p * (1 - p))[:, None]).T @ d + l2 * np.eye(d.shape[1])
        w -= np.linalg.solve(hessian, gradient)
    return w


def _parameter_error_curve(strategy, seed, dim=6, rounds=10, first_batch=50, batch=25, pool=1000):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.2, 3.0, dim)  # anisotropic pool: some directions are rare
    beta = rng.standard_normal(dim)
    beta *= 3.0 / np.linalg.norm(beta)
    seen_d, seen_y, errors, labels, estimate = [], [], [], [], None
    for round_index in range(rounds):
        candidates = rng.standard_normal((pool, dim)) * scales
        k = first_batch if round_index == 0 else batch
        if round_index == 0:  # the same random first batch for every strategy
            chosen = rng.choice(pool, k, replace=False)
        else:
            labelled = np.concatenate(seen_d)
            chosen = select_pairs(
                LastLayer.linear(estimate),
                differences_as_candidates(candidates),
                k,
                strategy,
                labelled=differences_as_candidates(labelled),
                seed=seed,
            )
        d = candidates[chosen]
        seen_d.append(d)
        seen_y.append(rng.uniform(size=k) < sigmoid(d @ beta))
        estimate = _fit_logistic(np.concatenate(seen_d), np.concatenate(seen_y).astype(float))
        errors.append(np.linalg.norm(estimate - beta))
        labels.append(sum(len(x) for x in seen_d))
    return np.array(labels), np.array(errors)


@pytest.mark.parametrize("strategy", ["dopt", "pa_dopt"])
def test_dopt_reaches_the_parameter_error_of_random_with_fewer_labels(strategy):
    seeds = range(10)
    labels, _ = _parameter_error_curve("random", 0)
    random_error = np.mean([_parameter_error_curve("random", s)[1] for s in seeds], axis=0)
    design_error = np.mean([_parameter_error_curve(strategy, s)[1] for s in seeds], axis=0)
    target = random_error[-1]  # what random reaches with all its labels
    needed = labels[np.argmax(design_error <= target)]
    assert design_error.min() <= target
    assert needed <= 0.7 * labels[-1], (needed, labels[-1], design_error, random_error)
    assert design_error[-1] < 0.85 * random_error[-1]
