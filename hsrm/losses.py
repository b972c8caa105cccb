"""Reward-model objectives as pure functions of tensors.

Every function takes rewards (or predictions) and labels and returns a scalar loss: the mean over
the batch, or with ``reduction="sum"`` the sum, which trainers divide by the number of pairs (or
rated values) in the whole accumulated batch so that gradient accumulation and several processes
give the same step as one large batch (issue 19). Nothing here knows about models, tokenizers or
trainers, so each formula can be checked against hand computation (tests/test_losses.py
reproduces appendix J of HelpSteer2-Preference).

Paper: Wang et al. (2024), "HelpSteer2-Preference: Complementing Ratings with Preferences",
section 3.2, equations (1)-(3), and appendix J (table 10).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from .errors import InputError

PairwiseObjective = Literal["bt", "margin_bt", "scaled_bt"]
Reduction = Literal["mean", "sum"]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 → fp32 for the loss math; fp32 and fp64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _reduce(per_item: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_item.mean()
    if reduction == "sum":
        return per_item.sum()
    raise InputError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


def regression_loss(
    predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, reduction: Reduction = "mean"
) -> torch.Tensor:
    """SteerLM Regression: mean squared error between predicted and rated attributes.

    L = mean_{i,a} (ŷ_{i,a} − y_{i,a})²   over rows i and attributes a (one head or five).

    predictions, targets: (batch, n_attributes) or (batch,).
    mask: optional bool tensor of the same shape; False entries (a missing rating, HelpSteer's −100)
    take no part in the mean, as NeMo-Aligner masks them.
    ``reduction="sum"``: Σ of the (unmasked) squared errors, to be divided by the rated values counted
    over a whole accumulated batch.
    """
    if predictions.shape != targets.shape:
        raise InputError(
            f"regression_loss: predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in "
            "shape"
        )
    squared = (_upcast(predictions) - _upcast(targets)) ** 2
    if mask is None:
        return _reduce(squared, reduction)
    mask = mask.to(squared.dtype)
    if reduction == "mean":  # over the rated entries only
        return (squared * mask).sum() / mask.sum().clamp_min(1.0)
    return _reduce(squared * mask, reduction)


def bt_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Regular Bradley-Terry, eq. (1): L = −log σ(r_c − r_r).

    ``margin`` is accepted and ignored so that the three pairwise objectives share one signature.
    """
    return _reduce(-F.logsigmoid(_upcast(chosen_rewards - rejected_rewards)), reduction)


def margin_bt_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Margin Bradley-Terry (Touvron et al., 2023), eq. (2): L = −log σ(r_c − r_r − m).

    m is the annotated preference strength (1 slightly, 2 better, 3 much better).
    """
    if margin is None:
        raise InputError("margin_bt needs a margin per pair (a `strength` or `margin` column in the data)")
    return _reduce(-F.logsigmoid(_upcast(chosen_rewards - rejected_rewards - margin)), reduction)


def scaled_bt_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Scaled Bradley-Terry, eq. (3): L = −m · log σ(r_c − r_r).

    The strength multiplies the loss instead of shifting the logit: like repeating a pair m times.
    """
    if margin is None:
        raise InputError("scaled_bt needs a margin per pair (a `strength` or `margin` column in the data)")
    return _reduce(-_upcast(margin) * F.logsigmoid(_upcast(chosen_rewards - rejected_rewards)), reduction)


def centering_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Reward centering (Eisenstein et al., 2023): mean (or sum) over pairs of (r_c + r_r)², to be
    multiplied by a coefficient. It pins the free additive constant of a BT model near zero."""
    return _reduce(_upcast(chosen_rewards + rejected_rewards) ** 2, reduction)


PAIRWISE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "bt": bt_loss,
    "margin_bt": margin_bt_loss,
    "scaled_bt": scaled_bt_loss,
}


def get_pairwise_loss(name: str) -> Callable[..., torch.Tensor]:
    """Look up a pairwise objective by name; a typo is an error, never a silent fallback."""
    try:
        return PAIRWISE_LOSSES[name]
    except KeyError:
        raise InputError(f"unknown pairwise objective {name!r}; choose one of {sorted(PAIRWISE_LOSSES)}") from None
