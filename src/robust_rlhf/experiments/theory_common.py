"""Shared inputs of the theory checks (`robust-rlhf simulate`, docs/theory.md): reading and
validating r*, Sigma and pi0 (vector files or seeded draws) and small result helpers.

Pure numpy; the only I/O is reading the user's one-number-per-line vector files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust_rlhf.errors import UserError

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

