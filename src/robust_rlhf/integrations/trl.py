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
``[{"role": "assistant", "content": ...}]``; content may be None beside ``tool_calls``). Both
become plain text by the one rule of `robust_rlhf.data.text.render_pair` (the server, verl and
``rm score`` use it too): one user turn is scored exactly like its plain-text twin, several turns
are ``"role: content"`` lines, system messages are dropped, a tool call is scored as
``call name(arguments)``, and a space joins prompt and response where the join needs one.
Unknown roles, lone surrogates, NUL bytes and invisible-only responses raise `UserError`.
The reward model scores that text with its *own* tokenizer
(USER_NEEDS #5). Ensemble uncertainty: ``log_metric`` gets ``reward/ensemble_mean`` and
``reward/ensemble_std`` (batch means), ``log_extra`` a per-completion ``ensemble_std`` column,
and the adapter keeps the last batch's per-sample values in ``last_mean`` / ``last_std``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from robust_rlhf.aggregate import AggregatorConfig, aggregate
from robust_rlhf.errors import UserError
from robust_rlhf.data.text import check_text, render_completion, render_pair, render_prompt
from robust_rlhf.reward.sources import RewardSource, load_reward_source

__all__ = ["EnsembleRewardFunc", "reward_func_from_model", "message_text"]


_COMPLETION_ROLES = ("assistant", "tool", "ipython", "function")


def message_text(x: Any) -> str:
    """A prompt or completion as text, by the rule of `robust_rlhf.data.text.render_pair`: strings
    pass through; a completion list (only assistant / tool messages) is its response text; other
    messages are a prompt (one user turn -> its content; else ``"role: content"`` lines)."""
    if isinstance(x, str):
        return x
    if not isinstance(x, (list, tuple, dict)):
        raise UserError(f"cannot read a prompt/completion of type {type(x).__name__}; expected str or chat messages")
    items = [x] if isinstance(x, dict) else list(x)
    if items and all(isinstance(m, dict) and m.get("role") in _COMPLETION_ROLES for m in items):
        return render_completion(items)
    return render_prompt(items)


class EnsembleRewardFunc:
    """A reward source + aggregator as a TRL reward function ``(prompts, completions, **kwargs) -> list[float]``.

    Args:
        source: any ``(prompts, responses) -> RewardOutput`` (e.g. a loaded reward model).
        aggregator: how the K heads become one reward (default: mean).
        head_stats: per-head (mean, std) when ``aggregator.normalize`` is true.
        name: ``__name__`` TRL logs the reward under.

    Attributes:
        last_mean, last_std: (B,) ensemble mean and std over the K heads of the last call's
            completions (for trainers that cannot log them).
    """

    def __init__(self, source: RewardSource, aggregator: AggregatorConfig | None = None, head_stats=None,
                 name: str = "robust_rlhf_reward") -> None:
        self.source = source
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
        pairs = [render_pair(p, c) for p, c in zip(prompts, completions)]
        for i, (p, c) in enumerate(pairs):
            check_text(p, f"{self.__name__}: prompt {i}")
            check_text(c, f"{self.__name__}: completion {i}", require_visible=bool(c))
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
