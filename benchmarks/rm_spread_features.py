"""Features for benchmarks/rm_spread_variant.py (docs/reward_models.md, "Recipes for an informative spread").

    python benchmarks/rm_spread_features.py BACKBONE OUT_DIR [RUN_DIR]

Writes OUT_DIR/{train,val,test}.safetensors ((N, 2, H) pooled features of builtin:train/validation/test);
with RUN_DIR (a finished two-stage run) train/val come from its cache and head0.safetensors is its stage-1 head."""
import sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from robust_rlhf.data.preferences import load_preferences
from robust_rlhf.reward.model import RewardModel, RewardModelConfig
torch.set_num_threads(2)
bb, out = sys.argv[1], Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
run = Path(sys.argv[3]) if len(sys.argv) > 3 else None
model = RewardModel(RewardModelConfig(backbone=bb, head_type="scalar", num_heads=1, max_length=64))
model.eval()
for split, src in (("train", "builtin:train"), ("val", "builtin:validation"), ("test", "builtin:test")):
    if run and split != "test":
        f = load_file(str(run / "checkpoints" / f"{split}_features.safetensors"))["features"]
    else:
        pairs = load_preferences(src); pr = [p.prompt for p in pairs]
        with torch.no_grad():
            _, fc = model.score(pr, [p.chosen for p in pairs], return_features=True)
            _, fr = model.score(pr, [p.rejected for p in pairs], return_features=True)
        f = torch.stack([fc, fr], 1)
    save_file({"features": f.float().contiguous()}, str(out / f"{split}.safetensors")); print(split, tuple(f.shape), flush=True)
if run:
    w = load_file(str(run / "checkpoints" / "stage1" / "weights.safetensors"))
    save_file({"weight": w["head.weight"].contiguous(), "bias": w["head.bias"].contiguous()}, str(out / "head0.safetensors"))
