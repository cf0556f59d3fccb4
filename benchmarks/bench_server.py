"""Load benchmark of the reward server (localhost only; bounded in requests and time).

N concurrent asyncio/aiohttp clients each send a few ``POST /score`` requests to a server
started as a subprocess (``python -m robust_rlhf.cli.serve``, exactly what users run) on a free
loopback port. Reported: throughput (texts/s), p50/p99 request latency, error count (target 0),
the server's mean gathered batch size, and throughput as a fraction of in-process batched
scoring (``RewardModel.score``) of the same texts with the same batch size (target >= 0.8).
The in-process baseline is timed before and after the load run and averaged, because the
machine may be shared.

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
    from robust_rlhf.data.builtin_task import builtin_split_path

    rows = [json.loads(line) for line in builtin_split_path("test").read_text().splitlines() if line.strip()]
    pairs = [(r["prompt"], r[key]) for r in rows for key in ("chosen", "rejected")]
    pairs = [pairs[i % len(pairs)] for i in range(n)]
    return [p for p, _ in pairs], [r for _, r in pairs]


def untrained_model(folder: Path) -> Path:
    from robust_rlhf.reward.model import RewardModel, RewardModelConfig

    RewardModel(RewardModelConfig(backbone="minilm-l6", head_type="ensemble", num_heads=3)).save_pretrained(
        folder, save_backbone=False)
    return folder


def in_process(model, prompts, responses, batch_size: int) -> float:
    """Texts per second of in-process batched scoring."""
    t0 = time.perf_counter()
    model.score(prompts, responses, batch_size=batch_size)
    return len(prompts) / (time.perf_counter() - t0)


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
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds for the load phase (default: %(default)s)")
    args = p.parse_args()

    import torch

    from robust_rlhf.reward.model import RewardModel

    n = args.clients * args.requests_per_client * args.items_per_request
    prompts, responses = texts(n)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else untrained_model(Path(tmp) / "rm")
        model = RewardModel.from_pretrained(model_dir)
        model.score(prompts[:8], responses[:8])  # warm-up
        before = in_process(model, prompts, responses, args.max_batch_size)
        print(f"in-process: {before:.1f} texts/s ({n} texts, batch {args.max_batch_size})", flush=True)

        proc, url = start_server(model_dir, args)
        try:
            print(f"server at {url}; {args.clients} clients x {args.requests_per_client} requests x "
                  f"{args.items_per_request} texts", flush=True)
            asyncio.run(load(url, prompts[:8], responses[:8], 4, 1, 2, time.monotonic() + 60))  # warm-up
            res = asyncio.run(load(url, prompts, responses, args.clients, args.requests_per_client,
                                   args.items_per_request, time.monotonic() + args.time_limit))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

        after = in_process(model, prompts, responses, args.max_batch_size)
        print(f"in-process again: {after:.1f} texts/s", flush=True)

    lat_ms = [1000 * x for x in res["latencies"]]
    scored = len(res["latencies"]) * args.items_per_request
    throughput = scored / res["wall"]
    baseline = (before + after) / 2
    stats = res["health"].get("stats", {})
    summary = {
        "clients": args.clients, "requests": args.clients * args.requests_per_client,
        "items_per_request": args.items_per_request, "texts": n, "errors": len(res["errors"]),
        "wall_s": round(res["wall"], 3), "throughput_texts_per_s": round(throughput, 2),
        "requests_per_s": round(len(res["latencies"]) / res["wall"], 2),
        "latency_p50_ms": round(percentile(lat_ms, 50), 1), "latency_p99_ms": round(percentile(lat_ms, 99), 1),
        "inprocess_texts_per_s": round(baseline, 2),
        "inprocess_before_after": [round(before, 2), round(after, 2)],
        "throughput_ratio": round(throughput / baseline, 3),
        "server_mean_batch_size": round(stats.get("mean_batch_size", 0.0), 2),
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if res["errors"]:
        print("first errors: " + "; ".join(res["errors"][:5]), flush=True)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
