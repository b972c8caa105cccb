"""Throughput of `hsrm serve` over loopback HTTP against the in-process engine on the same sequences (issue 20).

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/serve.py [--requests 96] [--concurrency 1,4,16]
                                                                   [--rounds 2] [--output runs/bench/serve.json]

On a machine that other jobs load, ``OMP_NUM_THREADS=1`` (two torch threads that wait for each
other's core collapsed to a tenth of the speed) and ``--requests 48`` (docs/scoring.md's run).

Goals, as ratios of the server's real tokens/s to the in-process engine's on 2 CPU cores: at least
0.7 with 1 client and 0.85 with 4 (issue 33), 0.88 with 16 (issue 20 asked for 0.8; 0.88 is what
it reached, not to be lost). Each level prints its ratio and its goal; the JSON (printed last and
written to ``--output``) holds them under ``goals``.

Model: a random Llama reward model built by ``hsrm.tiny.build_tiny_llama`` with hidden size 256
and 4 layers (2.5 M parameters; the test suite's 400-token BPE tokenizer and ChatML template),
fp32 on the CPU. It is about the smallest model whose forward passes clearly outweigh a request's
HTTP, JSON and tokenization work (with the tests' 30 k-parameter model the bench would time the
HTTP stack), it builds offline in a second and its rewards are reproducible; the embedded
SmolLM2-135M costs ~50× more per token, so each level would take many minutes for the same ratio.

Load: ``--requests`` requests of ``--pairs-per-request`` (prompt, response) pairs, lengths drawn
log-uniformly (prompts 8–48 words, responses 8–192: 217 tokens per pair on average, 566 at most),
built once with a fixed seed and JSON-encoded in advance. Per concurrency level (1, 4, 16 client
threads, one keep-alive connection each; a level ends after all requests or ``--time-limit-s``),
``--rounds`` rounds alternate the in-process engine — ``RewardScorer.score_ids`` on all the
sequences in one call: the engine's ``auto`` layout (padded on CPU), batches of 8 length-sorted
across all of them — and the server (``hsrm serve`` in a subprocess with the same batch size and
max_length, its other limits at their defaults). Each side keeps its best round (the one least
disturbed by other load on a shared machine). Real tokens are the tokens of the answered sequences
(no padding); latency is per request, send to answer; every reward the server returns is compared
with the in-process one. Prints one line per level and a final JSON line. Wall time is what the
ratios use; each round's real tokens per CPU second of each side are recorded beside them (the
server process's, from /proc, and the in-process call's), because on a machine shared with other
jobs a round's wall time also counts their load.

Why the server trailed the engine at low concurrency (issue 33): each answer's body waited 40 ms
for the client's delayed ACK of its headers (the listening socket was made with protocol 0, so
asyncio never set TCP_NODELAY on its connections; now IPPROTO_TCP); a batch holds only what was
waiting, so one client's 8 sequences were padded to their longest (about twice their real tokens),
whereas the in-process call sorts all the sequences by length before batching them (2 % padding);
and with one client every request also waited the whole ``--max-wait-ms`` for company that could
not come. The server now waits only while another request is being read, and on the CPU cuts a
merge where the lengths jump (``hsrm.engine.padding_runs``, which every CPU engine call now uses).
The client threads here use ``http.client`` with Nagle on (its default), the harder case; requests
(urllib3) and aiohttp, which OpenRLHF and verl use, set TCP_NODELAY on their side.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

GOALS = {1: 0.7, 4: 0.85, 16: 0.88}  # clients → least ratio of server to in-process real tokens/s
WORDS = (
    "the quick brown fox jumps over lazy dog a helpful assistant answers question clearly user asks how to bake "
    "bread flour water yeast salt kneading baking response one is better because it correct concise polite two "
    "wrong rude numbers 0 1 2 3 4 5 6 7 8 9 good bad great terrible yes no maybe please thank you sorry python "
    "code def return import class for while if else print list dict string integer float"
).split()


def make_requests(count: int, pairs_per_request: int, seed: int, max_prompt_words: int, max_response_words: int):
    rng = random.Random(seed)

    def text(longest: int) -> str:
        n = int(round(8 * (longest / 8) ** rng.random()))  # log-uniform in [8, longest]: mostly short, a long tail
        return " ".join(rng.choices(WORDS, k=n))

    return [
        {
            "prompts": [text(max_prompt_words) for _ in range(pairs_per_request)],
            "responses": [text(max_response_words) for _ in range(pairs_per_request)],
        }
        for _ in range(count)
    ]


def in_process_tokens_per_s(scorer, sequences) -> tuple[float, list[float], float]:
    """The engine on all sequences in one call (length-sorted across all of them): tokens/s, rewards
    and the CPU seconds the call took."""
    start, cpu = time.perf_counter(), time.process_time()
    rewards = scorer.score_ids(sequences).tolist()
    return sum(len(s) for s in sequences) / (time.perf_counter() - start), rewards, time.process_time() - cpu


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def get_json(server, path: str) -> dict:
    with urllib.request.urlopen(server.url + path, timeout=30) as response:
        return json.loads(response.read())


def run_level(server, bodies: list[bytes], concurrency: int, time_limit_s: float) -> dict:
    """Send ``bodies`` from ``concurrency`` threads (one keep-alive connection each); answers by index."""
    next_index, lock = iter(range(len(bodies))), threading.Lock()
    answers: dict[int, list[float]] = {}
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit_s

    def client():
        connection = http.client.HTTPConnection(*server.host_port, timeout=300)
        while time.monotonic() < deadline:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            start = time.perf_counter()
            connection.request("POST", "/score", body=bodies[index], headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - start
            with lock:
                if response.status == 200:
                    answers[index] = json.loads(payload)["rewards"]
                    latencies.append(elapsed)
                else:
                    errors.append(f"{response.status}: {payload[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - start, "answers": answers, "latencies": latencies, "errors": errors}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    parser.add_argument("--pairs-per-request", type=int, default=8)
    parser.add_argument("--concurrency", default="1,4,16", help="client threads, one level each")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny Llama reward model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-prompt-words", type=int, default=48)
    parser.add_argument("--max-response-words", type=int, default=192)
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per sequence, server and in-process alike")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="sequences per padded forward, server and in-process alike"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="per level: in-process then server, this many times; each keeps its best"
    )
    parser.add_argument("--time-limit-s", type=float, default=120.0, help="per level: no new request after this")
    parser.add_argument(
        "--max-batch-tokens", type=int, default=None, help="the server's merge budget (default: the server's own)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/bench/serve.json", help="also write the JSON here ('' not at all)")
    args = parser.parse_args(argv)

    import torch

    from hsrm.scoring import RewardScorer
    from hsrm.testing import ServeProcess
    from hsrm.tiny import build_tiny_llama

    levels = [int(c) for c in args.concurrency.split(",")]
    threads = int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    requests = make_requests(
        args.requests, args.pairs_per_request, args.seed, args.max_prompt_words, args.max_response_words
    )
    bodies = [json.dumps(r).encode() for r in requests]
    with tempfile.TemporaryDirectory(prefix="hsrm-bench-serve-") as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "rm", hidden_size=args.hidden, num_layers=args.layers)
        scorer = RewardScorer(str(model_dir), batch_size=args.batch_size, max_length=args.max_length, device="cpu")
        parameters = sum(p.numel() for p in scorer.model.parameters())
        per_request = [[scorer.encode(p, r) for p, r in zip(req["prompts"], req["responses"])] for req in requests]
        tokens_of = [sum(len(s) for s in sequences) for sequences in per_request]
        sequences = [s for request_sequences in per_request for s in request_sequences]
        first_tokens_per_s, expected, _ = in_process_tokens_per_s(scorer, sequences)
        expected_of, start = [], 0  # the in-process rewards, split per request
        for request_sequences in per_request:
            expected_of.append(expected[start : start + len(request_sequences)])
            start += len(request_sequences)
        print(
            f"in-process engine: {first_tokens_per_s:,.0f} tokens/s on {len(sequences)} sequences, "
            f"{sum(tokens_of):,} tokens "
            f"({parameters / 1e6:.1f} M parameters, {threads} threads)",
            flush=True,
        )

        flags = ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--device", "cpu"]
        if args.max_batch_tokens is not None:
            flags += ["--max-batch-tokens", str(args.max_batch_tokens)]
        server = ServeProcess(["--model", str(model_dir), *flags])
        results = []
        try:
            for concurrency in levels:
                # Rounds alternate the in-process engine and the server (which idles while the engine
                # runs), and each side keeps its best round: the round least disturbed by other load
                # on the machine, and past the first forward passes on new shapes, which allocate.
                runs, references, reference_cpu = [], [], []
                for _ in range(args.rounds):
                    tokens_per_s, _, cpu = in_process_tokens_per_s(scorer, sequences)
                    references.append(tokens_per_s)
                    reference_cpu.append(cpu)
                    before = get_json(server, "/info")["counts"]
                    cpu_before = cpu_seconds(server.process.pid)
                    level = run_level(server, bodies, concurrency, args.time_limit_s)
                    cpu_after = cpu_seconds(server.process.pid)
                    after = get_json(server, "/info")["counts"]
                    level["server_cpu_s"] = None if cpu_before is None else cpu_after - cpu_before
                    level["batches"] = after["batches"] - before["batches"]
                    level["engine_busy"] = (after["scoring_seconds"] - before["scoring_seconds"]) / level["seconds"]
                    if level["errors"]:
                        raise RuntimeError(f"concurrency {concurrency}: {level['errors'][:3]}")
                    level["tokens"] = sum(tokens_of[i] for i in level["answers"])
                    level["max_reward_difference"] = max(
                        abs(a - b) for i, rewards in level["answers"].items() for a, b in zip(rewards, expected_of[i])
                    )
                    runs.append(level)
                best, reference = max(runs, key=lambda run: run["tokens"] / run["seconds"]), max(references)
                row = {
                    "concurrency": concurrency,
                    "requests": len(best["answers"]),
                    "seconds": round(best["seconds"], 3),
                    "requests_per_s": round(len(best["answers"]) / best["seconds"], 2),
                    "tokens_per_s": round(best["tokens"] / best["seconds"], 1),
                    "p50_ms": round(1000 * percentile(best["latencies"], 50), 1),
                    "p99_ms": round(1000 * percentile(best["latencies"], 99), 1),
                    "requests_per_batch": round(len(best["answers"]) / max(best["batches"], 1), 2),
                    "engine_busy": round(
                        best["engine_busy"], 3
                    ),  # share of the level's wall time the server spent in the engine
                    "in_process_tokens_per_s": round(reference, 1),
                    "ratio_to_in_process": round(best["tokens"] / best["seconds"] / reference, 3),
                    "goal": GOALS.get(concurrency),
                    "met": None
                    if concurrency not in GOALS
                    else best["tokens"] / best["seconds"] / reference >= GOALS[concurrency],
                    "max_reward_difference": max(run["max_reward_difference"] for run in runs),
                    "rounds": [
                        {
                            "server_tokens_per_s": round(run["tokens"] / run["seconds"], 1),
                            "in_process_tokens_per_s": round(ref, 1),
                            # real tokens per CPU second, each side's own process (the server's, the bench's)
                            "server_tokens_per_cpu_s": None
                            if not run["server_cpu_s"]
                            else round(run["tokens"] / run["server_cpu_s"], 1),
                            "in_process_tokens_per_cpu_s": round(sum(tokens_of) / cpu, 1) if cpu else None,
                        }
                        for run, ref, cpu in zip(runs, references, reference_cpu)
                    ],
                }
                results.append(row)
                print(
                    f"concurrency {concurrency:>3}: {row['requests_per_s']:7.2f} requests/s "
                    f"{row['tokens_per_s']:>9,.0f} tokens/s "
                    f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  {row['requests_per_batch']:5.2f} "
                    "requests/batch  "
                    f"engine busy {100 * row['engine_busy']:3.0f} %  "
                    f"in-process {reference:>9,.0f} tokens/s  {row['ratio_to_in_process']:.3f}×"
                    + (
                        ""
                        if row["goal"] is None
                        else f" (goal ≥ {row['goal']:.2f}: {'met' if row['met'] else 'NOT met'})"
                    ),
                    flush=True,
                )
        finally:
            exit_code = server.stop()
    result = {
        "setting": {
            "model": f"tiny Llama hidden {args.hidden}, {args.layers} layers, {parameters:,} parameters, fp32, CPU",
            "threads": threads,
            "requests": args.requests,
            "pairs_per_request": args.pairs_per_request,
            "sequences": len(sequences),
            "tokens": sum(tokens_of),
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "server_flags": flags,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "server": results,
        "server_exit_code": exit_code,
        "goals": [
            {
                "concurrency": row["concurrency"],
                "ratio": row["ratio_to_in_process"],
                "needed": row["goal"],
                "met": row["met"],
            }
            for row in results
            if row["goal"] is not None
        ],
    }
    print(
        "ratios of server to in-process tokens/s: "
        + ", ".join(f"{row['concurrency']} client(s) {row['ratio_to_in_process']:.3f}×" for row in results),
        flush=True,
    )
    text = json.dumps(result)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
