"""PPO under 2 CPU processes (torchrun + Accelerate, gloo) equals one process with the same global
batch: same rollouts (``sampling.seed_per_sample=true``), same per-step losses, KL and proxy reward."""

import json
import os
import subprocess
import sys

import pytest

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
# policy_tiny (batch 4, 2 minibatches -> 1 sample per process per minibatch) with 4-token responses
# (sampling is half of a step's time; the comparison does not depend on the length), 2 PPO epochs,
# adaptive KL, per-sample seeds so both runs draw the same responses; both on the CPU.
# model.precision=fp32: exact equality across process counts is an fp32 property (bf16 rounds per batch shape)
OVERRIDES = ["device=cpu", "sampling.max_new_tokens=4", "sampling.seed_per_sample=true", "model.precision=fp32",
             "ppo.epochs=2", "kl.adaptive=true", "log.eval_every=0", "log.checkpoint_every=1", "log.progress=false"]
KEYS = ["kl", "proxy_reward", "policy/kl_k1", "policy/entropy", "policy/response_length", "losses/policy",
        "losses/value", "losses/total", "losses/grad_norm", "policy/approx_kl",
        "losses/explained_variance", "policy/kl_coef"]


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_ppo_two_processes_match_one_process(tmp_path):
    from robust_rlhf.cli import main

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo CPU ranks even on a GPU machine
    cmd = ["policy", "train", "--config", "policy_tiny", *OVERRIDES]
    # one process: the CLI's entry point in this process (no second interpreter to start), on the CPU too
    assert main([*cmd, "--output-dir", str(tmp_path / "one")]) == 0
    r2 = subprocess.run(timeout=900, args=[TORCHRUN, "--nproc_per_node", "2", "--master_port", "29541", "-m", "robust_rlhf.cli", *cmd,
                         "--output-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for k in KEYS:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), (a["step"], k)
    assert (tmp_path / "two" / "policy" / "adapter_config.json").exists()
    assert len(list((tmp_path / "two" / "checkpoints").glob("step_*"))) == 2
