"""Batched tokenization (issue 19): the same ids as hsrm.data.render.encode one example at a time,
and as the recipe written out here (chat template → tokenizer without special tokens → keep the
last max_length ids), for pairs, rated responses and justifier examples; truncation counts
unchanged; cached by fingerprint; num_proc gives the same data."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import datasets
import pytest

from conftest import SHARED_DATA
from hsrm.data import render
from hsrm.data.justifications import encode_justifier_example
from hsrm.data.render import TruncationStats, encode, encode_batch, encode_pairs, split_tokens
from hsrm.data.tokenize import tokenize_justifier_examples, tokenize_pairs, tokenize_ratings

WORDS = [
    "bread",
    "the",
    " flour",
    "Paris",
    "é",
    "naïve",
    "  spaced",
    "\n",
    "yes",
    "no",
    "<|im_start|>",
    "@Response 1",
    "thank you",
    "1234",
    "ünïcödé",
    "tab\there",
    "</s>",
    "[INST]",
]


def conversations(n: int, seed: int = 0):
    """Multi-turn prompts and two responses of very different lengths, with text that looks like special tokens."""
    rng = random.Random(seed)

    def text(low, high):
        return "".join(rng.choice(WORDS) + rng.choice(["", " ", "  "]) for _ in range(rng.randrange(low, high)))

    rows = []
    for _ in range(n):
        turns = [{"role": role, "content": text(1, 30)} for role in ["user", "assistant", "user"][: rng.choice([1, 3])]]
        if rng.random() < 0.3:
            turns.insert(0, {"role": "system", "content": text(1, 5)})
        rows.append(
            {
                "prompt": turns,
                "chosen": text(1, 60),
                "rejected": text(0, 8) or "x",
                "margin": float(rng.choice([1, 2, 3])),
            }
        )
    return rows


def by_hand(tokenizer, prompt, response, max_length):
    """(ids, tokens cut), written out: the template renders, the tokenizer adds nothing, the end survives."""
    text = tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": response}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        return ids[-max_length:], len(ids) - max_length
    return ids, 0


@pytest.fixture(scope="module")
def metaspace_tokenizer(tmp_path_factory):
    """A SentencePiece-style tokenizer (Metaspace, prepend only to the first piece) with a Llama-2
    template, to check the shared-prompt cut beyond byte-level BPE."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hsrm.tiny import _CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken("[INST]", special=True, normalized=False),
                AddedToken("[/INST]", special=True, normalized=False),
            ]
        }
    )
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %} {{ m['content'] }}</s>"
        "{% else %}[INST] {{ m['content'] }} [/INST]{% endif %}{% endfor %}"
    )
    return fast


@pytest.fixture(params=["chatml-bpe", "metaspace"])
def tokenizer(request, tiny_tokenizer, metaspace_tokenizer):
    return tiny_tokenizer if request.param == "chatml-bpe" else metaspace_tokenizer


@pytest.mark.parametrize("max_length", [None, 24, 64])
def test_batched_pairs_equal_encode_one_at_a_time(tokenizer, max_length):
    rows = conversations(60)
    (chosen, chosen_cut), (rejected, rejected_cut) = encode_pairs(
        tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows], max_length
    )
    stats = TruncationStats()
    for i, row in enumerate(rows):
        for ids, cut, response in (
            (chosen[i], chosen_cut[i], row["chosen"]),
            (rejected[i], rejected_cut[i], row["rejected"]),
        ):
            assert (ids, cut) == by_hand(tokenizer, row["prompt"], response, max_length), i
            assert ids == encode(tokenizer, row["prompt"], response, max_length, stats)
    batch_stats = TruncationStats()
    batch_stats.add(chosen_cut + rejected_cut)
    assert batch_stats == stats
    if max_length == 24:
        assert 0 < stats.truncated < stats.sequences  # both kinds of rows were seen


def test_the_shared_prompt_is_cut_at_a_special_token(tokenizer):
    """The premise the speed rests on, made visible: the two sides of a pair are tokenized from a
    cut inside their common prompt, not from the start."""
    row = conversations(1, seed=3)[0]
    a, b = render.render_texts(tokenizer, [row["prompt"]] * 2, [row["chosen"], row["rejected"]])
    cut = render._shared_cut(a, b, split_tokens(tokenizer))
    assert 0 < cut and a[:cut] == b[:cut] and any(a.startswith(t, cut) for t in split_tokens(tokenizer))


def test_tokens_that_reach_across_the_cut_are_not_split_points(tiny_tokenizer, metaspace_tokenizer):
    from tokenizers import AddedToken

    assert "<|im_start|>" in split_tokens(tiny_tokenizer) and "<|im_end|>" in split_tokens(tiny_tokenizer)
    assert {"[INST]", "[/INST]", "</s>"} <= set(split_tokens(metaspace_tokenizer))
    import copy

    stripping = copy.deepcopy(metaspace_tokenizer)
    stripping.add_special_tokens(
        {"additional_special_tokens": [AddedToken("[/INST]", special=True, normalized=False, lstrip=True)]}
    )
    assert "[/INST]" not in split_tokens(stripping)  # it takes the spaces on its left: a cut there would change them


def test_a_tokenizer_that_breaks_the_premise_gets_whole_texts(tiny_tokenizer, monkeypatch, caplog):
    """The first pairs of every call are checked against whole texts: cutting at an ordinary letter
    changes the ids, so the call falls back and still returns encode's ids."""
    monkeypatch.setattr(render, "split_tokens", lambda tokenizer: ("e",))
    monkeypatch.setattr(render, "_WARNED_UNSPLITTABLE", set())
    rows = conversations(12, seed=1)
    with caplog.at_level(logging.WARNING):
        (chosen, _), (rejected, _) = encode_pairs(
            tiny_tokenizer,
            [r["prompt"] for r in rows],
            [r["chosen"] for r in rows],
            [r["rejected"] for r in rows],
            None,
        )
    assert "tokenizing each side of every pair whole" in caplog.text
    assert chosen == [by_hand(tiny_tokenizer, r["prompt"], r["chosen"], None)[0] for r in rows]
    assert rejected == [by_hand(tiny_tokenizer, r["prompt"], r["rejected"], None)[0] for r in rows]


def test_encode_batch_of_rated_responses(tokenizer):
    rows = conversations(30, seed=2)
    ids, cut = encode_batch(tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], 40)
    assert list(zip(ids, cut)) == [by_hand(tokenizer, r["prompt"], r["chosen"], 40) for r in rows]
    assert encode_batch(tokenizer, [], [], 40) == ([], [])
    with pytest.raises(ValueError, match="max_length must be a positive"):
        encode_batch(tokenizer, [rows[0]["prompt"]], ["x"], 0)


# --------------------------------------------------------------------------------- datasets
def pairs_dataset(n=40, seed=0):
    rows = conversations(n, seed)
    return datasets.Dataset.from_dict(
        {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected", "margin")}
    ), rows


def test_tokenize_pairs_matches_encode_counts_truncation_and_is_cached(tiny_tokenizer, monkeypatch):
    ds, rows = pairs_dataset()
    tokenized, stats = tokenize_pairs(ds, tiny_tokenizer, 32)
    assert sorted(tokenized.column_names) == ["chosen_ids", "margin", "rejected_ids"] and len(tokenized) == len(rows)
    expected = TruncationStats()
    for row, got in zip(rows, tokenized):
        assert got["chosen_ids"] == encode(tiny_tokenizer, row["prompt"], row["chosen"], 32, expected)
        assert got["rejected_ids"] == encode(tiny_tokenizer, row["prompt"], row["rejected"], 32, expected)
        assert got["margin"] == row["margin"]
    assert stats == expected and stats.truncated > 0
    cache = Path(datasets.config.HF_DATASETS_CACHE) / "hsrm_tokenized"
    assert len(list(cache.glob("pairs-*.arrow"))) >= 1

    # The same data, tokenizer and max_length again: read from the cache, tokenizing nothing.
    import hsrm.data.tokenize as tokenize_module

    monkeypatch.setattr(
        tokenize_module, "encode_pairs", lambda *a, **k: pytest.fail("tokenized again instead of read from the cache")
    )
    again, again_stats = tokenize_pairs(ds, tiny_tokenizer, 32)
    assert again_stats == stats and again.to_list() == tokenized.to_list()
    # Another max_length is another cache entry (and would tokenize).
    with pytest.raises(pytest.fail.Exception, match="tokenized again"):
        tokenize_pairs(ds, tiny_tokenizer, 33)


def test_num_proc_gives_the_same_data(tiny_tokenizer):
    ds, _ = pairs_dataset(30, seed=4)
    one, one_stats = tokenize_pairs(ds, tiny_tokenizer, 24)
    datasets.disable_caching()  # the second map must run, in two processes
    try:
        two, two_stats = tokenize_pairs(ds, tiny_tokenizer, 24, num_proc=2)
    finally:
        datasets.enable_caching()
    assert two.to_list() == one.to_list() and two_stats == one_stats


def test_rejected_prompt_and_no_margin(tiny_tokenizer):
    rows = conversations(6, seed=5)
    other = conversations(6, seed=6)
    ds = datasets.Dataset.from_dict(
        {
            "prompt": [r["prompt"] for r in rows],
            "chosen": [r["chosen"] for r in rows],
            "rejected": [r["rejected"] for r in rows],
            "rejected_prompt": [o["prompt"] for o in other],
        }
    )
    tokenized, _ = tokenize_pairs(ds, tiny_tokenizer, None)
    for row, o, got in zip(rows, other, tokenized):
        assert got["rejected_ids"] == by_hand(tiny_tokenizer, o["prompt"], row["rejected"], None)[0]
        assert got["chosen_ids"] == by_hand(tiny_tokenizer, row["prompt"], row["chosen"], None)[0]
        assert got["margin"] == 1.0
    empty, empty_stats = tokenize_pairs(ds.select([]), tiny_tokenizer, 16)
    assert len(empty) == 0 and empty_stats.sequences == 0


def test_tokenize_ratings(tiny_tokenizer):
    rows = conversations(20, seed=7)
    attributes = ["helpfulness", "verbosity"]
    ds = datasets.Dataset.from_dict(
        {
            "prompt": [r["prompt"] for r in rows],
            "response": [r["chosen"] for r in rows],
            "helpfulness": [i % 5 for i in range(20)],
            "verbosity": [(3 * i) % 5 for i in range(20)],
        }
    )
    tokenized, stats = tokenize_ratings(ds, tiny_tokenizer, attributes, 30)
    expected = TruncationStats()
    for i, (row, got) in enumerate(zip(rows, tokenized)):
        assert got["input_ids"] == encode(tiny_tokenizer, row["prompt"], row["chosen"], 30, expected)
        assert got["labels"] == [float(i % 5), float((3 * i) % 5)]
    assert stats == expected and 0 < stats.truncated


def test_tokenize_justifier_examples_matches_one_at_a_time(tiny_tokenizer):
    """Short prompts take the batch path, over-long ones the response-tail cutting, and targets
    longer than max_length are dropped and counted: all as encode_justifier_example does."""
    rng = random.Random(8)
    examples = [
        {
            "prompt": [{"role": "user", "content": "Question " + "bread " * rng.randrange(0, 40)}],
            "response_1": "yes great " * rng.randrange(1, 30),
            "response_2": "no " * rng.randrange(1, 30),
            "target": "@Response 1" if i % 5 else "word " * 60,
        }
        for i in range(25)
    ]
    tokenized, summary = tokenize_justifier_examples(datasets.Dataset.from_list(examples), tiny_tokenizer, 96)
    expected, kept = TruncationStats(), []
    for e in examples:
        encoded = encode_justifier_example(
            tiny_tokenizer, e["prompt"], e["response_1"], e["response_2"], e["target"], 96, expected
        )
        if encoded is not None:
            kept.append({"input_ids": encoded[0], "labels": encoded[1]})
    assert tokenized.to_list() == kept and 0 < len(kept) < len(examples)
    assert 0 < expected.truncated and f"{expected.truncated} of {expected.sequences} justifier prompts" in summary
    assert f"{len(examples) - len(kept)} examples dropped" in summary


@pytest.mark.slow
def test_smollm2_tokenizer_on_hh_rlhf(shared_data):
    """The embedded SmolLM2 tokenizer (byte-level BPE, ChatML) on real multi-turn HH-RLHF pairs."""
    from transformers import AutoTokenizer

    from hsrm.data.auto import load_pairs_any
    from hsrm.default_model import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    pairs = load_pairs_any(str(SHARED_DATA / "hh_rlhf" / "helpful-online.test.jsonl.gz"), on_error="skip", limit=300)
    (chosen, chosen_cut), (rejected, _) = encode_pairs(
        tokenizer, pairs["prompt"], pairs["chosen"], pairs["rejected"], 320
    )
    assert sum(c > 0 for c in chosen_cut) > 10  # some were truncated
    for i in range(len(pairs)):
        row = pairs[i]
        assert chosen[i] == encode(tokenizer, row["prompt"], row["chosen"], 320)
        assert rejected[i] == encode(tokenizer, row["prompt"], row["rejected"], 320)


def test_tokenize_bench_smoke(tmp_path, tiny_model_dir, shared_data):
    """bench/tokenization.py at a small size: it runs hsrm and TRL RewardTrainer's own preparation on the
    same HH-RLHF pairs and finds the same ids on every pair TRL keeps (the others hsrm cut)."""
    import importlib.util
    import json

    pytest.importorskip("trl")
    path = Path(__file__).resolve().parents[1] / "bench" / "tokenization.py"
    spec = importlib.util.spec_from_file_location("tokenize_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "tokenize.json"
    result = bench.main(
        [
            "--pairs",
            "300",
            "--max-length",
            "1024",
            "--tokenizer",
            str(tiny_model_dir),
            "--data",
            str(shared_data / "hh_rlhf"),
            "--output",
            str(out),
        ]
    )
    assert result["ids_identical_on_kept_pairs"] is True and 0 < result["pairs_kept_by_trl"] < 300
    assert result["sequences_cut_by_hsrm"] > 0 and result["hsrm_seconds"] > 0 and result["trl_seconds"] > 0
    assert json.loads(out.read_text())["speedup"] == result["speedup"]
