"""The study's power instrument, each piece against a hand computation or an independent one:
Holm, the minimum detectable effect, sign / Wilcoxon beside t, the random-effects variance
decomposition, the net-of-noise variance ratio, the exact per-token KL, the early-warning rule,
the best-of-n study's per-prompt curves and the claims rows built from them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from robust_rlhf.experiments.stats import (
    early_warning_se,
    holm_adjust,
    holm_alpha,
    mde_t,
    mde_variance_ratio,
    net_variance_ratio,
    paired_tests,
    variance_components,
    welch_test,
)


# ----------------------------------------------------------------------------- Holm
def test_holm_hand_worked():
    # p = .01, .04, .03, .005 (m = 4); sorted .005, .01, .03, .04 -> 4*.005=.02, 3*.01=.03, 2*.03=.06,
    # 1*.04=.04 -> running max .02, .03, .06, .06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_alpha([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.05 / 3, 0.05, 0.025, 0.0125])
    # a row with no test does not count in m
    assert holm_adjust([0.02, None, 0.5]) == [pytest.approx(0.04), None, pytest.approx(0.5)]
    assert holm_adjust([0.9, 0.3]) == pytest.approx([0.9, 0.6])  # 2 * 0.3, then max(0.6, 0.9)
    assert holm_adjust([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


# ----------------------------------------------------------------------------- minimum detectable effect
def test_mde_hand_values():
    # normal: (z_.975 + z_.80) * se = (1.959964 + 0.841621) * 0.1
    assert mde_t(0.1, None) == pytest.approx(0.2801585, rel=1e-6)
    # Student t, df = 10: t_.975 = 2.228139, t_.80 = 0.879058 (tables)
    assert mde_t(0.1, 10) == pytest.approx(0.1 * (2.228139 + 0.879058), rel=1e-5)
    # Holm's first step with 4 claims: alpha = 0.0125, z_.99375 = 2.497705
    assert mde_t(1.0, None, alpha=0.0125) == pytest.approx(2.497705 + 0.841621, rel=1e-5)
    assert mde_t(None, 3) is None and mde_t(0.0, 3) is None


def test_mde_variance_ratio_has_the_stated_power():
    """Under the returned ratio rho, the two-sided F-test rejects with probability 0.8 (F cdf through
    the regularised incomplete beta function, independently of scipy.stats.f)."""
    from scipy.special import betainc

    d1, d2 = 7, 7
    cdf = lambda x: betainc(d1 / 2, d2 / 2, d1 * x / (d1 * x + d2))  # noqa: E731
    from scipy.optimize import brentq

    lo_crit = brentq(lambda x: cdf(x) - 0.025, 1e-6, 1)  # reject "less" when R < lo_crit
    rho = mde_variance_ratio(8, 8, 0.05, 0.8, "less")
    assert rho < 1 and cdf(lo_crit / rho) == pytest.approx(0.8, abs=1e-6)
    hi_crit = brentq(lambda x: cdf(x) - 0.975, 1, 100)
    rho_g = mde_variance_ratio(8, 8, 0.05, 0.8, "greater")
    assert 1 - cdf(hi_crit / rho_g) == pytest.approx(0.8, abs=1e-6)
    assert mde_variance_ratio(1, 8) is None


def test_mde_is_what_a_simulated_test_detects_80_percent_of_the_time():
    from scipy import stats

    rng = np.random.default_rng(0)
    n, sd = 40, 1.0
    se = sd * math.sqrt(2 / n)
    effect = mde_t(se, None)
    a, b = rng.normal(effect, sd, (4000, n)), rng.normal(0, sd, (4000, n))
    power = float((stats.ttest_ind(a, b, axis=1).pvalue < 0.05).mean())
    assert power == pytest.approx(0.8, abs=0.03)


# ----------------------------------------------------------------------------- sign / Wilcoxon beside t
def test_paired_tests_hand_values():
    # 7 positive, 1 negative, 1 zero (dropped), 1 NaN (dropped): sign p = 2 * (1 + 8) / 2^8
    a = [1, 2, 3, 4, 5, 6, 7, -1, 0.5, np.nan]
    b = [0, 0, 0, 0, 0, 0, 0, 0, 0.5, 0]
    r = paired_tests(a, b)
    assert r["n"] == 9 and r["positive"] == 7 and r["negative"] == 1 and r["n_nonzero"] == 8
    assert r["p_sign"] == pytest.approx(2 * 9 / 256)
    # Wilcoxon: 5 positive differences, exact two-sided p = 2 / 2^5
    assert paired_tests([1, 2, 3, 4, 5], [0] * 5)["p_wilcoxon"] == pytest.approx(2 / 32)
    # t: differences 1, 2, 3: mean 2, se 1/sqrt 3, t = 2 sqrt 3 on 2 df -> p = 2 * (1 - T_2(3.4641)) = 0.07418
    t = paired_tests([2, 4, 6], [1, 2, 3])
    assert t["p_t"] == pytest.approx(0.0741799, rel=1e-4) and t["se"] == pytest.approx(1 / math.sqrt(3))


def test_welch_test_matches_the_formula():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    r = welch_test(a, b)
    assert r["se"] == pytest.approx(math.sqrt(va + vb))
    assert r["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2))
    from scipy import stats

    assert r["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)


# ----------------------------------------------------------------------------- variance decomposition
def test_variance_components_hand_worked():
    # groups 1,2,3 / 4,5,6 / 7,8,9: means 2, 5, 8, grand 5; MSB = 3 (9 + 0 + 9) / 2 = 27, MSW = 6 / 6 = 1,
    # sigma2_between = (27 - 1) / 3
    r = variance_components([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert r["msb"] == pytest.approx(27) and r["msw"] == pytest.approx(1) and r["n0"] == pytest.approx(3)
    assert r["between"] == pytest.approx(26 / 3) and r["within"] == pytest.approx(1)
    # unequal groups 1,3 / 2,4,6: means 2, 4, grand 3.2; MSB = 2*1.44 + 3*0.64 = 4.8, MSW = (2 + 8) / 3,
    # n0 = (5 - 13/5) / 1 = 2.4
    r = variance_components([[1, 3], [2, 4, 6]])
    assert r["msb"] == pytest.approx(4.8) and r["msw"] == pytest.approx(10 / 3) and r["n0"] == pytest.approx(2.4)
    assert r["between"] == pytest.approx((4.8 - 10 / 3) / 2.4)


def test_net_variance_ratio_hand_worked_and_removes_noise():
    # a: var 1, noise 0.25 -> 0.75; b: var 4, noise 1 -> 3; ratio 0.25
    r = net_variance_ratio([1, 2, 3], [0.5] * 3, [0, 2, 4], [1.0] * 3)
    assert r["between"] == pytest.approx([0.75, 3.0]) and r["ratio"] == pytest.approx(0.25)
    assert r["raw_ratio"] == pytest.approx(0.25 / 1.0)
    # many policies with the same between-variance 0.04 but different noise: the raw ratio is far from 1,
    # the net one is not (and agrees with the ANOVA decomposition on the samples)
    rng = np.random.default_rng(3)
    k, n = 400, 16
    groups_a = [rng.normal(m, 0.8, n) for m in rng.normal(0, 0.2, k)]  # noise var of a mean: 0.64 / 16 = 0.04
    groups_b = [rng.normal(m, 0.2, n) for m in rng.normal(0, 0.2, k)]  # 0.04 / 16 = 0.0025
    means = lambda gs: [g.mean() for g in gs]  # noqa: E731
    ses = lambda gs: [g.std(ddof=1) / math.sqrt(n) for g in gs]  # noqa: E731
    r = net_variance_ratio(means(groups_a), ses(groups_a), means(groups_b), ses(groups_b), n_boot=500)
    assert r["raw_ratio"] > 1.5
    assert r["ratio"] == pytest.approx(1.0, abs=0.3) and r["ci_low"] < 1 < r["ci_high"]
    assert r["between"][0] == pytest.approx(variance_components(groups_a)["between"], rel=0.02)


# ----------------------------------------------------------------------------- exact KL
def test_exact_token_kl_hand_value_and_never_negative():
    from robust_rlhf.policy.recipe import exact_token_kl

    p, q = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.25, 0.75]).log()
    kl = exact_token_kl(p.view(1, 1, 2), q.view(1, 1, 2))
    assert kl.shape == (1, 1) and float(kl) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    g = torch.Generator().manual_seed(0)
    a = torch.log_softmax(torch.randn(3, 5, 50, generator=g), -1)
    b = torch.log_softmax(torch.randn(3, 5, 50, generator=g), -1)
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=a),
                                            torch.distributions.Categorical(logits=b))
    assert torch.allclose(exact_token_kl(a, b), ref, atol=1e-5)
    assert (exact_token_kl(a, a) >= 0).all() and float(exact_token_kl(a, a).abs().max()) < 1e-6


# ----------------------------------------------------------------------------- early warning
def test_early_warning_se_hand_worked():
    steps = [0, 2, 4, 6, 8, 10]
    std = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]  # window 2: earliest warning at steps[3] = 6; mean(1, 2) = 1.5 > 1.25
    gold = [0.1, 0.2, 0.5, 0.45, 0.2, 0.1]
    se = [0.05] * 6
    res = early_warning_se(steps, std, gold, se, window=2, rise=0.25, se_multiple=2.0)
    # 0.45 is 0.05 below the best 0.5: < 2 * sqrt(2) * 0.05 = 0.141 -> not a downturn; 0.2 is 0.3 below -> downturn
    assert res["warning_step"] == 6 and res["earliest_warning_step"] == 6
    assert res["peak_step"] == 4 and res["downturn_step"] == 8
    assert res["outcome"] == "peak before earliest warning"  # the peak (4) precedes the earliest warning (6)
    late_peak = early_warning_se(steps, std, [0.1, 0.2, 0.3, 0.6, 0.6, 0.1], se, 2, 0.25, 2.0)
    assert late_peak["peak_step"] == 6 and late_peak["outcome"] == "warned before downturn"
    assert late_peak["lead_eval_steps"] == pytest.approx(0.0)
    noisy = early_warning_se(steps, [1.0] * 6, [0.1, 0.5, 0.45, 0.42, 0.4, 0.41], [0.1] * 6, 2, 0.25, 2.0)
    assert noisy["outcome"] == "no gold downturn, no warning"  # drops of 0.1 against se 0.14 are noise
    quiet = early_warning_se(steps, [1.0] * 6, [0.1, 0.2, 0.3, 0.6, 0.6, 0.1], se, 2, 0.25, 2.0)
    assert quiet["outcome"] == "downturn without warning"


# ----------------------------------------------------------------------------- best-of-n study
def test_per_prompt_bon_equals_enumerating_every_subset():
    from robust_rlhf.experiments.bon_study import bootstrap_curve, per_prompt_bon

    rng = np.random.default_rng(0)
    P, N = 3, 5
    proxy, gold = rng.normal(size=(P, N)), rng.normal(size=(P, N))
    got = per_prompt_bon(proxy, gold)
    for p in range(P):
        for n in range(1, N + 1):
            subsets = list(itertools.combinations(range(N), n))
            brute = np.mean([gold[p, max(s, key=lambda i: proxy[p, i])] for s in subsets])
            assert got[p, n - 1] == pytest.approx(brute, abs=1e-12)
    c = bootstrap_curve(got, n_boot=400, seed=0)
    assert c["gold"] == pytest.approx(got.mean(0).tolist())
    assert all(lo <= m <= hi for lo, m, hi in zip(c["ci_low"], c["gold"], c["ci_high"]))


def test_bon_prompts_are_held_out_from_the_builtin_task():
    from robust_rlhf.data.prompts import builtin_prompts
    from robust_rlhf.experiments.bon_study import HELD_OUT_PROMPTS

    assert len(HELD_OUT_PROMPTS) >= 200 and len(set(HELD_OUT_PROMPTS)) == len(HELD_OUT_PROMPTS)
    assert not set(HELD_OUT_PROMPTS) & set(builtin_prompts())


def test_bon_claim_row_mde_and_holm_by_hand():
    """build_claims on a hand-made results dict: a best-of-n claim paired over 11 prompts (df 10) and a
    second one; p, Holm and the MDE at the Holm level checked by hand."""
    from scipy import stats

    from robust_rlhf.experiments.claims import build_claims
    from robust_rlhf.experiments.config import ClaimSpec

    diffs = np.array([0.3, 0.1, 0.2, 0.25, 0.15, 0.05, 0.35, 0.2, 0.1, 0.3, 0.2])
    weak = np.array([0.1, -0.1, 0.05, -0.05, 0.0, 0.1, -0.1, 0.02, 0.03, -0.02, 0.01])
    base = np.zeros(11)
    results = {"bon_study": {"claim_n": 64, "kl": [0.0] * 64,
                             "per_prompt": {"e:lcb": diffs.tolist(), "e:mean": base.tolist(),
                                            "e:max": weak.tolist(), "e:min": base.tolist()}}}
    specs = [ClaimSpec(claim="lcb beats mean", seed="000", statistic="bon_gold_difference", treatment="e:lcb",
                       control="e:mean", direction="greater"),
             ClaimSpec(claim="max below min", seed="000", statistic="bon_gold_difference", treatment="e:max",
                       control="e:min", direction="less")]
    strong_row, weak_row = build_claims(specs, results)
    se = diffs.std(ddof=1) / math.sqrt(11)
    p_strong = 2 * stats.t.sf(diffs.mean() / se, 10)
    assert strong_row["p"] == pytest.approx(p_strong)
    assert strong_row["p_holm"] == pytest.approx(2 * p_strong)  # the smaller p of two: x 2
    assert strong_row["alpha_holm"] == pytest.approx(0.025)
    # t_{1-0.0125, 10} = 2.633767, t_{0.8, 10} = 0.879058 (tables)
    assert strong_row["mde"] == pytest.approx((2.633767 + 0.879058) * se, rel=1e-5)
    assert strong_row["verdict"] == "reproduced" and strong_row["verdict_holm"] == "reproduced"
    assert strong_row["n_units"] == {"unit": "prompts", "e:lcb": 11, "e:mean": 11}
    assert weak_row["alpha_holm"] == pytest.approx(0.05) and weak_row["verdict_holm"] == "inconclusive"
    assert weak_row["p_holm"] == pytest.approx(max(2 * p_strong, weak_row["p"]))
    assert weak_row["tests"]["paired_over_prompts"]["p_sign"] is not None


def test_eval_samples_file_replaces_a_re_evaluated_step(tmp_path):
    """A resumed run re-evaluating step 2 replaces that step's rows; other steps stay, in order."""
    import json

    from robust_rlhf.policy.recipe import append_eval_samples

    path = tmp_path / "eval_samples.jsonl"
    row = lambda g: {"kl": 0.1, "prompt": "p", "response": "r", "per_head": [0.0, 1.0], "gold": g}  # noqa: E731
    append_eval_samples(path, 1, [row(0.1), row(0.2)])
    append_eval_samples(path, 2, [row(0.3)])
    append_eval_samples(path, 2, [row(0.4), row(0.5)])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["gold"]) for r in rows] == [(1, 0.1), (1, 0.2), (2, 0.4), (2, 0.5)]
    assert set(rows[0]) == {"step", "kl", "prompt", "response", "per_head", "gold"}


def test_bon_norm_aggregators_standardise_members_before_the_spread():
    """Two members with an offset of 9: the raw mean - std picks the text the members' offsets make look
    certain; on standardised heads ((r_k - m_k) / s_k, hand-worked below) the other text wins."""
    from robust_rlhf.experiments.bon_study import analyse_bon_study
    from robust_rlhf.experiments.config import BonStudyConfig

    # raw: text 0 mean 5.5, std sqrt(40.5) -> lcb -0.86; text 1 mean 5.75, std sqrt(55.125) -> lcb -1.67
    # standardised by means (10, 0), stds (1, 1): text 0 (0, 1) -> lcb 0.5 - 0.707; text 1 (1, 0.5) -> 0.75 - 0.354
    scores = {"per_head": [[10.0, 1.0], [11.0, 0.5]], "per_head_std": None,
              "head_stats": {"mean": [10.0, 0.0], "std": [1.0, 1.0]}}
    out = analyse_bon_study(BonStudyConfig(enabled=True, n_boot=10), {"gold": [[0.0, 1.0]]}, {"rm": scores},
                            {"rm": {"head_type": "scalar", "num_heads": 2}}, 0.95)
    pp = out["per_prompt"]
    assert (pp["rm:lcb"], pp["rm:lcb_norm"]) == ([0.0], [1.0])
    assert pp["rm:mean"] == [1.0] and pp["rm:uwo_norm"] == [1.0]  # uwo_norm: 0.5 - 0.25 vs 0.75 - 0.0625
    assert {"lcb_norm", "uwo_norm"} <= set(out["reward_models"]["rm"])
