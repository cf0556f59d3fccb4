"""The lab's uncertainty-under-shift section (experiments/uncertainty_shift.py), on hand-worked pools."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from robust_rlhf.experiments.uncertainty_shift import policy_run_section, uncertainty_shift_results

# 4 prompts x 3 responses: proxy (mean over heads), std across heads, gold.
PROXY = np.array([[3, 1, 2], [0, 5, 1], [2, 2, 9], [1, 0, 0]], float)
STD = np.array([[0.9, 0, 0], [0, 0.1, 0], [0, 0, 0.5], [0.2, 0, 0]], float)
GOLD = np.array([[0, 1, 2], [3, 4, 5], [1, 0, 2], [0, 5, 6]], float)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_results_section_from_unit_files(tmp_path):
    # two heads mean -/+ std: their mean is PROXY and their std (divisor K) is STD
    per_head = np.stack([PROXY - STD, PROXY + STD], axis=-1).reshape(12, 2)
    pool = {"prompts": ["a", "b", "c", "d"], "pool_size": 3, "responses": [["x"] * 3] * 4, "gold": GOLD.tolist()}
    scores = {"per_head": per_head.tolist(), "per_head_std": None}
    sets = {"prompt": {"prompts": ["a", "b", "c", "d"], "responses": [["x"] * 3] * 4, "gold": GOLD.tolist(),
                       "temperature": 1.0},
            "old": {"prompts": ["a"], "responses": [["x", "y"]], "gold": [[0, 1]], "temperature": 1.0}}
    _write(tmp_path / "shift" / "sets" / "sets.json", sets)
    _write(tmp_path / "shift" / "scores" / "rm" / "scores.json",
           {"prompt": {"reward": PROXY.ravel().tolist(), "norm": [1.0] * 12, "per_head": per_head.tolist()},
            "old": {"reward": [0.0, 1.0], "norm": [1.0, 1.0]}})
    rows = [{"step": s, "kl": k, "prompt": "p", "response": "r", "per_head": h, "gold": g}
            for s, k, h, g in zip([0] * 4 + [10] * 4, [0, 0, 0, 0, 1, 2, 3, 2],
                                  [[1, 1], [2, 2], [3, 3], [4, 4], [0, 2], [1, 1], [2, 2], [3, 5]], [4, 3, 2, 1, 0, 0, 0, 0])]
    rows.append({"step": 10, "kl": 9.0, "prompt": "p", "response": "r", "per_head": [9, 9], "gold": None})  # skipped
    run = tmp_path / "policy" / "ppo" / "s0"
    run.mkdir(parents=True)
    (run / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shift_units = {"sets": SimpleNamespace(key="shift/sets"), "rm": SimpleNamespace(key="shift/scores/rm")}
    # the best-of-n study's pool: the same 4 x 3 pool, its rows reversed within each prompt (same metrics)
    bon = ({**pool, "gold": GOLD[:, ::-1].tolist()},
           {"rm": {"per_head": per_head.reshape(4, 3, 2)[:, ::-1].reshape(12, 2).tolist(), "per_head_std": None}})
    res = uncertainty_shift_results(tmp_path, {0: pool}, {("rm", 0): scores}, shift_units,
                                    [{"method": "ppo", "seed": 0, "head": None, "key": "policy/ppo/s0"},
                                     {"method": "ppo", "seed": 1, "head": None, "key": "policy/ppo/s1"}], num_boot=20,
                                    bon=bon)
    b = res["bon_study"]["rm"]
    assert b["top_pick_auroc"] == pytest.approx(0.75) and b["top_pick_num_bad"] == 2
    assert (b["num_prompts"], b["samples_per_prompt"], b["num_heads"]) == (4, 3, 2)
    assert uncertainty_shift_results(tmp_path, {0: pool}, {("rm", 0): scores})["bon_study"] == {}  # study off
    p = res["pools"]["rm"]["0"]
    assert p["top_pick_auroc"] == pytest.approx(0.75) and p["top_pick_num_bad"] == 2  # worked in test_reward_uncertainty
    assert res["shift"]["rm"]["prompt"]["top_pick_auroc"] == pytest.approx(0.75)
    assert "missing" in res["shift"]["rm"]["old"]
    assert len(res["policy_runs"]) == 1  # s1 has no eval samples
    steps = res["policy_runs"][0]["steps"]
    assert [s["step"] for s in steps] == [0, 10] and steps[1]["num_samples"] == 4 and steps[1]["kl"] == pytest.approx(2.0)
    assert steps[1]["overscoring_auroc"] == pytest.approx(2.5 / 3)
    assert steps[1]["overscoring_auroc_proxy_baseline"] == pytest.approx(1.0)  # the over-scored text has the top proxy
    pooled = res["policy_steps"]["ppo"]
    assert [r["num_runs"] for r in pooled] == [1, 1] and pooled[1]["overscoring_auroc"] == pytest.approx(2.5 / 3)


def test_policy_run_without_samples_is_none(tmp_path):
    assert policy_run_section(tmp_path / "nope") is None
    (tmp_path / "eval_samples.jsonl").write_text(json.dumps({"step": 0, "kl": 0, "per_head": [1], "gold": None}) + "\n")
    assert policy_run_section(tmp_path) is None


def test_pooled_policy_steps_average_runs_with_their_standard_error():
    """Runs are the unit: per method and step the mean of the runs' AUROCs and its SE across runs
    (hand-worked); a one-head run (AUROC None) is left out; "all" pools every method."""
    from robust_rlhf.experiments.uncertainty_shift import pooled_policy_steps

    def run(method, aucs, bases, kls, golds):
        return {"method": method, "steps": [
            {"step": i, "kl": k, "gold": g, "overscoring_auroc": a, "overscoring_auroc_proxy_baseline": b}
            for i, (a, b, k, g) in enumerate(zip(aucs, bases, kls, golds))]}

    runs = [run("a", [0.5, 0.6], [0.7, 0.8], [0.0, 2.0], [0.1, 0.2]),
            run("a", [0.7, 0.9], [0.7, 0.6], [0.0, 4.0], [0.3, 0.0]),
            run("b", [0.4, None], [0.5, None], [0.0, 1.0], [0.0, 0.0])]
    out = pooled_policy_steps(runs)
    a1 = out["a"][1]
    assert (a1["step"], a1["num_runs"]) == (1, 2)
    assert a1["overscoring_auroc"] == pytest.approx(0.75)
    assert a1["overscoring_auroc_se"] == pytest.approx(0.15)  # sd of (0.6, 0.9) = 0.2121 / sqrt(2)
    assert a1["proxy_baseline"] == pytest.approx(0.7) and a1["kl"] == pytest.approx(3.0) and a1["gold"] == pytest.approx(0.1)
    assert [r["num_runs"] for r in out["b"]] == [1] and out["b"][0]["overscoring_auroc_se"] is None
    assert out["all"][0]["num_runs"] == 3 and out["all"][0]["overscoring_auroc"] == pytest.approx((0.5 + 0.7 + 0.4) / 3)
    assert out["all"][1]["num_runs"] == 2
