"""The over-optimisation lab: Gao fits and intervals against hand computations, KL calibration
on a synthetic response, best-of-n curves against brute force, config errors, and the whole
pipeline on a tiny configuration -- including a crash mid-way, resume, and re-rendering."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch

from robust_rlhf.errors import UserError
from robust_rlhf.experiments.analysis import _best_of_n_curve
from robust_rlhf.experiments.calibration import calibrate_kl_coef
from robust_rlhf.experiments.config import load_experiment_config
from robust_rlhf.experiments.fits import fit_gao, interpolate_at, t_interval, welch_difference, welch_t
from robust_rlhf.experiments.overopt import run_experiment
from robust_rlhf.policy.best_of_n import best_of_n_curve


# ----------------------------------------------------------------------------- fits
def test_gao_bon_fit_hand_example():
    # R(d) = d(a - b d). Points (1, 1), (2, 0): a - b = 1, 2a - 4b = 0  ->  a = 2, b = 1; peak at a / 2b = 1.
    fit = fit_gao([0.0, 1.0, 2.0], [0.0, 1.0, 0.0], "bon")
    assert fit.alpha == pytest.approx(2.0) and fit.beta == pytest.approx(1.0)
    assert fit.rmse == pytest.approx(0.0, abs=1e-12)
    assert fit.peak_d == pytest.approx(1.0)
    assert fit.predict([0.5]) == pytest.approx([0.5 * (2 - 0.5)])


def test_gao_rl_fit_hand_example():
    # R(d) = d(a - b log d). At d = 1: R = a = 1. At d = e: R = e(a - b) = 0 -> b = 1; peak exp(a/b - 1) = 1.
    fit = fit_gao([1.0, math.e], [1.0, 0.0], "rl")
    assert fit.alpha == pytest.approx(1.0) and fit.beta == pytest.approx(1.0)
    assert fit.peak_d == pytest.approx(1.0)
    assert fit.predict([0.0])[0] == 0.0  # d log d -> 0


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_gao_fit_matches_numpy_least_squares(form):
    rng = np.random.default_rng(0)
    d = rng.uniform(0.05, 3.0, 40)
    second = d**2 if form == "bon" else d * np.log(d)
    r = 0.7 * d - 0.2 * second + rng.normal(0, 0.05, 40)
    # Independent reference: the normal equations solved by hand for the 2 x 2 system.
    X = np.stack([d, -second], 1)
    ref = np.linalg.solve(X.T @ X, X.T @ r)
    fit = fit_gao(d, r, form)
    assert [fit.alpha, fit.beta] == pytest.approx(ref.tolist(), rel=1e-9)
    assert fit.rmse == pytest.approx(float(np.sqrt(np.mean((r - X @ ref) ** 2))))


def test_gao_fit_needs_two_positive_points():
    assert fit_gao([0.0, 1.0], [0.0, 0.3], "rl") is None
    with pytest.raises(ValueError, match="same length, got 1 and 2"):
        fit_gao([1.0], [1.0, 2.0], "bon")
    with pytest.raises(ValueError, match="form must be 'bon' or 'rl'"):
        fit_gao([1.0, 2.0], [1.0, 2.0], "linear")


def test_t_interval_hand_values():
    # [1, 2, 3]: mean 2, var 1, t_{0.975, 2} = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.484138.
    s = t_interval([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["var"] == pytest.approx(1.0)
    assert s["ci_low"] == pytest.approx(2 - 2.484138, abs=1e-5)
    assert s["ci_high"] == pytest.approx(2 + 2.484138, abs=1e-5)
    one = t_interval([0.4])
    assert one["mean"] == 0.4 and one["var"] is None and one["ci_low"] is None


def test_welch_difference_matches_formula():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0]
    from scipy import stats

    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    w = welch_difference(a, b)
    assert w["diff"] == pytest.approx(2.5 - 0.5)
    assert w["ci_low"] == pytest.approx(2.0 - half) and w["ci_high"] == pytest.approx(2.0 + half)
    assert welch_difference([1.0], [2.0])["ci_low"] is None


def test_welch_t_hand_worked():
    # a = 1..4: mean 2.5, var 5/3 -> v_a = 5/12; b = 0, 0.5, 1: mean 0.5, var 1/4 -> v_b = 1/12;
    # se = sqrt(1/2), df = (1/2)^2 / ((5/12)^2 / 3 + (1/12)^2 / 2) = (1/4) / (53/864) = 216/53
    w = welch_t([1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0])
    assert w["diff"] == pytest.approx(2.0) and w["se"] == pytest.approx(math.sqrt(0.5))
    assert w["df"] == pytest.approx(216 / 53) and (w["n_a"], w["n_b"]) == (4, 3)
    assert welch_t([1.0], [2.0, 3.0]) == {"diff": -1.5, "se": None, "df": None, "n_a": 1, "n_b": 2}
    assert welch_t([1.0, 1.0], [2.0, 2.0])["se"] is None  # no spread on either side: no test
    assert welch_t([], [2.0])["diff"] is None


def test_interpolate_at():
    assert interpolate_at([0, 1, 2], [0.0, 1.0, 0.0], 1.5) == pytest.approx(0.5)
    assert interpolate_at([0, 1], [0.0, 1.0], 1.2) is None


# ----------------------------------------------------------------------------- calibration
def test_kl_calibration_finds_the_coefficient():
    # Synthetic response KL(coef) = 0.5 / coef: the target KL 2.0 needs coef 0.25.
    calls = []

    def probe(coef):
        calls.append(coef)
        return 0.5 / coef

    coef, history = calibrate_kl_coef(probe, target=2.0, coef0=0.05, coef_min=1e-4, coef_max=2.0,
                                      max_probes=4, tolerance=0.05)
    assert abs(0.5 / coef / 2.0 - 1) <= 0.05
    assert len(history) == len(calls) <= 4
    assert [h["coef"] for h in history] == calls


def test_kl_calibration_respects_bounds():
    # KL(coef) = 10 / coef stays above the target 1.0 up to coef_max = 0.5 (KL 20 there).
    coef, history = calibrate_kl_coef(lambda c: 10.0 / c, target=1.0, coef0=0.1, coef_min=1e-3, coef_max=0.5,
                                      max_probes=5, tolerance=0.1)
    assert all(1e-3 <= h["coef"] <= 0.5 + 1e-12 for h in history)
    assert coef == pytest.approx(0.5)  # the largest coefficient allowed comes closest
    assert len(history) < 5  # stops once clipped onto a coefficient already tried


# ----------------------------------------------------------------------------- best-of-n
def test_best_of_n_curve_by_hand_and_by_brute_force():
    """`best_of_n_curve` (library) and the lab's `_best_of_n_curve` columns built on it."""
    # one prompt, pool of 3 with proxy [1, 3, 2] and gold [10, 0, 5]:
    # n=1: E[proxy] = 2, E[gold] = 5;  n=3: the proxy's max (3) is taken: proxy 3, gold 0;
    # n=2: pairs {1,3}->3/0, {1,2}->2/5, {3,2}->3/0: proxy 8/3, gold 5/3; KL(n) = log n - (n-1)/n
    rows = best_of_n_curve(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[10.0, 0.0, 5.0]]), [1, 2, 3])
    assert [r["proxy_reward"] for r in rows] == pytest.approx([2.0, 8 / 3, 3.0])
    assert [r["gold_reward"] for r in rows] == pytest.approx([5.0, 5 / 3, 0.0])
    assert [r["kl"] for r in rows] == pytest.approx([0.0, math.log(2) - 0.5, math.log(3) - 2 / 3])
    with pytest.raises(ValueError, match=r"must both be \(P, N\)"):
        best_of_n_curve(torch.zeros(1, 3), torch.zeros(1, 2), [1])
    # the lab's columns: several prompts, against the exact expectation over every n-subset
    rng = np.random.default_rng(1)
    P, N = 3, 5
    proxy = rng.normal(size=(P, N))
    gold = rng.normal(size=(P, N))
    pool = {"prompts": ["a", "b", "c"], "pool_size": N, "gold": gold.tolist()}
    curve = _best_of_n_curve(pool, torch.tensor(proxy.reshape(-1)), [1, 2, 3, 5])
    for n, g in zip(curve["n"], curve["gold"]):
        # exact expectation: the gold of the proxy-argmax of every n-subset, averaged
        brute = np.mean([np.mean([gold[p][max(s, key=lambda i: proxy[p][i])] for s in itertools.combinations(range(N), n)])
                         for p in range(P)])
        assert g == pytest.approx(brute)
    for n, p_ in zip(curve["n"], curve["proxy"]):
        brute = np.mean([np.mean([max(proxy[p][i] for i in s) for s in itertools.combinations(range(N), n)])
                         for p in range(P)])
        assert p_ == pytest.approx(brute)
    assert curve["kl"][0] == 0.0 and curve["kl"][-1] == pytest.approx(math.log(5) - 4 / 5)
    assert curve["d"] == pytest.approx([math.sqrt(k) for k in curve["kl"]])


# ----------------------------------------------------------------------------- config errors
def test_config_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="reward_model 'nope'"):
        load_experiment_config("experiment_tiny", ["methods=[{name: a, type: ppo, reward_model: nope}]", "baseline=null"])
    with pytest.raises(UserError, match="unknown key"):
        load_experiment_config("experiment_tiny", ["evaluation.pool=3"])
    with pytest.raises(UserError, match="baseline"):
        load_experiment_config("experiment_tiny", ["baseline=nope"])
    with pytest.raises(UserError, match="calibrate_kl"):
        load_experiment_config("experiment_tiny", ["methods=[{name: a, type: best_of_n, reward_model: bt, calibrate_kl: true}]",
                                                  "baseline=null"])
    cfg = load_experiment_config("experiment_tiny", ["methods=[{name: a, type: ppo, reward_model: ens, overrides: {seed: 3}}]",
                                                        "baseline=null"])
    with pytest.raises(UserError, match="set by the experiment"):
        run_experiment(cfg, tmp_path / "x", progress=False)
    cfg = load_experiment_config("experiment_tiny", ["methods=[{name: a, type: ppo, reward_model: ens, aggregator: {name: brme_nominal}}]",
                                                        "baseline=null"])
    with pytest.raises(UserError, match="gaussian"):
        run_experiment(cfg, tmp_path / "y", progress=False)


# ----------------------------------------------------------------------------- the whole pipeline
class _Crash(RuntimeError):
    pass


@pytest.fixture
def one_thread():
    """The pipeline sets torch's thread count from its config (num_threads=1: the shared CI
    cores thrash with more); put the session's setting back afterwards."""
    before = torch.get_num_threads()
    yield ["num_threads=1"]
    torch.set_num_threads(before)


def _parser():
    from robust_rlhf.cli.experiment import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    return p


def test_pipeline_crash_resume_and_rerender(tmp_path, one_thread, monkeypatch, caplog, read_jsonl):
    """Tiny experiment end to end. A crash injected inside the second policy run, right after
    its step-1 checkpoint; the re-run must redo only the unfinished units and continue that run
    from its checkpoint; a third run only re-renders; deleting one unit's marker re-runs that
    unit alone."""
    import logging

    from robust_rlhf.policy.tracking import Run

    out = tmp_path / "exp"
    cfg = load_experiment_config("experiment_tiny", one_thread)
    original = Run.save_checkpoint

    def crashing_save(self, step, *a, **kw):
        path = original(self, step, *a, **kw)
        if self.dir.as_posix().endswith("runs/ppo-lcb/s0") and step == 1:
            raise _Crash("killed after the step-1 checkpoint")
        return path

    monkeypatch.setattr(Run, "save_checkpoint", crashing_save)
    with pytest.raises(_Crash):
        run_experiment(cfg, out, progress=False)
    monkeypatch.undo()
    assert (out / "units/runs/ppo-mean/s0/done").exists()
    assert not (out / "units/runs/ppo-lcb/s0/done").exists()
    assert (out / "units/runs/ppo-lcb/s0/checkpoints/step_000001/state.json").exists()
    assert not (out / "results.json").exists()

    with caplog.at_level(logging.INFO):
        second = run_experiment(cfg, out, progress=False)
    assert second.executed == ["runs/ppo-lcb/s0", "runs/rloo-mean/s0"]
    assert "runs/ppo-mean/s0" in second.skipped and "data" in second.skipped and "rm/ens" in second.skipped
    assert any("resuming from" in r.getMessage() and "step_000001" in r.getMessage() for r in caplog.records)
    rows = read_jsonl(out / "units/runs/ppo-lcb/s0/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]

    # a crash before a unit starts (the runner's own hook) leaves everything finished intact
    def crash_at_start(key):
        raise _Crash(key)

    (out / "units/runs/rloo-mean/s0/done").unlink()
    with pytest.raises(_Crash):
        run_experiment(cfg, out, on_unit_start=crash_at_start, progress=False)

    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"bon-bt", "bon-ens-uwo", "ppo-mean", "ppo-lcb", "rloo-mean"}
    for name, m in res["methods"].items():
        assert m["num_policies"] == 1
        run = m["runs"][0]
        assert run["curve"]["d"][0] == 0.0 and len(run["curve"]["d"]) == len(run["curve"]["gold"])
        assert math.isfinite(run["final_gold"]) and run["final_kl"] is not None
    bon = res["methods"]["bon-bt"]["runs"][0]
    assert bon["curve"]["n"] == [1, 2, 4]
    assert bon["final_kl"] == pytest.approx(math.log(4) - 3 / 4)
    # n = 1 of best-of-n is the reference policy itself
    assert bon["curve"]["gold"][0] == pytest.approx(res["reference"]["per_seed"]["0"])
    assert len(res["methods"]["ppo-mean"]["runs"][0]["curve"]["d"]) == 3  # reference + 2 evaluations
    assert res["comparison"]["baseline"] == "ppo-mean"
    assert any("baseline" in line for line in res["summary"])
    assert res["reward_models"]["ens"]["num_heads"] == 3 and res["reward_models"]["ens"]["variance_arrays"]["chosen_var"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "http://" not in html and "https://" not in html and "src=\"plots" not in html  # self-contained

    third = run_experiment(cfg, out, progress=False)
    assert third.executed == ["runs/rloo-mean/s0"]  # the unit whose marker went before the last crash
    third = run_experiment(cfg, out, progress=False)
    assert third.executed == []  # finished: only the analysis and the report are redone
    (out / "units/rm/bt/done").unlink()
    fourth = run_experiment(cfg, out, progress=False)
    assert fourth.executed == ["rm/bt"]  # same inputs -> same fingerprint: downstream stays cached

    # `experiment report` re-renders from results.json only
    (out / "report.html").unlink()
    shutil.rmtree(out / "plots")
    args = _parser().parse_args(["experiment", "report", "--output-dir", str(out)])
    assert args.func(args) == 0
    assert (out / "report.html").exists() and (out / "plots" / "gold_vs_sqrt_kl.png").exists()


def test_report_renders_optional_sections(tmp_path):
    """λ sweep and perturbation sections from a hand-made results file (no training)."""
    from robust_rlhf.report.html import write_report

    stat = lambda m, n=2: {"n": n, "mean": m, "var": 0.01, "std": 0.1, "ci_low": m - 0.1, "ci_high": m + 0.1}  # noqa: E731
    run = lambda g: {"seed": 0, "head": None, "final_gold": g, "final_kl": 1.0, "final_proxy": 0.5,  # noqa: E731
                     "curve": {"d": [0.0, 0.5, 1.0], "gold": [0.1, 0.3, g], "proxy": [0.0, 0.4, 0.5]}}
    method = lambda g, study="main": {"type": "ppo", "study": study, "reward_model": "brme",  # noqa: E731
                                      "aggregator": {"name": "brme_tradeoff", "lam": 0.5, "beta": None, "normalize": False},
                                      "train_on": "aggregate", "kl_coef": 0.05, "calibrated": True, "num_policies": 2,
                                      "final_gold": stat(g), "final_kl": stat(1.0), "final_proxy": stat(0.5),
                                      "final_d_mean": 1.0, "runs": [run(g), run(g + 0.05)],
                                      "gold_fit": {"form": "rl", "alpha": 0.3, "beta": 0.1, "rmse": 0.01,
                                                   "num_points": 6, "peak_d": 8.2}}
    results = {
        "name": "synthetic", "config": {"policy": "p", "gold": "vader", "seeds": [0, 1]}, "confidence": 0.95,
        "reference": {"per_seed": {"0": 0.1, "1": 0.12}, "final_gold": stat(0.11)},
        "reward_models": {"brme": {"head_type": "gaussian", "num_heads": 3, "num_test_pairs": 4, "test_accuracy": 0.75,
                                   "test_accuracy_ci95": [0.3, 0.95], "accuracy_per_head": [0.7, 0.7, 0.8],
                                   "variance_arrays": {"chosen_var": [0.1, 0.2, 0.3], "diff_var": [0.2, 0.1, 0.4]}}},
        "methods": {"ppo": method(0.4), "ppo@lam=0": method(0.3, "lambda_sweep"), "ppo@lam=1": method(0.5, "lambda_sweep"),
                    "ppo@over": method(0.2, "perturbation"), "ppo@under": method(0.35, "perturbation")},
        "comparison": {"baseline": "ppo", "d_star": 1.0, "kl_star": 1.0,
                       "rows": [{"method": "ppo", "matched_gold": stat(0.4), "matched_coverage": "2/2",
                                 "matched_vs_baseline": None, "final_vs_baseline": None, "final_kl_mean": 1.0}]},
        "lambda_sweep": {"base": "ppo", "best_lam": 1.0, "rows": [
            {"lam": 0.0, "method": "ppo@lam=0", "final_gold": stat(0.3), "final_kl": stat(1.0), "final_proxy": stat(0.5)},
            {"lam": 1.0, "method": "ppo@lam=1", "final_gold": stat(0.5), "final_kl": stat(1.0), "final_proxy": stat(0.5)}]},
        "perturbation": {"base": "ppo", "size": 0.5, "fraction": 0.25, "rows": [
            {"mode": "none", "method": "ppo", "final_gold": stat(0.4), "final_kl": stat(1.0), "vs_unperturbed": None},
            {"mode": "over", "method": "ppo@over", "final_gold": stat(0.2), "final_kl": stat(1.0),
             "vs_unperturbed": {"diff": -0.2, "ci_low": -0.3, "ci_high": -0.1}},
            {"mode": "under", "method": "ppo@under", "final_gold": stat(0.35), "final_kl": stat(1.0),
             "vs_unperturbed": {"diff": -0.05, "ci_low": -0.2, "ci_high": 0.1}}]},
        "summary": ["a <finding> & more"],
        "uncertainty_shift": {
            "bon_study": {"brme": {"num_prompts": 200, "samples_per_prompt": 64, "num_heads": 3, "overscoring_auroc": 0.61,
                                   "overscoring_auroc_se": 0.02, "overscoring_auroc_proxy_baseline": 0.7,
                                   "overscoring_spearman": 0.1, "top_pick_auroc": 0.4, "top_pick_num_bad": 7,
                                   "lcb_pick_gold_gain": 0.01}},
            "shift": {"brme": {"prompt": {"missing": "old"}}},
            "policy_steps": {"ppo": [{"step": 3, "num_runs": 4, "kl": 1.5, "gold": 0.2, "overscoring_auroc": 0.77,
                                      "overscoring_auroc_se": 0.05, "proxy_baseline": 0.8, "proxy_baseline_se": 0.01}]}},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    html = write_report(tmp_path).read_text()
    assert "λ sweep" in html and "Over- vs under-scoring" in html
    assert "Uncertainty under shift" in html and "0.610 ± 0.020" in html and "(7 bad)" in html
    assert "0.770 ± 0.050" in html and "shifted set" not in html  # a set without per-head scores has no row
    assert "a &lt;finding&gt; &amp; more" in html  # escaped
    assert html.count("data:image/png;base64,") == 6  # 2 curve plots, distribution, sweep, perturbation, rm variance


@pytest.mark.slow
def test_studies_calibration_and_per_head_runs(tmp_path, one_thread):
    """BRME λ sweep, over- vs under-scoring, KL calibration and per-head (variance-aware)
    policies on the tiny configuration (several minutes on a shared CPU)."""
    overrides = one_thread + [
        "reward_models=[{name: ens, preset: rm_tiny, overrides: {stage1.max_steps: 4, stage2.epochs: 3, data.limit: null}},"
        " {name: brme, preset: rm_tiny, overrides: {model.head_type: gaussian, stage1.max_steps: 4, stage2.epochs: 3,"
        " data.limit: null}}]",
        "methods=[{name: ppo-mean, type: ppo, reward_model: ens, calibrate_kl: true},"
        " {name: ppo-var-heads, type: ppo, reward_model: ens, train_on: each_head, heads: [0, 1],"
        " overrides: {kl.variance_aware: true}},"
        " {name: ppo-brme, type: ppo, reward_model: brme, aggregator: {name: brme_tradeoff, lam: 0.5}}]",
        "lambda_sweep.base=ppo-brme", "lambda_sweep.lambdas=[0.0, 1.0]",
        "perturbation.base=ppo-mean", "perturbation.size=1.0",
        "calibration.target_kl=0.05", "calibration.steps=1", "calibration.max_probes=2",
        "baseline=ppo-mean",
    ]
    cfg = load_experiment_config("experiment_tiny", overrides)
    out = tmp_path / "studies"
    outcome = run_experiment(cfg, out, progress=False)
    res = outcome.results
    assert [r["lam"] for r in res["lambda_sweep"]["rows"]] == [0.0, 1.0]
    assert [r["mode"] for r in res["perturbation"]["rows"]] == ["none", "over", "under"]
    assert res["methods"]["ppo-var-heads"]["num_policies"] == 2
    assert {r["head"] for r in res["methods"]["ppo-var-heads"]["runs"]} == {0, 1}
    cal = json.loads((out / "units/calibration/ppo-mean/calibration.json").read_text())
    assert 1 <= len(cal["probes"]) <= 2
    coef = res["methods"]["ppo-mean"]["kl_coef"]
    assert coef == cal["chosen_coef"] and res["methods"]["ppo-mean@over"]["kl_coef"] == coef  # inherited
    html = (out / "report.html").read_text()
    assert "λ sweep" in html and "Over- vs under-scoring" in html
    # the calibration probes are cached units too: a re-run does nothing
    assert run_experiment(cfg, out, progress=False).executed == []
