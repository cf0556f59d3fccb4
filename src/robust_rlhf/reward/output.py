"""`RewardOutput`: what every reward model returns and everything downstream consumes.

It is the one result container of the package: a reward model's ``score`` returns it with the
head rewards only; the reward server fills in the aggregated ``reward`` (and serialises it with
`to_json`); a policy's `robust_rlhf.policy.rewards.TrainingReward` also fills in ``training``,
the reward the optimiser sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch


@dataclass(frozen=True)
class RewardOutput:
    """Rewards of K heads for B (prompt, response) samples.

    Attributes:
        per_head: (B, K) reward of each head. For Gaussian (BRME) heads, the mean mu_k.
        per_head_std: (B, K) std s_k of each Gaussian head, or None for point-estimate heads.
        reward: (B,) the aggregated reward (`robust_rlhf.aggregate`), or None before aggregation.
        training: (B,) the reward a policy optimiser sees (aggregated, perturbed, clipped,
            whitened; `robust_rlhf.policy.rewards.TrainingReward`), or None.
    """

    per_head: torch.Tensor
    per_head_std: torch.Tensor | None = None
    reward: torch.Tensor | None = None
    training: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.per_head.dim() != 2:
            raise ValueError(f"per_head must be (B, K), got shape {tuple(self.per_head.shape)}")
        if self.per_head_std is not None and self.per_head_std.shape != self.per_head.shape:
            raise ValueError(
                f"per_head_std shape {tuple(self.per_head_std.shape)} != per_head shape {tuple(self.per_head.shape)}"
            )
        for name in ("reward", "training"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (self.per_head.shape[0],):
                raise ValueError(f"{name} must be (B,) = ({self.per_head.shape[0]},), got shape {tuple(value.shape)}")

    @property
    def num_heads(self) -> int:
        return self.per_head.shape[1]

    @property
    def mean(self) -> torch.Tensor:
        """(B,) mean over heads."""
        return self.per_head.mean(dim=1)

    @property
    def var(self) -> torch.Tensor:
        """(B,) unbiased (K-1) variance over heads; zeros when K = 1."""
        if self.num_heads < 2 or len(self) == 0:
            return self.per_head.new_zeros(len(self))
        return self.per_head.var(dim=1, unbiased=True)

    @property
    def std(self) -> torch.Tensor:
        """(B,) sqrt of `var`."""
        return self.var.sqrt()

    def __len__(self) -> int:
        return self.per_head.shape[0]

    def _map(self, fn) -> "RewardOutput":
        """A plain `RewardOutput` with ``fn`` applied to every tensor that is set."""
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        return RewardOutput(fn(self.per_head), opt(self.per_head_std), opt(self.reward), opt(self.training))

    def to(self, device: torch.device | str) -> "RewardOutput":
        return self._map(lambda t: t.to(device))

    def slice(self, start: int, stop: int) -> "RewardOutput":
        """Rows ``start:stop`` (the server's dynamic batcher hands each request its slice)."""
        return self._map(lambda t: t[start:stop])

    def with_reward(self, reward: torch.Tensor) -> "RewardOutput":
        """A copy with the aggregated ``reward`` (B,) set."""
        return RewardOutput(self.per_head, self.per_head_std, reward, self.training)

    def nonfinite_rows(self) -> list[int]:
        """Indices of rows with any NaN/inf value (in any tensor that is set)."""
        ok = torch.isfinite(self.per_head).all(1)
        if self.per_head_std is not None:
            ok &= torch.isfinite(self.per_head_std).all(1)
        for t in (self.reward, self.training):
            if t is not None:
                ok &= torch.isfinite(t)
        return (~ok).nonzero().flatten().tolist()

    def to_json(self) -> dict[str, Any]:
        """The reward server's reply body: ``rewards`` (the aggregated ``reward``; the head mean
        when it is not set), ``reward_std`` (ensemble std), ``rewards_per_head`` and, for
        Gaussian heads, ``reward_std_per_head``."""
        rewards = self.reward if self.reward is not None else self.mean
        out: dict[str, Any] = {
            "rewards": rewards.tolist(),
            "reward_std": self.std.float().tolist(),
            "rewards_per_head": self.per_head.tolist(),
        }
        if self.per_head_std is not None:
            out["reward_std_per_head"] = self.per_head_std.tolist()
        return out

    @staticmethod
    def from_json(reply: Mapping[str, Any]) -> "RewardOutput":
        """The inverse of `to_json` (``reward_std`` is recomputed from the heads)."""
        per_head = torch.tensor(reply["rewards_per_head"], dtype=torch.float32).reshape(len(reply["rewards"]), -1)
        std = reply.get("reward_std_per_head")
        return RewardOutput(per_head, None if std is None else torch.tensor(std, dtype=torch.float32).reshape(per_head.shape),
                            reward=torch.tensor(reply["rewards"], dtype=torch.float32))

    @staticmethod
    def empty(num_heads: int, gaussian: bool = False) -> "RewardOutput":
        """No samples: (0, K) heads, (0,) aggregated reward."""
        z = torch.zeros(0, num_heads)
        return RewardOutput(z, z.clone() if gaussian else None, reward=torch.zeros(0))

    @staticmethod
    def cat(outputs: list["RewardOutput"]) -> "RewardOutput":
        def cat_opt(name: str) -> torch.Tensor | None:
            parts = [getattr(o, name) for o in outputs]
            return torch.cat(parts) if all(p is not None for p in parts) else None  # type: ignore[arg-type]

        per_head = torch.cat([o.per_head for o in outputs])
        return RewardOutput(per_head, cat_opt("per_head_std"), cat_opt("reward"), cat_opt("training"))
