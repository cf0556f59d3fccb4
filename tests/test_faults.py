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
    return subprocess.run([sys.executable, "-m", "robust_rlhf.cli", *RM_ARGS, "--output-dir", str(out)],
                          env=env, capture_output=True, text=True)


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
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "robust_rlhf.cli", *RM_ARGS, "--output-dir", str(out)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(6.0, 14.0))  # start-up is ~5 s; each step well under a second
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        _checkpoint_is_complete_or_absent(out)
    assert kills >= 5
    assert _run(out, env).returncode == 0
    a, b = load_file(str(ref / "heads.safetensors")), load_file(str(out / "heads.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert not list(out.glob(".*.tmp")) and not list((out / "checkpoints").glob(".*.tmp"))
