"""`hsrm demo`: the first hour in one command, on the embedded default model and real data.

    hsrm demo --out demo_report            # about 10 minutes on 2 CPU cores
    hsrm demo --out demo_report --quick    # a tiny random model, seconds (used by the tests)

Steps: train a Bradley-Terry reward model on HH-RLHF helpful-base (../shared/data when present),
evaluate it on held-out helpful-online pairs, and pick the best of N responses for a prompt.
Everything lands in a report folder with a markdown summary and the commands to reproduce it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("hsrm.demo")

SHARED_HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf"
BEST_OF_N_PROMPT = [{"role": "user", "content": "How do I make a simple loaf of bread at home?"}]
BEST_OF_N_RESPONSES = [
    "Mix 500 g flour, 350 ml warm water, 7 g yeast and 10 g salt; knead for 10 minutes, let it rise for an hour, "
    "shape it, let it rise again, then bake at 220 °C for about 30 minutes.",
    "Just buy one.",
    "Bread is a food.",
    "Mix flour and water, then bake it.",
]


def find_hh_data(quick: bool, workdir: Path) -> tuple[str, str, str]:
    """(train source, eval source, description): shared HH-RLHF, else a generated set (said so)."""
    base, online = SHARED_HH / "helpful-base.test.jsonl.gz", SHARED_HH / "helpful-online.test.jsonl.gz"
    if base.exists() and online.exists():
        return str(base), str(online), "Anthropic HH-RLHF helpful-base (train) / helpful-online (held out), from ../shared/data"
    logger.warning("../shared/data/hh_rlhf not found: falling back to a GENERATED toy preference set")
    import random

    rng = random.Random(0)
    good = ["Here is a clear, step-by-step answer with the details you asked for.", "Thank you for asking: the answer is below."]
    bad = ["no", "I don't know, figure it out."]
    for name, n in (("train", 200), ("eval", 100)):
        with open(workdir / f"generated_{name}.jsonl", "w") as handle:
            for i in range(n):
                handle.write(json.dumps({"prompt": f"Question {i}?", "chosen": rng.choice(good), "rejected": rng.choice(bad)}) + "\n")
    return str(workdir / "generated_train.jsonl"), str(workdir / "generated_eval.jsonl"), "GENERATED toy pairs (no real data found)"


def score_responses(model_dir: str, prompt, responses) -> list[float]:
    import torch

    from .data.render import encode, pad_sequences
    from .modeling import load_reward_model, reward_forward

    model, tokenizer = load_reward_model(model_dir)
    ids = [encode(tokenizer, prompt, r, 2048) for r in responses]
    with torch.no_grad():
        return reward_forward(model.eval(), *pad_sequences(ids, tokenizer.pad_token_id))[:, 0].tolist()


def run_demo(out: Path, quick: bool = False) -> dict[str, Any]:
    from .config import load_recipe
    from .train import run_training

    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train_src, eval_src, data_note = find_hh_data(quick, out)
    if quick:
        from .testing import build_tiny_llama

        model = str(build_tiny_llama(out / "tiny-model"))
        settings = {"max_steps": 10, "max_train_samples": 64, "max_eval_samples": 32, "max_length": 128, "learning_rate": 1e-3}
    else:
        from .modeling import default_model_path

        model = default_model_path()
        # The setting of the TRL baseline in shared/docs/anchors.md, at a demo's length.
        settings = {"max_steps": 60, "max_train_samples": 240, "max_eval_samples": 200, "max_length": 320, "learning_rate": 2e-5}
    cfg = load_recipe(None, {
        "model_name_or_path": model, "objective": "bt", "train_data": train_src, "eval_data": eval_src, "eval_split": "train",
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "warmup_steps": 10 if not quick else 0,
        "lr_scheduler_type": "constant_with_warmup", "logging_steps": 5, "on_bad_rows": "skip", "save_strategy": "no", "use_cpu": True,
        "output_dir": str(out / "reward-model"), **settings})
    summary = run_training(cfg)
    accuracy = summary["eval_metrics"].get("eval_accuracy")

    # Best-of-N with the trained model.
    rewards = score_responses(summary["output_dir"], BEST_OF_N_PROMPT, BEST_OF_N_RESPONSES)
    best = max(range(len(rewards)), key=rewards.__getitem__)
    report = {
        "data": data_note, "model": model, "steps": summary["global_step"], "train_loss": summary["train_loss"],
        "heldout_pairs": summary["data"].get("eval", {}).get("load"), "heldout_accuracy": accuracy,
        "best_of_n": {"rewards": rewards, "best_index": best}, "wall_time_s": round(time.time() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# hsrm demo report", "", f"- data: {data_note}", f"- backbone: `{model}`",
        f"- training: {summary['global_step']} steps of Regular BT, train loss {summary['train_loss']:.4f}",
        f"- held-out pairwise accuracy: **{accuracy:.3f}** ({summary['data'].get('eval', {}).get('load')})",
        f"- wall time: {report['wall_time_s']} s", "", "## Best-of-N", "", "| # | reward | response |", "|---|---|---|",
        *[f"| {i}{' (best)' if i == best else ''} | {r:.3f} | {BEST_OF_N_RESPONSES[i][:70]} |" for i, r in enumerate(rewards)],
        "", "## Reproduce", "", "```", f"hsrm demo --out {out}" + (" --quick" if quick else ""), "```",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="hsrm demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_report", help="report folder (default: demo_report)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, seconds; for smoke tests")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_demo(Path(args.out), quick=args.quick)
