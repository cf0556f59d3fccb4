"""Evaluation statistics against independent computations."""

import itertools
import math

import numpy as np
import pytest
import torch

from robust_rlhf.data.preferences import PreferencePair
from robust_rlhf.reward.evaluate import (
    auroc,
    effective_rank,
    evaluate_rewards,
    expected_calibration_error,
    wilson_interval,
    write_eval_report,
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
    u = d.std(1, ddof=1)
    assert m["uncertainty_auroc_misranked"] == pytest.approx(_brute_auroc(u, ~(cn.mean(1) > rn.mean(1))), rel=1e-5)
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
