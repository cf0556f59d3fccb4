"""KL-regularised policies over K discrete actions, and seed 002 Theorem 3.6 done right (numpy).

* `gibbs_policy`: the KL-regularised optimum pi ∝ pi0 exp(score / beta); `solve_beta_for_kl`
  finds the beta that puts it at a given KL(pi || pi0).
* Theorem 3.6 (seed 002): maximise the variance-weighted objective
  ``J(pi) = sum_y pi(y) R^(y) - beta sum_y pi(y) sigma^2(y) ln(pi(y)/pi0(y))`` over the simplex.
  The paper states ``pi ∝ pi0 exp(R^ / (beta sigma^2))`` (`paper_variance_aware_policy`). That
  is the maximiser only when sigma^2 is constant: stationarity of the Lagrangian gives
  ``R^(y) - beta sigma^2(y) (ln(pi(y)/pi0(y)) + 1) = mu``, i.e.
  ``pi(y) = pi0(y) exp((R^(y) - mu) / (beta sigma^2(y)) - 1)`` with the multiplier mu fixed
  by ``sum_y pi(y) = 1``; mu cannot be pulled out as a normaliser when sigma^2(y) varies.
  `exact_variance_aware_policy` solves that 1-D equation for mu (monotone, convex in mu).
* `run_softmax`: the Monte Carlo of `robust-rlhf simulate softmax` (docs/theory.md §2).

Reference: METHODS.md §3 and §6; seed 002 = "variance-aware policy optimisation".
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from robust_rlhf.errors import UserError
from robust_rlhf.experiments.theory_common import _build_problem, _check_trials, _histogram, _streams, check_epsilon

def gibbs_policy(scores: np.ndarray, pi0: np.ndarray, beta: np.ndarray | float) -> np.ndarray:
    """KL-regularised optimum pi ∝ pi0 exp(scores / beta) (seed 002 Thm 3.6; seed 000 §PPO).

    Args:
        scores: (..., K) per-action scores (R^, or R^ / sigma^2 for the variance-aware policy).
        pi0: (K,) reference policy (zeros allowed: those actions stay at 0).
        beta: scalar or (...,) temperature(s), > 0.
    Returns:
        (..., K) probabilities, computed with a max-shift (no overflow).
    """
    beta = np.asarray(beta, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logits = np.log(pi0) + scores / beta[..., None]  # (..., K)
    logits = logits - logits.max(axis=-1, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=-1, keepdims=True)


def kl_to_reference(pi: np.ndarray, pi0: np.ndarray) -> np.ndarray:
    """KL(pi || pi0) = sum_a pi_a log(pi_a / pi0_a), with 0 log 0 = 0.  (..., K) -> (...,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pi > 0, pi * (np.log(pi) - np.log(pi0)), 0.0)
    return terms.sum(axis=-1)


def solve_beta_for_kl(
    scores: np.ndarray, pi0: np.ndarray, target_kl: float, iters: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row beta with KL(pi0 exp(scores/beta) || pi0) = target_kl, by bisection on log beta.

    KL falls monotonically from -log pi0(argmax) (beta -> 0) to 0 (beta -> inf), so any
    target below -log max(pi0) has a unique solution for every row (ties aside).

    Args:
        scores: (T, K); pi0: (K,); target_kl: nats, > 0.
    Returns:
        (beta (T,), achieved KL (T,)).
    """
    scores = np.asarray(scores, dtype=np.float64)
    spread = scores.max(axis=-1) - scores.min(axis=-1)  # (T,)
    if np.any(spread <= 0):
        i = int(np.flatnonzero(spread <= 0)[0])
        raise UserError(f"all scores equal in trial {i}: every beta gives KL 0, cannot reach KL {target_kl:g}")
    lo = np.log(spread) - 30.0  # beta tiny: pi ~ argmax, KL ~ -log pi0(argmax)
    hi = np.log(spread) + 30.0  # beta huge: pi ~ pi0, KL ~ 0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        kl = kl_to_reference(gibbs_policy(scores, pi0, np.exp(mid)), pi0)  # (T,)
        too_far = kl > target_kl  # beta too small
        lo = np.where(too_far, mid, lo)
        hi = np.where(too_far, hi, mid)
    beta = np.exp(0.5 * (lo + hi))
    return beta, kl_to_reference(gibbs_policy(scores, pi0, beta), pi0)


def variance_weighted_objective(
    pi: np.ndarray, r_hat: np.ndarray, variances: np.ndarray, pi0: np.ndarray, beta: np.ndarray | float
) -> np.ndarray:
    """Seed 002 Thm 3.6's objective ``J = sum pi R^ - beta sum pi sigma^2 ln(pi / pi0)`` (0 ln 0 = 0).

    Note the penalty ``sum pi sigma^2 ln(pi/pi0)`` is *not* a divergence when sigma^2 varies: it
    can be negative (mass moved from pi0 onto low-variance actions), so its minimiser is not pi0.

    Args:
        pi: (..., K) policies; r_hat: (..., K) or (K,) reward estimates; variances: (K,) sigma^2 > 0;
        pi0: (K,) reference; beta: scalar or (...,) coefficient(s) > 0.
    Returns:
        (...,) objective values.
    """
    beta = np.asarray(beta, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where(pi > 0, np.log(pi) - np.log(pi0), 0.0)  # (..., K)
    penalty = (pi * variances * log_ratio).sum(axis=-1)  # (...,)
    return (pi * r_hat).sum(axis=-1) - beta * penalty


def paper_variance_aware_policy(
    r_hat: np.ndarray, variances: np.ndarray, pi0: np.ndarray, beta: np.ndarray | float
) -> np.ndarray:
    """Seed 002 Theorem 3.6 *as printed*: ``pi ∝ pi0 exp(R^ / (beta sigma^2))``.

    The maximiser of `variance_weighted_objective` only when sigma^2 is constant; see
    `exact_variance_aware_policy`. Shapes as `gibbs_policy`; variances (K,) > 0.
    """
    return gibbs_policy(np.asarray(r_hat, dtype=np.float64) / variances, pi0, beta)


def exact_variance_aware_policy(
    r_hat: np.ndarray,
    variances: np.ndarray,
    pi0: np.ndarray,
    beta: np.ndarray | float,
    max_iter: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact maximiser of seed 002 Thm 3.6's objective over the simplex.

    ``pi(y) = pi0(y) exp((R^(y) - mu) / (beta sigma^2(y)) - 1)`` with mu the root of
    ``f(mu) = log sum_y pi0(y) exp((R^(y) - mu) / c(y) - 1) = 0``, ``c = beta sigma^2``.
    f is convex and strictly decreasing in mu; ``mu_lo = min_y (R^(y) - c(y))`` makes every
    ``pi(y) >= pi0(y)`` (f >= 0) and ``mu_hi = max_y (R^(y) - c(y))`` every ``pi(y) <= pi0(y)``
    (f <= 0), so the root is bracketed. Newton steps from the left (monotone for a convex
    decreasing f), with bisection whenever a step leaves the bracket; converges to machine
    precision in a few dozen steps. With constant sigma^2 it equals `paper_variance_aware_policy`.

    Args:
        r_hat: (..., K) reward estimates.
        variances: (K,) sigma^2, > 0.
        pi0: (K,) reference policy (zeros allowed: those actions stay at 0).
        beta: scalar or (...,) coefficient(s), > 0.
        max_iter: iteration cap (a `RuntimeError` if the bracket has not closed by then).
    Returns:
        (pi (..., K), mu (...,)).
    """
    r_hat = np.asarray(r_hat, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    if np.any(beta <= 0) or np.any(variances <= 0):
        raise UserError("exact_variance_aware_policy: beta and every variance must be > 0")
    c = beta[..., None] * variances  # (..., K)
    support = pi0 > 0  # (K,)
    with np.errstate(divide="ignore"):
        a = np.log(pi0) + r_hat / c - 1.0  # (..., K), -inf off the support
    edge = np.where(support, r_hat - c, np.nan)  # (..., K)
    lo = np.nanmin(edge, axis=-1)  # (...,)  f(lo) >= 0
    hi = np.nanmax(edge, axis=-1)  # (...,)  f(hi) <= 0

    def f_and_slope(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = a - mu[..., None] / c  # (..., K)
        zmax = z.max(axis=-1, keepdims=True)
        w = np.exp(z - zmax)  # (..., K)
        total = w.sum(axis=-1)  # (...,)
        f = np.log(total) + zmax[..., 0]
        p = w / total[..., None]  # (..., K) the normalised policy at this mu
        return f, -(p / c).sum(axis=-1), p

    mu = lo.copy()
    for _ in range(max_iter):
        f, slope, _ = f_and_slope(mu)
        lo = np.where(f >= 0, mu, lo)
        hi = np.where(f <= 0, mu, hi)
        step = mu - f / slope
        inside = (step > lo) & (step < hi)
        new = np.where(inside, step, 0.5 * (lo + hi))
        done = (np.abs(new - mu) <= 1e-14 * (1.0 + np.abs(mu))) | (hi - lo <= 1e-14 * (1.0 + np.abs(mu)))
        mu = new
        if bool(np.all(done)):
            break
    else:
        raise RuntimeError("exact_variance_aware_policy: the root of the normalisation did not converge")
    _, _, pi = f_and_slope(mu)
    return pi, mu


@dataclass
class SoftmaxConfig:
    """Discrete-action check of seed 002 Theorem 3.6 at matched KL."""

    actions: int = 100
    """K, number of responses to one prompt."""
    var_low: float = 0.1
    """Lower end of the uniform range of the per-action variances sigma^2."""
    var_high: float = 4.0
    """Upper end of that range."""
    r_star_scale: float = 1.0
    """Std s of the true rewards r*_a ~ N(0, s^2), drawn once per seed (unless --r-star)."""
    kl: float = 1.0
    """Target KL(pi || pi0) in nats that both policies are solved to (per trial)."""
    trials: int = 5_000
    """Number of estimates R^ ~ N(r*, diag sigma^2)."""
    seed: int = 0
    """Seeds r*, sigma^2 and the noise."""
    variances_file: str | None = None
    """One variance per line; replaces the --var-range draw."""
    r_star_file: str | None = None
    """One true reward per line; replaces the N(0, s^2) draw."""
    pi0_file: str | None = None
    """One reference probability per line; uniform by default."""
    dim_explicit: bool = False
    """True when the user gave --actions."""
    bins: int = 60
    """Histogram bins."""


def run_softmax(cfg: SoftmaxConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Seed 002 Theorem 3.6 by Monte Carlo: pi_va ∝ pi0 exp(R^/(beta_va sigma^2)) vs
    pi_v ∝ pi0 exp(R^/beta_v), each beta bisected *per trial* to KL(pi || pi0) = cfg.kl.

    Regret is measured against the oracle pi* ∝ pi0 exp(r*/beta*) at the same KL, the best
    any policy can do inside that KL ball, so regret >= 0 for both.

    Theorem 3.6 exact vs as printed: at each trial's beta_va, the exact maximiser of the
    variance-weighted objective (`exact_variance_aware_policy`) is compared with the paper's
    form (`paper_variance_aware_policy`, the KL-matched policy above): objective value J (on
    R^, what both maximise; exact >= paper by construction), true return pi^T r*, KL(pi || pi0).
    """
    t0 = time.perf_counter()
    trials = _check_trials(cfg.trials)
    kl = check_epsilon(cfg.kl, "--kl")
    prob = _build_problem(
        dim=cfg.actions, dim_explicit=cfg.dim_explicit, var_low=cfg.var_low, var_high=cfg.var_high,
        r_star_scale=cfg.r_star_scale, seed=cfg.seed, variances_file=cfg.variances_file,
        r_star_file=cfg.r_star_file, pi0_file=cfg.pi0_file, dim_name="--actions",
    )
    r_star, variances, pi0 = prob.r_star, prob.variances, prob.pi0
    k = r_star.size
    if k < 2:
        raise UserError("--actions must be >= 2")
    kl_max = -math.log(pi0.max())
    if kl >= kl_max:
        raise UserError(f"--kl {kl:g} is unreachable: KL(pi || pi0) < -log max(pi0) = {kl_max:.4g} nats for every policy")
    _, _, rng_noise = _streams(cfg.seed)
    r_hat = r_star + np.sqrt(variances) * rng_noise.standard_normal((trials, k))  # (T, K)

    beta_v, kl_v = solve_beta_for_kl(r_hat, pi0, kl)  # (T,)
    beta_va, kl_va = solve_beta_for_kl(r_hat / variances, pi0, kl)  # (T,)
    pi_v = gibbs_policy(r_hat, pi0, beta_v)  # (T, K)
    pi_va = gibbs_policy(r_hat / variances, pi0, beta_va)  # (T, K)
    beta_o, kl_o = solve_beta_for_kl(r_star[None, :], pi0, kl)
    oracle = float(gibbs_policy(r_star[None, :], pi0, beta_o)[0] @ r_star)

    pi_ex, _ = exact_variance_aware_policy(r_hat, variances, pi0, beta_va)  # (T, K) same beta as pi_va
    obj_paper = variance_weighted_objective(pi_va, r_hat, variances, pi0, beta_va)  # (T,)
    obj_exact = variance_weighted_objective(pi_ex, r_hat, variances, pi0, beta_va)  # (T,)
    obj_gap = obj_exact - obj_paper  # (T,) >= 0 up to rounding
    kl_ex = kl_to_reference(pi_ex, pi0)  # (T,)

    ret_v = pi_v @ r_star  # (T,)
    ret_va = pi_va @ r_star  # (T,)
    ret_ex = pi_ex @ r_star  # (T,)
    diff_ex = ret_ex - ret_va
    reg_v = oracle - ret_v
    reg_va = oracle - ret_va
    return0 = float(pi0 @ r_star)
    diff = ret_va - ret_v
    runtime = time.perf_counter() - t0
    results: dict[str, Any] = {
        "simulation": "softmax",
        "reference": "seed 002 Theorem 3.6 (pi ∝ pi0 exp(R^/(beta sigma^2))), KL matched per trial",
        "kl_matching": "per trial: beta of each policy bisected so KL(pi || pi0) = kl for that R^",
        "trials": trials,
        "n_actions": k,
        "kl_target": kl,
        "kl_max_abs_error": float(max(np.abs(kl_v - kl).max(), np.abs(kl_va - kl).max(), abs(float(kl_o[0]) - kl))),
        "r_star": prob.sources["r_star"],
        "variances": prob.sources["variances"],
        "pi0": prob.sources["pi0"],
        "return_pi0": return0,
        "return_oracle": oracle,
        "return_max": float(r_star.max()),
        "return_mean_vanilla": float(ret_v.mean()),
        "return_std_vanilla": float(ret_v.std(ddof=1)),
        "return_mean_variance_aware": float(ret_va.mean()),
        "return_std_variance_aware": float(ret_va.std(ddof=1)),
        "regret_mean_vanilla": float(reg_v.mean()),
        "regret_std_vanilla": float(reg_v.std(ddof=1)),
        "regret_mean_variance_aware": float(reg_va.mean()),
        "regret_std_variance_aware": float(reg_va.std(ddof=1)),
        "return_diff_mean": float(diff.mean()),
        "return_diff_stderr": float(diff.std(ddof=1) / math.sqrt(trials)),
        "p_variance_aware_beats_vanilla": float((diff > 0).mean()),
        "p_under_vanilla_empirical": float((ret_v <= return0).mean()),
        "p_under_variance_aware_empirical": float((ret_va <= return0).mean()),
        "beta_median_vanilla": float(np.median(beta_v)),
        "beta_median_variance_aware": float(np.median(beta_va)),
        "thm36_exact_vs_paper": {
            "note": "same beta (the paper form's KL-matched beta_va); J = E_pi[R^] - beta E_pi[sigma^2 ln(pi/pi0)]",
            "objective_mean_paper": float(obj_paper.mean()),
            "objective_mean_exact": float(obj_exact.mean()),
            "objective_gap_mean": float(obj_gap.mean()),
            "objective_gap_max": float(obj_gap.max()),
            "objective_gap_min": float(obj_gap.min()),
            "return_mean_paper": float(ret_va.mean()),
            "return_std_paper": float(ret_va.std(ddof=1)),
            "return_mean_exact": float(ret_ex.mean()),
            "return_std_exact": float(ret_ex.std(ddof=1)),
            "return_diff_exact_minus_paper_mean": float(diff_ex.mean()),
            "return_diff_exact_minus_paper_stderr": float(diff_ex.std(ddof=1) / math.sqrt(trials)),
            "kl_mean_paper": float(kl_va.mean()),
            "kl_mean_exact": float(kl_ex.mean()),
            "kl_std_exact": float(kl_ex.std(ddof=1)),
            "max_abs_prob_diff_mean": float(np.abs(pi_ex - pi_va).max(axis=-1).mean()),
        },
        "histogram": _histogram(ret_v, ret_va, cfg.bins),
        "runtime_s": runtime,
        "config": asdict(cfg),
    }
    arrays = {
        "returns_vanilla": ret_v, "returns_variance_aware": ret_va,
        "regret_vanilla": reg_v, "regret_variance_aware": reg_va,
        "returns_variance_aware_exact": ret_ex, "objective_gap": obj_gap, "kl_variance_aware_exact": kl_ex,
        "r_star": r_star, "variances": variances, "pi0": pi0,
    }
    return results, arrays


