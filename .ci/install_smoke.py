"""Every verb of an installed hsrm wheel, once, on tiny inputs: run by .ci/install_smoke in a fresh venv
that holds the wheel without extras, from a scratch folder (the current directory), never the checkout.

Each verb's smoke checks its exit code and what it wrote; all run even when one fails, and the
table at the end says which failed (exit 1). Usage: python install_smoke.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path

HSRM = str(Path(sys.executable).with_name("hsrm"))  # the console script the wheel installed
# No Hub (tiny local models only) and no tokenizer threads fighting the two CI cores.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TINY = "tiny-llama"
TRAINED = "trained-bt"
PAIRS = "pairs.jsonl"


def hsrm(*args: str, expect_code: int = 0) -> subprocess.CompletedProcess:
    """``hsrm ARGS`` through the installed entry point; another exit code raises with the command's output."""
    done = subprocess.run([HSRM, *args], env=ENV, capture_output=True, text=True, timeout=600)
    if done.returncode != expect_code:
        raise AssertionError(
            f"hsrm {' '.join(args)} exited {done.returncode}, not {expect_code}\n--- stdout\n{done.stdout[-3000:]}\n"
            f"--- stderr\n{done.stderr[-6000:]}"
        )
    return done


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def model_saved(folder: str) -> None:
    names = os.listdir(folder) if os.path.isdir(folder) else []
    check("config.json" in names and any(n.endswith(".safetensors") for n in names), f"{folder}: no model ({names})")


# ------------------------------------------------------------------------------------------ the inputs
def write_inputs() -> None:
    from hsrm.embedding.synthetic import SyntheticWorld
    from hsrm.tiny import build_tiny_llama

    build_tiny_llama(TINY)
    with open(PAIRS, "w", encoding="utf-8") as handle:
        for i in range(16):
            row = {
                "prompt": f"Question {i}: how do I bake bread?",
                "chosen": "Mix flour, water, yeast and salt, knead, let it rise, then bake it hot.",
                "rejected": "no" if i % 2 else "bad terrible wrong",
            }
            handle.write(json.dumps(row) + "\n")
    with open("candidates.jsonl", "w", encoding="utf-8") as handle:
        for i in range(2):
            row = {
                "prompt": f"Question {i}: how do I bake bread?",
                "responses": ["Knead and bake it.", "no", "Buy one."],
            }
            handle.write(json.dumps(row) + "\n")
    Path("bt.yaml").write_text("objective: bt\nmax_length: 64\nper_device_train_batch_size: 4\nuse_cpu: true\n")
    SyntheticWorld(dim=8).sample(20, 5).save("pool.npz")
    Path("study.yaml").write_text(
        "name: smoke\n"
        "data: {synthetic: {dim: 8, latent_dim: 2, nuisance_dim: 2, n_train_prompts: 40, n_test_prompts: 5, "
        "test_responses: 5}}\n"
        "grid: {methods: [bt-mlp, clf-lgb], betas: [1.0], annotation_counts: [40], designs: [random], "
        "pairings: [in-prompt], seeds: [0]}\n"
        "fit: {hidden: [8], max_epochs: 2}\n"
        "lgb_params: {num_iterations: 5}\n"
        "n_jobs: 1\n"
        "table_format: csv\n"
    )


# ------------------------------------------------------------------------------------------- the smokes
def smoke_plain_install() -> None:
    import hsrm

    where = Path(hsrm.__file__).resolve()
    check(Path(sys.prefix).resolve() in where.parents, f"hsrm imported from {where}, not from this venv's wheel")
    for extra_module in ("deepspeed", "gguf"):  # the deepspeed and offline extras: not installed here
        check(importlib.util.find_spec(extra_module) is None, f"{extra_module} is installed: the venv is not plain")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("import deepspeed succeeded in a venv without the deepspeed extra")


def smoke_train() -> None:
    hsrm("train", "bt.yaml", "--model_name_or_path", TINY, "--train_data", PAIRS, "--output_dir", TRAINED,
         "--max_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true")  # fmt: skip
    model_saved(TRAINED)
    config = json.loads(Path(TRAINED, "config.json").read_text())
    check(config.get("hsrm", {}).get("objective") == "bt", f"{TRAINED}/config.json records no BT objective")


def smoke_train_deepspeed_missing() -> None:
    # Asking for the extra that is not installed: one line that names it, nothing written.
    Path("zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": "auto"}))
    done = hsrm("train", "bt.yaml", "--model_name_or_path", TINY, "--train_data", PAIRS, "--output_dir", "ds-run",
                "--deepspeed", "zero2.json", expect_code=1)  # fmt: skip
    last = done.stderr.strip().splitlines()[-1]
    check(last.startswith("hsrm train: error:") and "pip install 'hsrm[deepspeed]'" in last, done.stderr[-3000:])
    check("Traceback" not in done.stderr and not Path("ds-run").exists(), f"not one line:\n{done.stderr[-3000:]}")


def smoke_evaluate() -> None:
    hsrm("evaluate", "--model", TRAINED, "--data", PAIRS, "--output", "evaluation.json")
    accuracy = json.loads(Path("evaluation.json").read_text())["metrics"]["accuracy"]
    check(0.0 <= accuracy <= 1.0, f"evaluation.json: accuracy {accuracy}")


def smoke_score() -> None:
    hsrm("score", "--model", TRAINED, "--data", "candidates.jsonl", "--output", "scored.jsonl")
    rows = read_jsonl("scored.jsonl")
    check(len(rows) == 2, f"scored.jsonl: {len(rows)} rows, expected 2")
    for row in rows:
        check(len(row["rewards"]) == 3 and all(map(math.isfinite, row["rewards"])), f"scored.jsonl: {row}")
        check(row["best_index"] in (0, 1, 2), f"scored.jsonl: best_index {row.get('best_index')}")


def smoke_serve() -> None:
    from hsrm.testing import ServeProcess  # waits for /health to answer 200

    server = ServeProcess(["--model", TRAINED], env=ENV)
    try:
        request = urllib.request.Request(
            server.url + "/score",
            data=json.dumps({"prompts": ["What is 2+2?", "Name a colour."], "responses": ["4", "Blue."]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            rewards = json.loads(response.read())["rewards"]
        check(len(rewards) == 2 and all(map(math.isfinite, rewards)), f"/score answered {rewards}")
    finally:
        code = server.stop()
    check(code == 0, f"hsrm serve exited {code} on SIGTERM:\n{server.output()[-3000:]}")


def smoke_expo() -> None:
    hsrm("expo", "--weak", TINY, "--strong", TRAINED, "--alpha", "1.5", "--output", "expo-model")
    model_saved("expo-model")


def smoke_push() -> None:
    hsrm("push", "--model", TRAINED, "--repo-id", "smoke/tiny-bt", "--dry-run", "--output", "push-folder")
    card = Path("push-folder", "README.md")
    check(card.is_file() and "smoke/tiny-bt" in card.read_text(), "push --dry-run wrote no model card naming the repo")
    model_saved("push-folder")


def smoke_embed() -> None:
    hsrm("embed", "--data", PAIRS, "--model", TINY, "--output", "embeddings.npz", "--cache", "none")
    import numpy as np

    with np.load("embeddings.npz") as arrays:
        check(
            arrays["embeddings"].shape[0] == 32, f"embeddings.npz: shape {arrays['embeddings'].shape}, 32 rows wanted"
        )


def smoke_fit() -> None:
    hsrm("fit", "--embeddings", "embeddings.npz", "--method", "bt-mlp", "--hidden", "8", "--max-epochs", "2",
         "--output", "fitted-mlp")  # fmt: skip
    check(Path("fitted-mlp", "config.json").is_file() and Path("fitted-mlp", "model.safetensors").is_file(),
          f"fitted-mlp: {os.listdir('fitted-mlp') if os.path.isdir('fitted-mlp') else 'missing'}")  # fmt: skip


def smoke_select() -> None:
    hsrm("select", "select-state", "--embeddings", "pool.npz", "--batch-size", "10")
    check(Path("select-state", "state.json").is_file(), "select-state/state.json missing")
    batch = read_jsonl("select-state/batch_0001.jsonl")
    check(len(batch) == 10 and all(row["label"] is None for row in batch), f"batch_0001.jsonl: {batch[:2]}")


def smoke_study() -> None:
    hsrm("study", "study.yaml", "--output", "study", "--no-plots")
    import csv

    with open("study/results.csv", encoding="utf-8") as handle:
        methods = {row["method"] for row in csv.DictReader(handle)}
    check(methods == {"bt-mlp", "clf-lgb"}, f"study/results.csv: methods {methods}")


def smoke_demo(data_dir: str) -> None:
    hsrm("demo", "--quick", "--data-dir", data_dir, "--output", "demo-report")
    report = Path("demo-report", "README.md").read_text()
    check(report.startswith(f"# hsrm demo report: real data from {data_dir}"), f"report: {report[:200]}")
    check(Path("demo-report", "study", "results.csv").is_file(), "the demo ran no study (its packaged config)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True, help="a folder laid out like ../shared/data, for hsrm demo")
    data_dir = str(Path(parser.parse_args().data_dir).resolve())
    steps = [
        ("plain install", smoke_plain_install),
        ("inputs", write_inputs),
        ("train", smoke_train),
        ("train --deepspeed", smoke_train_deepspeed_missing),
        ("evaluate", smoke_evaluate),
        ("score", smoke_score),
        ("serve", smoke_serve),
        ("expo", smoke_expo),
        ("push", smoke_push),
        ("embed", smoke_embed),
        ("fit", smoke_fit),
        ("select", smoke_select),
        ("study", smoke_study),
        ("demo", lambda: smoke_demo(data_dir)),
    ]
    results = []
    for name, step in steps:
        started = time.monotonic()
        print(f"=== {name}", flush=True)
        try:
            step()
            outcome = "ok"
        except Exception:  # every step runs; the table and the exit code say which failed
            outcome = "FAILED"
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        results.append((name, outcome, time.monotonic() - started))
    print("\ninstall smoke (wheel without extras, from " + os.getcwd() + "):")
    for name, outcome, seconds in results:
        print(f"  {name:<17} {outcome:<7} {seconds:6.1f} s")
    failed = [name for name, outcome, _ in results if outcome != "ok"]
    if failed:
        print(f"INSTALL SMOKE FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
