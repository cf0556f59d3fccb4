"""Uncertainty under shift (reward/uncertainty.py): hand-worked values, and `rm eval --pool`."""

import json
import math

import numpy as np
import pytest

from robust_rlhf.reward.uncertainty import (
    bootstrap_se,
    flat_pool_uncertainty,
    lcb_pick_gain,
    overscoring,
    pool_uncertainty,
    step_overscoring,
    text_std,
    top_pick_flags,
    within_prompt_z,
)


def test_text_std_by_hand():
    assert text_std(np.array([[1.0, 3.0]]))[0] == pytest.approx(1.0)  # var with divisor K
    # Gaussian heads: var_k mu + mean_k s^2 = 1 + (1 + 9)/2 = 6
    assert text_std(np.array([[1.0, 3.0]]), np.array([[1.0, 3.0]]))[0] == pytest.approx(math.sqrt(6))


def test_within_prompt_z_by_hand():
    z = within_prompt_z(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    s = math.sqrt(1.5)
    np.testing.assert_allclose(z, [[-1 / math.sqrt(2 / 3), 0, 1 / math.sqrt(2 / 3)], [0, 0, 0]])
    assert 1 / math.sqrt(2 / 3) == pytest.approx(s)


def test_top_pick_flags_by_hand():
    proxy = np.array([[3, 1, 2], [0, 5, 1], [2, 2, 9], [1, 0, 0]], float)
    gold = np.array([[0, 1, 2], [3, 4, 5], [1, 0, 2], [0, 5, 6]], float)
    std = np.array([[0.9, 0, 0], [0, 0.1, 0], [0, 0, 0.5], [0.2, 0, 0]], float)
    r = top_pick_flags(proxy, gold, std)
    # picks: gold 0 < median 1 (bad, .9); 4 = median (not bad, .1); 2 > 1 (.5); 0 < 5 (bad, .2)
    assert r["bad"].tolist() == [True, False, False, True] and r["num_bad"] == 2
    assert r["auroc"] == pytest.approx(3 / 4)  # .9 > .1, .9 > .5, .2 > .1, .2 < .5


def test_overscoring_by_hand():
    proxy = np.array([[1, 2, 3], [0, 0, 1]], float)
    gold = np.array([[3, 2, 1], [1, 1, 1]], float)
    std = np.array([[0.1, 0.2, 0.3], [0.5, 0.05, 0.4]])
    r = overscoring(proxy, gold, std)
    a = math.sqrt(1.5)  # z of (1, 2, 3)
    b = 1 / math.sqrt(2)  # z of (0, 0, 1): (-b, -b, 2b)
    np.testing.assert_allclose(r["overscore"], [[-2 * a, 0, 2 * a], [-b, -b, 2 * b]])
    assert r["threshold"] == pytest.approx(0.75 * 2 * b)  # 75th percentile of the 6 values (linear)
    # positives: 2a (std .3) and 2b (std .4); negatives .1 .2 .5 .05 -> 6 of 8 comparisons won
    assert r["auroc"] == pytest.approx(6 / 8)
    # baseline z(proxy): positives a, 2b above every negative z (-a, 0, -b, -b)
    assert r["auroc_proxy_baseline"] == pytest.approx(1.0)
    std_ranks = [2, 3, 4, 6, 1, 5]
    o_ranks = [1, 4, 6, 2.5, 2.5, 5]
    assert r["spearman"] == pytest.approx(np.corrcoef(std_ranks, o_ranks)[0, 1])


def test_lcb_pick_gain_by_hand():
    proxy = np.array([[3, 1, 2], [0, 5, 1]], float)
    gold = np.array([[0, 1, 2], [3, 4, 5]], float)
    std = np.array([[2.5, 0, 0], [0, 0, 0]], float)
    assert lcb_pick_gain(proxy, gold, std) == pytest.approx(1.0)  # prompt 0: +2 (idx 2 not 0), prompt 1: 0


def test_bootstrap_se_matches_the_analytic_se_of_a_mean():
    x = np.random.default_rng(1).normal(size=200)
    se = bootstrap_se(lambda i: float(x[i].mean()), 200, num_boot=3000, seed=0)
    assert se == pytest.approx(x.std() / math.sqrt(200), rel=0.08)
    assert math.isnan(bootstrap_se(lambda i: float("nan"), 5, num_boot=10))


def test_pool_and_flat_pool_agree_and_leave_out_single_response_prompts():
    rng = np.random.default_rng(0)
    per_head = rng.normal(size=(6, 4, 3))
    gold = rng.normal(size=(6, 4))
    direct = pool_uncertainty(per_head, gold, num_boot=50)
    prompts = [f"p{i}" for i in range(6) for _ in range(4)]
    # interleave the rows and add a prompt with one response
    order = rng.permutation(24)
    flat = flat_pool_uncertainty([prompts[i] for i in order] + ["lonely"],
                                 np.concatenate([per_head.reshape(24, 3)[order], np.zeros((1, 3))]),
                                 np.concatenate([gold.reshape(24)[order], [0.0]]), num_boot=50)
    assert flat["prompts_left_out"] == 1 and flat["num_prompts"] == 6 and flat["samples_per_prompt"] == 4
    for k in ("top_pick_auroc", "overscoring_auroc", "overscoring_spearman", "lcb_pick_gold_gain", "mean_std"):
        # rows within a prompt are reordered: the statistics are permutation-invariant within prompts
        assert flat[k] == pytest.approx(direct[k]), k
    assert direct["top_pick_auroc_se"] is None or direct["top_pick_auroc_se"] > 0
    with pytest.raises(ValueError):
        pool_uncertainty(per_head[0], gold)


def test_step_overscoring_by_hand():
    steps = [0] * 4 + [10] * 4
    kl = [0, 0, 0, 0, 1, 2, 3, 2]
    per_head = np.array([[1, 1], [2, 2], [3, 3], [4, 4], [0, 2], [1, 1], [2, 2], [3, 5]], float)
    gold = np.array([4, 3, 2, 1, 0, 0, 0, 0], float)
    r = step_overscoring(steps, kl, per_head, gold)
    assert [x["step"] for x in r] == [0, 10] and r[1]["kl"] == pytest.approx(2.0)
    assert r[0]["overscoring_auroc"] == pytest.approx(0.5)  # every std is 0: ties count half
    # step 10: proxy (1, 1, 2, 4), gold constant -> o = z(proxy); the top quartile is the last sample
    # (std 1) against stds (1, 0, 0): (0.5 + 1 + 1) / 3
    assert r[1]["overscoring_auroc"] == pytest.approx(2.5 / 3)
    assert r[1]["mean_std"] == pytest.approx(0.5)
    # one head (a BT proxy): no spread at all -- undefined, not the 0.5 of tied stds; the baseline stays
    one = step_overscoring(steps, kl, per_head[:, :1], gold)
    assert [x["overscoring_auroc"] for x in one] == [None, None]
    assert one[1]["overscoring_auroc_proxy_baseline"] is not None


# ---------------------------------------------------------------------------- rm eval --pool
def _pool_file(path, with_gold=True):
    texts = {"This movie was": [" great fun.", " awful.", " fine I guess.", " a masterpiece."],
             "The hotel room was": [" clean and bright.", " dirty.", " small.", " lovely."]}
    gold = [0.8, -0.6, 0.1, 0.7, 0.6, -0.5, 0.0, 0.6]
    rows = [{"prompt": p, "response": r} for p, rs in texts.items() for r in rs]
    if with_gold:
        for r, g in zip(rows, gold):
            r["gold"] = g
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rm_eval_pool_reports_uncertainty_under_shift(tiny_trained_rm, tmp_path, capsys):
    from robust_rlhf.cli import main
    from robust_rlhf.reward.model import RewardModel

    pool = _pool_file(tmp_path / "pool.jsonl")
    out = tmp_path / "eval"
    assert main(["rm", "eval", "--model", str(tiny_trained_rm), "--pool", str(pool), "--output-dir", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["pool/num_prompts"] == 2 and m["pool/samples_per_prompt"] == 4 and m["pool/num_heads"] == 3
    # independent: the same numbers from the model's own scores
    rows = [json.loads(line) for line in pool.read_text().splitlines()]
    s = RewardModel.from_pretrained(tiny_trained_rm).score([r["prompt"] for r in rows], [r["response"] for r in rows])
    direct = pool_uncertainty(s.per_head.numpy().reshape(2, 4, 3), np.array([r["gold"] for r in rows]).reshape(2, 4),
                              num_boot=10)
    assert m["pool/overscoring_spearman"] == pytest.approx(direct["overscoring_spearman"], abs=1e-6)
    assert m["pool/mean_std"] == pytest.approx(direct["mean_std"], rel=1e-5)
    assert "over-scoring AUROC" in capsys.readouterr().out
    # the built-in held-out pool beside the pairs
    out2 = tmp_path / "eval2"
    assert main(["rm", "eval", "--model", str(tiny_trained_rm), "--data", "builtin:test", "--pool", "builtin:test",
                 "--output-dir", str(out2)]) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["pool/num_prompts"] == 25 and m2["pool/samples_per_prompt"] >= 2 and "accuracy" in m2


def test_rm_eval_pool_bad_input_writes_nothing(tiny_trained_rm, tmp_path, capsys):
    from robust_rlhf.cli import main

    out = tmp_path / "eval"
    no_gold = _pool_file(tmp_path / "pool.jsonl", with_gold=False)
    assert main(["rm", "eval", "--model", str(tiny_trained_rm), "--pool", str(no_gold), "--output-dir", str(out)]) == 2
    assert "field 'gold'" in capsys.readouterr().err
    assert main(["rm", "eval", "--model", str(tiny_trained_rm), "--output-dir", str(out)]) == 2
    assert "--pool" in capsys.readouterr().err
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps({"prompt": "a", "response": "b", "gold": 1}) + "\n")
    assert main(["rm", "eval", "--model", str(tiny_trained_rm), "--pool", str(single), "--output-dir", str(out)]) == 2
    assert not out.exists()
