"""Run bookkeeping: optional sinks fail clearly when not installed; RNG capture round-trips."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch

from robust_rlhf.checkpoint import capture_rng, restore_rng
from robust_rlhf.errors import UserError
from robust_rlhf.policy.ppo import PPOConfig
from robust_rlhf.policy.tracking import LogConfig, Run


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


def _strict_loads(text: str):
    import json

    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


def test_same_config_resumes_and_another_run_is_refused(tmp_path):
    from robust_rlhf.config import load_config

    Run(tmp_path, PPOConfig(), True, LogConfig(progress=False), 2).log({"step": 1, "kl": 0.0, "proxy_reward": 1.0})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    Run(tmp_path, PPOConfig(), True, LogConfig(progress=False), 2)  # the same config: no error
    Run(tmp_path, load_config(PPOConfig, None, ["train.steps=40", "log.progress=false"]), True,
        LogConfig(progress=False), 40)  # a resumed run may grow its steps; free keys may differ
    for resume, overrides, key in ((False, ["train.lr=0.5"], "train.lr"), (True, ["seed=3"], "seed"),
                                   (False, ["train.steps=40"], "train.steps")):
        (tmp_path / "metrics.jsonl").write_bytes(before["metrics.jsonl"])
        (tmp_path / "config.yaml").write_bytes(before["config.yaml"])
        snap = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        with pytest.raises(UserError, match=f"holds another run: its config differs from this one in {key}: "):
            Run(tmp_path, load_config(PPOConfig, None, overrides), resume, LogConfig(progress=False), 2)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == snap  # nothing written


def test_nan_metrics_are_written_as_null(tmp_path):
    from types import SimpleNamespace

    from robust_rlhf.policy.tracking import write_metrics

    run = Run(tmp_path, PPOConfig(), False, LogConfig(progress=False), 2)
    run.log({"step": 1, "kl": float("nan"), "proxy_reward": torch.tensor(float("inf")), "gold_reward": np.float32("nan")})
    row = _strict_loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 1, "kl": None, "proxy_reward": None, "gold_reward": None}
    write_metrics(tmp_path / "again", run.rows)
    assert _strict_loads((tmp_path / "again" / "metrics.jsonl").read_text()) == row
    # the checkpoint's state.json (it carries the metrics so far) is strict JSON too, and restores
    lin = torch.nn.Linear(2, 1)
    policy = SimpleNamespace(trainable_state_dict=lin.state_dict, use_lora=False,
                             load_trainable_state_dict=lin.load_state_dict)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    ck = run.save_checkpoint(1, policy, opt, {"kl_ctl": {"value": float("nan")}})
    state = _strict_loads((ck / "state.json").read_text())
    assert state["metrics"] == [row] and state["extra"] == {"kl_ctl": {"value": None}}
    run.close()  # the run holds its folder's lock until closed
    resumed = Run(tmp_path, PPOConfig(), True, LogConfig(progress=False), 2)
    assert resumed.restore(policy, opt) == (1, {"kl_ctl": {"value": None}})


def test_stage_checkpoint_state_is_strict_json(tmp_path):
    from robust_rlhf.checkpoint import BackboneHeadCheckpoint

    backbone, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ck = BackboneHeadCheckpoint(tmp_path)
    ck.save(backbone, head, opt, sched, {"step": 3, "recent_losses": [0.5, float("nan")], "best_val_loss": float("inf")},
            {"lr": 0.1})
    state = _strict_loads((ck.dir / "state.json").read_text(encoding="utf-8"))
    assert state == {"progress": {"step": 3, "recent_losses": [0.5, None], "best_val_loss": None}, "config": {"lr": 0.1}}
