"""Reward-model losses. Each returns `(loss, stats)` with stats detached python floats.

Shapes: `chosen`, `rejected` are (B, K) rewards of K heads for B pairs (K = 1 for a single RM).
Multi-head losses are *additive over heads* (seed 002: loss = sum_k l(theta_k)), each head
averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L_BT = sum_k -mean_i log sigmoid(r_k(x_i, y_c,i) - r_k(x_i, y_r,i)).

    (B, K), (B, K) -> scalar. Numerically stable via logsigmoid.
    """
    margin = chosen - rejected  # (B, K)
    per_head = -F.logsigmoid(margin).mean(dim=0)  # (K,)
    loss = per_head.sum()
    stats = {
        "bt_loss_mean_head": per_head.mean().item(),
        "accuracy": (margin.detach().mean(dim=1) > 0).float().mean().item(),
        "margin": margin.detach().mean().item(),
    }
    return loss, stats


def bsr_penalty(chosen: torch.Tensor, rejected: torch.Tensor, coef: float) -> tuple[torch.Tensor, dict]:
    """Batch-wise sum-to-zero regularisation (seed 001, Hong et al. 2025), per head:

        coef * B * (mean of the 2B rewards)^2  =  coef / (4B) * (sum_i (r_c,i + r_r,i))^2

    summed over heads. Its gradient coef * mean(r) is the same for every reward in the batch,
    so per-pair offsets may cancel within a batch (unlike reward centering).
    """
    B = chosen.shape[0]
    batch_mean = torch.cat([chosen, rejected], dim=0).mean(dim=0)  # (K,)
    penalty = coef * B * (batch_mean**2).sum()
    return penalty, {"bsr_penalty": penalty.item(), "batch_reward_mean": batch_mean.detach().mean().item()}


def centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor, coef: float) -> tuple[torch.Tensor, dict]:
    """Reward centering (Eisenstein et al. 2023; TRL's `center_rewards_coefficient`), per head:
    coef * mean_i (r_c,i + r_r,i)^2, summed over heads."""
    penalty = coef * ((chosen + rejected) ** 2).mean(dim=0).sum()
    return penalty, {"center_penalty": penalty.item()}


def brme_bt_loss(chosen_mean: torch.Tensor, chosen_std: torch.Tensor, rejected_mean: torch.Tensor,
                 rejected_std: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """BRME (seed 000) preference loss with the reparameterisation trick:
    r~_k = mu_k + s_k * eps, eps ~ N(0, 1), then additive BT over heads on the samples.
    All inputs (B, K)."""
    eps_c = torch.randn(chosen_mean.shape, generator=generator, dtype=chosen_mean.dtype).to(chosen_mean.device)
    eps_r = torch.randn(rejected_mean.shape, generator=generator, dtype=rejected_mean.dtype).to(rejected_mean.device)
    loss, stats = bradley_terry_loss(chosen_mean + chosen_std * eps_c, rejected_mean + rejected_std * eps_r)
    stats["mean_std"] = torch.cat([chosen_std, rejected_std]).detach().mean().item()
    return loss, stats


def gaussian_regression_loss(mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """BRME's "MSE" stage as a Gaussian regression to the stage-1 reward: the negative
    log-likelihood  sum_k mean_i [ (t_i - mu_k,i)^2 / (2 s_k,i^2) + log s_k,i ]  (constant dropped).
    With s fixed this is MSE; learning s makes it report its own error.
    mean, std: (N, K); target: (N,)."""
    t = target.unsqueeze(1)
    nll = ((t - mean) ** 2 / (2 * std**2) + torch.log(std)).mean(dim=0)  # (K,)
    return nll.sum(), {"nll_mean_head": nll.mean().item(), "mse": ((t - mean) ** 2).mean().item(),
                       "mean_std": std.detach().mean().item()}
