"""Shared prompts in the scoring engine (issue 32): a common token-id prefix computed once gives the
rewards of full-sequence scoring.

Every comparison is against two independent computations: the engine with ``share_prompts=False``
(full sequences, padded batches) and a plain-transformers forward of each unpadded sequence alone,
read at its last token. fp32 on CPU, within 1e-4 (the issue's bound; the observed gap is ~1e-7).
"""

from __future__ import annotations

import random

import pytest
import torch

from hsrm.engine import score_sequences, shared_prefix_fallback, shared_prefix_groups

TOLERANCE = 1e-4
VOCAB = 300
WEIGHTS = [0.5, -0.25, 1.0]


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(5, VOCAB) for _ in range(n)]


def mixed_sequences(seed: int = 0) -> list[list[int]]:
    """Best-of-N groups of 2–6 responses, singletons, a duplicate, a sequence that is a prefix of
    another (an empty continuation if shared naively), a system-prompt-like prefix common to all
    (nested sharing), and left-truncated copies (a group's prompt cut at different places), shuffled."""
    rng = random.Random(seed)
    system = ids(rng, 6)
    sequences = []
    for size in (2, 3, 6, 1, 1, 4):
        prompt = system + ids(rng, rng.randrange(16, 40))
        sequences += [prompt + ids(rng, rng.randrange(1, 20)) for _ in range(size)]
    sequences.append(list(sequences[0]))  # duplicate
    sequences.append(sequences[1][:-3])  # a prefix of another sequence
    long_prompt = ids(rng, 50)
    for _ in range(3):  # left truncation to 40 tokens: each starts wherever its response length puts it
        sequences.append((long_prompt + ids(rng, rng.randrange(2, 12)))[-40:])
    rng.shuffle(sequences)
    return sequences


def plain_outputs(model, sequences) -> torch.Tensor:
    """The independent computation: each sequence alone, no padding, the head at its last token."""
    body = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        return torch.stack(
            [model.score(body(input_ids=torch.tensor([s])).last_hidden_state[0, -1]) for s in sequences]
        ).float()


def tiny_config_model(kind: str, num_labels: int = 3, attn: str = "sdpa", **overrides):
    """A random two-layer sequence classifier of another architecture, from a config (nothing downloaded)."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig, MistralConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[kind]
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=num_labels,
        pad_token_id=0,
        **overrides,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    from hsrm.tiny import build_tiny_llama

    folder = build_tiny_llama(tmp_path_factory.mktemp("shared-llama"), num_labels=3)
    return AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32).eval()


def test_groups_share_real_prefixes_and_keep_a_token_to_read():
    sequences = mixed_sequences()
    groups = shared_prefix_groups(sequences)
    assert groups, "the Best-of-N groups must be found"
    seen = [i for _, members in groups for i in members]
    assert len(seen) == len(set(seen))  # each sequence in one group at most
    for length, members in groups:
        assert len(members) >= 2 and length >= 16
        first = sequences[members[0]][:length]
        assert all(sequences[i][:length] == first for i in members)
        assert all(len(sequences[i]) > length for i in members)  # a continuation of at least one token
    # The per-prompt groups beat one group sharing only the 6-token system prompt: (n−1)·prefix is larger.
    assert len(groups) >= 4


def test_nested_prefixes_pick_the_partition_that_computes_fewest_tokens():
    rng = random.Random(3)
    common = ids(rng, 40)
    a, b = common + ids(rng, 30), common + ids(rng, 30)
    # Two groups of two below a 40-token common prefix: one group of four saves 3×40 = 120 tokens,
    # two groups save 70 + 70 = 140.
    sequences = [a + [7], a + [8], b + [7], b + [8]]
    assert sorted(shared_prefix_groups(sequences)) == [(70, [0, 1]), (70, [2, 3])]
    # With eight responses under the common prefix only, one group of all of them.
    many = [common + ids(rng, 5) for _ in range(8)]
    assert shared_prefix_groups(many) == [(40, sorted(range(8), key=lambda i: many[i]))]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_llama_rewards_equal_full_sequences(llama, batch_size):
    sequences = mixed_sequences()
    stats = {}
    shared = score_sequences(llama, sequences, batch_size=batch_size, all_outputs=True, stats=stats)
    unshared = score_sequences(llama, sequences, batch_size=batch_size, all_outputs=True, share_prompts=False)
    plain = plain_outputs(llama, sequences)
    assert stats["fallback"] is None and stats["shared_sequences"] >= 15
    assert stats["tokens_computed"] < 0.7 * stats["tokens"]
    assert torch.allclose(shared, unshared, atol=TOLERANCE, rtol=0)
    assert torch.allclose(shared, plain, atol=TOLERANCE, rtol=0)
    weighted = score_sequences(llama, sequences, batch_size=batch_size, attribute_weights=WEIGHTS)
    assert torch.allclose(weighted, plain @ torch.tensor(WEIGHTS), atol=TOLERANCE, rtol=0)


def restart_positions(batch):
    batch["position_ids"] = batch["position_ids"] - batch["position_ids"][:, :1]


def hide_prefix(batch):
    width = batch["attention_mask"].shape[1] - batch["input_ids"].shape[1]
    batch["attention_mask"][:, :width] = 0


@pytest.mark.parametrize("mistake", [restart_positions, hide_prefix])
def test_the_comparison_catches_a_continuation_that_does_not_continue_its_prefix(llama, monkeypatch, mistake):
    """The checks above can fail: positions restarting at 0 after the prefix, or a continuation that
    does not see its prefix, move the rewards beyond the tolerance."""
    import hsrm.engine as engine

    real = engine.shared_prefix_batches

    def mistaken(*args, **kwargs):
        for indices, batch in real(*args, **kwargs):
            mistake(batch)
            yield indices, batch

    monkeypatch.setattr(engine, "shared_prefix_batches", mistaken)
    sequences = mixed_sequences()
    wrong = score_sequences(llama, sequences, all_outputs=True)
    assert (wrong - plain_outputs(llama, sequences)).abs().max() > 3 * TOLERANCE


@pytest.mark.parametrize(("kind", "attn"), [("qwen2", "sdpa"), ("mistral", "eager")])
def test_other_architectures_equal_full_sequences(kind, attn):
    model = tiny_config_model(kind, attn=attn)
    sequences = mixed_sequences(seed=1)
    stats = {}
    shared = score_sequences(model, sequences, batch_size=4, all_outputs=True, stats=stats)
    assert stats["fallback"] is None and stats["shared_groups"] >= 4
    assert torch.allclose(shared, plain_outputs(model, sequences), atol=TOLERANCE, rtol=0)
    assert torch.allclose(
        shared, score_sequences(model, sequences, all_outputs=True, share_prompts=False), atol=TOLERANCE, rtol=0
    )


def test_lora_wrapped_model_equals_full_sequences(llama):
    import copy

    from hsrm.modeling import apply_lora

    model = apply_lora(copy.deepcopy(llama), r=4, dropout=0.0)
    for name, parameter in model.named_parameters():  # a non-zero adapter, so LoRA changes the rewards
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    model.eval()
    sequences = mixed_sequences(seed=2)
    stats = {}
    shared = score_sequences(model, sequences, all_outputs=True, stats=stats)
    assert stats["fallback"] is None
    unshared = score_sequences(model, sequences, all_outputs=True, share_prompts=False)
    assert torch.allclose(shared, unshared, atol=TOLERANCE, rtol=0)
    assert (unshared - score_sequences(llama, sequences, all_outputs=True)).abs().max() > 100 * TOLERANCE


def test_fallbacks_are_exact_and_say_why(llama):
    sequences = mixed_sequences(seed=4)
    unshared = score_sequences(llama, sequences, all_outputs=True, share_prompts=False)
    windowed = tiny_config_model("mistral", sliding_window=32)  # shorter than twice the longest sequence
    assert "sliding window" in shared_prefix_fallback(windowed, max(map(len, sequences)))
    stats = {}
    score_sequences(windowed, sequences, stats=stats)
    assert "sliding window" in stats["fallback"] and stats["shared_sequences"] == 0
    assert stats["tokens_computed"] == stats["tokens"]

    stats = {}
    packed = score_sequences(llama, sequences, layout="packed", all_outputs=True, stats=stats)
    assert stats["fallback"].startswith("packed layout")
    assert torch.allclose(packed, unshared, atol=TOLERANCE, rtol=0)

    stats = {}
    assert score_sequences(llama, sequences, share_prompts=False, stats=stats).shape == (len(sequences),)
    assert stats["fallback"] is None and stats["shared_sequences"] == 0


def test_bidirectional_or_flash_attention_falls_back(llama, monkeypatch):
    body = llama.model
    monkeypatch.setattr(body.layers[0].self_attn, "is_causal", False)
    assert "bidirectional" in shared_prefix_fallback(llama, 10)
    monkeypatch.undo()
    assert shared_prefix_fallback(llama, 10) is None
    monkeypatch.setattr(body.config, "_attn_implementation", "flash_attention_2")
    assert "flash_attention_2" in shared_prefix_fallback(llama, 10)


def test_the_option_reaches_the_engine_from_every_verb(tiny_model_dir, monkeypatch):
    """``share_prompts`` from the command line to the engine, through RewardScorer (score, evaluate,
    ExPO and serve all score through it)."""
    import hsrm.scoring as scoring
    from hsrm.options import EvaluateOptions, ExpoOptions, ScoreOptions, parse_options

    for options, required in (
        (ScoreOptions, ["--model", "m", "--data", "d"]),
        (EvaluateOptions, ["--model", "m", "--data", "d"]),
        (ExpoOptions, ["--weak", "w", "--strong", "s", "--output", "o", "--search", "--data", "d"]),
    ):
        assert parse_options(options, required, prog="hsrm").share_prompts is True
        assert parse_options(options, [*required, "--share-prompts", "false"], prog="hsrm").share_prompts is False

    seen = []
    real = scoring.score_sequences
    monkeypatch.setattr(scoring, "score_sequences", lambda *a, **k: seen.append(k["share_prompts"]) or real(*a, **k))
    for share in (True, False):
        scorer = scoring.RewardScorer(str(tiny_model_dir), share_prompts=share, device="cpu")
        scorer.score(["a question"] * 2, ["yes", "no"])
    assert seen == [True, False]


def test_bench_smoke_on_real_pairs(tiny_model_dir, shared_data, capsys):
    """bench/shared_prompts.py end to end at a tiny size (the tiny model stands in for SmolLM2): both
    workloads shared, fewer tokens computed, the same rewards."""
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("shared_prompts_bench", REPO_ROOT / "bench" / "shared_prompts.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = shared_data / "hh_rlhf" / "helpful-online.test.jsonl.gz"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--pairs", "6", "--groups", "2", "--repeats", "1"]
    result = bench.main([*argv, "--max-length", "256"])
    for name in ("pairs", "best_of_8"):
        row = result[name]
        assert row["fallback"] is None and row["shared_sequences"] > 0
        assert row["tokens_computed_shared"] < row["tokens"]
        assert row["max_abs_reward_difference"] < TOLERANCE
    step = result["pair_training_step"]
    assert step["tokens_computed_shared"] < step["tokens"] and step["pairs"] == 16
    assert step["max_abs_gradient_difference"] < GRADIENT_TOLERANCE
    assert step["loss_shared"] == pytest.approx(step["loss_unshared"], abs=GRADIENT_TOLERANCE)
    out = capsys.readouterr().out
    assert "best_of_8:" in out and "pair training step:" in out


# ------------------------------------------------------------------------- training (item 2)
GRADIENT_TOLERANCE = 1e-5


def pair_rows(seed: int = 1) -> list[dict]:
    """Pairs whose sides share prompts of 0–40 tokens (those under 16 are two rows), continuations
    of different lengths, one side a prefix of the other, identical sides, and a pair left-truncated
    to 24 tokens (its sides then start at different places and share nothing)."""
    rng = random.Random(seed)
    rows = []
    for prompt_length in (0, 3, 17, 40, 25, 9):
        prompt = ids(rng, prompt_length)
        rows.append(
            {
                "chosen_ids": prompt + ids(rng, rng.randrange(1, 15)),
                "rejected_ids": prompt + ids(rng, rng.randrange(1, 15)),
                "margin": rng.choice([0.5, 1.0, 3.0]),
            }
        )
    prompt, extra = ids(rng, 20), ids(rng, 4)
    rows.append({"chosen_ids": prompt + extra, "rejected_ids": prompt + extra + ids(rng, 3), "margin": 2.0})
    rows.append({"chosen_ids": prompt + extra, "rejected_ids": prompt + extra, "margin": 1.0})
    long_prompt = ids(rng, 30)
    rows.append(
        {
            "chosen_ids": (long_prompt + ids(rng, 4))[-24:],
            "rejected_ids": (long_prompt + ids(rng, 9))[-24:],
            "margin": 1.0,
        }
    )
    return rows


def scalar_model(kind: str, attn: str):
    """A random two-layer scalar reward model whose ``forward`` reads rewards as the trainers do."""
    from hsrm.modeling import read_rewards_in_forward

    return read_rewards_in_forward(tiny_config_model(kind, num_labels=1, attn=attn).train())


def loss_and_gradients(model, loss_of_rewards, rewards_of) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    chosen, rejected = rewards_of(model)
    loss = loss_of_rewards(chosen, rejected)
    loss.backward()
    return float(loss.detach()), [p.grad.detach().clone() for p in model.parameters()]


def plain_pair_rewards(rows):
    """The independent computation: every side alone, no padding, read at its last token."""

    def rewards(model):
        body = getattr(model, model.base_model_prefix)
        read = [model.score(body(input_ids=torch.tensor([s])).last_hidden_state[0, -1]) for s in sequences]
        return torch.cat(read[: len(rows)]), torch.cat(read[len(rows) :])

    sequences = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    return rewards


@pytest.mark.parametrize("objective", ["bt", "margin_bt", "scaled_bt", "centered"])
@pytest.mark.parametrize("kind,attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_pair_rows_give_the_losses_and_gradients_of_separate_sequences(objective, kind, attn):
    """One row per pair, the prompt computed once: the loss and every parameter's gradient equal
    each side computed alone (and the padded two-row batch) within 1e-5 in fp32, for every BT objective."""
    from hsrm.data.collators import PairwiseCollator, SharedPromptPairCollator
    from hsrm.losses import centering_loss, get_pairwise_loss
    from hsrm.trainers.pairwise import split_pair_rewards

    rows = pair_rows()
    margin = torch.tensor([r["margin"] for r in rows])
    pairwise = get_pairwise_loss("bt" if objective == "centered" else objective)

    def loss(chosen, rejected):
        value = pairwise(chosen, rejected, margin)
        return value + 0.01 * centering_loss(chosen, rejected) if objective == "centered" else value

    model = scalar_model(kind, attn)
    shared_batch = SharedPromptPairCollator(pad_id=0)(rows)
    # Prompts of 17, 40 and 25 tokens, and 23 for the last two pairs (one token short of the shorter
    # side), are computed once; the pairs sharing 0, 3 or 9 tokens and the truncated one are two rows.
    assert int((shared_batch["segment_ids"] == 0).sum()) == 17 + 40 + 25 + 23 + 23
    assert shared_batch["input_ids"].shape[0] == 5 + 2 * 4
    shared = loss_and_gradients(model, loss, lambda m: split_pair_rewards(m, shared_batch))
    padded = loss_and_gradients(model, loss, lambda m: split_pair_rewards(m, PairwiseCollator(pad_id=0)(rows)))
    alone = loss_and_gradients(model, loss, plain_pair_rewards(rows))
    for other in (padded, alone):
        assert shared[0] == pytest.approx(other[0], abs=GRADIENT_TOLERANCE)
        assert max(float((a - b).abs().max()) for a, b in zip(shared[1], other[1])) < GRADIENT_TOLERANCE


def test_the_gradient_check_catches_a_rejected_side_that_sees_the_chosen_one(monkeypatch):
    """The comparison above can fail: let the rejected tokens attend to the chosen ones (one segment)
    and the rewards move far beyond the tolerance."""
    from hsrm.data.collators import SharedPromptPairCollator
    from hsrm.trainers.pairwise import split_pair_rewards

    rows = pair_rows()
    model = scalar_model("llama", "sdpa")
    batch = SharedPromptPairCollator(pad_id=0)(rows)
    leaky = {**batch, "segment_ids": batch["segment_ids"].masked_fill(batch["segment_ids"] == 2, 1)}
    with torch.no_grad():
        _, rejected = split_pair_rewards(model, batch)
        _, leaked = split_pair_rewards(model, leaky)
        _, alone = plain_pair_rewards(rows)(model)
    assert float((rejected - alone).abs().max()) < TOLERANCE
    assert float((leaked - alone).abs().max()) > 100 * TOLERANCE


def train_weights(tmp_path, tiny_model_dir, rows, **overrides) -> dict[str, torch.Tensor]:
    import datasets

    from hsrm.config import load_recipe
    from hsrm.train import make_trainer
    from hsrm.trainers.base import build_model

    cfg = load_recipe(
        None,
        {
            "model_name_or_path": str(tiny_model_dir),
            "output_dir": str(tmp_path / "out"),
            "objective": "margin_bt",
            "optim": "sgd",  # the update is lr × gradient: equal weights mean equal gradients
            "learning_rate": 1.0,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "max_grad_norm": 1e9,
            "num_train_epochs": 1,
            "save_strategy": "no",
            "use_cpu": True,
            "seed": 0,
            "report_to": "none",
            "disable_tqdm": True,
            **overrides,
        },
    )
    model, tokenizer = build_model(cfg)
    trainer = make_trainer(cfg, model, tokenizer, datasets.Dataset.from_list(rows), None)
    trainer.train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}, trainer


@pytest.mark.parametrize(
    "batching",
    [
        {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 3},
        {"max_tokens_per_batch": 120, "gradient_accumulation_steps": 16},
    ],
    ids=["accumulation", "token-budget"],
)
def test_a_training_step_with_shared_prompts_equals_one_without(tmp_path, tiny_model_dir, batching):
    """One optimizer step over every pair, accumulated over micro-batches (a fixed number of pairs, or
    a token budget that counts one row per pair when shared, two when not — so the two runs cut
    their micro-batches differently): the same weights after the step within 1e-5 (lr 1, SGD)."""
    from hsrm.data.collators import PairwiseCollator, SharedPromptPairCollator

    rows = pair_rows()
    shared, shared_trainer = train_weights(tmp_path / "shared", tiny_model_dir, rows, share_prompts=True, **batching)
    apart, apart_trainer = train_weights(tmp_path / "apart", tiny_model_dir, rows, share_prompts=False, **batching)
    assert isinstance(shared_trainer.data_collator, SharedPromptPairCollator)
    assert isinstance(apart_trainer.data_collator, PairwiseCollator)
    assert shared_trainer.state.global_step == apart_trainer.state.global_step == 1
    if "max_tokens_per_batch" in batching:  # the budget counts computed tokens: fewer micro-batches shared
        assert len(shared_trainer.get_train_dataloader()) < len(apart_trainer.get_train_dataloader())
    initial, _ = train_weights(tmp_path / "none", tiny_model_dir, rows, learning_rate=0.0, **batching)
    moved = max(float((shared[n] - initial[n]).abs().max()) for n in shared)
    assert moved > 1e-3  # the step changed the weights, so equal weights say equal gradients
    assert max(float((shared[n] - apart[n]).abs().max()) for n in shared) < GRADIENT_TOLERANCE


def test_training_falls_back_where_sharing_is_not_exact(tmp_path, tiny_model_dir, caplog):
    """padding_free packs each side, flash-style attention cannot take the pair mask: each side is
    computed whole, and the log says why."""
    import logging

    from hsrm.config import load_recipe
    from hsrm.data.collators import PackedPairwiseCollator, PairwiseCollator, SharedPromptPairCollator
    from hsrm.train import pair_collator

    model = scalar_model("llama", "sdpa")
    base = {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path), "use_cpu": True}
    with caplog.at_level(logging.INFO, logger="hsrm.train"):
        assert isinstance(pair_collator(load_recipe(None, base), model, 0), SharedPromptPairCollator)
        packed = pair_collator(load_recipe(None, {**base, "padding_free": True}), model, 0)
        assert isinstance(packed, PackedPairwiseCollator)
        assert "padding_free packs each side" in caplog.text
        model.config._attn_implementation = "flash_attention_2"
        getattr(model, model.base_model_prefix).config._attn_implementation = "flash_attention_2"
        assert isinstance(pair_collator(load_recipe(None, base), model, 0), PairwiseCollator)
        assert "attention 'flash_attention_2'" in caplog.text
        off = load_recipe(None, {**base, "share_prompts": False})
        assert isinstance(pair_collator(off, scalar_model("llama", "sdpa"), 0), PairwiseCollator)
