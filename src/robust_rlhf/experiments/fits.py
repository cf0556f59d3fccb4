"""Pure statistics of the over-optimisation lab: Gao et al.'s functional forms, t-intervals,
and interpolation along a reward-vs-KL curve. Numpy and scipy only; no training code.

Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization"
(arXiv:2210.10760), Eq. 1-2, with ``d = sqrt(KL(pi || pi_0))``:

* best-of-n: ``R_bon(d) = d * (alpha - beta * d)``
* RL:        ``R_RL(d)  = d * (alpha - beta * log d)``

``R`` is the gold reward *relative to the initial policy* (so ``R(0) = 0``, which both forms
satisfy). Both forms are linear in ``(alpha, beta)``, so the least-squares fit is an ordinary
linear least-squares problem with design columns ``[d, -d^2]`` or ``[d, -d log d]`` (no
intercept; ``d log d -> 0`` as ``d -> 0``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

FitForm = Literal["bon", "rl"]


@dataclass
class GaoFit:
    """A fitted Gao curve ``R(d)``; `predict` evaluates it."""

    form: FitForm
    """bon: d(alpha - beta d); rl: d(alpha - beta log d)"""
    alpha: float
    """initial slope of the gold reward in d"""
    beta: float
    """over-optimisation coefficient (larger = gold turns down sooner)"""
    rmse: float
    """root-mean-square residual of the fit"""
    num_points: int
    """points used"""

    def predict(self, d: Sequence[float] | np.ndarray) -> np.ndarray:
        d = np.asarray(d, dtype=float)
        return self.alpha * d - self.beta * _second(d, self.form)

    @property
    def peak_d(self) -> float | None:
        """d at which the fitted gold reward peaks (None if it never turns down)."""
        if self.beta <= 0:
            return None
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        # d/dd [alpha d - beta d log d] = alpha - beta (log d + 1) = 0
        return float(math.exp(self.alpha / self.beta - 1))

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_d": self.peak_d}


def _second(d: np.ndarray, form: FitForm) -> np.ndarray:
    """The column multiplied by -beta: d^2 (bon) or d log d (rl, 0 at d = 0)."""
    if form == "bon":
        return d**2
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * np.log(safe), 0.0)


def fit_gao(d: Sequence[float], reward: Sequence[float], form: FitForm) -> GaoFit | None:
    """Least-squares ``(alpha, beta)`` of ``R(d)`` (see module docstring).

    Args:
        d: (P,) sqrt-KL values, >= 0.
        reward: (P,) gold (or proxy) reward relative to the initial policy.
        form: "bon" or "rl".

    Returns:
        The fit, or None when fewer than 2 points have d > 0 (the problem is then underdetermined).
    """
    if form not in ("bon", "rl"):
        raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")
    d = np.asarray(d, dtype=float).reshape(-1)
    r = np.asarray(reward, dtype=float).reshape(-1)
    if d.shape != r.shape:
        raise ValueError(f"d and reward must have the same length, got {d.shape[0]} and {r.shape[0]}")
    ok = np.isfinite(d) & np.isfinite(r)
    d, r = np.clip(d[ok], 0.0, None), r[ok]
    if int((d > 0).sum()) < 2:
        return None
    X = np.stack([d, -_second(d, form)], axis=1)  # (P, 2)
    (alpha, beta), *_ = np.linalg.lstsq(X, r, rcond=None)
    resid = r - X @ np.array([alpha, beta])
    return GaoFit(form, float(alpha), float(beta), float(np.sqrt(np.mean(resid**2))), int(d.shape[0]))


# ----------------------------------------------------------------------------- intervals


def t_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, unbiased variance and the Student-t confidence interval of the mean.

    Returns ``{"n", "mean", "var", "std", "ci_low", "ci_high"}``; with n < 2 the variance and
    interval are None (one value says nothing about spread)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(x.shape[0])
    if n == 0:
        return {"n": 0, "mean": None, "var": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "var": None, "std": None, "ci_low": None, "ci_high": None}
    var = float(x.var(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1) * math.sqrt(var / n))
    return {"n": n, "mean": mean, "var": var, "std": math.sqrt(var), "ci_low": mean - half, "ci_high": mean + half}


def welch_t(a: Sequence[float], b: Sequence[float]) -> dict:
    """``mean(a) - mean(b)``, its standard error and the Welch-Satterthwaite degrees of freedom
    (unequal variances): ``se = sqrt(v_a + v_b)`` with ``v = var(x, ddof=1) / n`` and
    ``df = (v_a + v_b)^2 / (v_a^2 / (n_a - 1) + v_b^2 / (n_b - 1))``.

    Returns ``{"diff", "se", "df", "n_a", "n_b"}``: ``diff`` None when either side is empty;
    ``se`` and ``df`` None when either side has fewer than 2 values or both have zero variance.
    The base of `welch_difference` (interval) and `robust_rlhf.experiments.stats.welch_test` (p-value)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    out = {"diff": None, "se": None, "df": None, "n_a": int(a.size), "n_b": int(b.size)}
    if a.size == 0 or b.size == 0:
        return out
    out["diff"] = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return out
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return out
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    out.update(se=se, df=float(df))
    return out


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """``mean(a) - mean(b)`` with a Welch t-interval (unequal variances; `welch_t`).

    Returns ``{"diff", "ci_low", "ci_high", "df", "n_a", "n_b"}``; the interval is None when
    either side has fewer than 2 values or both have zero variance."""
    from scipy import stats

    w = welch_t(a, b)
    out = {"diff": w["diff"], "ci_low": None, "ci_high": None, "df": None, "n_a": w["n_a"], "n_b": w["n_b"]}
    if w["se"] is None:
        return out
    half = float(stats.t.ppf(0.5 + level / 2, df=w["df"]) * w["se"])
    out.update(ci_low=w["diff"] - half, ci_high=w["diff"] + half, df=w["df"])
    return out


def interpolate_at(x: Sequence[float], y: Sequence[float], x_star: float) -> float | None:
    """Linear interpolation of the curve (x, y) at ``x_star``; None outside [min x, max x]."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0 or not (x.min() <= x_star <= x.max()):
        return None
    order = np.argsort(x, kind="stable")
    return float(np.interp(x_star, x[order], y[order]))
