"""Run bookkeeping: optional sinks fail clearly when not installed; RNG capture round-trips."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch

from robust_rlhf.errors import UserError
from robust_rlhf.policy.tracking import LogConfig, Run, capture_rng, restore_rng
from robust_rlhf.policy.ppo import PPOConfig


@pytest.mark.parametrize("sink,module", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_missing_sink_is_a_clear_error(tmp_path, sink, module):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    with pytest.raises(UserError, match=f"pip install {module}"):
        Run(tmp_path, PPOConfig(), False, LogConfig(report_to=[sink]), 1)


def test_unknown_sink_rejected():
    with pytest.raises(ValueError, match="unknown sink"):
        LogConfig(report_to=["mlflow"])


def test_rng_roundtrip(tmp_path):
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a


def test_metrics_rows_and_csv(tmp_path):
    run = Run(tmp_path, PPOConfig(), False, LogConfig(progress=False), 2)
    run.log({"step": 1, "kl": 0.0, "proxy_reward": 1.0})
    run.log({"step": 2, "kl": 0.1, "proxy_reward": 1.5, "gold_reward": 0.3})
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,kl,proxy_reward,gold_reward" and len(csv_lines) == 3
    assert (tmp_path / "config.yaml").read_text().startswith("method: ppo")
