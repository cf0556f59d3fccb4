"""Pure statistics of the lab's claims (numpy / scipy only, no training code).

* `kendall_tau_b`, `per_prompt_kendall` -- seed 001's ranking agreement of a proxy with the gold
  over the few responses of each prompt (tau-b: ties in either ranking handled as in
  scipy.stats.kendalltau's default).
* `norm_dispersion`, `dispersion_difference` -- seed 001's std(||h||) / mean(||h||) of hidden-state
  norms and a paired percentile-bootstrap interval for the difference of two proxies.
* `variance_ratio_interval` -- seed 002's risk measure: ratio of the variances of final gold over
  two groups of policies, with the F-based interval (normal data).
* `paired_difference` -- t-interval of paired differences (the same prompts / responses).
* `matched_gold` -- each policy's gold interpolated at a common sqrt(KL).
* `verdict` -- the claim rule: reproduced / not reproduced / inconclusive from an interval.
* `early_warning` -- does the ensemble's disagreement on the policy's own samples rise before the
  gold reward turns down, and by how many evaluation steps.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np

from robust_rlhf.experiments.fits import interpolate_at, t_interval

Direction = Literal["less", "greater"]
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


# ----------------------------------------------------------------------------- ranking
def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two rankings of the same n items.

    ``(C - D) / sqrt((n0 - n1)(n0 - n2))`` with C / D the concordant / discordant pairs,
    ``n0 = n(n-1)/2`` and n1 / n2 the pairs tied in x / in y. NaN when either ranking is
    constant (or n < 2): the agreement is undefined there.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau_b: two 1-d arrays of one length, got {x.shape} and {y.shape}")
    n = len(x)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = n * (n - 1) / 2
    n1, n2 = float((sx == 0).sum()), float((sy == 0).sum())
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    if denom == 0:
        return float("nan")
    return float((sx * sy).sum() / denom)


def per_prompt_kendall(proxy: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """(P,) tau-b of proxy vs gold over the n responses of each prompt; ``proxy``, ``gold``: (P, n).
    NaN for a prompt whose responses all tie on the gold (or on the proxy)."""
    proxy, gold = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    if proxy.shape != gold.shape or proxy.ndim != 2:
        raise ValueError(f"per_prompt_kendall: two (P, n) arrays, got {proxy.shape} and {gold.shape}")
    return np.array([kendall_tau_b(p, g) for p, g in zip(proxy, gold)])


# ----------------------------------------------------------------------------- hidden-state norms
def norm_dispersion(norms: Sequence[float]) -> float:
    """std(||h||) / mean(||h||) (sample std, ddof = 1) -- seed 001's dispersion of hidden-state norms."""
    a = np.asarray(norms, dtype=float)
    if len(a) < 2 or a.mean() == 0:
        return float("nan")
    return float(a.std(ddof=1) / a.mean())


def dispersion_difference(norms_a: Sequence[float], norms_b: Sequence[float], level: float = 0.95,
                          n_boot: int = 2000, seed: int = 0) -> dict:
    """dispersion(a) - dispersion(b) for norms of the SAME texts under two models, with a paired
    percentile-bootstrap interval (texts resampled jointly, ``n_boot`` resamples, fixed seed).

    Returns ``{"diff", "ci_low", "ci_high", "n"}``.
    """
    a, b = np.asarray(norms_a, dtype=float), np.asarray(norms_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("dispersion_difference: the norms of the same texts under both models (two 1-d arrays)")
    n = len(a)
    diff = norm_dispersion(a) - norm_dispersion(b)
    if n < 3:
        return {"diff": diff, "ci_low": None, "ci_high": None, "n": n}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n)
    ra, rb = a[idx], b[idx]
    boot = ra.std(axis=1, ddof=1) / ra.mean(axis=1) - rb.std(axis=1, ddof=1) / rb.mean(axis=1)
    alpha = 1 - level
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"diff": diff, "ci_low": float(lo), "ci_high": float(hi), "n": n}


# ----------------------------------------------------------------------------- differences and ratios
def variance_ratio_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """var(a) / var(b) (sample variances) with the F-based interval: for normal samples
    ``(s_a^2 / s_b^2) / (sigma_a^2 / sigma_b^2) ~ F(n_a - 1, n_b - 1)``, so the interval is
    ``[R / F_{1-alpha/2}, R / F_{alpha/2}]``.

    Returns ``{"ratio", "ci_low", "ci_high", "n": [n_a, n_b]}`` (None where undefined).
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = {"ratio": None, "ci_low": None, "ci_high": None, "n": [len(a), len(b)]}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = a.var(ddof=1), b.var(ddof=1)
    if vb == 0:
        return out
    r = float(va / vb)
    alpha = 1 - level
    d1, d2 = len(a) - 1, len(b) - 1
    out.update(ratio=r, ci_low=float(r / stats.f.ppf(1 - alpha / 2, d1, d2)),
               ci_high=float(r / stats.f.ppf(alpha / 2, d1, d2)))
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Mean of a_i - b_i over pairs where both are finite, with its Student-t interval.

    Returns ``{"diff", "ci_low", "ci_high", "n"}``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    t = t_interval((a[ok] - b[ok]).tolist(), level)
    return {"diff": t["mean"], "ci_low": t["ci_low"], "ci_high": t["ci_high"], "n": int(ok.sum())}


def matched_gold(runs: Sequence[dict], d: float, tolerance: float = 0.15) -> list[float]:
    """Each run's gold at sqrt(KL) = d: its ``curve`` {d, gold} interpolated there; a run that stops
    short of d counts with its final gold only if its final sqrt(KL) is within ``tolerance``·d."""
    vals = []
    for r in runs:
        v = interpolate_at(r["curve"]["d"], r["curve"]["gold"], d)
        if v is None and abs(math.sqrt(max(r["final_kl"], 0.0)) - d) <= tolerance * max(d, 1e-9):
            v = r["final_gold"]
        if v is not None:
            vals.append(float(v))
    return vals


# ----------------------------------------------------------------------------- the verdict rule
def verdict(ci_low: float | None, ci_high: float | None, null: float, direction: Direction) -> str:
    """The claim rule. The claim says the statistic is ``direction`` ("less" / "greater") than
    ``null`` (0 for differences, 1 for ratios):

    * "reproduced" -- the 95 % interval lies entirely on the claimed side of ``null``;
    * "not reproduced" -- it lies entirely on the other side (the opposite is significant);
    * "inconclusive" -- it contains ``null``, or there is no interval.
    """
    if direction not in ("less", "greater"):
        raise ValueError(f"direction must be 'less' or 'greater', got {direction!r}")
    if ci_low is None or ci_high is None or not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    above, below = ci_low > null, ci_high < null
    if (direction == "greater" and above) or (direction == "less" and below):
        return "reproduced"
    if (direction == "greater" and below) or (direction == "less" and above):
        return "not reproduced"
    return "inconclusive"


# ----------------------------------------------------------------------------- early warning
def early_warning(train_steps: Sequence[int], ensemble_std: Sequence[float], eval_steps: Sequence[int],
                  gold: Sequence[float], window: int = 2, rise: float = 0.25, gold_drop: float = 0.02) -> dict:
    """Does the ensemble's disagreement on the policy's own samples rise before the gold turns down?

    * **warning**: the first training step t >= 2·window whose trailing mean of ``ensemble_std``
      over ``window`` steps exceeds ``(1 + rise)`` × the mean of the first ``window`` steps.
    * **gold downturn**: the first evaluation whose gold is more than ``gold_drop`` below the best
      gold so far; the downturn *starts* at the step of that best (the peak).
    * **lead** (in evaluation steps): ``(peak step - warning step) / evaluation interval``;
      >= 0 means the warning came no later than the peak.

    Args:
        train_steps, ensemble_std: (T,) per training step (``reward/ensemble_std`` of the batch).
        eval_steps, gold: (E,) held-out gold per evaluation, the reference (step 0) first if known.

    Returns:
        {"warning_step", "peak_step", "downturn_step", "lead_eval_steps", "outcome"} with outcome one of
        "warned before downturn", "warned after downturn", "downturn without warning",
        "no gold downturn (false alarm)", "no gold downturn, no warning".
    """
    s = np.asarray(ensemble_std, dtype=float)
    steps = list(train_steps)
    warn = None
    if len(s) >= 2 * window and window >= 1:
        base = s[:window].mean()
        for t in range(2 * window - 1, len(s)):
            if s[t - window + 1 : t + 1].mean() > (1 + rise) * base:
                warn = int(steps[t])
                break
    peak = down = None
    best, best_step = -math.inf, None
    for st, g in zip(eval_steps, gold):
        if g > best:
            best, best_step = g, st
        elif g < best - gold_drop:
            peak, down = int(best_step), int(st)
            break
    gaps = np.diff(np.asarray(eval_steps, dtype=float))
    interval = float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 1.0
    lead = None if warn is None or peak is None else (peak - warn) / interval
    if down is None:
        outcome = "no gold downturn (false alarm)" if warn is not None else "no gold downturn, no warning"
    elif warn is None:
        outcome = "downturn without warning"
    else:
        outcome = "warned before downturn" if warn <= peak else "warned after downturn"
    return {"warning_step": warn, "peak_step": peak, "downturn_step": down, "lead_eval_steps": lead,
            "outcome": outcome}
