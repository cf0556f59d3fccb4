"""robust-rlhf: reward models that know their uncertainty, and policies optimised against them
without reward hacking.

Public API (stable):
    RewardModel, RewardOutput          -- robust_rlhf.reward
    AGGREGATORS, aggregate             -- robust_rlhf.aggregate
"""

__version__ = "0.1.0"
