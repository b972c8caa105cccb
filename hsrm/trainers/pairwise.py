"""Pairwise reward-model trainer: the Bradley-Terry family (Regular, Margin, Scaled BT).

HelpSteer2-Preference §3.2, eqs. (1)-(3). Chosen and rejected go through the model in one forward
pass — by default one row per pair with the prompt computed once (``share_prompts``,
:class:`hsrm.data.collators.SharedPromptPairCollator`), else stacked as rows of their own — the
reward is read at each sequence's last real token, and the objective is looked up by name in
``hsrm.losses.PAIRWISE_LOSSES``.

    hsrm train recipes/tiny_bt.yaml
"""

from __future__ import annotations

import torch

from ..losses import centering_loss, get_pairwise_loss
from ..metrics import pairwise_metrics  # noqa: F401  (the trainer's compute_metrics, imported from here by train.py)
from ..modeling import reward_inputs, scalar_reward
from .base import RewardTrainerBase


def split_pair_rewards(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards, rejected rewards), each (n_pairs,), from a stacked pair batch (padded or packed),
    read through the (possibly wrapped) model's forward (:func:`hsrm.modeling.read_rewards_in_forward`)."""
    rewards = scalar_reward(model(**reward_inputs(inputs)).logits)
    n_pairs = inputs["margin"].shape[0]
    return rewards[:n_pairs], rewards[n_pairs:]


class PairwiseRewardTrainer(RewardTrainerBase):
    """``args.objective`` ∈ {bt, margin_bt, scaled_bt}; ``args.center_rewards_coefficient`` adds
    reward centering. The loss of a step is the mean over its pairs (on every process). Logged:
    loss, accuracy, margin (r_c − r_r), reward mean and std (both sides of every pair)."""

    logged_metrics = ("accuracy", "margin", "reward")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pairwise_loss = get_pairwise_loss(self.args.objective)  # unknown names fail here

    def pair_loss(
        self, chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        loss = self.pairwise_loss(chosen, rejected, margin.to(chosen.dtype), reduction=reduction)
        if self.args.center_rewards_coefficient:
            loss = loss + self.args.center_rewards_coefficient * centering_loss(chosen, rejected, reduction=reduction)
        return loss

    def count_loss_items(self, batch: dict) -> int:
        return int(batch["margin"].shape[0])  # pairs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = split_pair_rewards(model, inputs)
        loss_sum = self.pair_loss(chosen, rejected, inputs["margin"], reduction="sum")
        loss = self.mean_over_step(loss_sum, chosen.shape[0], num_items_in_batch)
        if model.training:
            self.accumulate_metrics(
                {
                    "accuracy": (chosen > rejected).float(),
                    "margin": chosen - rejected,
                    "reward": torch.cat([chosen, rejected]),
                }
            )
        if return_outputs:
            return loss, {"chosen": chosen, "rejected": rejected}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            chosen, rejected = split_pair_rewards(model, inputs)
            loss = self.pair_loss(chosen, rejected, inputs["margin"]).detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, torch.stack([chosen, rejected], dim=-1).float(), inputs["margin"]
