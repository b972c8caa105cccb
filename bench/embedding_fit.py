"""Time BT-MLP and CLF-LGB at the paper's size: 40,000 annotated pairs of 2,048-d embeddings.

    OMP_NUM_THREADS=2 .venv/bin/python bench/embedding_fit.py [--pairs 40000] [--dim 2048] [--threads 2]
                                                              [--output runs/bench/embedding_fit.json]

Issue 6's target: each fit under 60 s on 2 CPU cores (appendix D.1 reports < 30 CPU-core minutes
per setup). The embeddings are synthetic (hsrm.embedding.synthetic) with a known golden reward,
labelled by a σ(β|Δr|) annotator with β = 1 on in-prompt pairs, so the fits also report the
Best-of-N gain on 50 held-out prompts × 100 responses as a sanity check. Prints one line per
method and a final JSON line.

The peer for CLF-LGB, measured in the same run on the same rows: the textbook call
``lgb.train({"objective": "binary", "metric": "binary_logloss"}, lgb.Dataset(X))`` on the
float32 matrix. The line reports hsrm's speed-up over it and whether the trees are identical
(they must be: hsrm changes how LightGBM builds its Dataset and histograms, not the model).
``--no-peer`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--methods", default="bt-mlp,clf-lgb")
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast for the MLP (opt-in; needs AVX512-BF16/AMX to pay off)"
    )
    parser.add_argument(
        "--lgb-params",
        default="{}",
        help="JSON overrides for LightGBM, e.g. '{\"max_bin\": 63}' (default: none, the paper's defaults)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the plain-LightGBM peer run for clf-lgb")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from hsrm.embedding.annotate import annotate_pairs
    from hsrm.embedding.models import fit_reward_model
    from hsrm.embedding.synthetic import SyntheticWorld
    from hsrm.metrics import evaluate_scores

    torch.set_num_threads(args.threads)
    world = SyntheticWorld(dim=args.dim, latent_dim=32, nuisance_dim=64, embedding_noise=0.5, seed=0)
    start = time.perf_counter()
    # Two responses per training prompt (one in-prompt pair each), as in section 6.3.
    train = world.sample(args.pairs, 2, seed=0)
    test = world.sample(50, 100, seed=1)
    pairs = annotate_pairs(train.prompt_ids, train.golden, beta=args.beta, n_pairs=args.pairs, rng=0)
    e1, e2 = train.embeddings[pairs.first], train.embeddings[pairs.second]
    setup_seconds = time.perf_counter() - start
    result = {
        "bench": "embedding_fit",
        "pairs": args.pairs,
        "dim": args.dim,
        "threads": args.threads,
        "beta": args.beta,
        "lgb_params": json.loads(args.lgb_params),
        "bf16": args.bf16,
        "annotation_error_rate": round(pairs.error_rate, 4),
        "data_seconds": round(setup_seconds, 1),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }
    for method in args.methods.split(","):
        kwargs = (
            {"num_threads": args.threads, "params": json.loads(args.lgb_params)}
            if method == "clf-lgb"
            else {"bf16": args.bf16}
        )
        start, cpu_start = time.perf_counter(), time.process_time()
        model = fit_reward_model(method, e1, e2, pairs.first_wins, seed=0, **kwargs)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        metrics = evaluate_scores(model.score(test.embeddings), test.golden, test.prompt_ids)
        # On a shared machine wall time includes waiting for a core; CPU seconds ÷ threads is the
        # wall time the fit would take with its cores to itself.
        entry = {
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "uncontended_seconds_estimate": round(cpu_seconds / args.threads, 1),
            "bon_gain_fraction": round(metrics["bon_gain_fraction"], 3),
            "spearman": round(metrics["spearman"], 3),
        }
        history = getattr(model, "history", None)
        if history is not None:
            entry.update(
                epochs=len(history.train_loss),
                best_epoch=history.best_epoch,
                seconds_per_epoch=round(seconds / len(history.train_loss), 2),
            )
        result[method] = entry
        print(
            f"{method}: {seconds:.1f} s for {args.pairs} pairs × {args.dim}-d on {args.threads} threads "
            f"(target < 60 s; {cpu_seconds:.1f} CPU s) | {entry}",
            flush=True,
        )
        if method == "clf-lgb" and not args.no_peer:
            peer = _plain_lightgbm(e1, e2, pairs.first_wins, args.threads, json.loads(args.lgb_params))
            same = _trees(peer["booster"]) == _trees(model.booster)
            entry["peer_plain_lightgbm"] = {
                "seconds": round(peer["seconds"], 1),
                "cpu_seconds": round(peer["cpu_seconds"], 1),
                "construct_seconds": round(peer["construct_seconds"], 1),
                "speedup": round(peer["seconds"] / seconds, 2),
                "same_trees": same,
            }
            print(
                f"peer plain LightGBM (lgb.Dataset(X) from the dense matrix, LightGBM's own layout trial): "
                f"{peer['seconds']:.1f} s ({peer['construct_seconds']:.1f} s of it building the Dataset) | "
                f"hsrm {peer['seconds'] / seconds:.2f}x faster | identical trees: {same}",
                flush=True,
            )
    result["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    line = json.dumps(result)
    print(line)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(line + "\n")
    return result


def _trees(booster) -> str:
    return booster.model_to_string().split("\nparameters:")[0]


def _plain_lightgbm(e1, e2, first_wins, threads: int, overrides: dict) -> dict:
    """What a user without hsrm writes: a Dataset from the dense matrix, the paper's two parameters."""
    import lightgbm as lgb
    import numpy as np

    from hsrm.embedding.models import pairs_to_pointwise

    start, cpu_start = time.perf_counter(), time.process_time()
    x, labels = pairs_to_pointwise(e1, e2, first_wins)
    params = {
        "objective": "binary",
        "metric": "binary_logloss",
        "seed": 0,
        "verbosity": -1,
        "num_threads": threads,
        **overrides,
    }
    data = lgb.Dataset(np.asarray(x, dtype=np.float32), label=labels, params=params).construct()
    construct_seconds = time.perf_counter() - start
    booster = lgb.train(params, data)
    return {
        "booster": booster,
        "seconds": time.perf_counter() - start,
        "construct_seconds": construct_seconds,
        "cpu_seconds": time.process_time() - cpu_start,
    }


if __name__ == "__main__":
    main()
