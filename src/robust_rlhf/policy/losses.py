"""RL math for language-model policy optimisation, token level (METHODS.md sections 3 and 5).

Pure functions, no models. Shapes: B sequences, T response tokens, V vocabulary.
``mask`` (B, T) is 1 on response tokens that count and 0 on padding; it may be bool or float
and need not be right-padded. Losses return ``(loss, stats)`` with detached stats. KL
estimators, KL-penalised token rewards and KL controllers live in `robust_rlhf.policy.kl`.

References:
    PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347.
    GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", arXiv:1506.02438.
    KL estimators k1/k2/k3: http://joschu.net/blog/kl-approx.html
    KL-penalised token rewards, adaptive KL: Ziegler et al. 2019, arXiv:1909.08593.
    RLOO: Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740.
    Variance-aware KL: seed 002 (Banerjee & Gopalan, "Towards Reliable Alignment").
    Over-/under-scoring perturbations: seed 000 (Yan et al., "Reward-Robust RLHF in LLMs").
    Best-of-n estimator: Coste et al. 2023, arXiv:2310.02743 (Appendix); KL of best-of-n:
        Stiennon et al. 2020 / Gao et al. 2022.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from robust_rlhf.errors import UserError

__all__ = [
    "PERTURB_MODES",
    "best_of_n_expected_reward",
    "best_of_n_kl",
    "compute_gae",
    "entropy_from_logits",
    "explained_variance",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "perturb_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "whiten",
]

PERTURB_MODES = ("none", "over", "under", "noise")
"""Valid ``mode`` names of `perturb_rewards`."""

_EMPTY_DENOM = 1e-8  # denominator floor: an all-zero mask gives a mean of 0, not nan


# ----------------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``, 0/1 (bool or float).
        dim: reduce this dimension only; None reduces everything.

    Returns:
        scalar, or ``x`` with ``dim`` removed. An all-zero mask gives 0 (no nan).
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(_EMPTY_DENOM)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(_EMPTY_DENOM)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all positions where ``mask`` is 1.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``, 0/1.
        unbiased: divide by n - 1 (Bessel) instead of n, n = number of masked-in elements.

    Returns:
        scalar variance.

    Raises:
        ValueError: fewer than 2 (unbiased) or 1 (biased) masked-in elements.
    """
    n = float(mask.to(x.dtype).sum())
    if n < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} unmasked elements, got {n:g}")
    centered = x - masked_mean(x, mask)
    var = masked_mean(centered**2, mask)
    if unbiased:
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardise ``x`` with its masked mean and (unbiased) variance, e.g. advantage whitening.

    ``(x - mean) / sqrt(var + 1e-8)``; with ``shift_mean=False`` the mean is added back (only
    the scale changes). Masked-out positions are set to 0.

    Args:
        x: (B, T).
        mask: (B, T), 0/1.
        shift_mean: whether the result has zero mean.

    Returns:
        (B, T) whitened values.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def whiten(x: torch.Tensor) -> torch.Tensor:
    """Standardise a (B,) batch of rewards: ``(x - mean) / sqrt(var + 1e-8)``, unbiased variance
    (`masked_whiten` with every sample in). Returned unchanged when B < 2.

    Args:
        x: (B,) rewards.

    Returns:
        (B,) whitened rewards.
    """
    if x.numel() < 2:
        return x
    return masked_whiten(x.unsqueeze(0), torch.ones_like(x).unsqueeze(0)).squeeze(0)  # (1, B) -> (B,)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over masked-in tokens (CleanRL's ``explained_variance``).

    1 means the value head predicts the returns perfectly, 0 no better than a constant.

    Args:
        values: (B, T) value predictions.
        returns: (B, T) return targets.
        mask: (B, T), 0/1.

    Returns:
        scalar (detached); nan if the returns have zero variance or the mask is empty.
    """
    values, returns = values.detach(), returns.detach()
    if float(mask.sum()) < 1:
        return torch.tensor(float("nan"), dtype=values.dtype, device=values.device)
    var_returns = masked_var(returns, mask, unbiased=False)
    if float(var_returns) == 0:
        return torch.tensor(float("nan"), dtype=values.dtype, device=values.device)
    return 1 - masked_var(returns - values, mask, unbiased=False) / var_returns


# ----------------------------------------------------------------------------- advantages


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the valid tokens of each row (Schulman et al. 2016).

    Reverse recursion ``delta_t = r_t + gamma * V_next - V_t``,
    ``A_t = delta_t + gamma * lam * A_next``, where "next" is the next *valid* token of the same
    row (masked positions are skipped, so any padding layout works) and the value after the
    last valid token is 0 (the episode ends). Computed without gradient.

    Args:
        rewards: (B, T) per-token rewards (see `token_level_rewards`).
        values: (B, T) value estimates V_t.
        mask: (B, T) 0/1 response mask.
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1].

    Returns:
        advantages: (B, T), 0 on masked positions.
        returns: (B, T) ``advantages + values`` (value targets).
    """
    maskf = mask.to(values.dtype)
    rewards, values = rewards.to(values.dtype), values.detach()
    b, t = values.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(b, dtype=values.dtype, device=values.device)  # (B,)
    next_adv = torch.zeros_like(next_value)  # (B,)
    for i in reversed(range(t)):
        m = maskf[:, i]
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        adv = delta + gamma * lam * next_adv
        advantages[:, i] = adv * m
        next_value = m * values[:, i] + (1 - m) * next_value
        next_adv = m * adv + (1 - m) * next_adv
    return advantages, advantages + values


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, Eq. 5).

    Each sample's reward minus the mean reward of the other ``k - 1`` samples of its prompt:
    ``A_i = r_i - (sum_j r_j - r_i) / (k - 1)``.

    Layout: contiguous blocks of ``k`` -- element ``p * k + j`` is sample ``j`` of prompt
    ``p`` (what ``prompts.repeat_interleave(k)`` produces). TRL's RLOO interleaves instead.

    Args:
        rewards: (B*k,) sequence rewards.
        k: samples per prompt, >= 2.

    Returns:
        (B*k,) advantages, same layout.

    Raises:
        ValueError: k < 2, or the length is not a multiple of k.
    """
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got k={k}")
    if rewards.dim() != 1 or rewards.shape[0] % k != 0:
        raise ValueError(f"rewards must be 1-D of length B*k (k={k}), got shape {tuple(rewards.shape)}")
    grouped = rewards.reshape(-1, k)  # (B, k)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)  # (B, k)
    return (grouped - baseline).reshape(-1)


# ----------------------------------------------------------------------------- PPO losses


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate policy loss (Schulman et al. 2017, Eq. 7), token-level masked mean.

    ``loss = mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - c, 1 + c))``,
    ``ratio_t = exp(logprobs - old_logprobs)``.

    Args:
        logprobs: (B, T) log-probs of the taken tokens under the current policy (with grad).
        old_logprobs: (B, T) the same under the rollout policy (detached).
        advantages: (B, T) advantages (detached).
        mask: (B, T) 0/1.
        clip_range: c >= 0.

    Returns:
        loss: scalar.
        stats: detached scalars ``approx_kl`` (k3 estimate, mean of (ratio - 1) - log ratio),
            ``clipfrac`` (fraction of tokens where the clipped term is active), ``ratio_mean``.
    """
    if clip_range < 0:
        raise ValueError(f"clip_range must be >= 0, got {clip_range}")
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    pg_loss_unclipped = -advantages * ratio
    pg_loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(pg_loss_unclipped, pg_loss_clipped), mask)
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "clipfrac": masked_mean((pg_loss_clipped > pg_loss_unclipped).to(ratio.dtype), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 * mean_t max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``.

    As in the PPO2 baselines / CleanRL; ``clip_range_value=None`` gives the plain
    ``0.5 * mean_t (V - R)^2``.

    Args:
        values: (B, T) current value predictions (with grad).
        old_values: (B, T) predictions at rollout time.
        returns: (B, T) targets (see `compute_gae`).
        mask: (B, T) 0/1.
        clip_range_value: c >= 0, or None for no clipping.

    Returns:
        loss: scalar.
        stats: detached ``vf_clipfrac`` (fraction of tokens where the clipped term is larger),
            ``explained_variance`` (of ``values`` for ``returns``).
    """
    old_values, returns = old_values.detach(), returns.detach()
    unclipped = (values - returns) ** 2  # (B, T)
    if clip_range_value is None:
        loss = 0.5 * masked_mean(unclipped, mask)
        clipfrac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        if clip_range_value < 0:
            raise ValueError(f"clip_range_value must be >= 0, got {clip_range_value}")
        clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
        clipped = (clipped_values - returns) ** 2  # (B, T)
        loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
        with torch.no_grad():
            clipfrac = masked_mean((clipped > unclipped).to(values.dtype), mask)
    stats = {
        "vf_clipfrac": clipfrac.detach(),
        "explained_variance": explained_variance(values, returns, mask),
    }
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum_v p_v log p_v`` of the softmax over the last dimension.

    Uses ``log_softmax`` (logsumexp-based), so large logits do not overflow; ``-inf`` logits
    (masked vocabulary) contribute 0 with finite gradients.

    Args:
        logits: (..., V), e.g. (B, T, V).

    Returns:
        (...) entropy in nats, e.g. (B, T).
    """
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    logp = logp.masked_fill(torch.isneginf(logp), 0.0)
    return -(p * logp).sum(dim=-1)


# ----------------------------------------------------------------------------- best of n


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n || base policy) = ``log n - (n - 1) / n`` (Stiennon et al. 2020).

    Args:
        n: number of samples, >= 1.

    Returns:
        KL in nats (0 for n = 1).
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_expected_reward(proxy: torch.Tensor, gold: torch.Tensor, n: int) -> float:
    """Unbiased estimate of E[gold reward of the best-of-n sample, chosen by proxy reward].

    From one pool of N samples without resampling (Coste et al. 2023):
    ``sum_{i=n}^{N} C(i-1, n-1) / C(N, n) * gold(S_i)``, where S_1..S_N are sorted by proxy
    reward ascending: sample i is the best of a uniformly random n-subset with probability
    ``C(i-1, n-1) / C(N, n)``. Weights are computed in log space (lgamma, float64), so N in
    the thousands is fine. Proxy ties are broken by pool order (stable sort).

    Args:
        proxy: (N,) proxy rewards of the pool.
        gold: (N,) gold rewards of the same samples.
        n: best-of-n, 1 <= n <= N.

    Returns:
        The expected gold reward (a float).
    """
    proxy = torch.as_tensor(proxy).detach().reshape(-1).to(torch.float64).cpu()
    gold = torch.as_tensor(gold).detach().reshape(-1).to(torch.float64).cpu()
    big_n = proxy.shape[0]
    if gold.shape[0] != big_n:
        raise ValueError(f"proxy and gold must have the same length, got {big_n} and {gold.shape[0]}")
    if not 1 <= n <= big_n:
        raise ValueError(f"best-of-n needs 1 <= n <= N={big_n}, got n={n}")
    order = torch.sort(proxy, stable=True).indices
    gold_sorted = gold[order]  # (N,) by proxy ascending
    i = torch.arange(n, big_n + 1, dtype=torch.float64)  # 1-indexed ranks n..N
    log_c_i = torch.lgamma(i) - math.lgamma(n) - torch.lgamma(i - n + 1)  # log C(i-1, n-1)
    log_c_n = math.lgamma(big_n + 1) - math.lgamma(n + 1) - math.lgamma(big_n - n + 1)  # log C(N, n)
    weights = torch.exp(log_c_i - log_c_n)  # (N - n + 1,), sums to 1
    return float((weights * gold_sorted[n - 1 :]).sum())


# ----------------------------------------------------------------------------- reward perturbation


def perturb_rewards(
    rewards: torch.Tensor,
    mode: Literal["none", "over", "under", "noise"],
    size: float,
    fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Perturb rewards as in seed 000's over-/under-scoring experiment.

    * "none": unchanged copy.
    * "over": ``+size`` on exactly ``round(fraction * B)`` samples chosen uniformly at random
      (the reward model over-scores them).
    * "under": ``-size`` on such a random subset (under-scoring).
    * "noise": zero-mean Gaussian noise of std ``size`` on every sample (``fraction`` unused).

    Args:
        rewards: (B,) rewards.
        mode: one of "none", "over", "under", "noise".
        size: perturbation size, >= 0.
        fraction: share of samples perturbed by "over"/"under", in [0, 1].
        generator: random source; the result is deterministic given its state.

    Returns:
        (B,) perturbed rewards (a new tensor).
    """
    if mode not in PERTURB_MODES:
        raise UserError(f"unknown reward perturbation {mode!r}; valid: {', '.join(PERTURB_MODES)}")
    if not (math.isfinite(size) and size >= 0):
        raise ValueError(f"perturbation size must be finite and >= 0, got {size}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"perturbation fraction must be in [0, 1], got {fraction}")
    rewards = rewards.clone()
    if mode == "none":
        return rewards
    rng_device = generator.device if generator is not None else rewards.device
    if mode == "noise":
        noise = torch.randn(rewards.shape, generator=generator, device=rng_device, dtype=rewards.dtype)
        return rewards + size * noise.to(rewards.device)
    n_perturbed = round(fraction * rewards.shape[0])
    chosen = torch.randperm(rewards.shape[0], generator=generator, device=rng_device)[:n_perturbed]
    sign = 1.0 if mode == "over" else -1.0
    rewards[chosen.to(rewards.device)] += sign * size
    return rewards
