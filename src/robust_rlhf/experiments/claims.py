"""The seed papers' headline claims, each tested with a 95 % interval, a two-sided p, its minimum
detectable effect and a verdict before and after Holm's correction (results.json `claims`).

Pure: reads the analysed results dict (methods' runs, the shifted-set scores, the best-of-n study)
and the claim specs. The verdict rule (`robust_rlhf.experiments.stats.verdict`): a claim says a
statistic is less or greater than its null (1 for a ratio, 0 for a difference); it is *reproduced*
when the 95 % interval lies entirely on the claimed side, *not reproduced* when it lies entirely
on the other side, *inconclusive* otherwise. ``verdict_holm`` applies the same rule to the
Holm-adjusted p over the whole table (significant: adjusted p < 0.05; the side from the estimate).

Replication units (``n_units``): policy claims -- policies (matched counts: those whose curve
reaches the matched KL); reward-model claims -- independently trained reward models per arm when
the recipe has replicate seeds, else prompts (tau) or texts (dispersion); best-of-n claims -- prompts.
``mde``: the smallest true effect the row's test detects with 80 % power at its two-sided Holm level.

Policy claims are judged at matched KL: d = the smaller of the two arms' mean final sqrt(KL); each
policy's gold is read where its evaluation curve FIRST reaches d (`stats.matched_first`), so an arm
that optimised further is not penalised (or credited) for it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from robust_rlhf.experiments.config import ClaimSpec, replicate_of
from robust_rlhf.experiments.fits import welch_difference
from robust_rlhf.experiments.stats import (
    dispersion_difference,
    holm_adjust,
    holm_alpha,
    matched_first,
    mde_t,
    mde_variance_ratio,
    net_variance_ratio,
    paired_difference,
    paired_tests,
    verdict,
    welch_test,
)

LEVEL = 0.95
ALPHA = 1 - LEVEL
POWER = 0.8
RULE = ("reproduced: the 95 % interval lies entirely on the claimed side of the null (1 for a ratio, 0 for a "
        "difference); not reproduced: entirely on the other side; inconclusive: it contains the null. "
        "verdict_holm: the same with Holm-adjusted p < 0.05 over the whole table")
_STAT_NAMES = {"variance_ratio": "between-policy var(gold), {t} / {c}, net of sampling noise, at matched KL",
               "gold_difference": "mean gold {t} - {c} at matched KL (Welch)",
               "kendall_tau_difference": "mean Kendall tau vs gold, {t} - {c}, {s}-shifted set",
               "dispersion_difference": "std/mean of hidden-state norms, {t} - {c}, {s}-shifted set",
               "bon_gold_difference": "best-of-{n} gold, {t} - {c} (paired over prompts)"}


def _policy_claim(spec: ClaimSpec, methods: dict) -> dict:
    t, c = methods[spec.treatment], methods[spec.control]
    d = min(t["final_d_mean"], c["final_d_mean"])
    (gt, st), (gc, sc) = matched_first(t["runs"], d), matched_first(c["runs"], d)
    n_units = {"unit": "policies", spec.treatment: len(gt), spec.control: len(gc)}
    out = {"n_policies": {spec.treatment: len(t["runs"]), spec.control: len(c["runs"])},
           "n_matched": {spec.treatment: len(gt), spec.control: len(gc)}, "n_units": n_units,
           "kl": {spec.treatment: t["final_kl"]["mean"], spec.control: c["final_kl"]["mean"], "matched_at": d * d}}
    if spec.statistic == "variance_ratio":
        have_se = all(x is not None for x in st + sc)
        r = net_variance_ratio(gt, st if have_se else [0.0] * len(gt), gc, sc if have_se else [0.0] * len(gc), LEVEL)
        out.update(value=r["ratio"], ci95=[r["ci_low"], r["ci_high"]], null=1.0, p=r["p"],
                   tests={"between_variance": r["between"], "within_variance": r["within"],
                          "raw_variance_ratio": r["raw_ratio"], "noise_subtracted": have_se},
                   mde_of=lambda a: mde_variance_ratio(len(gt), len(gc), a, POWER, spec.direction))
    else:
        w = welch_difference(gt, gc, LEVEL) if gt and gc else {"diff": None, "ci_low": None, "ci_high": None}
        wt = welch_test(gt, gc)
        out.update(value=w["diff"], ci95=[w["ci_low"], w["ci_high"]], null=0.0, p=wt["p"], tests={"welch": wt},
                   mde_of=lambda a: mde_t(wt["se"], wt["df"], a, POWER))
    return out


def _arm(shift: dict, name: str, which: str) -> list[dict]:
    """The shifted-set results of every trained replicate of reward-model recipe ``name``."""
    return [v[which] for k, v in sorted(shift["reward_models"].items()) if replicate_of(k) == name]


def _shift_claim(spec: ClaimSpec, shift: dict) -> dict:
    arm_t, arm_c = _arm(shift, spec.treatment, spec.shift), _arm(shift, spec.control, spec.shift)
    t, c = arm_t[0], arm_c[0]
    nan = float("nan")
    out: dict = {"n_policies": None, "kl": None, "null": 0.0}
    tau = spec.statistic == "kendall_tau_difference"

    def per_prompt(arm: list[dict]) -> np.ndarray:  # (P,) mean tau over the arm's reward models (NaN: all undefined)
        a = np.array([[nan if x is None else x for x in r["kendall_tau_per_prompt"]] for r in arm], dtype=float)
        ok = np.isfinite(a)
        total, count = np.where(ok, a, 0.0).sum(axis=0), ok.sum(axis=0)
        return np.where(count > 0, total / np.maximum(count, 1), nan)

    tests: dict = {}
    if tau:
        pt = paired_tests(per_prompt(arm_t), per_prompt(arm_c))
        tests["paired_over_prompts"] = pt
    if len(arm_t) >= 2 and len(arm_c) >= 2:  # reward models as the unit
        key = (lambda r: r["kendall_tau"]["mean"]) if tau else (lambda r: r["norm_dispersion"])
        xt = [key(r) for r in arm_t if key(r) is not None and math.isfinite(key(r))]
        xc = [key(r) for r in arm_c if key(r) is not None and math.isfinite(key(r))]
        w, wt = welch_difference(xt, xc, LEVEL), welch_test(xt, xc)
        out.update(value=w["diff"], ci95=[w["ci_low"], w["ci_high"]], p=wt["p"],
                   n={"reward_models": {spec.treatment: len(xt), spec.control: len(xc)}},
                   n_units={"unit": "reward models", spec.treatment: len(xt), spec.control: len(xc)},
                   mde_of=lambda a: mde_t(wt["se"], wt["df"], a, POWER))
        tests["welch_over_reward_models"] = {**wt, "treatment": xt, "control": xc}
    elif tau:  # one reward model per arm: prompts as the unit (paired)
        r = paired_difference(per_prompt(arm_t), per_prompt(arm_c), LEVEL)
        out.update(value=r["diff"], ci95=[r["ci_low"], r["ci_high"]], p=pt["p_t"], n={"prompts": r["n"]},
                   n_units={"unit": "prompts", spec.treatment: r["n"], spec.control: r["n"]},
                   mde_of=lambda a: mde_t(pt["se"], pt["df"], a, POWER))
    else:  # one reward model per arm: texts as the unit (paired bootstrap)
        r = dispersion_difference(t["norms"], c["norms"], LEVEL)
        p = None
        if r["se"]:
            from scipy import stats

            p = float(2 * stats.norm.sf(abs(r["diff"]) / r["se"]))
        out.update(value=r["diff"], ci95=[r["ci_low"], r["ci_high"]], p=p, n={"responses": r["n"]},
                   n_units={"unit": "texts", spec.treatment: r["n"], spec.control: r["n"]},
                   mde_of=lambda a: mde_t(r["se"], None, a, POWER))
    out["tests"] = tests
    return out


def _bon_claim(spec: ClaimSpec, bon: dict) -> dict:
    a, b = bon["per_prompt"][spec.treatment], bon["per_prompt"][spec.control]
    pt = paired_tests(a, b)
    r = paired_difference(a, b, LEVEL)
    return {"value": r["diff"], "ci95": [r["ci_low"], r["ci_high"]], "null": 0.0, "p": pt["p_t"],
            "n_policies": None, "kl": {"n": bon["claim_n"], "kl": bon["kl"][bon["claim_n"] - 1]},
            "n": {"prompts": r["n"]}, "n_units": {"unit": "prompts", spec.treatment: r["n"], spec.control: r["n"]},
            "tests": {"paired_over_prompts": pt}, "mde_of": lambda al: mde_t(pt["se"], pt["df"], al, POWER)}


def _side(value: float | None, null: float, direction: str, significant: bool) -> str:
    if not significant or value is None:
        return "inconclusive"
    claimed = value < null if direction == "less" else value > null
    return "reproduced" if claimed else "not reproduced"


def build_claims(specs: Sequence[ClaimSpec], results: dict) -> list[dict]:
    """One entry per claim: claim, seed, statistic {name, value, null, direction}, ci95 [lo, hi], p,
    p_holm, alpha_holm, mde (80 % power at alpha_holm), n_units {unit, per arm}, n_matched (policy
    claims: runs reaching the matched KL), n_policies, kl, tests (sign / Wilcoxon / Welch beside t,
    the variance decomposition), verdict, verdict_holm, rule."""
    parts = []
    for spec in specs:
        if spec.statistic in ("variance_ratio", "gold_difference"):
            parts.append(_policy_claim(spec, results["methods"]))
        elif spec.statistic == "bon_gold_difference":
            parts.append(_bon_claim(spec, results["bon_study"]))
        else:
            parts.append(_shift_claim(spec, results["shift"]))
    pvals = [p.get("p") for p in parts]
    adjusted, alphas = holm_adjust(pvals), holm_alpha(pvals, ALPHA)
    out = []
    for spec, part, p_holm, a_holm in zip(specs, parts, adjusted, alphas):
        lo, hi = part["ci95"]
        value = part["value"]
        value = None if value is None or not math.isfinite(value) else value
        n_name = results.get("bon_study", {}).get("claim_n") if spec.statistic == "bon_gold_difference" else None
        row = {
            "claim": spec.claim, "seed": spec.seed, "treatment": spec.treatment, "control": spec.control,
            "statistic": {"name": _STAT_NAMES[spec.statistic].format(t=spec.treatment, c=spec.control, s=spec.shift,
                                                                     n=n_name),
                          "kind": spec.statistic, "value": value, "null": part["null"], "direction": spec.direction},
            "ci95": [lo, hi], "p": part.get("p"), "p_holm": p_holm, "alpha_holm": a_holm,
            "mde": part["mde_of"](a_holm if a_holm is not None else ALPHA / max(1, len(specs))),
            "n_units": part["n_units"], "n_policies": part["n_policies"], "kl": part["kl"],
            "tests": part.get("tests", {}),
            "verdict": verdict(lo, hi, part["null"], spec.direction),
            "verdict_holm": _side(value, part["null"], spec.direction, p_holm is not None and p_holm < ALPHA),
            "rule": RULE}
        row.update({"n": part["n"]} if "n" in part else {"n_matched": part.get("n_matched")})
        out.append(row)
    return out
