"""Align a policy with an hsrm reward model: REINFORCE with a leave-one-out baseline (RLOO).

    hsrm rloo recipes/rloo_tiny.yaml
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m hsrm.rloo recipes/rloo_helpsteer2.yaml

HelpSteer2-Preference §5.2 / appendix E (after Ahmadian et al., 2024; Kool et al., 2019): sample
k = 4 responses per prompt, reward each with the reward model, subtract β·KL(π ‖ π_ref) from the
sequence reward, and use the mean reward of the *other* k − 1 samples as the baseline:

    A_i = R_i − (1 / (k − 1)) Σ_{j≠i} R_j,   R_i = r(x, y_i) − β · KL_i

TRL's ``RLOOTrainer`` owns the loop (generation, KL, baseline, update); hsrm provides the recipe,
the prompts and the reward function (:class:`hsrm.scoring.RewardScorer`), which renders each
prompt + completion with the *reward model's* chat template and left-truncates exactly as in
reward-model training.

A recipe is one flat YAML: the hsrm keys below plus any ``trl.RLOOConfig`` field (``hsrm rloo --help``
lists them all).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .options import Dtype, Options, ResultFormat, option

logger = logging.getLogger("hsrm.rloo")

TINY = "tiny-random"  # model value that builds a random tiny model locally (hsrm.tiny): smoke runs, tests


@dataclass
class RLOOSetup(ResultFormat, Options):
    """The recipe keys that are hsrm's, not TRL's."""

    policy_model: str = option(
        TINY, "causal LM folder or Hub id (paper: Llama-3.1-70B-Instruct); tiny-random builds one"
    )
    reward_model: str = option(
        TINY, "an `hsrm train` / `hsrm expo` output folder (paper: Scaled BT + ExPO); tiny-random builds one"
    )
    prompt_data: str | None = option(None, "HelpSteer2(-Preference) or any file with a `prompt` column")
    prompts: list[str] | None = option(None, "inline prompts, used when prompt_data is empty")
    prompt_split: str = option("train", "split of prompt_data")
    max_prompts: int | None = option(None, "keep the first N distinct prompts", positive=True)
    reward_batch_size: int = option(8, "reward-model sequences per forward pass", positive=True)
    reward_max_length: int | None = option(
        None, "reward-model tokens per sequence, cut from the left (empty: the reward model's own)", positive=True
    )
    reward_dtype: Dtype = option("float32", "the reward model's precision (bfloat16 for large ones on GPU)")
    overwrite: bool = option(False, "replace what --output holds (a previous run); never an input")


def rloo_options(argv: list[str] | None = None, defaults: dict[str, Any] | None = None):
    """(RLOOSetup, trl.RLOOConfig): a flat recipe of hsrm keys plus any RLOOConfig field."""
    from trl import RLOOConfig

    from .options import parse_options

    defaults = {"report_to": "none", **(defaults or {})}
    return parse_options(
        (RLOOSetup, RLOOConfig),
        argv,
        prog="hsrm rloo",
        positional="config",
        defaults=defaults,
        description="RLOO (REINFORCE leave-one-out) on TRL's RLOOTrainer with an hsrm reward model.",
    )


def load_rloo_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None):
    """(RLOOSetup, trl.RLOOConfig) from a YAML recipe plus values, typed exactly as ``hsrm rloo`` types them."""
    return rloo_options([f"--config={path}"] if path is not None else [], overrides)


def load_prompts(setup: RLOOSetup):
    """A ``datasets.Dataset`` with one conversational ``prompt`` (chat messages ending on a user
    turn) per distinct prompt. HelpSteer2 prompts have their ``<extra_id_1>`` turns split."""
    import datasets

    from .data.io import DataError, in_split, read_rows
    from .data.messages import HELPSTEER_TURN_SEPARATOR, split_helpsteer_turns, to_messages

    if setup.prompt_data:
        source = setup.prompt_data
        is_helpsteer = "helpsteer" in source.lower()
        rows = read_rows(source, split=setup.prompt_split, data_dir="preference" if is_helpsteer else None)
        raw = [
            row.get("prompt")
            for row in rows
            if isinstance(row, dict) and in_split(row.get("split"), setup.prompt_split)
        ]
    elif setup.prompts:
        source, raw = "recipe prompts", list(setup.prompts)
    else:
        raise InputError("the recipe gives no prompts: set prompt_data (a file or Hub id) or prompts (a list)")
    seen, prompts = set(), []
    for index, prompt in enumerate(raw):
        if isinstance(prompt, str) and HELPSTEER_TURN_SEPARATOR in prompt:
            messages = split_helpsteer_turns(prompt)
        else:
            messages = to_messages(prompt, source, index)
        if messages[-1]["role"] != "user":
            raise DataError(source, index, "prompt", "a prompt must end with a user turn for the policy to answer")
        key = repr(messages)
        if key not in seen:
            seen.add(key)
            prompts.append(messages)
        if setup.max_prompts is not None and len(prompts) >= setup.max_prompts:
            break
    if not prompts:
        raise InputError(f"{source}: no prompts found")
    logger.info("%d distinct prompts from %s", len(prompts), source)
    return datasets.Dataset.from_dict({"prompt": prompts})


def _resolve_models(setup: RLOOSetup, output_dir: str) -> tuple[str, str]:
    from .tiny import build_tiny_llama

    policy, reward = setup.policy_model, setup.reward_model
    if policy == TINY:
        policy = str(build_tiny_llama(Path(output_dir) / "tiny-policy", causal_lm=True, seed=1))
    if reward == TINY:
        reward = str(build_tiny_llama(Path(output_dir) / "tiny-reward", seed=2))
    return policy, reward


def reward_function(setup: RLOOSetup, reward_model: str | None = None):
    """The reward function RLOO optimises: a :class:`hsrm.scoring.RewardScorer` over the recipe's
    reward model (the engine, the model's chat template, its recorded weights and max_length)."""
    from .scoring import RewardScorer

    return RewardScorer(
        reward_model or setup.reward_model,
        batch_size=setup.reward_batch_size,
        max_length=setup.reward_max_length,
        dtype=setup.reward_dtype,
    )


def build_trainer(setup: RLOOSetup, cfg, scorer=None):
    """The ``trl.RLOOTrainer`` for a recipe; ``scorer`` replaces the reward model (tests)."""
    from trl import RLOOTrainer

    policy, reward = _resolve_models(setup, cfg.output_dir)
    scorer = scorer or reward_function(setup, reward)
    return RLOOTrainer(model=policy, reward_funcs=scorer, args=cfg, train_dataset=load_prompts(setup))


def claim_output_dir(setup: RLOOSetup, cfg):
    """The output rule of every writer (``hsrm.files.claimed_run_folder``), held for the run: the policy
    goes to a new folder, or to this run's own when resuming; never into or over the policy, the
    reward model or the prompts, and another run's folder only with ``--overwrite``."""
    from .files import claimed_run_folder, file_fingerprint
    from .train import resuming

    inputs = [model for model in (setup.policy_model, setup.reward_model) if model != TINY] + [setup.prompt_data]

    def wait_for_all() -> None:
        if cfg.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    key = {
        "verb": "rloo",
        "policy_model": setup.policy_model,
        "reward_model": setup.reward_model,
        "prompts": file_fingerprint(setup.prompt_data) if setup.prompt_data else setup.prompts,
        "seed": cfg.seed,
    }
    return claimed_run_folder(
        cfg.output_dir,
        key,
        inputs=inputs,
        overwrite=setup.overwrite,
        resume=resuming(cfg),
        main_process=cfg.process_index == 0,
        wait_for_all=wait_for_all,
    )


def main(argv: list[str] | None = None):
    setup, cfg = rloo_options(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from .trainers.base import token_withheld

    with claim_output_dir(setup, cfg):
        trainer = build_trainer(setup, cfg)
        # transformers pickles the arguments into every checkpoint and the final folder: unless the run
        # pushes to the Hub itself, none of those files may hold hub_token
        with contextlib.nullcontext() if cfg.push_to_hub else token_withheld(trainer.args):
            result = trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
            trainer.save_model(cfg.output_dir)
    if trainer.is_world_process_zero():  # one line per run, not one per rank
        from .options import print_result

        print_result(
            {"output": cfg.output_dir, "global_step": result.global_step, "train_loss": result.training_loss},
            f"saved the policy to {cfg.output_dir} ({result.global_step} steps)",
            setup.json,
        )
    return trainer


if __name__ == "__main__":  # accelerate launch -m hsrm.rloo
    from .cli import end_process

    main()
    end_process(0)
