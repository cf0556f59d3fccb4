"""KL of a language-model policy to its reference, token level: per-token estimators, the
KL-penalised token rewards, the variance-aware per-sample coefficient, KL controllers and the
recipes' ``kl:`` config section `KLConfig` (METHODS.md sections 3 and 5). Pure functions and
small classes, no models.

Shapes: B sequences, T response tokens. ``mask`` (B, T) is 1 on response tokens that count.

References:
    KL estimators k1/k2/k3: http://joschu.net/blog/kl-approx.html
    KL-penalised token rewards, adaptive KL: Ziegler et al. 2019, arXiv:1909.08593.
    Variance-aware KL: seed 002 (Banerjee & Gopalan, "Towards Reliable Alignment").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from robust_rlhf.errors import UserError

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "KLConfig",
    "kl_estimate",
    "token_level_rewards",
    "VARIANCE_FORMS",
    "variance_aware_kl_weight",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
"""Valid ``estimator`` names of `kl_estimate`."""


# ----------------------------------------------------------------------------- KL and rewards


def kl_estimate(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: Literal["k1", "k2", "k3"] = "k1",
) -> torch.Tensor:
    """Per-token estimate of KL(p || q), p = policy, q = reference, tokens sampled from p.

    With ``log_ratio = log p - log q`` and ``r = q / p = exp(-log_ratio)``
    (http://joschu.net/blog/kl-approx.html):

    * ``k1 = log p - log q``: unbiased, high variance, can be negative per token.
    * ``k2 = 0.5 * (log p - log q)^2``: biased (exact to 2nd order), always >= 0.
    * ``k3 = (r - 1) - log r``: unbiased, always >= 0, lower variance than k1.

    Args:
        logprobs: (B, T) log p of the sampled tokens under the policy.
        ref_logprobs: (B, T) log q of the same tokens under the reference.
        estimator: "k1", "k2" or "k3".

    Returns:
        (B, T) per-token estimate (mask it yourself).

    Raises:
        UserError: unknown estimator name.
    """
    log_ratio = logprobs - ref_logprobs  # (B, T) log p - log q
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # r = exp(-log_ratio); (r - 1) - log r = exp(-log_ratio) - 1 + log_ratio
        return torch.expm1(-log_ratio) + log_ratio
    raise UserError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


VARIANCE_FORMS = ("sigma2", "sigma")
"""Which ensemble uncertainty weights the KL of variance-aware PPO: sigma^2 (seed 002's theory,
Thm 3.6) or sigma (seed 002's experiment section writes beta * sigma)."""


def variance_aware_kl_weight(
    var: torch.Tensor,
    beta: float,
    form: str = "sigma2",
    scale: float | str = "none",
    eps: float = 1e-8,
) -> torch.Tensor:
    """Per-sample KL coefficient ``beta * u(x, y) / c`` of variance-aware PPO (seed 002).

    Seed 002 maximises ``r̄(x,y) - beta * sigma^2(x,y) * ln(pi(y|x) / pi0(y|x))`` (Thm 3.6):
    samples the ensemble disagrees on are held closer to the reference. ``u`` is ``sigma^2``
    (``form="sigma2"``, the theory) or ``sigma`` (``form="sigma"``, the experiment section's
    ``beta * sigma``). The divisor ``c``:

    * ``"none"``: ``c = 1`` -- raw ``u``, as in seed 002. The penalty then carries the
      ensemble's absolute risk: a batch that drifts into high-variance responses is held
      back harder. ``beta * u`` is comparable to a vanilla coefficient ``beta * E[u]``.
    * ``"batch_mean"``: ``c = mean_batch(u) + eps`` -- the batch-mean weight is always
      ``beta`` (the pre-2026-11 behaviour; removes the absolute risk aversion).
    * a positive number: a fixed ``c``, e.g. the mean of ``u`` on the reward model's
      validation set (``kl.variance_scale: validation``) -- keeps beta readable as a vanilla
      coefficient at typical uncertainty while keeping the absolute risk aversion.

    Args:
        var: (B,) ensemble reward variance sigma^2 of each sample, >= 0.
        beta: base KL coefficient, >= 0.
        form: ``"sigma2"`` or ``"sigma"``.
        scale: ``"none"``, ``"batch_mean"`` or a fixed divisor > 0 (in the units of ``u``).
        eps: guards the batch-mean division when all variances are 0.

    Returns:
        (B,) KL coefficient per sample (detached; pass as ``kl_coef`` to `token_level_rewards`).

    Raises:
        ValueError: negative beta, negative variances, unknown form/scale, a fixed scale <= 0.
    """
    if beta < 0:
        raise ValueError(f"variance-aware KL beta must be >= 0, got {beta}")
    if form not in VARIANCE_FORMS:
        raise ValueError(f"variance form must be one of {', '.join(VARIANCE_FORMS)}, got {form!r}")
    var = var.detach()
    if bool((var < 0).any()):
        raise ValueError("reward variances must be >= 0")
    u = var if form == "sigma2" else var.sqrt()  # (B,)
    if isinstance(scale, str):
        if scale == "none":
            return beta * u
        if scale == "batch_mean":
            return beta * u / (u.mean() + eps)
        raise ValueError(f"variance scale must be 'none', 'batch_mean' or a number > 0, got {scale!r}")
    if isinstance(scale, bool) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"a fixed variance scale must be finite and > 0, got {scale!r}")
    return beta * u / scale


def token_level_rewards(
    seq_rewards: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float | torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Per-token PPO rewards: ``-kl_coef * kl`` on every response token, plus the sequence
    reward at each row's last response token (Ziegler et al. 2019, Eq. 2).

    The last token is the last position where ``mask`` is 1, whatever the padding layout.

    Args:
        seq_rewards: (B,) sequence-level reward (e.g. an aggregated ensemble reward).
        kl: (B, T) per-token KL estimate (see `kl_estimate`).
        kl_coef: scalar, or (B,) per-sample coefficient (see `variance_aware_kl_weight`).
        mask: (B, T) 0/1 response mask; every row needs at least one 1.

    Returns:
        (B, T) rewards, 0 on masked-out positions.

    Raises:
        ValueError: a row without any response token (its reward would be lost).
    """
    b, t = kl.shape
    maskf = mask.to(kl.dtype)
    coef = kl_coef
    if isinstance(coef, torch.Tensor) and coef.dim() > 0:
        if coef.shape != (b,):
            raise ValueError(f"kl_coef must be a scalar or shape ({b},), got {tuple(coef.shape)}")
        coef = coef.to(kl.dtype).unsqueeze(1)  # (B, 1)
    rewards = -coef * kl * maskf  # (B, T)
    positions = torch.arange(t, device=kl.device).expand(b, t)  # (B, T)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values  # (B,)
    if bool((last < 0).any()):
        raise ValueError("token_level_rewards: a row has no response tokens (mask all zero)")
    seq_rewards = seq_rewards.to(rewards.dtype).unsqueeze(1)  # (B, 1)
    return rewards.scatter_add(1, last.unsqueeze(1), seq_rewards)


# ----------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """A constant KL coefficient (Ziegler et al. 2019), same interface as `AdaptiveKLController`."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional KL controller of Ziegler et al. 2019 (arXiv:1909.08593, Sec. 2.2).

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``coef <- coef * (1 + e * n_steps / horizon)``.
    The coefficient grows while the KL is above target and shrinks while below.

    Args:
        init_coef: starting coefficient, >= 0.
        target: target KL (nats per sequence, as measured by the caller), > 0.
        horizon: controller horizon in samples, > 0 (Ziegler et al.: 10000).
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"adaptive KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"adaptive KL horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Update ``value`` after ``n_steps`` samples whose mean KL was ``current_kl``."""
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"current KL must be finite, got {current_kl}")
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


# ----------------------------------------------------------------------------- config


@dataclass
class KLConfig:
    """The KL penalty against the reference policy."""

    coef: float = 0.05
    """KL coefficient beta (the starting value when adaptive)"""
    adaptive: bool = False
    """adapt beta towards `target` (Ziegler et al. 2019) instead of keeping it fixed"""
    target: float = 6.0
    """adaptive controller: target KL per sequence (nats)"""
    horizon: float = 10000.0
    """adaptive controller: horizon in samples"""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """per-token KL estimator in the penalty: k1 = log p/q, k2 = (log p/q)^2/2, k3 = (q/p - 1) - log q/p"""
    variance_aware: bool = False
    """seed 002 (Thm 3.6): each sample's coefficient is beta*sigma^2(x, y)/c from the ensemble variance"""
    variance_form: Literal["sigma2", "sigma"] = "sigma2"
    """variance-aware: sigma2 = beta*sigma^2 (seed 002's theory); sigma = beta*sigma (its experiment section)"""
    variance_scale: Literal["none", "batch_mean", "validation"] = "none"
    """variance-aware divisor c: none = raw (seed 002); batch_mean = mean over the batch (mean weight is always beta); validation = a FIXED mean over the reward model's validation set"""
    variance_reference: float | None = None
    """variance_scale=validation: the fixed c (in units of sigma^2 or sigma); null = read it from the reward model (head_stats)"""

    def __post_init__(self) -> None:
        if self.variance_form not in ("sigma2", "sigma"):
            raise ValueError(f"kl.variance_form must be sigma2 or sigma, got {self.variance_form!r}")
        if self.variance_scale not in ("none", "batch_mean", "validation"):
            raise ValueError(f"kl.variance_scale must be none, batch_mean or validation, got {self.variance_scale!r}")
        if self.variance_reference is not None:
            if not (math.isfinite(self.variance_reference) and self.variance_reference > 0):
                raise ValueError(f"kl.variance_reference must be finite and > 0, got {self.variance_reference}")
            if self.variance_scale != "validation":
                raise ValueError("kl.variance_reference is only used with kl.variance_scale=validation; remove it")
        if not (math.isfinite(self.coef) and self.coef >= 0):
            raise ValueError(f"kl.coef must be finite and >= 0, got {self.coef}")
        if self.adaptive and self.target <= 0:
            raise ValueError(f"kl.target must be > 0, got {self.target}")
        if self.adaptive and self.horizon <= 0:
            raise ValueError(f"kl.horizon must be > 0, got {self.horizon}")

    def controller(self) -> FixedKLController | AdaptiveKLController:
        if self.adaptive:
            return AdaptiveKLController(self.coef, self.target, self.horizon)
        return FixedKLController(self.coef)
