"""OpenMP wait settings side by side: seconds per PPO step, idle and next to one busy process.

    python benchmarks/bench_threads.py --config policy_tiny --steps 4
    python benchmarks/bench_threads.py --config runs/demo/units/runs/ppo-mean/s0/config.yaml   # the demo's PPO unit

Each cell is a fresh `robust-rlhf policy train` process (its first step, a warm-up, is not
counted); "+busy" runs it next to `python -c "while True: pass"`, started here and killed at
the end. The last line is one JSON object {setting: {"idle": s, "busy": s}}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SETTINGS = {  # name -> environment (None = leave unset; the CLI then applies its default)
    "cli default (GOMP_SPINCOUNT=30000)": {},
    "spin forever (OMP_WAIT_POLICY=ACTIVE)": {"OMP_WAIT_POLICY": "ACTIVE"},
    "no spin (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}


def step_seconds(config: str, steps: int, extra_env: dict) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(extra_env)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "robust_rlhf.cli", "policy", "train", "--config", config, "--output-dir", d,
                        f"train.steps={steps}", "log.eval_every=0", "log.checkpoint_every=0", "log.progress=false"],
                       env=env, check=True, capture_output=True)
        times = [json.loads(line)["time/step_s"] for line in open(os.path.join(d, "metrics.jsonl"))]
    return sum(times[1:]) / len(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="policy_tiny", help="policy config (preset name or YAML path)")
    ap.add_argument("--steps", type=int, default=4, help="PPO steps per cell (>= 2; the first is not timed)")
    a = ap.parse_args()
    if a.steps < 2:
        sys.exit("--steps must be >= 2 (the first step is a warm-up)")
    out: dict[str, dict[str, float]] = {name: {} for name in SETTINGS}
    for name, env in SETTINGS.items():
        if name != "1 thread":
            out[name]["idle"] = step_seconds(a.config, a.steps, env)
            print(f"{name:40s} idle  {out[name]['idle']:.2f} s/step", flush=True)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for name, env in SETTINGS.items():
            out[name]["busy"] = step_seconds(a.config, a.steps, env)
            print(f"{name:40s} +busy {out[name]['busy']:.2f} s/step", flush=True)
    finally:
        hog.kill()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
