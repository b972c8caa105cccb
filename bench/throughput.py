"""Training and scoring throughput: hsrm's packed pairwise trainer against TRL's RewardTrainer (issue 8).

One run, one GPU, one JSON:

    python bench/throughput.py --steps 30 --output runs/bench/throughput.json
    OMP_NUM_THREADS=2 .venv/bin/python bench/throughput.py --model-shape tiny --steps 3 --device cpu   # smoke, seconds

Setting (anchors.md): a random-initialised Llama-3.2-1B-shaped sequence classifier (1.24 B
parameters, bf16 on CUDA), synthetic pre-tokenized pairs with heavy-tailed lengths (log-normal,
prompt median 120 tokens, responses median 300, about 1,134 real tokens per pair), gradient
checkpointing on in both trainers. TRL 1.16's ``RewardTrainer`` takes 8 pairs per step padded to
the longest sequence (sdpa); hsrm's ``PairwiseRewardTrainer`` packs each micro-batch into one row
(``padding_free``) filled up to ``--max-tokens`` tokens (``max_tokens_per_batch``), once per
attention path in ``--attn``. Reported per run: real (non-pad) tokens/s over the steps after
``--warmup``, MFU = 6·N·tokens/s ÷ the GPU's dense bf16 peak (N = all parameters, as in
anchors.md), peak memory; then the ratio of the best hsrm run to TRL and whether issue 8's targets
are met. Scoring: the engine every hsrm verb scores with (``hsrm.engine.score_sequences``), padded
(length-sorted) and packed, against a plain padded transformers loop (fixed batches in input order,
the model's own pad-id pooling) on the same sequences, with the ratios and the largest reward
difference between them.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from hsrm.engine import choose_layout, packing_discrepancy, score_sequences
from hsrm.packing.attention import VARLEN_ATTENTION, register_varlen_attention, varlen_kernel
from hsrm.trainers.pairwise import PairwiseRewardTrainer

# Llama-3.2-1B's shape (config.json of meta-llama/Llama-3.2-1B), without its weights.
SHAPES = {
    "llama-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
}
# Dense bf16 peak, FLOP/s (vendor data sheets; the SXM parts, as anchors.md uses for the H100).
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12}
PAIRS_PER_STEP_TRL = 8  # anchors.md's TRL setting
PAD_ID = 0
FIRST_TOKEN_ID = 16  # synthetic ids start above the special tokens, so none is ever the pad id


# ------------------------------------------------------------------------------------------- data
def lognormal_length(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, int(round(median * math.exp(rng.gauss(0.0, sigma))))))


def synthetic_pairs(
    n: int,
    vocab_size: int,
    *,
    prompt_median: float = 120,
    response_median: float = 300,
    sigma: float = 0.775,
    max_length: int = 2048,
    seed: int = 0,
) -> list[dict]:
    """Pre-tokenized pairs with anchors.md's heavy-tailed lengths: prompt and both responses are
    log-normal. σ = 0.775 gives E[len] = median·e^{σ²/2} = 1.35·median, i.e. 2·(120 + 300)·1.35 ≈
    1,134 real tokens per pair (chosen and rejected each carry the prompt). Sequences longer than
    ``max_length`` lose prompt tokens from the left, as hsrm's encoder does."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = [
            rng.randrange(FIRST_TOKEN_ID, vocab_size)
            for _ in range(lognormal_length(rng, prompt_median, sigma, max_length))
        ]
        sides = []
        for _ in range(2):
            response = [
                rng.randrange(FIRST_TOKEN_ID, vocab_size)
                for _ in range(lognormal_length(rng, response_median, sigma, max_length))
            ]
            sides.append((prompt + response)[-max_length:])
        pairs.append({"chosen_ids": sides[0], "rejected_ids": sides[1], "margin": 1.0})
    return pairs


# ------------------------------------------------------------------------------------------ model
def build_model(shape: str, attn: str, dtype: torch.dtype, device: str, seed: int):
    """A random-initialised Llama sequence classifier (one output), built on ``device``."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    config = LlamaConfig(
        **SHAPES[shape], num_labels=1, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, use_cache=False
    )
    if attn == VARLEN_ATTENTION:
        register_varlen_attention()  # hsrm's own path must be known to transformers before the model asks for it
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype, attn_implementation=attn)
    return model


def bench_tokenizer(folder: Path):
    """Only TRL needs a tokenizer (for the pad token); the data are already token ids."""
    from hsrm.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(folder)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(PAD_ID)
    return tokenizer


def peak_flops(device: str) -> tuple[str, float | None]:
    if device != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name()
    for key, flops in PEAK_BF16.items():  # "H100 PCIe" is checked before "H100"
        if key in name:
            return name, flops
    return name, None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------- training
class StepClock(TrainerCallback):
    """Wall time and real tokens at the end of every optimizer step (the GPU drained first)."""

    def __init__(self, device: str, tokens_seen):
        self.device, self.tokens_seen, self.marks = device, tokens_seen, []

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.marks.append((time.perf_counter(), self.tokens_seen()))


class CountingPairwiseTrainer(PairwiseRewardTrainer):
    """hsrm's trainer, counting real tokens: a packed row holds no pad token, so its width is the
    count and no device sync is needed."""

    tokens_seen = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.tokens_seen += (
                inputs["input_ids"].shape[1] if "last_index" in inputs else int(inputs["attention_mask"].sum())
            )
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def measure(trainer, clock: StepClock, warmup: int, steps: int, device: str, n_params: int, peak: float | None) -> dict:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    t0, k0 = clock.marks[warmup - 1] if warmup else (start, 0)  # timing starts when the warm-up steps end
    t1, k1 = clock.marks[warmup + steps - 1]
    tokens_per_s = (k1 - k0) / (t1 - t0)
    result = {
        "real_tokens_per_s": round(tokens_per_s, 1),
        "measured_steps": steps,
        "warmup_steps": warmup,
        "real_tokens_measured": int(k1 - k0),
        "seconds_measured": round(t1 - t0, 3),
        "seconds_total": round(total, 2),
        "real_tokens_per_step": round((k1 - k0) / steps, 1),
        "mfu": round(6 * n_params * tokens_per_s / peak, 4) if peak else None,
    }
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result["first_loss"], result["last_loss"] = (losses[0], losses[-1]) if losses else (None, None)
    return result


def common_args(args, workdir: str, device: str, dtype: torch.dtype, checkpointing: bool = True) -> dict:
    return dict(
        output_dir=workdir,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        gradient_checkpointing=checkpointing,
        bf16=dtype == torch.bfloat16,
        logging_steps=max(1, args.warmup + args.steps),
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
    )


def run_trl(args, pairs, tokenizer, device, dtype, peak) -> dict:
    import datasets
    from trl import RewardConfig, RewardTrainer

    model = build_model(args.model_shape, args.trl_attn, dtype, device, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    data = datasets.Dataset.from_dict(
        {"chosen_ids": [p["chosen_ids"] for p in pairs], "rejected_ids": [p["rejected_ids"] for p in pairs]}
    )
    with tempfile.TemporaryDirectory() as workdir:
        config = RewardConfig(
            **common_args(args, workdir, device, dtype), per_device_train_batch_size=PAIRS_PER_STEP_TRL, max_length=None
        )  # None: TRL would otherwise silently drop pairs over 1,024 tokens
        trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
        clock = StepClock(
            device, lambda trainer=trainer: trainer._total_train_tokens
        )  # bound now: trainer is deleted later
        trainer.add_callback(clock)
        result = measure(trainer, clock, args.warmup, args.steps, device, n_params, peak)
    result.update(
        trainer="trl.RewardTrainer",
        attn_implementation=args.trl_attn,
        pairs_per_step=PAIRS_PER_STEP_TRL,
        gradient_checkpointing=True,
    )
    del trainer, model
    release(device)
    return result


def run_hsrm(args, pairs, tokenizer, device, dtype, peak, attn: str) -> dict:
    import datasets

    from hsrm.config import RewardConfig
    from hsrm.data.collators import PackedPairwiseCollator
    from hsrm.packing import check_packing_support
    from hsrm.trainers.pairwise import pairwise_metrics

    model = build_model(args.model_shape, attn, dtype, device, args.seed)
    check_packing_support(model)
    n_params = sum(p.numel() for p in model.parameters())
    data = datasets.Dataset.from_list(pairs)
    with tempfile.TemporaryDirectory() as workdir:
        checkpointing = args.hsrm_checkpointing == "on"
        config = RewardConfig(
            **common_args(args, workdir, device, dtype, checkpointing),
            objective="bt",
            padding_free=True,
            max_tokens_per_batch=args.max_tokens,
            attn_implementation=attn,
        )
        # What hsrm.train.make_trainer builds for padding_free, with a token counter on top.
        trainer = CountingPairwiseTrainer(
            model=model,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            data_collator=PackedPairwiseCollator(PAD_ID),
            compute_metrics=pairwise_metrics,
        )
        clock = StepClock(device, lambda trainer=trainer: trainer.tokens_seen)  # bound now: trainer is deleted later
        trainer.add_callback(clock)
        result = measure(trainer, clock, args.warmup, args.steps, device, n_params, peak)
    result.update(
        trainer="hsrm.PairwiseRewardTrainer",
        attn_implementation=attn,
        padding_free=True,
        max_tokens_per_batch=args.max_tokens,
        gradient_checkpointing=args.hsrm_checkpointing == "on",
    )
    del trainer, model
    release(device)
    return result


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- scoring
@torch.inference_mode()
def plain_padded_scores(model, sequences, batch_size: int, device: str) -> torch.Tensor:
    """What a user writes without hsrm: fixed batches in input order, right padding, the model's own
    forward (which pools at the last non-pad token)."""
    from hsrm.data.render import pad_sequences

    out = []
    for start in range(0, len(sequences), batch_size):
        ids, mask = pad_sequences(sequences[start : start + batch_size], PAD_ID, "right")
        out.append(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().cpu())
    return torch.cat(out)


def timed(fn, device: str, repeats: int = 1):
    """(result, fastest wall time of ``repeats`` runs): the fastest run is the least disturbed by
    anything else on the machine."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        value = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return value, best


def run_scoring(args, sequences, device, dtype, attn: str) -> dict:
    """The engine every hsrm verb scores with (``hsrm.engine.score_sequences``), in both layouts,
    against a plain padded transformers loop on the same sequences and model."""
    model = build_model(args.model_shape, "sdpa", dtype, device, args.seed).eval()
    tokens = sum(len(s) for s in sequences)
    warm = sequences[: max(2, len(sequences) // 16)]
    plain_padded_scores(model, warm, args.score_batch_size, device)
    plain, plain_s = timed(
        lambda model=model: plain_padded_scores(model, sequences, args.score_batch_size, device),
        device,
        args.score_repeats,
    )
    padded, padded_s = timed(
        lambda model=model: score_sequences(
            model, sequences, layout="padded", pad_id=PAD_ID, batch_size=args.score_batch_size
        ),
        device,
        args.score_repeats,
    )
    model.set_attn_implementation(attn)
    score_sequences(
        model, warm, layout="packed", max_tokens=args.score_max_tokens
    )  # compiles flex attention, if chosen
    packed, packed_s = timed(
        lambda model=model: score_sequences(model, sequences, layout="packed", max_tokens=args.score_max_tokens),
        device,
        args.score_repeats,
    )
    result = {
        "sequences": len(sequences),
        "real_tokens": tokens,
        "repeats_fastest_counts": args.score_repeats,
        "auto_layout": choose_layout(model, "auto"),
        "plain_padded": {
            "batch_size": args.score_batch_size,
            "attn_implementation": "sdpa",
            "real_tokens_per_s": round(tokens / plain_s, 1),
            "seconds": round(plain_s, 3),
        },
        "engine_padded": {
            "batch_size": args.score_batch_size,
            "attn_implementation": "sdpa",
            "real_tokens_per_s": round(tokens / padded_s, 1),
            "seconds": round(padded_s, 3),
            "max_abs_reward_difference": float((plain - padded).abs().max()),
        },
        "engine_packed": {
            "max_tokens": args.score_max_tokens,
            "attn_implementation": attn,
            "real_tokens_per_s": round(tokens / packed_s, 1),
            "seconds": round(packed_s, 3),
            "max_abs_reward_difference": float((plain - packed).abs().max()),
        },
        "ratio_engine_padded_over_plain": round(plain_s / padded_s, 3),
        "ratio_engine_packed_over_plain": round(plain_s / packed_s, 3),
        "max_abs_reward_difference": float((plain - packed).abs().max()),
    }
    check = sequences[:8]
    result["packing_check_8_sequences"] = {k: round(v, 6) for k, v in packing_discrepancy(model, check, PAD_ID).items()}
    print(
        f"scoring {len(sequences)} sequences ({tokens} real tokens): plain padded loop "
        f"{result['plain_padded']['real_tokens_per_s']:,.0f} tokens/s | engine padded "
        f"{result['engine_padded']['real_tokens_per_s']:,.0f} ({result['ratio_engine_padded_over_plain']:.2f}x) | "
        "engine packed "
        f"[{attn}] {result['engine_packed']['real_tokens_per_s']:,.0f} "
        f"({result['ratio_engine_packed_over_plain']:.2f}x) | "
        f"auto picks {result['auto_layout']}",
        flush=True,
    )
    del model
    release(device)
    return result


# ------------------------------------------------------------------------------------------- main
def default_attention_paths(device: str) -> list[str]:
    """Packed paths worth timing here: PyTorch's own varlen FlashAttention and flex attention on a
    GPU (plus flash-attn's when the package is installed); sdpa on CPU."""
    if device != "cuda":
        return ["sdpa"]
    paths = [VARLEN_ATTENTION] if varlen_kernel() is not None else []
    paths.append("flex_attention")
    try:
        import flash_attn  # noqa: F401

        paths.append("flash_attention_2")
    except ImportError:
        pass
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps per run")
    parser.add_argument(
        "--warmup", type=int, default=None, help="steps before timing starts (default 5 on CUDA, 1 on CPU)"
    )
    parser.add_argument("--model-shape", choices=sorted(SHAPES), default="llama-1b")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--attn", default="auto", help="comma list of hsrm attention paths to time (auto: per device)")
    parser.add_argument("--trl-attn", default="sdpa")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="hsrm token budget per micro-batch (default 16384; tiny 1024)"
    )
    parser.add_argument(
        "--hsrm-checkpointing",
        choices=["on", "off"],
        default="on",
        help="off: the stretch run (any memory); TRL, the baseline, always checkpoints",
    )
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--score-sequences", type=int, default=None, help="sequences scored (default 2048; tiny 64)")
    parser.add_argument("--score-batch-size", type=int, default=16)
    parser.add_argument("--score-repeats", type=int, default=2, help="scoring passes per method; the fastest counts")
    parser.add_argument(
        "--score-max-tokens", type=int, default=None, help="tokens per packed scoring row (default 32768; tiny 1024)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    tiny = args.model_shape == "tiny"
    args.warmup = args.warmup if args.warmup is not None else (5 if device == "cuda" else 1)
    args.max_tokens = args.max_tokens or (1024 if tiny else 16384)
    args.score_max_tokens = args.score_max_tokens or (1024 if tiny else 32768)
    args.score_sequences = args.score_sequences or (64 if tiny else 2048)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    attn_paths = default_attention_paths(device) if args.attn == "auto" else args.attn.split(",")
    name, peak = peak_flops(device)

    # Tiny: a tenth of the lengths, so the CPU smoke run takes seconds.
    scale = 0.1 if tiny else 1.0
    vocab = SHAPES[args.model_shape]["vocab_size"]
    steps_total = args.warmup + args.steps
    mean_pair = 1134 * scale
    n_pairs = int(1.25 * steps_total * max(PAIRS_PER_STEP_TRL, args.max_tokens / mean_pair)) + 16
    pairs = synthetic_pairs(
        n_pairs,
        vocab,
        prompt_median=120 * scale,
        response_median=300 * scale,
        max_length=2048 if not tiny else 512,
        seed=args.seed,
    )
    pair_tokens = [len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs]
    # Scoring draws its own pairs when the training set is smaller than --score-sequences.
    score_pairs = (
        pairs
        if 2 * n_pairs >= args.score_sequences
        else synthetic_pairs(
            (args.score_sequences + 1) // 2,
            vocab,
            prompt_median=120 * scale,
            response_median=300 * scale,
            max_length=2048 if not tiny else 512,
            seed=args.seed + 1,
        )
    )
    sequences = [s for p in score_pairs for s in (p["chosen_ids"], p["rejected_ids"])][: args.score_sequences]

    import transformers
    import trl

    result: dict = {
        "bench": "throughput",
        "device": name,
        "peak_bf16_flops": peak,
        "dtype": str(dtype).replace("torch.", ""),
        "model_shape": args.model_shape,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        # On a shared CPU the wall times include waiting for a core: read CPU figures with this.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "data": {
            "pairs": n_pairs,
            "mean_real_tokens_per_pair": round(sum(pair_tokens) / n_pairs, 1),
            "median_real_tokens_per_pair": sorted(pair_tokens)[n_pairs // 2],
            "max_sequence": max(max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs),
            "length_scale": scale,
        },
        "command": "python bench/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = bench_tokenizer(Path(folder))
        runs = {}
        if not args.skip_trl:
            runs["trl"] = run_trl(args, pairs, tokenizer, device, dtype, peak)
            print(json.dumps({"trl": runs["trl"]}), flush=True)
        for attn in attn_paths:
            try:
                runs[f"hsrm_{attn}"] = run_hsrm(args, pairs, tokenizer, device, dtype, peak, attn)
            except Exception as error:  # one failing path must not lose the others' figures
                runs[f"hsrm_{attn}"] = {"error": f"{type(error).__name__}: {error}"[:500]}
                release(device)
            print(json.dumps({f"hsrm_{attn}": runs[f"hsrm_{attn}"]}), flush=True)
    result["training"] = runs
    timed_hsrm = {k: v for k, v in runs.items() if k.startswith("hsrm_") and "real_tokens_per_s" in v}
    best_attn = None
    if timed_hsrm:
        best_key = max(timed_hsrm, key=lambda k: timed_hsrm[k]["real_tokens_per_s"])
        best, best_attn = timed_hsrm[best_key], timed_hsrm[best_key]["attn_implementation"]
        summary = {"best_hsrm_run": best_key, "best_hsrm_attn": best_attn}
        if "trl" in runs:
            trl_run = runs["trl"]
            ratio = best["real_tokens_per_s"] / trl_run["real_tokens_per_s"]
            summary["ratio_hsrm_over_trl"] = round(ratio, 3)
            if device == "cuda":
                summary["targets"] = {
                    "3x_trl": ratio >= 3,
                    "mfu_30pct": (best["mfu"] or 0) >= 0.30,
                    "memory_not_above_trl": best["peak_memory_gib"] <= trl_run["peak_memory_gib"],
                    "stretch_4x_trl": ratio >= 4,
                    "stretch_mfu_40pct": (best["mfu"] or 0) >= 0.40,
                }
        result["summary"] = summary
    result["scoring"] = run_scoring(args, sequences, device, dtype, best_attn or attn_paths[0])
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
