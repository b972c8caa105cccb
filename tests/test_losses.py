"""The BT family against HelpSteer2-Preference appendix J (table 10) and a second computation."""

import math

import pytest
import torch

from hsrm.losses import bt_loss, centering_loss, get_pairwise_loss, margin_bt_loss, regression_loss, scaled_bt_loss


def reference_neg_log_sigmoid(x: float) -> float:
    """−log σ(x) = log(1 + e^{−x}), computed in plain Python floats."""
    return math.log1p(math.exp(-x))


def t(x):
    return torch.tensor([float(x)], dtype=torch.float64)


@pytest.mark.parametrize("delta, m, expected", [(1, 3, 2.1269), (-3, 3, 6.0025)])
def test_margin_bt_matches_appendix_j(delta, m, expected):
    assert margin_bt_loss(t(delta), t(0), t(m)).item() == pytest.approx(expected, abs=5e-5)


def test_scaled_bt_matches_appendix_j():
    assert scaled_bt_loss(t(-3), t(0), t(3)).item() == pytest.approx(9.1458, abs=5e-5)


def test_scaled_bt_mean_over_the_eight_scenarios_matches_appendix_j():
    # Appendix J: "Scaled BT has an average loss ... 2.3619" over Δr ∈ {−3, −1, 1, 3} × m ∈ {1, 3}.
    deltas = torch.tensor([-3.0, -1.0, 1.0, 3.0] * 2, dtype=torch.float64)
    margins = torch.tensor([1.0] * 4 + [3.0] * 4, dtype=torch.float64)
    assert scaled_bt_loss(deltas, torch.zeros(8, dtype=torch.float64), margins).item() == pytest.approx(
        2.3619, abs=1e-4
    )  # paper rounds to 4 places


@pytest.mark.parametrize("delta", [-3.0, -1.0, 0.0, 1.0, 3.0, 25.0, -25.0])
@pytest.mark.parametrize("m", [1.0, 2.0, 3.0])
def test_losses_agree_with_a_second_computation(delta, m):
    chosen, rejected = t(delta + 0.5), t(0.5)  # only the difference matters
    assert bt_loss(chosen, rejected).item() == pytest.approx(reference_neg_log_sigmoid(delta), rel=1e-9, abs=1e-12)
    assert margin_bt_loss(chosen, rejected, t(m)).item() == pytest.approx(
        reference_neg_log_sigmoid(delta - m), rel=1e-9
    )
    assert scaled_bt_loss(chosen, rejected, t(m)).item() == pytest.approx(
        m * reference_neg_log_sigmoid(delta), rel=1e-9, abs=1e-12
    )


def test_bt_loss_at_zero_margin_is_log_two():
    assert bt_loss(t(0.3), t(0.3)).item() == pytest.approx(math.log(2))


def test_batch_loss_is_the_mean_of_row_losses():
    chosen = torch.tensor([1.0, -2.0, 0.5])
    rejected = torch.tensor([0.0, 1.0, 0.5])
    margin = torch.tensor([1.0, 3.0, 2.0])
    rows = [reference_neg_log_sigmoid(d) * m for d, m in zip([1.0, -3.0, 0.0], [1.0, 3.0, 2.0])]
    assert scaled_bt_loss(chosen, rejected, margin).item() == pytest.approx(sum(rows) / 3, rel=1e-6)


def test_regression_loss_is_mse_and_masks():
    predictions = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    targets = torch.tensor([[2.0, 2.0], [1.0, 4.0]])
    assert regression_loss(predictions, targets).item() == pytest.approx((1 + 0 + 4 + 16) / 4)
    mask = torch.tensor([[True, True], [True, False]])
    assert regression_loss(predictions, targets, mask).item() == pytest.approx((1 + 0 + 4) / 3)
    with pytest.raises(ValueError, match="shape"):
        regression_loss(predictions, targets[:, :1])


def test_centering_term():
    assert centering_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.0, -2.0])).item() == pytest.approx((4 + 0) / 2)


def test_margin_objectives_require_a_margin_and_names_are_checked():
    with pytest.raises(ValueError, match="margin"):
        margin_bt_loss(t(1), t(0))
    with pytest.raises(ValueError, match="margin"):
        scaled_bt_loss(t(1), t(0))
    assert get_pairwise_loss("scaled_bt") is scaled_bt_loss
    with pytest.raises(ValueError, match="unknown pairwise objective 'scaled-bt'"):
        get_pairwise_loss("scaled-bt")


def test_sum_reduction_is_the_row_losses_added():
    """reduction="sum" (what trainers divide by the items of a whole accumulated batch) adds the row
    losses worked out by hand; an unknown reduction is an error."""
    chosen = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    rejected = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    margin = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    deltas = [1.0, -3.0, 0.0]
    by_hand = {
        "bt": [reference_neg_log_sigmoid(d) for d in deltas],
        "margin_bt": [reference_neg_log_sigmoid(d - m) for d, m in zip(deltas, [1.0, 3.0, 2.0])],
        "scaled_bt": [m * reference_neg_log_sigmoid(d) for d, m in zip(deltas, [1.0, 3.0, 2.0])],
    }
    for name, rows in by_hand.items():
        assert get_pairwise_loss(name)(chosen, rejected, margin, reduction="sum").item() == pytest.approx(
            sum(rows), rel=1e-12
        )
    assert centering_loss(chosen, rejected, reduction="sum").item() == pytest.approx(1 + 1 + 1)
    predictions = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    targets = torch.tensor([[2.0, 2.0], [1.0, 4.0]])
    assert regression_loss(predictions, targets, reduction="sum").item() == pytest.approx(1 + 0 + 4 + 16)
    mask = torch.tensor([[True, True], [True, False]])
    assert regression_loss(predictions, targets, mask, reduction="sum").item() == pytest.approx(1 + 0 + 4)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        bt_loss(chosen, rejected, reduction="total")
