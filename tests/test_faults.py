"""Fault injection: `kill -9` at random points of `rm train`; every checkpoint on disk is complete
or absent, and resuming reaches the same final weights as an uninterrupted run.

Slow (restarts the CLI many times): run with `python -m pytest -m slow tests/test_faults.py`."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

RM_ARGS = ["rm", "train", "--config", "rm_tiny", "stage1.max_steps=12", "stage1.checkpoint_every=1",
           "data.validation=null", "stage2.epochs=3", "model.max_length=32", "data.limit=64"]


def _run(out, env):
    return subprocess.run(timeout=900, args=[sys.executable, "-m", "robust_rlhf.cli", *RM_ARGS, "--output-dir", str(out)],
                          env=env, capture_output=True, text=True)


def _kill_when(cmd, progress, target, rng, env):
    """Start `cmd`, wait until `progress()` reaches `target` (a step number), then SIGKILL it after
    a random extra delay that lands mid-step or mid-write. Returns True if it was killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if progress() >= target:
            time.sleep(rng.uniform(0.0, 0.8))
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def _rm_progress(out):
    try:
        return json.loads((out / "checkpoints" / "stage1" / "state.json").read_text())["progress"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _policy_progress(out):
    steps = [int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*")] if (out / "checkpoints").exists() else []
    return max(steps, default=0)


def _checkpoint_is_complete_or_absent(out):
    ck = out / "checkpoints" / "stage1"
    if ck.exists():
        names = {p.name for p in ck.iterdir()}
        assert names == {"weights.safetensors", "optimizer.pt", "state.json"}, names
        json.loads((ck / "state.json").read_text())
        load_file(str(ck / "weights.safetensors"))
    if (out / "reward_config.json").exists():  # a final model present is a complete one
        load_file(str(out / "heads.safetensors"))


def test_kill9_at_random_points_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "reference"
    assert _run(ref, env).returncode == 0
    out = tmp_path / "killed"
    rng = random.Random(1234)
    # Kill points: 5 random stage-1 steps, then once more after the last stage-1 checkpoint
    # (i.e. inside the feature pass / stage 2 / the final save).
    targets = sorted(rng.sample(range(1, 12), 5)) + [12]
    cmd = [sys.executable, "-m", "robust_rlhf.cli", *RM_ARGS, "--output-dir", str(out)]
    kills = 0
    for t in targets:
        kills += _kill_when(cmd, lambda: _rm_progress(out), t, rng, env)
        _checkpoint_is_complete_or_absent(out)
    assert kills >= 5
    assert _run(out, env).returncode == 0
    a, b = load_file(str(ref / "heads.safetensors")), load_file(str(out / "heads.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert not list(out.glob(".*.tmp")) and not list((out / "checkpoints").glob(".*.tmp"))


POLICY_ARGS = ["policy", "train", "--config", "policy_tiny", "train.steps=10", "log.checkpoint_every=1",
               "log.eval_every=5", "resume=true"]


def test_kill9_policy_train_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "robust_rlhf.cli", *POLICY_ARGS, "--output-dir"]
    ref = tmp_path / "reference"
    assert subprocess.run(timeout=900, args=[*cmd, str(ref)], env=env, capture_output=True).returncode == 0
    out = tmp_path / "killed"
    rng = random.Random(99)
    targets = sorted(rng.sample(range(1, 10), 5)) + [10]  # the last one lands in the final save
    kills = 0
    for t in targets:
        kills += _kill_when([*cmd, str(out)], lambda: _policy_progress(out), t, rng, env)
        for ck in (out / "checkpoints").glob("step_*"):  # complete or absent
            assert (ck / "state.json").exists(), sorted(p.name for p in ck.iterdir())
            json.loads((ck / "state.json").read_text())
    assert kills >= 5
    r = subprocess.run(timeout=900, args=[*cmd, str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    strip = lambda rows: [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]  # noqa: E731
    a = strip([json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()])
    b = strip([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    assert len(a) == len(b) == 10
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (ra["step"], k)
    wa = load_file(str(ref / "policy" / "adapter_model.safetensors"))
    wb = load_file(str(out / "policy" / "adapter_model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
