"""Every command shown in README.md and docs/*.md, RUN (issue 10), not only parsed (tests/test_docs.py).

The commands run in one sandbox laid out like a user's checkout (`ws/recipes`, `ws/ds_configs`, `ws/hsrm`
linked from the repository, `ws/../shared` linked to the real ../shared), from `ws`, so that `runs/…` and
`../shared/data/…` resolve as in the docs. Verbs run in-process (the hsrm.cli VERBS entry with argv).
How each command becomes a seconds-long run is written out in the tables below, in this order:

* SUBSTITUTE: placeholders and example file names of the docs → files made in the sandbox;
* RUN: per documented command, the tiny settings appended (later flags win), what must exist
  first and the check on what it wrote;
* BUILD: model folders and files the docs refer to → the command that makes them (a documented
  one wherever one exists, else an undocumented `hsrm` command with the same tiny settings);
* COVERED_ELSEWHERE: the launcher half of `accelerate launch` / `torchrun` commands (8 GPUs,
  DeepSpeed ZeRO) → the test that runs that path on CPU. Their recipe half (`-m hsrm.train
  RECIPE …`) still runs here, in-process. One launcher command, REAL_LAUNCH, runs for real;
* KNOWN_BUGS: documented commands that fail today (strict xfail: fixing one turns the test red
  until its entry is removed).

`hsrm serve` runs until it is stopped, so it runs in a subprocess on a free loopback port, is asked
scoring.md's example requests (SERVE_EXAMPLES) and is stopped with SIGTERM (Sandbox.serve); its
check compares the answers with the in-process scorer.

A documented command without an entry fails test_every_documented_command_has_a_plan, so new
commands in the docs cannot go unexercised. Commands that read ../shared/data skip when it is absent.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_docs import DOCS, shell_lines

from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl

SHARED = REPO_ROOT.parent / "shared"
RB_SAMPLE = "../shared/data/rewardbench_sample/reward_bench_filtered_sample.jsonl"
HH_BASE = "../shared/data/hh_rlhf/helpful-base.test.jsonl.gz"
HELPSTEER1 = "../shared/data/helpsteer1/nvidia_HelpSteer_sample.jsonl"
# `python -m hsrm.…` entry points are documented commands too (scoring.md: the RLOO smoke run).
PREFIXES = ("hsrm ", "accelerate launch", "torchrun ", "python -m hsrm.", ".venv/bin/python -m hsrm.")

# ------------------------------------------------------------------------------------------------
# Placeholder or example name in a documented command → what the sandbox uses (made by `sandbox`).
SUBSTITUTE = {
    "RECIPE.yaml": "recipes/tiny_bt.yaml",  # "any recipe": the seconds-long tiny one
    "TINY_DIR": "runs/tiny-llama",  # hsrm.tiny.build_tiny_llama
    "/tmp/tiny": "runs/tiny-llama",  # evaluation.md's example model (random, 30k parameters)
    "PAIRS.jsonl": "data/pairs.jsonl",  # 16 learnable pairs with a strength 1-3
    "pairs.jsonl": "data/pairs.jsonl",
    "VALIDATION.jsonl": "data/val_pairs.jsonl",  # 8 more pairs
    "val_rewardbench.jsonl": "data/rb.jsonl",  # RewardBench rows: 2 per subset of the RewardBench sample
    "rb.jsonl": "data/rb.jsonl",
    "allenai/reward-bench": "data/rb.jsonl",  # the Hub id, replaced by the local sample (no network)
    "allenai/reward-bench-2": "data/rb2.jsonl",  # the Hub ids of the 2025 benchmarks → tests/data's hand-made rows
    "THU-KEG/RM-Bench": "data/rmbench.jsonl",
    "nvidia/HelpSteer3": "data/hs3.jsonl",
    "candidates.jsonl": "data/candidates.jsonl",  # 2 Best-of-N rows + 2 {prompt, response} rows of one prompt
}
# Literal names kept: pool.npz (active.md's SyntheticWorld line, 20 prompts × 10 here), STATE and
# STATE_DIR (select state folders), scored.jsonl / pairs_eval.json (outputs), runs/toy_pairs.jsonl
# and runs/tiny-llama (lightweight.md's own set-up lines, repeated by `sandbox`), and
# runs/hh/base_401_1000.jsonl (lightweight.md's `zcat … | sed -n 401,1000p`, repeated in Python).

# Tiny settings appended to every training command.
TINY_TRAIN = (
    "--max_steps",
    "2",
    "--max_length",
    "64",
    "--max_train_samples",
    "16",
    "--max_eval_samples",
    "8",
    "--per_device_train_batch_size",
    "2",
    "--use_cpu",
    "true",
    "--bf16",
    "false",
    "--save_strategy",
    "no",
    "--logging_steps",
    "1",
    "--disable_tqdm",
    "true",
)
TINY_RM = ("--model_name_or_path", "runs/tiny-llama")
TINY_CAUSAL_LM = ("--model_name_or_path", "runs/tiny-causal-lm")
# Paper recipes train a 70B model in bf16 on Hub data with a validation loop: local data, fp32, no loop.
PAPER_RECIPE = TINY_TRAIN + (
    "--eval_data",
    "",
    "--eval_strategy",
    "no",
    "--load_best_model_at_end",
    "false",
    "--model_dtype",
    "float32",
    "--gradient_checkpointing",
    "false",
)
# The launcher commands are alternatives that share an output_dir; run one after another here, each replaces the last.
PAPER_PAIRS = PAPER_RECIPE + TINY_RM + ("--train_data", "data/pairs.jsonl", "--data_format", "auto", "--overwrite")
TINY_SELECT = ("--hidden", "8", "--max-epochs", "3")  # fixed at a state's first call
TINY_ACTIVE = (
    "--train_prompts",
    "40",
    "--test_prompts",
    "5",
    "--test_responses",
    "10",
    "--strategies",
    "[random, dopt]",
    "--seeds",
    "[0]",
    "--annotations",
    "20",
    "--batch_sizes",
    "[10]",
    "--prompts_per_round",
    "8",
    "--candidates_per_round",
    "100",
    "--hidden",
    "[8]",
    "--max_epochs",
    "2",
)
STUDY = (
    "--seeds",
    "0",
    "--no-plots",
    "--n-jobs",
    "1",
)  # one process (two CPU cores are shared); plots: test_embedding_study
# Keys an in-process run of a launcher command drops: they need the launcher's process group.
LAUNCHER_ONLY_KEYS = ("--deepspeed", "--ddp_backend")


@dataclass(frozen=True)
class Run:
    extra: tuple[str, ...] = ()  # appended to the documented command
    needs: tuple[str, ...] = ()  # sandbox paths (see BUILD) or documented commands that must run first
    check: str | None = None  # name of a check_* function below: asserts on what the command wrote
    before: str | None = None  # a documented non-hsrm step right before it (annotators labelling a batch)


HH600_EMBED = (
    "hsrm embed --data runs/hh/base_401_1000.jsonl --output runs/hh/hh600.npz --max-length 192 --batch-size 8 "
    "--cache runs/hh/cache --golden-model runs/smollm-bt-hh --golden-max-length 320 --on-bad-rows skip"
)
RUN: dict[str, Run] = {
    # ---- training (docs order: before evaluation, ExPO and scoring, which use its folders)
    "hsrm train recipes/smollm_bt_hh.yaml": Run(TINY_TRAIN + TINY_RM, check="check_smollm_bt"),
    "hsrm train recipes/scaled_bt.yaml --max_steps 20": Run(PAPER_PAIRS, check="check_scaled_bt_recipe"),
    "hsrm train recipes/smollm_bt_hh.yaml --train_top_layers 2 --learning_rate 2e-4 --max_length 128 --max_steps 64": Run(
        TINY_TRAIN + TINY_RM + ("--output_dir", "runs/smollm-bt-top-layers"), check="check_top_layers"
    ),
    "hsrm train RECIPE.yaml": Run(TINY_TRAIN + TINY_RM + ("--train_data", "data/pairs.jsonl"), check="check_tiny_bt"),
    "hsrm train --help": Run(check="check_train_help"),
    "hsrm train RECIPE.yaml --padding_free true --max_tokens_per_batch 16384 --attn_implementation hsrm_varlen": Run(
        TINY_TRAIN + TINY_RM + ("--train_data", "data/pairs.jsonl", "--output_dir", "runs/tiny-bt-packed"),
        check="check_packed",
    ),
    "hsrm train recipes/justifier_all_flip.yaml": Run(
        PAPER_RECIPE + TINY_CAUSAL_LM + ("--train_data", "data/preference.jsonl"), check="check_justifier_all_flip"
    ),
    # launcher commands: the recipe half runs here in-process, the launcher half is COVERED_ELSEWHERE
    "accelerate launch -m hsrm.train RECIPE.yaml":  # REAL_LAUNCH: a real single-process `accelerate launch`
    Run(
        TINY_TRAIN + TINY_RM + ("--train_data", "data/pairs.jsonl", "--output_dir", "runs/tiny-bt-accelerate"),
        check="check_accelerate_launch",
    ),
    "accelerate launch --config_file recipes/accelerate/zero3.yaml -m hsrm.train recipes/scaled_bt_from_regression.yaml": Run(
        PAPER_PAIRS, needs=("runs/helpfulness-regression",), check="check_scaled_bt_from_regression"
    ),
    "accelerate launch --config_file recipes/accelerate/single_gpu.yaml -m hsrm.train recipes/regular_bt.yaml": Run(
        PAPER_PAIRS, check="check_regular_bt"
    ),
    "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 8 -m hsrm.train recipes/regular_bt.yaml": Run(
        PAPER_PAIRS, check="check_regular_bt"
    ),
    "accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 8 -m hsrm.train recipes/regular_bt.yaml": Run(
        PAPER_PAIRS, check="check_regular_bt"
    ),
    "accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 -m hsrm.train recipes/regular_bt.yaml": Run(
        PAPER_PAIRS, check="check_regular_bt"
    ),
    "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_machines 2 --num_processes 16 --machine_rank 0 --main_process_ip HOST0 --main_process_port 29500 -m hsrm.train recipes/regular_bt.yaml": Run(
        PAPER_PAIRS, check="check_regular_bt"
    ),
    "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST0 --master_port 29500 -m hsrm.train recipes/regular_bt.yaml": Run(
        PAPER_PAIRS, check="check_regular_bt"
    ),
    "accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 8 -m hsrm.train recipes/scaled_bt_from_regression.yaml": Run(
        PAPER_PAIRS, needs=("runs/helpfulness-regression",), check="check_scaled_bt_from_regression"
    ),
    "torchrun --nproc_per_node 2 -m hsrm.train recipes/tiny_bt.yaml --model_name_or_path TINY_DIR --train_data "
    "PAIRS.jsonl "
    "--deepspeed ds_configs/zero3.json --ddp_backend gloo --use_cpu true":  # writes runs/tiny-bt again, after `hsrm train RECIPE.yaml`
    Run(TINY_TRAIN + ("--overwrite",), check="check_tiny_bt"),
    "accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 8 -m hsrm.rloo recipes/rloo_helpsteer2.yaml": Run(
        (
            "--policy_model",
            "tiny-random",
            "--prompt_data",
            "data/preference.jsonl",
            "--max_prompts",
            "4",
            "--max_steps",
            "1",
            "--gradient_accumulation_steps",
            "1",
            "--max_completion_length",
            "4",
            "--reward_max_length",
            "64",
            "--reward_dtype",
            "float32",
            "--bf16",
            "false",
            "--use_cpu",
            "true",
            "--gradient_checkpointing",
            "false",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ),
        needs=("runs/scaled-bt-expo",),
        check="check_rloo_helpsteer2",
    ),
    "hsrm rloo recipes/rloo_tiny.yaml": Run(("--disable_tqdm", "true"), check="check_rloo_tiny"),
    # ---- evaluation
    f"hsrm evaluate --model runs/smollm-bt-hh --data {RB_SAMPLE}": Run(
        ("--limit", "16"), needs=("runs/smollm-bt-hh",), check="check_rb_eval_smollm"
    ),
    f"hsrm evaluate --model runs/scaled-bt --data {RB_SAMPLE}": Run(
        ("--limit", "16"), needs=("runs/scaled-bt",), check="check_rb_eval_scaled_bt"
    ),
    "hsrm evaluate --model runs/scaled-bt --data pairs.jsonl --output pairs_eval.json": Run(
        needs=("runs/scaled-bt",), check="check_pairs_eval"
    ),
    f"hsrm evaluate --model runs/regression --data {HELPSTEER1}": Run(
        ("--limit", "16"), needs=("runs/regression",), check="check_ratings_eval"
    ),
    "hsrm evaluate --model runs/scaled-bt --data allenai/reward-bench-2": Run(
        needs=("runs/scaled-bt",), check="check_rewardbench2_eval"
    ),
    "hsrm evaluate --model runs/scaled-bt --data THU-KEG/RM-Bench": Run(
        needs=("runs/scaled-bt",), check="check_rmbench_eval"
    ),
    "hsrm evaluate --model runs/scaled-bt --data nvidia/HelpSteer3": Run(
        needs=("runs/scaled-bt",), check="check_helpsteer3_eval"
    ),
    "hsrm evaluate --justifier --model runs/justifier --data rb.jsonl": Run(
        ("--limit", "4", "--max_new_tokens", "8"), needs=("runs/justifier",), check="check_justifier_eval"
    ),
    f"hsrm evaluate --model /tmp/tiny --data {RB_SAMPLE}": Run(("--limit", "16"), check="check_rb_eval_tiny"),
    "hsrm evaluate --justifier --model runs/justifier-all-flip --data allenai/reward-bench": Run(
        ("--limit", "4", "--max_new_tokens", "8"), needs=("runs/justifier-all-flip",), check="check_justifier_eval"
    ),
    # ---- ExPO (each writes runs/scaled-bt-expo: --overwrite lets them follow one another)
    "hsrm expo --weak runs/helpfulness-regression --strong runs/scaled-bt-from-regression --search --data VALIDATION.jsonl --output runs/scaled-bt-expo": Run(
        ("--overwrite",),
        needs=("runs/helpfulness-regression", "runs/scaled-bt-from-regression"),
        check="check_expo_search_pairs",
    ),
    "hsrm expo --weak runs/helpfulness-regression --strong runs/scaled-bt-from-regression --alpha 1.52 --output runs/scaled-bt-expo": Run(
        ("--overwrite",),
        needs=("runs/helpfulness-regression", "runs/scaled-bt-from-regression"),
        check="check_expo_alpha",
    ),
    "hsrm expo --weak runs/helpfulness-regression --strong runs/scaled-bt-from-regression --search --data val_rewardbench.jsonl --output runs/scaled-bt-expo": Run(
        ("--overwrite", "--max-length", "256"),
        needs=("runs/helpfulness-regression", "runs/scaled-bt-from-regression"),
        check="check_expo_search_rb",
    ),
    # ---- the demo (docs/demo.md): the quick profile, so each takes seconds; --overwrite lets them follow one another
    "hsrm demo --output demo_report": Run(("--quick", "--overwrite"), check="check_demo"),
    "hsrm demo --output demo_report --overwrite --data-dir ../shared/data": Run(
        ("--quick",), check="check_demo_data_dir"
    ),
    "hsrm demo --output demo_report --overwrite --quick": Run(check="check_demo"),
    # ---- scoring and publishing (push never reaches the network: see Sandbox.call)
    "torchrun --nproc_per_node 8 -m hsrm score --model runs/scaled-bt --data candidates.jsonl --output scored.jsonl": Run(
        ("--overwrite",), needs=("runs/scaled-bt",)
    ),
    "accelerate launch --num_processes 8 -m hsrm evaluate --model runs/scaled-bt --data pairs.jsonl --output pairs_eval.json": Run(
        ("--overwrite",), needs=("runs/scaled-bt",), check="check_pairs_eval"
    ),
    "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST0 --master_port 29500 -m hsrm score --model runs/scaled-bt --data candidates.jsonl --output scored.jsonl": Run(
        ("--overwrite",), needs=("runs/scaled-bt",)
    ),
    "hsrm score --model runs/smollm-bt-hh --data candidates.jsonl --output scored.jsonl": Run(
        needs=("runs/smollm-bt-hh",), check="check_scored_smollm"
    ),
    "hsrm score --model runs/scaled-bt-expo --data candidates.jsonl --output scored.jsonl --batch-size 16":  # after README's
    Run(("--overwrite",), needs=("runs/scaled-bt-expo",), check="check_scored_expo"),
    # README shows `hsrm evaluate` first: its JSON lands in the model folder and from there in the card
    "hsrm push --model runs/smollm-bt-hh --repo-id you/smollm-bt-hh --dry-run": Run(
        needs=(f"hsrm evaluate --model runs/smollm-bt-hh --data {RB_SAMPLE}",), check="check_dry_run_smollm"
    ),
    "hsrm push --model runs/scaled-bt-expo --repo-id you/scaled-bt-expo --dry-run": Run(
        needs=("runs/scaled-bt-expo",), check="check_dry_run_expo"
    ),
    "hsrm push --model runs/scaled-bt-expo --repo-id you/scaled-bt-expo --private": Run(
        needs=("runs/scaled-bt-expo",), check="check_upload"
    ),
    "hsrm serve --model runs/scaled-bt-expo --port 8000": Run(
        needs=("runs/scaled-bt-expo",), check="check_served_expo"
    ),
    # ---- the lightweight path
    f"hsrm embed --data {HH_BASE} --output runs/hh.npz --golden-model runs/smollm-bt-hh --limit 500": Run(
        ("--model", "runs/tiny-llama", "--limit", "8", "--max-length", "64", "--cache", "runs/emb-cache"),
        needs=("runs/smollm-bt-hh",),
        check="check_hh_embeddings",
    ),
    "hsrm embed --data runs/toy_pairs.jsonl --model runs/tiny-llama --output runs/toy.npz --cache runs/emb-cache --golden-model runs/tiny-llama": Run(
        check="check_toy_embeddings_then_cache"
    ),
    "hsrm embed --data runs/toy_pairs.jsonl --model runs/tiny-llama --output runs/toy.npz --cache runs/emb-cache "
    "--golden-model runs/tiny-llama "
    "--overwrite": Run(needs=("runs/toy.npz",), check="check_toy_rerun_from_cache"),
    "hsrm fit --embeddings runs/toy.npz --method bt-mlp --output runs/toy-bt --eval-data runs/toy.npz": Run(
        ("--max-epochs", "5", "--hidden", "16"), needs=("runs/toy.npz",), check="check_fit_bt_mlp"
    ),
    "hsrm fit --apply runs/toy-bt --eval-data runs/toy.npz --scores-output runs/toy-scores.npy": Run(
        needs=("runs/toy-bt",), check="check_fit_scores"
    ),
    "hsrm fit --embeddings runs/toy.npz --method clf-lgb --output runs/toy-lgb --beta 5 --pairing cross-prompt --n-annotations 30": Run(
        needs=("runs/toy.npz",), check="check_fit_lgb"
    ),
    "hsrm study hsrm/recipes/studies/tiny.yaml": Run(STUDY, check="check_tiny_study"),
    HH600_EMBED: Run(
        ("--model", "runs/tiny-llama", "--limit", "24"),
        needs=("runs/hh/base_401_1000.jsonl", "runs/smollm-bt-hh"),
        check="check_hh600",
    ),
    "hsrm study recipes/studies/hh_smollm.yaml": Run(STUDY, needs=("runs/hh/hh600.npz",), check="check_hh_study"),
    "hsrm active recipes/studies/active_hh_rlhf.yaml": Run(
        (
            "--strategies",
            "[random, dopt]",
            "--seeds",
            "[0]",
            "--annotations",
            "20",
            "--batch_sizes",
            "[10]",
            "--prompts_per_round",
            "8",
            "--candidates_per_round",
            "100",
            "--hidden",
            "[8]",
            "--max_epochs",
            "2",
            "--workers",
            "1",
        ),
        needs=("runs/hh/hh600.npz",),
        check="check_active_hh",
    ),
    "hsrm active recipes/studies/active_tiny.yaml": Run(TINY_ACTIVE, check="check_active_study"),
    "hsrm select STATE_DIR --embeddings pool.npz --strategy dopt --batch-size 100": Run(
        TINY_SELECT, check="check_select_first"
    ),
    "hsrm select STATE --embeddings pool.npz --strategy dopt --batch-size 100": Run(
        TINY_SELECT, check="check_select_first"
    ),
    "hsrm select STATE": Run(
        needs=("hsrm select STATE --embeddings pool.npz --strategy dopt --batch-size 100",),
        before="label_pending_batch",
        check="check_select_second",
    ),
    "hsrm select STATE --strategy pa_dopt": Run(
        needs=("hsrm select STATE",), before="label_pending_batch", check="check_select_third"
    ),
}

# Folders / files the docs use → the command that makes them. Documented commands are RUN keys;
# the others (no documented command writes these paths) carry their own tiny settings.
BUILD: dict[str, tuple[str, tuple[str, ...]] | str] = {
    "runs/smollm-bt-hh": "hsrm train recipes/smollm_bt_hh.yaml",
    "runs/scaled-bt-from-regression": "accelerate launch --config_file recipes/accelerate/zero3.yaml -m hsrm.train recipes/scaled_bt_from_regression.yaml",
    "runs/scaled-bt-expo": "hsrm expo --weak runs/helpfulness-regression --strong runs/scaled-bt-from-regression --alpha 1.52 --output runs/scaled-bt-expo",
    "runs/justifier-all-flip": "hsrm train recipes/justifier_all_flip.yaml",
    "runs/toy.npz": "hsrm embed --data runs/toy_pairs.jsonl --model runs/tiny-llama --output runs/toy.npz --cache runs/emb-cache "
    "--golden-model runs/tiny-llama",
    "runs/toy-bt": "hsrm fit --embeddings runs/toy.npz --method bt-mlp --output runs/toy-bt --eval-data runs/toy.npz",
    "runs/hh/hh600.npz": HH600_EMBED,
    # Not written by any documented command:
    "runs/helpfulness-regression": (
        "hsrm train recipes/helpfulness_regression.yaml",  # the recipe's own header command
        PAPER_RECIPE + TINY_RM + ("--train_data", "data/ratings.jsonl"),
    ),
    "runs/scaled-bt": ("hsrm train recipes/scaled_bt.yaml", PAPER_PAIRS + ("--output_dir", "runs/scaled-bt")),
    "runs/regression": (
        "hsrm train recipes/tiny_regression.yaml",
        TINY_TRAIN + TINY_RM + ("--train_data", "data/ratings.jsonl", "--output_dir", "runs/regression"),
    ),
    "runs/justifier": (
        "hsrm train recipes/justifier_tiny_cpu.yaml",
        TINY_TRAIN + TINY_CAUSAL_LM + ("--train_data", "data/preference.jsonl", "--output_dir", "runs/justifier"),
    ),
}

# The launcher half of launcher commands → tests that run that path on CPU (2 processes, gloo).
TWO_PROCESSES_TEST = "tests/test_distributed.py::test_two_processes_train_what_one_process_trains"
DDP = f"{TWO_PROCESSES_TEST}[ddp]"
FSDP2 = f"{TWO_PROCESSES_TEST}[fsdp2]"
DEEPSPEED_ZERO2 = f"{TWO_PROCESSES_TEST}[zero2]"
DEEPSPEED_ZERO3 = f"{TWO_PROCESSES_TEST}[zero3]"
TWO_NODES = "tests/test_distributed.py::test_two_simulated_nodes_train_what_one_process_trains"
REAL_LAUNCH = "accelerate launch -m hsrm.train RECIPE.yaml"
REAL_LAUNCH_TEST = "tests/test_docs_run.py::test_one_launcher_command_runs_for_real"
SCORE_TWO_PROCESSES = "tests/test_batch_inference.py::test_two_processes_write_the_same_bytes_as_one"
EVALUATE_TWO_PROCESSES = "tests/test_batch_inference.py::test_two_processes_evaluate_to_the_same_metrics_and_rewards"
COVERED_ELSEWHERE: dict[str, tuple[str, ...]] = {
    # batch inference across processes (docs/scoring.md): the recipe half runs here, the launch there
    "torchrun --nproc_per_node 8 -m hsrm score --model runs/scaled-bt --data candidates.jsonl --output scored.jsonl": (
        SCORE_TWO_PROCESSES,
    ),
    "accelerate launch --num_processes 8 -m hsrm evaluate --model runs/scaled-bt --data pairs.jsonl --output pairs_eval.json": (
        EVALUATE_TWO_PROCESSES,
    ),
    "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST0 --master_port 29500 -m hsrm score --model runs/scaled-bt --data candidates.jsonl --output scored.jsonl": (
        SCORE_TWO_PROCESSES,
    ),
    "accelerate launch --config_file recipes/accelerate/zero3.yaml -m hsrm.train recipes/scaled_bt_from_regression.yaml": (
        DEEPSPEED_ZERO3,
    ),
    # one process; the config file only asks for a GPU and bf16
    "accelerate launch --config_file recipes/accelerate/single_gpu.yaml -m hsrm.train recipes/regular_bt.yaml": (
        REAL_LAUNCH_TEST,
    ),
    # several data-parallel processes over torch.distributed: DDP's own reducer
    "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 8 -m hsrm.train recipes/regular_bt.yaml": (
        DDP,
    ),
    "accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 8 -m hsrm.train recipes/regular_bt.yaml": (
        FSDP2,
    ),
    "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_machines 2 --num_processes 16 --machine_rank 0 --main_process_ip HOST0 --main_process_port 29500 -m hsrm.train recipes/regular_bt.yaml": (
        TWO_NODES,
    ),
    "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST0 --master_port 29500 -m hsrm.train recipes/regular_bt.yaml": (
        TWO_NODES,
    ),
    "accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 -m hsrm.train recipes/regular_bt.yaml": (
        DEEPSPEED_ZERO2,
    ),
    "accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 8 -m hsrm.train recipes/scaled_bt_from_regression.yaml": (
        DEEPSPEED_ZERO3,
    ),
    "torchrun --nproc_per_node 2 -m hsrm.train recipes/tiny_bt.yaml --model_name_or_path TINY_DIR --train_data "
    "PAIRS.jsonl "
    "--deepspeed ds_configs/zero3.json --ddp_backend gloo --use_cpu true": (DEEPSPEED_ZERO3,),
    "accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 8 -m hsrm.rloo recipes/rloo_helpsteer2.yaml": (
        "tests/test_rloo.py::test_rloo_tiny_recipe_runs_two_steps_with_the_hsrm_reward",
        DEEPSPEED_ZERO3,
    ),
}

KNOWN_BUGS: dict[str, str] = {}

# The bodies of scoring.md's curl lines, sent to every documented `hsrm serve` command.
SERVE_EXAMPLES = {
    "/score": {"prompts": ["What is 2+2?"], "responses": ["4"]},
    "/get_reward": {"query": ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"]},
}


# ------------------------------------------------------------------------------------------------
# The sandbox and how a command runs


def normalise(command: str) -> str:
    return " ".join(command.split())


DOCUMENTED = [(where, normalise(text)) for path in DOCS for where, text in shell_lines(path, PREFIXES)]


@dataclass
class Outcome:
    value: Any  # what the verb's entry returned (a summary dict, a path, a trainer, …)
    stdout: str


class FakeHubApi:
    """Stands in for huggingface_hub.HfApi: records what `hsrm push` asks for, reaches nothing."""

    calls: list = []

    def __init__(self, token=None):
        FakeHubApi.calls.append(("init", token))

    def create_repo(self, repo_id, private=False, repo_type=None, exist_ok=False):
        FakeHubApi.calls.append(("create_repo", repo_id, private))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        FakeHubApi.calls.append(("upload_folder", folder_path, repo_id))
        FakeHubApi.uploaded = sorted(
            str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()
        )
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def _no_network(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise AssertionError(f"a documented command tried to reach {address}")
    return _real_connect(self, address)


_real_connect = socket.socket.connect


class Sandbox:
    def __init__(self, root: Path):
        self.ws = root / "ws"
        self.done: dict[tuple[str, ...], Outcome | BaseException] = {}

    def path(self, relative: str) -> Path:
        return self.ws / relative

    def argv(self, command: str, extra: tuple[str, ...]) -> list[str]:
        return [SUBSTITUTE.get(word, word) for word in shlex.split(command)] + list(extra)

    def run(self, command: str) -> Outcome:
        """Run a documented command once (memoised on its final argv), after what it needs."""
        plan = RUN[command]
        for need in plan.needs:
            self.ensure(need)
        argv = self.argv(command, plan.extra)
        key = tuple(argv)
        if key not in self.done:
            try:
                for word in self.shared_inputs(argv):
                    if not self.path(word).exists():
                        pytest.skip(f"{word} is not present")
                if plan.before:
                    globals()[plan.before](self)
                outcome = self.invoke(argv, real_launch=normalise(command) == REAL_LAUNCH)
                if plan.check:
                    globals()[plan.check](self, outcome)
                self.done[key] = outcome
            except BaseException as err:  # a skip, a failure or a failed check: the same for every later caller
                self.done[key] = err
                raise
        result = self.done[key]
        if isinstance(result, BaseException):
            raise result
        return result

    def shared_inputs(self, argv: list[str]) -> list[str]:
        """../shared/… paths a command reads: in its words, or in its recipe unless overridden."""
        import yaml

        paths = [word for word in argv if word.startswith("../shared/")]
        for word in argv:
            if word.endswith(".yaml") and self.path(word).is_file():
                recipe = yaml.safe_load(self.path(word).read_text()) or {}
                paths += [
                    value
                    for key, value in recipe.items()
                    if isinstance(value, str) and value.startswith("../shared/") and f"--{key}" not in argv
                ]
        return paths

    def ensure(self, need: str) -> None:
        if need in RUN:
            self.run(need)
            return
        if self.path(need).exists():
            return
        if need not in BUILD:  # made by the `sandbox` fixture from ../shared/data
            pytest.skip(f"{need} is not present (made from ../shared/data)")
        maker = BUILD[need]
        try:
            if isinstance(maker, str):
                self.run(maker)
            else:
                argv = self.argv(*maker)
                for word in self.shared_inputs(argv):
                    if not self.path(word).exists():
                        pytest.skip(f"{word} is not present")
                self.invoke(argv)
        except Exception as err:  # noqa: BLE001 - a documented maker's failure is its own test's; here the folder matters
            if not self.path(need).exists():
                raise
            command = maker if isinstance(maker, str) else maker[0]
            warnings.warn(f"{command!r} failed ({type(err).__name__}: {err}) after writing {need}; using it")
        assert self.path(need).exists(), f"{need}: {maker} did not write it"

    def invoke(self, argv: list[str], real_launch: bool = False) -> Outcome:
        if real_launch:
            return self.launch(argv)
        if argv[:2] == ["hsrm", "serve"]:
            return self.serve(argv[2:])
        if argv[0] == "hsrm":
            from hsrm.cli import VERBS

            module, function, _ = VERBS[argv[1]]
            return self.call(module, function, argv[2:])
        if argv[0] in ("accelerate", "torchrun"):  # the recipe half; the launcher half is COVERED_ELSEWHERE
            module = argv[argv.index("-m") + 1]
            body = argv[argv.index("-m") + 2 :]
            if module == "hsrm":  # `-m hsrm VERB …` is the hsrm command
                return self.invoke(["hsrm", *body])
            for key in LAUNCHER_ONLY_KEYS:
                if key in body:
                    at = body.index(key)
                    del body[at : at + 2]
            return self.call(module, "main", body)
        if argv[0].endswith("python") and argv[1] == "-m":
            return self.call(argv[2], "main", argv[3:])
        raise AssertionError(f"no way to run {argv}")

    def call(self, module: str, function: str, argv: list[str]) -> Outcome:
        entry = getattr(importlib.import_module(module), function)
        out = io.StringIO()
        FakeHubApi.calls.clear()
        with pytest.MonkeyPatch.context() as patch, contextlib.chdir(self.ws), contextlib.redirect_stdout(out):
            import huggingface_hub

            patch.setattr(socket.socket, "connect", _no_network)
            patch.setattr(huggingface_hub, "HfApi", FakeHubApi)
            patch.setenv("HF_TOKEN", "hf_docs_run_fake_token")  # read by `hsrm push` only; FakeHubApi ignores it
            try:
                value = entry(list(argv))
            except SystemExit as exit_:  # --help
                value = exit_.code
        return Outcome(value, out.getvalue())

    def serve(self, serve_args: list[str]) -> Outcome:
        """`hsrm serve …` from the sandbox in a subprocess (hsrm.testing.ServeProcess: a free port
        replaces the documented one), asked SERVE_EXAMPLES and /info, then stopped with SIGTERM."""
        from test_serve import request

        from hsrm.testing import ServeProcess

        server = ServeProcess(serve_args, cwd=self.ws, env={"OMP_NUM_THREADS": "1"})
        try:
            answers = {path: request(server.url, path, body) for path, body in SERVE_EXAMPLES.items()}
            answers["/info"] = request(server.url, "/info")
        finally:
            exit_code = server.stop()
        return Outcome({"answers": answers, "exit_code": exit_code}, server.output())

    def launch(self, argv: list[str]) -> Outcome:
        """A real `accelerate launch` subprocess: one CPU process, HF_HOME in the sandbox so that no
        accelerate default config of this machine's user applies."""
        executable = Path(sys.executable).parent / argv[0]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(self.ws.parent / "hf-home"),
        }
        done = subprocess.run(
            [str(executable), *argv[1:]], cwd=self.ws, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        return Outcome(done.returncode, done.stdout + done.stderr)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Sandbox:
    from hsrm.embedding.synthetic import SyntheticWorld
    from hsrm.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("docs-run")
    box = Sandbox(root)
    ws = box.ws
    (ws / "runs").mkdir(parents=True)
    (ws / "data").mkdir()
    for name in ("recipes", "ds_configs", "hsrm"):  # hsrm: its package data (hsrm/recipes/) is documented
        (ws / name).symlink_to(REPO_ROOT / name)
    if SHARED.exists():
        (root / "shared").symlink_to(SHARED)
    # lightweight.md's quick-start set-up lines, as written there
    build_tiny_llama(ws / "runs" / "tiny-llama")
    with open(ws / "runs" / "toy_pairs.jsonl", "w") as f:
        for i in range(40):
            f.write(
                json.dumps(
                    {
                        "prompt": f"Question {i}: how to bake bread?",
                        "chosen": "Thank you, here is a clear answer.",
                        "rejected": "no" if i % 2 else "bad terrible wrong",
                    }
                )
                + "\n"
            )
    # active.md's pool line (SyntheticWorld(dim=32).sample(100, 10)), with 20 prompts
    SyntheticWorld(dim=32).sample(20, 10).save(ws / "pool.npz")
    build_tiny_llama(ws / "runs" / "tiny-causal-lm", causal_lm=True)  # justifier backbone
    write_jsonl(ws / "data" / "pairs.jsonl", make_learnable_pairs(16))
    write_jsonl(ws / "data" / "val_pairs.jsonl", make_learnable_pairs(8, seed=1))
    attributes = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
    write_jsonl(
        ws / "data" / "ratings.jsonl",
        [
            {
                "prompt": f"Question {i}",
                "response": "yes great" if i % 2 else "no",
                **{a: (i + k) % 5 for k, a in enumerate(attributes)},
            }
            for i in range(16)
        ],
    )
    from test_justifier_train import synthetic_preference_rows

    write_jsonl(ws / "data" / "preference.jsonl", synthetic_preference_rows(12))
    write_jsonl(ws / "data" / "rb.jsonl", rewardbench_rows())
    for name, sample in (("rb2", "rewardbench2"), ("rmbench", "rmbench"), ("hs3", "helpsteer3")):
        shutil.copy(REPO_ROOT / "tests" / "data" / f"{sample}_sample.jsonl", ws / "data" / f"{name}.jsonl")
    write_jsonl(
        ws / "data" / "candidates.jsonl",
        [
            {
                "prompt": "How do I bake bread?",
                "responses": ["Flour, water, yeast, salt; knead and bake.", "no", "bad terrible wrong", "Yes."],
            },
            {
                "prompt": [{"role": "user", "content": "What is the capital of France?"}],
                "responses": ["Paris.", "Lyon.", "The capital of France is Paris."],
            },
            {"prompt": "Say thank you.", "response": "Thank you."},
            {"prompt": "Say thank you.", "response": "no"},
        ],
    )
    if (SHARED / "data" / "hh_rlhf" / "helpful-base.test.jsonl.gz").exists():
        # lightweight.md: zcat ../shared/data/hh_rlhf/helpful-base.test.jsonl.gz | sed -n 401,1000p > runs/hh/base_401_1000.jsonl
        import gzip

        (ws / "runs" / "hh").mkdir()
        with gzip.open(SHARED / "data" / "hh_rlhf" / "helpful-base.test.jsonl.gz", "rt") as handle:
            lines = handle.read().splitlines()[400:1000]
        (ws / "runs" / "hh" / "base_401_1000.jsonl").write_text("\n".join(lines) + "\n")
    return box


def rewardbench_rows() -> list[dict]:
    """Two rows of each subset of the RewardBench sample (8 subsets, Chat and Chat Hard), or
    generated rows with those subsets when ../shared/data is absent."""
    sample = SHARED / "data" / "rewardbench_sample" / "reward_bench_filtered_sample.jsonl"
    if sample.exists():
        by_subset: dict[str, list] = {}
        for line in sample.read_text().splitlines():
            row = json.loads(line)
            by_subset.setdefault(row["subset"], []).append(row)
        return [row for rows in by_subset.values() for row in rows[:2]]
    subsets = ["alpacaeval-easy", "alpacaeval-length", "mt-bench-hard", "llmbar-natural"]
    return [
        {**pair, "subset": subsets[i % 4], "id": i, "chosen_model": "a", "rejected_model": "b"}
        for i, pair in enumerate(make_learnable_pairs(8, seed=2, with_strength=False))
    ]


# ------------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("command", [pytest.param(text, id=where) for where, text in DOCUMENTED])
def test_documented_command_runs(command, sandbox, request):
    if command in KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[command]))
    assert command in RUN, f"no RUN entry for the documented command {command!r}"
    sandbox.run(command)
    for test in COVERED_ELSEWHERE.get(command, ()):
        assert_test_exists(test)


def test_one_launcher_command_runs_for_real(sandbox):
    """`accelerate launch -m hsrm.train RECIPE.yaml` in a real subprocess (accelerate's launcher,
    one CPU process): the representative of the launcher commands this machine can run."""
    outcome = sandbox.run(REAL_LAUNCH)
    assert "saved reward model to runs/tiny-bt-accelerate" in outcome.stdout


def test_every_documented_command_has_a_plan():
    documented = {text for _, text in DOCUMENTED}
    unplanned = [f"{where}: {text}" for where, text in DOCUMENTED if text not in RUN]
    assert not unplanned, "documented commands that no test runs (add them to RUN):\n" + "\n".join(unplanned)
    launchers = {text for text in documented if text.startswith(("accelerate ", "torchrun "))} - {REAL_LAUNCH}
    uncovered = launchers - set(COVERED_ELSEWHERE)
    assert not uncovered, f"launcher commands without a COVERED_ELSEWHERE test: {sorted(uncovered)}"
    stale = (set(RUN) | set(COVERED_ELSEWHERE) | set(KNOWN_BUGS)) - documented
    assert not stale, f"entries for commands the docs no longer show (update the tables): {sorted(stale)}"
    assert len(documented) >= 40


def test_substitutions_and_builds_are_used():
    """Every table entry is reachable: a substitution appears in some command, a build is needed."""
    words = {w for _, text in DOCUMENTED for w in shlex.split(text)}
    assert set(SUBSTITUTE) <= words, set(SUBSTITUTE) - words
    needed = {n for plan in RUN.values() for n in plan.needs}
    assert set(BUILD) <= needed, set(BUILD) - needed
    for maker in BUILD.values():
        assert isinstance(maker, tuple) or maker in RUN, maker


@pytest.mark.parametrize("test", sorted({t for tests in COVERED_ELSEWHERE.values() for t in tests}))
def test_covered_elsewhere_names_a_real_test(test):
    assert_test_exists(test)


def assert_test_exists(test: str) -> None:
    path, _, name = test.partition("::")
    name, _, param = name.partition("[")
    text = (REPO_ROOT / path).read_text()
    assert f"def {name}(" in text, f"{test}: no such test function"
    if param:
        assert f'"{param.rstrip("]")}"' in text, f"{test}: no parameter {param.rstrip(']')!r}"


# ------------------------------------------------------------------------------------------------
# Checks on what each command wrote (independent recomputations where they are cheap)


def load_config(box: Sandbox, folder: str) -> dict:
    return json.loads(box.path(folder).joinpath("config.json").read_text())


def assert_reward_model(box: Sandbox, folder: str, objective: str, num_labels: int = 1) -> dict:
    """A plain sequence-classifier folder (config.json + model.safetensors) that transformers loads."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(box, folder)
    assert config["hsrm"]["objective"] == objective
    assert box.path(folder).joinpath("model.safetensors").stat().st_size > 0
    model = AutoModelForSequenceClassification.from_pretrained(str(box.path(folder)))
    assert model.config.num_labels == num_labels
    return config


def plain_reward(box: Sandbox, folder: str, prompt, response: str) -> float:
    """The reward by hand: the model's chat template, no padding, logits of the last token."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cache = box.__dict__.setdefault("_models", {})
    key = (
        folder,
        box.path(folder).joinpath("model.safetensors").stat().st_mtime_ns,
    )  # runs/scaled-bt-expo is rewritten
    if key not in cache:
        cache[key] = (
            AutoModelForSequenceClassification.from_pretrained(str(box.path(folder))).eval(),
            AutoTokenizer.from_pretrained(str(box.path(folder))),
        )
    model, tokenizer = cache[key]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, 0])


def check_smollm_bt(box, outcome):
    config = assert_reward_model(box, "runs/smollm-bt-hh", "bt")
    assert config["hsrm"]["train_data"] == HH_BASE and outcome.value["global_step"] == 2


def check_scaled_bt_recipe(box, outcome):
    config = assert_reward_model(box, "runs/scaled_bt", "scaled_bt")
    assert config["hsrm"]["train_data"] == "data/pairs.jsonl"
    assert outcome.value["global_step"] == 2


def check_top_layers(box, outcome):
    """Only the top blocks, the final norm and the head train: the token embeddings stay as loaded."""
    import torch
    from safetensors.torch import load_file

    assert_reward_model(box, "runs/smollm-bt-top-layers", "bt")
    start = load_file(str(box.path("runs/tiny-llama/model.safetensors")))
    trained = load_file(str(box.path("runs/smollm-bt-top-layers/model.safetensors")))
    assert torch.equal(trained["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    assert not torch.equal(trained["score.weight"], start["score.weight"])


def check_tiny_bt(box, outcome):
    assert_reward_model(box, "runs/tiny-bt", "bt")
    assert outcome.value["global_step"] == 2


def check_packed(box, outcome):
    assert_reward_model(box, "runs/tiny-bt-packed", "bt")
    # the saved folder must not need hsrm's attention kernel to load
    assert "hsrm_varlen" not in box.path("runs/tiny-bt-packed/config.json").read_text()
    assert outcome.value["global_step"] == 2


def check_train_help(box, outcome):
    for key in (
        "--objective",
        "--init_from",
        "--padding_free",
        "--max_tokens_per_batch",
        "--center_rewards_coefficient",
    ):
        assert key in outcome.stdout, key


def check_accelerate_launch(box, outcome):
    assert_reward_model(box, "runs/tiny-bt-accelerate", "bt")


def check_regular_bt(box, outcome):
    config = assert_reward_model(box, "runs/regular_bt", "bt")
    assert config["hsrm"]["train_data"] == "data/pairs.jsonl"


def check_scaled_bt_from_regression(box, outcome):
    """Two-stage training: the score head starts from the regression model's helpfulness head (with
    the recipe's learning rate 2e-6 and 2 steps it can move by a few 1e-6 at most)."""
    from safetensors.torch import load_file

    config = assert_reward_model(box, "runs/scaled-bt-from-regression", "scaled_bt")
    assert config["hsrm"]["init_from"] == "runs/helpfulness-regression"
    regression = load_file(str(box.path("runs/helpfulness-regression/model.safetensors")))
    trained = load_file(str(box.path("runs/scaled-bt-from-regression/model.safetensors")))
    assert (trained["score.weight"] - regression["score.weight"][:1]).abs().max() < 1e-4


def check_justifier_all_flip(box, outcome):
    config = load_config(box, "runs/justifier-all-flip")
    assert config["architectures"] == ["LlamaForCausalLM"]  # a plain causal LM, generating its verdicts
    assert config["hsrm"]["objective"] == "justifier" and config["hsrm"]["justifier_target"] == "full"
    assert config["hsrm"]["flip_augmentation"] is True


def check_rloo_helpsteer2(box, outcome):
    assert outcome.value.state.global_step == 1
    assert load_config(box, "runs/rloo-helpsteer2")["architectures"] == ["LlamaForCausalLM"]


def check_rloo_tiny(box, outcome):
    assert outcome.value.state.global_step == 2
    assert load_config(box, "runs/rloo-tiny")["architectures"] == ["LlamaForCausalLM"]


def assert_rewardbench_json(box, path: str, n: int) -> dict:
    result = json.loads(box.path(path).read_text())
    subsets = result["rewardbench"]["subsets"]
    assert sum(s["n"] for s in subsets.values()) == result["metrics"]["n_pairs"] == n
    assert result["metrics"]["accuracy"] == pytest.approx(sum(s["correct"] for s in subsets.values()) / n)
    assert 0 <= result["rewardbench"]["overall"] <= 1
    assert result["primary_metric"] == {"name": "rewardbench_overall", "value": result["rewardbench"]["overall"]}
    return result


def check_rb_eval_smollm(box, outcome):
    assert_rewardbench_json(box, "runs/smollm-bt-hh/evaluation/reward_bench_filtered_sample.json", 16)


def check_rb_eval_scaled_bt(box, outcome):
    assert_rewardbench_json(box, "runs/scaled-bt/evaluation/reward_bench_filtered_sample.json", 16)


def check_rb_eval_tiny(box, outcome):
    assert_rewardbench_json(box, "runs/tiny-llama/evaluation/reward_bench_filtered_sample.json", 16)
    assert "overall (mean of 1 section)" in outcome.stdout  # the table of evaluation.md's example


def check_pairs_eval(box, outcome):
    result = json.loads(box.path("pairs_eval.json").read_text())
    pairs = [json.loads(line) for line in box.path("data/pairs.jsonl").read_text().splitlines()]
    margins = [
        plain_reward(box, "runs/scaled-bt", p["prompt"], p["chosen"])
        - plain_reward(box, "runs/scaled-bt", p["prompt"], p["rejected"])
        for p in pairs
    ]  # r(chosen) − r(rejected) by hand
    assert result["metrics"]["n_pairs"] == len(pairs)
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean([m > 0 for m in margins]))
    assert result["metrics"]["margin"] == pytest.approx(np.mean(margins), abs=1e-4)
    assert result["primary_metric"]["name"] == "accuracy"


def check_ratings_eval(box, outcome):
    result = json.loads(box.path("runs/regression/evaluation/nvidia_HelpSteer_sample.json").read_text())
    assert result["format"] == "ratings" and result["n"] == 16
    text = json.dumps(result["metrics"])
    for attribute in ("helpfulness", "correctness", "coherence", "complexity", "verbosity"):
        assert attribute in text, attribute


def check_justifier_eval(box, outcome):
    metrics = outcome.value["metrics"]
    assert metrics["pairs"] == 4 and 0 <= metrics["accuracy"] <= 1
    assert len(outcome.value["examples"]) == 8  # both orders of each pair
    assert "Chat" in metrics["rewardbench"]["sections"]


def assert_expo_search(box, metric: str) -> None:
    """The chosen factor is the smallest best-scoring one of the grid (expo.md), recorded in config.json."""
    search = json.loads(box.path("runs/scaled-bt-expo/expo_search.json").read_text())
    assert search["metric"] == metric
    stages = [row["stage"] for row in search["table"]]
    assert stages.count("reference") == 1 and stages.count("coarse") == 10 and "fine" in stages
    candidates = [row for row in search["table"] if row["stage"] != "reference"]
    best = max(row["score"] for row in candidates)
    assert search["chosen_alpha"] == min(row["alpha"] for row in candidates if row["score"] == best)
    assert load_config(box, "runs/scaled-bt-expo")["hsrm"]["expo"]["alpha"] == search["chosen_alpha"]
    assert box.path("runs/scaled-bt-expo/expo_search.csv").read_text().count("\n") == len(stages) + 1


def check_expo_search_pairs(box, outcome):
    assert_expo_search(box, "accuracy")


def check_expo_search_rb(box, outcome):
    assert_expo_search(box, "rewardbench_overall")


def check_expo_alpha(box, outcome):
    """θ = θ_weak + α(θ_strong − θ_weak), computed here in float64 and rounded once (expo.md)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    weak, strong, out = (
        load_file(str(box.path(f"runs/{name}/model.safetensors")))
        for name in ("helpfulness-regression", "scaled-bt-from-regression", "scaled-bt-expo")
    )
    assert set(out) == set(strong)
    for name, tensor in out.items():
        expected = (weak[name].double() + 1.52 * (strong[name].double() - weak[name].double())).to(strong[name].dtype)
        assert torch.equal(tensor, expected), name
    assert load_config(box, "runs/scaled-bt-expo")["hsrm"]["expo"]["alpha"] == 1.52
    AutoModelForSequenceClassification.from_pretrained(str(box.path("runs/scaled-bt-expo")))


def assert_scored(box, folder: str) -> None:
    """One reward per response, each equal to a plain forward pass; Best-of-N = the first argmax."""
    rows = [json.loads(line) for line in box.path("scored.jsonl").read_text().splitlines()]
    assert [len(r["responses"]) for r in rows] == [4, 3, 2]  # the two {prompt, response} rows form one group
    for row in rows:
        expected = [plain_reward(box, folder, row["prompt"], response) for response in row["responses"]]
        assert row["rewards"] == pytest.approx(expected, abs=1e-4)
        assert (
            row["best_index"] == int(np.argmax(row["rewards"]))
            and row["best_response"] == row["responses"][row["best_index"]]
        )


def check_scored_smollm(box, outcome):
    assert_scored(box, "runs/smollm-bt-hh")


def check_scored_expo(box, outcome):
    assert_scored(box, "runs/scaled-bt-expo")


def assert_stage(box, outcome, model: str, repo_id: str) -> str:
    """scoring.md: `<model>.hub` holds weights, config, tokenizer and a card; no pickles, no checkpoints."""
    stage = box.path(f"{model}.hub")
    assert box.path(outcome.value["stage"]).resolve() == stage.resolve()  # relative to the sandbox (or absolute)
    assert outcome.value["uploaded"] is False and not FakeHubApi.calls  # --dry-run: nothing reaches the Hub
    for name in ("README.md", "config.json", "model.safetensors", "tokenizer.json"):
        assert (stage / name).stat().st_size > 0, name
    assert not (stage / "checkpoints").exists() and not list(stage.rglob("*.bin"))
    card = (stage / "README.md").read_text()
    assert f'repo = "{repo_id}"' in card  # the plain-transformers usage snippet
    return card


def check_dry_run_smollm(box, outcome):
    card = assert_stage(box, outcome, "runs/smollm-bt-hh", "you/smollm-bt-hh")
    assert (box.path("runs/smollm-bt-hh.hub/evaluation/reward_bench_filtered_sample.json")).exists()
    assert "**reward_bench_filtered_sample.jsonl** (rewardbench, 16 items" in card


def check_dry_run_expo(box, outcome):
    card = assert_stage(box, outcome, "runs/scaled-bt-expo", "you/scaled-bt-expo")
    assert f"**α = {load_config(box, 'runs/scaled-bt-expo')['hsrm']['expo']['alpha']:g}**" in card


def check_rewardbench2_eval(box, outcome):
    bench = outcome.value["rewardbench2"]
    assert (
        set(bench["subsets"]) == {"Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"}
        and bench["overall"] is not None
    )
    assert "overall (6 of 6 subsets)" in outcome.stdout


def check_rmbench_eval(box, outcome):
    assert set(outcome.value["rmbench"]["domains"]) == {"chat", "math", "code", "safety"}
    assert all(len(d["matrix"]) == 3 for d in outcome.value["rmbench"]["domains"].values())


def check_helpsteer3_eval(box, outcome):
    assert outcome.value["n"] == 7 and set(outcome.value["helpsteer3"]["domain"]) == {
        "code",
        "general",
        "multilingual",
        "stem",
    }


def check_demo(box, outcome):
    report = box.path("demo_report/README.md").read_text()
    assert report.startswith("# hsrm demo report: ") and "## Next steps with the model it trained" in report


def check_demo_data_dir(box, outcome):
    check_demo(box, outcome)
    assert box.path("demo_report/README.md").read_text().startswith("# hsrm demo report: real data from ../shared/data")


def check_upload(box, outcome):
    ((_, folder, _),) = [call for call in FakeHubApi.calls if call[0] == "upload_folder"]
    assert FakeHubApi.calls == [
        ("init", "hf_docs_run_fake_token"),  # the token comes from HF_TOKEN
        ("create_repo", "you/scaled-bt-expo", True),  # --private
        ("upload_folder", folder, "you/scaled-bt-expo"),
    ]
    assert outcome.value["uploaded"] is True and outcome.value["stage"] is None
    assert not Path(folder).exists()  # without --stage the upload folder was temporary and is gone
    assert {"README.md", "config.json", "model.safetensors"} <= set(FakeHubApi.uploaded)


def check_served_expo(box, outcome):
    """scoring.md's server answers its example requests with the in-process scorer's rewards, reports
    the model's record, and exits 0 on SIGTERM."""
    from hsrm.scoring import RewardScorer

    assert outcome.value["exit_code"] == 0, outcome.stdout[-3000:]
    answers = outcome.value["answers"]
    scorer = RewardScorer(str(box.path("runs/scaled-bt-expo")), device="cpu")
    example = SERVE_EXAMPLES["/score"]
    status, body = answers["/score"]
    assert (
        status == 200 and abs(body["rewards"][0] - scorer.score(example["prompts"], example["responses"])[0]) <= 1e-5
    ), body
    status, body = answers["/get_reward"]
    expected = scorer.score_ids([scorer.encode_text(SERVE_EXAMPLES["/get_reward"]["query"][0])]).tolist()
    assert status == 200 and abs(body["rewards"][0] - expected[0]) <= 1e-5, body
    status, info = answers["/info"]
    assert status == 200 and info["record"]["expo"] == load_config(box, "runs/scaled-bt-expo")["hsrm"]["expo"]


def load_embeddings(box, path: str):
    from hsrm.embedding.extract import EmbeddedData

    return EmbeddedData.load(box.path(path))


def check_hh_embeddings(box, outcome):
    data = load_embeddings(box, "runs/hh.npz")
    assert data.embeddings.shape == (16, 32) and data.golden.shape == (16,) and len(data.pair_first) == 8
    assert np.isfinite(data.embeddings).all() and np.isfinite(data.golden).all()


def check_toy_embeddings_then_cache(box, outcome):
    """First run embeds all 80 responses; the second (lightweight.md runs the command twice) takes
    every one from the cache and writes the same arrays."""
    assert outcome.value["embedded"] == 80 and outcome.value["from_cache"] == 0 and outcome.value["pairs"] == 40
    first = load_embeddings(box, "runs/toy.npz")
    again = box.invoke(
        box.argv(
            "hsrm embed --data runs/toy_pairs.jsonl --model runs/tiny-llama --output runs/toy.npz "
            "--cache runs/emb-cache --golden-model runs/tiny-llama --overwrite",
            (),
        )
    )
    assert again.value["embedded"] == 0 and again.value["from_cache"] == 80
    second = load_embeddings(box, "runs/toy.npz")
    assert np.array_equal(first.embeddings, second.embeddings) and np.array_equal(first.golden, second.golden)


def check_toy_rerun_from_cache(box, outcome):
    assert outcome.value["embedded"] == 0 and outcome.value["from_cache"] == 80
    assert load_embeddings(box, "runs/toy.npz").embeddings.shape == (80, 32)


def check_fit_bt_mlp(box, outcome):
    assert box.path("runs/toy-bt").is_dir() and outcome.value["annotations"] == 40
    assert 0 <= outcome.value["eval_pair_accuracy"] <= 1


def check_fit_scores(box, outcome):
    from hsrm.embedding.models import load_model

    scores = np.load(box.path("runs/toy-scores.npy"))
    embeddings = load_embeddings(box, "runs/toy.npz").embeddings
    assert scores.shape == (80,)
    np.testing.assert_allclose(scores, load_model(box.path("runs/toy-bt")).score(embeddings), rtol=1e-5, atol=1e-6)


def check_fit_lgb(box, outcome):
    assert outcome.value["annotations"] == 30 and 0 <= outcome.value["annotation_error_rate"] <= 1
    assert box.path("runs/toy-lgb").is_dir()


def check_tiny_study(box, outcome):
    import pandas as pd

    table = pd.read_csv(box.path("runs/studies/tiny/results.csv"))
    assert len(table) == 3 * 9 and set(table["method"]) == {
        "bt-mlp",
        "clf-mlp",
        "clf-lgb",
    }  # 3 methods × 9 setups, seed 0
    assert box.path("runs/studies/tiny/summary.md").stat().st_size > 0


def check_hh600(box, outcome):
    data = load_embeddings(box, "runs/hh/hh600.npz")
    assert data.embeddings.shape == (48, 32) and data.golden.shape == (48,)


def check_hh_study(box, outcome):
    import pandas as pd

    table = pd.read_csv(box.path("runs/studies/hh-smollm/results.csv"))
    assert set(table["method"]) == {"bt-mlp", "clf-mlp", "clf-lgb"} and set(table["seed"]) == {0}
    assert set(table["beta"]) == {0.5, 1.0, 3.0, 10.0}
    assert set(table["n_annotations"]) == {100, 200, 440} and set(table["pairing"]) == {"in-prompt", "cross-prompt"}


def check_active_study(box, outcome):
    import pandas as pd

    table = pd.read_csv(box.path("runs/active_tiny/results.csv"))
    assert set(table["strategy"]) == {"random", "dopt"} and table.groupby("strategy").size().tolist() == [2, 2]
    assert box.path("runs/active_tiny/summary.md").stat().st_size > 0


def check_active_hh(box, outcome):
    import pandas as pd

    table = pd.read_csv(box.path("runs/active_hh_rlhf/results.csv"))
    assert set(table["strategy"]) == {"random", "dopt"} and set(table["pairing"]) == {"cross-prompt"}
    assert table.groupby("strategy").size().tolist() == [2, 2]  # 20 annotations in rounds of 10


def label_pending_batch(box: Sandbox, state: str = "STATE") -> None:
    """active.md's `python label.py`: the annotators' turn, labels from the pool's golden reward."""
    golden = np.load(box.path("pool.npz"))["golden"]
    pending = json.loads(box.path(f"{state}/state.json").read_text())["pending"]
    path = box.path(f"{state}/{pending}")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["label"] = int(golden[row["first"]] > golden[row["second"]])
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def select_summary(outcome) -> dict:
    return outcome.value  # what `hsrm select` returns (its --json document)


def batch_rows(box, state: str, name: str) -> list[dict]:
    return [json.loads(line) for line in box.path(f"{state}/{name}").read_text().splitlines()]


def check_select_first(box, outcome):
    summary = select_summary(outcome)
    state = Path(summary["state_dir"]).name
    assert summary["round"] == 1 and summary["labels"] == 0 and summary["strategy"] == "random"  # no model yet
    assert summary["open_pairs"] == 20 * 45
    rows = batch_rows(box, state, "batch_0001.jsonl")
    assert len(rows) == 100 and all(row["label"] is None for row in rows)


def check_select_second(box, outcome):
    summary = select_summary(outcome)
    assert (
        summary["round"] == 2 and summary["labels"] == summary["ingested_now"] == 100 and summary["strategy"] == "dopt"
    )
    first = {row["pair_id"] for row in batch_rows(box, "STATE", "batch_0001.jsonl")}
    second = {row["pair_id"] for row in batch_rows(box, "STATE", "batch_0002.jsonl")}
    assert len(second) == 100 and not first & second


def check_select_third(box, outcome):
    summary = select_summary(outcome)
    assert summary["round"] == 3 and summary["labels"] == 200 and summary["strategy"] == "pa_dopt"
    # active.md's `ls STATE`
    assert sorted(p.name for p in box.path("STATE").iterdir()) == [
        "batch_0001.jsonl",
        "batch_0002.jsonl",
        "batch_0003.jsonl",
        "labels.jsonl",
        "model",
        "state.json",
    ]
