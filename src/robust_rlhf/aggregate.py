"""Aggregating an ensemble's K head rewards into one reward per sample (METHODS.md section 2).

Every aggregator is a pure function ``(RewardOutput, **params) -> Tensor (B,)``, registered by
name in `AGGREGATORS`. `aggregate` is the validated entry point used by recipes: it checks an
`AggregatorConfig` (unknown names, negative or meaningless coefficients are `UserError`s) and
optionally standardises each head by its own statistics first (`normalize_heads`).

References:
    mean / worst case (WCO) / uncertainty-weighted (UWO): Coste et al. 2023,
        "Reward Model Ensembles Help Mitigate Overoptimization", arXiv:2310.02743.
    lower confidence bound (mean - beta*std): Zhang et al. 2024; Eisenstein et al. 2023.
    median: Eisenstein et al. 2023, "Helping or Herding?", arXiv:2312.09244.
    BRME nominal / trade-off: seed 000 (Yan et al., "Reward-Robust RLHF in LLMs").
    max (best case, the over-scoring counterpart of min): seed 000's min-vs-max comparison.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

from robust_rlhf.errors import UserError
from robust_rlhf.reward.output import RewardOutput

__all__ = [
    "AGGREGATORS",
    "AggregatorConfig",
    "aggregate",
    "aggregate_brme_nominal",
    "aggregate_brme_tradeoff",
    "aggregate_lcb",
    "aggregate_max",
    "aggregate_mean",
    "aggregate_median",
    "aggregate_min",
    "aggregate_uwo",
    "aggregator_params",
    "normalize_heads",
]


# ----------------------------------------------------------------------------- aggregators


def aggregate_mean(output: RewardOutput) -> torch.Tensor:
    """Ensemble mean ``r̄ = mean_k r_k``.

    Args:
        output: rewards with ``per_head`` (B, K).

    Returns:
        (B,) mean over heads.
    """
    return output.per_head.mean(dim=1)


def aggregate_min(output: RewardOutput) -> torch.Tensor:
    """Worst-case optimisation (WCO, Coste et al. 2023): ``min_k r_k``; seed 000's robust term.

    Args:
        output: rewards with ``per_head`` (B, K).

    Returns:
        (B,) minimum over heads.
    """
    return output.per_head.min(dim=1).values


def aggregate_max(output: RewardOutput) -> torch.Tensor:
    """Best case ``max_k r_k``: the optimistic counterpart of `aggregate_min`.

    Seed 000 trains PPO on the minimum and on the maximum of its reward heads to show that
    over-scoring (optimising the most optimistic head) hurts more than under-scoring. Not a
    robust aggregator -- a baseline for that comparison.

    Args:
        output: rewards with ``per_head`` (B, K).

    Returns:
        (B,) maximum over heads.
    """
    return output.per_head.max(dim=1).values


def aggregate_uwo(output: RewardOutput, lam: float = 0.1) -> torch.Tensor:
    """Uncertainty-weighted optimisation (UWO, Coste et al. 2023): ``r̄ - lam * var_k r_k``.

    The variance is the unbiased (K - 1) one of `RewardOutput.var` (zero when K = 1).
    Coste et al. use lam = 0.5 for best-of-n and 0.1 for PPO.

    Args:
        output: rewards with ``per_head`` (B, K).
        lam: variance penalty, >= 0.

    Returns:
        (B,) penalised reward.
    """
    return output.mean - lam * output.var


def aggregate_lcb(output: RewardOutput, beta: float = 1.0) -> torch.Tensor:
    """Lower confidence bound ``r̄ - beta * std_k r_k`` (Zhang et al. 2024; Eisenstein et al. 2023).

    The std is the square root of the unbiased (K - 1) variance; beta = 1 is "mean minus std".

    Args:
        output: rewards with ``per_head`` (B, K).
        beta: std penalty, >= 0.

    Returns:
        (B,) penalised reward.
    """
    return output.mean - beta * output.std


def aggregate_median(output: RewardOutput) -> torch.Tensor:
    """Median over heads (Eisenstein et al. 2023).

    For even K this is the average of the two middle values (as ``numpy.median``), not the
    lower middle value that ``torch.median`` returns.

    Args:
        output: rewards with ``per_head`` (B, K).

    Returns:
        (B,) median over heads.
    """
    sorted_heads = output.per_head.sort(dim=1).values  # (B, K)
    k = sorted_heads.shape[1]
    if k % 2 == 1:
        return sorted_heads[:, k // 2]
    return 0.5 * (sorted_heads[:, k // 2 - 1] + sorted_heads[:, k // 2])


def aggregate_brme_nominal(output: RewardOutput) -> torch.Tensor:
    """BRME nominal reward (seed 000): ``r_nom = mu_{k*}``, ``k* = argmin_k s_k(x, y)`` per sample.

    Ties in the std go to the lowest head index.

    Args:
        output: Gaussian head rewards, ``per_head`` (B, K) = mu_k and ``per_head_std`` (B, K) = s_k.

    Returns:
        (B,) mean of the most confident head of each sample.

    Raises:
        UserError: if ``per_head_std`` is None (the heads are not Gaussian BRME heads).
    """
    if output.per_head_std is None:
        raise UserError(
            "aggregator 'brme_nominal' needs Gaussian heads with per_head_std (a BRME reward "
            "model); this reward model returns point estimates only -- use e.g. 'mean' or 'min'"
        )
    best = output.per_head_std.argmin(dim=1, keepdim=True)  # (B, 1)
    return output.per_head.gather(1, best).squeeze(1)


def aggregate_brme_tradeoff(output: RewardOutput, lam: float = 0.5) -> torch.Tensor:
    """BRME trade-off reward (seed 000): ``lam * r_nom + (1 - lam) * min_k mu_k``.

    This is the per-sample reward of the objective ``J_lam = lam*J_perform + (1-lam)*J_robust``:
    lam = 1 is ordinary RLHF on the nominal reward, lam = 0 pure worst case (the paper finds
    lam = 0.4-0.6 best). With lam = 0 the nominal term is not computed, so point-estimate heads
    (``per_head_std`` None) are accepted in that case only.

    Args:
        output: ``per_head`` (B, K) = mu_k and ``per_head_std`` (B, K) = s_k.
        lam: weight of the nominal term, in [0, 1].

    Returns:
        (B,) trade-off reward.
    """
    robust = aggregate_min(output)
    if lam == 0:
        return robust
    return lam * aggregate_brme_nominal(output) + (1.0 - lam) * robust


AGGREGATORS: dict[str, Callable[..., torch.Tensor]] = {
    "mean": aggregate_mean,
    "min": aggregate_min,
    "max": aggregate_max,
    "uwo": aggregate_uwo,
    "lcb": aggregate_lcb,
    "median": aggregate_median,
    "brme_nominal": aggregate_brme_nominal,
    "brme_tradeoff": aggregate_brme_tradeoff,
}
"""Aggregator name -> pure function ``(RewardOutput, **params) -> Tensor (B,)``."""

_COEFFICIENTS = ("lam", "beta")


def _accepted_params(name: str) -> dict[str, float]:
    """The keyword parameters of aggregator ``name`` with their defaults."""
    sig = inspect.signature(AGGREGATORS[name])
    return {p.name: p.default for p in list(sig.parameters.values())[1:]}


# ----------------------------------------------------------------------------- config


@dataclass
class AggregatorConfig:
    """How the K head rewards become one reward per sample (METHODS.md section 2)."""

    name: str = "mean"
    """Aggregator: one of mean, min (WCO), max (best case, seed 000's over-scoring baseline), uwo, lcb, median, brme_nominal, brme_tradeoff."""
    lam: float | None = None
    """uwo: variance penalty (default 0.1); brme_tradeoff: nominal weight in [0, 1] (default 0.5)."""
    beta: float | None = None
    """lcb: std penalty in mean - beta*std (default 1.0)."""
    normalize: bool = False
    """Standardise each head by its own eval-set (mean, std) before aggregating (Coste et al.)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `UserError` for an unknown name, negative/non-finite or meaningless coefficients."""
        if self.name not in AGGREGATORS:
            raise UserError(
                f"unknown aggregator {self.name!r}; valid names: {', '.join(AGGREGATORS)}"
            )
        accepted = _accepted_params(self.name)
        for field in _COEFFICIENTS:
            value = getattr(self, field)
            if value is None:
                continue
            if field not in accepted:
                uses = ", ".join(accepted) if accepted else "no coefficients"
                raise UserError(
                    f"aggregator {self.name!r} does not use {field}={value!r}: it would have no "
                    f"effect (it takes: {uses}); remove it"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"aggregator {field} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise UserError(f"aggregator {field} must be finite and >= 0, got {value!r}")
        if self.name == "brme_tradeoff" and self.lam is not None and self.lam > 1:
            raise UserError(
                f"brme_tradeoff lam must be in [0, 1] (1 = nominal only, 0 = worst case), got {self.lam!r}"
            )
        if not isinstance(self.normalize, bool):
            raise UserError(f"aggregator normalize must be true or false, got {self.normalize!r}")


def aggregator_params(config: AggregatorConfig) -> dict[str, float]:
    """The parameters the aggregator will actually use, defaults filled in (for logging/saving).

    Args:
        config: a valid aggregator config.

    Returns:
        e.g. ``{"lam": 0.1}`` for uwo, ``{}`` for mean.
    """
    config.validate()
    params = _accepted_params(config.name)
    for field in params:
        value = getattr(config, field)
        if value is not None:
            params[field] = float(value)
    return params


# ----------------------------------------------------------------------------- normalisation


def normalize_heads(
    output: RewardOutput, head_mean: torch.Tensor, head_std: torch.Tensor
) -> RewardOutput:
    """Standardise each head by its own statistics: ``(r_k - m_k) / s_k`` (Coste et al. 2023).

    Each ensemble member's rewards are put on a common scale (usually its eval-set mean/std) so
    that min, var and std across heads compare like with like. A Gaussian head's std is
    divided by the same ``s_k``.

    Args:
        output: ``per_head`` (B, K), optional ``per_head_std`` (B, K).
        head_mean: (K,) mean of each head's rewards.
        head_std: (K,) std of each head's rewards, > 0.

    Returns:
        A new `RewardOutput` with standardised ``per_head`` (B, K) (and ``per_head_std``).

    Raises:
        UserError: shapes that do not match K, or a std that is not finite and > 0.
    """
    k = output.num_heads
    head_mean = torch.as_tensor(head_mean, dtype=output.per_head.dtype, device=output.per_head.device)
    head_std = torch.as_tensor(head_std, dtype=output.per_head.dtype, device=output.per_head.device)
    if head_mean.shape != (k,) or head_std.shape != (k,):
        raise UserError(
            f"head normalisation statistics must have shape ({k},) for {k} heads, got mean "
            f"{tuple(head_mean.shape)} and std {tuple(head_std.shape)}"
        )
    if not bool(torch.isfinite(head_mean).all()):
        raise UserError("head normalisation means must be finite")
    if not bool((torch.isfinite(head_std) & (head_std > 0)).all()):
        raise UserError(f"head normalisation stds must be finite and > 0, got {head_std.tolist()}")
    per_head = (output.per_head - head_mean) / head_std  # (B, K)
    per_head_std = output.per_head_std / head_std if output.per_head_std is not None else None
    return RewardOutput(per_head, per_head_std)


# ----------------------------------------------------------------------------- entry point


def aggregate(
    output: RewardOutput,
    config: AggregatorConfig,
    head_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Validate ``config`` and aggregate the K head rewards into one reward per sample.

    Args:
        output: ``per_head`` (B, K), optional ``per_head_std`` (B, K).
        config: which aggregator, its coefficients, and whether to normalise heads first.
        head_stats: ``(head_mean (K,), head_std (K,))``; required when ``config.normalize``,
            rejected otherwise (it would silently do nothing).

    Returns:
        (B,) aggregated reward.

    Raises:
        UserError: invalid config, missing/unused ``head_stats``, or brme aggregators on
            point-estimate heads.
    """
    config.validate()
    if config.normalize:
        if head_stats is None:
            raise UserError(
                "aggregator normalize=true needs per-head (mean, std) statistics, e.g. from the "
                "reward model's eval set; none were given"
            )
        output = normalize_heads(output, *head_stats)
    elif head_stats is not None:
        raise UserError(
            "head statistics were given but aggregator normalize=false, so they have no "
            "effect; set normalize=true or drop them"
        )
    kwargs = {f: getattr(config, f) for f in _COEFFICIENTS if getattr(config, f) is not None}
    return AGGREGATORS[config.name](output, **kwargs)
