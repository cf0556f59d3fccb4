"""Reward models: heads, losses, the `RewardModel`, the training recipe and evaluation."""

from robust_rlhf.reward.model import RewardModel, RewardModelConfig
from robust_rlhf.reward.output import RewardOutput

__all__ = ["RewardModel", "RewardModelConfig", "RewardOutput"]
