"""Policy optimisation: PPO (+ variance-aware, BRME-robust), RLOO and best-of-n, the shared
recipe scaffold (`recipe`), run tracking (`tracking`), losses, KL, the policy model and its rollouts
(sampling itself: `robust_rlhf.models.generation`)."""

from robust_rlhf._lazy import lazy_exports

_EXPORTS = {
    "PPOConfig": ".ppo",
    "PPOHyperparams": ".ppo",
    "train_ppo": ".ppo",
    "RLOOConfig": ".rloo",
    "RLOOHyperparams": ".rloo",
    "train_rloo": ".rloo",
    "BestOfNConfig": ".best_of_n",
    "BestOfNParams": ".best_of_n",
    "BestOfNResult": ".best_of_n",
    "best_of_n": ".best_of_n",
    "best_of_n_curve": ".best_of_n",
    "run_best_of_n": ".best_of_n",
    "PolicySession": ".recipe",
    "TrainConfig": ".recipe",
    "LogConfig": ".tracking",
    "Run": ".tracking",
    "ModelConfig": ".model",
    "load_policy": ".model",
    "KLConfig": ".kl",
    "RewardConfig": ".rewards",
    "TrainingReward": ".rewards",
    "build_reward_source": ".recipe",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
