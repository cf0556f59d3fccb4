"""Tests for the theory checks (robust_rlhf.experiments.bandit, kl_policies, scoring) and `robust-rlhf simulate` (seed 002 §3, seed 000)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from robust_rlhf.cli.simulate import register
from robust_rlhf.errors import UserError
from robust_rlhf.experiments import bandit, kl_policies, scoring, theory_common

# ------------------------------------------------------------------ bandit closed forms


def test_policies_hand_worked_2d():
    # R^ = (3, 4), pi0 = (.5, .5), eps = 1:  ||R^|| = 5  ->  pi1 = pi0 + (3, 4)/5 = (1.1, 1.3).
    r_hat = np.array([3.0, 4.0])
    pi0 = np.array([0.5, 0.5])
    np.testing.assert_allclose(bandit.vanilla_policy(r_hat, pi0, 1.0), [1.1, 1.3])
    # Sigma = diag(1, 4): Sigma^-1 R^ = (3, 1), R^T Sigma^-1 R^ = 9 + 4 = 13, eps~ = 1 * 1 = 1
    # -> pi2 = pi0 + (3, 1)/sqrt(13).
    pi2 = bandit.variance_aware_policy(r_hat, pi0, np.array([1.0, 4.0]), 1.0)
    np.testing.assert_allclose(pi2, pi0 + np.array([3.0, 1.0]) / math.sqrt(13))


def test_constraints_hold_with_equality_batched():
    rng = np.random.default_rng(1)
    d, t, eps = 50, 200, 0.7
    variances = rng.uniform(0.5, 20.0, d)
    pi0 = np.full(d, 1 / d)
    r_hat = rng.normal(0.0, 3.0, (t, d))  # (T, d)
    pi1 = bandit.vanilla_policy(r_hat, pi0, eps)
    pi2 = bandit.variance_aware_policy(r_hat, pi0, variances, eps)
    np.testing.assert_allclose(((pi1 - pi0) ** 2).sum(1), eps, rtol=1e-12)
    eps_tilde = variances.min() * eps
    np.testing.assert_allclose((((pi2 - pi0) ** 2) * variances).sum(1), eps_tilde, rtol=1e-12)


def test_policies_are_the_argmax_of_their_constraint_sets():
    # No point of the ball / ellipsoid (sampled on its boundary) beats the closed form on pi^T R^.
    rng = np.random.default_rng(2)
    d, eps = 6, 0.3
    variances = rng.uniform(1.0, 9.0, d)
    pi0 = np.full(d, 1 / d)
    r_hat = rng.normal(size=d)
    u = rng.normal(size=(20_000, d))
    ball = pi0 + math.sqrt(eps) * u / np.linalg.norm(u, axis=1, keepdims=True)
    assert (ball @ r_hat).max() <= bandit.vanilla_policy(r_hat, pi0, eps) @ r_hat + 1e-12
    eps_tilde = variances.min() * eps
    ell = u / np.sqrt((u**2 * variances).sum(1, keepdims=True)) * math.sqrt(eps_tilde) + pi0
    assert (ell @ r_hat).max() <= bandit.variance_aware_policy(r_hat, pi0, variances, eps) @ r_hat + 1e-12


def test_theory_probabilities_hand_worked():
    # r* = (1, 1), Sigma = diag(1, 4): ||r*||^2 = 2, r*^T Sigma r* = 5, r*^T Sigma^-1 r* = 1.25.
    p1, p2 = bandit.underperform_probabilities(np.array([1.0, 1.0]), np.array([1.0, 4.0]))
    assert p1 == pytest.approx(norm.cdf(-2 / math.sqrt(5)), abs=1e-12)  # 0.1855
    assert p2 == pytest.approx(norm.cdf(-math.sqrt(1.25)), abs=1e-12)  # 0.1318
    assert p2 <= p1  # Theorem 3.3
    # Homogeneous variances: the two policies coincide, so do the probabilities.
    q1, q2 = bandit.underperform_probabilities(np.array([0.3, -0.2, 0.5]), np.full(3, 2.0))
    assert q1 == pytest.approx(q2, abs=1e-12)


def test_monte_carlo_matches_theorem_3_3_within_4_standard_errors():
    # Small d, noisy estimates: both probabilities are moderate (~0.3 and ~0.2), not ~0.
    cfg = bandit.BanditConfig(dim=5, var_low=0.5, var_high=10.0, r_star_scale=0.7, epsilon=0.5,
                              trials=40_000, seed=3)
    res, arrays = bandit.run_bandit(cfg)
    for name in ("vanilla", "variance_aware"):
        p_th = res[f"p_under_{name}_theory"]
        assert 0.05 < p_th < 0.95, (name, p_th)
        se = math.sqrt(p_th * (1 - p_th) / cfg.trials)
        assert abs(res[f"p_under_{name}_empirical"] - p_th) < 4 * se, (name, res[f"p_under_{name}_empirical"], p_th)
    assert res["p_under_variance_aware_theory"] < res["p_under_vanilla_theory"]
    # Returns: independent recomputation of one return from the formula pi0^T r* + c R^T r*.
    assert res["return_std_variance_aware"] < res["return_std_vanilla"]
    assert res["trials"] == 40_000 and res["dim"] == 5
    assert arrays["returns_vanilla"].shape == (40_000,)


def test_run_bandit_matches_direct_formula():
    # The runner's returns equal pi0^T r* + sqrt(eps) R^T r* / ||R^|| on the same noise.
    cfg = bandit.BanditConfig(dim=7, var_low=1.0, var_high=5.0, trials=50, seed=11, epsilon=2.0)
    res, arrays = bandit.run_bandit(cfg)
    r, v, pi0 = arrays["r_star"], arrays["variances"], arrays["pi0"]
    _, _, rng_noise = theory_common._streams(11)
    r_hat = r + np.sqrt(v) * rng_noise.standard_normal((50, 7))
    expected1 = pi0 @ r + math.sqrt(2.0) * (r_hat @ r) / np.linalg.norm(r_hat, axis=1)
    w = r_hat / v
    expected2 = pi0 @ r + math.sqrt(2.0 * v.min()) * (w @ r) / np.sqrt((r_hat * w).sum(1))
    np.testing.assert_allclose(arrays["returns_vanilla"], expected1, rtol=1e-10)
    np.testing.assert_allclose(arrays["returns_variance_aware"], expected2, rtol=1e-10)


# ------------------------------------------------------------------ softmax (Thm 3.6)


def test_gibbs_policy_and_kl_hand_worked():
    # pi0 = (1/2, 1/2), scores (0, log 3), beta = 1  ->  pi = (1/4, 3/4).
    pi = kl_policies.gibbs_policy(np.array([[0.0, math.log(3.0)]]), np.array([0.5, 0.5]), np.array([1.0]))
    np.testing.assert_allclose(pi, [[0.25, 0.75]])
    # KL = 1/4 log(1/2) + 3/4 log(3/2)
    kl = kl_policies.kl_to_reference(pi, np.array([0.5, 0.5]))
    assert kl[0] == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))


def test_solve_beta_hits_target_kl():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(100, 30))
    pi0 = rng.dirichlet(np.ones(30))
    beta, kl = kl_policies.solve_beta_for_kl(scores, pi0, 0.5)
    np.testing.assert_allclose(kl, 0.5, atol=1e-9)
    np.testing.assert_allclose(kl_policies.kl_to_reference(kl_policies.gibbs_policy(scores, pi0, beta), pi0), 0.5, atol=1e-9)


def test_softmax_run_matches_kl_and_regret_nonnegative():
    cfg = kl_policies.SoftmaxConfig(actions=20, trials=300, kl=0.5, seed=5)
    res, arrays = kl_policies.run_softmax(cfg)
    assert res["kl_max_abs_error"] < 1e-8
    # The oracle is optimal within the KL ball, so no policy at the same KL beats it.
    assert arrays["regret_vanilla"].min() > -1e-8
    assert arrays["regret_variance_aware"].min() > -1e-8


# ------------------------------------------------------------------ Theorem 3.6: exact vs as printed


def test_exact_thm36_hand_worked_two_actions():
    # pi0 = (1/2, 1/2), R^ = (0, 0), sigma^2 = (1, 2), beta = 1.
    # Stationarity: pi_y = 1/2 exp(-mu / sigma_y^2 - 1). With t = exp(-mu/2):
    #   1/2 e^-1 (t^2 + t) = 1  ->  t = (-1 + sqrt(1 + 8e)) / 2 = 1.88465
    #   pi = (e^-1 t^2 / 2, e^-1 t / 2) = (0.65334, 0.34666)
    # The paper's form gives pi0 = (1/2, 1/2) (no reward, no move); the exact maximiser moves mass
    # to the low-variance action, because sum pi sigma^2 ln(pi/pi0) is not a divergence:
    #   J(exact) = -(0.65334 ln 1.30668 + 2 * 0.34666 ln 0.69332) = +0.0791 > J(pi0) = 0.
    t = (-1 + math.sqrt(1 + 8 * math.e)) / 2
    expected = np.array([t * t, t]) / (2 * math.e)
    pi0, var, r_hat = np.array([0.5, 0.5]), np.array([1.0, 2.0]), np.zeros(2)
    pi, mu = kl_policies.exact_variance_aware_policy(r_hat, var, pi0, 1.0)
    np.testing.assert_allclose(pi, expected, rtol=1e-12)
    assert mu == pytest.approx(-2 * math.log(t), rel=1e-12)
    np.testing.assert_allclose(kl_policies.paper_variance_aware_policy(r_hat, var, pi0, 1.0), pi0)
    j_exact = -(expected[0] * math.log(expected[0] / 0.5) + 2 * expected[1] * math.log(expected[1] / 0.5))
    assert kl_policies.variance_weighted_objective(pi, r_hat, var, pi0, 1.0) == pytest.approx(j_exact, rel=1e-12)
    assert j_exact == pytest.approx(0.0791, abs=1e-4)
    assert kl_policies.variance_weighted_objective(pi0, r_hat, var, pi0, 1.0) == 0.0


@pytest.mark.parametrize("seed, beta", [(0, 0.05), (1, 0.3), (2, 1.0), (3, 4.0)])
def test_exact_thm36_matches_a_general_optimiser_on_the_simplex(seed, beta):
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    k = 5
    r_hat, var, pi0 = rng.normal(size=k), rng.uniform(0.2, 4.0, k), rng.dirichlet(np.ones(k))

    def neg_objective(z):  # pi = softmax(z): any point of the open simplex
        p = np.exp(z - z.max())
        p /= p.sum()
        return -kl_policies.variance_weighted_objective(p, r_hat, var, pi0, beta)

    best = min((minimize(neg_objective, z0, method="BFGS", options={"gtol": 1e-12})
                for z0 in (np.zeros(k), np.log(pi0), rng.normal(size=k))), key=lambda res: res.fun)
    pi_num = np.exp(best.x - best.x.max())
    pi_num /= pi_num.sum()
    pi, _ = kl_policies.exact_variance_aware_policy(r_hat, var, pi0, beta)
    j_exact = kl_policies.variance_weighted_objective(pi, r_hat, var, pi0, beta)
    assert j_exact == pytest.approx(-best.fun, abs=1e-9)
    assert j_exact >= -best.fun - 1e-12  # nothing the optimiser finds beats the closed form
    np.testing.assert_allclose(pi, pi_num, atol=1e-4)
    # The paper's form is strictly worse on this objective when sigma^2 varies.
    pi_paper = kl_policies.paper_variance_aware_policy(r_hat, var, pi0, beta)
    assert kl_policies.variance_weighted_objective(pi_paper, r_hat, var, pi0, beta) < j_exact - 1e-6


def test_exact_thm36_stationarity_and_constant_variance():
    rng = np.random.default_rng(7)
    r_hat = rng.normal(size=(400, 30))  # (T, K)
    var = rng.uniform(0.1, 5.0, 30)
    pi0 = rng.dirichlet(np.ones(30))
    beta = np.geomspace(1e-3, 1e3, 400)  # (T,) extreme temperatures too
    pi, mu = kl_policies.exact_variance_aware_policy(r_hat, var, pi0, beta)
    # The unnormalised Lagrangian form itself sums to 1 at mu (no renormalisation needed).
    direct = pi0 * np.exp((r_hat - mu[:, None]) / (beta[:, None] * var) - 1.0)
    np.testing.assert_allclose(direct.sum(1), 1.0, atol=1e-10)
    np.testing.assert_allclose(pi, direct, atol=1e-10)
    # Constant sigma^2: mu is a normaliser again and the paper's form is exact.
    pi_c, _ = kl_policies.exact_variance_aware_policy(r_hat, np.full(30, 2.0), pi0, beta)
    np.testing.assert_allclose(pi_c, kl_policies.paper_variance_aware_policy(r_hat, np.full(30, 2.0), pi0, beta), atol=1e-12)
    with pytest.raises(UserError, match="> 0"):
        kl_policies.exact_variance_aware_policy(r_hat[0], var, pi0, 0.0)


def test_softmax_run_reports_exact_vs_paper_gap(tmp_path):
    res, arrays = kl_policies.run_softmax(kl_policies.SoftmaxConfig(actions=20, trials=300, kl=0.5, seed=5))
    ex = res["thm36_exact_vs_paper"]
    assert ex["objective_gap_min"] > -1e-10  # the exact form is never worse on its own objective
    assert ex["objective_gap_mean"] > 1e-4  # and strictly better when sigma^2 varies
    assert ex["kl_mean_paper"] == pytest.approx(0.5, abs=1e-8)
    np.testing.assert_allclose(arrays["objective_gap"].mean(), ex["objective_gap_mean"])
    # Constant variances: no gap.
    (tmp_path / "v.txt").write_text("1.5\n" * 20)
    res_c, _ = kl_policies.run_softmax(kl_policies.SoftmaxConfig(trials=50, kl=0.5, variances_file=str(tmp_path / "v.txt")))
    assert abs(res_c["thm36_exact_vs_paper"]["objective_gap_max"]) < 1e-10


# ------------------------------------------------------------------ scoring (seed 000)


def test_scoring_hand_worked_limits():
    # K=2, r* = (0, 1), action 0 perturbed by delta=5, beta tiny (near-greedy):
    # over-scoring picks action 0 (true 0) -> loss ~1; under-scoring keeps action 1 -> loss ~0.
    r_star = np.array([[0.0, 1.0]])
    mask = np.array([[True, False]])
    lo, lu = scoring.scoring_losses(r_star, mask, 5.0, np.array([0.5, 0.5]), 0.01)
    assert lo[0] == pytest.approx(1.0, abs=1e-6)
    assert lu[0] == pytest.approx(0.0, abs=1e-6)
    # Perturbing every action by the same constant changes nothing.
    lo, lu = scoring.scoring_losses(r_star, np.ones((1, 2), bool), 5.0, np.array([0.5, 0.5]), 0.3)
    assert abs(lo[0]) < 1e-12 and abs(lu[0]) < 1e-12


def test_random_subset_mask_has_exactly_m():
    mask = scoring.random_subset_mask(np.random.default_rng(0), 50, 12, 4)
    assert (mask.sum(1) == 4).all()


# ------------------------------------------------------------------ errors


def test_zero_estimate_is_an_error():
    with pytest.raises(UserError, match="all zeros"):
        bandit.vanilla_policy(np.zeros(3), np.full(3, 1 / 3), 1.0)
    with pytest.raises(UserError, match="all zeros"):
        bandit.variance_aware_policy(np.zeros((2, 3)), np.full(3, 1 / 3), np.ones(3), 1.0)


def test_zero_true_reward_is_an_error():
    with pytest.raises(UserError, match="r\\* is all zeros"):
        bandit.underperform_probabilities(np.zeros(3), np.ones(3))


@pytest.mark.parametrize("variances", [np.array([1.0, 0.0]), np.array([1.0, -2.0]), np.array([1.0, np.nan])])
def test_non_positive_variance_is_an_error(variances):
    with pytest.raises(UserError, match="variance #2"):
        bandit.variance_aware_policy(np.ones(2), np.full(2, 0.5), variances, 1.0)


@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_non_positive_epsilon_is_an_error(eps):
    with pytest.raises(UserError, match="must be > 0"):
        bandit.vanilla_policy(np.ones(2), np.full(2, 0.5), eps)


def test_file_errors_name_file_and_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n# only a comment\n")
    with pytest.raises(UserError, match="empty.txt is empty"):
        theory_common.read_vector_file(empty, "--variances")
    bad = tmp_path / "bad.txt"
    bad.write_text("1.0\n2.5\nabc\n")
    with pytest.raises(UserError, match="bad.txt line 3: 'abc' is not a number"):
        theory_common.read_vector_file(bad, "--r-star")
    with pytest.raises(UserError, match="not found"):
        theory_common.read_vector_file(tmp_path / "missing.txt", "--pi0")


def test_mismatched_lengths_are_an_error(tmp_path):
    (tmp_path / "v.txt").write_text("1\n2\n3\n4\n")
    (tmp_path / "r.txt").write_text("1\n2\n3\n")
    cfg = bandit.BanditConfig(variances_file=str(tmp_path / "v.txt"), r_star_file=str(tmp_path / "r.txt"), trials=10)
    with pytest.raises(UserError, match="r.txt has 3 values but --variances file .*v.txt gives dimension 4"):
        bandit.run_bandit(cfg)
    cfg = bandit.BanditConfig(dim=5, dim_explicit=True, variances_file=str(tmp_path / "v.txt"), trials=10)
    with pytest.raises(UserError, match="has 4 values but --dim gives dimension 5"):
        bandit.run_bandit(cfg)


def test_bad_pi0_and_unreachable_kl_are_errors(tmp_path):
    (tmp_path / "p.txt").write_text("0.5\n0.6\n")
    with pytest.raises(UserError, match="sums to 1.1"):
        bandit.run_bandit(bandit.BanditConfig(dim=2, dim_explicit=True, pi0_file=str(tmp_path / "p.txt"), trials=10))
    with pytest.raises(UserError, match="unreachable"):
        kl_policies.run_softmax(kl_policies.SoftmaxConfig(actions=4, kl=math.log(4) + 0.1, trials=10))


def test_scoring_bad_fraction_is_an_error():
    with pytest.raises(UserError, match="perturbs no action"):
        scoring.run_scoring(scoring.ScoringConfig(actions=10, fraction=0.01, trials=10))


# ------------------------------------------------------------------ CLI


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    register(sub)
    args = p.parse_args(argv)
    return args.func(args)


REQUIRED_BANDIT_KEYS = {
    "p_under_vanilla_empirical", "p_under_vanilla_theory", "p_under_variance_aware_empirical",
    "p_under_variance_aware_theory", "return_mean_vanilla", "return_std_vanilla",
    "return_mean_variance_aware", "return_std_variance_aware", "trials", "dim",
}


def test_cli_bandit_writes_results_and_png(tmp_path, capsys):
    out = tmp_path / "bandit"
    assert _cli(["simulate", "bandit", "--preset", "high-variability", "--dim", "20", "--trials", "500",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert REQUIRED_BANDIT_KEYS <= res.keys()
    assert res["dim"] == 20 and res["trials"] == 500 and res["preset"] == "high-variability"
    assert res["lambda_min"] >= 3.0 and res["lambda_max"] <= 100.0
    assert (out / "bandit.png").stat().st_size > 1000
    assert "results.json" in capsys.readouterr().out
    # The written r*/variances replay the exact problem through the file options.
    out2 = tmp_path / "replay"
    assert _cli(["simulate", "bandit", "--variances", str(out / "variances.txt"), "--r-star", str(out / "r_star.txt"),
                 "--trials", "500", "--out", str(out2)]) == 0
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["p_under_vanilla_theory"] == pytest.approx(res["p_under_vanilla_theory"], rel=1e-12)


def test_cli_softmax_and_scoring(tmp_path):
    assert _cli(["simulate", "softmax", "--actions", "10", "--trials", "200", "--out", str(tmp_path / "s")]) == 0
    res = json.loads((tmp_path / "s" / "results.json").read_text())
    assert {"return_mean_vanilla", "return_mean_variance_aware", "regret_mean_vanilla",
            "regret_mean_variance_aware", "kl_target"} <= res.keys()
    assert {"objective_mean_exact", "objective_mean_paper", "objective_gap_mean", "return_mean_exact",
            "return_mean_paper", "kl_mean_exact", "kl_mean_paper"} <= res["thm36_exact_vs_paper"].keys()
    assert (tmp_path / "s" / "softmax.png").exists()
    assert _cli(["simulate", "scoring", "--actions", "20", "--trials", "200", "--sweep-points", "5",
                 "--out", str(tmp_path / "c")]) == 0
    res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert {"loss_mean_over", "loss_mean_under", "verdict"} <= res.keys()
    assert (tmp_path / "c" / "scoring.png").exists()


def test_cli_user_errors(tmp_path):
    with pytest.raises(UserError, match="either --var-range or --variances"):
        _cli(["simulate", "bandit", "--var-range", "1", "2", "--variances", "x.txt", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="--epsilon must be > 0"):
        _cli(["simulate", "bandit", "--dim", "3", "--trials", "10", "--epsilon", "0", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="HIGH .* is below LOW"):
        _cli(["simulate", "bandit", "--dim", "3", "--trials", "10", "--var-range", "5", "1", "--out", str(tmp_path)])
