"""Frozen-backbone embeddings on a tiny local Llama: the same token and position the full reward
model reads, layer selection, length-sorted batches, and the resumable disk cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_jsonl
from hsrm.embedding.extract import EmbeddedData, EmbeddingCache, embed_conversations, load_backbone, text_key

PROMPTS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be polite."}, {"role": "user", "content": "Say yes or no."}],
    "Thank you, please answer with numbers 1 2 3 4 5 6 7 8 9.",
    [{"role": "user", "content": "How do I bake bread?"}],
]
RESPONSES = [
    "Use flour, water, yeast and salt; knead and bake.",
    "Paris.",
    "yes",
    "0 1 2 3 4 5 6 7 8 9 good",
    "Use flour, water, yeast and salt; knead and bake.",
]


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    return load_backbone(str(tiny_model_dir), device="cpu")


class CountingForward:
    """Wraps a model's forward: counts calls, records batch widths, can fail after N calls."""

    def __init__(self, model, fail_after: int | None = None):
        self.model, self.original, self.fail_after = model, model.forward, fail_after
        self.calls, self.widths = 0, []

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.widths.append(kwargs["input_ids"].shape[1])
        return self.original(*args, **kwargs)

    def __enter__(self):
        self.model.forward = self
        return self

    def __exit__(self, *exc):
        self.model.forward = self.original


def test_embedding_is_what_the_full_reward_model_reads(tiny_model_dir, backbone):
    """score_head(embedding) equals the sequence classifier's reward computed independently by
    hsrm.modeling (same template, same truncation, same last real token), one sequence at a time."""
    from hsrm.data.messages import to_messages
    from hsrm.data.render import encode
    from hsrm.modeling import load_reward_model, reward_outputs

    model, tokenizer, _ = load_reward_model(str(tiny_model_dir), device="cpu")
    embeddings, report = embed_conversations(backbone, PROMPTS, RESPONSES, batch_size=3, max_length=12)
    assert report.truncated == 5  # max_length 12 cuts every conversation from the left
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        ids = torch.tensor([encode(tokenizer, to_messages(prompt), response, 12)])
        assert ids.shape[1] == 12
        with torch.no_grad():
            expected = reward_outputs(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0, 0]
        got = torch.from_numpy(embeddings[i]) @ model.score.weight[0].detach()
        assert float(got) == pytest.approx(float(expected), abs=1e-5)


def test_layer_zero_is_the_last_tokens_input_embedding(backbone):
    from hsrm.data.messages import to_messages
    from hsrm.data.render import encode

    embeddings, _ = embed_conversations(backbone, PROMPTS[:3], RESPONSES[:3], layer=0, max_length=None)
    table = backbone.model.get_input_embeddings().weight.detach()
    for i in range(3):
        last_id = encode(backbone.tokenizer, to_messages(PROMPTS[i]), RESPONSES[i], None)[-1]
        np.testing.assert_allclose(embeddings[i], table[last_id].numpy(), atol=1e-6)
    last, _ = embed_conversations(backbone, PROMPTS[:3], RESPONSES[:3], layer=-1)
    same_last, _ = embed_conversations(backbone, PROMPTS[:3], RESPONSES[:3], layer=backbone.num_hidden_states - 1)
    np.testing.assert_array_equal(last, same_last)
    assert not np.allclose(last, embeddings)
    with pytest.raises(ValueError, match="out of range"):
        embed_conversations(backbone, PROMPTS[:1], RESPONSES[:1], layer=99)


def test_batches_are_length_sorted_and_batching_does_not_change_results(backbone):
    with CountingForward(backbone.model) as counter:
        batched, report = embed_conversations(backbone, PROMPTS, RESPONSES, batch_size=2)
    assert report.distinct == 4 and counter.calls == 2  # the duplicate (rows 0 and 4) is embedded once
    assert counter.widths == sorted(counter.widths, reverse=True)
    np.testing.assert_array_equal(batched[0], batched[4])
    single, _ = embed_conversations(backbone, PROMPTS, RESPONSES, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_cache_second_run_embeds_nothing_new(backbone, tmp_path):
    with CountingForward(backbone.model) as counter:
        first, report1 = embed_conversations(backbone, PROMPTS, RESPONSES, batch_size=2, cache_dir=tmp_path)
    assert counter.calls == 2 and report1.computed == 4 and report1.from_cache == 0
    with CountingForward(backbone.model) as counter:
        second, report2 = embed_conversations(backbone, PROMPTS, RESPONSES, batch_size=2, cache_dir=tmp_path)
    assert counter.calls == 0 and report2.computed == 0 and report2.from_cache == 4
    np.testing.assert_array_equal(first, second)
    # One new text: exactly one forward pass of one row.
    with CountingForward(backbone.model) as counter:
        third, report3 = embed_conversations(
            backbone, PROMPTS + ["new prompt"], RESPONSES + ["new answer"], cache_dir=tmp_path
        )
    assert counter.calls == 1 and report3.computed == 1 and report3.from_cache == 4
    np.testing.assert_array_equal(third[:5], first)
    # Another layer is another cache.
    _, report4 = embed_conversations(backbone, PROMPTS, RESPONSES, layer=1, cache_dir=tmp_path)
    assert report4.computed == 4 and report4.cache_folder != report1.cache_folder


def test_interrupted_run_resumes_from_the_cache(backbone, tmp_path):
    prompts = [f"question number {i} " + "bread " * i for i in range(12)]
    responses = [f"answer {i}" for i in range(12)]
    with CountingForward(backbone.model, fail_after=3) as counter:
        with pytest.raises(KeyboardInterrupt):
            embed_conversations(backbone, prompts, responses, batch_size=2, flush_every=2, cache_dir=tmp_path)
    assert counter.calls == 3
    with CountingForward(backbone.model) as counter:
        resumed, report = embed_conversations(
            backbone, prompts, responses, batch_size=2, flush_every=2, cache_dir=tmp_path
        )
    assert report.from_cache == 6 and report.computed == 6 and counter.calls == 3
    fresh, _ = embed_conversations(backbone, prompts, responses, batch_size=2)
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)


def test_cache_ignores_half_written_shards(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put(["a" * 64, "b" * 64], np.ones((2, 3)))
    np.save(tmp_path / "orphan.vectors.npy", np.zeros((1, 3)))  # vectors whose keys never landed
    reopened = EmbeddingCache(tmp_path)
    assert len(reopened) == 2 and "a" * 64 in reopened
    np.testing.assert_array_equal(reopened.get(["b" * 64]), np.ones((1, 3)))
    assert text_key([1, 2, 3]) != text_key([1, 2, 4]) and len(text_key([1])) == 64


def test_cli_embed_fit_and_score(tiny_model_dir, tmp_path, capsys):
    from hsrm.cli import main

    pairs = [
        {
            "prompt": f"Question {i}: how to bake bread?",
            "chosen": "Thank you, here is a clear answer.",
            "rejected": "no" if i % 2 else "bad terrible wrong",
        }
        for i in range(40)
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "emb.npz"
    assert (
        main(
            [
                "embed",
                "--data",
                str(data),
                "--backbone",
                str(tiny_model_dir),
                "--output",
                str(out),
                "--cache",
                str(tmp_path / "cache"),
                "--golden-model",
                str(tiny_model_dir),
                "--batch-size",
                "8",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["responses"] == 80 and summary["pairs"] == 40 and summary["prompts"] == 40 and summary["golden"]
    loaded = EmbeddedData.load(out)
    assert loaded.embeddings.shape == (80, 32) and loaded.pair_first_wins.all()
    # The golden column is the tiny classifier's own reward: score head · embedding.
    from safetensors.torch import load_file

    head = load_file(str(tiny_model_dir / "model.safetensors"))["score.weight"][0].numpy()
    np.testing.assert_allclose(loaded.golden, loaded.embeddings @ head, atol=1e-4)

    model_dir = tmp_path / "bt"
    assert (
        main(
            [
                "fit",
                "--embeddings",
                str(out),
                "--method",
                "bt-mlp",
                "--output",
                str(model_dir),
                "--hidden",
                "16",
                "8",
                "--max-epochs",
                "5",
                "--eval-data",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["annotations"] == 40 and fitted["eval_pair_accuracy"] > 0.9  # a separable toy task
    assert (
        main(
            [
                "fit",
                "--apply",
                str(model_dir),
                "--eval-data",
                str(out),
                "--scores-output",
                str(tmp_path / "s.npy"),
                "--json",
            ]
        )
        == 0
    )
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["eval_pair_accuracy"] == fitted["eval_pair_accuracy"]
    assert np.load(tmp_path / "s.npy").shape == (80,)
    # Simulated annotators from the golden reward; a clear error for a bad request.
    assert (
        main(
            [
                "fit",
                "--embeddings",
                str(out),
                "--method",
                "clf-lgb",
                "--output",
                str(tmp_path / "lgb"),
                "--beta",
                "5",
                "--pairing",
                "cross-prompt",
                "--n-annotations",
                "30",
            ]
        )
        == 0
    )
    assert "fitted clf-lgb on 30 pairs" in capsys.readouterr().out  # the human summary
    assert main(["fit", "--embeddings", str(out), "--output", str(tmp_path / "x")]) == 1
    assert "--method" in capsys.readouterr().err


def test_cli_embed_response_rows_with_golden_column(tiny_model_dir, tmp_path, capsys):
    from hsrm.cli import main

    rows = [{"prompt": f"p{i % 3}", "response": f"answer {i}", "score": float(i)} for i in range(9)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "rows.npz"
    assert (
        main(
            [
                "embed",
                "--data",
                str(data),
                "--backbone",
                str(tiny_model_dir),
                "--output",
                str(out),
                "--cache",
                "none",
                "--golden-column",
                "score",
            ]
        )
        == 0
    )
    loaded = EmbeddedData.load(out)
    np.testing.assert_array_equal(loaded.golden, np.arange(9.0))
    np.testing.assert_array_equal(loaded.prompt_ids, [0, 1, 2] * 3)
    assert not loaded.has_pairs and loaded.meta["layer"] == 2
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "r"}])
    assert (
        main(
            [
                "embed",
                "--data",
                str(bad),
                "--backbone",
                str(tiny_model_dir),
                "--output",
                str(out),
                "--cache",
                "none",
                "--golden-column",
                "score",
                "--overwrite",
            ]
        )
        == 1
    )
    assert "score" in capsys.readouterr().err


def test_read_conversations_skips_and_counts_bad_pairs_only_when_asked(tmp_path, caplog):
    from hsrm.data.io import DataError
    from hsrm.embedding.extract import read_conversations

    rows = [
        {"prompt": "Q1?", "chosen": "Paris.", "rejected": "no"},
        {"prompt": "Q2?", "chosen": "same", "rejected": "same"},
        {"prompt": "Q3?", "chosen": "Bake it.", "rejected": "bad"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2 \(counting from 1\)"):
        read_conversations(str(path))
    with caplog.at_level("INFO"):
        prompts, responses, prompt_ids, golden, (first, second, first_wins) = read_conversations(
            str(path), on_error="skip"
        )
    assert responses == ["Paris.", "no", "Bake it.", "bad"] and list(first) == [0, 2] and list(second) == [1, 3]
    assert "kept 2" in caplog.text


def test_backbone_dtype_names_are_hsrm_modeling_s(tiny_model_dir, backbone):
    """The compute dtype is read by hsrm.modeling.torch_dtype (one table of names); it keys the cache."""
    import torch

    assert backbone.dtype_name == "float32" and next(backbone.model.parameters()).dtype == torch.float32
    half = load_backbone(str(tiny_model_dir), device="cpu", dtype="bf16")
    assert half.dtype_name == "bfloat16" and next(half.model.parameters()).dtype == torch.bfloat16
    assert half.cache_key() != backbone.cache_key()
    with pytest.raises(ValueError, match="dtype 'fp64'"):
        load_backbone(str(tiny_model_dir), device="cpu", dtype="fp64")
    with pytest.raises(ValueError, match="name the compute dtype"):
        load_backbone(str(tiny_model_dir), device="cpu", dtype="auto")


def test_packed_rows_give_the_padded_embeddings(backbone):
    """The engine's packed layout (what auto picks on CUDA) reads the same hidden states as its padded
    batches, at every layer: one row per token budget, sequences kept apart by their position ids."""
    for layer in (-1, 1):
        padded, _ = embed_conversations(backbone, PROMPTS, RESPONSES, layer=layer, batch_size=2, layout="padded")
        with CountingForward(backbone.model) as counter:
            packed, report = embed_conversations(
                backbone, PROMPTS, RESPONSES, layer=layer, layout="packed", max_tokens=10_000
            )
        assert counter.calls == report.forward_passes == 1  # the 4 distinct texts in one packed row
        np.testing.assert_allclose(packed, padded, atol=1e-5, rtol=1e-5)


def test_auto_format_is_hsrm_data_auto_s(tmp_path):
    """embed's --data-format auto is data.auto's first-row rule: single responses (ratings or not),
    plain pairs, and the pairwise formats it knows by their fields (HelpSteer2-Preference here)."""
    from hsrm.data.auto import format_of_row
    from hsrm.data.io import DataError
    from hsrm.embedding.extract import read_conversations

    ratings = {"prompt": "Q?", "response": "A.", "helpfulness": 3}
    assert format_of_row(ratings, "x", responses=True) == "responses"
    assert format_of_row(ratings, "x") == "helpsteer2_ratings"  # what training reads the same row as
    assert format_of_row({"prompt": "Q?", "chosen": "a", "rejected": "b"}, "x", responses=True) == "pairs"
    preference = {"prompt": "Q?", "response_1": "Yes.", "response_2": "No.", "preference_strength": -2}
    path = write_jsonl(tmp_path / "hs2.jsonl", [{**preference, "split": "train"}])
    _, responses, _, _, (first, second, _) = read_conversations(str(path))
    assert [responses[first[0]], responses[second[0]]] == ["Yes.", "No."]  # response_1 preferred (strength < 0)
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q?"}])
    with pytest.raises(DataError, match="cannot tell the format.*'responses'"):
        read_conversations(str(path))


def test_a_shared_prompt_is_computed_once_and_gives_the_same_embeddings(backbone):
    """Five responses to one long prompt (a Best-of-N group) and two other conversations: with
    share_prompts the prompt runs once and its responses continue its cached keys and values, and
    every layer's embeddings equal each conversation embedded alone (batch 1, unshared) within 1e-5."""
    prompt = "Explain, step by step and with care, how to bake a loaf of bread at home " * 2
    prompts = [prompt] * 5 + PROMPTS[:2]
    # Responses of similar lengths: padding_runs keeps their continuations in one batch.
    responses = ["Mix flour and water.", "Knead it well.", "Bake it hot.", "Let it rise.", "Cool it down."]
    responses += RESPONSES[:2]
    for layer in (-1, 1, 0):
        alone, _ = embed_conversations(
            backbone, prompts, responses, layer=layer, batch_size=1, share_prompts=False, max_length=None
        )
        calls = []  # a forward hook, not CountingForward: the engine shares only with a forward that takes a cache
        hook = backbone.model.register_forward_hook(lambda *_: calls.append(1))
        try:
            shared, report = embed_conversations(
                backbone, prompts, responses, layer=layer, batch_size=8, max_length=None
            )
        finally:
            hook.remove()
        assert report.shared == 5 and report.computed == 7
        assert len(calls) == 3  # the prompt once, its five continuations, the two others
        np.testing.assert_allclose(shared, alone, atol=1e-5, rtol=1e-5)
    _, unshared = embed_conversations(backbone, prompts, responses, batch_size=8, share_prompts=False)
    assert unshared.shared == 0
