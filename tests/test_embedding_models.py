"""Reward models on embeddings, annotators, pair designs and metrics, on synthetic data with a
known golden reward (hsrm.embedding.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from hsrm.embedding.annotate import (
    ResponsePool,
    annotate_pairs,
    build_pairs,
    correct_label_probability,
    cross_prompt_shuffle,
    expected_error_rate,
    select_design,
    simulate_annotations,
)
from hsrm.embedding.extract import EmbeddedData
from hsrm.embedding.models import (
    EnsembleRewardModel,
    MLPRewardModel,
    fit_bt_mlp,
    fit_clf_mlp,
    fit_ensemble,
    fit_reward_model,
    load_model,
    pairs_to_pointwise,
    save_model,
)
from hsrm.embedding.synthetic import SyntheticWorld
from hsrm.metrics import (
    best_of_n_gain,
    best_of_n_reward,
    evaluate_scores,
    group_by_prompt,
    oracle_best_of_n_gain,
    per_prompt_spearman,
)

SMALL_FIT = {"hidden": (64, 32), "max_epochs": 15, "batch_size": 128}


@pytest.fixture(scope="module")
def world_data():
    """1,500 training prompts × 10 responses, 40 test prompts × 50 responses, 32-d embeddings."""
    world = SyntheticWorld(dim=32, latent_dim=6, nuisance_dim=6, seed=3)
    train, test = world.train_test(1500, 40, train_responses=10, test_responses=50, seed=0)
    pairs = annotate_pairs(train.prompt_ids, train.golden, beta=3.0, n_pairs=1500, rng=0)
    return train, test, pairs


# ---------------------------------------------------------------- the network's shape


def test_mlp_architecture_matches_appendix_d6():
    model = MLPRewardModel(2048)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(2048, 1024), (1024, 512), (512, 1)]
    assert linears[-1].bias is None and linears[0].bias is not None
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 2
    x = torch.randn(5, 2048)
    assert model.features(x).shape == (5, 512)
    # forward = head(features): the reward is linear in Φ with the head's weights (used by active selection).
    assert torch.allclose(model(x), model.features(x) @ model.head.weight[0], atol=1e-5)
    assert model.score(x.numpy()).shape == (5,)


# ---------------------------------------------------------------- each model beats random


@pytest.mark.parametrize("method", ["bt-mlp", "clf-mlp", "clf-lgb"])
def test_each_model_beats_random_on_spearman_and_bon(world_data, method):
    train, test, pairs = world_data
    kwargs = SMALL_FIT if method != "clf-lgb" else {"num_threads": 1}
    model = fit_reward_model(
        method, train.embeddings[pairs.first], train.embeddings[pairs.second], pairs.first_wins, seed=0, **kwargs
    )
    scores = model.score(test.embeddings)
    result = evaluate_scores(scores, test.golden, test.prompt_ids)
    # Random scores, averaged over 20 draws, as the baseline a learned model must beat.
    rng = np.random.default_rng(0)
    random_gain = np.mean([best_of_n_gain(rng.normal(size=len(test)), test.golden, test.prompt_ids) for _ in range(20)])
    random_rho = np.mean(
        [per_prompt_spearman(rng.normal(size=len(test)), test.golden, test.prompt_ids) for _ in range(20)]
    )
    assert abs(random_rho) < 0.05 and abs(random_gain) < 0.15 * result["oracle_gain"]
    assert result["spearman"] > 0.5, result
    assert result["bon_gain"] > 0.5 * result["oracle_gain"], result
    assert result["bon_gain"] > random_gain + 0.3 * result["oracle_gain"]


def test_bt_mlp_early_stopping_and_warm_start(world_data):
    train, _, pairs = world_data
    e1, e2 = train.embeddings[pairs.first], train.embeddings[pairs.second]
    model = fit_bt_mlp(e1, e2, pairs.first_wins, hidden=(32, 16), max_epochs=30, patience=3, seed=1)
    h = model.history
    assert len(h.val_loss) == len(h.train_loss) <= 30
    if h.stopped_early:  # stopped exactly `patience` epochs after the best one
        assert len(h.val_loss) - 1 - h.best_epoch == 3
    assert h.val_loss[h.best_epoch] == min(h.val_loss)
    # The kept weights are the best epoch's: recomputing the held-out loss gives that minimum back.
    order = np.random.default_rng(1).permutation(len(pairs.first_wins))
    val = order[: int(round(0.2 * len(order)))]
    with torch.no_grad():
        r1, r2 = model(torch.from_numpy(e1[val])), model(torch.from_numpy(e2[val]))
        sign = torch.from_numpy(np.where(pairs.first_wins[val], 1.0, -1.0)).float()
        val_loss = float(-torch.nn.functional.logsigmoid(sign * (r1 - r2)).mean())
    assert val_loss == pytest.approx(min(h.val_loss), rel=1e-4)
    # Warm start copies the model (the original is untouched) and keeps its standardisation.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    warm = fit_bt_mlp(e1[:200], e2[:200], pairs.first_wins[:200], max_epochs=2, seed=2, init=model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(warm.input_mean, model.input_mean) and warm.hidden == (32, 16)
    with pytest.raises(ValueError, match="warm-start"):
        fit_bt_mlp(e1[:, :10], e2[:, :10], pairs.first_wins, init=model)


def test_bf16_autocast_training_learns_the_same_ranking(world_data):
    train, test, pairs = world_data
    e1, e2 = train.embeddings[pairs.first], train.embeddings[pairs.second]
    fp32 = fit_bt_mlp(e1, e2, pairs.first_wins, hidden=(64, 32), max_epochs=6, seed=0)
    bf16 = fit_bt_mlp(e1, e2, pairs.first_wins, hidden=(64, 32), max_epochs=6, seed=0, bf16=True)
    assert next(bf16.parameters()).dtype == torch.float32  # master weights stay fp32
    s32, s16 = fp32.score(test.embeddings), bf16.score(test.embeddings)
    assert per_prompt_spearman(s16, test.golden, test.prompt_ids) > 0.5
    assert stats.spearmanr(s32, s16)[0] > 0.95


def test_fits_are_reproducible_and_leave_global_rng_alone(world_data):
    train, _, pairs = world_data
    e1, e2 = train.embeddings[pairs.first[:300]], train.embeddings[pairs.second[:300]]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = fit_bt_mlp(e1, e2, pairs.first_wins[:300], hidden=(16, 8), max_epochs=3, seed=5)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is not consumed
    b = fit_bt_mlp(e1, e2, pairs.first_wins[:300], hidden=(16, 8), max_epochs=3, seed=5)
    np.testing.assert_array_equal(a.score(e1), b.score(e1))


def test_pairs_to_pointwise_labels_winner_one_loser_zero():
    first, second = np.arange(6.0).reshape(3, 2), -np.arange(6.0).reshape(3, 2)
    emb, labels = pairs_to_pointwise(first, second, np.array([True, False, True]))
    np.testing.assert_array_equal(emb, np.concatenate([first, second]))
    np.testing.assert_array_equal(labels, [1, 0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="must match"):
        pairs_to_pointwise(first, second[:2], np.array([True, False, True]))


# ---------------------------------------------------------------- save and reload


@pytest.mark.parametrize("method", ["bt-mlp", "clf-mlp", "clf-lgb", "ensemble"])
def test_save_reload_gives_identical_scores(world_data, tmp_path, method):
    train, test, pairs = world_data
    e1, e2, y = train.embeddings[pairs.first[:400]], train.embeddings[pairs.second[:400]], pairs.first_wins[:400]
    if method == "ensemble":
        model = fit_ensemble(
            ["bt-mlp", "clf-lgb"],
            e1,
            e2,
            y,
            mlp_kwargs={"hidden": (16, 8), "max_epochs": 2},
            lgb_kwargs={"num_threads": 1},
        )
        assert isinstance(model, EnsembleRewardModel) and len(model.members) == 2
    else:
        kwargs = {"hidden": (16, 8), "max_epochs": 2} if method != "clf-lgb" else {"num_threads": 1}
        model = fit_reward_model(method, e1, e2, y, **kwargs)
    save_model(model, tmp_path / "m")
    assert not list((tmp_path / "m").rglob("*.pkl")) and not list((tmp_path / "m").rglob("*.bin"))
    again = load_model(tmp_path / "m")
    np.testing.assert_array_equal(model.score(test.embeddings), again.score(test.embeddings))
    with pytest.raises(ValueError, match="expects 32-d"):
        again.score(test.embeddings[:, :5])


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "pickle"}')
    with pytest.raises(ValueError, match="unknown model kind"):
        load_model(tmp_path)


# ---------------------------------------------------------------- annotators


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0, 10.0])
def test_annotator_error_rate_matches_sigmoid_theory(beta):
    """Observed error rate of 200,000 simulated labels vs E[1 − σ(β|Δr|)] computed by numerical
    integration with Δr ~ N(0, 2) (two responses with unit-variance Gaussian rewards)."""
    rng = np.random.default_rng(int(beta * 10))
    r1, r2 = rng.normal(size=200_000), rng.normal(size=200_000)
    labels = simulate_annotations(r1, r2, beta, rng)
    observed = np.mean(labels != (r1 > r2))
    theory = (
        1 - integrate.quad(lambda d: 2 * stats.norm.pdf(d, scale=np.sqrt(2)) / (1 + np.exp(-beta * d)), 0, np.inf)[0]
    )
    assert observed == pytest.approx(theory, abs=0.004)
    assert expected_error_rate(r1, r2, beta) == pytest.approx(theory, abs=0.003)


def test_gaussian_example_annotation_quality():
    """Section 4, Example 1: Q_pair = E σ(β|r1 − r2|), r ~ N(μ, σ²). Worked out here by quadrature
    with |r1 − r2| ~ half-normal of scale √2·σ: β²σ² = 1 → 0.7252, β²σ² = 4 → 0.8280. (The paper
    prints 0.6749 and 0.7781 for these, which are E σ(βσ|Z|): its numbers drop the √2.)"""
    rng = np.random.default_rng(0)
    r1, r2 = rng.normal(size=400_000), rng.normal(size=400_000)
    assert 1 - expected_error_rate(r1, r2, 1.0) == pytest.approx(0.7252, abs=0.002)
    assert 1 - expected_error_rate(r1, r2, 2.0) == pytest.approx(0.8280, abs=0.002)


def test_annotator_limits():
    r1, r2 = np.array([1.0, 0.0, 5.0]), np.array([0.0, 1.0, 5.0])
    np.testing.assert_allclose(correct_label_probability(r1 - r2, 0.0), 0.5)
    perfect = simulate_annotations(np.arange(100.0), np.arange(100.0)[::-1], 1e6, rng=0)
    np.testing.assert_array_equal(perfect, np.arange(100) > np.arange(100)[::-1])
    with pytest.raises(ValueError, match="beta"):
        correct_label_probability(r1, -1.0)


# ---------------------------------------------------------------- pair designs


def test_similar_and_diverse_designs_pick_the_right_indices():
    rng = np.random.default_rng(0)
    golden = rng.permutation(30).astype(float)  # distinct rewards
    prompt_ids = np.repeat([7, 3, 9], 10)  # prompts out of numeric order on purpose
    first, second = select_design(prompt_ids, golden, "similar", rng=1)
    diverse_first, diverse_second = select_design(prompt_ids, golden, "diverse", rng=1)
    for p, block in enumerate(range(0, 30, 10)):
        g = golden[block : block + 10]
        ranked = block + np.argsort(g)  # ascending
        # similar: ranks 5 and 6 of 10 (1-based) = sorted positions 4 and 5
        assert {first[p], second[p]} == {ranked[4], ranked[5]}
        assert {diverse_first[p], diverse_second[p]} == {ranked[9], ranked[0]}
    random_first, random_second = select_design(prompt_ids, golden, "random", rng=2)
    assert np.all(random_first != random_second) and np.all(prompt_ids[random_first] == prompt_ids[random_second])
    # The side a response lands on is random: over many prompts about half the winners come first.
    many = np.repeat(np.arange(2000), 10)
    g = rng.normal(size=20000)
    a, b = select_design(many, g, "diverse", rng=4)
    assert 0.45 < np.mean(g[a] > g[b]) < 0.55


def test_design_with_uneven_prompts_and_singletons():
    prompt_ids = np.array(["a", "a", "a", "b", "c", "c"])
    golden = np.array([3.0, 1.0, 2.0, 9.0, 5.0, 4.0])
    first, second = select_design(prompt_ids, golden, "similar", rng=0)
    # prompt a (3 responses, sorted 1,2,3 → positions 0 and 1), b skipped (one response), c → both
    assert [sorted(x) for x in zip(first, second)] == [[1, 2], [4, 5]]
    assert [list(g) for g in group_by_prompt(prompt_ids)] == [[0, 1, 2], [3], [4, 5]]
    with pytest.raises(ValueError, match="two or more"):
        select_design(["x", "y"], [1.0, 2.0], "random")


def test_cross_prompt_pairs_use_the_same_responses_across_prompts():
    prompt_ids = np.repeat(np.arange(50), 10)
    golden = np.random.default_rng(0).normal(size=500)
    first, second = build_pairs(prompt_ids, golden, design="similar", pairing="in-prompt", rng=5)
    cross_first, cross_second = build_pairs(prompt_ids, golden, design="similar", pairing="cross-prompt", rng=5)
    assert sorted(np.concatenate([first, second])) == sorted(np.concatenate([cross_first, cross_second]))
    assert np.all(prompt_ids[cross_first] != prompt_ids[cross_second])
    # Two prompts only: every pair must straddle them.
    a, b = cross_prompt_shuffle(np.array([0, 2]), np.array([1, 3]), np.array([0, 0, 1, 1]), rng=0)
    assert np.all(np.array([0, 0, 1, 1])[a] != np.array([0, 0, 1, 1])[b])


def test_cross_prompt_pairs_are_more_diverse_and_less_noisy_for_similar_design():
    """Proposition 10 / Theorem 11: cross-prompt pairs of the similar design's responses have
    larger |Δr| and so a lower annotation error rate than the same responses paired in-prompt."""
    world = SyntheticWorld(dim=8, latent_dim=4, nuisance_dim=0)
    pool = world.sample(2000, 10, seed=1)
    inside = annotate_pairs(pool.prompt_ids, pool.golden, beta=1.0, design="similar", rng=0)
    across = annotate_pairs(pool.prompt_ids, pool.golden, beta=1.0, design="similar", pairing="cross-prompt", rng=0)
    diverse = annotate_pairs(pool.prompt_ids, pool.golden, beta=1.0, design="diverse", rng=0)
    assert across.mean_abs_delta > 3 * inside.mean_abs_delta
    assert inside.error_rate > 0.4 and across.error_rate < inside.error_rate - 0.1
    assert diverse.error_rate < 0.1
    assert inside.error_rate == pytest.approx(inside.expected_error_rate(1.0), abs=0.025)


def test_build_pairs_counts():
    prompt_ids = np.repeat(np.arange(20), 10)
    golden = np.random.default_rng(0).normal(size=200)
    first, _ = build_pairs(prompt_ids, golden, n_pairs=55, rng=0)  # more than prompts: random design redraws
    assert len(first) == 55
    assert len(build_pairs(prompt_ids, golden, design="diverse", n_pairs=7, rng=0)[0]) == 7
    with pytest.raises(ValueError, match="one pair per prompt"):
        build_pairs(prompt_ids, golden, design="similar", n_pairs=21, rng=0)
    with pytest.raises(ValueError, match="unknown pairing"):
        build_pairs(prompt_ids, golden, pairing="sideways")


# ---------------------------------------------------------------- metrics against hand computation


def test_best_of_n_reward_gain_and_spearman_by_hand():
    golden = np.array([1.0, 4.0, 2.0, 10.0, 0.0, 5.0])
    prompt_ids = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.3, 0.9, 5.0, 6.0, 1.0])
    # prompt 0 picks golden 2 (mean 7/3), prompt 1 picks golden 0 (mean 5)
    assert best_of_n_gain(scores, golden, prompt_ids) == pytest.approx(((2 - 7 / 3) + (0 - 5)) / 2)
    assert oracle_best_of_n_gain(golden, prompt_ids) == pytest.approx(((4 - 7 / 3) + (10 - 5)) / 2)
    assert best_of_n_reward(scores, golden, prompt_ids) == pytest.approx((2 + 0) / 2)
    # uneven prompts (3 and 2 responses) take the per-prompt path; a tie picks the first response
    uneven_ids, uneven_scores = np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.3, 0.3, 2.0, 2.0])
    assert best_of_n_reward(uneven_scores, golden[:5], uneven_ids) == pytest.approx((4 + 10) / 2)
    assert best_of_n_gain(uneven_scores, golden[:5], uneven_ids) == pytest.approx(((4 - 7 / 3) + (10 - 5)) / 2)
    expected = np.mean([stats.spearmanr(scores[:3], golden[:3])[0], stats.spearmanr(scores[3:], golden[3:])[0]])
    assert per_prompt_spearman(scores, golden, prompt_ids) == pytest.approx(expected)
    # Uneven groups take the per-prompt path and agree with scipy too.
    ids = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    s, g = np.random.default_rng(1).normal(size=(2, 9))
    want = np.mean([stats.spearmanr(s[m], g[m])[0] for m in (slice(0, 3), slice(3, 5), slice(5, 9))])
    assert per_prompt_spearman(s, g, ids) == pytest.approx(want)
    with pytest.raises(ValueError, match="one entry per response"):
        best_of_n_gain(scores[:5], golden, prompt_ids)


def test_response_pool_split_keeps_prompts_whole(tmp_path):
    pool = SyntheticWorld(dim=4, latent_dim=2, nuisance_dim=0).sample(30, 3)
    train, test = pool.split_by_prompt(0.2, rng=0)
    assert len(test) == 18 and not set(train.prompt_ids) & set(test.prompt_ids)
    pool.save(tmp_path / "p.npz")
    again = EmbeddedData.load(tmp_path / "p.npz").pool()
    np.testing.assert_array_equal(again.embeddings, pool.embeddings)
    np.testing.assert_array_equal(again.golden, pool.golden)
    with pytest.raises(ValueError, match="must match"):
        ResponsePool(pool.embeddings, pool.golden[:5], pool.prompt_ids)


# ---------------------------------------------------------------- CLF-LGB computes what plain LightGBM computes


def _trees(booster) -> str:
    """A booster's trees without its parameter block (which lists force_col_wise and the like)."""
    return booster.model_to_string().split("\nparameters:")[0]


def test_clf_lgb_trees_equal_plain_lightgbm_on_a_dense_matrix():
    """hsrm builds the LightGBM Dataset from a column-major (CSC) copy and forces col-wise
    histograms for speed; the trees must be exactly those of the textbook call
    ``lgb.train({"objective": "binary", …}, lgb.Dataset(X))``, zeros, NaNs and a constant column included."""
    import lightgbm as lgb

    from hsrm.embedding.models import fit_clf_lgb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 120)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0  # exact zeros: LightGBM's sparse path must not drop them differently
    x[rng.random(x.shape) < 0.02] = np.nan
    x[:, 7] = 1.5  # constant
    x[:, 9] = np.round(x[:, 9])  # few distinct values
    labels = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + rng.standard_normal(3000) > 0).astype(np.float32)

    ours = fit_clf_lgb(x, labels, seed=0, num_threads=1)
    plain_params = {"objective": "binary", "metric": "binary_logloss", "seed": 0, "verbosity": -1, "num_threads": 1}
    for layout in ({"force_col_wise": True}, {}):  # {} = LightGBM's own row/col-wise trial
        plain = lgb.train({**plain_params, **layout}, lgb.Dataset(x, label=labels))
        assert _trees(ours.booster) == _trees(plain), layout
        assert np.array_equal(ours.score(x), plain.predict(x, raw_score=True))
    assert ours.booster.num_trees() == 100  # the paper's defaults: 100 rounds


def test_clf_lgb_row_wise_override_is_accepted():
    from hsrm.embedding.models import fit_clf_lgb

    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.float32)
    model = fit_clf_lgb(x, labels, num_threads=1, params={"force_row_wise": True, "num_boost_round": 5})
    assert model.booster.num_trees() == 5
    assert "[force_row_wise: 1]" in model.booster.model_to_string()


def test_embedding_fit_bench_smoke_reports_identical_trees_to_its_peer(tmp_path):
    """bench/embedding_fit.py at toy size: it runs, and hsrm's CLF-LGB equals the plain-LightGBM peer."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "embedding_fit.py"
    spec = importlib.util.spec_from_file_location("embedding_fit_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "fit.json"
    result = bench.main(
        ["--pairs", "300", "--dim", "16", "--threads", "1", "--methods", "clf-lgb", "--output", str(out)]
    )
    peer = result["clf-lgb"]["peer_plain_lightgbm"]
    assert peer["same_trees"] is True
    assert peer["speedup"] > 0 and json.loads(out.read_text())["clf-lgb"]["peer_plain_lightgbm"]["same_trees"] is True


def test_mlp_fitters_take_the_shared_settings_and_name_an_unknown_one(world_data):
    train, _, pairs = world_data
    e1, e2 = train.embeddings[pairs.first[:100]], train.embeddings[pairs.second[:100]]
    model = fit_bt_mlp(e1, e2, pairs.first_wins[:100], hidden=[8], max_epochs=1, seed=0)
    assert model.hidden == (8,) and len(model.history.train_loss) == 1
    with pytest.raises(TypeError, match=r"fit_clf_mlp: unknown setting\(s\) \['epochs'\]"):
        fit_clf_mlp(e1, np.arange(100) % 2, epochs=3)


def test_one_reader_of_embedding_files_one_contract(tmp_path):
    """EmbeddedData.load reads what hsrm embed, ResponsePool.save and a bare .npy hold; the arrays a
    verb needs are asked for with require(), which names the array and how to get it."""
    from hsrm.embedding.annotation_queue import select_step
    from hsrm.errors import InputError

    pool = SyntheticWorld(dim=4, latent_dim=2, nuisance_dim=0).sample(5, 3)
    np.save(tmp_path / "items.npy", pool.embeddings)
    bare = EmbeddedData.load(tmp_path / "items.npy")
    np.testing.assert_array_equal(bare.embeddings, pool.embeddings)
    assert bare.prompt_ids is None and bare.golden is None and not bare.has_pairs
    with pytest.raises(InputError, match="items.npy: no `golden` array, which a pool of responses"):
        bare.pool()
    EmbeddedData(pool.embeddings, pool.prompt_ids).save(tmp_path / "no_golden.npz")
    with pytest.raises(InputError, match="no_golden.npz: no `golden` array.*--golden-column or --golden-model"):
        EmbeddedData.load(tmp_path / "no_golden.npz").pool()
    np.savez(tmp_path / "short.npz", embeddings=pool.embeddings, golden=pool.golden[:2])
    with pytest.raises(InputError, match="2 `golden` for 15 embeddings"):
        EmbeddedData.load(tmp_path / "short.npz")
    np.savez(tmp_path / "other.npz", vectors=pool.embeddings)
    with pytest.raises(InputError, match="no `embeddings` array \\(found vectors\\)"):
        EmbeddedData.load(tmp_path / "other.npz")
    broken = pool.embeddings.copy()
    broken[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", broken)
    # select reads through the same reader: a NaN row is refused before STATE_DIR is made
    with pytest.raises(InputError, match="1 of 15 embedding rows hold NaN.*rows 5"):
        select_step(tmp_path / "state", embeddings=str(tmp_path / "nan.npy"), pairs=None)
    assert not (tmp_path / "state").exists()
