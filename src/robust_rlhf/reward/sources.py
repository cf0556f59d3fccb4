"""Reward sources: anything ``(prompts, responses) -> RewardOutput`` that a policy can be trained
on or a server / adapter can score with.

* `RewardModelSource`: a saved reward model folder (`robust_rlhf.reward.model.RewardModel`,
  which scores decoded text with its *own* tokenizer, USER_NEEDS #5).
* `GoldAsProxy`: a gold reward used as a one-head proxy (``gold:vader``, for demos and tests).
* `FunctionEnsemble`: K Python reward functions as one K-head source.
* `load_reward_source`: ``gold:<spec>`` or a folder -> a source.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from robust_rlhf.errors import UserError
from robust_rlhf.reward.output import RewardOutput

__all__ = ["FunctionEnsemble", "GoldAsProxy", "RewardModelSource", "RewardSource", "load_reward_source"]


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

        Read from ``head_stats`` (``ensemble_var_mean`` / ``ensemble_std_mean``), which ``rm train``
        saves whenever it has a validation set.
        """
        stats = getattr(self.model.config, "head_stats", None) or {}
        key = "ensemble_var_mean" if form == "sigma2" else "ensemble_std_mean"
        if stats.get(key) is None:
            raise UserError(
                "kl.variance_scale=validation needs the reward model's validation uncertainty "
                f"(head_stats.{key} in reward_config.json); this reward model has none -- retrain it with "
                "data.validation set, give kl.variance_reference, or use kl.variance_scale=none|batch_mean")
        return float(stats[key])


def load_reward_source(spec: str, batch_size: int = 64, device: str | torch.device | None = None) -> RewardSource:
    """``gold:<gold spec>`` (e.g. ``gold:vader``) or a reward-model folder."""
    if spec.startswith("gold:"):
        from robust_rlhf.gold import load_gold

        return GoldAsProxy(load_gold(spec[5:]), name=spec)
    return RewardModelSource(spec, batch_size=batch_size, device=device)
