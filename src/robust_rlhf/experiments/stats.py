"""Pure statistics of the lab's claims (numpy / scipy only, no training code).

* `kendall_tau_b`, `per_prompt_kendall` -- seed 001's ranking agreement of a proxy with the gold
  over the few responses of each prompt (tau-b: ties in either ranking handled as in
  scipy.stats.kendalltau's default).
* `norm_dispersion`, `dispersion_difference` -- seed 001's std(||h||) / mean(||h||) of hidden-state
  norms and a paired percentile-bootstrap interval for the difference of two proxies.
* `variance_ratio_interval` -- seed 002's risk measure: ratio of the variances of final gold over
  two groups of policies, with the F-based interval (normal data).
* `paired_difference` -- t-interval of paired differences (the same prompts / responses).
* `first_crossing`, `matched_first` -- each policy's gold where its curve first reaches a common sqrt(KL).
* `verdict` -- the claim rule: reproduced / not reproduced / inconclusive from an interval.
* `holm_adjust`, `holm_alpha`, `mde_t`, `mde_variance_ratio` -- multiplicity and power of the claims table.
* `welch_test`, `paired_tests` (t, sign, Wilcoxon) -- the two-sided p-values.
* `variance_components`, `net_variance_ratio` -- between-policy variance net of within-policy sampling noise.
* `early_warning_se` -- does the ensemble's disagreement on the policy's own samples rise before the
  gold reward turns down by more than 2 standard errors, and by how many evaluation steps.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np

from robust_rlhf.experiments.fits import t_interval, welch_t

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

    Returns ``{"diff", "ci_low", "ci_high", "se", "n"}`` (``se``: the bootstrap standard deviation).
    """
    a, b = np.asarray(norms_a, dtype=float), np.asarray(norms_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("dispersion_difference: the norms of the same texts under both models (two 1-d arrays)")
    n = len(a)
    diff = norm_dispersion(a) - norm_dispersion(b)
    if n < 3:
        return {"diff": diff, "ci_low": None, "ci_high": None, "se": None, "n": n}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n)
    ra, rb = a[idx], b[idx]
    boot = ra.std(axis=1, ddof=1) / ra.mean(axis=1) - rb.std(axis=1, ddof=1) / rb.mean(axis=1)
    alpha = 1 - level
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"diff": diff, "ci_low": float(lo), "ci_high": float(hi), "se": float(boot.std(ddof=1)), "n": n}


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


# ----------------------------------------------------------------------------- power, multiplicity, rank tests
def holm_adjust(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error over the claims table).

    Sorted ascending p_(1) <= ... <= p_(m): ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``;
    a claim is significant at level alpha after Holm iff its adjusted p < alpha. None (no test)
    stays None and does not count in m.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def holm_alpha(pvalues: Sequence[float | None], alpha: float = 0.05) -> list[float | None]:
    """Each test's Holm threshold ``alpha / (m - rank + 1)`` (rank of its p among the m tests):
    the two-sided level its minimum detectable effect is computed at."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        out[i] = alpha / (m - rank)
    return out


def mde_t(se: float | None, df: float | None, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Minimum detectable effect of a two-sided t-test: ``(t_{1-alpha/2, df} + t_{power, df}) * se``
    (df = None: normal quantiles). None without a standard error."""
    from scipy import stats

    if se is None or not math.isfinite(se) or se <= 0:
        return None
    if df is None:
        return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def mde_variance_ratio(n_a: int, n_b: int, alpha: float = 0.05, power: float = 0.8,
                       direction: Direction = "less") -> float | None:
    """The variance ratio var(a)/var(b) a two-sided F-test detects with ``power``: it rejects when
    R > F_{1-alpha/2}(d1, d2); under ratio rho, R / rho ~ F(d1, d2), so power = P(F > F_{1-alpha/2} / rho)
    gives ``rho = F_{1-alpha/2} / F_{1-power}``; for direction "less" the mirror ``F_{alpha/2} / F_{power}``."""
    from scipy import stats

    if n_a < 2 or n_b < 2:
        return None
    d1, d2 = n_a - 1, n_b - 1
    if direction == "greater":
        return float(stats.f.ppf(1 - alpha / 2, d1, d2) / stats.f.ppf(1 - power, d1, d2))
    return float(stats.f.ppf(alpha / 2, d1, d2) / stats.f.ppf(power, d1, d2))


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided Welch t-test of mean(a) - mean(b) (`welch_t`'s difference, standard error and
    df): ``{"diff", "se", "df", "p"}`` (None where undefined)."""
    from scipy import stats

    w = welch_t(a, b)
    out = {"diff": w["diff"], "se": w["se"], "df": w["df"], "p": None}
    if w["se"] is not None:
        out["p"] = float(2 * stats.t.sf(abs(w["diff"]) / w["se"], w["df"]))
    return out


def paired_tests(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired a_i - b_i over pairs where both are finite: t-test, exact two-sided sign test
    (zero differences dropped) and Wilcoxon signed-rank test (scipy, zeros dropped).

    Returns ``{"n", "n_nonzero", "diff", "se", "df", "p_t", "positive", "negative", "p_sign", "p_wilcoxon"}``.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = int(d.size)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    out = {"n": n, "n_nonzero": pos + neg, "diff": float(d.mean()) if n else None, "se": None, "df": None,
           "p_t": None, "positive": pos, "negative": neg, "p_sign": None, "p_wilcoxon": None}
    if n >= 2 and d.std(ddof=1) > 0:
        se = float(d.std(ddof=1) / math.sqrt(n))
        out.update(se=se, df=n - 1, p_t=float(2 * stats.t.sf(abs(d.mean()) / se, n - 1)))
    if pos + neg:
        out["p_sign"] = float(stats.binomtest(pos, pos + neg, 0.5).pvalue)
        out["p_wilcoxon"] = float(stats.wilcoxon(d[d != 0]).pvalue)
    return out


# ----------------------------------------------------------------------------- variance components
def variance_components(groups: Sequence[Sequence[float]]) -> dict:
    """One-way random-effects ANOVA: ``y_ij = mu + b_i + e_ij`` over k groups (policies) of n_i
    samples each; how much of the spread is between groups net of the within-group noise.

    ``MSB = sum_i n_i (ybar_i - ybar)^2 / (k - 1)``, ``MSW = sum_ij (y_ij - ybar_i)^2 / (N - k)``,
    ``n0 = (N - sum n_i^2 / N) / (k - 1)`` (= n for equal groups), and the method-of-moments
    ``sigma2_between = (MSB - MSW) / n0`` (may be negative: no detectable between-group variance),
    ``sigma2_within = MSW``.

    Returns ``{"k", "n0", "msb", "msw", "between", "within", "f", "p"}`` (``f = MSB / MSW``, ``p`` its F-test).
    """
    from scipy import stats

    gs = [np.asarray(g, dtype=float) for g in groups]
    gs = [g[np.isfinite(g)] for g in gs]
    gs = [g for g in gs if g.size]
    k = len(gs)
    sizes = np.array([g.size for g in gs], dtype=float)
    N = float(sizes.sum())
    out = {"k": k, "n0": None, "msb": None, "msw": None, "between": None, "within": None, "f": None, "p": None}
    if k < 2 or N - k < 1:
        return out
    grand = float(np.concatenate(gs).mean())
    means = np.array([g.mean() for g in gs])
    msb = float((sizes * (means - grand) ** 2).sum() / (k - 1))
    msw = float(sum(((g - g.mean()) ** 2).sum() for g in gs) / (N - k))
    n0 = float((N - (sizes**2).sum() / N) / (k - 1))
    out.update(n0=n0, msb=msb, msw=msw, between=(msb - msw) / n0, within=msw)
    if msw > 0:
        out.update(f=msb / msw, p=float(stats.f.sf(msb / msw, k - 1, N - k)))
    return out


def net_variance_ratio(a: Sequence[float], a_se: Sequence[float], b: Sequence[float], b_se: Sequence[float],
                       level: float = 0.95, n_boot: int = 4000, seed: int = 0) -> dict:
    """Between-policy variance of a over that of b, net of within-policy sampling noise.

    Each policy's value x_i carries a sampling standard error se_i (from its own samples), so
    ``var(x) = sigma2_between + mean(se_i^2)`` and ``sigma2_between = s^2 - mean(se^2)`` (the
    random-effects decomposition of `variance_components`, with the noise known per policy).
    The ratio's interval: percentile bootstrap over policies within each arm (floored at a
    tiny positive between-variance); ``p``: twice the bootstrap mass on the other side of 1.

    Returns ``{"ratio", "ci_low", "ci_high", "p", "between": [a, b], "within": [a, b], "raw_ratio", "n": [n_a, n_b]}``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    sa, sb = np.asarray(a_se, dtype=float) ** 2, np.asarray(b_se, dtype=float) ** 2
    out = {"ratio": None, "ci_low": None, "ci_high": None, "p": None, "between": [None, None],
           "within": [None, None], "raw_ratio": None, "n": [int(a.size), int(b.size)]}
    if a.size < 2 or b.size < 2:
        return out
    floor = 1e-12

    def net(x, s2):
        return x.var(ddof=1, axis=-1) - s2.mean(axis=-1)

    ba, bb = float(net(a, sa)), float(net(b, sb))
    out.update(between=[ba, bb], within=[float(sa.mean()), float(sb.mean())])
    if b.var(ddof=1) > 0:
        out["raw_ratio"] = float(a.var(ddof=1) / b.var(ddof=1))
    if bb <= 0:
        return out
    out["ratio"] = max(ba, 0.0) / bb
    rng = np.random.default_rng(seed)
    ia, ib = rng.integers(0, a.size, (n_boot, a.size)), rng.integers(0, b.size, (n_boot, b.size))
    boot = np.maximum(net(a[ia], sa[ia]), floor) / np.maximum(net(b[ib], sb[ib]), floor)
    alpha = 1 - level
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    p = 2 * min(float((boot <= 1).mean()), float((boot >= 1).mean()))
    out.update(ci_low=float(lo), ci_high=float(hi), p=min(1.0, p))
    return out


# ----------------------------------------------------------------------------- matched KL
def first_crossing(d: Sequence[float], y: Sequence[float], d_star: float) -> float | None:
    """y where the curve (in step order) FIRST reaches d_star: linear interpolation on the first
    segment [d_i, d_{i+1}] with d_i <= d_star <= d_{i+1} (a point exactly at d_star counts); None
    if the curve never reaches d_star."""
    d, y = list(d), list(y)
    for i in range(len(d)):
        if d[i] == d_star:
            return float(y[i])
        if i + 1 < len(d) and d[i] < d_star < d[i + 1]:
            w = (d_star - d[i]) / (d[i + 1] - d[i])
            return float(y[i] + w * (y[i + 1] - y[i]))
    return None


def first_crossing_se(d: Sequence[float], se: Sequence[float], d_star: float) -> float | None:
    """Standard error of `first_crossing`'s value from the two evaluations it interpolates
    (independent samples): ``sqrt((1 - w)^2 se_i^2 + w^2 se_{i+1}^2)``."""
    d, se = list(d), list(se)
    for i in range(len(d)):
        if d[i] == d_star:
            return None if se[i] is None else float(se[i])
        if i + 1 < len(d) and d[i] < d_star < d[i + 1]:
            if se[i] is None or se[i + 1] is None:
                return None
            w = (d_star - d[i]) / (d[i + 1] - d[i])
            return float(math.sqrt((1 - w) ** 2 * se[i] ** 2 + w**2 * se[i + 1] ** 2))
    return None


def matched_first(runs: Sequence[dict], d: float) -> tuple[list[float], list[float | None]]:
    """Each run's gold (and its standard error) at the FIRST crossing of sqrt(KL) = d along its
    evaluation curve; runs that never reach d are left out (the matched count is the list's length)."""
    vals, ses = [], []
    for r in runs:
        v = first_crossing(r["curve"]["d"], r["curve"]["gold"], d)
        if v is None:
            continue
        vals.append(v)
        se = r["curve"].get("gold_se")
        ses.append(first_crossing_se(r["curve"]["d"], se, d) if se else None)
    return vals, ses


# ----------------------------------------------------------------------------- early warning (testable rule)
EW_OUTCOMES = ("warned before downturn", "warned after downturn", "downturn without warning",
               "peak before earliest warning", "no gold downturn (false alarm)", "no gold downturn, no warning")


def early_warning_se(steps: Sequence[int], ensemble_std: Sequence[float], gold: Sequence[float],
                     gold_se: Sequence[float], window: int = 2, rise: float = 0.25, se_multiple: float = 2.0) -> dict:
    """The early-warning rule on one evaluation grid (step 0 = the reference policy first).

    * **warning**: the first evaluation t >= 2·window - 1 (0-based) whose trailing mean of the
      ensemble std (all heads, on the policy's own held-out samples) over ``window`` evaluations
      exceeds ``(1 + rise)`` × the mean of the first ``window``; ``steps[2·window - 1]`` is the
      earliest possible warning.
    * **gold downturn**: the first evaluation whose gold is below the best so far by more than
      ``se_multiple`` standard errors of that difference (``sqrt(se_best^2 + se_now^2)``); the
      downturn starts at the best's step (the peak).
    * a peak before the earliest possible warning is counted apart ("peak before earliest
      warning"): no warning rule of this window could have preceded it.

    Returns ``{"warning_step", "earliest_warning_step", "peak_step", "downturn_step", "lead_eval_steps", "outcome"}``.
    """
    s = np.asarray(ensemble_std, dtype=float)
    steps = [int(x) for x in steps]
    earliest = steps[2 * window - 1] if window >= 1 and len(steps) >= 2 * window else None
    warn = None
    if earliest is not None:
        base = s[:window].mean()
        for t in range(2 * window - 1, len(s)):
            if s[t - window + 1 : t + 1].mean() > (1 + rise) * base:
                warn = steps[t]
                break
    peak = down = None
    best, best_se, best_step = -math.inf, 0.0, None
    for st, g, e in zip(steps, gold, gold_se):
        e = 0.0 if e is None else float(e)
        if g > best:
            best, best_se, best_step = g, e, st
        elif best - g > se_multiple * math.sqrt(best_se**2 + e**2):
            peak, down = best_step, st
            break
    gaps = np.diff(np.asarray(steps, dtype=float))
    interval = float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 1.0
    lead = None if warn is None or peak is None else (peak - warn) / interval
    if down is None:
        outcome = "no gold downturn (false alarm)" if warn is not None else "no gold downturn, no warning"
    elif earliest is None or peak < earliest:
        outcome = "peak before earliest warning"
    elif warn is None:
        outcome = "downturn without warning"
    else:
        outcome = "warned before downturn" if warn <= peak else "warned after downturn"
    return {"warning_step": warn, "earliest_warning_step": earliest, "peak_step": peak, "downturn_step": down,
            "lead_eval_steps": lead, "outcome": outcome}
