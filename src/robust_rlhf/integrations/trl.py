"""Use a robust-rlhf reward ensemble inside TRL's online trainers (GRPOTrainer, RLOOTrainer).

    from trl import GRPOTrainer
    from robust_rlhf.integrations.trl import reward_func_from_model

    reward_fn = reward_func_from_model("runs/rm", aggregator="lcb", beta=1.0)
    trainer = GRPOTrainer(model=..., reward_funcs=[reward_fn], args=..., train_dataset=...)

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., **kwargs)``
and expects one float per completion; it names the function by ``__name__``. Prompts and
completions are strings, or -- conversational datasets -- lists of ``{"role", "content"}``
messages, which we join into text. The reward model scores that text with its *own*
tokenizer (USER_NEEDS #5), so the policy's tokenizer never matters. When TRL passes
``log_metric``, the ensemble's mean reward and std are logged too (``reward/ensemble_std``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from robust_rlhf.aggregate import AggregatorConfig, aggregate
from robust_rlhf.errors import UserError
from robust_rlhf.policy.rewards import RewardSource, load_reward_source

__all__ = ["EnsembleRewardFunc", "reward_func_from_model", "message_text"]


def message_text(x: Any) -> str:
    """A prompt or completion as text: strings pass through; a list of chat messages is joined
    by newlines from their ``content`` fields (a single message dict works too)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return _content(x)
    if isinstance(x, (list, tuple)):
        return "\n".join(_content(m) for m in x)
    raise UserError(f"cannot read a prompt/completion of type {type(x).__name__}; expected str or chat messages")


def _content(m: Any) -> str:
    if isinstance(m, str):
        return m
    if not isinstance(m, dict) or "content" not in m:
        raise UserError(f"chat message without a 'content' field: {m!r}")
    c = m["content"]
    if isinstance(c, list):  # multimodal-style content parts: keep the text parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)
    return str(c)


class EnsembleRewardFunc:
    """A reward source + aggregator as a TRL reward function ``(prompts, completions, **kwargs) -> list[float]``.

    Args:
        source: any ``(prompts, responses) -> RewardOutput`` (e.g. a loaded reward model).
        aggregator: how the K heads become one reward (default: mean).
        head_stats: per-head (mean, std) when ``aggregator.normalize`` is true.
        name: ``__name__`` TRL logs the reward under.
    """

    def __init__(self, source: RewardSource, aggregator: AggregatorConfig | None = None, head_stats=None,
                 name: str = "robust_rlhf_reward") -> None:
        self.source = source
        self.aggregator = aggregator or AggregatorConfig()
        if self.aggregator.normalize and head_stats is None:
            head_stats = getattr(source, "head_stats", None)
        self.head_stats = head_stats if self.aggregator.normalize else None
        self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        p_text = [message_text(p) for p in prompts]
        c_text = [message_text(c) for c in completions]
        out = self.source(p_text, c_text)
        rewards = aggregate(out, self.aggregator, self.head_stats).float().cpu()
        values = [float(r) for r in rewards]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{self.__name__}: non-finite reward (never silently replaced)")
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric("reward/ensemble_mean", float(out.mean.mean()))
            log_metric("reward/ensemble_std", float(out.std.mean()))
        return values


def reward_func_from_model(path: str, aggregator: str = "mean", lam: float | None = None, beta: float | None = None,
                           normalize: bool = False, batch_size: int = 64, device=None,
                           name: str | None = None) -> EnsembleRewardFunc:
    """Load a saved reward model (or ``gold:<spec>``) and wrap it for TRL's ``reward_funcs``.

    Args:
        path: folder written by ``robust-rlhf rm train`` (or ``gold:vader``).
        aggregator, lam, beta, normalize: the `AggregatorConfig` (e.g. ``"brme_tradeoff", lam=0.5``).
        batch_size: reward-model scoring batch size.
        device: where the reward model runs (default: CPU / as saved).
        name: the ``__name__`` TRL logs (default ``rm_<aggregator>``).
    """
    cfg = AggregatorConfig(name=aggregator, lam=lam, beta=beta, normalize=normalize)
    source = load_reward_source(path, batch_size=batch_size, device=device)
    return EnsembleRewardFunc(source, cfg, name=name or f"rm_{aggregator}")
