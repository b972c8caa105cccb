"""hsrm.scoring: one batched scorer whose rewards match training-time evaluation, a TRL reward
function, and `hsrm score` with Best-of-N."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from conftest import write_jsonl
from hsrm.engine import length_sorted_batches
from hsrm.files import atomic_write_jsonl
from hsrm.scoring import RewardScorer, best_of_n, group_candidates

PROMPTS = [
    "How do I bake bread?",
    "What is the capital of France?",
    "Say thank you.",
    "Python list?",
    "Numbers please",
    "Tell me a long story about the quick brown fox and the lazy dog.",
]
RESPONSES = [
    "Mix flour, water, yeast and salt, knead, then bake.",
    "Paris.",
    "Thank you!",
    "print([1, 2, 3])",
    "0 1 2 3 4 5 6 7 8 9 " * 6,
    "no",
]


def plain_hf_reward(model, tokenizer, messages, max_length=None) -> torch.Tensor:
    """An independent path: chat template → ids → the model's own forward on one unpadded sequence."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if max_length is not None:
        ids = ids[:, -max_length:]
    with torch.no_grad():
        return model(input_ids=ids).logits[0].double()


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return RewardScorer(str(tiny_model_dir), batch_size=4, max_length=64)


def test_length_sorted_batches_cover_every_index_once_longest_first():
    lengths = [3, 9, 1, 7, 5, 9]
    batches = length_sorted_batches(lengths, 4)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches == [[1, 5, 3, 4], [0, 2]]
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(lengths, 0)


def test_rewards_agree_across_batch_sizes_training_eval_and_plain_transformers(tiny_model_dir, scorer):
    """Pitfall 6 (reward-bench#137): a text's reward must not depend on its batch. Reference values
    come from training-time evaluation (PairwiseCollator + split_pair_rewards) and from the plain
    transformers forward on each unpadded sequence."""
    import datasets

    from hsrm.data.collators import PairwiseCollator
    from hsrm.data.tokenize import tokenize_pairs
    from hsrm.modeling import read_rewards_in_forward
    from hsrm.trainers.pairwise import split_pair_rewards

    chosen, rejected = RESPONSES, RESPONSES[::-1][:5] + ["yes"]
    pairs = datasets.Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in PROMPTS],
            "chosen": chosen,
            "rejected": rejected,
            "margin": [1.0] * len(PROMPTS),
        }
    )
    tokenized, _ = tokenize_pairs(pairs, scorer.tokenizer, max_length=64)
    batch = PairwiseCollator(scorer.tokenizer.pad_token_id)([dict(row) for row in tokenized])
    with torch.no_grad():
        # a copy: the fixture's model keeps transformers' own forward for the plain reference below
        trained_forward = read_rewards_in_forward(copy.deepcopy(scorer.model))
        train_chosen, train_rejected = split_pair_rewards(trained_forward, batch)
    reference = torch.cat([train_chosen, train_rejected]).double()

    for batch_size in (1, 3, 12):
        scorer.batch_size = batch_size
        got = torch.tensor(scorer.score(PROMPTS + PROMPTS, chosen + rejected), dtype=torch.float64)
        assert torch.allclose(got, reference, atol=1e-4, rtol=0), f"batch size {batch_size}"
    plain = torch.stack(
        [
            plain_hf_reward(
                scorer.model,
                scorer.tokenizer,
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                64,
            )[0]
            for p, r in zip(PROMPTS + PROMPTS, chosen + rejected)
        ]
    )
    assert torch.allclose(plain, reference, atol=1e-4, rtol=0)
    assert reference.std() > 1e-4, "rewards must differ between texts, or the comparison proves nothing"


def test_left_truncation_keeps_the_end_of_the_response(scorer):
    long_prompt = "bread " * 200
    ids = scorer.encode(long_prompt, "The capital of France is Paris.")
    assert len(ids) == scorer.max_length
    tail = scorer.tokenizer.decode(ids[-12:])
    assert "Paris." in tail


def test_encoding_many_pairs_at_once_gives_each_pairs_ids_and_counts_every_cut(scorer):
    prompts = ["bread " * 200, PROMPTS[0], [{"role": "user", "content": PROMPTS[1]}]]
    responses = ["The capital of France is Paris.", RESPONSES[0], RESPONSES[1]]
    # hand-rendered: the tokenizer's own chat template, then its plain call, cut from the left
    expected = []
    for prompt, response in zip(prompts, responses):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = scorer.tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": response}], tokenize=False
        )
        expected.append(scorer.tokenizer(text, add_special_tokens=False)["input_ids"])
    before = (scorer.truncation.sequences, scorer.truncation.truncated, scorer.truncation.tokens_cut)
    got = scorer.encode_many(prompts, responses)
    assert got == [ids[-scorer.max_length :] for ids in expected]
    assert len(expected[0]) > scorer.max_length >= max(len(expected[1]), len(expected[2]))
    after = (scorer.truncation.sequences, scorer.truncation.truncated, scorer.truncation.tokens_cut)
    assert [a - b for a, b in zip(after, before)] == [3, 1, len(expected[0]) - scorer.max_length]
    assert scorer.encode_texts([scorer.tokenizer.decode(expected[1])]) == [expected[1]]


def test_trl_conversational_and_plain_formats_score_like_the_reward_models_template(scorer):
    messages_prompts = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS[:3]
    ]
    conversational = scorer(
        prompts=messages_prompts,
        completions=[[{"role": "assistant", "content": r}] for r in RESPONSES[:3]],
        completion_ids=[[1]] * 3,
        trainer_state=None,
    )
    plain = scorer(prompts=PROMPTS[:3], completions=RESPONSES[:3])
    for k in range(3):
        expected_conv = plain_hf_reward(
            scorer.model, scorer.tokenizer, messages_prompts[k] + [{"role": "assistant", "content": RESPONSES[k]}], 64
        )
        expected_plain = plain_hf_reward(
            scorer.model,
            scorer.tokenizer,
            [{"role": "user", "content": PROMPTS[k]}, {"role": "assistant", "content": RESPONSES[k]}],
            64,
        )
        assert conversational[k] == pytest.approx(float(expected_conv[0]), abs=1e-4)
        assert plain[k] == pytest.approx(float(expected_plain[0]), abs=1e-4)
    assert conversational != plain  # the system turn is part of what the reward model reads
    assert isinstance(scorer.__name__, str) and scorer.__name__.startswith("reward_")
    assert not isinstance(scorer, torch.nn.Module), "TRL would bypass the chat template for an nn.Module"


def test_attribute_weights_from_config_are_applied(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hsrm.tiny import build_tiny_llama

    folder = build_tiny_llama(tmp_path / "five", num_labels=3, seed=3)
    config = json.loads((folder / "config.json").read_text())
    config["hsrm"] = {"attribute_weights": [0.5, -1.0, 2.0], "attributes": ["helpfulness", "correctness", "verbosity"]}
    (folder / "config.json").write_text(json.dumps(config))
    scorer = RewardScorer(str(folder), batch_size=2)
    assert scorer.attributes == ["helpfulness", "correctness", "verbosity"]
    got = scorer.score(PROMPTS[:3], RESPONSES[:3])
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for k in range(3):
        logits = plain_hf_reward(
            model, tokenizer, [{"role": "user", "content": PROMPTS[k]}, {"role": "assistant", "content": RESPONSES[k]}]
        )
        assert got[k] == pytest.approx(float(0.5 * logits[0] - 1.0 * logits[1] + 2.0 * logits[2]), abs=1e-4)
    unweighted = RewardScorer(str(folder), attribute_weights=None).score(PROMPTS[:1], RESPONSES[:1])
    assert unweighted[0] != pytest.approx(got[0], abs=1e-6)  # without weights: the first (helpfulness) output


def test_hsrm_score_cli_rewards_best_of_n_and_grouping(tmp_path, tiny_model_dir, scorer, capsys):
    from hsrm.cli import main as cli

    rows = [
        {"id": "a", "prompt": PROMPTS[0], "responses": RESPONSES[:4]},
        {"prompt": PROMPTS[1], "response": RESPONSES[4]},
        {"prompt": [{"role": "user", "content": PROMPTS[1]}], "response": RESPONSES[5]},  # same prompt as a chat list
        {"prompt": PROMPTS[2], "response": RESPONSES[1]},
    ]
    data = write_jsonl(tmp_path / "cands.jsonl", rows)
    out = tmp_path / "out" / "scored.jsonl"
    assert (
        cli(
            [
                "score",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--output",
                str(out),
                "--batch-size",
                "3",
                "--max-length",
                "64",
            ]
        )
        == 0
    )
    assert "scored 7 responses to 3 prompts" in capsys.readouterr().out
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["rewards"]) for r in written] == [4, 2, 1]
    assert written[0]["id"] == "a" and written[1]["rows"] == [1, 2]
    expected = scorer.score(
        [PROMPTS[0]] * 4 + [PROMPTS[1]] * 2 + [PROMPTS[2]], RESPONSES[:4] + [RESPONSES[4], RESPONSES[5], RESPONSES[1]]
    )
    got = [r for row in written for r in row["rewards"]]
    assert got == pytest.approx(expected, abs=1e-4)
    for row in written:
        assert row["best_index"] == max(range(len(row["rewards"])), key=row["rewards"].__getitem__)
        assert row["best_response"] == row["responses"][row["best_index"]]
    assert [p.name for p in out.parent.iterdir()] == ["scored.jsonl"], "no temporary file left behind"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "scores.jsonl"
    target.write_text("old\n")

    def rows():
        yield {"ok": 1}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_jsonl(target, rows())
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["scores.jsonl"]


def test_best_of_n_and_bad_rows():
    assert best_of_n([0.1, 0.7, 0.7, -2.0]) == 1  # first of the tied best
    from hsrm.data.io import DataError

    with pytest.raises(DataError, match="row 2 .counting from 1.*responses"):
        group_candidates([{"prompt": "q", "responses": ["a"]}, {"prompt": "q"}], "cands.jsonl")
    with pytest.raises(DataError, match="row 1 .counting from 1.*responses"):
        group_candidates([{"prompt": "q", "responses": []}], "cands.jsonl")
