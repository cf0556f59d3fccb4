"""From a reward source to what a policy optimiser consumes: the training reward of each sample
and its KL-penalty coefficient.

    source (K heads) --aggregate--> proxy (B,) --perturb--> --clip--> --whiten--> training reward (B,)
                     \\--variance sigma^2 (B,)--> per-sample KL coefficient beta*sigma^2/c (seed 002)

* `RewardSource`: anything ``(prompts, responses) -> RewardOutput``. A saved reward model
  (`robust_rlhf.reward.model.RewardModel`, which scores decoded text with its *own* tokenizer,
  USER_NEEDS #5), a gold reward used as a one-head proxy (``gold:vader``, for demos and tests),
  or any Python callable.
* Aggregation is by name + parameters (`robust_rlhf.aggregate`): ``mean``, ``min``, ``max``,
  ``uwo``, ``lcb``, ``median``, ``brme_nominal``, ``brme_tradeoff`` (seed 000's
  ``lam*r_nominal + (1-lam)*r_robust``).
* Variance-aware KL (seed 002, `KLConfig`): coefficient ``beta * u / c`` per sample with
  ``u = sigma^2`` (or ``sigma``) and ``c`` = 1 (raw, the paper), the batch mean of ``u``, or a
  fixed validation-set mean of ``u`` saved with the reward model.
* Perturbation (seed 000's over-/under-scoring experiment) applies to the *training* reward
  only; the logged proxy reward is the unperturbed aggregate.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol, Sequence

import torch

from robust_rlhf.aggregate import AggregatorConfig, aggregate
from robust_rlhf.errors import UserError
from robust_rlhf.policy.losses import (
    AdaptiveKLController,
    FixedKLController,
    masked_whiten,
    perturb_rewards,
    variance_aware_kl_weight,
)
from robust_rlhf.reward.output import RewardOutput

log = logging.getLogger(__name__)


class RewardSource(Protocol):
    """Scores decoded text: ``(prompts, responses) -> RewardOutput`` with ``per_head`` (B, K)."""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardOutput: ...


class GoldAsProxy:
    """A gold reward ``(prompts, responses) -> list[float]`` exposed as a one-head reward source.

    For demos and tests only: optimising the gold itself cannot show over-optimisation."""

    def __init__(self, gold: Callable[[Sequence[str], Sequence[str]], list[float]], name: str = "gold") -> None:
        self.gold = gold
        self.name = name

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardOutput:
        scores = torch.tensor(self.gold(list(prompts), list(responses)), dtype=torch.float32)
        return RewardOutput(scores.unsqueeze(1))  # (B, 1)


class FunctionEnsemble:
    """K reward functions ``(prompts, responses) -> list[float]`` as one K-head source."""

    def __init__(self, functions: Sequence[Callable[[Sequence[str], Sequence[str]], list[float]]]) -> None:
        if not functions:
            raise UserError("FunctionEnsemble needs at least one reward function")
        self.functions = list(functions)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardOutput:
        cols = [torch.tensor(f(list(prompts), list(responses)), dtype=torch.float32) for f in self.functions]
        return RewardOutput(torch.stack(cols, dim=1))  # (B, K)


class RewardModelSource:
    """A saved reward model (folder) as a reward source; scores text with its own tokenizer.

    ``head_stats`` (per-head (mean, std) on the reward model's validation set, saved with it)
    feed ``reward.aggregator.normalize=true``; `validation_uncertainty` feeds
    ``kl.variance_scale=validation``."""

    def __init__(self, path: str, batch_size: int = 64, device: str | torch.device | None = None) -> None:
        from robust_rlhf.reward.model import RewardModel

        self.model = RewardModel.from_pretrained(path, device=device)
        self.batch_size = batch_size
        stats = getattr(self.model.config, "head_stats", None) or {}
        self.head_stats = (
            (torch.tensor(stats["mean"]), torch.tensor(stats["std"])) if stats.get("mean") and stats.get("std") else None
        )

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardOutput:
        return self.model.score(list(prompts), list(responses), batch_size=self.batch_size)

    def validation_uncertainty(self, form: str) -> float:
        """Mean ensemble uncertainty on the reward model's validation set: E[sigma^2] for
        ``form="sigma2"``, E[sigma] for ``"sigma"`` (over chosen and rejected texts, unbiased
        variance across heads), the fixed divisor of ``kl.variance_scale=validation``.

        Read from ``head_stats`` (``ensemble_var_mean`` / ``ensemble_std_mean``, saved by
        ``rm train``); for reward models saved before those keys existed, computed once here from
        the validation split named in ``head_stats["source"]``.
        """
        stats = getattr(self.model.config, "head_stats", None) or {}
        key = "ensemble_var_mean" if form == "sigma2" else "ensemble_std_mean"
        if stats.get(key) is None:
            source = stats.get("source")
            if not source:
                raise UserError(
                    "kl.variance_scale=validation needs the reward model's validation uncertainty "
                    f"(head_stats.{key} in reward_config.json) or its validation split; this reward model "
                    "has neither -- retrain it with data.validation set, give kl.variance_reference, or use "
                    "kl.variance_scale=none|batch_mean")
            from robust_rlhf.data.preferences import load_preferences

            pairs = load_preferences(source)
            out = self.model.score([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                                   batch_size=self.batch_size)
            stats = dict(stats, ensemble_var_mean=out.var.mean().item(), ensemble_std_mean=out.std.mean().item())
            log.info("kl.variance_scale=validation: computed %s = %.6g from %d validation pairs (%s)",
                     key, stats[key], len(pairs), source)
        return float(stats[key])


def load_reward_source(spec: str, batch_size: int = 64, device: str | torch.device | None = None) -> RewardSource:
    """``gold:<gold spec>`` (e.g. ``gold:vader``) or a reward-model folder."""
    if spec.startswith("gold:"):
        from robust_rlhf.gold import load_gold

        return GoldAsProxy(load_gold(spec[5:]), name=spec)
    return RewardModelSource(spec, batch_size=batch_size, device=device)


def build_reward_source(cfg: "RewardConfig", output_dir: str | Path, device: str | torch.device | None = None) -> RewardSource:
    """The reward source of a run: ``cfg.model`` (folder or ``gold:<spec>``), or -- when it is
    null -- the default reward ensemble, trained first into ``output_dir/reward_model``
    (reused if a previous run already trained it there)."""
    if cfg.model is not None:
        return load_reward_source(cfg.model, cfg.batch_size, device)
    target = Path(output_dir) / "reward_model"
    if not (target / "reward_config.json").exists():  # written last: present = a complete reward model
        from robust_rlhf.reward.train import RewardTrainConfig, train_reward_model

        log.info("reward.model is null: training the default reward ensemble into %s first", target)
        target = Path(train_reward_model(RewardTrainConfig(), target))
    else:
        log.info("reward.model is null: reusing the reward ensemble already trained in %s", target)
    return load_reward_source(str(target), cfg.batch_size, device)


@dataclass
class RewardConfig:
    """Which reward the policy is trained on, and how it is aggregated and perturbed."""

    model: str | None = None
    """saved reward model folder; `gold:vader` uses a gold reward as a 1-head proxy (demos/tests); null = train the default ensemble into OUTPUT/reward_model first"""
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
    variance_normalize: bool | None = None
    """DEPRECATED alias: true = variance_scale: batch_mean, false = variance_scale: none"""

    def __post_init__(self) -> None:
        if self.variance_normalize is not None:
            alias = "batch_mean" if self.variance_normalize else "none"
            if self.variance_scale not in ("none", alias):
                raise ValueError(
                    f"kl.variance_normalize={str(self.variance_normalize).lower()} (deprecated) contradicts "
                    f"kl.variance_scale={self.variance_scale}; give only kl.variance_scale")
            warnings.warn(
                f"kl.variance_normalize is deprecated; use kl.variance_scale={alias} "
                "(none = raw sigma^2 as in seed 002, batch_mean = the old normalisation, validation = a fixed scale)",
                FutureWarning, stacklevel=3)
            self.variance_scale = alias
            self.variance_normalize = None
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


class RewardBatch(RewardOutput):
    """DEPRECATED: `TrainingReward` now returns `RewardOutput` (``reward`` = the old ``proxy``,
    ``training`` as before; ``mean`` / ``var`` / ``std`` are computed from ``per_head``).

    Kept so ``RewardBatch(training=, proxy=, mean=, var=, per_head=)`` still works (with a
    `DeprecationWarning`); ``mean`` and ``var`` are accepted and recomputed from ``per_head``.
    """

    def __init__(self, training: torch.Tensor, proxy: torch.Tensor, mean: torch.Tensor | None = None,
                 var: torch.Tensor | None = None, per_head: torch.Tensor | None = None) -> None:
        warnings.warn("robust_rlhf.policy.rewards.RewardBatch is deprecated; use "
                      "robust_rlhf.RewardOutput(per_head, reward=proxy, training=training)", DeprecationWarning, stacklevel=2)
        if per_head is None:
            per_head = (proxy if mean is None else mean).unsqueeze(1)  # (B, 1)
        super().__init__(per_head, None, reward=proxy, training=training)

    @property
    def proxy(self) -> torch.Tensor:  # type: ignore[override]
        return self.reward  # type: ignore[return-value]


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


@torch.no_grad()
@torch.no_grad()
def evaluate_policy(policy, prompts: Sequence[str], sampling_cfg, reward: TrainingReward, gold, seed: int,
                    kl_estimator: str = "k1") -> dict[str, float]:
    """Held-out evaluation: sample one response per prompt (own RNG stream, so training
    randomness is untouched) and log the gold reward, the proxy and the KL to the reference.

    The gold reward is only logged here; it never feeds training.
    """
    from robust_rlhf.policy.losses import kl_estimate
    from robust_rlhf.policy.sampling import generate

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ro = generate(policy.lm, policy.tokenizer, list(prompts), sampling_cfg)
    gold_scores = torch.tensor(gold(ro.prompts, ro.responses), dtype=torch.float32)
    _, proxy = reward.score(ro.prompts, ro.responses)
    out = policy.forward_response(ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask, sampling_cfg.temperature)
    ref = policy.forward_response(ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask, sampling_cfg.temperature,
                                  reference=True)
    kl = (kl_estimate(out.logprobs, ref.logprobs, kl_estimator) * ro.response_mask).sum(1)  # (B,)
    return {
        "gold_reward": gold_scores.mean().item(),  # one name (the pre-0.2 "gold/reward" duplicate is gone)
        "gold/reward_std": gold_scores.std().item() if len(gold_scores) > 1 else 0.0,
        "gold/proxy_reward": proxy.mean().item(),
        "gold/kl": kl.mean().item(),
        "gold/response_length": ro.response_mask.sum(1).float().mean().item(),
    }
