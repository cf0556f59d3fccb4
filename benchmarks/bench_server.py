"""Load benchmark of the reward server (localhost only; bounded in requests and time).

N concurrent asyncio/aiohttp clients each send a few ``POST /score`` requests to a server
started as a subprocess (``python -m robust_rlhf.cli.serve``, exactly what users run) on a free
loopback port. Reported: throughput (texts/s), p50/p99 request latency, error count (target 0),
the server's mean gathered batch size, and throughput as a fraction of in-process batched
scoring (``RewardModel.score``) of the same texts with the same batch size (target >= 0.8).
In-process and server rounds alternate (``--rounds``), each in a fresh
process after one untimed warm-up pass, and each side's texts/s is pooled over its rounds,
because the machine may be shared; CPU seconds per 1000 texts are reported for both sides too.

Without ``--model`` it benchmarks an untrained K = 3 MiniLM ensemble (untrained heads cost the
same as trained ones). The last output line is one JSON object with the figures.

    python benchmarks/bench_server.py                       # 256 clients x 2 requests x 2 texts
    python benchmarks/bench_server.py --model runs/rm --clients 64 --requests-per-client 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def texts(n: int) -> tuple[list[str], list[str]]:
    """n (prompt, response) pairs cycled from the built-in task's test split."""
    from robust_rlhf.data.preferences import builtin_split_path

    rows = [json.loads(line) for line in builtin_split_path("test").read_text().splitlines() if line.strip()]
    pairs = [(r["prompt"], r[key]) for r in rows for key in ("chosen", "rejected")]
    pairs = [pairs[i % len(pairs)] for i in range(n)]
    return [p for p, _ in pairs], [r for _, r in pairs]


def untrained_model(folder: Path) -> Path:
    from robust_rlhf.reward.model import RewardModel, RewardModelConfig

    RewardModel(RewardModelConfig(backbone="minilm-l6", head_type="ensemble", num_heads=3)).save_pretrained(
        folder, save_backbone=False)
    return folder


def in_process(model, prompts, responses, batch_size: int) -> tuple[float, float]:
    """(texts per wall second, CPU seconds used) of in-process batched scoring."""
    t0, c0 = time.perf_counter(), time.process_time()
    model.score(prompts, responses, batch_size=batch_size)
    return len(prompts) / (time.perf_counter() - t0), time.process_time() - c0


def baseline_subprocess(model_dir: Path, n: int, batch_size: int) -> tuple[float, float]:
    """In-process scoring timed in a fresh process (like the server's), after one untimed pass."""
    out = subprocess.run([sys.executable, __file__, "--baseline-only", "--model", str(model_dir), "--texts", str(n),
                          "--max-batch-size", str(batch_size)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"baseline failed: {out.stderr[-2000:]}")
    rate, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return rate, cpu


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) used so far by process ``pid`` (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


async def load(url: str, prompts, responses, clients: int, per_client: int, items: int, deadline: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - time.monotonic()))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(c: int) -> None:
            for j in range(per_client):
                if time.monotonic() > deadline:
                    errors.append("deadline")
                    return
                start = (c * per_client + j) * items
                body = {"prompts": prompts[start:start + items], "responses": responses[start:start + items]}
                t0 = time.perf_counter()
                try:
                    async with session.post(url + "/score", json=body) as r:
                        reply = await r.json()
                        if r.status != 200 or len(reply.get("rewards", [])) != items:
                            errors.append(f"HTTP {r.status}: {str(reply)[:200]}")
                            continue
                except Exception as e:  # noqa: BLE001 - counted, reported
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
        async with session.get(url + "/health") as r:
            health = await r.json()
    return {"latencies": latencies, "errors": errors, "wall": wall, "health": health}


def start_server(model_dir: Path, args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "robust_rlhf.cli.serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", "0", "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
           "--max-queue", str(max(4096, args.clients * args.items_per_request))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    if not line or " on http://" not in line[0]:
        proc.kill()
        raise SystemExit(f"server did not start: {line}")
    return proc, line[0].split(" on ")[1].split()[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="reward model folder (default: an untrained K = 3 MiniLM ensemble)")
    p.add_argument("--clients", type=int, default=256, help="concurrent clients (default: %(default)s)")
    p.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends (default: %(default)s)")
    p.add_argument("--items-per-request", type=int, default=2, help="texts per request (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=64, help="server and baseline batch size (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="alternating in-process/server rounds (default: %(default)s)")
    p.add_argument("--time-limit", type=float, default=150.0,
                   help="seconds for the whole benchmark; no round starts after it (default: %(default)s)")
    p.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--texts", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_only:  # child of baseline_subprocess: print [texts/s, CPU s]
        from robust_rlhf.reward.model import RewardModel

        model = RewardModel.from_pretrained(args.model)
        prompts, responses = texts(args.texts)
        model.score(prompts, responses, batch_size=args.max_batch_size)  # warm-up pass, untimed
        print(json.dumps(list(in_process(model, prompts, responses, args.max_batch_size))))
        return 0

    import torch

    n = args.clients * args.requests_per_client * args.items_per_request
    prompts, responses = texts(n)
    inproc: list[float] = []
    inproc_cpu: list[float] = []
    server_cpu: list[float] = []
    runs: list[dict] = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else untrained_model(Path(tmp) / "rm")
        proc, url = start_server(model_dir, args)
        try:
            asyncio.run(load(url, prompts[:8], responses[:8], 4, 1, 2, time.monotonic() + 60))  # warm-up
            # Alternate in-process and server rounds: the machine may be shared, so both see the
            # same background load on average.
            for r in range(args.rounds):
                # A fresh process, like the server: on the shared test machine a long-lived process
                # that had already done other work scored at ~2x the CPU per text.
                rate, cpu = baseline_subprocess(model_dir, n, args.max_batch_size)
                inproc.append(rate)
                inproc_cpu.append(cpu)
                print(f"round {r + 1}: in-process {inproc[-1]:.1f} texts/s ({n} texts, batch "
                      f"{args.max_batch_size})", flush=True)
                left = args.time_limit - (time.monotonic() - t_start)
                if left <= 0:
                    break
                c0 = process_cpu_s(proc.pid)
                runs.append(asyncio.run(load(url, prompts, responses, args.clients, args.requests_per_client,
                                             args.items_per_request, time.monotonic() + left)))
                c1 = process_cpu_s(proc.pid)
                if c0 is not None and c1 is not None:
                    server_cpu.append(c1 - c0)
                ok = len(runs[-1]["latencies"]) * args.items_per_request
                print(f"round {r + 1}: server {ok / runs[-1]['wall']:.1f} texts/s ({args.clients} clients x "
                      f"{args.requests_per_client} requests x {args.items_per_request} texts, "
                      f"{len(runs[-1]['errors'])} errors)", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    res = {"latencies": [x for r in runs for x in r["latencies"]], "errors": [e for r in runs for e in r["errors"]],
           "wall": sum(r["wall"] for r in runs), "health": runs[-1]["health"] if runs else {}}
    lat_ms = [1000 * x for x in res["latencies"]]
    scored = len(res["latencies"]) * args.items_per_request
    throughput = scored / res["wall"] if res["wall"] else 0.0
    baseline = len(inproc) / sum(1 / x for x in inproc)  # total texts / total time
    stats = res["health"].get("stats", {})
    summary = {
        "clients": args.clients, "requests": len(runs) * args.clients * args.requests_per_client,
        "items_per_request": args.items_per_request, "texts_per_round": n, "rounds": len(runs),
        "errors": len(res["errors"]),
        "wall_s": round(res["wall"], 3), "throughput_texts_per_s": round(throughput, 2),
        "requests_per_s": round(len(res["latencies"]) / res["wall"], 2) if res["wall"] else 0.0,
        "latency_p50_ms": round(percentile(lat_ms, 50), 1), "latency_p99_ms": round(percentile(lat_ms, 99), 1),
        "inprocess_texts_per_s": round(baseline, 2),
        "throughput_ratio": round(throughput / baseline, 3),
        # CPU seconds per 1000 texts: insensitive to other jobs on a shared machine.
        "inprocess_cpu_s_per_1k": round(1000 * sum(inproc_cpu) / (n * len(inproc_cpu)), 2) if inproc_cpu else None,
        "server_cpu_s_per_1k": round(1000 * sum(server_cpu) / scored, 2) if server_cpu and scored else None,
        "server_mean_batch_size": round(stats.get("mean_batch_size", 0.0), 2),
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "total_s": round(time.monotonic() - t_start, 1),
    }
    if res["errors"]:
        print("first errors: " + "; ".join(res["errors"][:5]), flush=True)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
