"""Policy-optimisation math (METHODS.md sections 3 and 5) against hand-worked examples and
independent reference computations (plain-python loops, numpy, brute-force enumeration)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from robust_rlhf.errors import UserError
from robust_rlhf.policy.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    token_level_rewards,
    variance_aware_kl_weight,
)
from robust_rlhf.policy.losses import (
    best_of_n_expected_reward,
    best_of_n_kl,
    compute_gae,
    entropy_from_logits,
    explained_variance,
    masked_mean,
    masked_var,
    masked_whiten,
    perturb_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)

F64 = torch.float64


def _ragged_mask(b: int, t: int, seed: int) -> torch.Tensor:
    """(B, T) masks with right padding, left padding and holes mixed, every row non-empty."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, t, generator=g) > 0.3).to(F64)
    mask[0] = 0
    mask[0, :3] = 1  # right-padded
    mask[1] = 0
    mask[1, t - 2 :] = 1  # left-padded
    mask[2] = 0
    mask[2, 0] = 1  # one token
    mask[3] = 1  # full
    mask[mask.sum(1) == 0, 0] = 1  # no empty rows
    return mask


# ----------------------------------------------------------------------------- masked statistics


def test_masked_stats_against_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=F64)
    mask = _ragged_mask(5, 7, seed=1)
    sel = x.numpy()[mask.numpy() == 1]
    np.testing.assert_allclose(masked_mean(x, mask).item(), sel.mean())
    np.testing.assert_allclose(masked_mean(x, mask.bool()).item(), sel.mean())
    np.testing.assert_allclose(masked_var(x, mask).item(), np.var(sel, ddof=1))
    np.testing.assert_allclose(masked_var(x, mask, unbiased=False).item(), np.var(sel, ddof=0))
    rows = [x.numpy()[i][mask.numpy()[i] == 1].mean() for i in range(5)]
    np.testing.assert_allclose(masked_mean(x, mask, dim=1).numpy(), rows)
    white = masked_whiten(x, mask)
    expected = (x.numpy() - sel.mean()) / np.sqrt(np.var(sel, ddof=1) + 1e-8) * mask.numpy()
    np.testing.assert_allclose(white.numpy(), expected)
    np.testing.assert_allclose(masked_mean(white, mask).item(), 0.0, atol=1e-12)
    unshifted = masked_whiten(x, mask, shift_mean=False)
    np.testing.assert_allclose(unshifted.numpy(), (expected + sel.mean()) * mask.numpy())


def test_masked_mean_empty_and_var_errors() -> None:
    x = torch.randn(2, 3)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0
    one = torch.zeros(2, 3)
    one[0, 0] = 1
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, one)
    assert masked_var(x, one, unbiased=False).item() == 0.0
    with pytest.raises(ValueError, match="at least 1"):
        masked_var(x, torch.zeros(2, 3), unbiased=False)


def test_explained_variance_against_numpy() -> None:
    g = torch.Generator().manual_seed(2)
    returns = torch.randn(4, 6, generator=g, dtype=F64)
    values = returns + 0.3 * torch.randn(4, 6, generator=g, dtype=F64)
    mask = _ragged_mask(4, 6, seed=3)
    m = mask.numpy() == 1
    y, v = returns.numpy()[m], values.numpy()[m]
    np.testing.assert_allclose(explained_variance(values, returns, mask).item(), 1 - np.var(y - v) / np.var(y))
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert math.isnan(explained_variance(values, torch.ones(4, 6), mask).item())


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_formulas() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=F64)
    logq = torch.tensor([[-1.5, -1.0, -0.5]], dtype=F64)
    d = logp - logq  # [0.5, -1.0, 0.0]
    torch.testing.assert_close(kl_estimate(logp, logq, "k1"), d)
    torch.testing.assert_close(kl_estimate(logp, logq, "k2"), 0.5 * d**2)
    # k3 with r = q/p: (r - 1) - log r ; r = [e^-0.5, e^1, 1]
    r = torch.exp(-d)
    torch.testing.assert_close(kl_estimate(logp, logq, "k3"), (r - 1) - torch.log(r))
    assert (kl_estimate(logp, logq, "k3") >= 0).all()


def test_kl_estimators_unbiasedness_on_categoricals() -> None:
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=F64)
    q = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2], dtype=F64)
    exact_kl = float((p * (p / q).log()).sum())  # KL(p || q)
    exact_k2 = float((p * 0.5 * (p / q).log() ** 2).sum())  # E_p[k2], not the KL
    g = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)  # tokens from p
    logp, logq = p.log()[samples].unsqueeze(0), q.log()[samples].unsqueeze(0)  # (1, N)
    assert kl_estimate(logp, logq, "k1").mean().item() == pytest.approx(exact_kl, abs=5e-3)
    assert kl_estimate(logp, logq, "k3").mean().item() == pytest.approx(exact_kl, abs=5e-3)
    assert kl_estimate(logp, logq, "k2").mean().item() == pytest.approx(exact_k2, abs=5e-3)
    # k3 has lower variance than k1 here (the reason to prefer it)
    assert kl_estimate(logp, logq, "k3").var() < kl_estimate(logp, logq, "k1").var()


def test_kl_estimator_unknown() -> None:
    with pytest.raises(UserError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- rewards


def test_variance_aware_kl_weight() -> None:
    var = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    # batch_mean: var / mean(var) = [0.5, 1, 1.5] -> * 0.1  (more forms/scales: tests/test_policy_rewards.py)
    torch.testing.assert_close(
        variance_aware_kl_weight(var, 0.1, scale="batch_mean"), torch.tensor([0.05, 0.1, 0.15], dtype=F64)
    )
    torch.testing.assert_close(variance_aware_kl_weight(var, 0.1), torch.tensor([0.1, 0.2, 0.3], dtype=F64))
    assert torch.isfinite(variance_aware_kl_weight(torch.zeros(3), 0.1, scale="batch_mean")).all()
    with pytest.raises(ValueError, match="beta"):
        variance_aware_kl_weight(var, -0.1)
    with pytest.raises(ValueError, match=">= 0"):
        variance_aware_kl_weight(-var, 0.1)


def test_token_level_rewards_hand_worked() -> None:
    kl = torch.tensor(
        [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [1.0, 1.0, 1.0, 1.0]], dtype=F64
    )
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]])  # right pad, left pad, hole
    seq = torch.tensor([2.0, -1.0, 5.0], dtype=F64)
    out = token_level_rewards(seq, kl, 0.5, mask)
    expected = torch.tensor(
        [
            [-0.05, -0.10 + 2.0, 0.0, 0.0],  # last valid token = 1
            [0.0, -0.30, -0.35, -0.40 - 1.0],  # last valid token = 3
            [-0.5, 0.0, -0.5 + 5.0, 0.0],  # last valid token = 2
        ],
        dtype=F64,
    )
    torch.testing.assert_close(out, expected)
    # per-sample coefficient (variance-aware): row i scaled by coef[i]
    coef = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    out = token_level_rewards(seq, kl, coef, mask.bool())
    expected = torch.tensor(
        [[-0.1, -0.2 + 2.0, 0, 0], [0, 0, 0, -1.0], [-2.0, 0, -2.0 + 5.0, 0]], dtype=F64
    )
    torch.testing.assert_close(out, expected)


def test_token_level_rewards_errors() -> None:
    with pytest.raises(ValueError, match="no response tokens"):
        token_level_rewards(torch.zeros(2), torch.zeros(2, 3), 0.1, torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="kl_coef"):
        token_level_rewards(torch.zeros(2), torch.zeros(2, 3), torch.ones(3), torch.ones(2, 3))


# ----------------------------------------------------------------------------- GAE


def _gae_reference(rewards, values, mask, gamma, lam):
    """Plain-python GAE: per row, run the textbook recursion over the valid positions only."""
    b, t = len(rewards), len(rewards[0])
    adv = [[0.0] * t for _ in range(b)]
    for i in range(b):
        idx = [j for j in range(t) if mask[i][j] == 1]
        gae, next_v = 0.0, 0.0
        for j in reversed(idx):
            delta = rewards[i][j] + gamma * next_v - values[i][j]
            gae = delta + gamma * lam * gae
            adv[i][j] = gae
            next_v = values[i][j]
    ret = [[adv[i][j] + values[i][j] for j in range(t)] for i in range(b)]
    return adv, ret


def test_gae_hand_worked() -> None:
    # rewards [1, 0, 2], values [0.5, 1.0, 1.5], gamma 0.9, lam 0.8 (gamma*lam = 0.72)
    # t=2: delta = 2 + 0        - 1.5 = 0.5    A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5  - 1.0 = 0.35   A1 = 0.35 + 0.72*0.5  = 0.71
    # t=0: delta = 1 + 0.9*1.0  - 0.5 = 1.4    A0 = 1.4  + 0.72*0.71 = 1.9112
    # returns = A + V = [2.4112, 1.71, 2.0]
    r = torch.tensor([[1.0, 0.0, 2.0]], dtype=F64)
    v = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64)
    adv, ret = compute_gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[1.9112, 0.71, 0.5]], dtype=F64))
    torch.testing.assert_close(ret, torch.tensor([[2.4112, 1.71, 2.0]], dtype=F64))
    # the same sequence right-padded, left-padded and with a hole gives the same numbers;
    # rewards/values at masked positions are ignored.
    r_pad = torch.tensor([[1.0, 0.0, 2.0, 9.0, 9.0], [9.0, 9.0, 1.0, 0.0, 2.0], [1.0, 9.0, 0.0, 9.0, 2.0]], dtype=F64)
    v_pad = torch.tensor([[0.5, 1.0, 1.5, 7.0, 7.0], [7.0, 7.0, 0.5, 1.0, 1.5], [0.5, 7.0, 1.0, 7.0, 1.5]], dtype=F64)
    m_pad = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1]])
    adv, _ = compute_gae(r_pad, v_pad, m_pad, gamma=0.9, lam=0.8)
    expected = torch.tensor(
        [[1.9112, 0.71, 0.5, 0, 0], [0, 0, 1.9112, 0.71, 0.5], [1.9112, 0, 0.71, 0, 0.5]], dtype=F64
    )
    torch.testing.assert_close(adv, expected)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_random_ragged_against_loop(gamma: float, lam: float) -> None:
    g = torch.Generator().manual_seed(4)
    rewards = torch.randn(6, 9, generator=g, dtype=F64)
    values = torch.randn(6, 9, generator=g, dtype=F64)
    mask = _ragged_mask(6, 9, seed=5)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _gae_reference(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=F64))
    torch.testing.assert_close(ret, torch.tensor(ref_ret, dtype=F64))
    assert (adv[mask == 0] == 0).all()


def test_gae_lam1_gamma1_is_return_minus_value() -> None:
    # With gamma = lam = 1 the advantage telescopes to (sum of future rewards) - V_t.
    g = torch.Generator().manual_seed(6)
    rewards, values = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)
    adv, _ = compute_gae(rewards, values, torch.ones(3, 5), 1.0, 1.0)
    future = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, future - values)


# ----------------------------------------------------------------------------- RLOO


def test_rloo_against_loop() -> None:
    g = torch.Generator().manual_seed(7)
    for k in (2, 3, 4):
        rewards = torch.randn(5 * k, generator=g, dtype=F64)
        expected = []
        for p in range(5):
            block = rewards[p * k : (p + 1) * k].tolist()
            for j in range(k):
                others = [block[o] for o in range(k) if o != j]
                expected.append(block[j] - sum(others) / len(others))
        torch.testing.assert_close(rloo_advantages(rewards, k), torch.tensor(expected, dtype=F64))
    # hand-worked k=2: [1, 3 | 0, 0] -> [1-3, 3-1, 0, 0]
    torch.testing.assert_close(rloo_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), 2), torch.tensor([-2.0, 2.0, 0.0, 0.0]))


def test_rloo_errors() -> None:
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="B\\*k"):
        rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="B\\*k"):
        rloo_advantages(torch.zeros(2, 2), 2)


# ----------------------------------------------------------------------------- PPO losses


def test_ppo_policy_loss_against_python() -> None:
    g = torch.Generator().manual_seed(8)
    old = torch.randn(4, 6, generator=g, dtype=F64) - 2
    logprobs = (old + 0.4 * torch.randn(4, 6, generator=g, dtype=F64)).requires_grad_(True)
    adv = torch.randn(4, 6, generator=g, dtype=F64)
    mask = _ragged_mask(4, 6, seed=9)
    c = 0.2
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, c)
    terms, clipped, ratios, kls = [], [], [], []
    for i in range(4):
        for j in range(6):
            if mask[i, j] != 1:
                continue
            ratio = math.exp(logprobs[i, j].item() - old[i, j].item())
            a = adv[i, j].item()
            unclipped_term = -a * ratio
            clipped_term = -a * min(max(ratio, 1 - c), 1 + c)
            terms.append(max(unclipped_term, clipped_term))
            clipped.append(1.0 if clipped_term > unclipped_term else 0.0)
            ratios.append(ratio)
            kls.append((ratio - 1) - math.log(ratio))
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert stats["clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))
    assert 0 < stats["clipfrac"].item() < 1
    assert stats["ratio_mean"].item() == pytest.approx(sum(ratios) / len(ratios))
    assert stats["approx_kl"].item() == pytest.approx(sum(kls) / len(kls))
    assert all(not s.requires_grad for s in stats.values())
    loss.backward()
    # gradient is zero exactly where clipping is active or the token is masked
    n = mask.sum()
    ratio = torch.exp(logprobs.detach() - old)
    active = ~((-adv * ratio.clamp(1 - c, 1 + c)) > (-adv * ratio))
    expected_grad = -adv * ratio * active * mask / n
    torch.testing.assert_close(logprobs.grad, expected_grad)


def test_ppo_policy_loss_on_policy() -> None:
    # ratio = 1: loss = -mean(A), nothing clipped, zero approx KL
    lp = torch.randn(2, 3, dtype=F64)
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    loss, stats = ppo_policy_loss(lp, lp, adv, torch.ones(2, 3), 0.2)
    assert loss.item() == pytest.approx(-3.5)
    assert stats["clipfrac"].item() == 0 and stats["approx_kl"].item() == 0 and stats["ratio_mean"].item() == 1
    with pytest.raises(ValueError, match="clip_range"):
        ppo_policy_loss(lp, lp, adv, torch.ones(2, 3), -0.1)


def test_ppo_value_loss_against_python() -> None:
    g = torch.Generator().manual_seed(10)
    old = torch.randn(4, 6, generator=g, dtype=F64)
    values = old + 0.5 * torch.randn(4, 6, generator=g, dtype=F64)
    returns = torch.randn(4, 6, generator=g, dtype=F64)
    mask = _ragged_mask(4, 6, seed=11)
    c = 0.2
    loss, stats = ppo_value_loss(values, old, returns, mask, c)
    terms, clipped, plain = [], [], []
    for i in range(4):
        for j in range(6):
            if mask[i, j] != 1:
                continue
            v, vo, r = values[i, j].item(), old[i, j].item(), returns[i, j].item()
            vc = vo + min(max(v - vo, -c), c)
            terms.append(0.5 * max((v - r) ** 2, (vc - r) ** 2))
            clipped.append(1.0 if (vc - r) ** 2 > (v - r) ** 2 else 0.0)
            plain.append(0.5 * (v - r) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert stats["vf_clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))
    assert 0 < stats["vf_clipfrac"].item() < 1
    # 1 - Var[R - V] / Var[R] over the masked-in tokens, population variances, by hand
    rs = [returns[i, j].item() for i in range(4) for j in range(6) if mask[i, j] == 1]
    res = [returns[i, j].item() - values[i, j].item() for i in range(4) for j in range(6) if mask[i, j] == 1]
    pvar = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs)  # noqa: E731
    assert stats["explained_variance"].item() == pytest.approx(1 - pvar(res) / pvar(rs))
    loss_plain, stats_plain = ppo_value_loss(values, old, returns, mask, None)
    assert loss_plain.item() == pytest.approx(sum(plain) / len(plain))
    assert stats_plain["vf_clipfrac"].item() == 0
    with pytest.raises(ValueError, match="clip_range_value"):
        ppo_value_loss(values, old, returns, mask, -1.0)


# ----------------------------------------------------------------------------- entropy


def test_entropy_from_logits() -> None:
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 3, 7, generator=g, dtype=F64)
    p = logits.softmax(-1).numpy()
    np.testing.assert_allclose(entropy_from_logits(logits).numpy(), -(p * np.log(p)).sum(-1))
    # uniform over V: log V ; shift-invariant; huge logits do not overflow
    assert entropy_from_logits(torch.zeros(5)).item() == pytest.approx(math.log(5))
    torch.testing.assert_close(entropy_from_logits(logits + 1e4), entropy_from_logits(logits))
    big = torch.tensor([1e4, 0.0, -1e4])
    assert entropy_from_logits(big).item() == pytest.approx(0.0, abs=1e-6)
    # -inf logits (masked vocabulary): entropy of the rest, finite gradient
    masked = torch.tensor([0.0, 0.0, float("-inf"), 0.0], requires_grad=True)
    h = entropy_from_logits(masked)
    assert h.item() == pytest.approx(math.log(3))
    h.backward()
    assert torch.isfinite(masked.grad).all()


# ----------------------------------------------------------------------------- best of n


def test_best_of_n_kl() -> None:
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 3 / 4)
    assert best_of_n_kl(1000) == pytest.approx(math.log(1000) - 0.999)
    with pytest.raises(ValueError, match="n >= 1, got 0"):
        best_of_n_kl(0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_best_of_n_estimator_brute_force(n: int) -> None:
    g = torch.Generator().manual_seed(13)
    proxy = torch.randn(7, generator=g, dtype=F64)
    gold = torch.randn(7, generator=g, dtype=F64)
    # brute force: average gold reward of the proxy-best sample over all C(7, n) subsets
    subsets = list(itertools.combinations(range(7), n))
    brute = sum(gold[max(s, key=lambda i: proxy[i].item())].item() for s in subsets) / len(subsets)
    assert best_of_n_expected_reward(proxy, gold, n) == pytest.approx(brute, rel=1e-12)


def test_best_of_n_estimator_large_pool() -> None:
    g = torch.Generator().manual_seed(14)
    proxy = torch.randn(4000, generator=g, dtype=F64)
    gold = proxy + torch.randn(4000, generator=g, dtype=F64)
    # weights sum to 1 for any n (hockey-stick identity): constant gold gives the constant
    for n in (1, 10, 500, 4000):
        assert best_of_n_expected_reward(proxy, torch.full((4000,), 3.0), n) == pytest.approx(3.0, rel=1e-9)
    assert best_of_n_expected_reward(proxy, gold, 1) == pytest.approx(gold.mean().item(), rel=1e-9)
    assert best_of_n_expected_reward(proxy, gold, 4000) == pytest.approx(gold[proxy.argmax()].item(), rel=1e-9)
    # gold correlated with proxy: more selection, more gold
    curve = [best_of_n_expected_reward(proxy, gold, n) for n in (1, 4, 16, 64)]
    assert curve == sorted(curve)
    with pytest.raises(ValueError, match="1 <= n <= N=4000, got n=4001"):
        best_of_n_expected_reward(proxy, gold, 4001)
    with pytest.raises(ValueError, match="same length, got 4000 and 10"):
        best_of_n_expected_reward(proxy, gold[:10], 2)


# ----------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_hand_worked() -> None:
    ctl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10_000)
    # KL 9 > target: error = clip(9/6 - 1 = 0.5) = 0.2; coef = 0.2 * (1 + 0.2*256/1e4) = 0.201024
    ctl.update(9.0, 256)
    assert ctl.value == pytest.approx(0.201024)
    # KL 5.4 < target: error = 5.4/6 - 1 = -0.1; coef = 0.201024 * (1 - 0.1*256/1e4) = 0.20050938...
    ctl.update(torch.tensor(5.4), 256)
    assert ctl.value == pytest.approx(0.201024 * 0.99744)
    # KL at target: unchanged; n_steps 0: unchanged
    before = ctl.value
    ctl.update(6.0, 256)
    ctl.update(100.0, 0)
    assert ctl.value == pytest.approx(before)
    state = ctl.state_dict()
    other = AdaptiveKLController(1.0, 6.0, 10_000)
    other.load_state_dict(state)
    assert other.value == ctl.value


def test_fixed_kl_controller() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 256)
    assert ctl.value == 0.05


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: AdaptiveKLController(-0.1, 6.0, 10_000), "coefficient must be >= 0"),
        (lambda: AdaptiveKLController(0.1, 0.0, 10_000), "target must be > 0"),
        (lambda: AdaptiveKLController(0.1, -1.0, 10_000), "target must be > 0"),
        (lambda: AdaptiveKLController(0.1, 6.0, 0), "horizon must be > 0"),
        (lambda: FixedKLController(-0.01), "coefficient must be >= 0"),
        (lambda: AdaptiveKLController(0.1, 6.0, 10).update(float("nan"), 1), "KL must be finite"),
        (lambda: AdaptiveKLController(0.1, 6.0, 10).update(1.0, -1), "n_steps must be >= 0"),
    ],
)
def test_kl_controller_errors(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# ----------------------------------------------------------------------------- perturbation


def test_perturb_rewards() -> None:
    rewards = torch.arange(8, dtype=F64)
    assert torch.equal(perturb_rewards(rewards, "none", 1.0, 0.5), rewards)
    over = perturb_rewards(rewards, "over", 2.0, 0.25, torch.Generator().manual_seed(0))
    diff = over - rewards
    assert sorted(diff.tolist()) == [0.0] * 6 + [2.0] * 2  # round(0.25 * 8) = 2 samples, +size
    again = perturb_rewards(rewards, "over", 2.0, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(over, again)  # deterministic given the generator
    under = perturb_rewards(rewards, "under", 2.0, 0.25, torch.Generator().manual_seed(0))
    torch.testing.assert_close(under - rewards, -diff)  # same subset, opposite sign
    assert torch.equal(perturb_rewards(rewards, "over", 2.0, 1.0), rewards + 2.0)
    assert torch.equal(perturb_rewards(rewards, "under", 2.0, 0.0), rewards)
    assert torch.equal(rewards, torch.arange(8, dtype=F64))  # input untouched
    big = torch.zeros(100_000, dtype=F64)
    noise = perturb_rewards(big, "noise", 0.5, 1.0, torch.Generator().manual_seed(1))
    assert noise.mean().item() == pytest.approx(0.0, abs=0.01)
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)


def test_perturb_rewards_errors() -> None:
    r = torch.zeros(4)
    with pytest.raises(UserError, match="none, over, under, noise"):
        perturb_rewards(r, "sideways", 1.0, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        perturb_rewards(r, "over", -1.0, 0.5)
    with pytest.raises(ValueError, match="fraction"):
        perturb_rewards(r, "over", 1.0, 1.5)
