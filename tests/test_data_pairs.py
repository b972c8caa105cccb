"""Generic pairs, HH-RLHF transcripts, RewardBench rows, flip augmentation and malformed input."""

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_jsonl
from hsrm.data import DataError, flip_pair, load_preference_pairs, load_rewardbench, split_hh_pair
from hsrm.data.auto import detect_format, load_pairs_any


def test_hh_transcript_split_on_shared_prefix():
    chosen = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Bake bread?\n\nAssistant: Mix flour and water."
    rejected = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Bake bread?\n\nAssistant: No."
    prompt, c, r = split_hh_pair(chosen, rejected)
    assert prompt == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bake bread?"},
    ]
    assert (c, r) == ("Mix flour and water.", "No.")
    with pytest.raises(ValueError, match="differ before"):
        split_hh_pair(chosen, rejected.replace("Hi there", "Yo"))


def test_real_hh_rlhf_rows_all_parse(shared_data):
    path = shared_data / "hh_rlhf" / "helpful-base.test.jsonl.gz"
    ds, report = load_preference_pairs(str(path), on_error="skip", return_report=True)
    with gzip.open(path, "rt") as handle:
        n_rows = sum(1 for _ in handle)
    assert report.rows_read == n_rows == 2354
    assert report.rows_kept + sum(report.dropped.values()) == n_rows
    assert report.rows_kept >= 0.97 * n_rows  # every drop is counted, and they are rare
    first = json.loads(gzip.open(path, "rt").readline())
    assert first["chosen"].endswith(ds["chosen"][0]) and first["rejected"].endswith(ds["rejected"][0])
    assert all(m["role"] in ("user", "assistant") for m in ds["prompt"][0]) and ds["prompt"][0][-1]["role"] == "user"


def test_generic_pairs_text_and_messages_and_margins(tmp_path):
    rows = [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "margin": 2.5},
        {
            "prompt": [{"role": "user", "content": "Q2"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
            "strength": 3,
        },
        {"prompt": "Q3", "chosen": "a", "rejected": "b"},
    ]
    ds = load_preference_pairs(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert ds["margin"] == [2.5, 3.0, 1.0] and ds["has_margin"] == [True, True, False]
    assert ds["prompt"][1] == [{"role": "user", "content": "Q2"}] and ds["chosen"][1] == "yes"


@pytest.mark.parametrize(
    "row, field, problem",
    [
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "rejected", "identical to chosen"),
        ({"prompt": "Q", "chosen": "  ", "rejected": "b"}, "chosen", "empty response"),
        ({"prompt": "Q", "rejected": "b"}, "chosen", "missing"),
        ({"prompt": "Q", "chosen": "a", "rejected": "b", "strength": 0}, "strength", "must be positive"),
        ({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "finite number"),
        ({"prompt": 5, "chosen": "a", "rejected": "b"}, "prompt", "expected text or a list"),
    ],
)
def test_bad_pairs_name_row_and_field(tmp_path, row, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "x", "rejected": "y"}, row])
    with pytest.raises(DataError, match=rf"bad.jsonl, row 2 \(counting from 1\), field '{field}': .*{problem}"):
        load_preference_pairs(str(path))
    ds, report = load_preference_pairs(str(path), on_error="skip", return_report=True)
    assert len(ds) == 1 and sum(report.dropped.values()) == 1


def test_rewardbench_sample(shared_data):
    ds = load_rewardbench(str(shared_data / "rewardbench_sample" / "reward_bench_filtered_sample.jsonl"))
    assert len(ds) == 500
    counts = {s: ds["subset"].count(s) for s in set(ds["subset"])}
    assert counts["alpacaeval-easy"] == 100 and counts["mt-bench-hard"] == 37 and counts["llmbar-adver-neighbor"] == 5
    assert (
        detect_format(str(shared_data / "rewardbench_sample" / "reward_bench_filtered_sample.jsonl")) == "rewardbench"
    )


def test_format_detection(tmp_path):
    pairs = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    pref = write_jsonl(
        tmp_path / "b.jsonl",
        [{"prompt": "q", "response_1": "a", "response_2": "b", "all_preferences_unprocessed": [{"strength": 2}]}],
    )
    ratings = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "response": "a", "helpfulness": 2}])
    assert [detect_format(str(p)) for p in (pairs, pref, ratings)] == [
        "pairs",
        "helpsteer2_preference",
        "helpsteer2_ratings",
    ]
    assert load_pairs_any(str(pref))["margin"] == [2.0]
    with pytest.raises(ValueError, match="ratings, not pairs"):
        load_pairs_any(str(ratings))


def test_flip_pair():
    row = {"response_1": "x", "response_2": "y", "overall_preference": -2}
    assert flip_pair(row) == {"response_1": "y", "response_2": "x", "overall_preference": 2}
    assert flip_pair(flip_pair(row)) == row


text_or_junk = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.integers(),
    st.floats(),
    st.lists(st.text(max_size=5), max_size=2),
    st.just("\n\nHuman: hi\n\nAssistant: x"),
    st.just("\x00\x1b[31m control"),
)
junk_row = st.fixed_dictionaries(
    {},
    optional={
        "prompt": text_or_junk,
        "chosen": text_or_junk,
        "rejected": text_or_junk,
        "margin": st.one_of(st.floats(), st.text(max_size=3)),
        "strength": st.integers(-3, 3),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(junk_row, min_size=1, max_size=4))
def test_hypothesis_pairs_give_clear_error_or_counted_skip(tmp_path, rows):
    path = write_jsonl(tmp_path / "fuzz.jsonl", rows)
    try:
        load_preference_pairs(str(path))
    except DataError as err:
        assert "row" in str(err)
    ds, report = load_preference_pairs(str(path), on_error="skip", return_report=True)
    assert report.rows_kept == len(ds) and report.rows_kept + sum(report.dropped.values()) == report.rows_read
