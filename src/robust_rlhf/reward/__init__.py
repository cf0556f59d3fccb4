"""Reward models: heads, losses, the `RewardModel`, the training recipe and evaluation."""

from robust_rlhf._lazy import lazy_exports
from robust_rlhf.reward.model import RewardModel, RewardModelConfig
from robust_rlhf.reward.output import RewardOutput

_EXPORTS = {
    "RewardTrainConfig": "robust_rlhf.reward.train",
    "train_reward_model": "robust_rlhf.reward.train",
    "evaluate_reward_model": "robust_rlhf.reward.evaluate",
    "RewardHeads": "robust_rlhf.reward.heads",
    "bradley_terry_loss": "robust_rlhf.reward.losses",
    "bsr_penalty": "robust_rlhf.reward.losses",
}
__all__ = ["RewardModel", "RewardModelConfig", "RewardOutput", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
