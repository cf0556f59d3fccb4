"""The shared policy scaffold without a model: config layout and deprecated keys, checkpoint
rotation, metric names, the best-of-n curve by hand, and the public API."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import warnings

import pytest
import torch

from robust_rlhf.checkpoint import StageCheckpoint, StepCheckpoints
from robust_rlhf.config import load_config
from robust_rlhf.errors import UserError
from robust_rlhf.policy.best_of_n import BestOfNConfig, best_of_n_curve
from robust_rlhf.policy.ppo import PPOConfig
from robust_rlhf.policy.rloo import RLOOConfig
from robust_rlhf.policy.tracking import LogConfig, Run
from robust_rlhf.reward.train import RewardTrainConfig


@pytest.mark.parametrize("cls", [PPOConfig, RLOOConfig, BestOfNConfig, RewardTrainConfig])
def test_seed_device_resume_in_one_place(cls):
    cfg = load_config(cls, None, ["seed=7", "device=cpu"])
    assert (cfg.seed, cfg.device) == (7, "cpu")
    if cls is not BestOfNConfig:  # best-of-n trains nothing, so has nothing to resume
        assert cls().resume is True


@pytest.mark.parametrize("cls", [PPOConfig, RLOOConfig])
def test_old_train_seed_and_device_still_read_with_a_warning(cls):
    with pytest.warns(FutureWarning, match="'train.seed' is deprecated; use 'seed'"):
        cfg = load_config(cls, None, ["train.seed=5", "train.device=cpu"])
    assert (cfg.seed, cfg.device) == (5, "cpu")
    with pytest.raises(UserError, match="deprecated name of 'seed'; set only 'seed'"):
        load_config(cls, None, ["train.seed=5", "seed=6"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new keys warn about nothing
        load_config(cls, None, ["seed=5"])


def test_resume_accepts_a_run_saved_under_the_old_layout(tmp_path):
    import yaml

    old = PPOConfig()
    d = yaml.safe_load(yaml.safe_dump(__import__("dataclasses").asdict(old)))
    d["train"]["seed"], d["train"]["device"] = d.pop("seed"), d.pop("device")  # the pre-0.2 layout
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(d))
    (tmp_path / "checkpoints" / "step_000001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_000001" / "state.json").write_text("{}")
    Run(tmp_path, PPOConfig(), True, LogConfig(progress=False), 2)  # no "config differs" error
    with pytest.raises(UserError, match="config differs .* in seed"):
        Run(tmp_path, load_config(PPOConfig, None, ["seed=1"]), True, LogConfig(progress=False), 2)


def test_step_checkpoints_rotate_and_ignore_incomplete(tmp_path):
    ck = StepCheckpoints(tmp_path, keep=2)

    def write(tmp):
        (tmp / "state.json").write_text("{}")

    for step in (1, 2, 3, 4):
        ck.save(step, write)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000004"]
    (tmp_path / "checkpoints" / "step_000009").mkdir()  # half-written: no state.json
    assert ck.latest().name == "step_000004"
    with pytest.raises(ValueError, match="keep must be >= 1"):
        StepCheckpoints(tmp_path, keep=0)


def test_stage_checkpoint_replaces_in_place(tmp_path):
    ck = StageCheckpoint(tmp_path, "stage1")
    assert not ck.exists()
    for step in (1, 2):
        ck.save(lambda tmp, s=step: (tmp / "state.json").write_text(json.dumps({"step": s})))
    assert ck.exists() and ck.state() == {"step": 2}
    # the replaced checkpoint is kept as the previous good one (a torn newest falls back to it)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["stage1", "stage1.prev"]
    assert json.loads((tmp_path / "checkpoints" / "stage1.prev" / "state.json").read_text()) == {"step": 1}


def test_each_metric_has_one_name_unless_legacy_names_asked(tmp_path):
    run = Run(tmp_path / "a", PPOConfig(), False, LogConfig(progress=False), 1)
    run.log({"step": 1, "kl": 0.5, "gold_reward": 0.25})
    assert json.loads((tmp_path / "a" / "metrics.jsonl").read_text()) == {"step": 1, "kl": 0.5, "gold_reward": 0.25}
    run = Run(tmp_path / "b", PPOConfig(), False, LogConfig(progress=False, legacy_metric_names=True), 1)
    run.log({"step": 1, "kl": 0.5, "gold_reward": 0.25})
    row = json.loads((tmp_path / "b" / "metrics.jsonl").read_text())
    assert row["policy/kl"] == 0.5 and row["gold/reward"] == 0.25


def test_best_of_n_curve_by_hand():
    # one prompt, pool of 3 with proxy [1, 3, 2] and gold [10, 0, 5]:
    # n=1: E[proxy] = 2, E[gold] = 5;  n=3: the proxy's max (3) is taken: proxy 3, gold 0;
    # n=2: pairs {1,3}->3/0, {1,2}->2/5, {3,2}->3/0: proxy 8/3, gold 5/3
    rows = best_of_n_curve(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[10.0, 0.0, 5.0]]), [1, 2, 3])
    assert [r["proxy_reward"] for r in rows] == pytest.approx([2.0, 8 / 3, 3.0])
    assert [r["gold_reward"] for r in rows] == pytest.approx([5.0, 5 / 3, 0.0])
    assert [r["kl"] for r in rows] == pytest.approx([0.0, math.log(2) - 0.5, math.log(3) - 2 / 3])
    with pytest.raises(ValueError, match=r"must both be \(P, N\)"):
        best_of_n_curve(torch.zeros(1, 3), torch.zeros(1, 2), [1])


def test_public_api_and_deprecated_logging_module():
    import robust_rlhf

    from robust_rlhf import RewardModel, RewardOutput, aggregate  # noqa: F401  (the documented names)

    for name in robust_rlhf.__all__:
        assert getattr(robust_rlhf, name) is not None, name
    for pkg in ("data", "experiments", "gold", "integrations", "models", "policy", "report", "reward"):
        mod = importlib.import_module(f"robust_rlhf.{pkg}")
        assert mod.__all__ and all(getattr(mod, n) is not None for n in mod.__all__), pkg
    sys.modules.pop("robust_rlhf.policy.logging", None)
    with pytest.warns(FutureWarning, match="import robust_rlhf.policy.tracking instead"):
        old = importlib.import_module("robust_rlhf.policy.logging")
    assert old.Run is Run


def test_import_robust_rlhf_does_not_load_torch():
    code = "import sys, robust_rlhf; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
