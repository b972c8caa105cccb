"""Justification pre-processing (HelpSteer2-Preference appendix C), targets, flip augmentation
(checked token by token), the exact justifier prompt, and the overall / all sets."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from hsrm.data.io import DataError
from hsrm.data.justifications import (
    JUSTIFIER_PROMPT_TEMPLATE,
    SplitJustification,
    encode_justifier_example,
    encode_justifier_prompt,
    flip_example,
    justifier_user_message,
    label_examples_from_pairs,
    load_justification_examples,
    make_target,
    parse_verdict,
    split_justification,
    split_sentences,
    statement_label,
    swap_response_mentions,
)

# ---------------------------------------------------------------------------------------------
# Realistic justifications in the style of HelpSteer2-Preference annotators (free text, "@Response N").
FRONT = (
    "@Response 2 is better than @Response 1 because it gives the correct conversion and shows each step. "
    "@Response 1 says there are 6 ounces in a cup, which is wrong, and does not explain how it got there."
)
BOTH = (
    "@Response 1 is slightly better than @Response 2. Both responses summarize the article, but @Response 2 "
    "leaves out the second study and adds an opinion the prompt did not ask for. "
    "Overall, @Response 1 is slightly better."
)
BACK_FOR_THESE = (
    "@Response 1 uses the right formula but makes an arithmetic error in the last step. "
    "@Response 2 is correct and concise.\nFor these reasons, @Response 2 is much better than @Response 1."
)
BACK_THEREFORE = (
    "Both responses write a poem about autumn. @Response 2 ignores the requested rhyme scheme (ABAB), "
    "e.g. lines 2 and 4 do not rhyme. Therefore, @Response 1 is better."
)
NONE_STRENGTHS = (
    "@Response 1 is accurate and well formatted. @Response 2 is also accurate, but it repeats the same list twice."
)
NONE_EQUAL = "Both responses are equally helpful and correct; neither one has any issue."
NONE_NEGATED = "@Response 1 is not better than @Response 2 at all. Neither answers the question."
MULTILINE = (
    "@Response 2 is much better than @Response 1 because it follows the format.\n"
    "- @Response 1 uses a numbered list instead of a table.\n"
    "- @Response 1 misses two of the five countries.\n"
    "Overall, @Response 2 is much better."
)


@pytest.mark.parametrize(
    "text, statement, elaboration, label, position",
    [
        (
            FRONT,
            "@Response 2 is better than @Response 1 because it gives the correct conversion and shows each step.",
            "@Response 1 says there are 6 ounces in a cup, which is wrong, and does not explain how it got there.",
            2,
            "front",
        ),
        (
            BOTH,
            "@Response 1 is slightly better than @Response 2.",
            "Both responses summarize the article, but @Response 2 leaves out the second study and adds an opinion "
            "the prompt did not ask for.",
            1,
            "both",
        ),
        (
            BACK_FOR_THESE,
            "@Response 2 is much better than @Response 1.",
            "@Response 1 uses the right formula but makes an arithmetic error in the last step. @Response 2 is "
            "correct and concise.",
            2,
            "back",
        ),
        (
            BACK_THEREFORE,
            "@Response 1 is better.",
            "Both responses write a poem about autumn. @Response 2 ignores the requested rhyme scheme (ABAB), "
            "e.g. lines 2 and 4 do not rhyme.",
            1,
            "back",
        ),
        (
            MULTILINE,
            "@Response 2 is much better than @Response 1 because it follows the format.",
            "- @Response 1 uses a numbered list instead of a table.\n- @Response 1 misses two of the five countries.",
            2,
            "both",
        ),
    ],
)
def test_split_justification_statement_positions_and_prefixes(text, statement, elaboration, label, position):
    split = split_justification(text)
    assert split == SplitJustification(statement=statement, elaboration=elaboration, label=label, position=position)


@pytest.mark.parametrize("text", [NONE_STRENGTHS, NONE_EQUAL, NONE_NEGATED, "", "   "])
def test_justification_without_statement_is_none(text):
    assert split_justification(text) is None


def test_prefixes_are_stripped_from_statements_at_the_front_too():
    for prefix in ("Therefore, ", "Overall, ", "For these reasons, ", "In my opinion, "):
        split = split_justification(prefix + "@Response 1 is better because it is correct. It cites the law.")
        assert split.statement == "@Response 1 is better because it is correct."
        assert split.elaboration == "It cites the law."
        assert split.position == "front"


def test_sentence_splitting_keeps_abbreviations_and_decimals_together():
    text = "It costs 3.5 dollars, e.g. The Times says so. @Response 1 is wrong!\nSecond line here"
    assert split_sentences(text) == [
        "It costs 3.5 dollars, e.g. The Times says so.",
        "@Response 1 is wrong!",
        "Second line here",
    ]


@pytest.mark.parametrize(
    "sentence, label",
    [
        ("@Response 2 is better than @Response 1.", 2),
        ("@Response 1 is much better than @Response 2 because it is correct.", 1),
        ("Although @Response 1 is longer, @Response 2 is better.", 2),
        ("For better clarity, @Response 1 is better.", 1),  # the first "better" has no mention before it
        ("@Response 1 isn't any better than @Response 2, so @Response 2 is better.", 2),
        ("@Response 1 is not better.", None),
        ("@Response 1 is correct.", None),
        ("Response 2 is better.", 2),  # generated text may drop the "@"
        ("@Response 12 is better.", None),
    ],
)
def test_statement_label(sentence, label):
    assert statement_label(sentence) == label


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("@Response 2", 2),
        ("@Response 1.", 1),
        ("@Response 1 is better than @Response 2. On reflection, @Response 2 is better.", 2),  # the LAST statement
        (make_target(split_justification(BOTH), "full"), 1),
        ("It is hard to say which one is more helpful.", None),
        ("@Response 1 @Response 2", None),
        ("", None),
    ],
)
def test_parse_verdict_takes_the_last_statement(text, verdict):
    assert parse_verdict(text) == verdict


def test_targets_full_statement_label():
    split = split_justification(BOTH)
    assert make_target(split, "full") == split.elaboration + "\n" + split.statement  # elaboration first (§3.2)
    assert make_target(split, "statement") == "@Response 1 is slightly better than @Response 2."
    assert make_target(split, "label") == "@Response 1"
    only_statement = split_justification("Overall, @Response 2 is better.")
    assert make_target(only_statement, "full") == "@Response 2 is better."
    with pytest.raises(ValueError, match="justifier_target"):
        make_target(split, "explanation")


def test_swap_response_mentions_is_an_involution_and_touches_only_mentions():
    text = "@Response 1 beats @Response 2; Response 1's table and @response2 differ. Response 12 stays."
    swapped = swap_response_mentions(text)
    assert swapped == "@Response 2 beats @Response 1; Response 2's table and @response1 differ. Response 12 stays."
    assert swap_response_mentions(swapped) == text


def test_flip_example_swaps_responses_target_and_label():
    example = {
        "prompt": "Q",
        "response_1": "A",
        "response_2": "B",
        "label": 2,
        "flipped": False,
        "target": "@Response 1 is vague.\n@Response 2 is better than @Response 1.",
    }
    flipped = flip_example(example)
    assert (flipped["response_1"], flipped["response_2"], flipped["label"], flipped["flipped"]) == ("B", "A", 1, True)
    assert flipped["target"] == "@Response 2 is vague.\n@Response 1 is better than @Response 2."
    assert parse_verdict(flipped["target"]) == flipped["label"]
    assert flip_example(flipped) == example


# ------------------------------------------------------------------------------------ the prompt
def test_prompt_is_exactly_the_papers_template():
    message = justifier_user_message([{"role": "user", "content": "What is 2+2?"}], "4", "5")
    assert (
        message
        == "What is 2+2? @Response 1:\n4\n@Response 2:\n5\nBetween @Response 1 and @Response 2, which is better?"
    )
    assert (
        JUSTIFIER_PROMPT_TEMPLATE.format(prompt="P", response_1="a", response_2="b")
        == "P @Response 1:\na\n@Response 2:\nb\nBetween @Response 1 and @Response 2, which is better?"
    )


def test_prompt_goes_through_the_chat_template_as_the_user_turn(tiny_tokenizer):
    ids = encode_justifier_prompt(tiny_tokenizer, "What is 2+2?", "4", "5", max_length=None)
    assert tiny_tokenizer.decode(ids) == (
        "<|im_start|>user\nWhat is 2+2? @Response 1:\n4\n@Response 2:\n5\n"
        "Between @Response 1 and @Response 2, which is better?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_labels_cover_the_assistant_turn_only(tiny_tokenizer):
    ids, labels = encode_justifier_example(tiny_tokenizer, "What is 2+2?", "4", "5", "@Response 1", max_length=None)
    prompt_ids = encode_justifier_prompt(tiny_tokenizer, "What is 2+2?", "4", "5", max_length=None)
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert tiny_tokenizer.decode(labels[len(prompt_ids) :]) == "@Response 1<|im_end|>\n"
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]


def _block_tokens(tokenizer, prompt, r1, r2):
    """Token ranges (start, end) of the two response blocks, from the fast tokenizer's offsets."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": justifier_user_message(prompt, r1, r2)}],
        tokenize=False,
        add_generation_prompt=True,
    )
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start_1 = text.index(" @Response 1:\n") + len(" @Response 1:\n")
    start_2 = start_1 + len(r1) + len("\n@Response 2:\n")
    assert text[start_1 : start_1 + len(r1)] == r1 and text[start_2 : start_2 + len(r2)] == r2

    def token_range(lo, hi):
        inside = [k for k, (a, b) in enumerate(encoding["offset_mapping"]) if a >= lo and b <= hi and b > a]
        return inside[0], inside[-1] + 1

    return encoding["input_ids"], token_range(start_1, start_1 + len(r1)), token_range(start_2, start_2 + len(r2))


@pytest.mark.parametrize("target_kind", ["full", "label"])
def test_flip_augmentation_token_by_token(tiny_tokenizer, target_kind):
    tok = tiny_tokenizer
    prompt = "What is the capital of France?"
    r1, r2 = "The capital of France is Paris.", "bad terrible wrong"
    split = split_justification(
        "@Response 1 names Paris. @Response 2 is rude.\nOverall, @Response 1 is better than @Response 2."
    )
    example = {
        "prompt": prompt,
        "response_1": r1,
        "response_2": r2,
        "target": make_target(split, target_kind),
        "label": split.label,
        "flipped": False,
    }
    flipped = flip_example(example)
    ids_o, labels_o = encode_justifier_example(tok, prompt, r1, r2, example["target"], max_length=None)
    ids_f, labels_f = encode_justifier_example(
        tok, prompt, flipped["response_1"], flipped["response_2"], flipped["target"], max_length=None
    )
    assert len(ids_o) == len(ids_f)

    # The prompt: block 1 of one is block 2 of the other, token for token; all else identical.
    prompt_o, (a1, b1), (a2, b2) = _block_tokens(tok, prompt, r1, r2)
    prompt_f, (c1, d1), (c2, d2) = _block_tokens(tok, prompt, r2, r1)
    assert ids_o[: len(prompt_o)] == prompt_o and ids_f[: len(prompt_f)] == prompt_f
    assert prompt_o[a1:b1] == prompt_f[c2:d2] == tok(r1, add_special_tokens=False)["input_ids"]
    assert prompt_o[a2:b2] == prompt_f[c1:d1] == tok(r2, add_special_tokens=False)["input_ids"]
    assert prompt_o[:a1] == prompt_f[:c1]  # header, question, "@Response 1:\n"
    assert prompt_o[b1:a2] == prompt_f[d1:c2]  # "\n@Response 2:\n"
    assert prompt_o[b2:] == prompt_f[d2:]  # "\nBetween … which is better?" + assistant header

    # The labels: same positions; the tokens differ only where "1" and "2" swap, once per mention.
    one = tok("@Response 1", add_special_tokens=False)["input_ids"][-1]
    two = tok("@Response 2", add_special_tokens=False)["input_ids"][-1]
    assert one != two
    assert [x == -100 for x in labels_o] == [x == -100 for x in labels_f]
    swap = {one: two, two: one}
    assert labels_f == [swap.get(x, x) for x in labels_o]
    changed = sum(a != b for a, b in zip(labels_o, labels_f))
    assert changed == example["target"].count("@Response")
    assert (
        parse_verdict(tok.decode([x for x in labels_f if x != -100], skip_special_tokens=True)) == flipped["label"] == 2
    )


def test_overlong_prompts_lose_response_tails_not_the_question(tiny_tokenizer):
    r1 = "good " * 300
    r2 = "The capital of France is Paris."
    ids, labels = encode_justifier_example(tiny_tokenizer, "Question?", r1, r2, "@Response 2", max_length=120)
    assert len(ids) <= 120
    text = tiny_tokenizer.decode(ids)
    assert text.endswith(
        "\nBetween @Response 1 and @Response 2, which is better?<|im_end|>\n"
        "<|im_start|>assistant\n@Response 2<|im_end|>\n"
    )
    assert "The capital of France is Paris." in text  # the short response survives whole
    assert text.startswith("<|im_start|>user\nQuestion? @Response 1:\ngood good")
    assert tiny_tokenizer.decode([x for x in labels if x != -100]) == "@Response 2<|im_end|>\n"
    assert encode_justifier_example(tiny_tokenizer, "Q", "a", "b", "word " * 200, max_length=50) is None


# ----------------------------------------------------------------------------------- data sets
def _row(index, annotations, *, as_repr=False, split="train"):
    return {
        "split": split,
        "prompt": f"Prompt {index}",
        "response_1": f"first answer {index}",
        "response_2": f"second answer {index}",
        "all_preferences_unprocessed": repr(annotations) if as_repr else annotations,
    }


ROWS = [
    # 0: overall round(mean(-2,-2,-3)) = -2; annotator 1 (-2) has no statement → annotator 0 is the one.
    _row(
        0,
        [
            {
                "strength": -2,
                "justification": FRONT.replace(
                    "@Response 2 is better than @Response 1", "@Response 1 is better than @Response 2"
                ),
            },
            {"strength": -2, "justification": NONE_STRENGTHS},
            {"strength": -3, "justification": "@Response 1 is much better. It is correct."},
            {"strength": -100, "justification": "Neither is valid."},
        ],
    ),
    # 1: stored as a Python-repr string (as some Hub rows are); overall +1, all three agree.
    _row(
        1,
        [
            {"strength": 1, "justification": BACK_FOR_THESE},
            {"strength": 1, "justification": "@Response 2 is slightly better. It is shorter."},
            {"strength": 2, "justification": MULTILINE},
        ],
        as_repr=True,
    ),
    # 2: spread 4 among the three most similar of [-3, -1, 2, 3] → task excluded (section 2).
    _row(
        2,
        [
            {"strength": -3, "justification": FRONT},
            {"strength": -1, "justification": FRONT},
            {"strength": 2, "justification": FRONT},
            {"strength": 3, "justification": FRONT},
        ],
    ),
    # 3: overall 0 → excluded.
    _row(3, [{"strength": -1, "justification": BOTH}, {"strength": 1, "justification": FRONT}]),
    # 4: [1, 1, 3] → overall 2 with no annotator at exactly 2: fall back to same-side annotators;
    #    annotator 1's statement contradicts its own strength (+1 but says @Response 1) → dropped.
    _row(
        4,
        [
            {"strength": 1, "justification": "@Response 2 is slightly better."},
            {"strength": 1, "justification": BOTH},
            {"strength": 3, "justification": "@Response 2 is much better than @Response 1."},
        ],
    ),
    # 5: the validation split is filtered out of a train load.
    _row(5, [{"strength": 2, "justification": FRONT}] * 3, split="val"),
]


@pytest.fixture
def preference_file(tmp_path):
    return write_jsonl(tmp_path / "pref.jsonl", ROWS)


def test_overall_set_one_justification_per_task_from_an_agreeing_annotator(preference_file):
    ds, report = load_justification_examples(
        str(preference_file), "train", justification_set="overall", target="statement", return_report=True
    )
    rows = ds.to_list()
    assert [r["prompt"][0]["content"] for r in rows] == ["Prompt 0", "Prompt 1", "Prompt 4"]
    assert rows[0]["target"] in (
        "@Response 1 is better than @Response 2 because it gives the correct conversion and shows each step.",
    )
    assert rows[0]["label"] == 1
    assert rows[1]["label"] == 2 and rows[1]["target"] in (
        "@Response 2 is much better than @Response 1.",
        "@Response 2 is slightly better.",
    )
    assert rows[2]["target"] in ("@Response 2 is slightly better.", "@Response 2 is much better than @Response 1.")
    assert report.rows_read == 5 and report.rows_kept == 3
    assert report.dropped["spread of the three most similar > 2"] == 1
    assert report.dropped["overall preference 0"] == 1
    # Justifications of the three kept tasks: 3 + 3 + 3 read (the −100 one is not), one without a statement,
    # one contradicting its annotator.
    assert report.justifications_read == 9
    assert report.justifications_dropped == {
        "no preference statement": 1,
        "statement contradicts its annotator's strength": 1,
    }
    assert report.statement_positions == {"front": 5, "back": 1, "both": 2, "none": 1}


def test_overall_choice_is_seeded_and_varies_with_the_seed(preference_file):
    picks = {
        load_justification_examples(str(preference_file), justification_set="overall", target="statement", seed=s)[1][
            "target"
        ]
        for s in range(12)
    }
    assert picks == {
        "@Response 2 is much better than @Response 1.",
        "@Response 2 is slightly better.",
    }  # annotators 0 and 1 (strength 1 = overall)
    a = load_justification_examples(str(preference_file), justification_set="overall", target="statement", seed=3)
    b = load_justification_examples(str(preference_file), justification_set="overall", target="statement", seed=3)
    assert a.to_list() == b.to_list()


def test_all_set_up_to_three_per_task(preference_file):
    ds = load_justification_examples(str(preference_file), justification_set="all", target="label")
    by_prompt = {}
    for row in ds.to_list():
        by_prompt.setdefault(row["prompt"][0]["content"], []).append(row["target"])
    # Task 0: three most similar of [-2, -2, -3] = all; annotator 1 has no statement.
    # Task 4: annotator 1 contradicts itself. Task 1: all three.
    assert by_prompt == {
        "Prompt 0": ["@Response 1", "@Response 1"],
        "Prompt 1": ["@Response 2"] * 3,
        "Prompt 4": ["@Response 2", "@Response 2"],
    }


def test_flip_augmentation_doubles_and_mirrors(preference_file):
    plain = load_justification_examples(str(preference_file), justification_set="all", target="full")
    flipped = load_justification_examples(
        str(preference_file), justification_set="all", target="full", flip_augmentation=True
    )
    assert len(flipped) == 2 * len(plain)
    for original, mirror in zip(flipped.to_list()[0::2], flipped.to_list()[1::2]):
        assert mirror["response_1"] == original["response_2"] and mirror["response_2"] == original["response_1"]
        assert mirror["label"] == 3 - original["label"]
        assert parse_verdict(original["target"]) == original["label"]
        assert parse_verdict(mirror["target"]) == mirror["label"]
    labels = [r["label"] for r in flipped.to_list()]
    assert labels.count(1) == labels.count(2)  # position carries no label information


def test_validation_split_and_limit(preference_file):
    val = load_justification_examples(str(preference_file), "val", justification_set="overall")
    assert [r["prompt"][0]["content"] for r in val.to_list()] == ["Prompt 5"]
    assert (
        len(load_justification_examples(str(preference_file), justification_set="all", limit=2, flip_augmentation=True))
        == 4
    )


def test_processed_hub_fields_are_used_when_raw_text_is_absent(tmp_path):
    row = {
        "split": "train",
        "prompt": "P",
        "response_1": "a",
        "response_2": "b",
        "preference_strength": 2,
        "preference_statement": "@Response 2 is better than @Response 1.",
        "preference_elaboration": "It is right.",
        "three_most_similar_preferences": [
            {"statement": "@Response 2 is better.", "elaboration": "x", "strength": 2},
            {"statement": "No preference.", "elaboration": "y", "strength": 1},
        ],
    }
    path = write_jsonl(tmp_path / "processed.jsonl", [row])
    overall = load_justification_examples(str(path), justification_set="overall", target="full").to_list()
    assert overall[0]["target"] == "It is right.\n@Response 2 is better than @Response 1."
    everything = load_justification_examples(str(path), justification_set="all", target="full").to_list()
    assert [r["target"] for r in everything] == ["x\n@Response 2 is better."]


def test_bad_rows_raise_or_skip(tmp_path):
    bad = {
        "split": "train",
        "prompt": "P",
        "response_1": "a",
        "response_2": "b",
        "all_preferences_unprocessed": [{"strength": 7, "justification": "@Response 2 is better."}],
    }
    path = write_jsonl(tmp_path / "bad.jsonl", [bad, ROWS[1]])
    with pytest.raises(DataError, match=r"row 1 \(counting from 1\)"):
        load_justification_examples(str(path))
    ds, report = load_justification_examples(str(path), on_error="skip", return_report=True)
    assert len(ds) == 1 and report.dropped["malformed row"] == 1
    with pytest.raises(ValueError, match="justification_set"):
        load_justification_examples(str(path), justification_set="some")


def test_label_examples_from_plain_pairs_are_balanced_and_correct():
    pairs = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": f"good {i}", "rejected": f"bad {i}"}
        for i in range(200)
    ]
    examples = label_examples_from_pairs(pairs, seed=0)
    for example in examples:
        chosen = example["response_1"] if example["label"] == 1 else example["response_2"]
        assert chosen.startswith("good") and example["target"] == f"@Response {example['label']}"
    share_first = sum(e["label"] == 1 for e in examples) / len(examples)
    assert 0.4 < share_first < 0.6
    both = label_examples_from_pairs(pairs[:3], seed=0, flip_augmentation=True)
    assert len(both) == 6 and [e["label"] for e in both[0::2]] == [3 - e["label"] for e in both[1::2]]


def test_unreadable_annotation_string_names_the_row(tmp_path):
    bad = dict(ROWS[1], all_preferences_unprocessed="[{'strength': 1, 'justification': 'unterminated")
    path = write_jsonl(tmp_path / "broken.jsonl", [ROWS[0], bad])
    with pytest.raises(DataError, match="row 2 .counting from 1.*all_preferences_unprocessed"):
        load_justification_examples(str(path))
