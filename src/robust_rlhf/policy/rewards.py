"""From a reward source to what a policy optimiser consumes: the training reward of each sample
and its KL-penalty coefficient.

    source (K heads) --aggregate--> proxy (B,) --perturb--> --clip--> --whiten--> training reward (B,)
                     \\--variance sigma^2 (B,)--> per-sample KL coefficient beta*sigma^2/c (seed 002)

* `RewardSource` (`robust_rlhf.reward.sources`): anything ``(prompts, responses) -> RewardOutput``;
  a saved reward model, a gold reward used as a one-head proxy, or any Python callable.
* Aggregation is by name + parameters (`robust_rlhf.aggregate`): ``mean``, ``min``, ``max``,
  ``uwo``, ``lcb``, ``median``, ``brme_nominal``, ``brme_tradeoff`` (seed 000's
  ``lam*r_nominal + (1-lam)*r_robust``).
* Variance-aware KL (seed 002, `robust_rlhf.policy.kl.KLConfig`): coefficient ``beta * u / c`` per sample with
  ``u = sigma^2`` (or ``sigma``) and ``c`` = 1 (raw, the paper), the batch mean of ``u``, or a
  fixed validation-set mean of ``u`` saved with the reward model.
* Perturbation (seed 000's over-/under-scoring experiment) applies to the *training* reward
  only; the logged proxy reward is the unperturbed aggregate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from robust_rlhf.aggregate import AggregatorConfig, aggregate
from robust_rlhf.errors import UserError
from robust_rlhf.policy.kl import KLConfig, variance_aware_kl_weight
from robust_rlhf.policy.losses import perturb_rewards, whiten
from robust_rlhf.reward.output import RewardOutput
from robust_rlhf.reward.sources import RewardSource

log = logging.getLogger(__name__)


@dataclass
class RewardConfig:
    """Which reward the policy is trained on, and how it is aggregated and perturbed."""

    model: str | None = None
    """saved reward model folder; `gold:vader` uses a gold reward as a 1-head proxy (demos/tests); null = first train one into OUTPUT/reward_model with RewardTrainConfig() defaults (not the rm_ensemble_minilm preset)"""
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    """how K head rewards become one (name: mean|min|max|uwo|lcb|median|brme_nominal|brme_tradeoff; lam; beta; normalize)"""
    batch_size: int = 64
    """reward-model scoring batch size"""
    perturb: Literal["none", "over", "under", "noise"] = "none"
    """seed 000 perturbation of the training reward: over-/under-scoring of a random subset, or zero-mean noise"""
    perturb_size: float = 0.0
    """size of the perturbation (added/subtracted amount, or the noise std)"""
    perturb_fraction: float = 1.0
    """share of each batch that over/under perturbs (noise perturbs all)"""
    clip: float | None = None
    """clip the training reward to [-clip, clip] (null = no clipping)"""
    whiten: bool = False
    """standardise the training reward over each batch (after perturbation and clipping)"""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.perturb_size) and self.perturb_size >= 0):
            raise ValueError(f"perturb_size must be finite and >= 0, got {self.perturb_size}")
        if not 0 <= self.perturb_fraction <= 1:
            raise ValueError(f"perturb_fraction must be in [0, 1], got {self.perturb_fraction}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or null, got {self.clip}")
        if self.perturb != "none" and self.perturb_size == 0:
            log.warning("reward.perturb=%s with perturb_size=0 has no effect", self.perturb)
        if self.perturb == "none" and self.perturb_size != 0:
            log.warning("reward.perturb_size=%s has no effect while reward.perturb=none", self.perturb_size)


class TrainingReward:
    """Scores samples with a `RewardSource` and turns the result into training rewards.

    Args:
        source: the proxy reward.
        cfg: aggregation / perturbation / clipping / whitening.
        kl_cfg: for the per-sample KL coefficient (variance-aware or not).
    """

    def __init__(self, source: RewardSource, cfg: RewardConfig, kl_cfg: KLConfig | None = None) -> None:
        self.source = source
        self.cfg = cfg
        self.kl_cfg = kl_cfg or KLConfig()
        self.head_stats = getattr(source, "head_stats", None) if cfg.aggregator.normalize else None
        self.variance_scale = self._variance_scale()

    def _variance_scale(self) -> float | str:
        """The divisor passed to `variance_aware_kl_weight`: "none", "batch_mean", or the fixed
        validation mean of sigma^2 (or sigma), resolved once here at policy start."""
        kl = self.kl_cfg
        if not kl.variance_aware or kl.variance_scale != "validation":
            return kl.variance_scale
        if kl.variance_reference is not None:
            return float(kl.variance_reference)
        getter = getattr(self.source, "validation_uncertainty", None)
        if getter is None:
            raise UserError(
                "kl.variance_scale=validation needs a saved reward model (reward.model=FOLDER) or an explicit "
                "kl.variance_reference; this reward source has no validation set")
        value = float(getter(kl.variance_form))
        if not (math.isfinite(value) and value > 0):
            raise UserError(
                f"kl.variance_scale=validation: the reward model's validation mean {kl.variance_form} is {value:g}; "
                "it must be > 0 (an ensemble whose heads never disagree) -- use kl.variance_scale=none")
        log.info("variance-aware KL: c = %.6g (validation mean %s, fixed for the whole run)", value, kl.variance_form)
        return value

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[RewardOutput, torch.Tensor]:
        """Head rewards and the aggregated (unperturbed) proxy reward (B,)."""
        out = self.source(list(prompts), list(responses))
        if not isinstance(out, RewardOutput):
            raise UserError(f"reward source returned {type(out).__name__}, expected RewardOutput")
        if len(out) != len(prompts):
            raise UserError(f"reward source returned {len(out)} rewards for {len(prompts)} samples")
        out = out.to("cpu")
        if not bool(torch.isfinite(out.per_head).all()):
            raise UserError("reward source returned non-finite rewards")
        return out, aggregate(out, self.cfg.aggregator, self.head_stats).float()

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], generator: torch.Generator | None = None) -> RewardOutput:
        out, proxy = self.score(prompts, responses)
        if self.kl_cfg.variance_aware and out.num_heads < 2:
            raise UserError("kl.variance_aware=true needs an ensemble (K >= 2 heads); this reward source has 1 head")
        training = perturb_rewards(proxy, self.cfg.perturb, self.cfg.perturb_size, self.cfg.perturb_fraction, generator)
        if self.cfg.clip is not None:
            training = training.clamp(-self.cfg.clip, self.cfg.clip)
        if self.cfg.whiten:
            training = whiten(training)
        std = None if out.per_head_std is None else out.per_head_std.float()
        return RewardOutput(out.per_head.float(), std, reward=proxy, training=training)

    def kl_coef(self, batch: RewardOutput, beta: float) -> float | torch.Tensor:
        """The KL coefficient: ``beta`` or, variance-aware, ``beta * u / c`` per sample (B,)
        (``u`` = sigma^2 or sigma, ``c`` per ``kl.variance_scale``; see `variance_aware_kl_weight`)."""
        if not self.kl_cfg.variance_aware:
            return beta
        return variance_aware_kl_weight(batch.var, beta, form=self.kl_cfg.variance_form, scale=self.variance_scale)


def reward_metrics(batch: RewardOutput, prefix: str = "reward/") -> dict[str, float]:
    """Batch means of the reward quantities (per head too, for ensembles of <= 16 heads)."""
    m = {
        f"{prefix}proxy": batch.reward.mean().item(),  # type: ignore[union-attr]
        f"{prefix}mean": batch.mean.mean().item(),
        f"{prefix}ensemble_std": batch.std.mean().item(),
        f"{prefix}training": batch.training.mean().item(),  # type: ignore[union-attr]
    }
    if 1 < batch.per_head.shape[1] <= 16:
        for k in range(batch.per_head.shape[1]):
            m[f"{prefix}head_{k}"] = batch.per_head[:, k].mean().item()
    return m
