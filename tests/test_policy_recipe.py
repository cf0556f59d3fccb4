"""The shared policy scaffold without a model: config layout and deprecated keys, checkpoint
rotation, metric names, the best-of-n curve by hand, and the public API."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

from robust_rlhf.checkpoint import StageCheckpoint, StepCheckpoints
from robust_rlhf.config import load_config
from robust_rlhf.errors import UserError
from robust_rlhf.policy.best_of_n import BestOfNConfig
from robust_rlhf.policy.ppo import PPOConfig
from robust_rlhf.policy.rloo import RLOOConfig
from robust_rlhf.policy.tracking import LogConfig, Run
from robust_rlhf.reward.train_config import RewardTrainConfig
from robust_rlhf.utils import resolve_device


@pytest.mark.parametrize("cls", [PPOConfig, RLOOConfig, BestOfNConfig, RewardTrainConfig])
def test_seed_device_resume_in_one_place(cls):
    cfg = load_config(cls, None, ["seed=7", "device=cpu"])
    assert (cfg.seed, cfg.device) == (7, "cpu")
    if cls is not BestOfNConfig:  # best-of-n trains nothing, so has nothing to resume
        assert cls().resume is True
    # `device: auto` means the same for reward models and policies: cuda if available, else cpu
    auto = load_config(cls, None, ["device=auto"]).device
    assert resolve_device(auto) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="not a device name"):
        resolve_device(load_config(cls, None, ["device=gpu0"]).device)


@pytest.mark.parametrize("cls", [PPOConfig, RLOOConfig])
def test_moved_train_seed_and_device_are_refused_naming_the_new_key(cls):
    with pytest.raises(UserError, match="unknown key 'train.seed'; use top-level seed"):
        load_config(cls, None, ["train.seed=5"])
    with pytest.raises(UserError, match="unknown key 'train.device'; use top-level device"):
        load_config(cls, None, ["train.device=cpu"])


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


def test_each_metric_has_one_name(tmp_path):
    run = Run(tmp_path / "a", PPOConfig(), False, LogConfig(progress=False), 1)
    run.log({"step": 1, "kl": 0.5, "gold_reward": 0.25})
    assert json.loads((tmp_path / "a" / "metrics.jsonl").read_text()) == {"step": 1, "kl": 0.5, "gold_reward": 0.25}


def test_public_api():
    import robust_rlhf

    from robust_rlhf import RewardModel, RewardOutput, aggregate  # noqa: F401  (the documented names)

    for name in robust_rlhf.__all__:
        assert getattr(robust_rlhf, name) is not None, name
    for pkg in ("data", "experiments", "gold", "integrations", "models", "policy", "report", "reward"):
        mod = importlib.import_module(f"robust_rlhf.{pkg}")
        assert mod.__all__ and all(getattr(mod, n) is not None for n in mod.__all__), pkg


def test_import_robust_rlhf_does_not_load_torch():
    code = "import sys, robust_rlhf; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
