"""Reward-model losses. Each returns `(loss, stats)` with stats detached python floats.

Shapes: `chosen`, `rejected` are (B, K) rewards of K heads for B pairs (K = 1 for a single RM).
Multi-head losses are *additive over heads* (seed 002: loss = sum_k l(theta_k)), each head
averaged over the batch.
"""

from __future__ import annotations

import math
from typing import Callable

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


def global_bsr_penalty(chosen: torch.Tensor, rejected: torch.Tensor, coef: float, world: int,
                       all_reduce: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, dict]:
    """BSR over the global batch of `world` processes (B local pairs each, W*B in all):

        value   coef * (W B) * (mean of the 2WB rewards)^2, per head, summed over heads,

    written so that DDP's gradient *averaging* over processes gives every local reward exactly
    the single-process gradient coef * mean_global: the other processes' sums enter as
    constants and the returned (backward) term is scaled by `world`. `stats["bsr_penalty"]` is
    the unscaled value. `all_reduce` sums a (K,) tensor over processes in place (default
    torch.distributed.all_reduce; injectable for tests). (B, K), (B, K) -> scalar."""
    if all_reduce is None:
        import torch.distributed as dist

        all_reduce = dist.all_reduce
    B = chosen.shape[0]
    local_sum = torch.cat([chosen, rejected]).sum(dim=0)  # (K,)
    total = local_sum.detach().clone()
    all_reduce(total)
    global_mean = (local_sum + (total - local_sum.detach())) / (2 * B * world)
    penalty = world * coef * (B * world) * (global_mean**2).sum()
    return penalty, {"bsr_penalty": penalty.item() / world, "batch_reward_mean": global_mean.detach().mean().item()}


def centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor, coef: float) -> tuple[torch.Tensor, dict]:
    """Reward centering (Eisenstein et al. 2023; TRL's `center_rewards_coefficient`), per head:
    coef * mean_i (r_c,i + r_r,i)^2, summed over heads."""
    penalty = coef * ((chosen + rejected) ** 2).mean(dim=0).sum()
    return penalty, {"center_penalty": penalty.item()}


def brme_bt_loss(chosen_mean: torch.Tensor, chosen_std: torch.Tensor, rejected_mean: torch.Tensor,
                 rejected_std: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """BRME (seed 000) preference loss with the reparameterisation trick:
    r~_k = mu_k + s_k * eps, eps ~ N(0, 1), then additive BT over heads on the samples.
    Collapses: -log sigmoid is convex, so E_eps[-log sigmoid(m + s eps)] grows with s for
    every margin m and training drives s to its floor (use `brme_marginal_loss`).
    All inputs (B, K)."""
    eps_c = torch.randn(chosen_mean.shape, generator=generator, dtype=chosen_mean.dtype).to(chosen_mean.device)
    eps_r = torch.randn(rejected_mean.shape, generator=generator, dtype=rejected_mean.dtype).to(rejected_mean.device)
    loss, stats = bradley_terry_loss(chosen_mean + chosen_std * eps_c, rejected_mean + rejected_std * eps_r)
    stats["mean_std"] = torch.cat([chosen_std, rejected_std]).detach().mean().item()
    return loss, stats


PROBIT_SCALE = math.pi / 8
"""MacKay's constant: E_{d ~ N(m, v)}[sigmoid(d)] ~= sigmoid(m / sqrt(1 + (pi/8) v))."""


def brme_marginal_loss(chosen_mean: torch.Tensor, chosen_std: torch.Tensor, rejected_mean: torch.Tensor,
                       rejected_std: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """BRME preference loss with each head's Gaussian *integrated out* (the default).

    Head k says r(x, y) ~ N(mu_k, s_k^2); the chosen-minus-rejected margin is then
    d ~ N(m, v), m = mu_c - mu_r, v = s_c^2 + s_r^2, and the BT likelihood of the label,
    marginalised over d, is E[sigmoid(d)] ~= sigmoid(m / sqrt(1 + (pi/8) v)) (the probit
    approximation, MacKay 1992: sigmoid(x) ~= Phi(x sqrt(pi/8)), and E[Phi(d/c)] = Phi(m/sqrt(c^2+v))
    exactly). The loss is

        sum_k -mean_i log sigmoid( m_k,i / sqrt(1 + (pi/8) v_k,i) ).

    With s = 0 it is plain BT. Unlike BT on reparameterised samples, whose expectation grows
    with s for every margin, here a larger v pulls a misranked pair's probability towards 1/2,
    so s grows where the heads' mean gets the data wrong (ambiguous pairs) and shrinks where it
    gets them right. All inputs (B, K) -> scalar."""
    v = chosen_std**2 + rejected_std**2
    z = (chosen_mean - rejected_mean) / torch.sqrt(1 + PROBIT_SCALE * v)
    per_head = -F.logsigmoid(z).mean(dim=0)  # (K,)
    stats = {
        "marginal_nll_mean_head": per_head.mean().item(),
        "accuracy": ((chosen_mean - rejected_mean).detach().mean(dim=1) > 0).float().mean().item(),
        "mean_std": torch.cat([chosen_std, rejected_std]).detach().mean().item(),
    }
    return per_head.sum(), stats


def gaussian_regression_loss(mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """BRME's "MSE" stage as a Gaussian regression to the stage-1 reward: the negative
    log-likelihood  sum_k mean_i [ (t_i - mu_k,i)^2 / (2 s_k,i^2) + log s_k,i ]  (constant dropped).
    With s fixed this is MSE; learning s makes it report its own error -- but on frozen features
    every head can reach a stage-1 target exactly, so s collapses to its floor (docs).
    mean, std: (N, K); target: (N,) shared by the heads, or (N, K), one column per head."""
    t = target.unsqueeze(1) if target.dim() == 1 else target
    nll = ((t - mean) ** 2 / (2 * std**2) + torch.log(std)).mean(dim=0)  # (K,)
    return nll.sum(), {"nll_mean_head": nll.mean().item(), "mse": ((t - mean) ** 2).mean().item(),
                       "mean_std": std.detach().mean().item()}
