"""Pointwise reward-model trainer: SteerLM Regression on Likert ratings.

HelpSteer2-Preference §3.2: a linear head on the end-of-response hidden state predicts one value
(helpfulness only) or five (the HelpSteer attributes), trained with MSE.

    hsrm train recipes/tiny_regression.yaml
"""

from __future__ import annotations

import torch

from ..losses import regression_loss
from ..metrics import regression_metrics  # noqa: F401  (the trainer's compute_metrics, imported from here by train.py)
from ..modeling import reward_inputs, scalar_reward
from .base import RewardTrainerBase


class PointwiseRewardTrainer(RewardTrainerBase):
    """The loss of a step is the mean squared error over its rated values (rated responses ×
    attributes, on every process). Logged: loss (MSE), mean absolute error, mean and std of the
    scalar reward (outputs · ``attribute_weights``, or the first output)."""

    logged_metrics = ("mae", "reward")

    def count_loss_items(self, batch: dict) -> int:
        return int(batch["labels"].numel())  # rated values: one per response and attribute

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        predictions = model(**reward_inputs(inputs)).logits
        labels = inputs["labels"].to(predictions.dtype)
        loss = self.mean_over_step(
            regression_loss(predictions, labels, reduction="sum"), labels.numel(), num_items_in_batch
        )
        if model.training:
            self.accumulate_metrics(
                {
                    "mae": (predictions - labels).abs(),
                    "reward": scalar_reward(predictions.detach().float(), self.args.attribute_weights),
                }
            )
        return (loss, {"predictions": predictions}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            predictions = model(**reward_inputs(inputs)).logits
            loss = regression_loss(predictions, inputs["labels"].to(predictions.dtype)).detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, predictions.float(), inputs["labels"].float()
