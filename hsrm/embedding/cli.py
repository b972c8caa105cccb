"""The lightweight path's verbs: ``hsrm embed``, ``hsrm fit``, ``hsrm study``.

    hsrm embed --data FILE --output EMB.npz [--model BACKBONE] [--layer -1] [--max-length N]
               [--batch-size 16] [--cache DIR] [--limit N] [--golden-column COL | --golden-model DIR]
    hsrm fit   --embeddings EMB.npz --method bt-mlp|clf-mlp|clf-lgb [--ensemble …] --output DIR
               [--beta B --design random --pairing in-prompt --n-annotations N] [--eval-data EMB.npz]
    hsrm fit   --apply DIR --eval-data EMB.npz [--scores-output SCORES.npy]       (score only)
    hsrm study STUDY.yaml [--output DIR] [--n_jobs N] [--seeds 0 1 2]

Options: :mod:`hsrm.options` (``EmbedOptions``, ``FitOptions``) and ``hsrm.embedding.study.StudyConfig``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError

# ---------------------------------------------------------------- hsrm embed


def embed_main(argv: list[str] | None = None) -> dict:
    from ..files import check_output
    from ..modeling import resolve_max_length
    from ..options import EmbedOptions, parse_options, print_result
    from ..record import read_record
    from .extract import EmbeddedData, embed_conversations, load_backbone, read_conversations

    opts = parse_options(EmbedOptions, argv, prog="hsrm embed", description=EmbedOptions.__doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_output(opts.output, inputs=[opts.data, opts.model, opts.golden_model], overwrite=opts.overwrite)
    prompts, responses, prompt_ids, golden_values, pairs = read_conversations(
        opts.data,
        limit=opts.limit,
        golden_column=opts.golden_column,
        on_error=opts.on_bad_rows,
        data_format=opts.data_format,
        split=opts.split,
    )
    backbone = load_backbone(opts.model, device=opts.device, dtype=opts.dtype)
    max_length = resolve_max_length(opts.max_length, read_record(backbone.path), backbone.model.config)
    cache = None if opts.cache.lower() == "none" else Path(opts.cache).expanduser()
    embeddings, report = embed_conversations(
        backbone,
        prompts,
        responses,
        layer=opts.layer,
        max_length=max_length,
        batch_size=opts.batch_size,
        cache_dir=cache,
        layout=opts.layout,
        max_tokens=opts.max_tokens,
        share_prompts=opts.share_prompts,
    )
    if opts.golden_model:
        from .annotate import golden_from_reward_model

        golden_values = golden_from_reward_model(
            opts.golden_model,
            prompts,
            responses,
            max_length=opts.golden_max_length,
            batch_size=opts.batch_size,
            device=opts.device,
        )
    meta = {
        "source": opts.data,
        "model": backbone.path,
        "layer": backbone.resolve_layer(opts.layer),
        "max_length": max_length,
        "dtype": backbone.dtype_name,
        "golden": opts.golden_column or opts.golden_model,
    }
    data = EmbeddedData(embeddings, prompt_ids, golden_values, *(pairs or (None, None, None)), meta=meta)
    from ..shards import process_group

    if process_group()[0] != 0:  # under torchrun/accelerate every process embedded its share; rank 0 writes
        return {}
    data.save(opts.output)
    summary = {
        "output": opts.output,
        "responses": len(embeddings),
        "dim": int(embeddings.shape[1]),
        "prompts": int(len(np.unique(prompt_ids))),
        "pairs": int(len(pairs[0])) if pairs else 0,
        "golden": golden_values is not None,
        "from_cache": report.from_cache,
        "embedded": report.computed,
        "truncated": report.truncated,
        "seconds": round(report.seconds, 2),
        "cache": report.cache_folder,
    }
    print_result(
        summary,
        f"{report.summary()}\nwrote {opts.output}: {summary['responses']} responses × "
        f"{summary['dim']} ({summary['prompts']} prompts, {summary['pairs']} pairs, golden reward: "
        f"{'yes' if summary['golden'] else 'no'})",
        opts.json,
    )
    return summary


# ---------------------------------------------------------------- hsrm fit


def fit_main(argv: list[str] | None = None) -> dict:
    from ..files import atomic_save_npy, check_output
    from ..options import FitOptions, parse_options, print_result
    from .annotate import annotate_pairs
    from .extract import EmbeddedData
    from .models import fit_ensemble, fit_reward_model, load_model, save_model

    opts = parse_options(FitOptions, argv, prog="hsrm fit", description=FitOptions.__doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    inputs = [opts.embeddings, opts.eval_data, opts.apply]
    for path in (opts.output, opts.scores_output):
        if path:
            check_output(path, inputs=inputs, overwrite=opts.overwrite)
    result: dict = {}
    if opts.apply:
        model = load_model(opts.apply)
        if not opts.eval_data:
            raise InputError("--apply scores embeddings: give them with --eval-data FILE.npz")
    else:
        if not opts.embeddings or not (opts.method or opts.ensemble) or not opts.output:
            raise InputError("fitting needs --embeddings FILE.npz, --method (or --ensemble) and --output DIR")
        data = EmbeddedData.load(opts.embeddings)
        if opts.beta is not None:
            data.require("golden", "prompt_ids", purpose="--beta (annotators simulated from the golden reward)")
            pairs = annotate_pairs(
                data.prompt_ids,
                data.golden,
                beta=opts.beta,
                design=opts.design,
                pairing=opts.pairing,
                n_pairs=opts.n_annotations,
                rng=opts.seed,
            )
            first, second, first_wins = pairs.first, pairs.second, pairs.first_wins
            result.update(annotation_error_rate=pairs.error_rate, annotations=len(first_wins))
        elif data.has_pairs:
            first, second, first_wins = data.pair_first, data.pair_second, data.pair_first_wins
            result.update(annotations=len(first_wins))
        else:
            raise InputError(
                f"{opts.embeddings} holds no pairs; pass --beta to simulate annotations from its golden reward"
            )
        fit_mlp = {
            "hidden": tuple(opts.hidden),
            "lr": opts.lr,
            "max_epochs": opts.max_epochs,
            "patience": opts.patience,
            **({"batch_size": opts.batch_size} if opts.batch_size else {}),
        }
        emb = data.embeddings
        if opts.ensemble:
            model = fit_ensemble(
                list(opts.ensemble),
                emb[first],
                emb[second],
                first_wins,
                seeds=list(opts.ensemble_seeds),
                mlp_kwargs=fit_mlp,
            )
        else:
            kwargs = fit_mlp if opts.method != "clf-lgb" else {}
            model = fit_reward_model(opts.method, emb[first], emb[second], first_wins, seed=opts.seed, **kwargs)
        save_model(model, opts.output)
        result.update(method=getattr(model, "method", opts.method), output=opts.output)
        history = getattr(model, "history", None)
        if history is not None:
            result.update(
                epochs=len(history.train_loss), best_epoch=history.best_epoch, fit_seconds=round(history.seconds, 2)
            )
    if opts.eval_data:
        from ..metrics import evaluate_scores, pairwise_accuracy

        test = EmbeddedData.load(opts.eval_data)
        scores = model.score(test.embeddings)
        if opts.scores_output:
            atomic_save_npy(opts.scores_output, scores)
            result["scores_output"] = opts.scores_output
        if test.golden is not None:
            test.require("prompt_ids", purpose="the Best-of-N gain of --eval-data")
            result.update({f"eval_{k}": v for k, v in evaluate_scores(scores, test.golden, test.prompt_ids).items()})
        if test.has_pairs:
            result["eval_pair_accuracy"] = pairwise_accuracy(
                scores[test.pair_first], scores[test.pair_second], test.pair_first_wins
            )
    lines = []
    if "output" in result:
        lines.append(f"fitted {result['method']} on {result.get('annotations')} pairs → {result['output']}")
    lines += [
        f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
        for k, v in result.items()
        if k.startswith("eval_") or k == "scores_output"
    ]
    print_result(result, "\n".join(lines) or "nothing to report", opts.json)
    return result


# ---------------------------------------------------------------- hsrm study


def study_main(argv: list[str] | None = None):
    from ..options import ResultFormat, parse_options, print_result
    from .study import StudyConfig, run_study

    config, output = parse_options(
        (StudyConfig, ResultFormat),
        argv,
        prog="hsrm study",
        positional="config",
        description="Sweep reward-model setups on embeddings (hsrm/embedding/study.py).",
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = run_study(config)
    out = Path(config.output)
    print_result(
        {
            "study": config.name,
            "setups": len(table),
            "output": str(out),
            "files": sorted(p.name for p in out.iterdir()),
        },
        (out / "summary.md").read_text(),
        output.json,
    )
    return table
