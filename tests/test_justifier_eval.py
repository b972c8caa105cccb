"""Justifier evaluation metrics, worked out by hand: accuracy over both orders, position bias,
parse failures, RewardBench section weighting."""

from __future__ import annotations

import math

import pytest

from hsrm.evaluation import rewardbench_scores
from hsrm.justifier_eval import justifier_metrics


def test_metrics_by_hand():
    # pair:            0     1     2     3
    chosen_first = [1, 2, None, 1]  # correct: 1 → pairs 0, 3
    chosen_second = [2, 2, 2, 1]  # correct: 2 → pairs 0, 1, 2
    m = justifier_metrics(chosen_first, chosen_second)
    assert m["pairs"] == 4 and m["judgements"] == 8
    assert m["accuracy"] == 5 / 8
    assert m["accuracy_chosen_first"] == 2 / 4 and m["accuracy_chosen_second"] == 3 / 4
    assert m["both_orders_accuracy"] == 1 / 4  # only pair 0 is right in both orders
    # pair 1: (2, 2) same position twice; pair 3: (1, 1) same position twice; pair 2 has an unparsed verdict.
    assert m["position_bias_rate"] == 2 / 4
    assert m["parse_failure_rate"] == 1 / 8 and m["parse_failures"] == 1
    assert m["response_1_rate"] == 3 / 7  # parsed: 1, 2, 1, 2, 2, 2, 1


def test_unparseable_verdicts_count_as_wrong_and_an_always_first_judge_is_fully_biased():
    m = justifier_metrics([None, None], [None, None])
    assert m["accuracy"] == 0.0 and m["parse_failure_rate"] == 1.0 and m["position_bias_rate"] == 0.0
    assert math.isnan(m["response_1_rate"])
    always_first = justifier_metrics([1, 1, 1], [1, 1, 1])
    assert always_first["accuracy"] == 0.5 and always_first["both_orders_accuracy"] == 0.0
    assert always_first["position_bias_rate"] == 1.0 and always_first["response_1_rate"] == 1.0
    with pytest.raises(ValueError):
        justifier_metrics([1], [1, 2])


def test_rewardbench_sections_use_official_weights():
    """The justifier's two orders are 2n verdicts for the one RewardBench scorer (as justifier_eval feeds it)."""
    subsets = ["alpacaeval-easy", "alpacaeval-easy", "mt-bench-easy", "llmbar-natural", "unknown-subset"]
    first = [1, 1, 2, 1, 1]
    second = [2, 1, 2, 2, 2]
    scores = rewardbench_scores(subsets + subsets, [v == 1 for v in first] + [v == 2 for v in second])
    accuracy = {name: entry["accuracy"] for name, entry in scores["subsets"].items()}
    assert accuracy == {"alpacaeval-easy": 3 / 4, "mt-bench-easy": 1 / 2, "llmbar-natural": 1.0, "unknown-subset": 1.0}
    chat = (3 / 4 * 100 + 1 / 2 * 28) / (100 + 28)  # official counts: alpacaeval-easy 100, mt-bench-easy 28
    assert {name: s["score"] for name, s in scores["sections"].items()} == pytest.approx(
        {"Chat": chat, "Chat Hard": 1.0}
    )
    assert scores["overall"] == pytest.approx((chat + 1.0) / 2)
    assert scores["unscored_subsets"] == ["unknown-subset"]
