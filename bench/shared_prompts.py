"""Shared prompts in scoring and pair training (issue 32): tokens computed and time, with and without.

    OMP_NUM_THREADS=2 .venv/bin/python bench/shared_prompts.py [--quick] [--groups 8] [--pairs 32]
                                                            [--output runs/bench/shared_prompts.json]

Model: the embedded SmolLM2-135M-Instruct (the offline GGUF, converted once; ``--model`` for
another) as a sequence classifier with a fresh, seeded score head: the timing and the equality of
rewards do not depend on what the head learned. Data: real HH-RLHF helpful-online rows
(../shared/data/hh_rlhf), rendered with the model's chat template and cut from the left to
``--max-length`` like every hsrm verb:

* pairs: each row's prompt with its chosen and its rejected response (what ``hsrm evaluate`` and
  pair training score);
* Best-of-8: each row's prompt with eight real responses — its own chosen and rejected, and six
  responses of other rows — the shape of ``hsrm score``, RewardBench 2 and a GRPO reward call.

Each workload is scored by ``hsrm.engine.score_sequences`` in one process, with ``share_prompts``
on and off (padded layout, the CPU engine; alternated, ``--repeats`` times each, the best time
kept), and the bench prints the tokens each computes, the times, both ratios and the largest
reward difference. On CUDA it also times the packed unshared engine (``layout=auto``), which
sharing does not use (docs/speed.md).

Then a pair-training step on the first ``--train-pairs`` pairs (:func:`compare_training`): forward,
loss and backward with each pair one row ``[prompt | chosen | rejected]`` against its two sides as
separate rows, timed alike, with the losses and gradients compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh_rlhf" / "helpful-online.test.jsonl.gz"
)
RESPONSES_PER_GROUP = 8


def workloads(tokenizer, data: Path, n_pairs: int, n_groups: int, max_length: int, seed: int) -> dict:
    """Token ids of the pair workload and of the Best-of-8 workload (see the module docstring), on
    rows drawn at random (seeded) from the whole file, so that the lengths are the file's."""
    from hsrm.data.auto import load_pairs_any
    from hsrm.data.render import encode_batch

    rows = load_pairs_any(str(data), on_error="skip")
    rng = random.Random(seed)
    drawn = rng.sample(range(len(rows)), max(n_pairs, n_groups))
    pairs = rows.select(drawn[:n_pairs])
    prompts = [p for p in pairs["prompt"] for _ in range(2)]
    responses = [r for c, j in zip(pairs["chosen"], pairs["rejected"]) for r in (c, j)]
    pair_ids, _ = encode_batch(tokenizer, prompts, responses, max_length)

    pool = list(rows["chosen"]) + list(rows["rejected"])
    prompts, responses = [], []
    for i in drawn[:n_groups]:
        row = rows[i]
        others = [r for r in rng.sample(pool, RESPONSES_PER_GROUP + 2) if r not in (row["chosen"], row["rejected"])]
        prompts += [row["prompt"]] * RESPONSES_PER_GROUP
        responses += [row["chosen"], row["rejected"], *others[: RESPONSES_PER_GROUP - 2]]
    group_ids, _ = encode_batch(tokenizer, prompts, responses, max_length)
    return {"pairs": pair_ids, f"best_of_{RESPONSES_PER_GROUP}": group_ids}


def timed(function) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result). CPU time is what the ratio should be read
    from on a machine shared with other jobs: their load stretches the wall clock of either side."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def alternate(run, repeats: int) -> tuple[dict, dict]:
    """``run(share)`` timed with sharing on and off, alternated so that load on a shared machine hits
    both alike, the best of ``repeats`` timings of each kept: (timings and ratios, {share: result})."""
    best = {True: [float("inf")] * 2, False: [float("inf")] * 2}
    results = {}
    for _ in range(repeats):
        for share in (True, False):
            wall, cpu, results[share] = timed(lambda share=share: run(share))
            best[share] = [min(best[share][0], wall), min(best[share][1], cpu)]
    timings = {
        "seconds_unshared": best[False][0],
        "seconds_shared": best[True][0],
        "speedup": best[False][0] / best[True][0],
        "cpu_seconds_unshared": best[False][1],
        "cpu_seconds_shared": best[True][1],
        "cpu_speedup": best[False][1] / best[True][1],
    }
    return timings, results


def compare(model, sequences, *, batch_size: int, repeats: int, device: str) -> dict:
    """Shared against unshared scoring of the same sequences (:func:`alternate`)."""
    from hsrm.engine import score_sequences

    stats = {True: {}, False: {}}
    score_sequences(model, sequences[:batch_size], layout="padded", batch_size=batch_size)  # warm-up
    timings, rewards = alternate(
        lambda share: score_sequences(
            model, sequences, layout="padded", batch_size=batch_size, share_prompts=share, stats=stats[share]
        ),
        repeats,
    )
    shared, unshared = stats[True], stats[False]
    result = {
        "sequences": len(sequences),
        "shared_groups": shared["shared_groups"],
        "shared_sequences": shared["shared_sequences"],
        "fallback": shared["fallback"],
        "tokens": shared["tokens"],
        "tokens_computed_shared": shared["tokens_computed"],
        "token_ratio": shared["tokens"] / shared["tokens_computed"],
        "positions_computed_unshared": unshared["positions_computed"],
        "positions_computed_shared": shared["positions_computed"],
        **timings,
        "max_abs_reward_difference": float((rewards[True] - rewards[False]).abs().max()),
        "reward_scale": float(rewards[False].abs().max()),
    }
    if device == "cuda":
        wall, _, packed = timed(lambda: score_sequences(model, sequences, layout="auto", share_prompts=False))
        result["seconds_auto_unshared"] = wall
        result["max_abs_reward_difference_auto"] = float((rewards[True] - packed).abs().max())
    return result


def compare_training(model, pair_ids, *, max_tokens: int, repeats: int, layers: int | None) -> dict:
    """A pair-training step — forward, Bradley-Terry loss and backward over every pair, accumulated
    over micro-batches — with each pair one row ``[prompt | chosen | rejected]``
    (:class:`hsrm.data.collators.SharedPromptPairCollator`) and with its sides as two padded rows
    (:class:`hsrm.data.collators.PairwiseCollator`), through the trainer's own reward read and loss.
    Each side is cut into micro-batches the way the trainer cuts them under ``max_tokens_per_batch``
    (:func:`hsrm.packing.sampler.token_budget_batches` over :func:`dataset_item_lengths`, which
    counts a shared pair as one row of the tokens it computes). Alternated, the best of ``repeats``
    kept; the losses and every gradient compared. ``layers`` keeps only the first decoder layers
    (both sides alike) so that a CPU step takes seconds: sharing changes the tokens each layer
    computes, and the count of layers scales both sides alike."""
    import copy

    import datasets

    from hsrm.data.collators import PAD_SEGMENT, PairwiseCollator, SharedPromptPairCollator
    from hsrm.losses import get_pairwise_loss
    from hsrm.modeling import body_and_score_head, read_rewards_in_forward
    from hsrm.packing.sampler import dataset_item_lengths, token_budget_batches
    from hsrm.trainers.pairwise import split_pair_rewards

    model = copy.deepcopy(model)
    body, _ = body_and_score_head(model)
    if layers:
        body.layers = body.layers[:layers]
        body.config.num_hidden_layers = len(body.layers)
    read_rewards_in_forward(model.train())
    rows = [
        {"chosen_ids": pair_ids[i], "rejected_ids": pair_ids[i + 1], "margin": 1.0} for i in range(0, len(pair_ids), 2)
    ]
    dataset = datasets.Dataset.from_list(rows)
    loss_of = get_pairwise_loss("bt")
    collators = {True: SharedPromptPairCollator(pad_id=0), False: PairwiseCollator(pad_id=0)}
    batches = {
        share: [
            collate([rows[i] for i in micro])
            for micro in token_budget_batches(dataset_item_lengths(dataset, shared_prompts=share), max_tokens, "padded")
        ]
        for share, collate in collators.items()
    }

    def step(share: bool):
        model.zero_grad()
        total = 0.0
        for batch in batches[share]:
            chosen, rejected = split_pair_rewards(model, batch)
            loss = loss_of(chosen, rejected, batch["margin"], reduction="sum") / len(rows)
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]

    timings, results = alternate(step, repeats)
    (shared_loss, shared_grads), (loss, grads) = results[True], results[False]
    positions = {share: sum(b["input_ids"].numel() for b in batches[share]) for share in (True, False)}
    tokens = sum(len(s) for s in pair_ids)
    return {
        "pairs": len(rows),
        "layers": len(body.layers),
        "max_tokens_per_batch": max_tokens,
        "micro_batches_unshared": len(batches[False]),
        "micro_batches_shared": len(batches[True]),
        "tokens": tokens,
        "tokens_computed_shared": sum(int((b["segment_ids"] != PAD_SEGMENT).sum()) for b in batches[True]),
        "positions_computed_unshared": positions[False],
        "positions_computed_shared": positions[True],
        **timings,
        "loss_shared": shared_loss,
        "loss_unshared": loss,
        "max_abs_gradient_difference": max(float((a - b).abs().max()) for a, b in zip(shared_grads, grads)),
        "gradient_scale": max(float(g.abs().max()) for g in grads),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="backbone folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="HH-RLHF pairs file")
    parser.add_argument("--pairs", type=int, default=32, help="pairs scored (2 sequences each)")
    parser.add_argument("--groups", type=int, default=8, help="Best-of-8 groups scored (8 sequences each)")
    parser.add_argument("--train-pairs", type=int, default=16, help="pairs in the timed training step")
    parser.add_argument("--train-max-tokens", type=int, default=4096, help="max_tokens_per_batch of that step")
    parser.add_argument(
        "--train-layers", type=int, default=8, help="decoder layers kept for the training step (0 = all)"
    )
    parser.add_argument("--max-length", type=int, default=1024, help="tokens kept per sequence, cut from the left")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--repeats", type=int, default=2, help="timings per side; the best is kept")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true", help="8 pairs, 2 groups, one timing: about a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.groups, args.repeats, args.train_pairs = 8, 2, 1, 4

    from transformers.utils import logging as hf_logging

    from hsrm.modeling import build_reward_model, pick_device, torch_dtype

    hf_logging.set_verbosity_error()  # the fresh score head's "newly initialized" notice
    device = pick_device(None)
    torch.manual_seed(args.seed)
    model, tokenizer = build_reward_model(args.model, num_labels=1, dtype=torch_dtype(args.dtype))
    model.to(device).eval()
    result = {
        "model": model.config.name_or_path,
        "data": args.data,
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
    }
    scored = workloads(
        tokenizer, Path(args.data), max(args.pairs, args.train_pairs), args.groups, args.max_length, args.seed
    )
    training_pairs = scored["pairs"][: 2 * args.train_pairs]  # the first pairs scored, trained on
    scored["pairs"] = scored["pairs"][: 2 * args.pairs]
    for name, sequences in scored.items():
        result[name] = compare(model, sequences, batch_size=args.batch_size, repeats=args.repeats, device=device.type)
        row = result[name]
        print(
            f"{name:>10}: {row['sequences']} sequences, {row['shared_groups']} shared groups; tokens "
            f"{row['tokens']} → {row['tokens_computed_shared']} ({row['token_ratio']:.2f}× fewer; with padding "
            f"{row['positions_computed_unshared']} → {row['positions_computed_shared']}); "
            f"time {row['seconds_unshared']:.1f} s → {row['seconds_shared']:.1f} s ({row['speedup']:.2f}× faster; "
            f"CPU time {row['cpu_seconds_unshared']:.1f} s → {row['cpu_seconds_shared']:.1f} s, "
            f"{row['cpu_speedup']:.2f}×); "
            f"max |Δreward| {row['max_abs_reward_difference']:.2e} (rewards up to {row['reward_scale']:.2f})"
            + (f"; fallback: {row['fallback']}" if row["fallback"] else ""),
            flush=True,
        )
    row = result["pair_training_step"] = compare_training(
        model,
        training_pairs,
        max_tokens=args.train_max_tokens,
        repeats=args.repeats,
        layers=args.train_layers or None,
    )
    print(
        f"pair training step: {row['pairs']} pairs, {row['layers']} layers, micro-batches of ≤ "
        f"{row['max_tokens_per_batch']} tokens ({row['micro_batches_unshared']} → {row['micro_batches_shared']}); "
        f"tokens {row['tokens']} → {row['tokens_computed_shared']} "
        f"({row['tokens'] / row['tokens_computed_shared']:.2f}× fewer; with padding "
        f"{row['positions_computed_unshared']} → {row['positions_computed_shared']}); "
        f"time {row['seconds_unshared']:.1f} s → {row['seconds_shared']:.1f} s ({row['speedup']:.2f}× faster; "
        f"CPU time {row['cpu_seconds_unshared']:.1f} s → {row['cpu_seconds_shared']:.1f} s, "
        f"{row['cpu_speedup']:.2f}×); loss {row['loss_unshared']:.6f} vs {row['loss_shared']:.6f}, max |Δgradient| "
        f"{row['max_abs_gradient_difference']:.2e} (gradients up to {row['gradient_scale']:.2e})",
        flush=True,
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
