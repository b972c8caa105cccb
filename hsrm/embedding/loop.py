"""The online active-annotation loop of Shen, Sun & Ton (2025), section 5 and figure 2.

Run: ``hsrm active recipes/studies/active_synthetic.yaml`` (``--key value`` overrides any field;
``--help`` lists them).

Each run (strategy × annotation batch size × pairing × seed) repeats, round after round:

1. draw ``prompts_per_round`` (500) training prompts;
2. form candidate pairs among their responses (``annotate.round_candidates``): *in-prompt*, every
   pair of a prompt's responses (45 for 10 responses); *cross-prompt*, random pairs of responses
   to different prompts; keep ``candidates_per_round`` (20,000) of them at random, never a pair
   already annotated;
3. choose a batch (125, 250, 500 or 1,000) with the strategy, using the model of the previous
   round (the first batch, with no model yet, is ``initial_strategy``, random by default);
4. label it with the simulated annotator, correct with probability σ(β|Δr_golden|);
5. retrain the BT-MLP on every label so far (from scratch, as the paper retrains "the entire model");
6. evaluate on held-out prompts: 1 − Spearman (per prompt, averaged) and the Best-of-N reward.

For one seed every strategy sees the same prompts and candidate pools each round and the same
first batch (separate random streams for data, selection and annotation), so differences
between the lines of the plots come from the selection, not from luck of the draw.

Outputs in ``output``: ``results.csv`` (one row per run and round), ``summary.md`` (mean ±
sd over seeds at the final round), ``efficiency.png`` (metric against annotations, one line
per strategy, bands = ± one sd over seeds: the paper's figures 3 and 5), and when swept,
``batch_sizes.png`` (figure 4) and ``pairings.png`` (appendix A.3) (plots.py). The runs go
through the runner that ``hsrm study`` uses (runner.py, ``workers`` processes): each finished run
is kept in ``runs/<run>.json`` and skipped when the study is run again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import atomic_write_json, claimed_run_folder, file_fingerprint
from ..options import Options, option
from .active import STRATEGIES, CandidatePairs, InitialStrategy, SelectionOptions, Strategy, select_pairs
from .annotate import Pairing
from .runner import expand_grid, run_tasks, write_tables


@dataclass
class ActiveStudyConfig(Options):
    """One YAML file of ``recipes/studies/`` = one of these; every key is a field here."""

    # --- data: a ResponsePool .npz (`hsrm embed` with a golden reward) or a synthetic world
    pool: str | None = option(
        None, "embeddings/golden/prompt_ids .npz (`hsrm embed --golden-model`); empty → synthetic data"
    )
    test_fraction: float = option(0.1, "real pool: share of prompts held out for evaluation")
    synthetic: dict = option(help="SyntheticWorld fields (dim, latent_dim, …)", factory=dict)
    train_prompts: int = option(4000, "synthetic: training prompts", positive=True)
    responses_per_prompt: int = option(10, "synthetic: responses per training prompt (paper: 10)", positive=True)
    test_prompts: int = option(100, "synthetic: held-out prompts", positive=True)
    test_responses: int = option(
        500, "synthetic: responses per held-out prompt, the N of Best-of-N (paper: 500)", positive=True
    )
    # --- the loop (paper section 5.1)
    strategies: list[Strategy] = option(help="selection strategies compared", factory=lambda: list(STRATEGIES))
    batch_sizes: list[int] = option(help="annotations per round (paper: 125, 250, 500, 1000)", factory=lambda: [500])
    pairings: list[Pairing] = option(help="in-prompt and/or cross-prompt", factory=lambda: ["in-prompt"])
    seeds: list[int] = option(help="repetitions (paper: 5)", factory=lambda: [0, 1, 2])
    annotations: int = option(5000, "budget per run; rounds = annotations // batch size", positive=True)
    prompts_per_round: int = option(500, "prompts drawn each round (paper: 500)")
    candidates_per_round: int = option(20000, "candidate pairs kept each round (paper: 20,000)", positive=True)
    initial_strategy: InitialStrategy = option("random", "the first batch, chosen before any model exists")
    beta: float = option(1.0, "annotator quality: P(correct) = σ(β·|Δr|)")
    # --- the reward model, retrained every round
    hidden: list[int] = option(
        help="MLP hidden sizes (paper section 5.1 / A.4: three hidden layers of 64)", factory=lambda: [64, 64, 64]
    )
    lr: float = option(1e-3, "Adam learning rate")
    max_epochs: int = option(30, "upper bound; early stopping usually ends sooner", positive=True)
    patience: int = option(3, "epochs without validation improvement before stopping", positive=True)
    train_batch_size: int = option(256, "pairs per Adam step", positive=True)
    warm_start: bool = option(False, "start each round from the previous model instead of from scratch")
    selection: dict = option(help="SelectionOptions fields (ridge, batchbald_samples, …)", factory=dict)
    # --- running
    output: str = option(
        "active_study",
        "results, plots and finished runs go here (a rerun of the same study skips its finished runs)",
        aliases=["--output_dir", "--output-dir"],
    )
    overwrite: bool = option(False, "start over: replace what an earlier study (other settings) left in --output")
    workers: int = option(
        1, "runs in parallel processes (at most the CPU count; they share its threads)", positive=True
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.strategies or not self.batch_sizes or not self.pairings or not self.seeds:
            raise InputError("strategies, batch_sizes, pairings and seeds must each list at least one value")
        for size in self.batch_sizes:
            if int(size) < 1:
                raise InputError(f"batch sizes must be positive, got {size}")
            if int(size) > self.annotations:
                raise InputError(
                    f"batch size {size} exceeds the annotation budget {self.annotations}; raise `annotations`"
                )
            if int(size) > self.candidates_per_round:
                raise InputError(f"batch size {size} exceeds candidates_per_round {self.candidates_per_round}")
        if self.prompts_per_round < 2:
            raise InputError(f"prompts_per_round must be ≥ 2, got {self.prompts_per_round}")
        if self.beta < 0:
            raise InputError(f"beta must be ≥ 0, got {self.beta}")
        self.selection_options()  # validate early

    def selection_options(self) -> SelectionOptions:
        known = {f.name for f in fields(SelectionOptions)}
        unknown = sorted(set(self.selection) - known)
        if unknown:
            raise InputError(f"selection: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return SelectionOptions(**self.selection)


def load_active_study(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ActiveStudyConfig:
    """A study YAML plus values → a validated config, typed exactly as ``hsrm active`` types it."""
    from ..options import options_from

    return options_from(ActiveStudyConfig, overrides, path)


# ----------------------------------------------------------------------------------------------
# Data: train / test response pools
# ----------------------------------------------------------------------------------------------


def load_pools(config: ActiveStudyConfig, seed: int = 0):
    """(train, test) ``ResponsePool``s: the synthetic world's, or the .npz pool split by prompt."""
    from .extract import EmbeddedData
    from .synthetic import SyntheticWorld

    if config.pool is not None:
        return EmbeddedData.load(config.pool).pool().split_by_prompt(config.test_fraction, rng=seed)
    world = SyntheticWorld(**config.synthetic)
    return world.train_test(
        config.train_prompts, config.test_prompts, config.responses_per_prompt, config.test_responses, seed=seed
    )


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunKey:
    """One run of the grid; ``name`` is its file in ``output/runs``."""

    strategy: str
    batch_size: int
    pairing: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.strategy}__b{self.batch_size}__{self.pairing}__s{self.seed}"


def evaluate_model(model, test) -> dict:
    """1 − Spearman (per test prompt, averaged), Best-of-N reward and gain on the held-out pool."""
    from ..metrics import best_of_n_reward, evaluate_scores

    scores = model.score(test.embeddings)
    metrics = evaluate_scores(scores, test.golden, test.prompt_ids)
    return {
        "one_minus_spearman": 1.0 - metrics["spearman"],
        "spearman": metrics["spearman"],
        "bon_reward": best_of_n_reward(scores, test.golden, test.prompt_ids),
        "bon_gain": metrics["bon_gain"],
        "bon_gain_fraction": metrics["bon_gain_fraction"],
    }


def run_active(key: RunKey, config: ActiveStudyConfig, train, test, threads: int = 1) -> list[dict]:
    """One run's online loop, with ``threads`` torch threads; returns one record per round."""
    import torch

    from ..metrics import group_by_prompt
    from .annotate import AnnotatedPairs, pair_keys, round_candidates, simulate_annotations
    from .models import fit_bt_mlp

    data_rng = np.random.default_rng([key.seed, 11])  # prompts and candidates: shared by all strategies
    label_rng = np.random.default_rng([key.seed, 12])  # the annotator
    select_rng = np.random.default_rng([key.seed, 13])  # the selection's own randomness
    first_rng = np.random.default_rng([key.seed, 14])  # the first batch, identical for every strategy
    options = config.selection_options()
    groups = group_by_prompt(train.prompt_ids)
    n_items = len(train.golden)
    labelled = np.zeros((0, 2), dtype=np.int64)
    wins = np.zeros(0, dtype=bool)
    model = None
    records = []
    torch.set_num_threads(threads)
    for round_index in range(config.annotations // key.batch_size):
        candidates = round_candidates(
            groups, train.prompt_ids, key.pairing, config.prompts_per_round, config.candidates_per_round, data_rng
        )
        fresh = ~np.isin(pair_keys(candidates, n_items), pair_keys(labelled, n_items))
        candidates = candidates[fresh]
        if len(candidates) < key.batch_size:
            raise InputError(
                f"round {round_index}: only {len(candidates)} new candidate pairs for a batch of "
                f"{key.batch_size}; raise prompts_per_round or lower the batch size"
            )
        start = time.perf_counter()
        pool = CandidatePairs(train.embeddings, candidates)
        if model is None:
            chosen = select_pairs(None, pool, key.batch_size, config.initial_strategy, seed=first_rng, options=options)
        else:
            chosen = select_pairs(
                model,
                pool,
                key.batch_size,
                key.strategy,
                labelled=CandidatePairs(train.embeddings, labelled),
                seed=select_rng,
                options=options,
            )
        select_seconds = time.perf_counter() - start
        batch = candidates[chosen]
        golden_first, golden_second = train.golden[batch[:, 0]], train.golden[batch[:, 1]]
        batch_wins = simulate_annotations(golden_first, golden_second, config.beta, label_rng)
        annotated = AnnotatedPairs(batch[:, 0], batch[:, 1], batch_wins, golden_first, golden_second)
        labelled = np.concatenate([labelled, batch])
        wins = np.concatenate([wins, batch_wins])
        start = time.perf_counter()
        model = fit_bt_mlp(
            train.embeddings[labelled[:, 0]],
            train.embeddings[labelled[:, 1]],
            wins,
            hidden=tuple(config.hidden),
            lr=config.lr,
            max_epochs=config.max_epochs,
            patience=config.patience,
            batch_size=config.train_batch_size,
            seed=key.seed * 10007 + round_index,
            init=model if config.warm_start else None,
        )
        train_seconds = time.perf_counter() - start
        records.append(
            {
                **asdict(key),
                "round": round_index + 1,
                "annotations": len(labelled),
                **evaluate_model(model, test),
                "batch_error_rate": annotated.error_rate,
                "batch_mean_abs_delta": annotated.mean_abs_delta,
                "candidates": len(candidates),
                "select_seconds": select_seconds,
                "train_seconds": train_seconds,
            }
        )
    return records


# ----------------------------------------------------------------------------------------------
# The study: all runs, the table, the plots
# ----------------------------------------------------------------------------------------------


def study_runs(config: ActiveStudyConfig) -> list[RunKey]:
    """The runs of the grid: seeds vary slowest, strategies fastest."""
    grid = expand_grid(
        {
            "seed": config.seeds,
            "pairing": config.pairings,
            "batch_size": config.batch_sizes,
            "strategy": config.strategies,
        }
    )
    return [RunKey(run["strategy"], int(run["batch_size"]), run["pairing"], int(run["seed"])) for run in grid]


def run_active_study(config: ActiveStudyConfig, data_seed: int = 0, progress: bool = True):
    """Every run of the grid not finished yet in ``output/runs`` (runner.py), then the table,
    the summary and the plots. Returns the results as a pandas DataFrame."""
    import pandas as pd

    from .plots import plot_active_study

    out = Path(config.output)
    # What defines every run's rows besides its name (strategy, batch size, pairing, seed): a rerun
    # with another pool, world, budget or model must not reuse the rows of runs/ (hsrm.files.RUN_RECORD).
    per_run = {"strategies", "batch_sizes", "pairings", "seeds", "output", "overwrite", "workers", "pool"}
    study_key = {
        "verb": "active",
        **{name: value for name, value in asdict(config).items() if name not in per_run},
        "pool": file_fingerprint(config.pool),  # by content: the same file moved is the same pool
        "data_seed": data_seed,
    }
    with claimed_run_folder(out, study_key, inputs=[config.pool], overwrite=config.overwrite, flag="--output"):
        atomic_write_json(out / "study.json", asdict(config))
        train, test = load_pools(config, data_seed)
        runs = run_tasks(
            out,
            {key.name: key for key in study_runs(config)},
            run_active,
            (config, train, test),
            n_jobs=config.workers,
            desc="active study",
            progress=progress,
        )
        results = pd.DataFrame([record for records in runs.values() for record in records])
        write_tables(out, results, summary_table(results) + "\n")
        plot_active_study(results, out)
    return results


def summary_table(results) -> str:
    """Markdown: per (pairing, batch size, strategy), mean ± sd over seeds at the last round, and
    the mean of 1 − Spearman over all rounds (area under the efficiency curve, lower is better)."""
    lines = [
        "| pairing | batch | strategy | annotations | 1 − Spearman | BoN reward | mean 1 − Spearman over rounds "
        "| select s/round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (pairing, batch, strategy), group in results.groupby(["pairing", "batch_size", "strategy"], sort=False):
        last = group[group["round"] == group["round"].max()]
        auc = group.groupby("seed")["one_minus_spearman"].mean()
        lines.append(
            f"| {pairing} | {batch} | {strategy} | {int(last['annotations'].iloc[0])} | "
            f"{_mean_sd(last['one_minus_spearman'])} | {_mean_sd(last['bon_reward'])} | {_mean_sd(auc)} | "
            f"{group['select_seconds'].mean():.3f} |"
        )
    return "\n".join(lines)


def _mean_sd(values) -> str:
    from .study import mean_sd_text

    values = np.asarray(values, dtype=np.float64)
    return mean_sd_text(values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0, len(values))
