"""Evaluation statistics against independent computations."""

import itertools
import math

import numpy as np
import pytest
import torch

from robust_rlhf.data.preferences import PreferencePair
from robust_rlhf.report.reward_eval import write_eval_report
from robust_rlhf.reward.evaluate import (
    affine_match,
    auroc,
    effective_rank,
    error_rate_by_bin,
    evaluate_rewards,
    expected_calibration_error,
    pair_uncertainty,
    spearman,
    text_uncertainty,
    uncertainty_quality,
    wilson_interval,
)
from robust_rlhf.reward.output import RewardOutput


def _brute_auroc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def test_auroc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    assert auroc(scores, labels) == pytest.approx(_brute_auroc(scores, labels))
    assert auroc(np.array([1.0, 2.0]), np.array([0, 1])) == 1.0
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_wilson_interval_known_value():
    # 8/10: Wilson 95% interval is (0.4902, 0.9433) (standard tables)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)


def test_ece_hand_worked():
    # two bins: probs 0.6 (acc 0.5) and 0.9 (acc 1.0), equal mass -> 0.5*0.1 + 0.5*0.1
    assert expected_calibration_error(np.array([0.6, 0.6, 0.9, 0.9]), np.array([1, 0, 1, 1])) == pytest.approx(0.1)


def test_effective_rank():
    assert effective_rank(torch.eye(4)) == pytest.approx(4.0)
    assert effective_rank(torch.ones(5, 3)) == pytest.approx(1.0, abs=1e-6)


def test_evaluate_rewards_against_numpy(tmp_path):
    g = torch.Generator().manual_seed(0)
    n, K = 80, 4
    c = torch.randn(n, K, generator=g) + 0.5
    r = torch.randn(n, K, generator=g)
    pairs = [PreferencePair("p", "c" * (i % 3 + 1), "r" * 2, subset="a" if i < 40 else "b") for i in range(n)]
    fc, fr = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    m, arrays = evaluate_rewards(RewardOutput(c), RewardOutput(r), pairs, fc, fr)
    cn, rn = c.numpy(), r.numpy()
    assert m["accuracy"] == pytest.approx(np.mean(cn.mean(1) > rn.mean(1)))
    assert m["accuracy_per_head"] == pytest.approx([np.mean(cn[:, k] > rn[:, k]) for k in range(K)])
    assert m["accuracy_by_aggregator"]["min"] == pytest.approx(np.mean(cn.min(1) > rn.min(1)))
    assert m["accuracy_by_aggregator"]["median"] == pytest.approx(np.mean(np.median(cn, 1) > np.median(rn, 1)))
    assert m["chosen_reward_variance"]["mean"] == pytest.approx(np.var(cn, axis=1, ddof=1).mean(), rel=1e-5)
    assert m["difference_variance"]["median"] == pytest.approx(np.median(np.var(cn - rn, axis=1, ddof=1)), rel=1e-5)
    d = cn - rn
    u = d.std(1, ddof=0)  # the heads' std of the margin (pair_uncertainty for point heads)
    assert m["uncertainty/auroc_misranked"] == pytest.approx(_brute_auroc(u, ~(cn.mean(1) > rn.mean(1))), rel=1e-5)
    assert m["accuracy_per_subset"]["a"]["num_pairs"] == 40
    # length baseline: chosen longer than rejected ("rr") when i % 3 == 2; equal when i % 3 == 1 (half credit)
    expected_len = np.mean([1.0 if i % 3 == 2 else 0.5 if i % 3 == 1 else 0.0 for i in range(n)])
    assert m["length_baseline_accuracy"] == pytest.approx(expected_len)
    h = np.concatenate([fc.numpy(), fr.numpy()]).astype(np.float64)
    norms = np.linalg.norm(h, axis=1)
    assert m["hidden_state"]["norm_dispersion"] == pytest.approx(norms.std(ddof=1) / norms.mean(), rel=1e-6)
    allr = np.concatenate([cn, rn])
    assert m["reward_scale"]["max_abs"] == pytest.approx(np.abs(allr).max())
    written = write_eval_report(m, arrays, tmp_path)
    assert {p.name for p in written} >= {"metrics.json", "accuracy.png", "variance_histograms.png", "uncertainty.png",
                                         "hidden_state_norms.png"}


def test_gaussian_outputs_add_brme_aggregators():
    c = RewardOutput(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.1, 1.0], [1.0, 0.1]]))
    r = RewardOutput(torch.tensor([[0.0, 5.0], [1.0, 1.0]]), torch.tensor([[0.1, 1.0], [1.0, 0.1]]))
    pairs = [PreferencePair("", "a", "b")] * 2
    m, _ = evaluate_rewards(c, r, pairs)
    # nominal = mean of the lowest-std head: chosen [1, 2] vs rejected [0, 1] -> both correct
    assert m["accuracy_by_aggregator"]["brme_nominal"] == 1.0
    # mean: chosen [0.5, 1] vs rejected [2.5, 1] -> 0 correct (tie is not correct)
    assert m["accuracy"] == 0.0


def test_pair_uncertainty_hand_worked_and_mixture_monte_carlo():
    # 2 heads, margins d = [1, 3] -> var (divisor K) = 1; s_c = 1, s_r = 0 -> mean s^2 = 1 -> u = sqrt(2)
    c = RewardOutput(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 1.0]]))
    r = RewardOutput(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    assert pair_uncertainty(c, r)[0] == pytest.approx(math.sqrt(2))
    # point heads: the heads' std of the margin with divisor K
    assert pair_uncertainty(RewardOutput(c.per_head), RewardOutput(r.per_head))[0] == pytest.approx(1.0)
    assert pair_uncertainty(RewardOutput(torch.ones(3, 1)), RewardOutput(torch.zeros(3, 1))) is None
    # Monte-Carlo of the mixture: pick a head uniformly, draw r_c, r_r from its Gaussians
    rng = np.random.default_rng(0)
    mc, sc = np.array([0.5, -1.0, 2.0]), np.array([0.3, 1.2, 0.7])
    mr, sr = np.array([0.0, 0.4, 1.0]), np.array([0.9, 0.2, 0.5])
    k = rng.integers(0, 3, 400_000)
    d = rng.normal(mc[k], sc[k]) - rng.normal(mr[k], sr[k])
    u = pair_uncertainty(RewardOutput(torch.tensor(mc[None]), torch.tensor(sc[None])), RewardOutput(torch.tensor(mr[None]), torch.tensor(sr[None])))
    assert u[0] == pytest.approx(d.std(), rel=0.01)
    assert text_uncertainty(RewardOutput(torch.tensor(mc[None]), torch.tensor(sc[None])))[0] == pytest.approx(
        rng.normal(mc[k], sc[k]).std(), rel=0.01)


def test_error_rate_by_bin_and_affine_match_and_spearman():
    centres, rates, counts = error_rate_by_bin(np.array([6, 1, 2, 3, 4, 5.0]), np.array([1, 0, 0, 1, 0, 1]), 3)
    # sorted scores 1..6 with errors [0, 0, 1, 0, 1, 1] -> bins {1,2}, {3,4}, {5,6}
    assert centres == [1.5, 3.5, 5.5] and rates == [0.0, 0.5, 1.0] and counts == [2, 2, 2]
    r = np.array([0.0, 1.0, 2.0, 3.0])
    a, b, err = affine_match(r, 2 * r + 1)
    assert (a, b) == (pytest.approx(2.0), pytest.approx(1.0)) and err == pytest.approx(np.zeros(4), abs=1e-12)
    gold = np.array([1.0, 0.0, 4.0, 3.0])
    a, b, err = affine_match(r, gold)
    pa, pb = np.polyfit(r, gold, 1)
    assert (a, b) == (pytest.approx(pa), pytest.approx(pb)) and err == pytest.approx(np.abs(gold - pa * r - pb))
    from scipy.stats import spearmanr

    x, y = np.array([1, 2, 2, 5, 3.0]), np.array([0.1, 0.4, 0.3, 0.2, 0.9])
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_uncertainty_quality_hand_worked():
    # 4 pairs, 2 point heads. Margins per head and their mean:
    # pair 0: [2, 2] mean 2 (right, u 0); pair 1: [1, -1] mean 0 (misranked: tie, u 1)
    # pair 2: [-0.5, -1.5] mean -1 (misranked, u 0.5); pair 3: [3, 1] mean 2 (right, u 1)
    dc = torch.tensor([[2.0, 2.0], [1.0, -1.0], [-0.5, -1.5], [3.0, 1.0]])
    c, r = RewardOutput(dc), RewardOutput(torch.zeros(4, 2))
    m, arrays = uncertainty_quality(c, r, bins=2)
    assert arrays["pair_uncertainty"] == pytest.approx([0.0, 1.0, 0.5, 1.0])
    # positives (misranked) u = {1, 0.5}, negatives {0, 1}: pairs (1>0, 1=1 half, .5>0, .5<1) -> 2.5/4
    assert m["uncertainty/auroc_misranked"] == pytest.approx(0.625)
    # -|m|: positives {0, -1}, negatives {-2, -2}: all positives higher -> 1
    assert m["uncertainty/auroc_misranked_small_margin"] == 1.0
    assert m["uncertainty/misranked_rate"] == 0.5
    # bins of u sorted [0 (right), .5 (mis), 1 (mis), 1 (right)] -> [0.5, 0.5]
    assert m["uncertainty/misranked_rate_by_uncertainty_bin"] == [0.5, 0.5]
    assert "uncertainty/per_head_mean_std" not in m and "uncertainty/auroc_gold_abs_error" not in m
    # Gaussian heads: learned-std metrics; head 0 misranks pair 2 only, where its s is largest
    s = torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.9, 0.1], [0.1, 0.3]])
    mg, _ = uncertainty_quality(RewardOutput(dc, s), RewardOutput(torch.zeros(4, 2), s))
    assert mg["uncertainty/per_head_mean_std"] == pytest.approx([0.3, 0.15])
    assert mg["uncertainty/auroc_misranked_per_head_std"][0] == 1.0
    # gold: texts' mean rewards [2, 0, -1, 2, 0, 0, 0, 0]; gold = reward except one text off by 3
    gc, gr = np.array([2.0, 0.0, -1.0, 2.0]), np.array([0.0, 3.0, 0.0, 0.0])
    mg, _ = uncertainty_quality(RewardOutput(dc, s), RewardOutput(torch.zeros(4, 2), s), gc, gr)
    assert mg["uncertainty/gold_affine_fit"]["a"] == pytest.approx(np.polyfit(
        [2, 0, -1, 2, 0, 0, 0, 0], np.concatenate([gc, gr]), 1)[0])
    assert 0.0 <= mg["uncertainty/auroc_gold_abs_error"] <= 1.0


def test_single_point_head_reports_the_margin_baseline_only(tmp_path):
    c, r = RewardOutput(torch.tensor([[2.0], [-0.1], [1.0]])), RewardOutput(torch.zeros(3, 1))
    pairs = [PreferencePair("", "a", "b")] * 3
    m, arrays = evaluate_rewards(c, r, pairs)
    assert m["uncertainty/auroc_misranked"] is None and "uncertainty_auroc_misranked" not in m
    assert m["uncertainty/auroc_misranked_small_margin"] == 1.0  # the misranked pair has the smallest |margin|
    write_eval_report(m, arrays, tmp_path)
    assert (tmp_path / "uncertainty.png").stat().st_size > 1000
