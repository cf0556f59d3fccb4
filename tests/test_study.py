"""The lab's claim statistics (each against an independent computation) and a tiny `study` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from robust_rlhf.experiments.stats import (
    dispersion_difference,
    early_warning,
    kendall_tau_b,
    matched_gold,
    norm_dispersion,
    paired_difference,
    per_prompt_kendall,
    variance_ratio_interval,
    verdict,
)


# ----------------------------------------------------------------------------- Kendall tau
def test_kendall_tau_b_matches_scipy_with_and_without_ties():
    from scipy import stats

    rng = np.random.default_rng(0)
    cases = [([1, 2, 3, 4], [1, 2, 3, 4]), ([1, 2, 3, 4], [4, 3, 2, 1]), ([0.1, 0.5, 0.5, 0.9], [3, 1, 2, 2])]
    cases += [(rng.normal(size=4), rng.normal(size=4)) for _ in range(20)]
    cases += [(rng.integers(0, 3, size=7).astype(float), rng.integers(0, 3, size=7).astype(float)) for _ in range(20)]
    for x, y in cases:
        expected = stats.kendalltau(x, y).statistic
        got = kendall_tau_b(x, y)
        if np.isnan(expected):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)


def test_kendall_hand_value_and_undefined():
    # x = 1,2,3,4 vs y = 1,3,2,4: 5 concordant, 1 discordant pair -> (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert math.isnan(kendall_tau_b([1, 2, 3, 4], [0.5, 0.5, 0.5, 0.5]))  # gold all tied
    taus = per_prompt_kendall(np.array([[1, 2, 3, 4], [4, 3, 2, 1.0]]), np.array([[1, 2, 3, 4], [1, 2, 3, 4.0]]))
    assert taus.tolist() == [1.0, -1.0]


# ----------------------------------------------------------------------------- dispersion
def test_norm_dispersion_hand_value():
    # norms 1, 2, 3: mean 2, sample std 1 -> 0.5
    assert norm_dispersion([1.0, 2.0, 3.0]) == pytest.approx(0.5)


def test_dispersion_bootstrap_width_matches_delta_method():
    """For normal norms, se(cv) ~= cv * sqrt((0.5 + cv^2) / n) (delta method); the paired
    bootstrap of a difference of two independent dispersions has se ~= sqrt(se_a^2 + se_b^2)."""
    rng = np.random.default_rng(1)
    n = 2000
    a, b = rng.normal(10, 2, n), rng.normal(10, 1, n)
    res = dispersion_difference(a, b, n_boot=2000, seed=0)
    cva, cvb = norm_dispersion(a), norm_dispersion(b)
    se = math.sqrt(cva**2 * (0.5 + cva**2) / n + cvb**2 * (0.5 + cvb**2) / n)
    width = res["ci_high"] - res["ci_low"]
    assert width == pytest.approx(2 * 1.959964 * se, rel=0.15)
    assert res["diff"] == pytest.approx(cva - cvb)
    assert res["ci_low"] < res["diff"] < res["ci_high"] and res["ci_low"] > 0  # 0.2 vs 0.1: clearly different


# ----------------------------------------------------------------------------- variance ratio
def test_variance_ratio_interval_against_the_f_cdf():
    """The interval ends solve F_cdf(R / end) = 1 - alpha/2 and alpha/2; the F cdf computed
    independently through the regularised incomplete beta function."""
    from scipy.special import betainc

    a = [0.31, 0.42, 0.28, 0.55, 0.47, 0.39, 0.33, 0.5]
    b = [0.2, 0.6, 0.1, 0.7, 0.35, 0.45, 0.05, 0.8, 0.4]
    res = variance_ratio_interval(a, b, 0.95)
    r = np.var(a, ddof=1) / np.var(b, ddof=1)
    assert res["ratio"] == pytest.approx(r)
    d1, d2 = len(a) - 1, len(b) - 1

    def f_cdf(x):
        return betainc(d1 / 2, d2 / 2, d1 * x / (d1 * x + d2))

    assert f_cdf(r / res["ci_low"]) == pytest.approx(0.975, abs=1e-9)
    assert f_cdf(r / res["ci_high"]) == pytest.approx(0.025, abs=1e-9)
    assert res["ci_high"] < 1  # a is far less spread than b
    assert variance_ratio_interval([1.0], b)["ratio"] is None


def test_paired_difference_hand_values():
    # differences 1, 2, 3 (the NaN pair dropped): mean 2, sd 1, t_{0.975, 2} = 4.302653
    res = paired_difference([2, 4, 6, np.nan], [1, 2, 3, 0])
    assert res["n"] == 3 and res["diff"] == pytest.approx(2.0)
    assert res["ci_high"] - 2 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_matched_gold_interpolates_and_tolerates_short_runs():
    runs = [{"curve": {"d": [0, 1, 2], "gold": [0, 1, 0]}, "final_kl": 4.0, "final_gold": 0.0},
            {"curve": {"d": [0, 1.9], "gold": [0, 0.5]}, "final_kl": 1.9**2, "final_gold": 0.5},  # within 15 %
            {"curve": {"d": [0, 1.0], "gold": [0, 0.5]}, "final_kl": 1.0, "final_gold": 0.5}]  # too short
    assert matched_gold(runs, 1.5) == pytest.approx([0.5, 0.5 * 1.5 / 1.9])
    assert matched_gold(runs, 2.0) == pytest.approx([0.0, 0.5])


# ----------------------------------------------------------------------------- verdict
@pytest.mark.parametrize("lo,hi,null,direction,expected", [
    (0.1, 0.3, 0.0, "greater", "reproduced"),
    (-0.3, -0.1, 0.0, "greater", "not reproduced"),
    (-0.1, 0.3, 0.0, "greater", "inconclusive"),
    (0.2, 0.8, 1.0, "less", "reproduced"),
    (1.2, 3.0, 1.0, "less", "not reproduced"),
    (0.5, 1.5, 1.0, "less", "inconclusive"),
    (None, None, 0.0, "less", "inconclusive"),
    (0.0, 0.2, 0.0, "greater", "inconclusive"),  # touching the null is not excluding it
])
def test_verdict_rule(lo, hi, null, direction, expected):
    assert verdict(lo, hi, null, direction) == expected


# ----------------------------------------------------------------------------- early warning
def test_early_warning_hand_worked():
    # std doubles from step 4 on; trailing mean over 2 steps first exceeds 1.25 x 1.0 at step 4
    std = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    steps = list(range(1, 9))
    # gold: peak 0.5 at step 6, drops to 0.4 at step 8 (> 0.02 below)
    res = early_warning(steps, std, [0, 2, 4, 6, 8], [0.1, 0.3, 0.4, 0.5, 0.4], window=2, rise=0.25, gold_drop=0.02)
    assert res["warning_step"] == 4 and res["peak_step"] == 6 and res["downturn_step"] == 8
    assert res["lead_eval_steps"] == pytest.approx(1.0)  # (6 - 4) / eval interval 2
    assert res["outcome"] == "warned before downturn"


def test_early_warning_other_outcomes():
    flat = [1.0] * 8
    steps = list(range(1, 9))
    rising_gold = ([0, 4, 8], [0.1, 0.2, 0.3])
    assert early_warning(steps, flat, *rising_gold)["outcome"] == "no gold downturn, no warning"
    assert early_warning(steps, [1, 1, 1, 1, 1, 1, 3, 3], *rising_gold)["outcome"] == "no gold downturn (false alarm)"
    falling = ([0, 2, 4, 6, 8], [0.1, 0.5, 0.3, 0.2, 0.1])
    res = early_warning(steps, flat, *falling)
    assert res["outcome"] == "downturn without warning" and res["peak_step"] == 2 and res["lead_eval_steps"] is None
    late = early_warning(steps, [1, 1, 1, 1, 1, 1, 3, 3], *falling)
    assert late["outcome"] == "warned after downturn" and late["lead_eval_steps"] == pytest.approx((2 - 7) / 2)


# ----------------------------------------------------------------------------- the study, tiny, end to end
def _rule(lo, hi, null, direction):
    """The verdict rule written out independently of stats.verdict."""
    if lo is None:
        return "inconclusive"
    if direction == "greater":
        return "reproduced" if lo > null else ("not reproduced" if hi < null else "inconclusive")
    return "reproduced" if hi < null else ("not reproduced" if lo > null else "inconclusive")


@pytest.fixture
def one_thread():
    """num_threads=1 for the pipeline (shared cores thrash with more); torch's setting restored after."""
    import torch

    before = torch.get_num_threads()
    yield ["num_threads=1"]
    torch.set_num_threads(before)


def test_tiny_study_claims_end_to_end(tmp_path, one_thread):
    """The study's pieces on the tiny configuration: the max aggregator, variance-aware PPO per head
    (validation-scaled), the shifted sets (Kendall tau, norms), early warning, the claims list with
    verdicts that follow the rule, the claims table first in the report, and a cached re-run."""
    from robust_rlhf.experiments.config import load_experiment_config
    from robust_rlhf.experiments.overopt import run_experiment

    overrides = one_thread + [
        "methods=[{name: ppo-heads, type: ppo, reward_model: ens, train_on: each_head, heads: [0, 1],"
        " aggregator: {name: max}},"
        " {name: ppo-var-heads, type: ppo, reward_model: ens, train_on: each_head, heads: [0, 1],"
        " overrides: {kl.variance_aware: true, kl.variance_scale: validation}}]",
        "baseline=ppo-heads", "early_warning.window=1", "policy_overrides.log.eval_every=2",
        "shift.enabled=true", "shift.num_prompts=3",
        "claims=[{seed: '002', claim: lower variance, statistic: variance_ratio, treatment: ppo-var-heads,"
        " control: ppo-heads, direction: less},"
        " {seed: '002', claim: lower mean, statistic: gold_difference, treatment: ppo-var-heads, control: ppo-heads,"
        " direction: less},"
        " {seed: '001', claim: tau, statistic: kendall_tau_difference, treatment: ens, control: bt, direction: greater,"
        " shift: response},"
        " {seed: '001', claim: dispersion, statistic: dispersion_difference, treatment: ens, control: bt,"
        " direction: less, shift: prompt}]",
    ]
    cfg = load_experiment_config("experiment_tiny", overrides)
    out = tmp_path / "study"
    res = run_experiment(cfg, out, progress=False).results
    claims = res["claims"]
    assert [c["seed"] for c in claims] == ["002", "002", "001", "001"]
    for c in claims:
        assert set(c) >= {"claim", "seed", "statistic", "ci95", "n_policies", "kl", "verdict"}
        assert c["verdict"] == _rule(c["ci95"][0], c["ci95"][1], c["statistic"]["null"], c["statistic"]["direction"])
    var, gold, tau, disp = claims
    assert var["n_policies"] == {"ppo-var-heads": 2, "ppo-heads": 2} and var["statistic"]["null"] == 1.0
    finals = {m: [r["final_gold"] for r in res["methods"][m]["runs"]] for m in ("ppo-var-heads", "ppo-heads")}
    assert set(var["kl"]) == {"ppo-var-heads", "ppo-heads", "matched_at"}
    # the variance ratio is that of the gold at the matched KL, from the stored curves
    from robust_rlhf.experiments.stats import matched_gold

    d = math.sqrt(var["kl"]["matched_at"])
    a, b = (matched_gold(res["methods"][m]["runs"], d) for m in ("ppo-var-heads", "ppo-heads"))
    if len(a) == 2 == len(b) and np.var(b) > 0:
        assert var["statistic"]["value"] == pytest.approx(np.var(a, ddof=1) / np.var(b, ddof=1))
    assert tau["n_policies"] is None and tau["kl"] is None and tau["n"]["prompts"] <= 3
    # the tau claim's value is the mean paired difference of the per-prompt taus stored in results
    per = res["shift"]["reward_models"]
    pairs = [(a, b) for a, b in zip(per["ens"]["response"]["kendall_tau_per_prompt"],
                                    per["bt"]["response"]["kendall_tau_per_prompt"]) if a is not None and b is not None]
    if pairs:
        assert tau["statistic"]["value"] == pytest.approx(float(np.mean([a - b for a, b in pairs])))
    assert disp["statistic"]["value"] == pytest.approx(per["ens"]["prompt"]["norm_dispersion"]
                                                       - per["bt"]["prompt"]["norm_dispersion"])
    assert len(per["bt"]["prompt"]["norms"]) == 3 * 4  # 3 shifted prompts x 4 responses
    assert all(len(f) == 2 for f in finals.values())
    # early warning: computed for the ensemble-trained policies, reported
    for r in res["methods"]["ppo-var-heads"]["runs"]:  # per head, but its KL weight uses the ensemble's std
        if True:
            assert r["early_warning"]["outcome"] in {
                "warned before downturn", "warned after downturn", "downturn without warning",
                "no gold downturn (false alarm)", "no gold downturn, no warning"}
    assert "ppo-var-heads" in res["early_warning"]
    assert "ppo-heads" not in res["early_warning"]  # one head alone: no ensemble std, no warning computed
    html = (out / "report.html").read_text()
    assert html.index("Claims of the seed papers") < html.index("Summary")
    assert "Early warning of reward hacking" in html and "Shifted sets" in html
    again = run_experiment(cfg, out, progress=False)
    assert again.executed == [] and "shift/sets" in again.skipped and "shift/scores/bt" in again.skipped
