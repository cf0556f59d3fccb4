"""`RewardOutput`: what every reward model returns and everything downstream consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RewardOutput:
    """Rewards of K heads for B (prompt, response) samples.

    Attributes:
        per_head: (B, K) reward of each head. For Gaussian (BRME) heads, the mean mu_k.
        per_head_std: (B, K) std s_k of each Gaussian head, or None for point-estimate heads.
    """

    per_head: torch.Tensor
    per_head_std: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.per_head.dim() != 2:
            raise ValueError(f"per_head must be (B, K), got shape {tuple(self.per_head.shape)}")
        if self.per_head_std is not None and self.per_head_std.shape != self.per_head.shape:
            raise ValueError(
                f"per_head_std shape {tuple(self.per_head_std.shape)} != per_head shape {tuple(self.per_head.shape)}"
            )

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
        if self.num_heads < 2:
            return torch.zeros_like(self.per_head[:, 0])
        return self.per_head.var(dim=1, unbiased=True)

    @property
    def std(self) -> torch.Tensor:
        """(B,) sqrt of `var`."""
        return self.var.sqrt()

    def __len__(self) -> int:
        return self.per_head.shape[0]

    def to(self, device: torch.device | str) -> "RewardOutput":
        std = self.per_head_std.to(device) if self.per_head_std is not None else None
        return RewardOutput(self.per_head.to(device), std)

    @staticmethod
    def cat(outputs: list["RewardOutput"]) -> "RewardOutput":
        per_head = torch.cat([o.per_head for o in outputs])
        if all(o.per_head_std is not None for o in outputs):
            std = torch.cat([o.per_head_std for o in outputs])  # type: ignore[misc]
        else:
            std = None
        return RewardOutput(per_head, std)
