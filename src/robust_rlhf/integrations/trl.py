"""Use a robust-rlhf reward ensemble inside TRL's online trainers (GRPOTrainer, RLOOTrainer).

    from trl import GRPOTrainer
    from robust_rlhf.integrations.trl import reward_func_from_model

    reward_fn = reward_func_from_model("runs/rm", aggregator="lcb", beta=1.0)
    trainer = GRPOTrainer(model=..., reward_funcs=[reward_fn], args=..., train_dataset=...)

TRL (read: trl 1.16 ``GRPOTrainer._calculate_rewards`` / ``RLOOTrainer``, same code) calls a
reward function as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=...,
log_extra=..., log_metric=..., **dataset_columns)`` and expects one float per completion; it
names the function by ``__name__``. Prompts and completions are strings, or -- conversational
datasets -- lists of ``{"role", "content"}`` messages (completions
``[{"role": "assistant", "content": ...}]``; content may be None after a tool call). Messages
become plain text by the rule of `robust_rlhf.integrations.chat.render_conversation`: one user
turn is scored exactly like its plain-text twin, several turns are rendered with roles (the
reward model tokenizer's chat template, else ``"role: content"`` lines), system messages and
empty/None contents are dropped. The reward model scores that text with its *own* tokenizer
(USER_NEEDS #5). Ensemble uncertainty: ``log_metric`` gets ``reward/ensemble_mean`` and
``reward/ensemble_std`` (batch means), ``log_extra`` a per-completion ``ensemble_std`` column,
and the adapter keeps the last batch's per-sample values in ``last_mean`` / ``last_std``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from robust_rlhf.aggregate import AggregatorConfig, aggregate
from robust_rlhf.errors import UserError
from robust_rlhf.integrations.chat import render_conversation
from robust_rlhf.reward.sources import RewardSource, load_reward_source

__all__ = ["EnsembleRewardFunc", "reward_func_from_model", "message_text"]


def message_text(x: Any) -> str:
    """A prompt or completion as text: strings pass through; chat messages are rendered as in
    `render_conversation` (one user turn -> its content; else ``"role: content"`` lines)."""
    if isinstance(x, str):
        return x
    if not isinstance(x, (list, tuple, dict)):
        raise UserError(f"cannot read a prompt/completion of type {type(x).__name__}; expected str or chat messages")
    return render_conversation(x)[0]


class EnsembleRewardFunc:
    """A reward source + aggregator as a TRL reward function ``(prompts, completions, **kwargs) -> list[float]``.

    Args:
        source: any ``(prompts, responses) -> RewardOutput`` (e.g. a loaded reward model).
        aggregator: how the K heads become one reward (default: mean).
        head_stats: per-head (mean, std) when ``aggregator.normalize`` is true.
        name: ``__name__`` TRL logs the reward under.
        tokenizer: the reward model's tokenizer, whose chat template (if any) renders multi-turn
            prompts; default: the source's ``model.tokenizer`` when it has one.

    Attributes:
        last_mean, last_std: (B,) ensemble mean and std over the K heads of the last call's
            completions (for trainers that cannot log them).
    """

    def __init__(self, source: RewardSource, aggregator: AggregatorConfig | None = None, head_stats=None,
                 name: str = "robust_rlhf_reward", tokenizer: Any = None) -> None:
        self.source = source
        self.tokenizer = tokenizer if tokenizer is not None else getattr(getattr(source, "model", None), "tokenizer", None)
        self.last_mean: list[float] = []
        self.last_std: list[float] = []
        self.aggregator = aggregator or AggregatorConfig()
        if self.aggregator.normalize and head_stats is None:
            head_stats = getattr(source, "head_stats", None)
        self.head_stats = head_stats if self.aggregator.normalize else None
        self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        for x in (*prompts, *completions):
            if not isinstance(x, (str, list, tuple, dict)):
                raise UserError(f"cannot read a prompt/completion of type {type(x).__name__}; "
                                f"expected str or chat messages")
        pairs = [render_conversation(p, c, self.tokenizer) for p, c in zip(prompts, completions)]
        out = self.source([p for p, _ in pairs], [c for _, c in pairs])
        rewards = aggregate(out, self.aggregator, self.head_stats).float().cpu()
        values = [float(r) for r in rewards]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{self.__name__}: non-finite reward (never silently replaced)")
        self.last_mean = [float(v) for v in out.mean.float().cpu()]
        self.last_std = [float(v) for v in out.std.float().cpu()]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric("reward/ensemble_mean", sum(self.last_mean) / len(values) if values else 0.0)
            log_metric("reward/ensemble_std", sum(self.last_std) / len(values) if values else 0.0)
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            log_extra("ensemble_std", list(self.last_std))
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
