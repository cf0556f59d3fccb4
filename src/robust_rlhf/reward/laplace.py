"""Bayesian last layer (cheap recipe, `laplace.enabled: true`, preset `rm_deep_laplace_minilm`):
a Laplace approximation of the posterior of the stage-1 BT head on the frozen stage-1 features,
served as K linear heads drawn from it -- one backbone pass, K x H extra multiply-adds.

For pairs with pooled features (f_c, f_r), differences d_i = f_c,i - f_r,i (N, H) and the
stage-1 head w (the MAP; its bias cancels in every BT difference), the BT log-likelihood's
Hessian plus a N(0, I/lambda) prior gives the posterior precision

    G = sum_i p_i (1 - p_i) d_i d_i^T + lambda I,    p_i = sigma(w . d_i)          (H, H)

and the heads are antithetic draws w +/- L eps_j (L L^T = G^-1, eps_j ~ N(0, I)), j = 1..K/2
(K odd: the MAP head last), so the heads' mean is exactly the MAP head and a text's spread
estimates sqrt(f^T G^-1 f): large where the features point along directions the training
differences did not pin down. Every head keeps the stage-1 bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LaplaceConfig:
    enabled: bool = False
    """Replace stage 2's trained heads by K heads drawn from the Laplace posterior of the stage-1 head
    (model.head_type=ensemble, stage 1 on)."""
    prior_precision: float = 1.0
    """lambda of the N(0, I/lambda) prior on the head's weights (larger: smaller spread, less shaped by the data)."""


def bt_laplace_precision(diffs: torch.Tensor, weight: torch.Tensor, prior_precision: float) -> torch.Tensor:
    """diffs (N, H) feature differences chosen - rejected, weight (H,) the MAP head ->
    (H, H) posterior precision sum_i p_i (1 - p_i) d_i d_i^T + lambda I, p_i = sigmoid(weight . d_i) (float64)."""
    d = diffs.double()
    p = torch.sigmoid(d @ weight.double())  # (N,)
    return (d * (p * (1 - p))[:, None]).T @ d + prior_precision * torch.eye(d.shape[1], dtype=torch.float64)


def laplace_head_weights(precision: torch.Tensor, weight: torch.Tensor, num_heads: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """precision (H, H), weight (H,) -> (K, H) heads: antithetic pairs weight +/- L eps (L L^T =
    precision^-1), the MAP head itself last when K is odd; their mean is `weight` exactly."""
    H = weight.shape[0]
    cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    L = torch.linalg.cholesky((cov + cov.T) / 2)  # (H, H)
    eps = torch.randn(num_heads // 2, H, generator=generator, dtype=torch.float64)
    delta = eps @ L.T  # (K/2, H), rows ~ N(0, cov)
    w = weight.double()
    rows = [w + delta, w - delta] + ([w[None]] if num_heads % 2 else [])
    return torch.cat(rows).float()


def laplace_heads(model, train_feats: torch.Tensor, stage1_head: torch.nn.Module, cfg) -> dict:
    """Set `model.heads` (K linear heads) to draws from the Laplace posterior of `stage1_head` on the
    cached (N, 2, H) training features; returns the stage-2 summary."""
    K = model.heads.num_heads
    w = stage1_head.weight.detach().reshape(-1).cpu()
    G = bt_laplace_precision(train_feats[:, 0] - train_feats[:, 1], w, cfg.laplace.prior_precision)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    heads = laplace_head_weights(G, w, K, gen)
    with torch.no_grad():
        model.heads.linear.weight.copy_(heads.to(model.heads.linear.weight))
        model.heads.linear.bias.fill_(float(stage1_head.bias.detach().reshape(-1)[0]))
    eig = torch.linalg.eigvalsh(G)
    return {"method": "laplace", "prior_precision": cfg.laplace.prior_precision, "num_heads": K,
            "precision_eigenvalue_min": float(eig.min()), "precision_eigenvalue_max": float(eig.max())}
