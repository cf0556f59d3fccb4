"""Train one stage-2 variant (K heads, train_stage2) on features from rm_spread_features.py; prints one JSON row
(builtin:test accuracy + Wilson CI, AUROC of u, of -|m|, of -|m|/u) and appends it to FEATDIR/results.jsonl.

    python benchmarks/rm_spread_variant.py FEATDIR NAME [key=value ...] [--wd X] [--no-head0] [--idx-file F.json]

key=value: overrides of rm_ensemble_minilm; --wd: AdamW weight decay for the heads (monkeypatched);
--idx-file: train the heads only on these training-pair indices; head 0 starts from FEATDIR/head0.safetensors if present."""
import json, sys, time
import numpy as np, torch
from safetensors.torch import load_file, save_file
from pathlib import Path
from robust_rlhf.config import load_config
from robust_rlhf.reward.evaluate import uncertainty_quality, wilson_interval, auroc, spearman, pair_uncertainty
from robust_rlhf.reward.heads import RewardHeads
from robust_rlhf.reward.output import RewardOutput
from robust_rlhf.reward.stage2 import train_stage2
from robust_rlhf.reward.train_config import RewardTrainConfig

fd = Path(sys.argv[1]); name = sys.argv[2]; args = sys.argv[3:]
wd = 0.0; use_head0 = True; sub = None
if "--wd" in args: i = args.index("--wd"); wd = float(args[i+1]); del args[i:i+2]
if "--no-head0" in args: args.remove("--no-head0"); use_head0 = False
idxfile=None
if "--idx-file" in args: i = args.index("--idx-file"); idxfile = args[i+1]; del args[i:i+2]
if "--train-idx" in args: i = args.index("--train-idx"); sub = args[i+1]; del args[i:i+2]
F = {k: load_file(str(fd / f"{k}.safetensors"))["features"] for k in ("train", "val", "test")}
tr = F["train"]
if sub:  # e.g. 0.5:1 = the second half of a fixed permutation
    a, b = map(float, sub.split(":")); perm = torch.randperm(tr.shape[0], generator=torch.Generator().manual_seed(123))
    tr = tr[perm[int(a * len(perm)):int(b * len(perm))]]
if idxfile: tr = tr[torch.tensor(json.load(open(idxfile)))]; sub = "file"
H = tr.shape[-1]
cfg = load_config(RewardTrainConfig, "rm_ensemble_minilm", args)
head0 = None
if use_head0 and (fd / "head0.safetensors").exists():
    w = load_file(str(fd / "head0.safetensors")); head0 = torch.nn.Linear(H, 1); head0.load_state_dict(w)
if wd:
    _Adam = torch.optim.Adam
    torch.optim.Adam = lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=wd)
vm = type("M", (), {})(); vm.heads = RewardHeads(H, cfg.model.num_heads, cfg.model.head_type)
t = time.time(); s = train_stage2(vm, tr, F["val"], head0, cfg, []); 
with torch.no_grad():
    c, r = (RewardOutput(*vm.heads(F["test"][:, j].float())) for j in (0, 1))
q, _ = uncertainty_quality(c, r)
n = c.mean.shape[0]; k = int((c.mean > r.mean).sum()); lo, hi = wilson_interval(k, n)
ph = (c.per_head > r.per_head).float().mean(0)
row = {"name": name, "args": args + (["wd=%g" % wd] if wd else []) + ([f"train-idx {sub}"] if sub else []), "n_train": tr.shape[0],
       "acc": round(k / n, 3), "wilson": [round(lo, 3), round(hi, 3)], "mis": n - k,
       "head_acc": [round(ph.min().item(), 3), round(ph.max().item(), 3)],
       "auroc_u": q["uncertainty/auroc_misranked"], "auroc_small_margin": q["uncertainty/auroc_misranked_small_margin"],
       "auroc_m_over_u": q["uncertainty/auroc_misranked_margin_over_uncertainty"], "spearman_u_absm": spearman(pair_uncertainty(c, r), abs((c.mean - r.mean).numpy())), "best_epoch": s["best_epoch"], "s2_s": round(time.time() - t, 1)}
print(json.dumps(row), flush=True)
with open(fd / "results.jsonl", "a") as f: f.write(json.dumps(row) + "\n")
