"""The lab's claim statistics (each against an independent computation) and a tiny `study` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from robust_rlhf.experiments.stats import (
    dispersion_difference,
    first_crossing,
    first_crossing_se,
    kendall_tau_b,
    matched_first,
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


def test_first_crossing_takes_the_first_segment_not_a_sorted_curve():
    # d goes 0, 1, 2, back to 1.5, then 3: the first time d reaches 1.5 is halfway between d = 1 and d = 2
    d, y = [0, 1, 2, 1.5, 3], [0, 1, 0.5, 2, 3]
    assert first_crossing(d, y, 1.5) == pytest.approx(0.75)
    assert first_crossing(d, y, 2.0) == pytest.approx(0.5)  # a point exactly at d*
    assert first_crossing(d, y, 4.0) is None  # never reached
    # se of the interpolation: w = 0.5 -> sqrt(0.25 * 0.1^2 + 0.25 * 0.2^2)
    assert first_crossing_se(d, [0, 0.1, 0.2, 0.3, 0.4], 1.5) == pytest.approx(math.sqrt(0.25 * 0.01 + 0.25 * 0.04))
    runs = [{"curve": {"d": d, "gold": y, "gold_se": [0.0] * 5}}, {"curve": {"d": [0, 1.0], "gold": [0, 0.5]}}]
    vals, ses = matched_first(runs, 1.5)
    assert vals == pytest.approx([0.75]) and ses == [0.0]  # the short run is not counted: matched count 1 of 2


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
    (validation-scaled), several samples per held-out prompt logged in eval_samples.jsonl with every
    head, replicate reward models as the unit of the reward-model claims, the shifted sets, the
    best-of-n study and its claims, early warning under the standard-error rule, Holm and MDE in
    every claims row, the claims table first in the report, and a cached re-run."""
    from robust_rlhf.experiments.config import load_experiment_config
    from robust_rlhf.experiments.overopt import run_experiment

    overrides = one_thread + [
        "reward_models=[{name: bt, preset: rm_tiny, overrides: {model.head_type: scalar, stage1.max_steps: 4,"
        " data.limit: null}, seeds: [0, 1]},"
        " {name: ens, preset: rm_tiny, overrides: {stage1.max_steps: 4, stage2.epochs: 3, data.limit: null},"
        " seeds: [0, 1]}]",
        "methods=[{name: ppo-heads, type: ppo, reward_model: ens, train_on: each_head, heads: [0, 1],"
        " aggregator: {name: max}},"
        " {name: ppo-var-heads, type: ppo, reward_model: ens, train_on: each_head, heads: [0, 1],"
        " overrides: {kl.variance_aware: true, kl.variance_scale: validation}}]",
        "baseline=ppo-heads", "early_warning.window=1", "policy_overrides.log.eval_every=1",
        "evaluation.samples_per_prompt=2",
        "shift.enabled=true", "shift.num_prompts=3",
        "bon_study.enabled=true", "bon_study.num_prompts=5", "bon_study.pool_size=4", "bon_study.n_boot=50",
        "claims=[{seed: '002', claim: lower variance, statistic: variance_ratio, treatment: ppo-var-heads,"
        " control: ppo-heads, direction: less},"
        " {seed: '002', claim: lower mean, statistic: gold_difference, treatment: ppo-var-heads, control: ppo-heads,"
        " direction: less},"
        " {seed: '001', claim: tau, statistic: kendall_tau_difference, treatment: ens, control: bt, direction: greater,"
        " shift: response},"
        " {seed: '001', claim: dispersion, statistic: dispersion_difference, treatment: ens, control: bt,"
        " direction: less, shift: prompt},"
        " {seed: '000', claim: conservative beats mean, statistic: bon_gold_difference, treatment: 'ens:lcb',"
        " control: 'ens:mean', direction: greater}]",
    ]
    cfg = load_experiment_config("experiment_tiny", overrides)
    out = tmp_path / "study"
    res = run_experiment(cfg, out, progress=False).results
    claims = res["claims"]
    assert [c["seed"] for c in claims] == ["002", "002", "001", "001", "000"]
    for c in claims:
        assert set(c) >= {"claim", "seed", "statistic", "ci95", "n_policies", "kl", "verdict", "verdict_holm", "mde",
                          "n_units", "p", "p_holm"}
        assert c["verdict"] == _rule(c["ci95"][0], c["ci95"][1], c["statistic"]["null"], c["statistic"]["direction"])
        if c["p_holm"] is None or c["p_holm"] >= 0.05:
            assert c["verdict_holm"] == "inconclusive"
    from robust_rlhf.experiments.stats import holm_adjust

    assert [c["p_holm"] for c in claims] == holm_adjust([c["p"] for c in claims])
    var, gold, tau, disp, bon = claims
    assert var["n_policies"] == {"ppo-var-heads": 2, "ppo-heads": 2} and var["statistic"]["null"] == 1.0
    assert var["n_units"]["unit"] == "policies" and var["n_units"]["ppo-heads"] == var["n_matched"]["ppo-heads"]
    assert set(var["kl"]) == {"ppo-var-heads", "ppo-heads", "matched_at"}
    # the matched gold is read at the first crossing of the stored curves
    d = math.sqrt(gold["kl"]["matched_at"])
    a, _ = matched_first(res["methods"]["ppo-var-heads"]["runs"], d)
    if a and gold["statistic"]["value"] is not None:
        b, _ = matched_first(res["methods"]["ppo-heads"]["runs"], d)
        assert gold["statistic"]["value"] == pytest.approx(np.mean(a) - np.mean(b))
    # reward-model claims: two independently trained reward models per arm are the unit
    assert tau["n_units"]["unit"] == "reward models" and tau["n_units"]["ens"] <= 2 and tau["n_units"]["bt"] <= 2
    assert disp["n_units"] == {"unit": "reward models", "ens": 2, "bt": 2}
    per = res["shift"]["reward_models"]
    assert set(per) == {"bt", "bt@s1", "ens", "ens@s1"}
    assert disp["statistic"]["value"] == pytest.approx(
        np.mean([per[k]["prompt"]["norm_dispersion"] for k in ("ens", "ens@s1")])
        - np.mean([per[k]["prompt"]["norm_dispersion"] for k in ("bt", "bt@s1")]))
    assert "paired_over_prompts" in tau["tests"] and "p_sign" in tau["tests"]["paired_over_prompts"]
    # best-of-n study: every aggregator of the ensemble, the one-head proxy as mean only, gold at n = 1..4
    bs = res["bon_study"]
    assert bs["num_prompts"] == 5 and bs["pool_size"] == 4 and bs["n"] == [1, 2, 3, 4]
    assert set(bs["reward_models"]["bt"]) == {"mean"}
    assert set(bs["reward_models"]["ens"]) == {"mean", "min", "max", "lcb", "uwo", "lcb_norm", "uwo_norm", "brme_l0"}
    assert bon["n_units"] == {"unit": "prompts", "ens:lcb": 5, "ens:mean": 5}
    pool = json.loads((out / "units" / "bon" / "pool" / "pool.json").read_text())
    g1 = np.mean(pool["gold"])  # best-of-1 = the reference policy's mean gold, whatever the proxy
    assert bs["reward_models"]["ens"]["lcb"]["gold"][0] == pytest.approx(g1)
    # per-sample evaluation log: every evaluation step x prompts x samples, every head of the ensemble
    run_dir = out / "units" / "runs" / "ppo-heads" / "s0-h1"
    rows = [json.loads(line) for line in (run_dir / "eval_samples.jsonl").read_text().splitlines()]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if m.get("gold_reward") is not None]
    assert sorted({r["step"] for r in rows}) == [m["step"] for m in evals]
    assert all(set(r) == {"step", "kl", "prompt", "response", "per_head", "gold"} for r in rows)
    assert all(len(r["per_head"]) == 3 and r["kl"] >= 0 for r in rows)  # trained on head 1, scored by all 3
    for m in evals:
        mine = [r for r in rows if r["step"] == m["step"]]
        assert len(mine) == m["gold/num_samples"] == 2 * len({r["prompt"] for r in mine})
        assert m["gold_reward"] == pytest.approx(np.mean([r["gold"] for r in mine]))
        assert m["gold/kl"] == pytest.approx(np.mean([r["kl"] for r in mine]))
        assert m["gold/reward_se"] == pytest.approx(np.std([r["gold"] for r in mine], ddof=1) / math.sqrt(len(mine)))
    # early warning: every ensemble run now, per-head ones included
    assert "ppo-heads" in res["early_warning"] and "ppo-var-heads" in res["early_warning"]
    from robust_rlhf.experiments.stats import EW_OUTCOMES

    for r in res["methods"]["ppo-heads"]["runs"]:
        assert r["early_warning"]["outcome"] in EW_OUTCOMES
    html = (out / "report.html").read_text()
    assert html.index("Claims of the seed papers") < html.index("Summary")
    assert "verdict (Holm)" in html and "MDE (80 %)" in html and "Best-of-n study" in html
    assert "Early warning of reward hacking" in html and "Shifted sets" in html
    again = run_experiment(cfg, out, progress=False)
    assert again.executed == [] and "shift/sets" in again.skipped and "bon/pool" in again.skipped


def test_study_bon_preset_shares_the_studys_expensive_units(tmp_path):
    """experiment_study_bon is the part of experiment_study without policies: its data, reward-model and
    best-of-n units must carry experiment_study's fingerprints, so running the full study into its
    folder reuses them (docs/experiments.md)."""
    from robust_rlhf.experiments import overopt
    from robust_rlhf.experiments.config import expanded_methods, load_experiment_config

    def units(name: str) -> dict[str, str]:
        cfg = load_experiment_config(name)
        plan = overopt._plan(cfg, tmp_path, overopt.load_prompts(cfg.prompts), expanded_methods(cfg))
        return {u.key: u.fingerprint for u in [plan.data, *plan.rm_units.values(), *plan.bon_units.values()]}

    part, full = units("experiment_study_bon"), units("experiment_study")
    assert set(full) == set(part)  # the same proxies (deep5, laplace32 included): the part drops only the policies
    assert part == full
    assert {"rm/bt@s4", "rm/bsr@s4", "bon/pool", "bon/scores/brme4"} <= set(full)
