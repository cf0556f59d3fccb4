"""Probe: does a bootstrap MiniLM ensemble's spread flag where it over-scores, on the large task?

A proxy ensemble of K MiniLM Bradley-Terry reward models (preset rm_bt_minilm), each trained on a
prompt-level bootstrap of a gold-labelled draw from the large task's train split (`--train-pairs`,
`--label-noise`, labels by `--gold`), is judged on the held-out test prompts:

* accuracy of the ensemble mean on noiseless test pairs (vs the gold);
* best-of-8 pools = each test prompt's 8 recorded completions with their recorded gold scores:
  - top pick: the proxy mean's argmax per prompt; flagged when its gold is below its prompt's
    median gold; AUROC of the ensemble std of the top picks for that flag;
  - over-scoring: per completion z(proxy mean) - z(gold), z within its prompt; AUROC of the std
    for "over-scored" (> 0) and Spearman of std with it; beside the -|margin| style baseline
    (AUROC of the proxy z-score itself).

Resumable: each member is a reward-model folder under --output-dir (rm train resumes), results go
to --output-dir/results.json. Threads: set OMP_NUM_THREADS. Example (the report's numbers):

    python benchmarks/probe_large_task.py --gold learned --train-pairs 1000 --members 5 \\
        --output-dir runs/probe_learned_1k
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else float("nan")


def zscore(xs: list[float]) -> list[float]:
    m = sum(xs) / len(xs)
    s = (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5
    return [(x - m) / s if s > 0 else 0.0 for x in xs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gold", default="learned", choices=("learned", "vader"))
    ap.add_argument("--train-pairs", type=int, default=1000)
    ap.add_argument("--label-noise", type=float, default=0.0)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=None, help="stage1.max_steps of each member (null = the preset's epochs)")
    ap.add_argument("--test-pairs", type=int, default=2000)
    ap.add_argument("--task-dir", default=None, help="the large task's folder (default: the shipped fixture)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", required=True)
    args = ap.parse_args()

    from robust_rlhf.config import _merge, build_dataclass, read_config_source
    from robust_rlhf.data.large_task import draw_pairs, load_large_task
    from robust_rlhf.data.preferences import save_preferences_jsonl
    from robust_rlhf.reward.model import RewardModel
    from robust_rlhf.reward.train import train_reward_model
    from robust_rlhf.reward.train_config import RewardTrainConfig
    from robust_rlhf.utils import atomic_write_json

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, _ = load_large_task(args.task_dir)
    train = draw_pairs(rows, "train", args.gold, args.train_pairs, args.label_noise, args.seed)
    val = draw_pairs(rows, "validation", args.gold, None, 0.0, args.seed)[:500]
    test = draw_pairs(rows, "test", args.gold, None, 0.0, args.seed)[: args.test_pairs]
    save_preferences_jsonl(out / "validation.jsonl", val)
    prompts = sorted({p.prompt for p in train})
    per_head_pairs, per_head_pools = [], []
    test_rows = [r for r in rows if r["split"] == "test"]
    pool_prompts = [r["prompt"] for r in test_rows for _ in r["completions"]]
    pool_texts = [c for r in test_rows for c in r["completions"]]
    for k in range(args.members):
        rng = random.Random(f"{args.seed}:member{k}")
        boot = [prompts[rng.randrange(len(prompts))] for _ in prompts]  # prompt-level bootstrap
        by_prompt: dict[str, list] = {}
        for p in train:
            by_prompt.setdefault(p.prompt, []).append(p)
        member_pairs = [p for q in boot for p in by_prompt[q]]
        save_preferences_jsonl(out / f"train_m{k}.jsonl", member_pairs)
        raw = _merge(read_config_source("rm_bt_minilm"), {
            "data": {"train": str(out / f"train_m{k}.jsonl"), "validation": str(out / "validation.jsonl")},
            "seed": k, "resume": True})
        if args.max_steps is not None:
            raw = _merge(raw, {"stage1": {"max_steps": args.max_steps}})
        cfg = build_dataclass(RewardTrainConfig, raw, f"member {k}")
        train_reward_model(cfg, out / f"member{k}")
        model = RewardModel.from_pretrained(out / f"member{k}")
        sc = model.score([p.prompt for p in test] * 2, [p.chosen for p in test] + [p.rejected for p in test])
        per_head_pairs.append(sc.per_head[:, 0].tolist())
        per_head_pools.append(model.score(pool_prompts, pool_texts).per_head[:, 0].tolist())

    K, n_test = args.members, len(test)
    mean_c = [sum(h[i] for h in per_head_pairs) / K for i in range(n_test)]
    mean_r = [sum(h[n_test + i] for h in per_head_pairs) / K for i in range(n_test)]
    accuracy = sum(c > r for c, r in zip(mean_c, mean_r)) / n_test
    member_acc = [sum(h[i] > h[n_test + i] for i in range(n_test)) / n_test for h in per_head_pairs]

    def std(vals: list[float]) -> float:
        m = sum(vals) / len(vals)
        return (sum((v - m) ** 2 for v in vals) / max(len(vals) - 1, 1)) ** 0.5

    n = len(test_rows[0]["completions"])
    top_std, top_bad, over, over_std, proxy_z = [], [], [], [], []
    for j, r in enumerate(test_rows):
        idx = range(j * n, (j + 1) * n)
        means = [sum(h[i] for h in per_head_pools) / K for i in idx]
        stds = [std([h[i] for h in per_head_pools]) for i in idx]
        gold = r["gold"][args.gold]
        med = sorted(gold)[n // 2 - 1 : n // 2 + 1]
        top = max(range(n), key=lambda i: means[i])
        top_std.append(stds[top])
        top_bad.append(gold[top] < sum(med) / 2)
        zp, zg = zscore(means), zscore(gold)
        over += [a - b for a, b in zip(zp, zg)]
        over_std += stds
        proxy_z += zp
    results = {
        "command": "python benchmarks/probe_large_task.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "gold": args.gold, "train_pairs": len(train), "label_noise": args.label_noise,
        "flipped": sum(1 for p in train if p.extra.get("flipped")), "members": K,
        "test_pairs": n_test, "accuracy_vs_gold": accuracy, "member_accuracy": member_acc,
        "pools": {"prompts": len(test_rows), "size": n},
        "top_pick": {"below_median": sum(top_bad), "auroc_std": auroc(top_std, top_bad)},
        "over_scoring": {"over_scored": sum(d > 0 for d in over), "auroc_std": auroc(over_std, [d > 0 for d in over]),
                         "spearman_std": spearman(over_std, over),
                         "auroc_proxy_z_baseline": auroc(proxy_z, [d > 0 for d in over])},
    }
    atomic_write_json(out / "results.json", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
