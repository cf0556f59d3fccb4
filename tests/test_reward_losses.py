"""Reward-model losses against independent reference computations."""

import math

import numpy as np
import pytest
import torch

from robust_rlhf.reward.losses import (
    bradley_terry_loss,
    brme_bt_loss,
    brme_marginal_loss,
    bsr_penalty,
    centering_penalty,
    gaussian_regression_loss,
    global_bsr_penalty,
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


def test_gaussian_regression_accepts_one_target_per_head():
    mean = torch.tensor([[1.0, 0.0]])
    std = torch.tensor([[1.0, 2.0]])
    t = torch.tensor([[0.0, 2.0]])  # head 0 target 0, head 1 target 2
    loss, _ = gaussian_regression_loss(mean, std, t)
    # head 0: 1/2 + log 1; head 1: 4/8 + log 2
    assert loss.item() == pytest.approx(0.5 + 0.5 + math.log(2), rel=1e-6)


def _quad_expect(f, m, v, n=80):
    """E_{d ~ N(m, v)}[f(d)] by Gauss-Hermite (probabilists') quadrature -- independent of the code."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return float((w * f(m + math.sqrt(v) * x)).sum() / w.sum())


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_marginal_loss_hand_worked_values():
    # s = 0: plain BT; margin log 3 -> log(4/3)
    z = torch.zeros(1, 1)
    assert brme_marginal_loss(torch.tensor([[math.log(3.0)]]), z, z, z)[0].item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    # m = 1, s_c^2 + s_r^2 = 8/pi -> z = 1/sqrt(2): loss = log(1 + e^{-1/sqrt 2})
    s = torch.full((1, 1), math.sqrt(4 / math.pi))
    loss, stats = brme_marginal_loss(torch.ones(1, 1), s, z, s)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1 / math.sqrt(2))), rel=1e-6)
    assert stats["mean_std"] == pytest.approx(math.sqrt(4 / math.pi))


@pytest.mark.parametrize("m,v", [(0.0, 0.0), (1.0, 0.5), (-1.0, 2.0), (2.5, 4.0), (-3.0, 9.0)])
def test_marginal_loss_matches_the_integral_of_the_bt_likelihood(m, v):
    # -log E[sigmoid(d)], d ~ N(m, v), by quadrature; the probit approximation is within ~0.02 in log-prob
    exact = -math.log(_quad_expect(_sigmoid, m, v))
    s = torch.full((1, 1), math.sqrt(v / 2))
    loss, _ = brme_marginal_loss(torch.full((1, 1), m), s, torch.zeros(1, 1), s)
    assert loss.item() == pytest.approx(exact, abs=0.02)


def test_marginal_rewards_std_on_misranked_pairs_where_bt_reparam_never_does():
    # bt_reparam's expected loss, by quadrature, grows with s for every margin (the collapse) ...
    for m in (-2.0, -0.5, 0.0, 0.5, 2.0):
        vals = [_quad_expect(lambda d: np.log1p(np.exp(-d)), m, s**2) for s in (0.0, 0.5, 1.0, 2.0)]
        assert all(b > a for a, b in zip(vals, vals[1:])), (m, vals)
    assert _quad_expect(lambda d: np.log1p(np.exp(-d)), 0.0, 4.0) == pytest.approx(1.068, abs=2e-3)  # issue's number
    # ... while the marginal loss falls with s when the head's margin is wrong and rises when right.
    for m, sign in ((-1.0, -1), (1.0, 1)):
        s = torch.tensor([[0.5]], requires_grad=True)
        loss, _ = brme_marginal_loss(torch.tensor([[m]]), s, torch.zeros(1, 1), torch.zeros(1, 1))
        loss.backward()
        assert sign * s.grad.item() > 0


def test_global_bsr_equals_bsr_of_the_global_batch_in_value_and_ddp_gradient():
    g = torch.Generator().manual_seed(3)
    B, K, lam, world = 4, 2, 0.1, 2
    ca, ra = torch.randn(B, K, generator=g, requires_grad=True), torch.randn(B, K, generator=g, requires_grad=True)
    cb, rb = torch.randn(B, K, generator=g), torch.randn(B, K, generator=g)
    other = torch.cat([cb, rb]).sum(0)

    def fake_all_reduce(t):  # process A's view: adds process B's per-head sums
        t += other

    pen, stats = global_bsr_penalty(ca, ra, lam, world, all_reduce=fake_all_reduce)
    allr = np.concatenate([ca.detach().numpy(), ra.detach().numpy(), cb.numpy(), rb.numpy()])  # (2 W B, K)
    expected = lam * (world * B) * (allr.mean(0) ** 2).sum()  # BSR of the global batch of W B pairs
    assert stats["bsr_penalty"] == pytest.approx(expected, rel=1e-5)
    pen.backward()
    # DDP averages gradients over the W processes: A's contribution / W must be lam * global mean
    gmean = torch.tensor(allr.mean(0), dtype=torch.float32)
    assert torch.allclose(ca.grad / world, lam * gmean.expand(B, K), atol=1e-6)
    assert torch.allclose(ra.grad / world, lam * gmean.expand(B, K), atol=1e-6)
