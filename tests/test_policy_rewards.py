"""Training reward: aggregation by name, perturbation only on the training signal, clip/whiten, KL weights."""

from __future__ import annotations

import pytest
import torch

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.config import load_config
from robust_rlhf.errors import UserError
from robust_rlhf.policy.losses import token_level_rewards
from robust_rlhf.policy.ppo import PPOConfig
from robust_rlhf.policy.rewards import KLConfig, RewardConfig, TrainingReward
from robust_rlhf.reward.output import RewardOutput

# 3 samples, 2 Gaussian heads: mu and s chosen by hand
MU = torch.tensor([[1.0, 3.0], [0.0, 2.0], [4.0, 4.0]])
S = torch.tensor([[0.1, 0.5], [0.9, 0.2], [0.3, 0.3]])


def source(prompts, responses):
    return RewardOutput(MU.clone(), S.clone())


def test_brme_tradeoff_and_perturbation_only_on_training_reward():
    cfg = RewardConfig(aggregator=AggregatorConfig(name="brme_tradeoff", lam=0.5), perturb="over", perturb_size=10.0,
                       perturb_fraction=1.0)
    rb = TrainingReward(source, cfg)(["a", "b", "c"], ["x", "y", "z"], generator=torch.Generator().manual_seed(0))
    # nominal = mu of the lowest-s head: [1, 2, 4]; robust = min: [1, 0, 4]; 0.5/0.5 -> [1, 1, 4]
    torch.testing.assert_close(rb.proxy, torch.tensor([1.0, 1.0, 4.0]))
    torch.testing.assert_close(rb.training, torch.tensor([11.0, 11.0, 14.0]))  # every sample over-scored by 10
    torch.testing.assert_close(rb.mean, torch.tensor([2.0, 1.0, 4.0]))
    torch.testing.assert_close(rb.var, torch.tensor([2.0, 2.0, 0.0]))  # unbiased var of 2 heads


def test_clip_and_whiten():
    rb = TrainingReward(source, RewardConfig(clip=1.5))(["a"] * 3, ["x"] * 3)
    torch.testing.assert_close(rb.training, torch.tensor([1.5, 1.0, 1.5]))  # mean [2, 1, 4] clipped
    rb = TrainingReward(source, RewardConfig(whiten=True))(["a"] * 3, ["x"] * 3)
    assert abs(float(rb.training.mean())) < 1e-6 and abs(float(rb.training.std()) - 1) < 1e-5


def test_variance_aware_kl_coefficients_enter_token_rewards():
    tr = TrainingReward(source, RewardConfig(), KLConfig(coef=0.2, variance_aware=True))
    rb = tr(["a"] * 3, ["x"] * 3)
    coef = tr.kl_coef(rb, 0.2)
    # var = [2, 2, 0], batch mean 4/3 -> sigma^2 / mean = [1.5, 1.5, 0]; times beta 0.2
    torch.testing.assert_close(coef, torch.tensor([0.3, 0.3, 0.0]), atol=1e-6, rtol=1e-6)
    kl = torch.ones(3, 2)
    mask = torch.ones(3, 2)
    r = token_level_rewards(rb.training, kl, coef, mask)
    # first token: -coef * 1; last token: reward - coef * 1
    torch.testing.assert_close(r[:, 0], -coef)
    torch.testing.assert_close(r[:, 1], rb.training - coef)
    # without variance awareness: the plain scalar
    assert TrainingReward(source, RewardConfig(), KLConfig(coef=0.2)).kl_coef(rb, 0.2) == 0.2


def test_variance_aware_needs_an_ensemble():
    one_head = lambda p, r: RewardOutput(torch.zeros(len(r), 1))  # noqa: E731
    with pytest.raises(UserError, match="K >= 2"):
        TrainingReward(one_head, RewardConfig(), KLConfig(variance_aware=True))(["a"], ["b"])


def test_bad_reward_settings_rejected():
    with pytest.raises(UserError, match="perturb"):
        load_config(PPOConfig, None, ["reward.perturb=sideways"])
    with pytest.raises(UserError, match="perturb_size"):
        load_config(PPOConfig, None, ["reward.perturb=over", "reward.perturb_size=-1"])
    with pytest.raises(UserError, match="brme_tradeoff"):
        load_config(PPOConfig, None, ["reward.aggregator.name=brme_tradeoff", "reward.aggregator.lam=2"])
    with pytest.raises(UserError, match="per_head_std|Gaussian"):
        TrainingReward(lambda p, r: RewardOutput(MU.clone()), RewardConfig(aggregator=AggregatorConfig(name="brme_nominal")))(
            ["a"] * 3, ["x"] * 3)
