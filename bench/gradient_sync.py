"""Gradient synchronisation per optimizer step on 2 gloo processes: the per-parameter all-reduce hsrm
ran before issue 30 against DDP's own reducer, on the same model and batch, in one run.

    OMP_NUM_THREADS=1 python bench/gradient_sync.py [--layers 4] [--hidden 256] [--batch 8] [--length 128] [--steps 5]

Before: the reward was read beneath DDP's wrapper, so DDP's reducer never armed, and after backward
one blocking ``all_reduce`` ran per trainable parameter tensor (no buckets, nothing overlapped with
the backward pass). After: the Trainer calls the wrapped model (``hsrm.modeling.read_rewards_in_forward``)
and DDP all-reduces ~25 MB buckets as their gradients become ready during backward. Collectives are
counted as they are issued (the loop's calls; DDP's comm hook, once per bucket). Each figure is the
median of ``--steps`` steps after one warm-up step, the two cases interleaved; both processes time
the same steps, rank 0 prints.
Prints one line per case, the ratio, and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def build(folder: str):
    from hsrm.modeling import build_reward_model

    model, _ = build_reward_model(folder)
    return model.train()


def per_parameter_all_reduce(model) -> int:
    """What hsrm's trainers did after backward until issue 30 (trainers/base.py, removed)."""
    world, calls = dist.get_world_size(), 0
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad.div_(world)
        calls += 1
    return calls


def worker(rank: int, args, port: int, folder: str, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from hsrm.modeling import read_rewards_in_forward, reward_outputs

    torch.manual_seed(rank)
    ids = torch.randint(10, 390, (args.batch, args.length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cases = {}

    # before: the reward read beneath the wrapper, then one all_reduce per parameter
    model = build(folder)
    tensors = sum(p.requires_grad for p in model.parameters())
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / 2**20

    def before_step() -> int:
        reward_outputs(model, batch).sum().backward()
        calls = per_parameter_all_reduce(model)
        model.zero_grad(set_to_none=True)
        return calls

    # after: DDP's reducer, armed by calling the wrapped model
    ddp = torch.nn.parallel.DistributedDataParallel(read_rewards_in_forward(build(folder)))
    buckets = {"calls": 0}

    def counting_hook(state, bucket):
        buckets["calls"] += 1
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)

    def after_step() -> int:
        buckets["calls"] = 0
        ddp(**batch).logits.sum().backward()
        ddp.zero_grad(set_to_none=True)
        return buckets["calls"]

    steps = {"per-parameter all_reduce (before)": before_step, "DDP reducer (after)": after_step}
    times: dict[str, list[float]] = {name: [] for name in steps}
    calls: dict[str, int] = {}
    for step in steps.values():
        step()  # warm-up: allocator, DDP's bucket rebuild after the first iteration
    for _ in range(args.steps):  # interleaved, so a change in the machine's load hits both alike
        for name, step in steps.items():
            dist.barrier()
            start = time.perf_counter()
            calls[name] = step()
            dist.barrier()
            times[name].append(time.perf_counter() - start)
    for name in steps:
        cases[name] = {"collectives_per_step": calls[name], "seconds_per_step": statistics.median(times[name])}
    if rank == 0:
        results.update(cases=cases, parameter_tensors=tensors, gradient_megabytes=round(megabytes, 1))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from hsrm.tiny import build_tiny_llama

    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        build_tiny_llama(folder, hidden_size=args.hidden, num_layers=args.layers, seed=0)
        results = manager.dict()
        mp.spawn(worker, args=(args, port, folder, results), nprocs=2, join=True)
        results = dict(results)
    before, after = results["cases"]["per-parameter all_reduce (before)"], results["cases"]["DDP reducer (after)"]
    model = f"{args.layers} layers × {args.hidden} hidden, {results['parameter_tensors']} trainable tensors"
    shape = f"{results['gradient_megabytes']} MB of gradients; batch {args.batch} × {args.length} tokens"
    print(f"model: {model}, {shape}, 2 gloo processes")
    for name, case in results["cases"].items():
        print(f"{name:<36} {case['collectives_per_step']:5d} collectives/step {case['seconds_per_step']:8.3f} s/step")
    ratio = before["seconds_per_step"] / after["seconds_per_step"]
    fewer = before["collectives_per_step"] / after["collectives_per_step"]
    print(f"collectives: {fewer:.0f}x fewer; step time: {ratio:.2f}x (before / after)")
    print(json.dumps({"bench": "gradient_sync", **vars(args), **results, "speedup": round(ratio, 3)}))


if __name__ == "__main__":
    main()
