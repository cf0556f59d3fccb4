"""The lab on several workers: a small experiment (data, a reward model, a best-of-n pool and its
scores, a KL calibration flow, a calibrated PPO policy) gives the same results.json -- every
number, every unit key -- with 2 local worker processes and on a local Ray cluster as the serial
run in this process (one torch thread per unit; the wall-clock fields dropped)."""

from __future__ import annotations

import json

import pytest
import torch

from robust_rlhf.experiments.config import load_experiment_config
from robust_rlhf.experiments.overopt import run_experiment
from robust_rlhf.experiments.scheduler import Execution

OVERRIDES = [
    "num_threads=1",
    # 10 prompts x 3 completions of 6 tokens (one sampling batch), 4-token evaluations, PPO batches of 2:
    # the executors must agree at any size, and every unit runs once per executor
    "prompts.limit=10", "data.completions_per_prompt=3", "data.pairs_per_prompt=3", "data.max_new_tokens=6",
    "evaluation.max_new_tokens=4", "policy_overrides.train.batch_size=2",
    "reward_models=[{name: bt, preset: rm_tiny, overrides: {model.head_type: scalar, stage1.max_steps: 2,"
    " data.limit: null}}]",
    "methods=[{name: bon-bt, type: best_of_n, reward_model: bt},"
    " {name: ppo-bt, type: ppo, reward_model: bt, calibrate_kl: true}]",
    "baseline=ppo-bt", "policy_overrides.train.steps=1",
    "calibration.target_kl=0.05", "calibration.steps=1", "calibration.max_probes=2",
]


def _comparable(out) -> dict:
    res = json.loads((out / "results.json").read_text())
    timing = res.pop("timing")
    units = sorted(timing["units_run"] + timing["units_cached"])
    summaries = {k: json.loads((out / "units" / k / "done").read_text())["summary"] for k in units}
    return {"results": res, "units": units, "summaries": summaries}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    before = torch.get_num_threads()
    cfg = load_experiment_config("experiment_tiny", OVERRIDES)
    out = tmp_path_factory.mktemp("serial")
    outcome = run_experiment(cfg, out, progress=False, render=False)
    torch.set_num_threads(before)
    assert outcome.skipped == [] and any(k.startswith("calibration/ppo-bt/") for k in outcome.executed)
    return cfg, _comparable(out)


def test_two_local_workers_give_the_serial_results(serial, tmp_path):
    cfg, expected = serial
    out = tmp_path / "workers2"
    outcome = run_experiment(cfg, out, progress=False, render=False, execution=Execution(workers=2))
    got = _comparable(out)
    assert got["units"] == expected["units"] and got["summaries"] == expected["summaries"]
    assert got["results"] == expected["results"]
    assert sorted(outcome.executed) == expected["units"]
    assert outcome.results["timing"]["execution"] == {"executor": "local", "workers": 2, "threads_per_unit": 1}
    assert (out / "units" / "runs" / "ppo-bt" / "s0" / "log.txt").read_text().count("finished in") == 1
    # a finished folder is cached whatever the executor
    assert run_experiment(cfg, out, progress=False, render=False, execution=Execution(workers=2)).executed == []


def test_ray_gives_the_serial_results(serial, tmp_path):
    ray = pytest.importorskip("ray")
    cfg, expected = serial
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, logging_level="WARNING")
    try:
        run_experiment(cfg, out, progress=False, render=False, execution=Execution(executor="ray"))
    finally:
        ray.shutdown()
    got = _comparable(out)
    assert got["units"] == expected["units"] and got["summaries"] == expected["summaries"]
    assert got["results"] == expected["results"]
