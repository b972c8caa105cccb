"""What one SmolLM2-135M batch costs on CPU: scoring, full training, and `train_top_layers` (the demo's sizes).

    OMP_NUM_THREADS=2 python bench/cpu_step_cost.py [--model DIR] [--batch 8] [--length 256] [--top 4 2]

Random token ids (the cost does not depend on the text), fp32, AdamW. After one warm-up batch each
figure is the mean of ``--repeats`` batches. Prints one line per case and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def seconds_per_call(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, optimizer state
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="reward-model or backbone folder (default: the embedded SmolLM2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--top", type=int, nargs="*", default=[4, 2], help="train_top_layers values to time")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from hsrm.default_model import default_model_path
    from hsrm.modeling import build_reward_model, freeze_lower_layers, reward_outputs

    torch.set_num_threads(args.threads)
    model, _ = build_reward_model(args.model or default_model_path())
    ids = torch.randint(100, model.config.vocab_size - 1, (args.batch, args.length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    tokens = args.batch * args.length
    rows = []

    def record(case: str, seconds: float) -> None:
        rows.append(
            {"case": case, "seconds_per_batch": round(seconds, 3), "tokens_per_second": round(tokens / seconds)}
        )
        print(f"{case:<40} {seconds:7.2f} s/batch {tokens / seconds:7.0f} tokens/s", flush=True)

    model.eval()
    with torch.no_grad():
        record("scoring (forward, no_grad)", seconds_per_call(lambda: reward_outputs(model, batch), args.repeats))
    model.train()

    def train_step(optimizer):
        def step():
            reward_outputs(model, batch).sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    for top in [None, *args.top]:
        if top is None:
            for parameter in model.parameters():
                parameter.requires_grad_(True)
        else:
            freeze_lower_layers(model, top)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-7)
        record(
            "training, every weight" if top is None else f"training, train_top_layers={top}",
            seconds_per_call(train_step(optimizer), args.repeats),
        )
    print(
        json.dumps(
            {
                "bench": "cpu_step_cost",
                "batch": args.batch,
                "length": args.length,
                "threads": args.threads,
                "torch": torch.__version__,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
