"""The RLOO recipe: two real steps of TRL's RLOOTrainer with a tiny policy and an hsrm reward model
used through RewardScorer, and the paper-scale recipe parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


class RecordingScorer:
    """Passes calls through to a RewardScorer and keeps what TRL sent and got back."""

    def __init__(self, scorer):
        self.scorer, self.calls = scorer, []
        self.__name__ = scorer.__name__

    def __call__(self, prompts, completions, **kwargs):
        rewards = self.scorer(prompts, completions, **kwargs)
        self.calls.append((prompts, completions, rewards))
        return rewards


@pytest.mark.slow
def test_rloo_tiny_recipe_runs_two_steps_with_the_hsrm_reward(tmp_path, tiny_model_dir):
    from hsrm.rloo import build_trainer, load_rloo_recipe
    from hsrm.scoring import RewardScorer

    setup, cfg = load_rloo_recipe(
        REPO_ROOT / "recipes" / "rloo_tiny.yaml",
        {"output_dir": str(tmp_path / "run"), "reward_model": str(tiny_model_dir)},
    )
    assert cfg.num_generations == 4 and cfg.max_steps == 2
    recorder = RecordingScorer(RewardScorer(setup.reward_model, max_length=setup.reward_max_length))
    trainer = build_trainer(setup, cfg, scorer=recorder)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()

    assert trainer.state.global_step == 2
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert changed, "two RLOO updates must move the policy"
    assert len(recorder.calls) == 2  # one generation batch per step: 2 prompts × 4 samples
    logged = [h for h in trainer.state.log_history if f"rewards/{recorder.__name__}/mean" in h]
    assert len(logged) == 2
    for (prompts, completions, rewards), log in zip(recorder.calls, logged):
        assert len(completions) == 8
        assert all(p == prompts[4 * (i // 4)] for i, p in enumerate(prompts)), "4 consecutive samples per prompt"
        assert log[f"rewards/{recorder.__name__}/mean"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-5)
    # The reward TRL saw is the reward model's own reading of prompt + completion through its chat template.
    scorer = recorder.scorer
    prompts, completions, rewards = recorder.calls[0]
    for prompt, completion, reward in list(zip(prompts, completions, rewards))[:3]:
        text = scorer.tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        ids = scorer.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][
            :, -setup.reward_max_length :
        ]
        with torch.no_grad():
            assert reward == pytest.approx(float(scorer.model(input_ids=ids).logits[0, 0]), abs=1e-4)


@pytest.mark.parametrize("recipe", ["rloo_tiny.yaml", "rloo_helpsteer2.yaml"])
def test_rloo_recipes_parse_and_follow_the_paper(recipe):
    from hsrm.rloo import load_rloo_recipe

    path = REPO_ROOT / "recipes" / recipe
    header = path.read_text().splitlines()[0]
    assert header.startswith("# ") and (
        f"hsrm rloo recipes/{recipe}" in header or f"-m hsrm.rloo recipes/{recipe}" in header
    )
    # bf16 needs a GPU; only that is overridden on this CPU machine.
    setup, cfg = load_rloo_recipe(path, {"bf16": False, "use_cpu": True, "output_dir": "/tmp/unused"})
    assert cfg.num_generations == 4  # four samples per prompt, leave-one-out baseline (§5.2)
    assert cfg.beta > 0  # KL-regularised reward
    assert cfg.weight_decay == 0.1 and cfg.lr_scheduler_type == "constant_with_warmup"  # appendix E
    if recipe == "rloo_helpsteer2.yaml":
        assert setup.prompt_data == "nvidia/HelpSteer2" and cfg.warmup_steps == 10 and cfg.save_steps == 5
        assert 1e-7 <= cfg.learning_rate <= 1e-6 and cfg.beta in (0.01, 0.1)


def test_unknown_recipe_key_is_named(tmp_path):
    from hsrm.rloo import load_rloo_recipe

    path = tmp_path / "r.yaml"
    path.write_text("num_generation: 4\n")
    with pytest.raises(ValueError, match="num_generation .did you mean num_generations"):
        load_rloo_recipe(path)


def test_prompts_from_helpsteer_style_file_are_split_and_deduplicated(tmp_path):
    from conftest import write_jsonl
    from hsrm.rloo import RLOOSetup, load_prompts

    rows = [
        {"split": "train", "prompt": "Hi<extra_id_1>Assistant\nHello!<extra_id_1>User\nBake bread?", "response_1": "a"},
        {"split": "train", "prompt": "Hi<extra_id_1>Assistant\nHello!<extra_id_1>User\nBake bread?", "response_1": "b"},
        {"split": "val", "prompt": "Validation only", "response_1": "c"},
        {"split": "train", "prompt": "Capital of France?", "response_1": "d"},
    ]
    data = write_jsonl(tmp_path / "helpsteer2_pref.jsonl", rows)
    prompts = load_prompts(RLOOSetup(prompt_data=str(data)))["prompt"]
    assert prompts == [
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bake bread?"},
        ],
        [{"role": "user", "content": "Capital of France?"}],
    ]
