"""Theory checks in closed form and by Monte Carlo, in numpy (no model, no GPU).

Three small simulations behind `robust-rlhf simulate ...`:

* **bandit** -- the linear bandit of seed 002 §3 (Definitions 3.1/3.2, Theorem 3.3, Figures 3-5):
  the variance-unaware policy pi1 (plain L2 ball) against the variance-aware policy pi2
  (Sigma-weighted ball, eps~ = lambda_min(Sigma) * eps), their true returns over many noisy
  reward estimates R^ ~ N(r*, Sigma), and the closed-form probabilities of doing worse than pi0.
* **softmax** -- the discrete-action form of seed 002 Theorem 3.6: pi ∝ pi0 exp(R^ / (beta sigma^2))
  against pi ∝ pi0 exp(R^ / beta), each beta solved (per trial, by bisection) so that both
  policies sit at the same KL(pi || pi0).
* **scoring** -- seed 000's claim that over-scoring hurts more than under-scoring: a KL-regularised
  policy pi ∝ pi0 exp(r / beta) fitted to a reward with +delta vs -delta on a random subset of
  actions, and its loss of true return against the policy fitted to the true reward.

Policies in the bandit are plain vectors, as in the paper (no simplex constraint). Every
function is vectorised over a leading trial axis: shapes are noted as `# (T, d)`.
Reference: METHODS.md §4; seed 002 = "variance-aware policy optimisation", seed 000 = BRME.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr

from robust_rlhf.errors import UserError
from robust_rlhf.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

# --------------------------------------------------------------------------------------------
# Inputs: vector files, validation, seeded draws
# --------------------------------------------------------------------------------------------


def read_vector_file(path: str | os.PathLike, what: str) -> np.ndarray:
    """Read one finite number per line (blank lines and `#` comments skipped).

    Raises `UserError` naming the file (and line) for a missing, empty or non-numeric file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} file {p}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} file {p}: cannot read ({e})") from None
    values: list[float] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            x = float(line)
        except ValueError:
            raise UserError(f"{what} file {p} line {lineno}: {line!r} is not a number (expected one number per line)") from None
        if not math.isfinite(x):
            raise UserError(f"{what} file {p} line {lineno}: {line!r} is not finite")
        values.append(x)
    if not values:
        raise UserError(f"{what} file {p} is empty (expected one number per line)")
    return np.asarray(values, dtype=np.float64)


def check_variances(variances: np.ndarray, where: str = "variances") -> np.ndarray:
    """Variances must be finite and > 0 (Sigma is inverted in Def. 3.2 / Thm 3.3)."""
    v = np.asarray(variances, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise UserError(f"{where}: expected a non-empty vector, got shape {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v) | (v <= 0))
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{where}: variance #{i + 1} is {v[i]:g}; every variance must be > 0 "
            f"({bad.size} non-positive or non-finite value(s))"
        )
    return v


def check_pi0(pi0: np.ndarray, dim: int, where: str = "pi0") -> np.ndarray:
    """pi0 must be a probability vector of length `dim` (>= 0, sums to 1 within 1e-6)."""
    p = np.asarray(pi0, dtype=np.float64)
    if p.shape != (dim,):
        raise UserError(f"{where}: has {p.size} values but the problem has dimension {dim}")
    if np.any(p < 0):
        i = int(np.flatnonzero(p < 0)[0])
        raise UserError(f"{where}: entry #{i + 1} is {p[i]:g}; a policy must be >= 0")
    if abs(p.sum() - 1.0) > 1e-6:
        raise UserError(f"{where}: sums to {p.sum():.6g}; a policy must sum to 1")
    return p


def check_epsilon(epsilon: float, name: str = "epsilon") -> float:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise UserError(f"{name} must be > 0, got {epsilon:g}")
    return float(epsilon)


def check_var_range(low: float, high: float) -> tuple[float, float]:
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0:
        raise UserError(f"--var-range LOW HIGH: variances must be > 0, got LOW={low:g}")
    if high < low:
        raise UserError(f"--var-range LOW HIGH: HIGH ({high:g}) is below LOW ({low:g})")
    return float(low), float(high)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for r*, Sigma and the trial noise, so that the same seed gives
    the same r* whatever the variance range (the paper fixes r* across its two settings)."""
    r_ss, v_ss, n_ss = np.random.SeedSequence(seed).spawn(3)
    return np.random.default_rng(r_ss), np.random.default_rng(v_ss), np.random.default_rng(n_ss)


def _vector_source(
    file: str | None, what: str, dim: int | None, dim_from: str | None
) -> tuple[np.ndarray | None, int | None, str | None]:
    """Load an optional vector file; return (vector, dim, which option fixed dim)."""
    if file is None:
        return None, dim, dim_from
    vec = read_vector_file(file, what)
    if dim is not None and vec.size != dim:
        raise UserError(f"{what} file {file} has {vec.size} values but {dim_from} gives dimension {dim}")
    return vec, vec.size, f"{what} file {file}"


@dataclass
class _Problem:
    """A fixed (r*, Sigma, pi0) and a description of where each came from."""

    r_star: np.ndarray  # (d,)
    variances: np.ndarray  # (d,)
    pi0: np.ndarray  # (d,)
    sources: dict[str, str]


def _build_problem(
    *,
    dim: int,
    dim_explicit: bool,
    var_low: float,
    var_high: float,
    r_star_scale: float,
    seed: int,
    variances_file: str | None,
    r_star_file: str | None,
    pi0_file: str | None,
    dim_name: str = "--dim",
) -> _Problem:
    """Resolve r*, Sigma, pi0 from files or seeded draws; files fix d unless --dim was given."""
    d: int | None = dim if dim_explicit else None
    d_from: str | None = dim_name if dim_explicit else None
    variances, d, d_from = _vector_source(variances_file, "--variances", d, d_from)
    r_star, d, d_from = _vector_source(r_star_file, "--r-star", d, d_from)
    pi0, d, d_from = _vector_source(pi0_file, "--pi0", d, d_from)
    if d is None:
        d = dim
    if d < 1:
        raise UserError(f"{dim_name} must be >= 1, got {d}")
    rng_r, rng_v, _ = _streams(seed)
    sources: dict[str, str] = {}
    if variances is None:
        low, high = check_var_range(var_low, var_high)
        variances = rng_v.uniform(low, high, size=d)  # (d,)
        sources["variances"] = f"uniform({low:g}, {high:g}), seed {seed}"
    else:
        sources["variances"] = f"file {variances_file}"
    variances = check_variances(variances, "--variances" if variances_file else "variances")
    if r_star is None:
        if not (math.isfinite(r_star_scale) and r_star_scale > 0):
            raise UserError(f"--r-star-scale must be > 0, got {r_star_scale:g}")
        r_star = rng_r.normal(0.0, r_star_scale, size=d)  # (d,)
        sources["r_star"] = f"i.i.d. N(0, {r_star_scale:g}^2), seed {seed}"
    else:
        sources["r_star"] = f"file {r_star_file}"
    if not np.any(r_star != 0):
        raise UserError(
            "r* is all zeros: every policy then has the same true return and the underperformance "
            "probabilities are undefined; give a non-zero --r-star"
        )
    if pi0 is None:
        pi0 = np.full(d, 1.0 / d)
        sources["pi0"] = "uniform"
    else:
        sources["pi0"] = f"file {pi0_file}"
    pi0 = check_pi0(pi0, d, "--pi0" if pi0_file else "pi0")
    return _Problem(r_star=r_star, variances=variances, pi0=pi0, sources=sources)


# --------------------------------------------------------------------------------------------
# Bandit: closed forms (seed 002 §3)
# --------------------------------------------------------------------------------------------


def _check_nonzero_rows(x: np.ndarray, norm_sq: np.ndarray, what: str) -> None:
    zero = np.flatnonzero(np.atleast_1d(norm_sq) <= 0)
    if zero.size:
        raise UserError(
            f"{what} is all zeros (trial {int(zero[0])}): the optimal direction is undefined "
            "(every policy in the constraint set earns the same estimated reward)"
        )


def vanilla_policy(r_hat: np.ndarray, pi0: np.ndarray, epsilon: float) -> np.ndarray:
    """Variance-unaware policy, seed 002 Definition 3.1 (METHODS §4).

    pi1 = argmax_pi pi^T R^  s.t. ||pi - pi0||_2^2 <= eps   =>   pi1 = pi0 + sqrt(eps / R^T R^) R^.

    Args:
        r_hat: (..., d) reward estimates (any leading batch shape, e.g. (T, d)).
        pi0: (d,) reference policy.
        epsilon: radius^2 of the L2 ball, > 0.
    Returns:
        (..., d) policies; ||pi1 - pi0||^2 = eps exactly (the constraint is active).
    """
    epsilon = check_epsilon(epsilon)
    r_hat = np.asarray(r_hat, dtype=np.float64)
    norm_sq = np.einsum("...d,...d->...", r_hat, r_hat)  # (...,)
    _check_nonzero_rows(r_hat, norm_sq, "R^")
    scale = np.sqrt(epsilon / norm_sq)[..., None]  # (..., 1)
    return pi0 + scale * r_hat


def variance_aware_policy(
    r_hat: np.ndarray, pi0: np.ndarray, variances: np.ndarray, epsilon: float
) -> np.ndarray:
    """Variance-aware policy, seed 002 Definition 3.2 with eps~ = lambda_min(Sigma) eps.

    pi2 = argmax_pi pi^T R^  s.t. (pi - pi0)^T Sigma (pi - pi0) <= eps~
        =>  pi2 = pi0 + sqrt(eps~ / R^T Sigma^-1 R^) Sigma^-1 R^,   Sigma = diag(variances).

    Args:
        r_hat: (..., d) reward estimates.
        pi0: (d,) reference policy.
        variances: (d,) diagonal of Sigma, all > 0.
        epsilon: the *unweighted* budget eps; eps~ = min(variances) * eps is derived here so
            that the Sigma-ellipsoid's largest axis equals the radius of pi1's ball.
    Returns:
        (..., d) policies; (pi2 - pi0)^T Sigma (pi2 - pi0) = eps~ exactly.
    """
    epsilon = check_epsilon(epsilon)
    variances = check_variances(variances)
    r_hat = np.asarray(r_hat, dtype=np.float64)
    eps_tilde = variances.min() * epsilon
    w = r_hat / variances  # (..., d)  Sigma^-1 R^
    quad = np.einsum("...d,...d->...", r_hat, w)  # (...,)  R^T Sigma^-1 R^
    _check_nonzero_rows(r_hat, quad, "R^")
    scale = np.sqrt(eps_tilde / quad)[..., None]  # (..., 1)
    return pi0 + scale * w


def underperform_probabilities(r_star: np.ndarray, variances: np.ndarray) -> tuple[float, float]:
    """Closed forms behind seed 002 Theorem 3.3 for R^ ~ N(r*, Sigma), Sigma diagonal.

    (pi1 - pi0)^T r* = c1 R^T r*        with R^T r*        ~ N(||r*||^2,        r*^T Sigma r*)
    (pi2 - pi0)^T r* = c2 R^T Sigma^-1 r*  with R^T Sigma^-1 r* ~ N(r*^T Sigma^-1 r*, r*^T Sigma^-1 r*)
    (c1, c2 > 0), hence

        P(pi1^T r* <= pi0^T r*) = Phi(-||r*||^2 / sqrt(r*^T Sigma r*))
        P(pi2^T r* <= pi0^T r*) = Phi(-sqrt(r*^T Sigma^-1 r*))      (<= the first, by Cauchy-Schwarz).

    Neither depends on eps or pi0. Returns (p_vanilla, p_variance_aware).
    """
    r = np.asarray(r_star, dtype=np.float64)
    v = check_variances(variances)
    if r.shape != v.shape:
        raise UserError(f"r* has {r.size} values but Sigma has {v.size}")
    if not np.any(r != 0):
        raise UserError("r* is all zeros: the underperformance probabilities are undefined")
    p_vanilla = float(ndtr(-(r @ r) / math.sqrt(float(r @ (v * r)))))
    p_aware = float(ndtr(-math.sqrt(float(r @ (r / v)))))
    return p_vanilla, p_aware


# --------------------------------------------------------------------------------------------
# Bandit: config, Monte Carlo, outputs
# --------------------------------------------------------------------------------------------


@dataclass
class BanditConfig:
    """Linear-bandit simulation of seed 002 §3 (Figures 3-5)."""

    dim: int = 1000
    """d, number of (prompt, response) pairs; ignored when a vector file fixes it."""
    var_low: float = 3.0
    """Lower end of the uniform range the diagonal variances of Sigma are drawn from."""
    var_high: float = 100.0
    """Upper end of that range."""
    epsilon: float = 1.0
    """L2 budget eps of pi1 (Def. 3.1); pi2 gets eps~ = lambda_min(Sigma) eps (Def. 3.2)."""
    r_star_scale: float = 0.13
    """Std s of the true reward r*_i ~ N(0, s^2), drawn once per seed (unless --r-star)."""
    trials: int = 10_000
    """Number of reward estimates R^ ~ N(r*, Sigma) drawn."""
    seed: int = 0
    """Seeds r*, Sigma and the trial noise (independent streams)."""
    variances_file: str | None = None
    """One variance per line; replaces the --var-range draw."""
    r_star_file: str | None = None
    """One true reward per line; replaces the N(0, s^2) draw."""
    pi0_file: str | None = None
    """One reference probability per line; uniform 1/d by default."""
    preset: str | None = None
    """Name of the preset these values came from, if any (for the record only)."""
    dim_explicit: bool = False
    """True when the user gave --dim (then a vector file of another length is an error)."""
    bins: int = 60
    """Histogram bins in results.json and the PNG."""


#: The paper's two settings (seed 002 Figs. 3-5): d = 1000, variances in (3, 100) / (70, 100).
#: r*, pi0 and eps are not given in the paper; ours: r*_i ~ N(0, 0.13^2) (seed 0), pi0
#: uniform, eps = 1 -- a low signal-to-noise regime (||r*||^2 / sqrt(r*^T Sigma r*) ~ 0.5) in
#: which the std ratio pi2/pi1 lands near the paper's (0.04/0.13 and 0.12/0.14).
BANDIT_PRESETS: dict[str, dict[str, Any]] = {
    "high-variability": dict(dim=1000, var_low=3.0, var_high=100.0, epsilon=1.0, r_star_scale=0.13, trials=10_000, seed=0),
    "low-variability": dict(dim=1000, var_low=70.0, var_high=100.0, epsilon=1.0, r_star_scale=0.13, trials=10_000, seed=0),
}


def _check_trials(trials: int) -> int:
    if trials < 2:
        raise UserError(f"--trials must be >= 2 (a std needs two draws), got {trials}")
    return int(trials)


def _histogram(a: np.ndarray, b: np.ndarray, bins: int) -> dict[str, list[float]]:
    lo = float(min(a.min(), b.min()))
    hi = float(max(a.max(), b.max()))
    if hi <= lo:
        hi = lo + 1e-12
    edges = np.linspace(lo, hi, bins + 1)
    return {
        "bin_edges": edges.tolist(),
        "counts_vanilla": np.histogram(a, edges)[0].tolist(),
        "counts_variance_aware": np.histogram(b, edges)[0].tolist(),
    }


def _p_stats(hits: np.ndarray, theory: float) -> tuple[float, float, float | None]:
    """(empirical p, binomial standard error at the theory p, z-score)."""
    n = hits.size
    p = float(hits.mean())
    se = math.sqrt(max(theory * (1 - theory), 0.0) / n)
    z = (p - theory) / se if se > 0 else None
    return p, se, z


def run_bandit(cfg: BanditConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Monte Carlo of seed 002 §3: draw `trials` R^ ~ N(r*, Sigma), form pi1 (Def. 3.1) and
    pi2 (Def. 3.2), and compare their true returns pi^T r* with the Theorem 3.3 closed forms.

    Returns (results dict for results.json, arrays: returns_vanilla, returns_variance_aware,
    r_star, variances, pi0).
    """
    t0 = time.perf_counter()
    trials = _check_trials(cfg.trials)
    epsilon = check_epsilon(cfg.epsilon, "--epsilon")
    prob = _build_problem(
        dim=cfg.dim, dim_explicit=cfg.dim_explicit, var_low=cfg.var_low, var_high=cfg.var_high,
        r_star_scale=cfg.r_star_scale, seed=cfg.seed, variances_file=cfg.variances_file,
        r_star_file=cfg.r_star_file, pi0_file=cfg.pi0_file,
    )
    r_star, variances, pi0 = prob.r_star, prob.variances, prob.pi0
    d = r_star.size
    _, _, rng_noise = _streams(cfg.seed)
    std = np.sqrt(variances)  # (d,)
    return0 = float(pi0 @ r_star)

    # Chunk the trials so memory stays ~ 32 MB per array whatever d is.
    chunk = max(1, 4_000_000 // d)
    gain1 = np.empty(trials)  # (T,)  (pi1 - pi0)^T r*
    gain2 = np.empty(trials)  # (T,)  (pi2 - pi0)^T r*
    for start in range(0, trials, chunk):
        n = min(chunk, trials - start)
        b_r_hat = r_star + std * rng_noise.standard_normal((n, d))  # (n, d)
        b_pi1 = vanilla_policy(b_r_hat, pi0, epsilon)  # (n, d)
        b_pi2 = variance_aware_policy(b_r_hat, pi0, variances, epsilon)  # (n, d)
        gain1[start:start + n] = (b_pi1 - pi0) @ r_star
        gain2[start:start + n] = (b_pi2 - pi0) @ r_star
    ret1 = return0 + gain1
    ret2 = return0 + gain2

    p1_theory, p2_theory = underperform_probabilities(r_star, variances)
    p1, se1, z1 = _p_stats(gain1 <= 0, p1_theory)
    p2, se2, z2 = _p_stats(gain2 <= 0, p2_theory)
    notes: list[str] = []
    if max(p1_theory, p2_theory) * trials < 5:
        notes.append(
            "both theory probabilities are below ~5/trials: the empirical check is uninformative "
            "here (expected 0 hits); lower --r-star-scale or raise the variances for a real test"
        )
    runtime = time.perf_counter() - t0
    results: dict[str, Any] = {
        "simulation": "bandit",
        "reference": "seed 002 §3: Definitions 3.1-3.2, Theorem 3.3, Figures 3-5",
        "preset": cfg.preset,
        "trials": trials,
        "dim": d,
        "epsilon": epsilon,
        "epsilon_tilde": float(variances.min() * epsilon),
        "lambda_min": float(variances.min()),
        "lambda_max": float(variances.max()),
        "r_star": prob.sources["r_star"],
        "variances": prob.sources["variances"],
        "pi0": prob.sources["pi0"],
        "r_star_norm_sq": float(r_star @ r_star),
        "snr_vanilla": float((r_star @ r_star) / math.sqrt(float(r_star @ (variances * r_star)))),
        "snr_variance_aware": float(math.sqrt(float(r_star @ (r_star / variances)))),
        "return_pi0": return0,
        "return_mean_vanilla": float(ret1.mean()),
        "return_std_vanilla": float(ret1.std(ddof=1)),
        "return_mean_variance_aware": float(ret2.mean()),
        "return_std_variance_aware": float(ret2.std(ddof=1)),
        "p_under_vanilla_empirical": p1,
        "p_under_vanilla_theory": p1_theory,
        "p_under_vanilla_stderr": se1,
        "p_under_vanilla_z": z1,
        "p_under_variance_aware_empirical": p2,
        "p_under_variance_aware_theory": p2_theory,
        "p_under_variance_aware_stderr": se2,
        "p_under_variance_aware_z": z2,
        "p_variance_aware_beats_vanilla": float((ret2 > ret1).mean()),
        "histogram": _histogram(ret1, ret2, cfg.bins),
        "notes": notes,
        "runtime_s": runtime,
        "config": asdict(cfg),
    }
    arrays = {
        "returns_vanilla": ret1, "returns_variance_aware": ret2,
        "r_star": r_star, "variances": variances, "pi0": pi0,
    }
    return results, arrays


# --------------------------------------------------------------------------------------------
# Softmax (seed 002 Theorem 3.6) with KL matching
# --------------------------------------------------------------------------------------------


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

    ret_v = pi_v @ r_star  # (T,)
    ret_va = pi_va @ r_star  # (T,)
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
        "histogram": _histogram(ret_v, ret_va, cfg.bins),
        "runtime_s": runtime,
        "config": asdict(cfg),
    }
    arrays = {
        "returns_vanilla": ret_v, "returns_variance_aware": ret_va,
        "regret_vanilla": reg_v, "regret_variance_aware": reg_va,
        "r_star": r_star, "variances": variances, "pi0": pi0,
    }
    return results, arrays


# --------------------------------------------------------------------------------------------
# Over- vs under-scoring (seed 000)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Outputs: results.json + PNG
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):  # -> matplotlib Figure
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _two_hist(ax, a: np.ndarray, b: np.ndarray, edges: np.ndarray, label_a: str, label_b: str) -> None:
    ax.hist(a, bins=edges, alpha=0.55, color="tab:red", label=label_a)
    ax.hist(b, bins=edges, alpha=0.55, color="tab:blue", label=label_b)
    ax.set_ylabel("trials")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom so the legend does not cover the bars
    ax.legend(fontsize=8)


def write_bandit_outputs(out_dir: str | os.PathLike, results: dict, arrays: dict) -> dict[str, Path]:
    """Write results.json, bandit.png (Figs. 3-5 style histogram) and the r*/variances/pi0 used
    (one number per line, so `--r-star/--variances/--pi0` can replay the exact problem)."""
    out = Path(out_dir)
    paths = {"results": out / "results.json", "png": out / "bandit.png"}
    for name in ("r_star", "variances", "pi0"):
        paths[name] = out / f"{name}.txt"
        atomic_write_text(paths[name], "".join(f"{x:.17g}\n" for x in arrays[name]))
    atomic_write_json(paths["results"], results)

    r = results
    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.asarray(r["histogram"]["bin_edges"])
    _two_hist(
        ax, arrays["returns_vanilla"], arrays["returns_variance_aware"], edges,
        f"π1 variance-unaware: mean {r['return_mean_vanilla']:.3f}, std {r['return_std_vanilla']:.3f}",
        f"π2 variance-aware: mean {r['return_mean_variance_aware']:.3f}, std {r['return_std_variance_aware']:.3f}",
    )
    ax.axvline(r["return_pi0"], color="k", ls="--", lw=1, label="π0ᵀr*")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("true return πᵀr*")
    title = r["preset"] or "custom"
    ax.set_title(
        f"Linear bandit ({title}): d={r['dim']}, λ∈[{r['lambda_min']:.3g}, {r['lambda_max']:.3g}], "
        f"ε={r['epsilon']:g}, {r['trials']} trials\n"
        f"P(π1ᵀr* ≤ π0ᵀr*) = {r['p_under_vanilla_empirical']:.3f} (theory {r['p_under_vanilla_theory']:.3f});  "
        f"P(π2ᵀr* ≤ π0ᵀr*) = {r['p_under_variance_aware_empirical']:.3f} (theory {r['p_under_variance_aware_theory']:.3f})",
        fontsize=9,
    )
    _save_png(fig, paths["png"])
    return paths


def write_softmax_outputs(out_dir: str | os.PathLike, results: dict, arrays: dict) -> dict[str, Path]:
    """Write results.json and softmax.png (return and regret histograms)."""
    out = Path(out_dir)
    paths = {"results": out / "results.json", "png": out / "softmax.png"}
    atomic_write_json(paths["results"], results)
    r = results
    fig = _new_figure(11.0, 4.2)
    ax1 = fig.add_subplot(1, 2, 1)
    edges = np.asarray(r["histogram"]["bin_edges"])
    _two_hist(
        ax1, arrays["returns_vanilla"], arrays["returns_variance_aware"], edges,
        f"π ∝ π0·exp(R̂/β): mean {r['return_mean_vanilla']:.3f}, std {r['return_std_vanilla']:.3f}",
        f"π ∝ π0·exp(R̂/(βσ²)): mean {r['return_mean_variance_aware']:.3f}, std {r['return_std_variance_aware']:.3f}",
    )
    ax1.axvline(r["return_oracle"], color="k", ls="--", lw=1, label="oracle (true r*, same KL)")
    ax1.legend(fontsize=8)
    ax1.set_xlabel("true return πᵀr*")
    ax1.set_title(f"Theorem 3.6, K={r['n_actions']}, KL(π‖π0)={r['kl_target']:g} nats, {r['trials']} trials", fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2)
    reg_v, reg_va = arrays["regret_vanilla"], arrays["regret_variance_aware"]
    redges = np.linspace(min(reg_v.min(), reg_va.min()), max(reg_v.max(), reg_va.max()), 61)
    _two_hist(
        ax2, reg_v, reg_va, redges,
        f"vanilla: mean regret {r['regret_mean_vanilla']:.3f}",
        f"variance-aware: mean regret {r['regret_mean_variance_aware']:.3f}",
    )
    ax2.set_xlabel("regret = oracle return − πᵀr*")
    ax2.set_title(f"variance-aware better in {100 * r['p_variance_aware_beats_vanilla']:.1f}% of trials", fontsize=9)
    _save_png(fig, paths["png"])
    return paths


def write_scoring_outputs(out_dir: str | os.PathLike, results: dict, arrays: dict) -> dict[str, Path]:
    """Write results.json and scoring.png (loss vs beta, loss vs fraction)."""
    out = Path(out_dir)
    paths = {"results": out / "results.json", "png": out / "scoring.png"}
    atomic_write_json(paths["results"], results)
    r = results
    fig = _new_figure(11.0, 4.2)
    ax1 = fig.add_subplot(1, 2, 1)
    sb = r["sweep_beta"]
    ax1.plot(sb["beta"], sb["loss_mean_over"], "o-", color="tab:red", ms=3, label=f"over-scoring (+{r['delta']:g})")
    ax1.plot(sb["beta"], sb["loss_mean_under"], "o-", color="tab:blue", ms=3, label=f"under-scoring (−{r['delta']:g})")
    ax1.axvline(r["beta"], color="k", ls=":", lw=1)
    ax1.set_xscale("log")
    ax1.invert_xaxis()
    ax1.set_xlabel("β (KL coefficient; right = stronger optimisation)")
    ax1.set_ylabel("true-return loss vs policy on true reward")
    ax1.set_title(f"{r['n_perturbed']}/{r['n_actions']} actions perturbed, {r['trials']} trials", fontsize=9)
    ax1.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    sf = r["sweep_fraction"]
    ax2.plot(sf["fraction"], sf["loss_mean_over"], "o-", color="tab:red", ms=3, label="over-scoring")
    ax2.plot(sf["fraction"], sf["loss_mean_under"], "o-", color="tab:blue", ms=3, label="under-scoring")
    ax2.axvline(r["fraction"], color="k", ls=":", lw=1)
    ax2.set_xlabel("fraction of actions perturbed")
    ax2.set_title(f"β={r['beta']:g}, δ={r['delta']:g}: {r['verdict']}", fontsize=9)
    ax2.legend(fontsize=8)
    _save_png(fig, paths["png"])
    return paths
