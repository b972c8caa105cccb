"""ExPO: extrapolate a reward model's weights past a stronger checkpoint, with a factor search.

    hsrm expo --weak runs/regression-helpfulness --strong runs/scaled-bt-from-regression --alpha 1.52 \\
              --output runs/scaled-bt-expo
    hsrm expo --weak runs/regression-helpfulness --strong runs/scaled-bt-from-regression --search \\
              --data val_rewardbench.jsonl --output runs/scaled-bt-expo

Model extrapolation (Zheng et al., 2024), as HelpSteer2-Preference §4 uses it for reward models:

    θ = θ_weak + α · (θ_strong − θ_weak)

applied to every floating-point tensor (α = 0 gives the weak model, α = 1 the strong one, α > 1
moves further along the direction training took). The paper's weak model is the helpfulness-only
SteerLM Regression RM and its strong model the Scaled BT RM initialised from it; the factor was
searched from 1.1 to 2.0 in steps of 0.1, then by 0.01 around the best (1.6 → 1.51…1.69), and
1.52 was kept (RewardBench 93.7 → 94.1).

The arithmetic is done in a wider type than the weights (fp32 for 16-bit weights, fp64 for fp32
weights) and rounded once into the strong model's dtype, so α = 0 and α = 1 give back the two
models bit for bit. Tensors are streamed one at a time from the safetensors files and written one
shard at a time, so peak memory stays near one shard, far below one model.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, MissingFileError
from .files import atomic_write, atomic_write_json, check_output, staged_folder
from .record import read_record, reward_statistics, write_record

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CHUNK_ELEMENTS = 1 << 24  # 16M elements per arithmetic chunk: bounds the wide-precision temporaries
PAPER_COARSE = (1.1, 2.0, 0.1)  # start, stop, step (§4)
PAPER_FINE_STEP, PAPER_FINE_RADIUS = 0.01, 0.09  # 1.6 → 1.51 … 1.69 (§4)
SEARCH_TABLE = "expo_search"  # .json and .csv written inside the chosen model's folder


# ------------------------------------------------------------------------------ the formula
def extrapolation_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The precision θ_weak + α(θ_strong − θ_weak) is computed in: fp64 when any input is fp32/fp64 (so
    α ∈ {0, 1} round-trips exactly), else fp32. (The dtype a model *runs* in is trainers.base.compute_dtype.)"""
    return torch.float64 if any(d in (torch.float32, torch.float64) for d in dtypes) else torch.float32


def extrapolate_tensor(weak: torch.Tensor, strong: torch.Tensor, alpha: float) -> torch.Tensor:
    """θ_weak + α(θ_strong − θ_weak), computed wide, returned in ``strong``'s dtype.

    Non-floating tensors (integer buffers) are taken from the strong model unchanged.
    """
    if weak.shape != strong.shape:
        raise InputError(f"shapes differ: weak {tuple(weak.shape)} vs strong {tuple(strong.shape)}")
    if not strong.is_floating_point():
        return strong.clone()
    wide = extrapolation_dtype(weak.dtype, strong.dtype)
    result = torch.empty_like(strong, memory_format=torch.contiguous_format)
    flat_out, flat_weak, flat_strong = result.view(-1), weak.reshape(-1), strong.reshape(-1)
    for start in range(0, flat_out.numel(), CHUNK_ELEMENTS):
        part = slice(start, start + CHUNK_ELEMENTS)
        w = flat_weak[part].to(wide)
        s = flat_strong[part].to(wide)
        flat_out[part] = (w + alpha * (s - w)).to(strong.dtype)
    return result


def factor_grid(start: float, stop: float, step: float) -> list[float]:
    """Evenly spaced factors from ``start`` to ``stop`` inclusive, free of float drift.

    >>> factor_grid(1.1, 2.0, 0.1)
    [1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]
    """
    if step <= 0 or stop < start:
        raise InputError(f"bad factor grid start={start} stop={stop} step={step}: need step > 0 and stop ≥ start")
    count = int(round((stop - start) / step))
    return [round(start + k * step, 6) for k in range(count + 1)]


def fine_grid(center: float, step: float = PAPER_FINE_STEP, radius: float = PAPER_FINE_RADIUS) -> list[float]:
    """Factors ``center ± radius`` by ``step`` (paper: 1.6 → 1.51 … 1.69).

    >>> fine_grid(1.6)[:3], fine_grid(1.6)[-1], len(fine_grid(1.6))
    ([1.51, 1.52, 1.53], 1.69, 19)
    """
    count = int(round(radius / step))
    return [round(center + k * step, 6) for k in range(-count, count + 1)]


def best_factor(table: Sequence[dict]) -> dict:
    """The row with the highest score; on a tie the smallest factor (closest to the trained model)."""
    scored = [row for row in table if row.get("stage") != "reference"]
    if not scored:
        raise InputError("no factor was scored")
    return max(scored, key=lambda row: (row["score"], -row["alpha"]))


# ------------------------------------------------------------------------------ reading folders
def weight_map(folder: str | os.PathLike) -> dict[str, str]:
    """tensor name → safetensors file name (relative to ``folder``), single-file or sharded."""
    from safetensors import safe_open

    root = Path(folder)
    if not (root / "config.json").is_file():
        raise MissingFileError(f"{root} has no config.json: not a Hugging Face model folder")
    if (root / INDEX_FILE).is_file():
        index = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
        mapping = dict(index.get("weight_map") or {})
        if not mapping:
            raise InputError(f"{root / INDEX_FILE} has an empty weight_map")
        missing = sorted({f for f in mapping.values() if not (root / f).is_file()})
        if missing:
            raise MissingFileError(f"{root}: shard files listed in {INDEX_FILE} are missing: {missing[:5]}")
        return mapping
    if (root / SINGLE_FILE).is_file():
        with safe_open(str(root / SINGLE_FILE), framework="pt") as handle:
            return {key: SINGLE_FILE for key in handle.keys()}
    if any(p.suffix in (".bin", ".pt", ".pth") for p in root.iterdir()):
        raise InputError(
            f"{root} holds pickle weights only; ExPO reads safetensors (re-save with safe_serialization=True)"
        )
    raise MissingFileError(f"{root} has neither {SINGLE_FILE} nor {INDEX_FILE}")


class ShardReader:
    """Reads single tensors from a folder's safetensors files, keeping each file open once."""

    def __init__(self, folder: str | os.PathLike, mapping: dict[str, str] | None = None):
        self.root = Path(folder)
        self.mapping = mapping or weight_map(folder)
        self._handles: dict[str, Any] = {}

    def _handle(self, file: str):
        from safetensors import safe_open

        if file not in self._handles:
            self._handles[file] = safe_open(str(self.root / file), framework="pt")
        return self._handles[file]

    def shape(self, key: str) -> list[int]:
        return list(self._handle(self.mapping[key]).get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        return self._handle(self.mapping[key]).get_tensor(key)


def _config(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


def check_compatible(weak: str | os.PathLike, strong: str | os.PathLike) -> tuple[ShardReader, ShardReader]:
    """Readers for both folders, after checking they are the same architecture with the same
    tensor names and shapes; otherwise a ValueError that names what differs."""
    weak_config, strong_config = _config(weak), _config(strong)
    for key in ("model_type", "architectures"):
        if weak_config.get(key) != strong_config.get(key):
            raise InputError(
                f"ExPO needs two checkpoints of one architecture: {key} is {weak_config.get(key)!r} in {weak} "
                f"but {strong_config.get(key)!r} in {strong}"
            )
    weak_reader, strong_reader = ShardReader(weak), ShardReader(strong)
    only_weak = sorted(set(weak_reader.mapping) - set(strong_reader.mapping))
    only_strong = sorted(set(strong_reader.mapping) - set(weak_reader.mapping))
    if only_weak or only_strong:
        raise InputError(
            f"the two models hold different tensors: only in weak {only_weak[:5]}"
            f"{' …' if len(only_weak) > 5 else ''}, only in strong {only_strong[:5]}"
            f"{' …' if len(only_strong) > 5 else ''}; ExPO needs the same architecture and head size"
        )
    mismatched = [
        (k, weak_reader.shape(k), strong_reader.shape(k))
        for k in strong_reader.mapping
        if weak_reader.shape(k) != strong_reader.shape(k)
    ]
    if mismatched:
        listed = "; ".join(f"{k}: weak {w} vs strong {s}" for k, w, s in mismatched[:5])
        raise InputError(
            f"{len(mismatched)} tensors differ in shape ({listed}); ExPO needs models of the same size "
            "(same vocabulary, hidden size and number of reward outputs)"
        )
    return weak_reader, strong_reader


# ------------------------------------------------------------------------------ writing
def _copy_side_files(strong: Path, staging: Path) -> None:
    """Config, tokenizer, chat template, generation config … from the strong model (its tokenizer
    is the one the extrapolated weights go with). Weights, sub-folders and old results are not copied."""
    skip_suffixes = (".safetensors", ".bin", ".pt", ".pth")
    skip_names = {INDEX_FILE, "README.md", f"{SEARCH_TABLE}.json", f"{SEARCH_TABLE}.csv"}
    for path in strong.iterdir():
        if (
            path.is_file()
            and not path.name.startswith(".")
            and path.suffix not in skip_suffixes
            and path.name not in skip_names
        ):
            shutil.copy2(path, staging / path.name)


def _update_record(folder: Path, expo_meta: dict[str, Any], reward_stats: dict[str, Any] | None) -> None:
    """Record the extrapolation in the folder's model record. The strong model's reward statistics
    and validation metrics describe other weights, so they are replaced or dropped."""
    record = replace(
        read_record(folder), reward_mean=None, reward_std=None, reward_stats_on=None, eval_metrics={}, expo=expo_meta
    )
    if reward_stats:
        record = replace(record, **reward_stats)
    write_record(folder, record)


def extrapolate_folder(
    weak: str | os.PathLike,
    strong: str | os.PathLike,
    alpha: float,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    extra_meta: dict[str, Any] | None = None,
    reward_stats: dict[str, float] | None = None,
    progress: bool = True,
) -> Path:
    """Write θ_weak + α(θ_strong − θ_weak) as a model folder at ``out``, sharded like the strong model.

    The folder is assembled beside ``out`` and renamed into place at the end, so an interrupted
    run never leaves a half-written model behind.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    weak_dir, strong_dir, target = Path(weak), Path(strong), Path(out)
    check_output(target, inputs=[weak_dir, strong_dir], overwrite=overwrite)
    weak_reader, strong_reader = check_compatible(weak_dir, strong_dir)
    with staged_folder(target) as staging:  # safetensors' 0600 files get the umask's modes there
        _copy_side_files(strong_dir, staging)
        files: dict[str, list[str]] = {}
        for key, file in strong_reader.mapping.items():
            files.setdefault(file, []).append(key)
        with tqdm(
            total=len(strong_reader.mapping), desc=f"ExPO α={alpha:g}", unit="tensor", disable=not progress
        ) as bar:
            for file, keys in files.items():
                shard = {}
                for key in keys:
                    shard[key] = extrapolate_tensor(weak_reader.tensor(key), strong_reader.tensor(key), alpha)
                    if shard[key].is_floating_point() and not torch.isfinite(shard[key]).all():
                        # an α that overflows the dtype gives a model that scores NaN; nothing is moved in
                        bad = int((~torch.isfinite(shard[key])).sum())
                        raise InputError(
                            f"α = {alpha:g} gives {bad} non-finite weights in {key}: the model would score NaN; "
                            "choose a smaller --alpha"
                        )
                    bar.update(1)
                save_file(shard, str(staging / file), metadata={"format": "pt"})
                del shard  # one shard in memory at a time
        if (strong_dir / INDEX_FILE).is_file():
            shutil.copy2(strong_dir / INDEX_FILE, staging / INDEX_FILE)
        meta = {
            "weak": str(weak_dir),
            "strong": str(strong_dir),
            "alpha": alpha,
            "formula": "theta_weak + alpha * (theta_strong - theta_weak)",
            **(extra_meta or {}),
        }
        _update_record(staging, meta, reward_stats)
    logger.info("wrote ExPO model (α=%g) to %s", alpha, target)
    return target


@torch.no_grad()
def apply_extrapolation_(model, weak_reader: ShardReader, strong_reader: ShardReader, alpha: float) -> None:
    """Overwrite a loaded model's weights with the extrapolation, tensor by tensor from disk — what
    the factor search uses so that one model is in memory, not three. Values are rounded to the
    strong checkpoint's dtype first, so they equal what :func:`extrapolate_folder` writes."""
    state = model.state_dict()
    for key in strong_reader.mapping:
        if key not in state:
            raise InputError(f"tensor {key} of the checkpoint is not in the loaded model; cannot search in memory")
        value = extrapolate_tensor(weak_reader.tensor(key), strong_reader.tensor(key), alpha)
        param = state[key]
        if param.shape == value.shape:
            param.copy_(value)
        elif param.dim() == value.dim() and param.shape[1:] == value.shape[1:] and param.shape[0] > value.shape[0]:
            # Embeddings grown by a pad token added at load time: the added rows are never scored.
            param[: value.shape[0]].copy_(value)
        else:
            raise InputError(f"{key}: loaded shape {tuple(param.shape)} vs checkpoint {tuple(value.shape)}")


# ------------------------------------------------------------------------------ search
def search_factor(
    weak: str,
    strong: str,
    data: str,
    *,
    coarse: Sequence[float] = PAPER_COARSE,
    fine_step: float = PAPER_FINE_STEP,
    fine_radius: float = PAPER_FINE_RADIUS,
    data_format: str = "auto",
    split: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    on_bad_rows: str = "raise",
    **scorer_options: Any,
) -> dict[str, Any]:
    """Score factors on ``data`` with ``hsrm evaluate``'s metric: the coarse grid, then ``fine_step``
    steps within ``fine_radius`` of the coarse best. α = 1 (the strong model) is scored as a reference.
    Rewards come from the engine exactly as ``hsrm evaluate`` computes them, ``max_length`` included
    (``None``: RewardBench's 2048 on RewardBench data, else the strong model's recorded length);
    ``scorer_options`` are :class:`hsrm.scoring.RewardScorer`'s (``batch_size``, ``dtype``, ``layout`` …).

    Returns ``{"best": row, "table": [rows], "metric": name, "results": {alpha: evaluate result}}``.
    """
    from tqdm.auto import tqdm

    from .evaluation import evaluate_prepared, prepare_evaluation, primary_metric

    weak_reader, strong_reader = check_compatible(weak, strong)
    scorer, eval_set = prepare_evaluation(
        strong,
        data,
        data_format=data_format,
        split=split,
        limit=limit,
        on_bad_rows=on_bad_rows,
        progress=False,
        **scorer_options,
    )
    logger.info("ExPO search on %s | %s", eval_set.load_summary, eval_set.truncation)
    table: list[dict[str, Any]] = []
    results: dict[float, dict[str, Any]] = {}

    def run(alphas: Sequence[float], stage: str) -> None:
        for alpha in tqdm(alphas, desc=f"ExPO {stage}", unit="factor", disable=not progress):
            if alpha in results:
                continue
            apply_extrapolation_(scorer.model, weak_reader, strong_reader, alpha)
            result = evaluate_prepared(scorer, eval_set)
            results[alpha] = result
            row = {
                "alpha": alpha,
                "stage": stage,
                "metric": result["primary_metric"]["name"],
                "score": primary_metric(result),
            }
            if "accuracy" in result["metrics"]:
                row.update(accuracy=result["metrics"]["accuracy"], margin=result["metrics"]["margin"])
            table.append(row)
            logger.info("α=%g (%s): %s = %.6f", alpha, stage, row["metric"], row["score"])

    run([1.0], "reference")
    run(factor_grid(*coarse), "coarse")
    coarse_best = best_factor(table)
    run(fine_grid(coarse_best["alpha"], fine_step, fine_radius), "fine")
    best = best_factor(table)
    reference = table[0]
    if reference["score"] > best["score"]:
        logger.warning(
            "no searched factor beats the strong model itself (α=1: %.4f > α=%g: %.4f)",
            reference["score"],
            best["alpha"],
            best["score"],
        )
    return {
        "best": best,
        "coarse_best": coarse_best,
        "table": sorted(table, key=lambda r: r["alpha"]),
        "metric": best["metric"],
        "results": results,
        "data": str(data),
        "eval_summary": eval_set.load_summary,
    }


def write_search_table(folder: str | os.PathLike, search: dict[str, Any]) -> tuple[Path, Path]:
    """``expo_search.json`` (table + choice) and ``expo_search.csv`` (alpha, stage, score …)."""
    root = Path(folder)
    payload = {
        "chosen_alpha": search["best"]["alpha"],
        "metric": search["metric"],
        "data": search["data"],
        "coarse_best_alpha": search["coarse_best"]["alpha"],
        "table": search["table"],
    }

    def write_csv(handle) -> None:
        columns = ["alpha", "stage", "metric", "score", "accuracy", "margin"]
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(search["table"])

    json_path = atomic_write_json(root / f"{SEARCH_TABLE}.json", payload)
    return json_path, atomic_write(root / f"{SEARCH_TABLE}.csv", write_csv)


# ------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> Path:
    from .evaluation import scalar_rewards
    from .options import ExpoOptions, parse_options, print_result

    opts = parse_options(ExpoOptions, argv, prog="hsrm expo", description=ExpoOptions.__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Before the search's minutes: the output may replace neither an input nor, without --overwrite, anything.
    check_output(opts.output, inputs=[opts.weak, opts.strong, opts.data], overwrite=opts.overwrite)
    if not opts.search:
        path = extrapolate_folder(opts.weak, opts.strong, opts.alpha, opts.output, overwrite=opts.overwrite)
        print_result({"output": str(path), "alpha": opts.alpha}, f"wrote {path} (α = {opts.alpha:g})", opts.json)
        return path
    search = search_factor(
        opts.weak,
        opts.strong,
        opts.data,
        coarse=opts.coarse_grid,
        fine_step=opts.fine_step,
        fine_radius=opts.fine_radius,
        data_format=opts.data_format,
        split=opts.split,
        limit=opts.limit,
        on_bad_rows=opts.on_bad_rows,
        **opts.engine_settings(),
    )
    best = search["best"]
    stats = {
        **reward_statistics(scalar_rewards(search["results"][best["alpha"]])),
        "reward_stats_on": f"ExPO validation set {opts.data}",
    }
    path = extrapolate_folder(
        opts.weak,
        opts.strong,
        best["alpha"],
        opts.output,
        overwrite=opts.overwrite,
        reward_stats=stats,
        extra_meta={
            "searched_on": opts.data,
            "metric": best["metric"],
            "score": best["score"],
            "strong_score": next(r["score"] for r in search["table"] if r["stage"] == "reference"),
            "table": f"{SEARCH_TABLE}.json",
        },
    )
    json_path, csv_path = write_search_table(path, search)
    lines = [f"{'alpha':>6}  {'stage':<9} {best['metric']}"]
    lines += [
        f"{row['alpha']:>6.2f}  {row['stage']:<9} {row['score']:.4f}{'  ← chosen' if row is best else ''}"
        for row in search["table"]
    ]
    lines.append(f"wrote {path} (α = {best['alpha']:g}); table: {json_path.name}, {csv_path.name}")
    print_result(
        {"output": str(path), "alpha": best["alpha"], "metric": best["metric"], "table": search["table"]},
        "\n".join(lines),
        opts.json,
    )
    return path
