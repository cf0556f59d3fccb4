"""Serving and framework adapters: the reward server and its client, verl and TRL."""

from robust_rlhf._lazy import lazy_exports

_EXPORTS = {
    "ServerConfig": ".protocol",
    "RewardService": ".server",
    "create_app": ".server",
    "load_service": ".server",
    "serve": ".server",
    "RewardClient": ".client",
    "RewardServerError": ".client",
    "ScoreResult": ".client",
    "EnsembleRewardFunc": ".trl",
    "reward_func_from_model": ".trl",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
