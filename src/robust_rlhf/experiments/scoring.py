"""Seed 000's claim that over-scoring hurts more than under-scoring, in closed form (numpy).

A KL-regularised policy pi ∝ pi0 exp(r / beta) is fitted to a reward with +delta vs -delta on a
random subset of actions; its loss of true return is measured against the policy fitted to the
true reward. Pure numpy, no file output.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from robust_rlhf.errors import UserError
from robust_rlhf.experiments.kl_policies import gibbs_policy
from robust_rlhf.experiments.theory_common import _check_trials, check_epsilon

def scoring_losses(
    r_star: np.ndarray, mask: np.ndarray, delta: float, pi0: np.ndarray, beta: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """True-return loss of pi ∝ pi0 exp((r* ± delta 1_mask) / beta) against pi ∝ pi0 exp(r*/beta).

    Seed 000 argues that over-scoring (+delta) hurts more than under-scoring (-delta).

    Args:
        r_star: (T, K) true rewards; mask: (T, K) bool, the perturbed actions;
        delta: perturbation size > 0; pi0: (K,); beta: scalar or (B,) grid of temperatures.
    Returns:
        (loss_over, loss_under), each (T,) for scalar beta or (B, T) for a grid;
        loss = (pi_true - pi_perturbed)^T r*. It can be < 0: a perturbed policy may earn more
        true return by straying further from pi0 (pi_true is optimal for return - beta KL,
        not for return alone).
    """
    beta_arr = np.asarray(beta, dtype=np.float64)
    b = beta_arr.reshape(-1, 1)  # (B, 1) broadcast against trials
    bump = delta * mask  # (T, K)
    pi_true = gibbs_policy(r_star[None], pi0, b)  # (B, T, K)
    pi_over = gibbs_policy((r_star + bump)[None], pi0, b)
    pi_under = gibbs_policy((r_star - bump)[None], pi0, b)
    ret_true = np.einsum("btk,tk->bt", pi_true, r_star)  # (B, T)
    loss_over = ret_true - np.einsum("btk,tk->bt", pi_over, r_star)
    loss_under = ret_true - np.einsum("btk,tk->bt", pi_under, r_star)
    if beta_arr.ndim == 0:
        return loss_over[0], loss_under[0]
    return loss_over, loss_under


def random_subset_mask(rng: np.random.Generator, trials: int, k: int, m: int) -> np.ndarray:
    """(T, K) bool with exactly m True per row, uniformly at random."""
    ranks = np.argsort(rng.random((trials, k)), axis=1)  # (T, K) a random permutation per row
    mask = np.zeros((trials, k), dtype=bool)
    np.put_along_axis(mask, ranks[:, :m], True, axis=1)
    return mask


@dataclass
class ScoringConfig:
    """Over- vs under-scoring of a KL-regularised policy (seed 000)."""

    actions: int = 100
    """K, number of responses."""
    fraction: float = 0.1
    """Fraction of actions whose reward is perturbed (a fresh random subset per trial)."""
    delta: float = 1.0
    """Perturbation size, in units of the true-reward std (r*_a ~ N(0, 1))."""
    beta: float = 0.1
    """KL coefficient of pi ∝ pi0 exp(r / beta) for the headline numbers."""
    trials: int = 2_000
    """Trials; each draws a fresh r* ~ N(0, I_K) and a fresh subset."""
    seed: int = 0
    """Seeds r*, the subsets and nothing else."""
    beta_min: float = 0.01
    """Smallest beta of the sweep panel (strongest optimisation)."""
    beta_max: float = 10.0
    """Largest beta of the sweep panel (closest to pi0)."""
    sweep_points: int = 25
    """Points in the beta sweep (log-spaced) and in the fraction sweep."""


def run_scoring(cfg: ScoringConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Paired over- vs under-scoring experiment (seed 000's claim), plus sweeps over beta and
    over the perturbed fraction. pi0 is uniform; the same r* and subset serve both signs."""
    t0 = time.perf_counter()
    trials = _check_trials(cfg.trials)
    k = int(cfg.actions)
    if k < 2:
        raise UserError(f"--actions must be >= 2, got {k}")
    if not (0 < cfg.fraction <= 1):
        raise UserError(f"--fraction must be in (0, 1], got {cfg.fraction:g}")
    m = int(round(cfg.fraction * k))
    if m < 1:
        raise UserError(f"--fraction {cfg.fraction:g} of {k} actions perturbs no action; raise it to >= {1 / k:.3g}")
    check_epsilon(cfg.delta, "--delta")
    check_epsilon(cfg.beta, "--beta")
    check_epsilon(cfg.beta_min, "--beta-min")
    if cfg.beta_max <= cfg.beta_min:
        raise UserError(f"--beta-max ({cfg.beta_max:g}) must exceed --beta-min ({cfg.beta_min:g})")
    if cfg.sweep_points < 2:
        raise UserError(f"--sweep-points must be >= 2, got {cfg.sweep_points}")

    rng = np.random.default_rng(cfg.seed)
    pi0 = np.full(k, 1.0 / k)
    r_star = rng.standard_normal((trials, k))  # (T, K)
    mask = random_subset_mask(rng, trials, k, m)  # (T, K)
    loss_over, loss_under = scoring_losses(r_star, mask, cfg.delta, pi0, cfg.beta)  # (T,)
    diff = loss_over - loss_under
    diff_se = float(diff.std(ddof=1) / math.sqrt(trials))
    if diff.mean() > 4 * diff_se:
        verdict = "over-scoring is worse (difference > 4 standard errors)"
    elif diff.mean() < -4 * diff_se:
        verdict = "under-scoring is worse (difference > 4 standard errors)"
    else:
        verdict = "no significant difference (within 4 standard errors)"
    ret_true = float(np.einsum("tk,tk->t", gibbs_policy(r_star, pi0, cfg.beta), r_star).mean())

    betas = np.geomspace(cfg.beta_min, cfg.beta_max, cfg.sweep_points)
    sweep_over, sweep_under = scoring_losses(r_star, mask, cfg.delta, pi0, betas)  # (B, T)

    fractions = np.linspace(1.0 / k, 1.0, cfg.sweep_points)
    frac_over, frac_under = [], []
    for f in fractions:
        f_mask = random_subset_mask(rng, trials, k, max(1, int(round(f * k))))
        lo, lu = scoring_losses(r_star, f_mask, cfg.delta, pi0, cfg.beta)
        frac_over.append(float(lo.mean()))
        frac_under.append(float(lu.mean()))

    runtime = time.perf_counter() - t0
    results: dict[str, Any] = {
        "simulation": "scoring",
        "reference": "seed 000: 'over-scoring is significantly more harmful than under-scoring'",
        "trials": trials,
        "n_actions": k,
        "n_perturbed": m,
        "fraction": cfg.fraction,
        "delta": cfg.delta,
        "beta": cfg.beta,
        "r_star": "fresh i.i.d. N(0, 1) per trial",
        "pi0": "uniform (1/K)",
        "return_true_policy_mean": ret_true,
        "loss_mean_over": float(loss_over.mean()),
        "loss_std_over": float(loss_over.std(ddof=1)),
        "loss_mean_under": float(loss_under.mean()),
        "loss_std_under": float(loss_under.std(ddof=1)),
        "loss_diff_mean": float(diff.mean()),
        "loss_diff_stderr": diff_se,
        "p_over_worse": float((diff > 0).mean()),
        "verdict": verdict,
        "sweep_beta": {
            "beta": betas.tolist(),
            "loss_mean_over": sweep_over.mean(axis=1).tolist(),
            "loss_mean_under": sweep_under.mean(axis=1).tolist(),
        },
        "sweep_fraction": {
            "fraction": fractions.tolist(),
            "loss_mean_over": frac_over,
            "loss_mean_under": frac_under,
        },
        "runtime_s": runtime,
        "config": asdict(cfg),
    }
    return results, {"loss_over": loss_over, "loss_under": loss_under}
