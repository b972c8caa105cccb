"""Throughput of `hsrm serve` over loopback HTTP against the in-process engine on the same sequences (issue 20).

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/serve.py [--requests 96] [--concurrency 1,4,16]
                                                                   [--output runs/bench/serve.json]

Issue 20's target: at 16 concurrent clients the server reaches at least 80 % of the in-process
engine's real tokens/s on 2 CPU cores.

Model: a random Llama reward model built by ``hsrm.testing.build_tiny_llama`` with hidden size 256
and 4 layers (2.4 M parameters, the test suite's 400-token BPE tokenizer and ChatML template), fp32
on the CPU. It is the smallest model whose forward passes clearly outweigh a request's HTTP, JSON
and tokenization work (the tests' 30 k-parameter model does not: there the bench would measure
the HTTP stack), it builds offline in a second, and its rewards are exactly reproducible; the
embedded SmolLM2-135M would be ~50× slower per token, so each level would take minutes for the same
ratio.

Load: ``--requests`` requests of ``--pairs-per-request`` (prompt, response) pairs each, lengths
drawn log-uniformly (prompts 8–200 words, responses 8–400), built once with a fixed seed. The
in-process figure is ``RewardScorer.score_ids`` (the engine, ``auto`` layout = padded on CPU,
batch size 8) on all their token ids at once, best of ``--repeats``, measured before and after the
server runs (the larger one is the reference: other load on the machine only makes the ratio
stricter). The server (``hsrm serve`` in a subprocess, default limits, same batch size and
max_length) then gets the same requests from 1, 4 and 16 client threads, each with one keep-alive
connection and bodies encoded in advance; a level stops after ``--requests`` requests or
``--time-limit-s``. Real tokens are the tokens of the answered sequences (no padding); latency is
per request, send to answer. Every server reward is compared with the in-process one.
Prints one line per level and a final JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_CONCURRENCY, TARGET_RATIO = 16, 0.8
WORDS = ("the quick brown fox jumps over lazy dog a helpful assistant answers question clearly user asks how to bake "
         "bread flour water yeast salt kneading baking response one is better because it correct concise polite two "
         "wrong rude numbers 0 1 2 3 4 5 6 7 8 9 good bad great terrible yes no maybe please thank you sorry python "
         "code def return import class for while if else print list dict string integer float").split()


def make_requests(count: int, pairs_per_request: int, seed: int, max_prompt_words: int, max_response_words: int):
    rng = random.Random(seed)

    def text(longest: int) -> str:
        n = int(round(8 * (longest / 8) ** rng.random()))  # log-uniform in [8, longest]: mostly short, a long tail
        return " ".join(rng.choices(WORDS, k=n))

    return [{"prompts": [text(max_prompt_words) for _ in range(pairs_per_request)],
             "responses": [text(max_response_words) for _ in range(pairs_per_request)]} for _ in range(count)]


def in_process_tokens_per_s(scorer, sequences, repeats: int) -> tuple[float, list[float]]:
    tokens = sum(len(s) for s in sequences)
    scorer.score_ids(sequences[:16])  # warm-up: first forward passes allocate
    best, rewards = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        rewards = scorer.score_ids(sequences).tolist()
        best = min(best, time.perf_counter() - start)
    return tokens / best, rewards


class Server:
    def __init__(self, model_dir: Path, flags: list[str]):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.process = subprocess.Popen([sys.executable, "-m", "hsrm.cli", "serve", "--model", str(model_dir), "--port", "0", *flags],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.host, self.port = None, None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while self.port is None or not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + "".join(self.lines))
            time.sleep(0.1)

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            if match := re.search(r"hsrm serve: .* at http://([\d.]+):(\d+)", line):
                self.host, self.port = match.group(1), int(match.group(2))

    def _healthy(self) -> bool:
        try:
            return self.get("/health")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, dict]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def run_level(server: Server, bodies: list[bytes], concurrency: int, time_limit_s: float) -> dict:
    """Send ``bodies`` from ``concurrency`` threads (one keep-alive connection each); answers by index."""
    next_index, lock = iter(range(len(bodies))), threading.Lock()
    answers: dict[int, list[float]] = {}
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit_s

    def client():
        connection = http.client.HTTPConnection(server.host, server.port, timeout=300)
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
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--pairs-per-request", type=int, default=8)
    parser.add_argument("--concurrency", default="1,4,16", help="client threads, one level each")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny Llama reward model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-prompt-words", type=int, default=48)
    parser.add_argument("--max-response-words", type=int, default=192)
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per sequence, server and in-process alike")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per padded forward, server and in-process alike")
    parser.add_argument("--repeats", type=int, default=1, help="in-process timings per measurement (the best is kept)")
    parser.add_argument("--time-limit-s", type=float, default=120.0, help="per level: no new request after this")
    parser.add_argument("--max-batch-tokens", type=int, default=65536,
                        help="the server's merge budget (above the ~35k tokens that 16 clients keep in flight)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from hsrm.scoring import RewardScorer
    from hsrm.testing import build_tiny_llama

    levels = [int(c) for c in args.concurrency.split(",")]
    threads = int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    requests = make_requests(args.requests, args.pairs_per_request, args.seed, args.max_prompt_words, args.max_response_words)
    bodies = [json.dumps(r).encode() for r in requests]
    with tempfile.TemporaryDirectory(prefix="hsrm-bench-serve-") as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "rm", hidden_size=args.hidden, num_layers=args.layers)
        scorer = RewardScorer(str(model_dir), batch_size=args.batch_size, max_length=args.max_length, device="cpu")
        parameters = sum(p.numel() for p in scorer.model.parameters())
        per_request = [[scorer.encode(p, r) for p, r in zip(req["prompts"], req["responses"])] for req in requests]
        tokens_of = [sum(len(s) for s in sequences) for sequences in per_request]
        sequences = [s for request_sequences in per_request for s in request_sequences]
        reference_runs = [in_process_tokens_per_s(scorer, sequences, args.repeats)]
        expected = reference_runs[0][1]
        expected_of, start = [], 0  # the in-process rewards, split per request
        for request_sequences in per_request:
            expected_of.append(expected[start:start + len(request_sequences)])
            start += len(request_sequences)
        print(f"in-process engine: {reference_runs[0][0]:,.0f} tokens/s on {len(sequences)} sequences, {sum(tokens_of):,} tokens "
              f"({parameters / 1e6:.1f} M parameters, {threads} threads)", flush=True)

        flags = ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--device", "cpu",
                 "--max-batch-tokens", str(args.max_batch_tokens)]
        server = Server(model_dir, flags)
        results = []
        try:
            warm_up = run_level(server, bodies[:4], 2, args.time_limit_s)  # first forward passes allocate
            assert not warm_up["errors"], warm_up["errors"]
            for concurrency in levels:
                counts_before = server.get("/info")[1]["counts"]
                level = run_level(server, bodies, concurrency, args.time_limit_s)
                counts = server.get("/info")[1]["counts"]
                if level["errors"]:
                    raise RuntimeError(f"concurrency {concurrency}: {level['errors'][:3]}")
                # The in-process engine again, right after this level (the server idles meanwhile):
                # each level is compared with the faster of the runs on either side of it.
                reference_runs.append(in_process_tokens_per_s(scorer, sequences, args.repeats))
                reference = max(reference_runs[-2][0], reference_runs[-1][0])
                answered = sorted(level["answers"])
                tokens = sum(tokens_of[i] for i in answered)
                got = [x for i in answered for x in level["answers"][i]]
                want = [x for i in answered for x in expected_of[i]]
                row = {
                    "concurrency": concurrency, "requests": len(answered), "seconds": round(level["seconds"], 3),
                    "requests_per_s": round(len(answered) / level["seconds"], 2),
                    "tokens_per_s": round(tokens / level["seconds"], 1),
                    "p50_ms": round(1000 * percentile(level["latencies"], 50), 1),
                    "p99_ms": round(1000 * percentile(level["latencies"], 99), 1),
                    "requests_per_batch": round(len(answered) / max(counts["batches"] - counts_before["batches"], 1), 2),
                    "in_process_tokens_per_s": round(reference, 1),
                    "ratio_to_in_process": round(tokens / level["seconds"] / reference, 3),
                    "max_reward_difference": max(abs(a - b) for a, b in zip(got, want)),
                }
                results.append(row)
                print(f"concurrency {concurrency:>3}: {row['requests_per_s']:7.2f} requests/s {row['tokens_per_s']:>9,.0f} tokens/s "
                      f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  {row['requests_per_batch']:5.2f} requests/batch  "
                      f"in-process {reference:>9,.0f} tokens/s  {row['ratio_to_in_process']:.2f}×", flush=True)
        finally:
            exit_code = server.stop()
    target = next((row for row in results if row["concurrency"] == TARGET_CONCURRENCY), None)
    result = {
        "setting": {"model": f"tiny Llama hidden {args.hidden}, {args.layers} layers, {parameters:,} parameters, fp32, CPU",
                    "threads": threads, "requests": args.requests, "pairs_per_request": args.pairs_per_request,
                    "sequences": len(sequences), "tokens": sum(tokens_of), "max_length": args.max_length,
                    "batch_size": args.batch_size, "server_flags": flags, "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "in_process_tokens_per_s": [round(run[0], 1) for run in reference_runs],
        "server": results,
        "server_exit_code": exit_code,
        "target": None if target is None else {"concurrency": TARGET_CONCURRENCY, "ratio": target["ratio_to_in_process"],
                                               "needed": TARGET_RATIO, "met": target["ratio_to_in_process"] >= TARGET_RATIO},
    }
    text = json.dumps(result)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
