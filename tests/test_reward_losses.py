"""Reward-model losses against independent reference computations."""

import math

import numpy as np
import pytest
import torch

from robust_rlhf.reward.losses import (
    bradley_terry_loss,
    brme_bt_loss,
    bsr_penalty,
    centering_penalty,
    gaussian_regression_loss,
)


def _np_bt(c, r):
    # -mean log sigmoid(c - r) per head, summed over heads; log sigmoid(x) = -log(1 + e^-x)
    return sum(np.mean(np.log1p(np.exp(-(c[:, k] - r[:, k])))) for k in range(c.shape[1]))


def test_bt_hand_worked():
    # one pair, margin 0 -> log 2; margin log 3 -> -log(3/4) = log(4/3)
    c = torch.tensor([[0.0], [math.log(3.0)]])
    r = torch.zeros(2, 1)
    loss, stats = bradley_terry_loss(c, r)
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    assert stats["accuracy"] == 0.5  # margin 0 is not a correct ranking


def test_bt_random_multihead_matches_numpy():
    g = torch.Generator().manual_seed(0)
    c, r = torch.randn(32, 5, generator=g) * 3, torch.randn(32, 5, generator=g) * 3
    loss, _ = bradley_terry_loss(c, r)
    assert loss.item() == pytest.approx(_np_bt(c.numpy().astype(np.float64), r.numpy().astype(np.float64)), rel=1e-5)


def test_bt_stable_for_huge_margins():
    loss, _ = bradley_terry_loss(torch.tensor([[-1000.0]]), torch.tensor([[1000.0]]))
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(2000.0)


def test_bsr_equals_both_forms_of_the_seed_formula():
    g = torch.Generator().manual_seed(1)
    B, lam = 16, 1e-3
    c, r = torch.randn(B, 1, generator=g), torch.randn(B, 1, generator=g)
    pen, _ = bsr_penalty(c, r, lam)
    all_r = np.concatenate([c.numpy()[:, 0], r.numpy()[:, 0]])
    form1 = lam * B * all_r.mean() ** 2
    form2 = lam / (4 * B) * ((c + r).sum().item()) ** 2
    assert pen.item() == pytest.approx(form1, rel=1e-5)
    assert pen.item() == pytest.approx(form2, rel=1e-5)


def test_bsr_gradient_is_the_same_for_every_reward():
    c = torch.randn(8, 1, requires_grad=True)
    r = torch.randn(8, 1, requires_grad=True)
    pen, _ = bsr_penalty(c, r, 0.5)
    pen.backward()
    mean = torch.cat([c, r]).mean().item()
    # d/dr_j [lam * B * mean^2] = lam * B * 2 * mean / (2B) = lam * mean
    assert torch.allclose(c.grad, torch.full_like(c, 0.5 * mean), atol=1e-6)
    assert torch.allclose(r.grad, torch.full_like(r, 0.5 * mean), atol=1e-6)


def test_bsr_allows_per_pair_offsets_that_cancel_but_centering_does_not():
    c = torch.tensor([[3.0], [-3.0]])
    r = torch.tensor([[1.0], [-5.0]])  # pair sums 4 and -8?  make them cancel:
    r = torch.tensor([[1.0], [-1.0]])  # pair sums 4 and -4 -> batch sum 0
    assert bsr_penalty(c, r, 1.0)[0].item() == pytest.approx(0.0)
    assert centering_penalty(c, r, 1.0)[0].item() == pytest.approx(16.0)  # mean(4^2, 4^2)


def test_brme_bt_with_zero_std_is_plain_bt():
    g = torch.Generator().manual_seed(2)
    c, r = torch.randn(10, 3, generator=g), torch.randn(10, 3, generator=g)
    z = torch.zeros_like(c)
    assert brme_bt_loss(c, z, r, z, generator=g)[0].item() == pytest.approx(bradley_terry_loss(c, r)[0].item())


def test_brme_bt_uses_reparameterised_samples():
    # With a fixed generator, the loss equals BT on mu + s * eps for the same eps draws.
    c, r = torch.randn(6, 2), torch.randn(6, 2)
    s = torch.full_like(c, 0.7)
    loss, _ = brme_bt_loss(c, s, r, s, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    eps_c, eps_r = torch.randn(c.shape, generator=g), torch.randn(r.shape, generator=g)
    ref, _ = bradley_terry_loss(c + 0.7 * eps_c, r + 0.7 * eps_r)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_gaussian_regression_is_gaussian_nll():
    mean = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    std = torch.tensor([[1.0, 2.0], [0.5, 1.0]])
    t = torch.tensor([0.0, 2.0])
    loss, _ = gaussian_regression_loss(mean, std, t)
    # head 0: [(1)^2/2 + 0, (0)^2/(0.5) + log .5] -> mean(0.5, log 0.5)
    # head 1: [0/8 + log 2, 1/2 + 0] -> mean(log 2, 0.5)
    expected = (0.5 + math.log(0.5)) / 2 + (math.log(2) + 0.5) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
