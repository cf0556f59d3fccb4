"""robust-rlhf: reward models that know their uncertainty, and policies optimised against them
without reward hacking.

Public API (stable; imported lazily, so ``import robust_rlhf`` does not load torch):
    RewardModel, RewardOutput, RewardModelConfig    -- robust_rlhf.reward
    RewardTrainConfig, train_reward_model           -- robust_rlhf.reward.train_config, .train
    AGGREGATORS, AggregatorConfig, aggregate        -- robust_rlhf.aggregate
    PPOConfig, train_ppo, RLOOConfig, train_rloo,
    BestOfNConfig, run_best_of_n                    -- robust_rlhf.policy
    load_gold                                       -- robust_rlhf.gold
    load_config, UserError                          -- robust_rlhf.config, robust_rlhf.errors

Layers (docs/architecture.md): cli -> recipes (reward.train, policy.ppo / rloo / best_of_n,
experiments) -> components (reward.model, aggregate, policy.losses, policy.model, ...) ->
utils / config / checkpoint.
"""

from robust_rlhf._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "RewardModel": "robust_rlhf.reward.model",
    "RewardModelConfig": "robust_rlhf.reward.model",
    "RewardOutput": "robust_rlhf.reward.output",
    "RewardTrainConfig": "robust_rlhf.reward.train_config",
    "train_reward_model": "robust_rlhf.reward.train",
    "AGGREGATORS": "robust_rlhf.aggregate",
    "AggregatorConfig": "robust_rlhf.aggregate",
    "aggregate": "robust_rlhf.aggregate",
    "PPOConfig": "robust_rlhf.policy.ppo",
    "train_ppo": "robust_rlhf.policy.ppo",
    "RLOOConfig": "robust_rlhf.policy.rloo",
    "train_rloo": "robust_rlhf.policy.rloo",
    "BestOfNConfig": "robust_rlhf.policy.best_of_n",
    "run_best_of_n": "robust_rlhf.policy.best_of_n",
    "load_gold": "robust_rlhf.gold",
    "load_config": "robust_rlhf.config",
    "UserError": "robust_rlhf.errors",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
