"""Layer ensemble vs linear ensemble on the same stage-1 backbone: AUROC of uncertainty for misranked builtin:test pairs.

    python benchmarks/compare_layer_ensemble.py LINEAR_RUN_DIR [--skip-linear] [key=value ...]
"""
import json, sys, time
import numpy as np, torch
from safetensors.torch import load_file
from robust_rlhf.config import load_config
from robust_rlhf.data.preferences import load_preferences
from robust_rlhf.reward.evaluate import uncertainty_quality, wilson_interval
from robust_rlhf.reward.layer_ensemble import train_layer_ensemble
from robust_rlhf.reward.model import RewardModel, RewardModelConfig
from robust_rlhf.reward.train_config import RewardTrainConfig

lin_dir = sys.argv[1]; overrides = sys.argv[2:]
test = load_preferences("builtin:test")
def report(name, model):
    pr = [p.prompt for p in test]
    c = model.score(pr, [p.chosen for p in test]); r = model.score(pr, [p.rejected for p in test])
    q, _ = uncertainty_quality(c, r)
    n = len(test); k = int((c.mean > r.mean).sum()); lo, hi = wilson_interval(k, n)
    row = {"name": name, "acc": k / n, "wilson": [lo, hi], "misranked": n - k,
           **{key.split("/")[1]: q[key] for key in ("uncertainty/auroc_misranked", "uncertainty/auroc_misranked_small_margin",
              "uncertainty/auroc_misranked_margin_over_uncertainty", "uncertainty/auroc_misranked_head_disagreement") if key in q}}
    print(json.dumps(row), flush=True)
    return row
if "--skip-linear" not in overrides:
    report("linear_k10", RewardModel.from_pretrained(lin_dir))
overrides = [o for o in overrides if o != "--skip-linear"]
cfg = load_config(RewardTrainConfig, "rm_layer_ensemble_minilm", [f"model.backbone={lin_dir}/backbone", *overrides])
torch.manual_seed(cfg.seed)
model = RewardModel(RewardModelConfig(**{**cfg.model.__dict__}))
head0 = torch.nn.Linear(384, 1)
st = load_file(f"{lin_dir}/heads.safetensors")
with torch.no_grad():
    head0.weight.copy_(st["linear.weight"][:1]); head0.bias.copy_(st["linear.bias"][:1])
train = load_preferences(cfg.data.train); val = load_preferences(cfg.data.validation)
log = []
t0 = time.time()
s = train_layer_ensemble(model, train, val, head0, cfg, log, torch.device("cpu"))
print(json.dumps({"train_s": time.time() - t0, **s, "log": log}), flush=True)
report("layer " + " ".join(overrides), model)
