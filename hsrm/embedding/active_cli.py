"""`hsrm active` (the simulated study) and `hsrm select` (live selection for human annotators).

    hsrm active recipes/studies/active_synthetic.yaml [--key value …]
    hsrm select STATE_DIR --embeddings ITEMS.npy|POOL.npz [--pairs PAIRS.jsonl|PAIRS.npy] [options]  # first call
    hsrm select STATE_DIR [--strategy S] [--batch-size K]                                    # every later call

The `hsrm select` protocol and its state machine: :mod:`hsrm.embedding.annotation_queue`
(docs/active.md has a worked example). This module only parses the options and prints.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..files import output_lock

# ----------------------------------------------------------------------------------------------
# hsrm active
# ----------------------------------------------------------------------------------------------


def active_main(argv: list[str]) -> None:
    """`hsrm active STUDY.yaml [--key value …]`: run the simulated online study, print the table."""
    from ..options import ResultFormat, parse_options, print_result
    from .loop import ActiveStudyConfig, run_active_study, summary_table

    config, output = parse_options(
        (ActiveStudyConfig, ResultFormat),
        argv,
        prog="hsrm active",
        positional="config",
        description="The simulated online active-learning study (hsrm/embedding/loop.py).",
    )
    start = time.perf_counter()
    results = run_active_study(config)
    out = Path(config.output)
    files = [str(out / "results.csv"), str(out / "summary.md"), *(str(p) for p in sorted(out.glob("*.png")))]
    runs = results.groupby(["strategy", "batch_size", "pairing", "seed"]).ngroups
    seconds = time.perf_counter() - start
    print_result(
        {"rounds": len(results), "runs": runs, "seconds": round(seconds, 1), "files": files},
        f"{summary_table(results)}\n\n{len(results)} rounds from {runs} runs in {seconds:.1f} s → {', '.join(files)}",
        output.json,
    )


# ----------------------------------------------------------------------------------------------
# hsrm select: one call
# ----------------------------------------------------------------------------------------------


def select_main(argv: list[str]) -> dict:
    """`hsrm select STATE_DIR …`: ingest the pending batch's labels, retrain, write the next batch."""
    from ..options import SelectOptions, parse_options, print_result
    from . import annotation_queue

    opts = parse_options(
        SelectOptions, argv, prog="hsrm select", description=annotation_queue.__doc__, positional="state_dir"
    )
    with output_lock(opts.state_dir, flag="STATE_DIR"):  # one `hsrm select` per STATE_DIR at a time
        summary = annotation_queue.select_step(
            opts.state_dir,
            embeddings=opts.embeddings,
            pairs=opts.pairs,
            strategy=opts.strategy,
            batch_size=opts.batch_size,
            initial_strategy=opts.initial_strategy,
            candidates=opts.candidates,
            hidden=opts.hidden,
            max_epochs=opts.max_epochs,
            seed=opts.seed,
            partial=opts.partial,
        )
    lines = [f"{summary['labels']} labels ({summary['ingested_now']} ingested now), {summary['open_pairs']} pairs open"]
    if "batch_file" in summary:
        lines.append(
            f"round {summary['round']}: {summary['batch_size']} pairs chosen by {summary['strategy']} → "
            f"{summary['batch_file']} (label them, then call hsrm select {opts.state_dir} again)"
        )
    if "message" in summary:
        lines.append(summary["message"])
    print_result(summary, "\n".join(lines), opts.json)
    return summary


if __name__ == "__main__":  # python -m hsrm.embedding.active_cli select STATE …
    verb, rest = sys.argv[1], sys.argv[2:]
    (select_main if verb == "select" else active_main)(rest)
