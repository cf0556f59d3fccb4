"""Stage-2 variants on ONE stage-1 backbone: the cheapest way to compare reward-model recipes.

A finished two-stage run (`robust-rlhf rm train ...`, ensemble or gaussian) leaves its stage-1
head in checkpoints/stage1/ and the pooled features of every training/validation text in
checkpoints/*_features.safetensors. This script trains each listed stage-2 variant on those
cached features exactly as `train_reward_model` does (same `train_stage2`, head 0 from the
stage-1 head), scores the evaluation pairs' features once, and writes one `rm eval`-style
metrics.json per variant plus a summary table. The stage-1 head alone is reported as `bt_stage1`.

    python benchmarks/rm_stage2_variants.py RUN_DIR OUT_DIR [--data builtin:test] [--gold vader] \\
        --variant NAME key=value ... [--variant NAME2 key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from robust_rlhf.config import config_to_dict, load_config
from robust_rlhf.data.preferences import load_preferences
from robust_rlhf.gold import load_gold
from robust_rlhf.report.reward_eval import write_eval_report
from robust_rlhf.reward.evaluate import evaluate_rewards
from robust_rlhf.reward.heads import RewardHeads
from robust_rlhf.reward.model import RewardModel, RewardModelConfig
from robust_rlhf.reward.output import RewardOutput
from robust_rlhf.reward.stage2 import train_stage2
from robust_rlhf.reward.train_config import RewardTrainConfig


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--data", default="builtin:test")
    ap.add_argument("--gold", default="vader")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME key=value")
    args = ap.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    base = load_config(RewardTrainConfig, str(run / "config.yaml"), [])
    w = load_file(str(run / "checkpoints" / "stage1" / "weights.safetensors"))
    H = w["head.weight"].shape[1]
    stage1_head = torch.nn.Linear(H, 1)
    stage1_head.load_state_dict({"weight": w["head.weight"], "bias": w["head.bias"]})
    train_feats = load_file(str(run / "checkpoints" / "train_features.safetensors"))["features"]
    val_file = run / "checkpoints" / "val_features.safetensors"
    val_feats = load_file(str(val_file))["features"] if val_file.exists() else None
    # Score the evaluation texts' features once with the fine-tuned backbone.
    mcfg = RewardModelConfig(**{**config_to_dict(base.model), "backbone": str(run / "backbone"), "head_type": "scalar"})
    model = RewardModel(mcfg)
    pairs = load_preferences(args.data)
    prompts = [p.prompt for p in pairs]
    _, fc = model.score(prompts, [p.chosen for p in pairs], return_features=True)
    _, fr = model.score(prompts, [p.rejected for p in pairs], return_features=True)
    gold = load_gold(args.gold) if args.gold else None
    gc = gr = None
    if gold is not None:
        gc = gold(prompts, [p.chosen for p in pairs])
        gr = gold(prompts, [p.rejected for p in pairs])
    rows = []

    def evaluate(name: str, heads: torch.nn.Module, extra: dict) -> None:
        with torch.no_grad():
            c, r = (RewardOutput(*[t if t is None else t.float() for t in heads(f)]) for f in (fc, fr))
        m, arrays = evaluate_rewards(c, r, pairs, fc, fr, heads.linear.weight.detach(), None, gc, gr)
        m.update(variant=name, **extra)
        write_eval_report(m, arrays, out / name)
        keys = ["accuracy", "accuracy_ci95", "uncertainty/auroc_misranked", "uncertainty/auroc_misranked_small_margin",
                "uncertainty/auroc_misranked_margin_over_uncertainty", "uncertainty/auroc_gold_abs_error",
                "uncertainty/auroc_misranked_learned_std", "uncertainty/per_head_mean_std",
                "uncertainty/auroc_misranked_per_head_std"]
        rows.append({"variant": name, **extra, **{k: m.get(k) for k in keys}})
        print(json.dumps(rows[-1]), flush=True)

    h1 = RewardHeads(H, 1, "scalar")
    h1.linear.load_state_dict(stage1_head.state_dict())
    evaluate("bt_stage1", h1, {})
    for name, *overrides in args.variant:
        cfg = load_config(RewardTrainConfig, str(run / "config.yaml"), overrides)
        vm = type("M", (), {})()
        vm.heads = RewardHeads(H, cfg.model.num_heads, cfg.model.head_type, cfg.model.min_std)
        log: list = []
        summary = train_stage2(vm, train_feats, val_feats, stage1_head, cfg, log)
        evaluate(name, vm.heads.cpu(), {"overrides": overrides, "stage2": summary})
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
