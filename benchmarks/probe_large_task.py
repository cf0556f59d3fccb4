"""Probe: does a bootstrap MiniLM ensemble's spread flag where it over-scores, on the large task?

A proxy ensemble of K MiniLM Bradley-Terry reward models (preset rm_bt_minilm), each trained on a
prompt-level bootstrap (`--member-data bootstrap`; `seed`: all on the same pairs, other seeds) of a
gold-labelled draw from the large task's train split (`--train-pairs`, `--label-noise`, labels by
`--gold`) -- or any deep-ensemble preset trained by the library's recipe on that draw (`--preset`,
e.g. rm_deep_lora_minilm: K LoRA adapters on one MiniLM; rm_deep_backbones: MiniLM and SmolLM2
members) -- is judged on the held-out test prompts:

* accuracy of the ensemble mean on noiseless test pairs (vs the gold), and in-distribution
  uncertainty quality (`reward.evaluate.uncertainty_quality`: AUROC of the pair std for misranked
  pairs beside the -|margin| baseline);
* best-of-8 pools = each test prompt's 8 recorded completions with their recorded gold scores,
  judged by `reward.uncertainty.pool_uncertainty` (the lab's and `rm eval --pool`'s metrics, with
  bootstrap-over-prompts standard errors): top-pick AUROC (picks whose gold is below their
  prompt's median), over-scoring AUROC / Spearman of the std for z(proxy) - z(gold) beside the
  z(proxy) baseline, and the gold gained by picking with mean - std.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gold", default="learned", choices=("learned", "vader"))
    ap.add_argument("--train-pairs", type=int, default=1000)
    ap.add_argument("--label-noise", type=float, default=0.0)
    ap.add_argument("--members", type=int, default=None, help="K (default: 5, or the --preset's model.num_heads)")
    ap.add_argument("--member-data", default="bootstrap", choices=("bootstrap", "seed"),
                    help="bootstrap: each member on a prompt-level bootstrap; seed: all on the same data, other seeds")
    ap.add_argument("--preset", default=None,
                    help="a deep-ensemble reward-model preset (e.g. rm_deep_lora_minilm, rm_deep_backbones) trained once "
                         "by the library's recipe on the drawn pairs (its members.data decides their data; --members sets "
                         "K; --member-data is then unused); default: K rm_bt_minilm members trained here one by one")
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
    if args.preset is None:
        args.members = args.members or 5
        for k in range(args.members):
            rng = random.Random(f"{args.seed}:member{k}")
            boot = ([prompts[rng.randrange(len(prompts))] for _ in prompts] if args.member_data == "bootstrap"
                    else prompts)  # prompt-level bootstrap, or the same data (seed-only diversity)
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
    else:  # the library's deep-ensemble recipe, trained once on all drawn pairs
        save_preferences_jsonl(out / "train.jsonl", train)
        raw = _merge(read_config_source(args.preset), {
            "data": {"train": str(out / "train.jsonl"), "validation": str(out / "validation.jsonl")},
            "seed": args.seed, "resume": True})
        if args.members is not None:
            raw = _merge(raw, {"model": {"num_heads": args.members}})
        if args.max_steps is not None:
            raw = _merge(raw, {"stage1": {"max_steps": args.max_steps, "loss_threshold": None}})
        train_reward_model(build_dataclass(RewardTrainConfig, raw, args.preset), out / "ensemble")
        model = RewardModel.from_pretrained(out / "ensemble")
        sc = model.score([p.prompt for p in test] * 2, [p.chosen for p in test] + [p.rejected for p in test])
        per_head_pairs = sc.per_head.T.tolist()  # (K, 2 * n_test)
        per_head_pools = model.score(pool_prompts, pool_texts).per_head.T.tolist()  # (K, R)
        args.members = len(per_head_pairs)

    import numpy as np
    import torch

    from robust_rlhf.reward.evaluate import uncertainty_quality
    from robust_rlhf.reward.output import RewardOutput
    from robust_rlhf.reward.uncertainty import pool_uncertainty

    K, n_test = args.members, len(test)
    pairs = torch.tensor(per_head_pairs, dtype=torch.float64).T  # (2 * n_test, K)
    chosen, rejected = RewardOutput(per_head=pairs[:n_test]), RewardOutput(per_head=pairs[n_test:])
    in_dist, _ = uncertainty_quality(chosen, rejected)
    n = len(test_rows[0]["completions"])
    per_head = np.asarray(per_head_pools, dtype=float).T.reshape(len(test_rows), n, K)  # (P, N, K)
    gold = np.asarray([r["gold"][args.gold] for r in test_rows], dtype=float)  # (P, N)
    results = {
        "command": "python benchmarks/probe_large_task.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "gold": args.gold, "train_pairs": len(train), "label_noise": args.label_noise,
        "flipped": sum(1 for p in train if p.extra.get("flipped")), "members": K,
        "member_data": args.member_data if args.preset is None else f"preset {args.preset}",
        "test_pairs": n_test,
        "accuracy_vs_gold": float((chosen.mean > rejected.mean).double().mean()),
        "member_accuracy": (pairs[:n_test] > pairs[n_test:]).double().mean(dim=0).tolist(),
        "in_distribution": in_dist,  # uncertainty/ AUROCs of misranked test pairs, beside -|margin|
        "pool": pool_uncertainty(per_head, gold),  # best-of-8 on the held-out prompts, bootstrap SEs
    }
    atomic_write_json(out / "results.json", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
