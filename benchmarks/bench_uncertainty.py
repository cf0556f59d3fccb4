"""Scoring cost of uncertainty: one model vs the K = 10 linear-head ensemble vs the layer ensemble,
side by side in one run on the same texts.

    python benchmarks/bench_uncertainty.py [--texts 1024] [--repeats 5] [--layer-k 5] [--top-layers 1]

Scoring time does not depend on the trained weights, only on the architecture, so the three
models are built from the same backbone (`--backbone`, default minilm-l6): (a) one backbone +
one scalar head; (b) one backbone + K = 10 linear heads; (c) the layer ensemble: the trunk
(all but the top `--top-layers` layers) once + `--layer-k` batched copies of the top layer(s),
each with its own head. Each is timed with `RewardModel.score` (tokenisation included, batch
`--batch-size`) as the median of `--repeats` runs after one warm-up; fp32 on CPU, as scored.
Target: (c) <= 2x (a). The last output line is one JSON object with the times and ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--texts", type=int, default=1024, help="texts scored per run (built-in test texts, repeated)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--linear-k", type=int, default=10)
    ap.add_argument("--layer-k", type=int, default=5)
    ap.add_argument("--top-layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args()

    import torch

    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.reward.layer_ensemble import split_trunk
    from robust_rlhf.reward.model import RewardModel, RewardModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pairs = load_preferences("builtin:test")
    base = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    rows = [base[i % len(base)] for i in range(args.texts)]
    prompts, responses = [r[0] for r in rows], [r[1] for r in rows]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def build(head_type: str, k: int) -> RewardModel:
        cfg = RewardModelConfig(backbone=args.backbone, head_type=head_type, num_heads=k,
                                max_length=args.max_length, top_layers=args.top_layers)
        model = RewardModel(cfg)
        if head_type == "layer_ensemble":
            split_trunk(model)
        return model.to(device).eval()

    models = {"one_model": build("scalar", 1), f"linear_k{args.linear_k}": build("ensemble", args.linear_k),
              f"layer_k{args.layer_k}_top{args.top_layers}": build("layer_ensemble", args.layer_k)}
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        model.score(prompts[: args.batch_size], responses[: args.batch_size], batch_size=args.batch_size)
    for _ in range(args.repeats):  # interleaved, so a load change on the machine hits all three alike
        for name, model in models.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.score(prompts, responses, batch_size=args.batch_size)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            assert out.per_head.shape[0] == len(prompts)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
        print(f"{name:>22}: {t:8.3f} s for {args.texts} texts  ({args.texts / t:8.1f} texts/s)  "
              f"runs: {', '.join(f'{x:.3f}' for x in times[name])}")
    one = med["one_model"]
    result = {"device": device, "texts": args.texts, "threads": torch.get_num_threads(),
              "seconds": med, "ratio_vs_one_model": {name: t / one for name, t in med.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
