"""Reward models: heads, losses, the `RewardModel`, the training recipe and evaluation."""

from robust_rlhf._lazy import lazy_exports

_EXPORTS = {
    "RewardModel": "robust_rlhf.reward.model",
    "RewardModelConfig": "robust_rlhf.reward.model",
    "RewardOutput": "robust_rlhf.reward.output",
    "RewardTrainConfig": "robust_rlhf.reward.train_config",
    "train_reward_model": "robust_rlhf.reward.train",
    "evaluate_reward_model": "robust_rlhf.reward.evaluate",
    "RewardHeads": "robust_rlhf.reward.heads",
    "bradley_terry_loss": "robust_rlhf.reward.losses",
    "bsr_penalty": "robust_rlhf.reward.losses",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
