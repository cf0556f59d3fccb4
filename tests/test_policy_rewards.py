"""Training reward: aggregation by name, perturbation only on the training signal, clip/whiten, KL weights."""

from __future__ import annotations

import pytest
import torch

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.config import load_config
from robust_rlhf.errors import UserError
from robust_rlhf.policy.kl import KLConfig, token_level_rewards, variance_aware_kl_weight
from robust_rlhf.policy.ppo import PPOConfig
from robust_rlhf.policy.rewards import RewardConfig, TrainingReward
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
    torch.testing.assert_close(rb.reward, torch.tensor([1.0, 1.0, 4.0]))
    torch.testing.assert_close(rb.training, torch.tensor([11.0, 11.0, 14.0]))  # every sample over-scored by 10
    torch.testing.assert_close(rb.mean, torch.tensor([2.0, 1.0, 4.0]))
    torch.testing.assert_close(rb.var, torch.tensor([2.0, 2.0, 0.0]))  # unbiased var of 2 heads


def test_clip_and_whiten():
    rb = TrainingReward(source, RewardConfig(clip=1.5))(["a"] * 3, ["x"] * 3)
    torch.testing.assert_close(rb.training, torch.tensor([1.5, 1.0, 1.5]))  # mean [2, 1, 4] clipped
    rb = TrainingReward(source, RewardConfig(whiten=True))(["a"] * 3, ["x"] * 3)
    assert abs(float(rb.training.mean())) < 1e-6 and abs(float(rb.training.std()) - 1) < 1e-5


def test_variance_aware_kl_coefficients_enter_token_rewards():
    # Default = seed 002: raw sigma^2. var = [2, 2, 0] -> beta * var = 0.2 * [2, 2, 0] = [0.4, 0.4, 0]
    tr = TrainingReward(source, RewardConfig(), KLConfig(coef=0.2, variance_aware=True))
    rb = tr(["a"] * 3, ["x"] * 3)
    coef = tr.kl_coef(rb, 0.2)
    torch.testing.assert_close(coef, torch.tensor([0.4, 0.4, 0.0]), atol=1e-6, rtol=1e-6)
    kl = torch.ones(3, 2)
    mask = torch.ones(3, 2)
    r = token_level_rewards(rb.training, kl, coef, mask)
    # first token: -coef * 1; last token: reward - coef * 1
    torch.testing.assert_close(r[:, 0], -coef)
    torch.testing.assert_close(r[:, 1], rb.training - coef)
    # without variance awareness: the plain scalar
    assert TrainingReward(source, RewardConfig(), KLConfig(coef=0.2)).kl_coef(rb, 0.2) == 0.2


# Hand-worked variance-aware coefficients for var = [2, 2, 0] (heads [1, 3], [0, 2], [4, 4]), beta = 0.2:
#   sigma = [sqrt 2, sqrt 2, 0] = [1.41421, 1.41421, 0]
#   sigma2 / batch_mean:   batch mean 4/3 -> [1.5, 1.5, 0]            * 0.2 = [0.3, 0.3, 0]
#   sigma  / batch_mean:   batch mean 2*sqrt2/3 -> [1.5, 1.5, 0]      * 0.2 = [0.3, 0.3, 0]
#   sigma2 / 0.5 (fixed):  [4, 4, 0]                                  * 0.2 = [0.8, 0.8, 0]
#   sigma  / 0.5 (fixed):  [2.82843, 2.82843, 0]                      * 0.2 = [0.565685, 0.565685, 0]
#   sigma, raw:            0.2 * sqrt 2 = 0.282843
@pytest.mark.parametrize("form, scale, reference, expected", [
    ("sigma2", "none", None, [0.4, 0.4, 0.0]),
    ("sigma", "none", None, [0.282843, 0.282843, 0.0]),
    ("sigma2", "batch_mean", None, [0.3, 0.3, 0.0]),
    ("sigma", "batch_mean", None, [0.3, 0.3, 0.0]),
    ("sigma2", "validation", 0.5, [0.8, 0.8, 0.0]),
    ("sigma", "validation", 0.5, [0.565685, 0.565685, 0.0]),
])
def test_variance_forms_and_scales_hand_worked(form, scale, reference, expected):
    kl_cfg = KLConfig(coef=0.2, variance_aware=True, variance_form=form, variance_scale=scale,
                      variance_reference=reference)
    tr = TrainingReward(source, RewardConfig(), kl_cfg)
    coef = tr.kl_coef(tr(["a"] * 3, ["x"] * 3), 0.2)
    torch.testing.assert_close(coef, torch.tensor(expected), atol=1e-6, rtol=1e-5)


def test_raw_sigma2_keeps_absolute_risk_aversion_batch_mean_does_not():
    # A batch whose every sample is 10x more uncertain: raw and fixed scales penalise it 10x
    # harder; the batch mean hides the drift (same coefficients). Independent numbers: 0.1 * var.
    var = torch.tensor([0.5, 1.0, 1.5])
    for scale, factor in (("none", 10.0), (0.5, 10.0), ("batch_mean", 1.0)):
        low = variance_aware_kl_weight(var, 0.1, scale=scale)
        high = variance_aware_kl_weight(10 * var, 0.1, scale=scale)
        torch.testing.assert_close(high, factor * low)
    torch.testing.assert_close(variance_aware_kl_weight(var, 0.1), torch.tensor([0.05, 0.1, 0.15]))


def test_variance_weight_errors():
    var = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="form"):
        variance_aware_kl_weight(var, 0.1, form="var")
    with pytest.raises(ValueError, match="scale"):
        variance_aware_kl_weight(var, 0.1, scale="median")
    with pytest.raises(ValueError, match="> 0"):
        variance_aware_kl_weight(var, 0.1, scale=0.0)


class _SavedModelLike:
    """A reward source exposing a validation uncertainty, like `RewardModelSource`."""

    def __init__(self, values):
        self.values = values

    def __call__(self, prompts, responses):
        return source(prompts, responses)

    def validation_uncertainty(self, form):
        return self.values[form]


def test_validation_scale_is_read_once_from_the_reward_model():
    src = _SavedModelLike({"sigma2": 4.0, "sigma": 2.0})
    tr = TrainingReward(src, RewardConfig(), KLConfig(coef=0.2, variance_aware=True, variance_scale="validation"))
    assert tr.variance_scale == 4.0
    # var [2, 2, 0] / 4 * 0.2 = [0.1, 0.1, 0]
    torch.testing.assert_close(tr.kl_coef(tr(["a"] * 3, ["x"] * 3), 0.2), torch.tensor([0.1, 0.1, 0.0]))
    tr = TrainingReward(src, RewardConfig(), KLConfig(coef=0.2, variance_aware=True, variance_scale="validation",
                                                      variance_form="sigma"))
    assert tr.variance_scale == 2.0
    with pytest.raises(UserError, match="variance_reference"):
        TrainingReward(source, RewardConfig(), KLConfig(variance_aware=True, variance_scale="validation"))
    with pytest.raises(UserError, match="> 0"):
        TrainingReward(_SavedModelLike({"sigma2": 0.0}), RewardConfig(),
                       KLConfig(variance_aware=True, variance_scale="validation"))


def test_moved_variance_normalize_is_refused_naming_variance_scale():
    with pytest.raises(UserError, match="unknown key 'kl.variance_normalize'; use kl.variance_scale"):
        load_config(PPOConfig, None, ["kl.variance_aware=true", "kl.variance_normalize=true"])


def test_bad_kl_settings_rejected():
    with pytest.raises(UserError, match="variance_form"):
        load_config(PPOConfig, None, ["kl.variance_form=sigma3"])
    with pytest.raises(UserError, match="variance_scale"):
        load_config(PPOConfig, None, ["kl.variance_scale=batch"])
    with pytest.raises(UserError, match="only used with"):
        load_config(PPOConfig, None, ["kl.variance_reference=0.5"])
    with pytest.raises(UserError, match="variance_reference"):
        load_config(PPOConfig, None, ["kl.variance_scale=validation", "kl.variance_reference=-1"])


def test_presets_load_and_vappo_is_seed_002():
    cfg = load_config(PPOConfig, "policy_vappo")
    assert cfg.kl.variance_aware and cfg.kl.variance_form == "sigma2" and cfg.kl.variance_scale == "none"


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
