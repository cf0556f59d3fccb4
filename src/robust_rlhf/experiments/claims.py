"""The seed papers' headline claims, each tested with a 95 % interval and a verdict (results.json `claims`).

Pure: reads the analysed results dict (methods' runs, the shifted-set scores) and the claim specs.
The verdict rule (`robust_rlhf.experiments.stats.verdict`): a claim says a statistic is less or
greater than its null (1 for a ratio, 0 for a difference); it is *reproduced* when the 95 %
interval lies entirely on the claimed side, *not reproduced* when it lies entirely on the other
side, *inconclusive* otherwise (the interval contains the null, or there is none).

Policy claims are judged at matched KL: d = the smaller of the two arms' mean final sqrt(KL);
each policy's gold-vs-sqrt(KL) curve is interpolated there (`stats.matched_gold`), so an arm
that optimised further is not penalised (or credited) for it.
"""

from __future__ import annotations

import math
from typing import Sequence

from robust_rlhf.experiments.config import ClaimSpec
from robust_rlhf.experiments.fits import welch_difference
from robust_rlhf.experiments.stats import dispersion_difference, matched_gold, paired_difference, variance_ratio_interval, verdict

LEVEL = 0.95
RULE = ("reproduced: the 95 % interval lies entirely on the claimed side of the null (1 for a ratio, 0 for a "
        "difference); not reproduced: entirely on the other side; inconclusive: it contains the null")
_STAT_NAMES = {"variance_ratio": "var(final gold, {t}) / var(final gold, {c}) at matched KL",
               "gold_difference": "mean gold {t} - {c} at matched KL (Welch)",
               "kendall_tau_difference": "mean Kendall tau vs gold, {t} - {c}, {s}-shifted set (paired over prompts)",
               "dispersion_difference": "std/mean of hidden-state norms, {t} - {c}, {s}-shifted set (paired bootstrap)"}


def _policy_claim(spec: ClaimSpec, methods: dict) -> dict:
    t, c = methods[spec.treatment], methods[spec.control]
    d = min(t["final_d_mean"], c["final_d_mean"])
    gt, gc = matched_gold(t["runs"], d), matched_gold(c["runs"], d)
    if spec.statistic == "variance_ratio":
        r = variance_ratio_interval(gt, gc, LEVEL)
        value, lo, hi, null = r["ratio"], r["ci_low"], r["ci_high"], 1.0
    else:
        w = welch_difference(gt, gc, LEVEL) if gt and gc else {"diff": None, "ci_low": None, "ci_high": None}
        value, lo, hi, null = w["diff"], w["ci_low"], w["ci_high"], 0.0
    return {"value": value, "ci95": [lo, hi], "null": null,
            "n_policies": {spec.treatment: len(t["runs"]), spec.control: len(c["runs"])},
            "n_matched": {spec.treatment: len(gt), spec.control: len(gc)},
            "kl": {spec.treatment: t["final_kl"]["mean"], spec.control: c["final_kl"]["mean"], "matched_at": d * d}}


def _shift_claim(spec: ClaimSpec, shift: dict) -> dict:
    t = shift["reward_models"][spec.treatment][spec.shift]
    c = shift["reward_models"][spec.control][spec.shift]
    if spec.statistic == "kendall_tau_difference":
        nan = float("nan")
        r = paired_difference([nan if x is None else x for x in t["kendall_tau_per_prompt"]],
                              [nan if x is None else x for x in c["kendall_tau_per_prompt"]], LEVEL)
        n = {"prompts": r["n"]}
    else:
        r = dispersion_difference(t["norms"], c["norms"], LEVEL)
        n = {"responses": r["n"]}
    return {"value": r["diff"], "ci95": [r["ci_low"], r["ci_high"]], "null": 0.0, "n_policies": None, "n": n,
            "kl": None}


def build_claims(specs: Sequence[ClaimSpec], results: dict) -> list[dict]:
    """One entry per claim: claim, seed, statistic {name, value}, ci95 [lo, hi], n_policies (per arm,
    null for reward-model claims), kl (the KLs compared), verdict, rule."""
    out = []
    for spec in specs:
        if spec.statistic in ("variance_ratio", "gold_difference"):
            part = _policy_claim(spec, results["methods"])
        else:
            part = _shift_claim(spec, results["shift"])
        lo, hi = part["ci95"]
        value = part["value"]
        out.append({
            "claim": spec.claim, "seed": spec.seed, "treatment": spec.treatment, "control": spec.control,
            "statistic": {"name": _STAT_NAMES[spec.statistic].format(t=spec.treatment, c=spec.control, s=spec.shift),
                          "kind": spec.statistic, "value": None if value is None or not math.isfinite(value) else value,
                          "null": part["null"], "direction": spec.direction},
            "ci95": [lo, hi], "n_policies": part["n_policies"], "kl": part["kl"],
            **({"n": part["n"]} if "n" in part else {"n_matched": part["n_matched"]}),
            "verdict": verdict(lo, hi, part["null"], spec.direction), "rule": RULE})
    return out
