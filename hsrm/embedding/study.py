"""`hsrm study STUDY.yaml`: sweep method × β × annotation count × design × pairing × seed on CPU.

Paper: Sun et al. (2024), section 6. Every *setup* draws ``n_annotations`` pairs from the training
responses with a design (random / similar / diverse) and a pairing (in-prompt / cross-prompt),
labels them with a σ(β|Δr|) annotator, fits one reward model, and scores the test prompts'
N responses: Best-of-N gain, per-prompt Spearman, and the design's annotation error rate.

A study file (YAML)::

    name: synthetic-quick
    output_dir: runs/studies/synthetic-quick
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
    format: csv                    # or parquet

Results go to ``output_dir``: ``results.csv`` (one tidy row per setup), ``summary.md`` (mean ± std
over seeds), ``fig1_methods.png`` … ``fig5_designs.png``, and ``rows.jsonl``, appended as setups
finish, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..options import option
from .annotate import DESIGNS, PAIRINGS, ResponsePool, annotate_pairs
from .metrics import evaluate_scores, mean_sd_text
from .models import METHOD_NAMES, fit_reward_model

logger = logging.getLogger(__name__)

GRID_AXES = ("methods", "betas", "annotation_counts", "designs", "pairings", "seeds")
SETUP_KEYS = ("method", "beta", "n_annotations", "design", "pairing", "seed")
MAX_WORKERS = 2  # the CI machines have two cores (brief); more processes only thrash
_SYNTHETIC_SIZES = ("n_train_prompts", "n_test_prompts", "train_responses", "test_responses", "sample_seed")


@dataclass
class StudyConfig:
    """One study YAML (``recipes/studies/*.yaml``): every key is a field here, and every field a flag of
    ``hsrm study STUDY.yaml``."""

    name: str = option("study", "the study's name (in the summary)")
    output_dir: str = option("runs/study", "results, summary and plots go here (a rerun skips finished setups)",
                             aliases=["--output"])
    data: dict = option(help="{synthetic: {SyntheticWorld sizes}} or {embeddings: FILE.npz, test_fraction: 0.2}",
                        factory=lambda: {"synthetic": {}})
    grid: dict = option(help="the base grid: axes methods, betas, annotation_counts, designs, pairings, seeds", factory=dict)
    grids: list[dict] = option(help="slices: each overrides axes of the base grid; setups are the union", factory=list)
    fit: dict = option(help="MLP options (hidden, lr, max_epochs, patience, batch_size)", factory=dict)
    lgb_params: dict = option(help="LightGBM parameters passed through", factory=dict)
    n_jobs: int = option(2, "worker processes", positive=True)
    table_format: str = option("csv", "results table: csv | parquet")
    plots: bool = option(True, "draw the plots (--no-plots: tables only)")
    seeds: Optional[list[int]] = option(None, "replace the seeds of the base grid and of every slice, e.g. --seeds 0 1 2")

    def __post_init__(self):
        if self.table_format not in ("csv", "parquet"):
            raise ValueError(f"table_format must be csv or parquet, got {self.table_format!r}")
        if not isinstance(self.data, dict) or len(self.data) != 1 or next(iter(self.data)) not in ("synthetic", "embeddings"):
            raise ValueError("data must be {synthetic: {...}} or {embeddings: FILE.npz, test_fraction: 0.2}")
        if self.n_jobs < 1:
            raise ValueError(f"n_jobs must be ≥ 1, got {self.n_jobs}")
        if self.seeds is not None:
            self.grid = dict(self.grid, seeds=list(self.seeds))
            self.grids = [{k: v for k, v in g.items() if k != "seeds"} for g in self.grids]
        for grid in [self.grid, *self.grids]:
            unknown = set(grid) - set(GRID_AXES)
            if unknown:
                raise ValueError(f"unknown grid axes {sorted(unknown)}; the axes are {', '.join(GRID_AXES)}")
        for setup in self.setups():
            if setup["method"] not in METHOD_NAMES:
                raise ValueError(f"unknown method {setup['method']!r}; choose from {', '.join(METHOD_NAMES)}")
            if setup["design"] not in DESIGNS:
                raise ValueError(f"unknown design {setup['design']!r}; choose from {', '.join(DESIGNS)}")
            if setup["pairing"] not in PAIRINGS:
                raise ValueError(f"unknown pairing {setup['pairing']!r}; choose from {', '.join(PAIRINGS)}")
            if setup["beta"] < 0 or setup["n_annotations"] < 2:
                raise ValueError(f"beta must be ≥ 0 and annotation counts ≥ 2 (got {setup['beta']}, {setup['n_annotations']})")

    def setups(self) -> list[dict]:
        """The distinct setups of the base grid and every slice, in a stable order."""
        base = {"methods": list(METHOD_NAMES), "betas": [1.0], "annotation_counts": [2000], "designs": ["random"],
                "pairings": ["in-prompt"], "seeds": [0]}
        base.update({k: _as_list(v) for k, v in self.grid.items()})
        seen, out = set(), []
        for overrides in (self.grids or [{}]):
            axes = dict(base, **{k: _as_list(v) for k, v in overrides.items()})
            for values in itertools.product(*(axes[a] for a in GRID_AXES)):
                setup = dict(zip(SETUP_KEYS, values))
                setup["beta"] = float(setup["beta"])
                setup["n_annotations"] = int(setup["n_annotations"])
                setup["seed"] = int(setup["seed"])
                key = setup_key(setup)
                if key not in seen:
                    seen.add(key)
                    out.append(setup)
        return out


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def setup_key(setup: dict) -> str:
    return json.dumps([setup[k] for k in SETUP_KEYS])


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
        train, test = world.train_test(int(sizes.get("n_train_prompts", 2000)), int(sizes.get("n_test_prompts", 100)),
                                       int(sizes.get("train_responses", 10)), int(sizes.get("test_responses", 100)),
                                       seed=int(sizes.get("sample_seed", 0)))
        return train, test, {"data": "synthetic", **world.to_dict(), **sizes}
    from .extract import EmbeddedData

    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    path = Path(spec["path"])
    if not path.is_absolute():
        path = Path(base_dir) / path
    pool = EmbeddedData.load(path).pool()
    train, test = pool.split_by_prompt(float(spec.get("test_fraction", 0.2)), rng=int(spec.get("split_seed", 0)))
    return train, test, {"data": str(path), "test_fraction": spec.get("test_fraction", 0.2)}


# ---------------------------------------------------------------- one setup


def run_setup(setup: dict, train: ResponsePool, test: ResponsePool, fit_kwargs: dict | None = None,
              lgb_params: dict | None = None, threads: int = 1) -> dict:
    """Annotate, fit and evaluate one setup; returns its tidy row."""
    import torch

    torch.set_num_threads(max(1, threads))
    rng = np.random.default_rng([setup["seed"], int(setup["beta"] * 1000), setup["n_annotations"], 7])
    pairs = annotate_pairs(train.prompt_ids, train.golden, beta=setup["beta"], design=setup["design"],
                           pairing=setup["pairing"], n_pairs=setup["n_annotations"], rng=rng)
    kwargs = dict(fit_kwargs or {})
    if setup["method"] == "clf-lgb":
        kwargs = {"num_threads": max(1, threads), "params": dict(lgb_params or {})}
    start = time.perf_counter()
    model = fit_reward_model(setup["method"], train.embeddings[pairs.first], train.embeddings[pairs.second],
                             pairs.first_wins, seed=setup["seed"], **kwargs)
    fit_seconds = time.perf_counter() - start
    metrics = evaluate_scores(model.score(test.embeddings), test.golden, test.prompt_ids)
    history = getattr(model, "history", None)
    return {**setup, "error_rate": pairs.error_rate, "expected_error_rate": pairs.expected_error_rate(setup["beta"]),
            "mean_abs_delta": pairs.mean_abs_delta, **metrics, "fit_seconds": fit_seconds,
            "epochs": (len(history.train_loss) if history else None), "n_pairs": len(pairs.first_wins),
            "test_prompts": int(len(np.unique(test.prompt_ids))), "test_responses": len(test)}


# ---------------------------------------------------------------- the study


def run_study(config: StudyConfig, base_dir: str | os.PathLike = ".", progress: bool = True):
    """Run every setup not already in ``rows.jsonl``, in up to two worker processes; write the
    table, the summary and the plots. Returns the results as a pandas DataFrame."""
    import pandas as pd
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    out = Path(config.output_dir)
    if not out.is_absolute():
        out = Path(base_dir) / out
    out.mkdir(parents=True, exist_ok=True)
    train, test, description = load_study_data(config, base_dir)
    (out / "study.json").write_text(json.dumps({"name": config.name, "data": description, "grid": config.grid,
                                                "grids": config.grids, "fit": config.fit}, indent=2, default=str) + "\n")
    rows_file = out / "rows.jsonl"
    done = {}
    if rows_file.exists():
        for line in rows_file.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[setup_key(row)] = row
    todo = [s for s in config.setups() if setup_key(s) not in done]
    workers = max(1, min(config.n_jobs, MAX_WORKERS, os.cpu_count() or 1, len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        # Respect a caller's thread cap: oversubscribed OpenMP (LightGBM, torch) spins and crawls.
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    logger.info("study %s: %d setups (%d already done), %d workers", config.name, len(todo) + len(done), len(done), workers)
    if todo:
        jobs = (delayed(run_setup)(s, train, test, config.fit, config.lgb_params, threads) for s in todo)
        results = Parallel(n_jobs=workers, return_as="generator_unordered")(jobs) if workers > 1 else (
            run_setup(s, train, test, config.fit, config.lgb_params, threads) for s in todo)
        with open(rows_file, "a", encoding="utf-8") as handle:
            for row in tqdm(results, total=len(todo), desc=f"study {config.name}", disable=None if progress else True):
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                done[setup_key(row)] = row
    wanted = [setup_key(s) for s in config.setups()]
    table = pd.DataFrame([done[k] for k in wanted])
    if config.table_format == "parquet":
        table.to_parquet(out / "results.parquet", index=False)
    else:
        table.to_csv(out / "results.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(table, config.name))
    if config.plots:
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
    lines = [f"# Study {name}: " + ("mean ± std over seeds" if seeds > 1 else "one seed (no spread to report)"), "",
             "| design | pairing | β | annotations | method | error rate | BoN gain | gain / oracle | Spearman | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in agg.itertuples(index=False):
        lines.append(f"| {row.design} | {row.pairing} | {row.beta:g} | {row.n_annotations} | {row.method} | "
                     f"{row.error_rate:.3f} | {mean_sd_text(row.bon_gain, row.bon_gain_std, row.seeds)} | {row.bon_gain_fraction:.3f} | "
                     f"{mean_sd_text(row.spearman, row.spearman_std, row.seeds)} | {row.seeds} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots shaped like the paper's figures 1-5

_METHOD_LABELS = {"bt-mlp": "BT-MLP", "clf-mlp": "CLF-MLP", "clf-lgb": "CLF-LGB"}


def _reference(table) -> dict:
    """The slice the paper holds fixed when it varies one axis: β = 1 (else the median β), the
    largest annotation count, the random design, in-prompt pairs."""
    betas = sorted(table["beta"].unique())
    return {"beta": 1.0 if 1.0 in betas else betas[len(betas) // 2], "n_annotations": int(table["n_annotations"].max()),
            "design": "random" if "random" in set(table["design"]) else sorted(table["design"].unique())[0],
            "pairing": "in-prompt" if "in-prompt" in set(table["pairing"]) else sorted(table["pairing"].unique())[0]}


def _slice(table, fixed: dict):
    mask = np.ones(len(table), dtype=bool)
    for key, value in fixed.items():
        mask &= (table[key] == value).to_numpy()
    return table[mask]


def plot_study(table, out: Path) -> list[Path]:
    """PNG figures in the shape of the paper's figures 1–5 (panels: BoN gain, Spearman), each drawn
    only when the grid varies the axis it needs. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = _reference(table)
    methods = [m for m in METHOD_NAMES if m in set(table["method"])]
    written = []

    def bars(ax, data, groups, metric, group_key, labels):
        width = 0.8 / max(1, len(groups))
        for g, group in enumerate(groups):
            means, stds = [], []
            for m in methods:
                part = data[(data["method"] == m) & (data[group_key] == group)][metric]
                means.append(part.mean() if len(part) else np.nan)
                stds.append(part.std(ddof=0) if len(part) > 1 else 0.0)
            ax.bar(np.arange(len(methods)) + (g - (len(groups) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                   label=labels.get(group, str(group)), hatch="//" if "cross" in str(group) else None, alpha=0.85)
        ax.set_xticks(np.arange(len(methods)), [_METHOD_LABELS.get(m, m) for m in methods])

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    panels = (("bon_gain", "Best-of-N gain (golden reward)"), ("spearman", "per-prompt Spearman"))

    # Figure 1: the three methods at the reference setup.
    data = _slice(table, ref)
    if len(data):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, (metric, label) in zip(axes, panels):
            bars(ax, data.assign(one="all"), ["all"], metric, "one", {"all": "seeds"})
            ax.set_ylabel(label)
        fig.suptitle(f"BT vs classification (β={ref['beta']:g}, {ref['n_annotations']} annotations)")
        save(fig, "fig1_methods.png")

    def lines(name, x_key, x_label, fixed, title, x_from=None):
        data = _slice(table, fixed)
        if data[x_key].nunique() < 2:
            return
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, (metric, label) in zip(axes, panels):
            for m in methods:
                part = data[data["method"] == m]
                agg = part.groupby(x_key).agg(y=(metric, "mean"), e=(metric, "std"), x=(x_from or x_key, "mean")).reset_index()
                ax.errorbar(agg["x"], agg["y"], yerr=agg["e"].fillna(0), marker="o", capsize=3, label=_METHOD_LABELS.get(m, m))
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
        axes[0].legend()
        fig.suptitle(title)
        save(fig, name)

    # Figure 2: gain against the observed annotation error rate (β varies).
    lines("fig2_error_rate.png", "beta", "annotation error rate", {k: ref[k] for k in ("n_annotations", "design", "pairing")},
          f"Changing annotation quality ({ref['n_annotations']} annotations)", x_from="error_rate")
    # Figure 3: gain against the number of annotations.
    lines("fig3_annotations.png", "n_annotations", "# training annotations", {k: ref[k] for k in ("beta", "design", "pairing")},
          f"Changing annotation quantity (β={ref['beta']:g})")

    # Figures 4 and 5: in-prompt vs cross-prompt, for the random design (4) and the synthetic designs (5).
    pair_labels = {"in-prompt": "in-prompt", "cross-prompt": "X-prompt"}
    fixed = {k: ref[k] for k in ("beta", "n_annotations")}
    if set(table["pairing"]) >= set(PAIRINGS):
        data = _slice(table, {**fixed, "design": "random"})
        if len(data):
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
            for ax, (metric, label) in zip(axes, panels):
                bars(ax, data, list(PAIRINGS), metric, "pairing", pair_labels)
                ax.set_ylabel(label)
            axes[0].legend()
            fig.suptitle("Cross-prompt vs in-prompt annotation (random pairs)")
            save(fig, "fig4_cross_prompt.png")
        designs = [d for d in ("similar", "diverse") if d in set(table["design"])]
        if designs:
            fig, axes = plt.subplots(2, len(designs), figsize=(4.6 * len(designs), 6.5), squeeze=False)
            for col, design in enumerate(designs):
                data = _slice(table, {**fixed, "design": design})
                for row, (metric, label) in enumerate(panels):
                    ax = axes[row, col]
                    bars(ax, data, list(PAIRINGS), metric, "pairing", pair_labels)
                    ax.set_ylabel(label)
                    ax.set_title(f"{design.capitalize()} comparisons")
            axes[0, 0].legend()
            save(fig, "fig5_designs.png")
    return written
