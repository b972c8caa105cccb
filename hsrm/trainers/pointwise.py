"""Pointwise reward-model trainer: SteerLM Regression on Likert ratings.

HelpSteer2-Preference §3.2: a linear head on the end-of-response hidden state predicts one value
(helpfulness only) or five (the HelpSteer attributes), trained with MSE.

    hsrm train recipes/tiny_regression.yaml
"""

from __future__ import annotations

import torch

from ..losses import regression_loss
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


def regression_metrics(attributes, attribute_weights=None):
    """MAE, RMSE and Pearson r per attribute; mean/std of the scalar reward (outputs · weights, or the first output)."""
    import numpy as np

    def compute(eval_pred) -> dict[str, float]:
        predictions = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, len(attributes))
        labels = np.asarray(eval_pred.label_ids, dtype=np.float64).reshape(-1, len(attributes))
        metrics: dict[str, float] = {}
        for k, name in enumerate(attributes):
            error = predictions[:, k] - labels[:, k]
            metrics[f"{name}_mae"] = float(np.abs(error).mean())
            metrics[f"{name}_rmse"] = float(np.sqrt((error**2).mean()))
            if predictions[:, k].std() > 0 and labels[:, k].std() > 0:
                metrics[f"{name}_pearson"] = float(np.corrcoef(predictions[:, k], labels[:, k])[0, 1])
        reward = (
            predictions @ np.asarray(attribute_weights, dtype=np.float64) if attribute_weights else predictions[:, 0]
        )
        metrics["reward_mean"] = float(reward.mean())
        metrics["reward_std"] = float(reward.std())
        return metrics

    return compute
