"""Best-of-n with conservative aggregation on *standardised* heads, from a finished experiment folder.

    python benchmarks/bon_standardised_heads.py runs/study_bon

For each multi-head proxy of the folder's best-of-n study (`results.json` -> ``bon_study``, scores in
`units/bon/scores/<rm>/scores.json`), every head is standardised by its validation statistics
(`robust_rlhf.aggregate.normalize_heads` with the scores' ``head_stats``, as the study's `min`/`max`
already are) before mean - std (lcb) and UWO select; prints, per proxy, best-of-n gold of each at the
study's claim n and its paired difference to the study's raw mean (``bon_study.per_prompt``) with a
95 % normal interval over prompts, and the uncertainty-under-shift metrics (`pool_uncertainty`) of
the standardised heads. Independently trained reward models (deep ensembles) are each defined only up
to a constant, so their raw spread mixes offsets with disagreement; this measures what standardising
changes (docs/results.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from robust_rlhf.aggregate import AggregatorConfig, normalize_heads
from robust_rlhf.experiments.bon_study import aggregated_scores, per_prompt_bon
from robust_rlhf.reward.output import RewardOutput
from robust_rlhf.reward.uncertainty import pool_uncertainty

AGGREGATORS = {"mean_norm": AggregatorConfig(name="mean", normalize=True),
               "lcb_norm": AggregatorConfig(name="lcb", beta=1.0, normalize=True),
               "uwo_norm": AggregatorConfig(name="uwo", lam=0.5, normalize=True)}


def main(root: Path) -> dict:
    results = json.loads((root / "results.json").read_text())
    bon = results["bon_study"]
    n = bon["claim_n"]
    gold = np.asarray(json.loads((root / "units/bon/pool/pool.json").read_text())["gold"], dtype=float)  # (P, N)
    P, N = gold.shape
    out = {}
    for rm in bon["reward_models"]:
        if results["reward_models"][rm]["num_heads"] < 2:
            continue
        scores = json.loads((root / "units/bon/scores" / rm / "scores.json").read_text())
        base = np.asarray(bon["per_prompt"][f"{rm}:mean"])  # (P,) the study's raw mean at n
        row: dict = {"head_stats": scores["head_stats"]}
        for name, agg in AGGREGATORS.items():
            proxy = aggregated_scores(scores, agg, None).double().numpy().reshape(P, N)
            g = per_prompt_bon(proxy, gold)[:, n - 1]  # (P,)
            d = g - base
            se = d.std(ddof=1) / np.sqrt(P)
            row[name] = {f"gold_at_{n}": float(g.mean()), "diff_vs_mean": float(d.mean()),
                         "ci95": [float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se)]}
        std = None if scores["per_head_std"] is None else torch.tensor(scores["per_head_std"], dtype=torch.float64)
        z = normalize_heads(RewardOutput(torch.tensor(scores["per_head"], dtype=torch.float64), std),
                            torch.tensor(scores["head_stats"]["mean"]), torch.tensor(scores["head_stats"]["std"]))
        row["uncertainty_standardised_heads"] = pool_uncertainty(
            z.per_head.numpy().reshape(P, N, -1), gold,
            None if z.per_head_std is None else z.per_head_std.numpy().reshape(P, N, -1), num_boot=300)
        out[rm] = row
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
