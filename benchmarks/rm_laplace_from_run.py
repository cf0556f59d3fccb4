"""The Bayesian-last-layer recipe (reward/laplace.py) applied to an existing two-stage run, without
training a second stage 1: the run's stage-1 head (checkpoints/stage1/weights.safetensors) and cached
training features (checkpoints/train_features.safetensors) give the Laplace posterior, and K heads
drawn from it replace the run's heads in a copy of the run's model.

    python benchmarks/rm_laplace_from_run.py RUN OUT [--heads 32] [--prior-precision 1.0] [--seed 0]

It is what `rm train --config rm_deep_laplace_minilm` does after the same stage 1 (same seed and
stage-1 settings as RUN).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--prior-precision", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from robust_rlhf.reward.laplace import LaplaceConfig, laplace_heads
    from robust_rlhf.reward.model import RewardModel
    from robust_rlhf.reward.heads import RewardHeads

    run = Path(args.run)
    model = RewardModel.from_pretrained(run)
    feats = load_file(str(run / "checkpoints" / "train_features.safetensors"))["features"]
    w = load_file(str(run / "checkpoints" / "stage1" / "weights.safetensors"))
    head = torch.nn.Linear(w["head.weight"].shape[1], 1)
    head.load_state_dict({"weight": w["head.weight"], "bias": w["head.bias"]})
    model.config.num_heads = args.heads
    model.config.head_stats = {}
    model.heads = RewardHeads(model.backbone.config.hidden_size, args.heads, "ensemble")
    cfg = argparse.Namespace(seed=args.seed, laplace=LaplaceConfig(enabled=True, prior_precision=args.prior_precision))
    print(laplace_heads(model, feats, head, cfg))
    model.save_pretrained(args.out, save_backbone=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
