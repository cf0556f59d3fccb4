"""RLOO smoke run and best-of-n: selection is the max of n samples; the KL formula."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robust_rlhf.config import load_config
from robust_rlhf.errors import UserError
from robust_rlhf.models.generation import SamplingConfig
from robust_rlhf.policy.best_of_n import BestOfNConfig, best_of_n, run_best_of_n
from robust_rlhf.policy.losses import best_of_n_kl
from robust_rlhf.policy.model import ModelConfig, load_policy
from robust_rlhf.policy.rewards import RewardConfig, TrainingReward
from robust_rlhf.policy.rloo import RLOOConfig, train_rloo
from robust_rlhf.reward.output import RewardOutput


def _length_reward(prompts, responses):
    """A transparent proxy: number of characters."""
    return RewardOutput(torch.tensor([[float(len(r))] for r in responses]))


def test_rloo_smoke(tmp_path, read_jsonl):
    cfg = load_config(RLOOConfig, None, [
        "train.batch_size=2", "rloo.k=2", "sampling.max_new_tokens=6", "train.steps=2", "log.eval_every=2",
        "log.eval_prompts=2", "log.progress=false", "reward.model=gold:vader", "log.checkpoint_every=2",
    ])
    out = train_rloo(cfg, tmp_path / "rloo")
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert {"kl", "proxy_reward", "policy/entropy", "losses/policy", "reward/kl_penalised"} <= set(rows[0])
    assert "gold_reward" in rows[1]
    assert (out / "policy" / "adapter_config.json").exists()


def test_rloo_resume_reproduces_uninterrupted_run(tmp_path):
    # resume is on by default: re-running the same command after a crash continues it
    over = ["train.batch_size=2", "rloo.k=2", "rloo.epochs=2", "sampling.max_new_tokens=4", "train.steps=3",
            "log.eval_every=0", "log.progress=false", "reward.model=gold:vader", "log.checkpoint_every=2",
            "kl.adaptive=true", "kl.target=0.5", "kl.horizon=100"]

    def crash_at_3(step, row):
        if step == 3:  # logged but not checkpointed: the resumed run must drop and redo it
            raise RuntimeError("simulated crash at step 3")

    def rows(d):
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}
                for x in (d / "metrics.jsonl").read_text().splitlines()]

    # The crash comes after step 3 is computed and logged, so the three rows written before it are
    # the uninterrupted run's (one run serves as the reference and as the interrupted run).
    with pytest.raises(RuntimeError, match="simulated crash at step 3"):
        train_rloo(load_config(RLOOConfig, None, over), tmp_path / "cut", callback=crash_at_3)
    uninterrupted = rows(tmp_path / "cut")
    assert [r["step"] for r in uninterrupted] == [1, 2, 3]
    redone = []
    resumed = train_rloo(load_config(RLOOConfig, None, over), tmp_path / "cut",
                         callback=lambda step, row: redone.append(step))
    assert redone == [3]  # step 3 was computed again from the step-2 checkpoint, not kept from the log
    assert [r["step"] for r in rows(resumed)] == [1, 2, 3]
    assert rows(resumed) == uninterrupted
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step_000002"]


def test_rloo_config_rejects_k1():
    with pytest.raises(UserError, match="k must be >= 2"):
        load_config(RLOOConfig, None, ["rloo.k=1"])


def test_best_of_n_kl_formula():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)  # 1.8351


def test_best_of_n_selects_max_of_n_and_run(tmp_path, read_jsonl):
    policy = load_policy(ModelConfig(), with_value_head=False).eval()
    reward = TrainingReward(_length_reward, RewardConfig())
    torch.manual_seed(0)
    prompts = ["This movie was", "The plot"]
    res = best_of_n(policy, prompts, 4, reward, SamplingConfig(max_new_tokens=6))
    assert res.proxy.shape == (2, 4) and len(res.responses[0]) == 4
    for i in range(2):
        lengths = [float(len(r)) for r in res.responses[i]]
        assert float(res.proxy[i].max()) == max(lengths)
        assert len(res.best[i]) == max(lengths)
        assert res.best[i] in res.responses[i]

    cfg = load_config(BestOfNConfig, None, ["best_of_n.n_max=4", "best_of_n.n_values=[1,2,4]",
                                            "best_of_n.num_prompts=2", "sampling.max_new_tokens=6"])
    out = run_best_of_n(cfg, tmp_path / "bon", reward_source=_length_reward)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["n"] for r in rows] == [1, 2, 4]
    # KL_bon = log n - (n - 1) / n, by hand: 0, log 2 - 1/2, log 4 - 3/4
    assert [r["kl"] for r in rows] == pytest.approx([0.0, 0.19314718056, 0.63629436112])
    samples = read_jsonl(out / "samples.jsonl")
    # best-of-4 on a pool of 4 is exactly the mean over prompts of the max proxy
    by_prompt = {}
    for s in samples:
        by_prompt.setdefault(s["prompt"], []).append(s["proxy"])
    expected = sum(max(v) for v in by_prompt.values()) / len(by_prompt)
    assert rows[-1]["proxy_reward"] == pytest.approx(expected)
    # proxy of best-of-n does not decrease with n
    assert rows[0]["proxy_reward"] <= rows[1]["proxy_reward"] <= rows[2]["proxy_reward"]
    assert sum(s["selected"] for s in samples) == 2
