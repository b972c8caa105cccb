"""Preparing HH-RLHF pairs for training: hsrm's tokenization against TRL RewardTrainer's own.

    .venv/bin/python bench/tokenization.py [--pairs 20000] [--max-length 1024] [--num-proc N] [--repeats 1]
                                       [--tokenizer DIR] [--output runs/bench/tokenize.json]

Same process, same tokenizer (the embedded SmolLM2-135M-Instruct unless ``--tokenizer``), same
pairs: the three HH-RLHF helpful test splits in ../shared/data/hh_rlhf, loaded by hsrm (the shared
prefix of the two transcripts is the prompt) and repeated to ``--pairs``.

* hsrm: ``hsrm.data.tokenize.tokenize_pairs``, what ``hsrm train`` runs (batched ``datasets.map``,
  one chat-template call and one fast-tokenizer batch per 1,000 rows, the prompt shared by a pair's
  two sides tokenized once), written to its cache in a new temporary folder, so nothing is read back.
* TRL: ``RewardTrainer._prepare_dataset``, the method ``RewardTrainer.__init__`` runs on its train
  dataset (TRL 1.x: one ``datasets.map`` call per example, ``apply_chat_template(tokenize=True)``
  on prompt + chosen and prompt + rejected, then a filter on ``max_length``), on the same pairs in
  TRL's conversational format (prompt messages; chosen and rejected one assistant message each).

Both get ``--num-proc`` (default: none, each library's default). The two do the same work: on the
pairs TRL keeps (both sides within ``max_length``) the ids must be identical, and the bench checks
it. hsrm keeps the longer pairs too, cut from the left. Each side is timed ``--repeats`` times,
alternately; the best time of each is reported, with the CPU seconds it used (every thread and
process) and the machine's load average before the run (the machine may be shared). Prints both
times and the ratio, and a JSON line.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and its name would shadow the standard
# library's tokenize module (which pandas, inspect and linecache import): take the folder off again.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HH_SPLITS = ("helpful-base", "helpful-online", "helpful-rejection-sampled")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh_rlhf"


def load_pairs(data_dir: Path, n: int):
    """n pairs (prompt messages, chosen, rejected, margin) from the HH-RLHF splits, repeated as needed."""
    import datasets

    from hsrm.data.auto import load_pairs_any

    parts = [load_pairs_any(str(data_dir / f"{split}.test.jsonl.gz"), on_error="skip") for split in HH_SPLITS]
    unique = datasets.concatenate_datasets(parts)
    copies = -(-n // len(unique))
    return datasets.concatenate_datasets([unique] * copies).select(range(n)).flatten_indices(), len(unique)


def trl_format(pairs):
    """The same pairs as TRL's conversational preference rows."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "prompt": pairs["prompt"],
            "chosen": [[{"role": "assistant", "content": text}] for text in pairs["chosen"]],
            "rejected": [[{"role": "assistant", "content": text}] for text in pairs["rejected"]],
        }
    )


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its finished child processes (num_proc workers)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def time_hsrm(pairs, tokenizer, max_length: int, num_proc: int | None):
    import datasets

    from hsrm.data.tokenize import tokenize_pairs

    cache = tempfile.mkdtemp(prefix="hsrm-bench-tokenize-")
    previous = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = cache  # a cold cache: the run tokenizes and writes, reads nothing
    try:
        start, cpu = time.perf_counter(), cpu_seconds()
        tokenized, stats = tokenize_pairs(pairs, tokenizer, max_length, num_proc=num_proc)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        return seconds, cpu, tokenized.to_dict(), stats
    finally:
        datasets.config.HF_DATASETS_CACHE = previous
        shutil.rmtree(cache, ignore_errors=True)


def time_trl(rows, tokenizer, max_length: int, num_proc: int | None):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        max_length=max_length,
        dataset_num_proc=num_proc,
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    # _prepare_dataset reads only its arguments, not the trainer's state: an instance without
    # __init__ (which would load a model) runs exactly what RewardTrainer.__init__ runs.
    trainer = object.__new__(RewardTrainer)
    start, cpu = time.perf_counter(), cpu_seconds()
    prepared = trainer._prepare_dataset(rows, tokenizer, args, "train")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    shutil.rmtree(args.output_dir, ignore_errors=True)
    return seconds, cpu, prepared


def same_ids(hsrm_columns: dict, trl_prepared, max_length: int) -> int:
    """Both in order: every pair TRL keeps must come with hsrm's very ids; the pairs in between are
    those TRL dropped for length, which hsrm cut to ``max_length``. Returns the pairs compared."""
    trl_chosen, trl_rejected = trl_prepared["chosen_ids"], trl_prepared["rejected_ids"]
    matched = 0
    for i, (chosen, rejected) in enumerate(zip(hsrm_columns["chosen_ids"], hsrm_columns["rejected_ids"])):
        if (
            matched < len(trl_chosen)
            and chosen == list(trl_chosen[matched])
            and rejected == list(trl_rejected[matched])
        ):
            matched += 1
        elif max(len(chosen), len(rejected)) != max_length:
            raise AssertionError(f"pair {i}: hsrm's ids differ from TRL's")
    if matched != len(trl_chosen):
        raise AssertionError(f"{len(trl_chosen) - matched} of the pairs TRL keeps have other ids in hsrm")
    return matched


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument(
        "--max-length",
        type=int,
        default=1024,
        help="tokens per sequence (TRL's default; TRL drops longer pairs, hsrm cuts them)",
    )
    parser.add_argument("--num-proc", type=int, default=None, help="datasets.map processes for both (default: none)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer folder (default: the embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help="folder with the HH-RLHF helpful-*.test.jsonl.gz files"
    )
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    import datasets
    import trl
    from transformers import AutoTokenizer

    from hsrm.default_model import default_model_path

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_model_path())
    pairs, unique = load_pairs(Path(args.data), args.pairs)
    rows = trl_format(pairs)
    hsrm_times, trl_times, hsrm_cpu, trl_cpu = [], [], [], []
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        seconds, cpu, hsrm_columns, stats = time_hsrm(pairs, tokenizer, args.max_length, args.num_proc)
        hsrm_times.append(seconds)
        hsrm_cpu.append(cpu)
        seconds, cpu, trl_prepared = time_trl(rows, tokenizer, args.max_length, args.num_proc)
        trl_times.append(seconds)
        trl_cpu.append(cpu)
    compared = same_ids(hsrm_columns, trl_prepared, args.max_length)
    result = {
        "pairs": args.pairs,
        "unique_pairs": unique,
        "max_length": args.max_length,
        "num_proc": args.num_proc,
        "repeats": args.repeats,
        "tokenizer": args.tokenizer or "SmolLM2-135M-Instruct (embedded)",
        "hsrm_seconds": round(min(hsrm_times), 3),
        "trl_seconds": round(min(trl_times), 3),
        "speedup": round(min(trl_times) / min(hsrm_times), 2),
        "hsrm_seconds_all": [round(t, 3) for t in hsrm_times],
        "trl_seconds_all": [round(t, 3) for t in trl_times],
        "hsrm_cpu_seconds": round(hsrm_cpu[hsrm_times.index(min(hsrm_times))], 3),
        "trl_cpu_seconds": round(trl_cpu[trl_times.index(min(trl_times))], 3),
        "load_average_before": round(load_before, 2),
        "sequences_cut_by_hsrm": stats.truncated,
        "pairs_kept_by_trl": compared,
        "ids_identical_on_kept_pairs": True,
        "trl": trl.__version__,
        "datasets": datasets.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(
        f"hsrm tokenize_pairs                {result['hsrm_seconds']:7.2f} s ({result['hsrm_cpu_seconds']:.2f} CPU s)"
    )
    print(f"TRL RewardTrainer._prepare_dataset {result['trl_seconds']:7.2f} s ({result['trl_cpu_seconds']:.2f} CPU s)")
    print(
        f"hsrm is {result['speedup']}x faster ({args.pairs} pairs, max_length {args.max_length}, num_proc "
        f"{args.num_proc}; "
        f"ids identical on the {compared} pairs TRL keeps)"
    )
    print(json.dumps(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
