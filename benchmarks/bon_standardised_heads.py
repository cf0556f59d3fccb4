"""Best-of-n with conservative aggregation on *standardised* heads, from a finished experiment folder.

    python benchmarks/bon_standardised_heads.py runs/study_bon

For each multi-head proxy of the folder's best-of-n study (`units/bon/scores/<rm>/scores.json`), every
head is z-scored by its validation statistics (`head_stats`, as the study's `min`/`max` already are)
before mean - std (lcb) and UWO select; prints, per proxy, best-of-N gold of each and its paired
difference to the raw mean with a 95 % normal interval over prompts, and the uncertainty-under-shift
metrics (`pool_uncertainty`) of the standardised heads. Independently trained reward models (deep
ensembles) are each defined only up to a constant, so their raw spread mixes offsets with disagreement;
this measures what standardising changes (docs/results.md)."""
import json, sys, numpy as np, torch
from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.experiments.bon_study import aggregated_scores, per_prompt_bon
from robust_rlhf.reward.uncertainty import pool_uncertainty
root = sys.argv[1]
pool = json.load(open(f"{root}/units/bon/pool/pool.json"))
gold = np.asarray(pool["gold"], float); P, N = gold.shape
out = {}
for rm in ["ens4", "brme4", "deep5", "laplace32"]:
    sc = json.load(open(f"{root}/units/bon/scores/{rm}/scores.json"))
    hs = sc.get("head_stats") or {}
    base = per_prompt_bon(aggregated_scores(sc, AggregatorConfig(name="mean"), None).double().numpy().reshape(P, N), gold)[:, -1]
    row = {"head_stats_mean": hs.get("mean"), "head_stats_std": hs.get("std")}
    for name, agg in {"lcb_norm": AggregatorConfig(name="lcb", beta=1.0, normalize=True),
                      "uwo_norm": AggregatorConfig(name="uwo", lam=0.5, normalize=True),
                      "mean_norm": AggregatorConfig(name="mean", normalize=True)}.items():
        g = per_prompt_bon(aggregated_scores(sc, agg, None).double().numpy().reshape(P, N), gold)[:, -1]
        d = g - base; se = d.std(ddof=1) / np.sqrt(P)
        row[name] = {"gold64": float(g.mean()), "diff_vs_mean": float(d.mean()), "ci95": [float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se)]}
    ph = np.asarray(sc["per_head"], float)
    z = (ph - np.asarray(hs["mean"])) / np.asarray(hs["std"])
    u = pool_uncertainty(z.reshape(P, N, -1), gold, num_boot=300)
    row["uncertainty_standardised_heads"] = {k: u[k] for k in ("top_pick_num_bad", "top_pick_auroc", "top_pick_auroc_se", "overscoring_auroc", "overscoring_auroc_se", "overscoring_auroc_proxy_baseline", "overscoring_spearman", "lcb_pick_gold_gain", "lcb_pick_gold_gain_se")}
    out[rm] = row
print(json.dumps(out, indent=1))
