"""Units per hour of the over-optimisation lab for 1, 2, 4, ... workers (or on Ray).

    python benchmarks/bench_workers.py --config experiment_demo                 # 1, 2, 4, ... up to the cores
    python benchmarks/bench_workers.py --config experiment_tiny --workers 1,2   # the smoke check
    python benchmarks/bench_workers.py --config experiment_study --workers 1,8,32 --executor ray --address auto

Each cell is one fresh `robust-rlhf experiment run --workers N --no-progress` process into an
empty folder (every unit runs; nothing is cached), timed from start to exit -- the report and the
analysis included. The experiment's ``num_threads`` (default auto) decides the threads per unit;
set it with ``--set num_threads=1`` to compare workers at a fixed thread count. Run it on idle
cores: a busy machine measures the other processes. The last line is one JSON object
{"config", "executor", "cores", "cells": [{workers, threads_per_unit, wall_s, units, units_per_hour,
unit_seconds_sum, speedup}]}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _workers(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, got {text!r}")
    return values


def default_workers() -> list[int]:
    """1, 2, 4, ... up to this process's usable cores (and that count itself)."""
    from robust_rlhf.threads import _affinity, cgroup_cpu_limit, usable_cores

    cores = max(1, int(usable_cores(_affinity(), cgroup_cpu_limit())))
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return out + [cores]


def run_cell(config: str, workers: int, folder: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "robust_rlhf.cli", "experiment", "run", "--config", config, "--output-dir",
           str(folder), "--workers", str(workers), "--no-progress", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        sys.exit(f"bench_workers: `{' '.join(cmd)}` failed ({r.returncode}):\n{tail}")
    timing = json.loads((folder / "results.json").read_text())["timing"]
    units = len(timing["units_run"])
    return {"workers": workers, "threads_per_unit": timing["execution"]["threads_per_unit"],
            "wall_s": round(wall, 1), "units": units,
            "units_per_hour": round(units / wall * 3600, 1),
            "unit_seconds_sum": round(sum(timing["unit_seconds"][k] for k in timing["units_run"]), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiment_demo", help="experiment preset or YAML (default: %(default)s)")
    ap.add_argument("--workers", type=_workers, default=None,
                    help="comma-separated worker counts (default: 1, 2, 4, ... up to the usable cores)")
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--address", default=None, help="Ray cluster address (with --executor ray)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="experiment override (repeatable)")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep each cell's folder under DIR (default: deleted)")
    a = ap.parse_args(argv)
    if a.address is not None and a.executor != "ray":
        ap.error("--address needs --executor ray")
    from robust_rlhf.errors import UserError
    from robust_rlhf.experiments.config import load_experiment_config

    try:
        load_experiment_config(a.config, a.set)  # a bad config fails here, once, before any cell
    except UserError as e:
        ap.error(str(e))
    extra = ["--executor", a.executor] + (["--address", a.address] if a.address else []) + a.set
    workers = a.workers or default_workers()
    cells = []
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_workers_"))
    try:
        for n in workers:
            folder = base / f"workers{n}"
            if folder.exists():
                shutil.rmtree(folder)
            cell = run_cell(a.config, n, folder, extra)
            cell["speedup"] = round(cells[0]["wall_s"] / cell["wall_s"], 2) if cells else 1.0
            cells.append(cell)
            print(f"workers {n:3d} x {cell['threads_per_unit']} threads: {cell['wall_s']:8.1f} s  {cell['units']:4d} units  "
                  f"{cell['units_per_hour']:8.1f} units/h  x{cell['speedup']:.2f}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({"config": a.config, "executor": a.executor, "cores": os.cpu_count(), "cells": cells}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
