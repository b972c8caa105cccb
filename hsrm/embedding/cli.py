"""The lightweight path's verbs: ``hsrm embed``, ``hsrm fit``, ``hsrm study``.

    hsrm embed --data FILE --out EMB.npz [--model DIR] [--layer -1] [--max-length N]
               [--batch-size 16] [--cache DIR] [--limit N] [--golden-column COL | --golden-model DIR]
    hsrm fit   --embeddings EMB.npz --method bt-mlp|clf-mlp|clf-lgb [--ensemble …] --out DIR
               [--beta B --design random --pairing in-prompt --n-annotations N] [--eval EMB.npz]
    hsrm fit   --model DIR --eval EMB.npz [--scores-out SCORES.npy]       (score only)
    hsrm study STUDY.yaml [--output-dir DIR] [--n-jobs N] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

DEFAULT_CACHE = "~/.cache/hsrm/embeddings"


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, default=lambda o: float(o) if isinstance(o, np.floating) else str(o)))


# ---------------------------------------------------------------- hsrm embed


def embed_main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="hsrm embed", description="Embed (prompt, response) rows with a frozen backbone.")
    parser.add_argument("--data", required=True, help="jsonl/json/parquet of pairs (chosen/rejected, HH transcripts) or of prompt+response rows")
    parser.add_argument("--out", required=True, help="output .npz (embeddings, prompt_ids, golden, pairs, meta)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never one of the inputs)")
    parser.add_argument("--model", default=None, help="backbone folder or Hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--layer", type=int, default=-1, help="hidden-state index: -1 = last (normalised), 0 = token embeddings")
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens kept, cut from the left, as the full path (default: the backbone's recorded max_length, else 2048)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="embedding cache folder; 'none' disables it")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N pairs / rows")
    parser.add_argument("--on-bad-rows", default="raise", choices=("raise", "skip"),
                        help="pair files: stop at an unusable pair (default) or skip it and count it")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="bfloat16 / float32 (default: bf16 on GPU, fp32 on CPU)")
    golden = parser.add_mutually_exclusive_group()
    golden.add_argument("--golden-column", default=None, help="numeric column holding each response's golden reward")
    golden.add_argument("--golden-model", default=None, help="a full reward-model folder whose scores are the golden reward")
    parser.add_argument("--golden-max-length", type=int, default=None,
                        help="max length for the golden model (default: the length it was trained with, else 2048)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ..files import check_output
    from .extract import EmbeddedData, embed_conversations, load_backbone, read_conversations

    check_output(args.out, inputs=[args.data, args.model, args.golden_model], overwrite=args.overwrite, flag="--out")

    prompts, responses, prompt_ids, golden_values, pairs = read_conversations(args.data, limit=args.limit,
                                                                             golden_column=args.golden_column,
                                                                             on_error=args.on_bad_rows)
    from ..modeling import resolve_max_length
    from ..record import read_record

    backbone = load_backbone(args.model, device=args.device, dtype=args.dtype)
    max_length = resolve_max_length(args.max_length, read_record(backbone.path), backbone.model.config)
    cache = None if args.cache.lower() == "none" else Path(args.cache).expanduser()
    embeddings, report = embed_conversations(backbone, prompts, responses, layer=args.layer, max_length=max_length,
                                             batch_size=args.batch_size, cache_dir=cache)
    if args.golden_model:
        from .annotate import golden_from_reward_model

        golden_values = golden_from_reward_model(args.golden_model, prompts, responses, max_length=args.golden_max_length,
                                                 batch_size=args.batch_size, device=args.device)
    meta = {"source": args.data, "model": backbone.path, "layer": backbone.resolve_layer(args.layer),
            "max_length": max_length, "dtype": backbone.dtype_name, "golden": args.golden_column or args.golden_model}
    data = EmbeddedData(embeddings, prompt_ids, golden_values, *(pairs or (None, None, None)), meta=meta)
    data.save(args.out)
    summary = {"out": args.out, "responses": len(embeddings), "dim": int(embeddings.shape[1]),
               "prompts": int(len(np.unique(prompt_ids))), "pairs": int(len(pairs[0])) if pairs else 0,
               "golden": golden_values is not None, "from_cache": report.from_cache, "embedded": report.computed,
               "truncated": report.truncated, "seconds": round(report.seconds, 2), "cache": report.cache_folder}
    print(report.summary(), file=sys.stderr)
    _print_json(summary)
    return summary


# ---------------------------------------------------------------- hsrm fit


def fit_main(argv: list[str] | None = None) -> dict:
    from .models import METHOD_NAMES

    parser = argparse.ArgumentParser(prog="hsrm fit", description="Fit (or apply) a reward model on embeddings.")
    parser.add_argument("--embeddings", help="training .npz from `hsrm embed` (or a study pool)")
    parser.add_argument("--method", choices=METHOD_NAMES, help="reward model to fit")
    parser.add_argument("--ensemble", default=None, help="comma-separated methods averaged as one model, e.g. bt-mlp,clf-lgb")
    parser.add_argument("--ensemble-seeds", default="0", help="comma-separated seeds per ensemble method")
    parser.add_argument("--out", help="folder to save the fitted model in")
    parser.add_argument("--model", help="a saved model folder: score --eval with it instead of fitting")
    parser.add_argument("--beta", type=float, default=None, help="simulate annotators σ(β|Δr|) from the golden reward instead of using the file's pairs")
    parser.add_argument("--design", default="random", help="random / similar / diverse (with --beta)")
    parser.add_argument("--pairing", default="in-prompt", help="in-prompt / cross-prompt (with --beta)")
    parser.add_argument("--n-annotations", type=int, default=None, help="pairs to annotate (with --beta; default one per prompt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--hidden", default="1024,512", help="MLP hidden sizes")
    parser.add_argument("--eval", dest="eval_path", default=None, help=".npz to evaluate on (BoN gain + Spearman with golden rewards, accuracy with pairs)")
    parser.add_argument("--scores-out", default=None, help="write the --eval scores here (.npy)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out / --scores-out if they exist (never an input)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ..files import check_output

    inputs = [args.embeddings, args.eval_path, args.model]
    for flag, path in (("--out", args.out), ("--scores-out", args.scores_out)):
        if path:
            check_output(path, inputs=inputs, overwrite=args.overwrite, flag=flag)

    from .annotate import annotate_pairs
    from .extract import EmbeddedData
    from .models import fit_ensemble, fit_reward_model, load_model, save_model

    result: dict = {}
    if args.model:
        model = load_model(args.model)
        if not args.eval_path:
            raise ValueError("--model scores embeddings: give them with --eval FILE.npz")
    else:
        if not args.embeddings or not (args.method or args.ensemble) or not args.out:
            raise ValueError("fitting needs --embeddings FILE.npz, --method (or --ensemble) and --out DIR")
        data = EmbeddedData.load(args.embeddings)
        if args.beta is not None:
            if data.golden is None:
                raise ValueError(f"{args.embeddings} has no golden reward; --beta simulates annotators from it")
            pairs = annotate_pairs(data.prompt_ids, data.golden, beta=args.beta, design=args.design, pairing=args.pairing,
                                   n_pairs=args.n_annotations, rng=args.seed)
            first, second, first_wins = pairs.first, pairs.second, pairs.first_wins
            result.update(annotation_error_rate=pairs.error_rate, annotations=len(first_wins))
        elif data.has_pairs:
            first, second, first_wins = data.pair_first, data.pair_second, data.pair_first_wins
            result.update(annotations=len(first_wins))
        else:
            raise ValueError(f"{args.embeddings} holds no pairs; pass --beta to simulate annotations from its golden reward")
        fit_mlp = {"hidden": tuple(int(h) for h in args.hidden.split(",")), "lr": args.lr, "max_epochs": args.max_epochs,
                   "patience": args.patience, **({"batch_size": args.batch_size} if args.batch_size else {})}
        emb = data.embeddings
        if args.ensemble:
            methods = [m.strip() for m in args.ensemble.split(",") if m.strip()]
            seeds = [int(s) for s in args.ensemble_seeds.split(",")]
            model = fit_ensemble(methods, emb[first], emb[second], first_wins, seeds=seeds, mlp_kwargs=fit_mlp)
        else:
            kwargs = fit_mlp if args.method != "clf-lgb" else {}
            model = fit_reward_model(args.method, emb[first], emb[second], first_wins, seed=args.seed, **kwargs)
        save_model(model, args.out)
        result.update(method=getattr(model, "method", args.method), out=args.out)
        history = getattr(model, "history", None)
        if history is not None:
            result.update(epochs=len(history.train_loss), best_epoch=history.best_epoch, fit_seconds=round(history.seconds, 2))
    if args.eval_path:
        from .metrics import evaluate_scores, pairwise_accuracy

        test = EmbeddedData.load(args.eval_path)
        scores = model.score(test.embeddings)
        if args.scores_out:
            np.save(args.scores_out, scores)
            result["scores_out"] = args.scores_out
        if test.golden is not None:
            result.update({f"eval_{k}": v for k, v in evaluate_scores(scores, test.golden, test.prompt_ids).items()})
        if test.has_pairs:
            result["eval_pair_accuracy"] = pairwise_accuracy(scores[test.pair_first], scores[test.pair_second], test.pair_first_wins)
    _print_json(result)
    return result


# ---------------------------------------------------------------- hsrm study


def study_main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="hsrm study", description="Sweep reward-model setups on embeddings (see hsrm/embedding/study.py).")
    parser.add_argument("study", help="STUDY.yaml")
    parser.add_argument("--output-dir", default=None, help="override the study's output_dir")
    parser.add_argument("--n-jobs", type=int, default=None, help="worker processes (at most 2)")
    parser.add_argument("--seeds", default=None, help="override the base grid's seeds, e.g. 0,1,2")
    parser.add_argument("--format", choices=("csv", "parquet"), default=None)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from .study import load_study, run_study

    overrides = {}
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.n_jobs:
        overrides["n_jobs"] = args.n_jobs
    if args.format:
        overrides["format"] = args.format
    if args.no_plots:
        overrides["plots"] = False
    if not Path(args.study).exists():
        raise FileNotFoundError(f"{args.study}: no such study file")
    config = load_study(args.study, overrides)
    if args.seeds:
        config.grid = dict(config.grid, seeds=[int(s) for s in args.seeds.split(",")])
        config.grids = [{k: v for k, v in g.items() if k != "seeds"} for g in config.grids]
    table = run_study(config)
    out = Path(config.output_dir)
    print(open(out / "summary.md").read())
    _print_json({"study": config.name, "setups": len(table), "output_dir": str(out),
                 "files": sorted(p.name for p in out.iterdir())})
    return table
