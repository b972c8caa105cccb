"""Time active selection: D-opt picks 500 of 20,000 candidate pairs (issue 7's targets: < 1 s with
256-d last-layer features, < 10 s with 2,048-d, on 2 CPU cores).

Run: ``python bench/active_select.py [--repeats 3] [--all-strategies] [--output bench/results/active_select.json]``

Rows:
* ``dopt`` / ``pa_dopt`` on features: ``select_pairs`` with a linear last layer (Φ given), the
  issue's measurement; pa_dopt adds 5,000 labelled pairs' information.
* ``dopt, BT-MLP (1024, 512) on 2,048-d embeddings``: the whole call as ``hsrm select`` makes it,
  forward pass included: 20,000 in-prompt pairs over 5,000 responses (500 prompts × 10).
* ``--all-strategies``: every strategy on the 256-d problem, for comparison.

Each figure is the median wall time (and CPU time) of ``--repeats`` calls after one warm-up call.
On a machine shared with other jobs, run with ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` too:
a threaded BLAS waiting for busy cores can be several times slower than one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def median_seconds(call, repeats: int) -> tuple[float, list[float], float]:
    """(median wall seconds, all wall seconds, median CPU seconds of this process). On a shared
    machine the wall time includes waiting for a core; the CPU time does not (with one BLAS
    thread it is the work itself; with several it also counts their spin-waiting)."""
    call()  # warm-up: imports, BLAS thread start
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), times, statistics.median(cpu)


def feature_problem(dim: int, n_candidates: int, seed: int = 0):
    from hsrm.embedding.active import CandidatePairs, LastLayer

    rng = np.random.default_rng(seed)
    # ReLU-like features: non-negative, a few hundred items per prompt-sized block, pairs over items
    items = np.maximum(rng.standard_normal((n_candidates // 4, dim)), 0).astype(np.float32)
    pairs = rng.integers(0, len(items), size=(n_candidates, 2))
    weight = rng.standard_normal(dim) / np.sqrt(dim)
    return (
        LastLayer.linear(weight),
        CandidatePairs(items, pairs),
        CandidatePairs(items, rng.integers(0, len(items), size=(5000, 2))),
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=20000)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-strategies", action="store_true")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from hsrm.embedding.active import STRATEGIES, CandidatePairs, select_pairs

    rows = []

    def record(name: str, dim: int, call, target: float | None = None):
        seconds, times, cpu = median_seconds(call, args.repeats)
        row = {
            "case": name,
            "feature_dim": dim,
            "candidates": args.candidates,
            "k": args.k,
            "median_seconds": round(seconds, 4),
            "all_seconds": [round(t, 4) for t in times],
            "median_cpu_seconds": round(cpu, 4),
            "target_seconds": target,
            "meets_target": None if target is None else seconds < target,
        }
        rows.append(row)
        flag = "" if target is None else f"  (target < {target:g} s: {'met' if seconds < target else 'MISSED'})"
        print(f"{name:<52} d={dim:<5} {seconds:8.3f} s wall {cpu:8.3f} s cpu{flag}", flush=True)

    for dim, target in ((256, 1.0), (2048, 10.0)):
        layer, candidates, labelled = feature_problem(dim, args.candidates)
        record("dopt on features", dim, lambda: select_pairs(layer, candidates, args.k, "dopt"), target)
        record(
            "pa_dopt on features (+5,000 labelled)",
            dim,
            lambda: select_pairs(layer, candidates, args.k, "pa_dopt", labelled=labelled),
            target,
        )
        if args.all_strategies and dim == 256:
            for strategy in STRATEGIES:
                if strategy not in ("dopt", "pa_dopt"):
                    record(
                        f"{strategy} on features",
                        dim,
                        lambda s=strategy: select_pairs(layer, candidates, args.k, s, labelled=labelled, seed=0),
                    )

    from hsrm.embedding.annotate import in_prompt_pairs
    from hsrm.embedding.models import MLPRewardModel

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = MLPRewardModel(2048, (1024, 512)).eval()
    embeddings = rng.standard_normal((5000, 2048)).astype(np.float32)
    pairs = in_prompt_pairs([np.arange(10 * p, 10 * p + 10) for p in range(500)])
    pairs = pairs[rng.choice(len(pairs), args.candidates, replace=False)]
    record(
        "dopt, BT-MLP (1024, 512) on 2,048-d embeddings",
        512,
        lambda: select_pairs(model, CandidatePairs(embeddings, pairs), args.k, "dopt"),
    )

    result = {
        "bench": "active_select",
        "rows": rows,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__,
        "blas_threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "note": "wall time on a machine shared with other jobs; repeat on an idle machine for clean figures",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
