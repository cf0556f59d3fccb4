"""Scoring and training cost of the issue-23 recipes against one model.

    python benchmarks/bench_recipes.py RM_FOLDER [RM_FOLDER ...] [--reference RM] [--texts 1024] [--repeats 5]

Scoring: each folder is loaded with `RewardModel.from_pretrained` and times `score` on the same
`--texts` built-in test texts (tokenisation included, fp32, batch `--batch-size`), median of
`--repeats` runs after one warm-up. The reference ("one model") is `--reference` if given, else a
single-head MiniLM-L6 built from the pretrained backbone (scoring time does not depend on the
trained weights). Training: the wall time each folder's `train_summary.json` recorded (a deep
ensemble: the sum over its members), beside the reference's when it has one; those were taken
when the run was trained, so compare them only for runs trained on the same idle machine.
The last output line is one JSON object with the times and ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _train_seconds(folder: Path) -> float | None:
    f = folder / "train_summary.json"
    if not f.exists():
        return None
    s = json.loads(f.read_text())
    if "members" in s and isinstance(s["members"], list):  # deep ensemble: every member's own run
        tot = [_train_seconds(folder / "members" / str(k)) for k in range(len(s["members"]))]
        return None if any(t is None for t in tot) else float(sum(tot))
    return s.get("wall_time_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="reward-model folders (rm train outputs)")
    ap.add_argument("--reference", default=None, help="folder of the one model to compare with")
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args()

    import torch

    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.models.hub import load_tokenizer
    from robust_rlhf.reward.model import RewardModel, RewardModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = load_preferences("builtin:test")
    texts = [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    texts = (texts * (args.texts // len(texts) + 1))[: args.texts]
    prompts, responses = [t[0] for t in texts], [t[1] for t in texts]

    def timed(model) -> float:
        model.score(prompts[: args.batch_size], responses[: args.batch_size], batch_size=args.batch_size)  # warm-up
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            model.score(prompts, responses, batch_size=args.batch_size)
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    if args.reference:
        ref_name, ref = args.reference, RewardModel.from_pretrained(args.reference)
    else:
        ref_name, ref = "one MiniLM-L6 + 1 head", RewardModel(RewardModelConfig(head_type="scalar", max_length=64))
    ref_s = timed(ref)
    ref_train = _train_seconds(Path(args.reference)) if args.reference else None
    print(f"{ref_name}: score {ref_s:.2f} s for {len(texts)} texts")
    result = {"texts": len(texts), "reference": ref_name, "reference_score_s": ref_s, "models": {}}
    for m in args.models:
        model = RewardModel.from_pretrained(m)
        s = timed(model)
        tr = _train_seconds(Path(m))
        row = {"head_type": model.config.head_type, "num_heads": model.config.num_heads, "score_s": s,
               "score_ratio": s / ref_s, "train_s": tr,
               "train_ratio": None if tr is None or not ref_train else tr / ref_train}
        result["models"][m] = row
        print(f"{m}: {row['head_type']} K={row['num_heads']}  score {s:.2f} s ({row['score_ratio']:.2f}x)"
              + ("" if tr is None else f"  train {tr:.0f} s" + ("" if row["train_ratio"] is None else f" ({row['train_ratio']:.2f}x)")))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
