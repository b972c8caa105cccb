"""HelpSteer2 ratings and HelpSteer2-Preference pre-processing (paper section 2), rule by rule."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_jsonl
from hsrm.data import (
    DataError,
    load_helpsteer2_preference,
    load_helpsteer2_ratings,
    overall_preference,
    three_most_similar,
)


def pref_row(
    strengths, split="train", as_repr=False, r1="Response one text.", r2="Response two text.", prompt="Say hi."
):
    annotations = [{"strength": s, "justification": f"@Response {'1' if s < 0 else '2'} is better."} for s in strengths]
    return {
        "split": split,
        "prompt": prompt,
        "response_1": r1,
        "response_2": r2,
        "all_preferences_unprocessed": repr(annotations) if as_repr else annotations,
    }


def test_papers_example_is_excluded_for_spread():
    assert three_most_similar([-3, -1, 2, 3]) == (-1, 2, 3)
    assert overall_preference([-3, -1, 2, 3]) == (None, "spread of the three most similar > 2")


def test_mean_is_rounded_and_zero_is_excluded():
    assert overall_preference([-1, -1, 1]) == (None, "overall preference 0")  # the paper's example of disagreement
    assert overall_preference([-2, -1, -1]) == (-1, None)  # mean −1.33 → −1
    assert overall_preference([2, 3, 3]) == (3, None)  # mean 2.67 → 3
    assert overall_preference([3, 3, 3, -3]) == (3, None)  # the outlier is not among the three most similar


def test_neither_valid_annotations_are_dropped_before_selection():
    assert overall_preference([-100, 2, 2, 1]) == (2, None)
    assert overall_preference([-100, -100]) == (None, "no valid annotation (all −100 or none)")


def test_loader_applies_every_rule_and_counts_them(tmp_path):
    rows = [
        pref_row([-2, -2, -1]),  # kept: response 1 better, strength 2
        pref_row([1, 2, 2], as_repr=True),  # kept: response 2 better, strength 2 (Python-repr list)
        pref_row([-3, -1, 2, 3]),  # spread 4: excluded
        pref_row([-1, -1, 1]),  # overall 0: excluded
        pref_row([-100, -100, -100]),  # nothing valid: excluded
        pref_row([3, 3, 2], split="val"),  # other split: not read
    ]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    ds, report = load_helpsteer2_preference(str(path), split="train", return_report=True)
    assert ds["strength"] == [2, 2]
    assert ds["chosen"] == ["Response one text.", "Response two text."]
    assert ds["rejected"] == ["Response two text.", "Response one text."]
    assert ds["overall_preference"] == [-2, 2]
    assert ds["prompt"][0] == [{"role": "user", "content": "Say hi."}]
    assert report.rows_read == 5 and report.rows_kept == 2
    assert report.dropped == {
        "spread of the three most similar > 2": 1,
        "overall preference 0": 1,
        "no valid annotation (all −100 or none)": 1,
    }
    val = load_helpsteer2_preference(str(path), split="val")
    assert val["strength"] == [3] and val["chosen"] == ["Response two text."]


def test_multi_turn_prompt_becomes_chat_messages(tmp_path):
    prompt = "What is 2+2?<extra_id_1>Assistant\n4.<extra_id_1>User\nAnd 3+3?"
    path = write_jsonl(tmp_path / "pref.jsonl", [pref_row([2, 2, 2], prompt=prompt)])
    assert load_helpsteer2_preference(str(path))["prompt"][0] == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]


def test_ratings_select_attributes_and_reject_bad_values(tmp_path):
    good = {
        "prompt": "p",
        "response": "r",
        "helpfulness": 3,
        "correctness": 4,
        "coherence": 4,
        "complexity": 1,
        "verbosity": 2,
    }
    path = write_jsonl(tmp_path / "ratings.jsonl", [good])
    one = load_helpsteer2_ratings(str(path))
    assert one.column_names == ["prompt", "response", "helpfulness"] and one["helpfulness"] == [3.0]
    five = load_helpsteer2_ratings(str(path), attributes="all")
    assert [five[a][0] for a in ("helpfulness", "correctness", "coherence", "complexity", "verbosity")] == [
        3.0,
        4.0,
        4.0,
        1.0,
        2.0,
    ]
    bad = dict(good, helpfulness=7)
    write_jsonl(path, [good, bad])
    with pytest.raises(DataError, match=r"row 2 \(counting from 1\), field 'helpfulness': rating 7 is outside 0–4"):
        load_helpsteer2_ratings(str(path))
    ds, report = load_helpsteer2_ratings(str(path), on_error="skip", return_report=True)
    assert len(ds) == 1 and report.dropped == {"malformed row": 1}
    with pytest.raises(ValueError, match="unknown attributes"):
        load_helpsteer2_ratings(str(path), attributes=("helpfulnes",))


def test_real_helpsteer_rows(shared_data):
    ds = load_helpsteer2_ratings(str(shared_data / "helpsteer1" / "nvidia_HelpSteer_sample.jsonl"), attributes="all")
    assert len(ds) == 500
    first = json.loads((shared_data / "helpsteer1" / "nvidia_HelpSteer_sample.jsonl").read_text().splitlines()[0])
    assert ds["helpfulness"][0] == float(first["helpfulness"]) and ds["response"][0] == first["response"]


def test_non_utf8_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "ok", "response": "fine", "helpfulness": 1}\n{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="not valid UTF-8.*line 2"):
        load_helpsteer2_ratings(str(path))


value = st.one_of(
    st.none(),
    st.integers(-200, 200),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.booleans(),
    st.lists(st.integers(-5, 5), max_size=3),
)
malformed_pref = st.fixed_dictionaries(
    {},
    optional={
        "split": st.sampled_from(["train", "val", 3]),
        "prompt": value,
        "response_1": value,
        "response_2": value,
        "all_preferences_unprocessed": st.one_of(
            value, st.lists(st.fixed_dictionaries({"strength": value}), max_size=5), st.text(max_size=30)
        ),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(malformed_pref, min_size=1, max_size=4))
def test_malformed_preference_rows_give_clear_errors_or_counted_skips(tmp_path, rows):
    path = write_jsonl(tmp_path / "fuzz.jsonl", rows)
    try:
        load_helpsteer2_preference(str(path), split="train")
    except DataError as err:
        assert "fuzz.jsonl" in str(err) and "row" in str(err)
    ds, report = load_helpsteer2_preference(str(path), split="train", on_error="skip", return_report=True)
    assert report.rows_kept == len(ds)
    assert report.rows_kept + sum(report.dropped.values()) == report.rows_read
