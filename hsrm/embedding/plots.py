"""The figures of the lightweight path's studies, as PNG files beside their tables.

``plot_study``: ``hsrm study``'s figures in the shape of Sun et al. (2024), figures 1–5.
``plot_active_study``: ``hsrm active``'s annotation-efficiency curves, Shen, Sun & Ton (2025), figures 3–5.
Each file is written atomically; matplotlib is imported only here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write
from .annotate import PAIRINGS
from .models import METHOD_NAMES

METHOD_LABELS = {"bt-mlp": "BT-MLP", "clf-mlp": "CLF-MLP", "clf-lgb": "CLF-LGB"}
ACTIVE_METRICS = {
    "one_minus_spearman": "1 − Spearman (lower is better)",
    "bon_reward": "Best-of-N golden reward (higher is better)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int, written: list[Path]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi), binary=True)
    plt.close(fig)
    written.append(path)


# ---------------------------------------------------------------- hsrm study: the paper's figures 1-5


def _reference(table) -> dict:
    """The slice the paper holds fixed when it varies one axis: β = 1 (else the median β), the
    largest annotation count, the random design, in-prompt pairs."""
    betas = sorted(table["beta"].unique())
    return {
        "beta": 1.0 if 1.0 in betas else betas[len(betas) // 2],
        "n_annotations": int(table["n_annotations"].max()),
        "design": "random" if "random" in set(table["design"]) else sorted(table["design"].unique())[0],
        "pairing": "in-prompt" if "in-prompt" in set(table["pairing"]) else sorted(table["pairing"].unique())[0],
    }


def _slice(table, fixed: dict):
    mask = np.ones(len(table), dtype=bool)
    for key, value in fixed.items():
        mask &= (table[key] == value).to_numpy()
    return table[mask]


def plot_study(table, out: Path) -> list[Path]:
    """PNG figures in the shape of the paper's figures 1–5 (panels: BoN gain, Spearman), each drawn
    only when the grid varies the axis it needs. Returns the files written."""
    plt = _pyplot()
    ref = _reference(table)
    methods = [m for m in METHOD_NAMES if m in set(table["method"])]
    written: list[Path] = []

    def bars(ax, data, groups, metric, group_key, labels):
        width = 0.8 / max(1, len(groups))
        for g, group in enumerate(groups):
            means, stds = [], []
            for m in methods:
                part = data[(data["method"] == m) & (data[group_key] == group)][metric]
                means.append(part.mean() if len(part) else np.nan)
                stds.append(part.std(ddof=0) if len(part) > 1 else 0.0)
            ax.bar(
                np.arange(len(methods)) + (g - (len(groups) - 1) / 2) * width,
                means,
                width,
                yerr=stds,
                capsize=3,
                label=labels.get(group, str(group)),
                hatch="//" if "cross" in str(group) else None,
                alpha=0.85,
            )
        ax.set_xticks(np.arange(len(methods)), [METHOD_LABELS.get(m, m) for m in methods])

    panels = (("bon_gain", "Best-of-N gain (golden reward)"), ("spearman", "per-prompt Spearman"))

    # Figure 1: the three methods at the reference setup.
    data = _slice(table, ref)
    if len(data):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, (metric, label) in zip(axes, panels):
            bars(ax, data.assign(one="all"), ["all"], metric, "one", {"all": "seeds"})
            ax.set_ylabel(label)
        fig.suptitle(f"BT vs classification (β={ref['beta']:g}, {ref['n_annotations']} annotations)")
        _save(fig, out / "fig1_methods.png", 110, written)

    def lines(name, x_key, x_label, fixed, title, x_from=None):
        data = _slice(table, fixed)
        if data[x_key].nunique() < 2:
            return
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, (metric, label) in zip(axes, panels):
            for m in methods:
                part = data[data["method"] == m]
                agg = part.groupby(x_key).agg(y=(metric, "mean"), e=(metric, "std"), x=(x_from or x_key, "mean"))
                agg = agg.reset_index()
                ax.errorbar(
                    agg["x"], agg["y"], yerr=agg["e"].fillna(0), marker="o", capsize=3, label=METHOD_LABELS.get(m, m)
                )
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
        axes[0].legend()
        fig.suptitle(title)
        _save(fig, out / name, 110, written)

    # Figure 2: gain against the observed annotation error rate (β varies).
    lines(
        "fig2_error_rate.png",
        "beta",
        "annotation error rate",
        {k: ref[k] for k in ("n_annotations", "design", "pairing")},
        f"Changing annotation quality ({ref['n_annotations']} annotations)",
        x_from="error_rate",
    )
    # Figure 3: gain against the number of annotations.
    lines(
        "fig3_annotations.png",
        "n_annotations",
        "# training annotations",
        {k: ref[k] for k in ("beta", "design", "pairing")},
        f"Changing annotation quantity (β={ref['beta']:g})",
    )

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
            _save(fig, out / "fig4_cross_prompt.png", 110, written)
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
            _save(fig, out / "fig5_designs.png", 110, written)
    return written


# ---------------------------------------------------------------- hsrm active: annotation efficiency


def _band(ax, group, x: str, y: str, label: str):
    """The mean of ``y`` against ``x`` over seeds, with a band of ± one standard deviation."""
    stats = group.groupby(x)[y].agg(["mean", "std", "count"]).reset_index()
    sd = stats["std"].fillna(0.0).to_numpy()
    (line,) = ax.plot(stats[x], stats["mean"], marker="o", markersize=3, label=label)
    ax.fill_between(stats[x], stats["mean"] - sd, stats["mean"] + sd, alpha=0.15, color=line.get_color())


def _efficiency_figure(plt, results, panel_by: list[str], curve_by: str, curve_label, panel_title, size):
    """One column per panel (``panel_by`` values), one row per metric, one band per ``curve_by`` value."""
    panels = list(results.groupby(panel_by, sort=False))
    fig, axes = plt.subplots(
        len(ACTIVE_METRICS), len(panels), squeeze=False, figsize=(size[0] * len(panels), size[1] * len(ACTIVE_METRICS))
    )
    for col, (fixed, panel) in enumerate(panels):
        for row, (metric, label) in enumerate(ACTIVE_METRICS.items()):
            ax = axes[row, col]
            # strategies keep the study's order; a swept value is drawn in increasing order
            for value, group in panel.groupby(curve_by, sort=curve_by != "strategy"):
                _band(ax, group, "annotations", metric, curve_label(value))
            ax.set_title(panel_title(*fixed), fontsize=9)
            ax.set_xlabel("annotations")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    return fig


def plot_active_study(results, out: Path) -> list[Path]:
    """``efficiency.png`` always; ``batch_sizes.png`` and ``pairings.png`` when those are swept."""
    plt = _pyplot()
    written: list[Path] = []
    fig = _efficiency_figure(
        plt,
        results,
        ["pairing", "batch_size"],
        "strategy",
        str,
        lambda pairing, batch: f"{pairing}, batch {batch}",
        (4.2, 3.4),
    )
    fig.suptitle(f"Annotation efficiency (mean ± sd over {results['seed'].nunique()} seeds)")
    _save(fig, out / "efficiency.png", 110, written)
    for sweep, name in (("batch_size", "batch_sizes.png"), ("pairing", "pairings.png")):
        if results[sweep].nunique() >= 2:
            other = "pairing" if sweep == "batch_size" else "batch_size"
            fig = _efficiency_figure(
                plt,
                results,
                ["strategy", other],
                sweep,
                lambda value, s=sweep: f"{s} {value}",
                lambda strategy, fixed, o=other: f"{strategy} ({o} {fixed})",
                (3.6, 3.2),
            )
            _save(fig, out / name, 100, written)
    return written
