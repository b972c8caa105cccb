"""`hsrm study STUDY.yaml`: sweep method × β × annotation count × design × pairing × seed on CPU.

Paper: Sun et al. (2024), section 6. Every *setup* draws ``n_annotations`` pairs from the training
responses with a design (random / similar / diverse) and a pairing (in-prompt / cross-prompt),
labels them with a σ(β|Δr|) annotator, fits one reward model, and scores the test prompts'
N responses: Best-of-N gain, per-prompt Spearman, and the design's annotation error rate.

A study file (YAML)::

    name: synthetic-quick
    output: runs/studies/synthetic-quick
    data:                          # either synthetic: {SyntheticWorld fields + sizes} …
      synthetic: {dim: 64, n_train_prompts: 4000, n_test_prompts: 100, test_responses: 100}
      # … or embeddings: FILE.npz (from `hsrm embed`, with golden rewards), test_fraction: 0.2
    grid:                          # the base grid
      methods: [bt-mlp, clf-mlp, clf-lgb]
      betas: [1.0]
      annotation_counts: [2000]
      designs: [random]
      pairings: [in-prompt]
      seeds: [0, 1, 2]
    grids:                         # optional slices, each overriding the base grid
      - {betas: [0.5, 1, 3, 10]}
      - {annotation_counts: [500, 1000, 2000]}
    fit: {max_epochs: 30}          # passed to the MLP fitters (hidden, lr, batch_size, patience …)
    lgb_params: {}                 # LightGBM overrides (none: the paper's defaults)
    n_jobs: 2                      # worker processes (at most the CPU count)
    table_format: csv              # or parquet

Results go to ``output``: ``results.csv`` (one tidy row per setup), ``summary.md`` (mean ± std
over seeds), ``fig1_methods.png`` … ``fig5_designs.png`` (plots.py), and ``runs/<setup>.json``,
written as each setup finishes (runner.py), so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InputError
from ..files import atomic_write_json, claimed_run_folder, file_fingerprint
from ..metrics import evaluate_scores
from ..options import Options, OptionsError, option
from .annotate import DESIGNS, PAIRINGS, ResponsePool, annotate_pairs
from .extract import EmbeddedData
from .models import METHOD_NAMES, fit_reward_model
from .runner import expand_grid, run_tasks, write_tables

GRID_AXES = ("methods", "betas", "annotation_counts", "designs", "pairings", "seeds")
SETUP_KEYS = ("method", "beta", "n_annotations", "design", "pairing", "seed")
DATA_KINDS = ("synthetic", "embeddings")
_SYNTHETIC_SIZES = ("n_train_prompts", "n_test_prompts", "train_responses", "test_responses", "sample_seed")


@dataclass
class StudyConfig(Options):
    """One study YAML (``recipes/studies/*.yaml``): every key is a field here, and every field a flag of
    ``hsrm study STUDY.yaml``."""

    name: str = option("study", "the study's name (in the summary)")
    output: str = option(
        "runs/study",
        "results, summary and plots go here (a rerun of the same study skips its finished setups)",
        aliases=["--output_dir", "--output-dir"],
    )
    overwrite: bool = option(
        False, "start over: replace what an earlier study (other data or fit options) left in --output"
    )
    data: dict = option(
        help="{synthetic: {SyntheticWorld sizes}} or {embeddings: FILE.npz, test_fraction: 0.2}",
        factory=lambda: {"synthetic": {}},
    )
    grid: dict = option(
        help="the base grid: axes methods, betas, annotation_counts, designs, pairings, seeds", factory=dict
    )
    grids: list[dict] = option(help="slices: each overrides axes of the base grid; setups are the union", factory=list)
    fit: dict = option(help="MLP options (hidden, lr, max_epochs, patience, batch_size)", factory=dict)
    lgb_params: dict = option(help="LightGBM parameters passed through", factory=dict)
    n_jobs: int = option(2, "worker processes", positive=True)
    table_format: Literal["csv", "parquet"] = option("csv", "the results table's file format")
    plots: bool = option(True, "draw the plots (--no-plots: tables only)")
    seeds: list[int] | None = option(None, "replace the seeds of the base grid and of every slice, e.g. --seeds 0 1 2")

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.data, dict) or len(self.data) != 1 or next(iter(self.data)) not in DATA_KINDS:
            raise InputError("data must be {synthetic: {...}} or {embeddings: FILE.npz, test_fraction: 0.2}")
        from .models import MLPSettings

        try:  # a typo in `fit:` is refused now, not in a worker process after the data is built
            MLPSettings.from_keywords("fit", self.fit)
        except TypeError as err:  # what a Python caller's keyword typo raises; here it is an option
            raise OptionsError(str(err)) from None
        if self.seeds is not None:
            self.grid = dict(self.grid, seeds=list(self.seeds))
            self.grids = [{k: v for k, v in g.items() if k != "seeds"} for g in self.grids]
        for grid in [self.grid, *self.grids]:
            unknown = set(grid) - set(GRID_AXES)
            if unknown:
                raise InputError(f"unknown grid axes {sorted(unknown)}; the axes are {', '.join(GRID_AXES)}")
        for setup in self.setups():
            if setup["method"] not in METHOD_NAMES:
                raise InputError(f"unknown method {setup['method']!r}; choose from {', '.join(METHOD_NAMES)}")
            if setup["design"] not in DESIGNS:
                raise InputError(f"unknown design {setup['design']!r}; choose from {', '.join(DESIGNS)}")
            if setup["pairing"] not in PAIRINGS:
                raise InputError(f"unknown pairing {setup['pairing']!r}; choose from {', '.join(PAIRINGS)}")
            if setup["beta"] < 0 or setup["n_annotations"] < 2:
                raise InputError(
                    f"beta must be ≥ 0 and annotation counts ≥ 2 (got {setup['beta']}, {setup['n_annotations']})"
                )

    def setups(self) -> list[dict]:
        """The distinct setups of the base grid and every slice, in a stable order."""
        base = {
            "methods": list(METHOD_NAMES),
            "betas": [1.0],
            "annotation_counts": [2000],
            "designs": ["random"],
            "pairings": ["in-prompt"],
            "seeds": [0],
        }
        base.update({k: _as_list(v) for k, v in self.grid.items()})
        setups: dict[str, dict] = {}
        for overrides in self.grids or [{}]:
            axes = dict(base, **{k: _as_list(v) for k, v in overrides.items()})
            for setup in expand_grid({key: axes[axis] for key, axis in zip(SETUP_KEYS, GRID_AXES)}):
                setup.update(
                    beta=float(setup["beta"]), n_annotations=int(setup["n_annotations"]), seed=int(setup["seed"])
                )
                setups.setdefault(setup_name(setup), setup)
        return list(setups.values())


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def setup_name(setup: dict) -> str:
    """A file name that tells the setup: ``bt-mlp__beta1.0__n2000__random__in-prompt__s0``."""
    return (
        f"{setup['method']}__beta{setup['beta']!r}__n{setup['n_annotations']}__{setup['design']}__"
        f"{setup['pairing']}__s{setup['seed']}"
    )


def load_study(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """A study YAML plus values → a validated config, typed exactly as ``hsrm study`` types it."""
    from ..options import options_from

    return options_from(StudyConfig, overrides, path)


# ---------------------------------------------------------------- data


def load_study_data(config: StudyConfig, base_dir: str | os.PathLike = ".") -> tuple[ResponsePool, ResponsePool, dict]:
    """(train pool, test pool, description) from the study's data section."""
    kind, spec = next(iter(config.data.items()))
    if kind == "synthetic":
        from .synthetic import SyntheticWorld

        spec = dict(spec or {})
        sizes = {k: spec.pop(k) for k in _SYNTHETIC_SIZES if k in spec}
        world = SyntheticWorld(**spec)
        train, test = world.train_test(
            int(sizes.get("n_train_prompts", 2000)),
            int(sizes.get("n_test_prompts", 100)),
            int(sizes.get("train_responses", 10)),
            int(sizes.get("test_responses", 100)),
            seed=int(sizes.get("sample_seed", 0)),
        )
        return train, test, {"data": "synthetic", **world.to_dict(), **sizes}
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    path = Path(base_dir) / spec["path"]  # an absolute path stays as it is
    pool = EmbeddedData.load(path).pool()
    train, test = pool.split_by_prompt(float(spec.get("test_fraction", 0.2)), rng=int(spec.get("split_seed", 0)))
    return train, test, {"data": str(path), "test_fraction": spec.get("test_fraction", 0.2)}


# ---------------------------------------------------------------- one setup


def run_setup(
    setup: dict,
    train: ResponsePool,
    test: ResponsePool,
    fit_kwargs: dict | None = None,
    lgb_params: dict | None = None,
    threads: int = 1,
) -> dict:
    """Annotate, fit and evaluate one setup; returns its tidy row."""
    import torch

    torch.set_num_threads(max(1, threads))
    rng = np.random.default_rng([setup["seed"], int(setup["beta"] * 1000), setup["n_annotations"], 7])
    pairs = annotate_pairs(
        train.prompt_ids,
        train.golden,
        beta=setup["beta"],
        design=setup["design"],
        pairing=setup["pairing"],
        n_pairs=setup["n_annotations"],
        rng=rng,
    )
    kwargs = dict(fit_kwargs or {})
    if setup["method"] == "clf-lgb":
        kwargs = {"num_threads": max(1, threads), "params": dict(lgb_params or {})}
    start = time.perf_counter()
    model = fit_reward_model(
        setup["method"],
        train.embeddings[pairs.first],
        train.embeddings[pairs.second],
        pairs.first_wins,
        seed=setup["seed"],
        **kwargs,
    )
    fit_seconds = time.perf_counter() - start
    metrics = evaluate_scores(model.score(test.embeddings), test.golden, test.prompt_ids)
    history = getattr(model, "history", None)
    return {
        **setup,
        "error_rate": pairs.error_rate,
        "expected_error_rate": pairs.expected_error_rate(setup["beta"]),
        "mean_abs_delta": pairs.mean_abs_delta,
        **metrics,
        "fit_seconds": fit_seconds,
        "epochs": (len(history.train_loss) if history else None),
        "n_pairs": len(pairs.first_wins),
        "test_prompts": int(len(np.unique(test.prompt_ids))),
        "test_responses": len(test),
    }


# ---------------------------------------------------------------- the study


def run_study(config: StudyConfig, base_dir: str | os.PathLike = ".", progress: bool = True):
    """Run every setup not finished yet in ``output/runs`` (runner.py), then write the table,
    the summary and the plots. Returns the results as a pandas DataFrame."""
    import pandas as pd

    out = Path(base_dir) / config.output  # an absolute output stays as it is
    train, test, description = load_study_data(config, base_dir)
    data_file = Path(description["data"]) if description["data"] != "synthetic" else None
    # What defines every setup's row besides its name (method, β, count, design, pairing, seed): a
    # rerun with other data or fit options must not reuse the rows of runs/ (hsrm.files.RUN_RECORD).
    key = {
        "verb": "study",
        # the file by content (moved, it is the same data), synthetic data by its world and sizes
        "data": {**description, "data": file_fingerprint(data_file) or description["data"]},
        "fit": config.fit,
        "lgb_params": config.lgb_params,
    }
    with claimed_run_folder(out, key, inputs=[data_file], overwrite=config.overwrite, flag="--output"):
        atomic_write_json(
            out / "study.json",
            {"name": config.name, "data": description, "grid": config.grid, "grids": config.grids, "fit": config.fit},
            default=str,
        )
        setups = {setup_name(setup): setup for setup in config.setups()}
        rows = run_tasks(
            out,
            setups,
            run_setup,
            (train, test, config.fit, config.lgb_params),
            n_jobs=config.n_jobs,
            desc=f"study {config.name}",
            progress=progress,
        )
        table = pd.DataFrame(list(rows.values()))
        write_tables(out, table, summary_markdown(table, config.name), config.table_format)
        if config.plots:
            from .plots import plot_study

            plot_study(table, out)
    return table


def aggregate(table, by: list[str]):
    """Mean and standard deviation over seeds of the main metrics."""
    metrics = ["bon_gain", "spearman", "error_rate", "bon_gain_fraction"]
    grouped = table.groupby(by, sort=True)[metrics]
    result = grouped.mean().join(grouped.std(ddof=0), rsuffix="_std").join(grouped.size().rename("seeds"))
    return result.reset_index()


def summary_markdown(table, name: str) -> str:
    """A markdown table: one line per setup (seeds averaged), mean ± std."""
    agg = aggregate(table, ["design", "pairing", "beta", "n_annotations", "method"])
    seeds = int(agg["seeds"].max()) if len(agg) else 0
    lines = [
        f"# Study {name}: " + ("mean ± std over seeds" if seeds > 1 else "one seed (no spread to report)"),
        "",
        "| design | pairing | β | annotations | method | error rate | BoN gain | gain / oracle | Spearman | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in agg.itertuples(index=False):
        lines.append(
            f"| {row.design} | {row.pairing} | {row.beta:g} | {row.n_annotations} | {row.method} | "
            f"{row.error_rate:.3f} | {mean_sd_text(row.bon_gain, row.bon_gain_std, row.seeds)} | "
            f"{row.bon_gain_fraction:.3f} | "
            f"{mean_sd_text(row.spearman, row.spearman_std, row.seeds)} | {row.seeds} |"
        )
    return "\n".join(lines) + "\n"


def mean_sd_text(mean: float, sd: float, n: int) -> str:
    """``mean ± sd`` over ``n`` seeds; the mean alone with one seed (a spread of one value says nothing).

    >>> mean_sd_text(0.5, 0.1, 3), mean_sd_text(0.5, 0.0, 1)
    ('0.500 ± 0.100', '0.500')
    """
    return f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f}"
