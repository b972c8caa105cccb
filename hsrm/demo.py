"""`hsrm demo`: the first hour in one command, on the embedded default model and real data.

    hsrm demo --output demo_report                          # SmolLM2-135M-Instruct on 2 CPU cores
    hsrm demo --output demo_report --data-dir ../shared/data  # the real data, from any folder laid out like it
    hsrm demo --output demo_report --quick                  # a tiny random model, about a minute (used by the tests)

Data, first found: --data-dir; ../shared/data beside a checkout; the Hugging Face Hub (HH-RLHF helpful
splits, HelpSteer2, RewardBench, through `datasets`, at the sizes the demo uses); a generated toy set,
said loudly. The report's first line says which.

Steps, as the HelpSteer2-Preference paper's best recipe (regression → BT → ExPO), at demo size:
  1. helpfulness regression on HelpSteer ratings;
  2. Regular BT initialised from it, on HH-RLHF helpful-base pairs; held-out accuracy on helpful-online;
  3. `hsrm evaluate` on the RewardBench sample;
  4. ExPO between the regression (weak) and BT (strong) models, factor searched on validation pairs;
  5. Best-of-N: score four answers to one prompt;
  6. a small embedding-path study (BT-MLP vs classifiers on synthetic embeddings).
Everything lands in a report folder: README.md (tables + the command of each step) and PNG plots.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MissingFileError

logger = logging.getLogger("hsrm.demo")

# ../shared/data beside a checkout (CI lays machines out so); an installed package has no checkout around it.
CHECKOUT = Path(__file__).resolve().parents[1]
SHARED = CHECKOUT.parent / "shared" / "data" if (CHECKOUT / "pyproject.toml").is_file() else None
# The embedding study the demo runs: package data (pyproject.toml), so an installed wheel runs its own demo.
STUDY_CONFIG = "recipes/studies/tiny.yaml"
BEST_OF_N_PROMPT = [{"role": "user", "content": "How do I make a simple loaf of bread at home?"}]
BEST_OF_N_RESPONSES = [
    "Mix 500 g flour, 350 ml warm water, 7 g yeast and 10 g salt; knead for 10 minutes, let it rise for an hour, "
    "shape it, let it rise again, then bake at 220 °C for about 30 minutes.",
    "Just buy one.",
    "Bread is a food.",
    "Mix flour and water, then bake it.",
]


@dataclass
class Profile:
    """Sizes of one demo run. ``full`` fits about 10 minutes of SmolLM2 on 2 CPU cores."""

    regression_steps: int
    regression_rows: int
    bt_steps: int
    bt_pairs: int
    heldout_pairs: int
    rewardbench_per_subset: int
    rewardbench_max_length: int
    expo_pairs: int
    max_length: int
    learning_rate: float
    train_top_layers: int | None  # None = every layer


# Measured on an idle 2-core machine (bench/cpu_step_cost.py, docs/speed.md): a full fine-tuning step of
# SmolLM2 on 8 × 256 tokens takes about 10.6 s, training only the top 2 of 30 layers 3.3 s; scoring runs
# at about 670 tokens/s. Top-2-layer BT on 240–320 HH pairs at 128 tokens reaches about 0.60 held-out
# accuracy on 200 helpful-online pairs (95 % interval about 0.53–0.67); the whole demo took 399 s plus setup.
FULL = Profile(
    regression_steps=10,
    regression_rows=80,
    bt_steps=64,
    bt_pairs=256,
    heldout_pairs=200,
    rewardbench_per_subset=6,
    rewardbench_max_length=256,
    expo_pairs=32,
    max_length=128,
    learning_rate=2e-4,
    train_top_layers=2,
)
QUICK = Profile(
    regression_steps=8,
    regression_rows=64,
    bt_steps=12,
    bt_pairs=64,
    heldout_pairs=48,
    rewardbench_per_subset=5,
    rewardbench_max_length=256,
    expo_pairs=24,
    max_length=128,
    learning_rate=2e-3,
    train_top_layers=None,
)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: whether an accuracy is clearly above chance."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


# The demo's data, by role: where it lies in a data folder laid out like ../shared/data, and the Hub
# dataset it comes from otherwise (repo, data_dir, split). HH-RLHF's helpful splits are full transcripts.
DATA_FILES = {
    "train_pairs": ("hh_rlhf/helpful-base.test.jsonl.gz", ("Anthropic/hh-rlhf", "helpful-base", "test")),
    "heldout_pairs": ("hh_rlhf/helpful-online.test.jsonl.gz", ("Anthropic/hh-rlhf", "helpful-online", "test")),
    "validation_pairs": (
        "hh_rlhf/helpful-rejection-sampled.test.jsonl.gz",
        ("Anthropic/hh-rlhf", "helpful-rejection-sampled", "test"),
    ),
    "ratings": ("helpsteer1/nvidia_HelpSteer_sample.jsonl", ("nvidia/HelpSteer2", None, "train")),
    "rewardbench": (
        "rewardbench_sample/reward_bench_filtered_sample.jsonl",
        ("allenai/reward-bench", None, "filtered"),
    ),
}
REAL_NOTE = "HelpSteer ratings, HH-RLHF helpful-base / -rejection-sampled / -online, a RewardBench sample"


def rows_needed(profile: Profile) -> dict[str, int]:
    """Rows the demo reads per role (RewardBench: per subset), so a Hub download takes no more."""
    return {
        "train_pairs": profile.bt_pairs,
        "heldout_pairs": profile.heldout_pairs,
        "validation_pairs": profile.expo_pairs,
        "ratings": profile.regression_rows,
        "rewardbench": profile.rewardbench_per_subset,
    }


def data_from_folder(folder: Path) -> dict[str, str]:
    missing = [relative for relative, _ in DATA_FILES.values() if not (folder / relative).is_file()]
    if missing:
        raise MissingFileError(f"--data-dir {folder} lacks {', '.join(missing)} (the layout of ../shared/data)")
    return {role: str(folder / relative) for role, (relative, _) in DATA_FILES.items()}


def data_from_hub(workdir: Path, needed: dict[str, int]) -> dict[str, str]:
    """The demo's rows from the Hub through ``datasets`` (downloaded once into its cache), written
    into ``workdir/data`` at the sizes the demo uses."""
    import datasets

    from .files import atomic_write_jsonl

    paths = {}
    for role, (relative, (repo, data_dir, split)) in DATA_FILES.items():
        rows = datasets.load_dataset(repo, data_dir=data_dir, split=split).to_list()
        if role == "rewardbench":  # the first N rows of every subset, so that every section is reached
            from .evaluation import first_per_subset

            rows = [rows[i] for i in first_per_subset([r["subset"] for r in rows], needed[role])]
        else:
            rows = rows[: needed[role] + 64]  # a margin for rows the loaders skip (unparseable transcripts)
        paths[role] = str(atomic_write_jsonl(workdir / "data" / Path(relative).name.replace(".gz", ""), rows))
    return paths


def generated_data(workdir: Path) -> dict[str, str]:
    """A toy set made here, for when no real data can be had: the numbers then mean nothing."""
    import random

    rng = random.Random(0)
    good = [
        "Here is a clear, step-by-step answer with the details you asked for.",
        "Thank you for asking: the answer is below.",
    ]
    bad = ["no", "I don't know, figure it out."]
    paths = {}
    for name, n in (("train_pairs", 200), ("heldout_pairs", 100), ("validation_pairs", 60), ("rewardbench", 60)):
        path = workdir / f"generated_{name}.jsonl"
        with open(path, "w") as handle:
            for i in range(n):
                row = {"prompt": f"Question {i}?", "chosen": rng.choice(good), "rejected": rng.choice(bad)}
                if name == "rewardbench":
                    row.update(subset="alpacaeval-easy", id=str(i))
                handle.write(json.dumps(row) + "\n")
        paths[name] = str(path)
    path = workdir / "generated_ratings.jsonl"
    with open(path, "w") as handle:
        for i in range(200):
            score = rng.randint(0, 4)
            handle.write(
                json.dumps(
                    {
                        "prompt": f"Question {i}?",
                        "response": good[0] if score > 2 else bad[0],
                        "helpfulness": score,
                        "correctness": score,
                        "coherence": 4,
                        "complexity": 1,
                        "verbosity": 2,
                    }
                )
                + "\n"
            )
    paths["ratings"] = str(path)
    return paths


def data_sources(workdir: Path, data_dir: str | None = None, profile: Profile | None = None) -> dict[str, str]:
    """The demo's data, first found: ``data_dir`` (laid out like ../shared/data); ../shared/data beside
    a checkout; the Hub, when it answers; a generated toy set, said loudly. ``note`` says which."""
    from .default_model import _hub_reachable

    if data_dir is not None:
        return {**data_from_folder(Path(data_dir)), "note": f"real data from {data_dir} ({REAL_NOTE})"}
    if SHARED is not None and all((SHARED / relative).is_file() for relative, _ in DATA_FILES.values()):
        return {**data_from_folder(SHARED), "note": f"real data from {SHARED} beside this checkout ({REAL_NOTE})"}
    if _hub_reachable():
        logger.info("no local data: downloading the demo's rows from the Hugging Face Hub (cached by datasets)")
        return {
            **data_from_hub(workdir, rows_needed(profile or FULL)),
            "note": f"real data from the Hugging Face Hub ({REAL_NOTE})",
        }
    logger.warning(
        "no --data-dir, no ../shared/data beside this checkout and no Hugging Face Hub: the demo falls back to a "
        "GENERATED toy data set"
    )
    return {
        **generated_data(workdir),
        "note": "GENERATED toy data (no --data-dir, no ../shared/data, no Hub); the numbers "
        "mean nothing: pass --data-dir",
        "heldout_name": "generated",
        "rewardbench_name": "generated RewardBench-style",
    }


def train_step(name: str, out: Path, overrides: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from .config import load_recipe
    from .train import run_training

    settings = {
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 5,
        "warmup_steps": 5,
        "on_bad_rows": "skip",
        "lr_scheduler_type": "constant_with_warmup",
        "output_dir": str(out / name),
        **overrides,
    }
    command = "hsrm train " + " ".join(f"--{k} {v}" for k, v in settings.items() if not isinstance(v, (list, dict)))
    return run_training(load_recipe(None, settings)), command


def plot_report(
    out: Path,
    curves: dict[str, list[tuple[int, float]]],
    chosen: list[float],
    rejected: list[float],
    expo_table: list[dict],
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.set_title("Training curves"), ax.legend()
    fig.tight_layout(), fig.savefig(out / "training_curves.png", dpi=110), plt.close(fig)
    files.append("training_curves.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(chosen, bins=30, alpha=0.6, label="chosen"), ax.hist(rejected, bins=30, alpha=0.6, label="rejected")
    (
        ax.set_xlabel("reward"),
        ax.set_ylabel("responses"),
        ax.set_title("Held-out rewards: chosen vs rejected"),
        ax.legend(),
    )
    fig.tight_layout(), fig.savefig(out / "reward_distributions.png", dpi=110), plt.close(fig)
    files.append("reward_distributions.png")

    if expo_table:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        rows = sorted(expo_table, key=lambda r: r["alpha"])
        ax.plot([r["alpha"] for r in rows], [r["score"] for r in rows], marker="o")
        (
            ax.set_xlabel("extrapolation factor α (1 = the BT model)"),
            ax.set_ylabel(rows[0]["metric"]),
            ax.set_title("ExPO factor search"),
        )
        fig.tight_layout(), fig.savefig(out / "expo_search.png", dpi=110), plt.close(fig)
        files.append("expo_search.png")
    return files


def run_demo(
    out: Path, quick: bool = False, overwrite: bool = False, print_summary: bool = True, data_dir: str | None = None
) -> dict[str, Any]:
    import shutil

    from .evaluation import evaluate_model, format_report
    from .expo import extrapolate_folder, search_factor, write_search_table
    from .files import check_output
    from .metrics import best_of_n
    from .scoring import RewardScorer

    check_output(out, inputs=[data_dir], overwrite=overwrite)
    if overwrite and out.exists():  # the report folder is rebuilt whole: nothing stale survives
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    started, timings = time.time(), {}
    profile = QUICK if quick else FULL
    data = data_sources(out, data_dir, profile)
    if quick:
        from .tiny import build_tiny_llama

        model = str(build_tiny_llama(out / "tiny-backbone"))
    else:
        from .default_model import default_model_path

        model = default_model_path()
    common = {
        "model_name_or_path": model,
        "max_length": profile.max_length,
        "learning_rate": profile.learning_rate,
        "per_device_eval_batch_size": 8,
    }
    if profile.train_top_layers:
        common["train_top_layers"] = profile.train_top_layers

    # 1. helpfulness-only SteerLM regression (the weak model of ExPO, and the BT initialisation)
    t = time.time()
    regression, regression_cmd = train_step(
        "regression",
        out,
        {
            **common,
            "objective": "regression",
            "train_data": data["ratings"],
            "max_train_samples": profile.regression_rows,
            "max_steps": profile.regression_steps,
            "per_device_train_batch_size": 8,
        },
    )
    timings["1. regression"] = time.time() - t
    # 2. Regular BT initialised from the regression model, evaluated on held-out pairs
    t = time.time()
    bt, bt_cmd = train_step(
        "bt",
        out,
        {
            **common,
            "objective": "bt",
            "init_from": regression["output_dir"],
            "train_data": data["train_pairs"],
            "eval_data": data["heldout_pairs"],
            "eval_split": "train",
            "max_train_samples": profile.bt_pairs,
            "max_eval_samples": profile.heldout_pairs,
            "max_steps": profile.bt_steps,
            "per_device_train_batch_size": 4,
        },
    )
    timings["2. bt (+ held-out eval)"] = time.time() - t
    heldout_accuracy = bt["eval_metrics"]["eval_accuracy"]
    chosen, rejected = bt["eval_rewards"][:, 0].tolist(), bt["eval_rewards"][:, 1].tolist()
    heldout_n = len(chosen)
    heldout_low, heldout_high = wilson_interval(sum(c > r for c, r in zip(chosen, rejected)), heldout_n)
    # 3. RewardBench sample
    t = time.time()
    rewardbench = evaluate_model(
        bt["output_dir"],
        data["rewardbench"],
        per_subset=profile.rewardbench_per_subset,
        max_length=profile.rewardbench_max_length,
        on_bad_rows="skip",
    )
    (out / "rewardbench.json").write_text(json.dumps(rewardbench, indent=2, default=str))
    timings["3. rewardbench"] = time.time() - t
    # 4. ExPO: weak = regression, strong = BT-from-regression (paper section 4), coarse grid at demo size
    t = time.time()
    search = search_factor(
        regression["output_dir"],
        bt["output_dir"],
        data["validation_pairs"],
        coarse=(1.2, 2.0, 0.4),
        fine_step=0.1,
        fine_radius=0.0,
        limit=profile.expo_pairs,
        max_length=profile.max_length,
        on_bad_rows="skip",
    )
    alpha = search["best"]["alpha"]
    expo_dir = extrapolate_folder(
        regression["output_dir"], bt["output_dir"], alpha, out / "expo", overwrite=True, progress=False
    )
    write_search_table(expo_dir, search)
    expo_heldout_accuracy = evaluate_model(
        str(expo_dir),
        data["heldout_pairs"],
        limit=profile.heldout_pairs,
        max_length=profile.max_length,
        on_bad_rows="skip",
    )["metrics"]["accuracy"]
    timings["4. expo (search + held-out eval)"] = time.time() - t
    # 5. Best-of-N
    scorer = RewardScorer(bt["output_dir"], max_length=profile.max_length)
    rewards = scorer([BEST_OF_N_PROMPT] * len(BEST_OF_N_RESPONSES), BEST_OF_N_RESPONSES)
    best = best_of_n(rewards)
    # 6. embedding-path study (synthetic embeddings with a known golden reward)
    t = time.time()
    from importlib.resources import as_file, files

    from .embedding.study import load_study, run_study

    study_overrides: dict[str, Any] = {"output": str(out / "study")}
    if quick:  # two setups instead of the tiny study's 27
        study_overrides.update(grids=[{"methods": ["bt-mlp", "clf-lgb"]}])
    with as_file(files("hsrm") / STUDY_CONFIG) as study_config:
        study_cfg = load_study(study_config, study_overrides)
        study_command = f"hsrm study {study_config} --output {out / 'study'}"
    study_table = run_study(study_cfg, progress=True)
    timings["6. embedding study"] = time.time() - t

    curves = {
        name: [(e["step"], e["loss"]) for e in summary["log_history"] if "loss" in e]
        for name, summary in (("regression (MSE)", regression), ("BT from regression", bt))
    }
    plots = plot_report(out, curves, chosen, rejected, search["table"])
    study_plots = sorted(p.name for p in (out / "study").glob("*.png"))
    wall = time.time() - started
    report = {
        "data": data["note"],
        "backbone": model,
        "heldout_accuracy": heldout_accuracy,
        "heldout_accuracy_95ci": [round(heldout_low, 3), round(heldout_high, 3)],
        "heldout_n": heldout_n,
        "heldout_pairs": bt["data"].get("eval", {}).get("load"),
        "expo_alpha": alpha,
        "expo_heldout_accuracy": expo_heldout_accuracy,
        "rewardbench": rewardbench.get("rewardbench"),
        "best_of_n": {"rewards": rewards, "best_index": best},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "wall_time_s": round(wall, 1),
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2, default=str))

    reference = next(row for row in search["table"] if row["stage"] == "reference")
    expo_note = (
        f"; no factor beat the BT model itself on validation (α = 1: {reference['score']:.3f}), so ExPO does not "
        f"help at this size"
        if reference["score"] > search["best"]["score"]
        else ""
    )
    # The generated fallback's rows are stand-ins: the report must not name the real sets they stand in for.
    heldout_name = data.get("heldout_name", "HH-RLHF helpful-online")
    rewardbench_name = data.get("rewardbench_name", "RewardBench")
    lines = [
        f"# hsrm demo report: {data['note']}",
        "",
        f"- backbone: `{model}`",
        f"- wall time: {wall:.0f} s",
        "",
        "## Results",
        "",
        "| step | result |",
        "|---|---|",
        f"| 1. helpfulness regression, {regression['global_step']} steps | train MSE {regression['train_loss']:.3f} |",
        f"| 2. Regular BT from the regression model, {bt['global_step']} steps | held-out pairwise accuracy "
        f"**{heldout_accuracy:.3f}** "
        f"(95 % interval {heldout_low:.3f}–{heldout_high:.3f}) on {heldout_n} {heldout_name} pairs |",
        f"| 3. {rewardbench_name} sample ({rewardbench['n']} rows, {profile.rewardbench_per_subset} per subset) | "
        f"overall {rewardbench['primary_metric']['value']:.3f} (sections present only) |",
        f"| 4. ExPO, factor searched on {profile.expo_pairs} validation pairs | α = {alpha}; held-out accuracy "
        f"{expo_heldout_accuracy:.3f} (BT alone: {heldout_accuracy:.3f}){expo_note} |",
        f'| 5. Best-of-{len(rewards)} | picks answer {best}: "{BEST_OF_N_RESPONSES[best][:60]}…" |',
        "",
        "## Best-of-N rewards",
        "",
        "| # | reward | response |",
        "|---|---|---|",
        *[
            f"| {i}{' (best)' if i == best else ''} | {r:.3f} | {BEST_OF_N_RESPONSES[i][:70]} |"
            for i, r in enumerate(rewards)
        ],
        "",
        "## RewardBench sample",
        "",
        "```",
        format_report(rewardbench),
        "```",
        "",
        "## ExPO factor search",
        "",
        "| α | stage | " + search["metric"] + " |",
        "|---|---|---|",
        *[f"| {r['alpha']} | {r['stage']} | {r['score']:.3f} |" for r in search["table"]],
        "",
        "## Embedding-path study (synthetic, known golden reward)",
        "",
        (out / "study" / "summary.md").read_text() if (out / "study" / "summary.md").exists() else str(study_table),
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        *[f"![{p}](study/{p})" for p in study_plots],
        "",
        "## Timings (s)",
        "",
        *[f"- {k}: {v:.0f}" for k, v in timings.items()],
        "",
        "## Reproduce each step",
        "",
        "```",
        regression_cmd,
        bt_cmd,
        f"hsrm evaluate --model {bt['output_dir']} --data {data['rewardbench']} --per-subset "
        f"{profile.rewardbench_per_subset} "
        f"--max-length {profile.rewardbench_max_length}",
        f"hsrm expo --weak {regression['output_dir']} --strong {bt['output_dir']} --search --data "
        f"{data['validation_pairs']} "
        f"--limit {profile.expo_pairs} --coarse 1.2,2.0,0.4 --fine-radius 0 --max-length {profile.max_length} "
        f"--on-bad-rows skip --output {expo_dir}",
        f"hsrm evaluate --model {expo_dir} --data {data['heldout_pairs']} --limit {profile.heldout_pairs} "
        f"--max-length {profile.max_length} --on-bad-rows skip",
        study_command,
        f"hsrm demo --output {out}" + (" --quick" if quick else "") + (f" --data-dir {data_dir}" if data_dir else ""),
        "```",
        "",
        "## Next steps with the model it trained",
        "",
        f"The BT reward model is in `{bt['output_dir']}` (a plain AutoModelForSequenceClassification folder). Try:",
        "",
        "```",
        f"hsrm evaluate --model {bt['output_dir']} --data allenai/reward-bench        # all of RewardBench (from the "
        "Hub)",
        f"hsrm score --model {bt['output_dir']} --data candidates.jsonl --output scored.jsonl   # rewards + Best-of-N",
        f"hsrm serve --model {bt['output_dir']} --port 8000                          # HTTP rewards for an RL trainer",
        f"hsrm push --model {bt['output_dir']} --repo-id you/demo-reward-model --dry-run  # model card, no upload",
        "hsrm train recipes/smollm_bt_hh.yaml                  # a full fine-tune of the same backbone (about an "
        "hour on 2 cores)",
        "```",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    # The console shows the summary down to the end of the Best-of-N table; the rest is in the file.
    summary_end = lines.index("## RewardBench sample")
    if print_summary:
        print("\n".join(lines[:summary_end]).rstrip())
        next_steps = lines.index("## Next steps with the model it trained")
        print("\n" + "\n".join(lines[next_steps + 2 :]).rstrip())
        print(f"\nreport: {out / 'README.md'}")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from .options import DemoOptions, parse_options

    opts = parse_options(DemoOptions, argv, prog="hsrm demo", description=DemoOptions.__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = run_demo(
        Path(opts.output),
        quick=opts.quick,
        overwrite=opts.overwrite,
        print_summary=not opts.json,
        data_dir=opts.data_dir,
    )
    if opts.json:
        print(json.dumps(report, indent=2, default=str))
    return report
