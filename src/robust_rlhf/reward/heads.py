"""Reward heads on pooled backbone features, and pooling.

All K heads are one `nn.Linear(hidden, K)` (or `2K` for Gaussian heads): one backbone pass and
one matmul score every head. Each head is a column with its own initialisation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_NAME = "reward_config.json"
"""A reward-model folder's config file (head type, K, ...), written last: present = a complete model.
Here, below `reward.model` and `reward.deep_ensemble`, so that both import it (reward.model loads a
deep ensemble through reward.deep_ensemble, which therefore cannot import reward.model)."""
HeadType = Literal["scalar", "ensemble", "gaussian", "layer_ensemble", "deep_ensemble"]  # layer_ensemble: reward/layer_ensemble.py; deep_ensemble: reward/deep_ensemble.py
Pooling = Literal["last", "cls", "mean"]


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool token states into one vector per sequence.

    Args:
        hidden: (B, T, H) last hidden states.
        attention_mask: (B, T) 1 for real tokens; left or right padding both work.
        pooling: "last" -- the last position whose mask is 1 (decoders; found from the mask,
            never by searching for the pad id, which breaks when pad == eos: USER_NEEDS #6);
            "cls" -- position 0 of a right-padded encoder input; "mean" -- masked mean.
    Returns:
        (B, H) pooled features.
    """
    if pooling == "last":
        T = attention_mask.shape[1]
        positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown pooling {pooling!r}")


class RewardHeads(nn.Module):
    """K linear reward heads; Gaussian heads also output a std s_k = softplus(.) + min_std.

    forward(features (B, H)) -> (mean (B, K), std (B, K) or None)
    """

    def __init__(self, hidden_size: int, num_heads: int, head_type: HeadType = "ensemble", min_std: float = 1e-3):
        super().__init__()
        if num_heads < 1:
            raise ValueError("num_heads must be >= 1")
        if head_type == "scalar" and num_heads != 1:
            raise ValueError("a scalar head has num_heads = 1")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_type = head_type
        self.min_std = min_std
        out = 2 * num_heads if head_type == "gaussian" else num_heads
        self.linear = nn.Linear(hidden_size, out)

    def reset_heads(self, heads: list[int], generator: torch.Generator | None = None) -> None:
        """Give each listed head its own init: N(0, 1/sqrt(H)) weights, zero bias (seed 001's init)."""
        std = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for k in heads:
                rows = [k, self.num_heads + k] if self.head_type == "gaussian" else [k]
                for r in rows:
                    w = torch.randn(self.hidden_size, generator=generator) * std
                    self.linear.weight[r].copy_(w.to(self.linear.weight))
                    self.linear.bias[r] = 0.0

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.linear(features)  # (B, K) or (B, 2K)
        if self.head_type != "gaussian":
            return out, None
        mean, raw_std = out[:, : self.num_heads], out[:, self.num_heads :]
        return mean, F.softplus(raw_std) + self.min_std
