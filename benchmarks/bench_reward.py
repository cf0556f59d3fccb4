"""Reward-model benchmark: ours vs TRL's RewardTrainer, side by side in one run.

    python benchmarks/bench_reward.py [--steps 60] [--score-texts 512] [--backbone minilm-l6]
                                      [--precision auto|fp32|bf16] [--trl-precision both|default|ours]

Measured on the same backbone, data (built-in task), batch size, learning rate and number of
backbone steps; both save their trained model (ours: `save_pretrained`; TRL: `save_model`), both
have activation checkpointing off (TRL's default is on), each keeps its own dropout default.
Precision: ours runs at `--precision` (`model.precision`; auto = bf16 autocast on GPUs with bf16
and on CPUs with native bf16, else fp32). TRL runs at its own default (RewardConfig's `bf16`
defaults to True: bf16 autocast on CPU as well, even without native bf16) AND at the precision
ours resolved to (`--trl-precision both`; when the two coincide TRL runs once). Targets (issue 15):
  1. wall time of our two-stage K = 10 ensemble training / TRL's RewardTrainer training one
     reward model <= 1.1x (at the same precision);
  2. scoring throughput of K = 10 heads vs one head (target >= 0.95x) vs 10 separate models
     (target >= 5x faster);
  3. held-out (builtin:test) accuracy of our single-head BT - TRL's >= 0.
Each phase runs in its own subprocess so its peak memory (max RSS on CPU, max allocated on GPU)
is its own. The last output line is one JSON object with the measured ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_mem_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_ours(args, head_type: str, num_heads: int) -> dict:
    from robust_rlhf.config import load_config
    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.reward.evaluate import evaluate_reward_model
    from robust_rlhf.reward.model import RewardModel
    from robust_rlhf.reward.train import train_reward_model
    from robust_rlhf.reward.train_config import RewardTrainConfig

    cfg = load_config(RewardTrainConfig, None, [
        f"model.backbone={args.backbone}", f"model.head_type={head_type}", f"model.num_heads={num_heads}",
        f"model.max_length={args.max_length}", f"stage1.max_steps={args.steps}", "stage1.max_epochs=1000",
        "stage1.loss_threshold=null",
        f"stage1.batch_size={args.batch_size}", f"stage1.lr={args.lr}", "stage1.eval_every=0",
        "data.validation=null", "stage2.epochs=30",
        # TRL runs with save_strategy="no"; we write our one end-of-stage checkpoint only.
        "stage1.checkpoint_every=0", f"model.precision={args.precision}"])
    out = tempfile.mkdtemp()
    t0 = time.perf_counter()
    train_reward_model(cfg, out)
    train_s = time.perf_counter() - t0
    rm = RewardModel.from_pretrained(out)
    metrics, _ = evaluate_reward_model(rm, load_preferences("builtin:test"))
    summary = json.loads((Path(out) / "train_summary.json").read_text())
    phases = {"stage1_steps": summary.get("stage1", {}).get("steps"),
              "stage1_s": summary.get("stage1", {}).get("wall_time_s"),
              "features_s": summary.get("stage2", {}).get("features_s"),
              "heads_s": summary.get("stage2", {}).get("heads_s"), "setup_s": summary.get("setup_s"),
              "save_s": summary.get("save_s"), "total_s": summary.get("wall_time_s")}
    return {"train_s": train_s, "test_accuracy": metrics["accuracy"], "peak_mem_mb": peak_mem_mb(), "phases": phases,
            "precision": summary.get("precision"), "test_correct": round(metrics["accuracy"] * metrics["num_pairs"])}


def phase_trl(args, bf16: bool | None) -> dict:
    """TRL's RewardTrainer; bf16=None keeps RewardConfig's own default (bf16 on), True/False set it."""
    import contextlib
    import dataclasses

    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.models.hub import load_tokenizer, resolve_model_path

    t0 = time.perf_counter()  # like ours: loading, data preparation, training and saving all count
    path = resolve_model_path(args.backbone)
    tok = load_tokenizer(args.backbone)
    if tok.eos_token is None:  # TRL appends EOS to every text; BERT-style tokenizers name it [SEP]
        tok.eos_token = tok.sep_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    train = load_preferences("builtin:train")
    ds = datasets.Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in train])
    gpu = torch.cuda.is_available()
    # TRL defaults to activation checkpointing (renamed across transformers versions): off, as ours.
    names = {f.name for f in dataclasses.fields(RewardConfig)}
    no_ckpt = {k: False for k in ("activation_checkpointing", "gradient_checkpointing") if k in names}
    precision = {} if bf16 is None else {"bf16": bf16}
    out = tempfile.mkdtemp()
    rc = RewardConfig(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                      learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, use_cpu=not gpu,
                      **precision, **no_ckpt, report_to=[], save_strategy="no", logging_steps=10,
                      max_length=args.max_length, seed=0, disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=rc, train_dataset=ds, processing_class=tok)
    trainer.train()
    trainer.save_model(out)  # ours saves its trained model too
    train_s = time.perf_counter() - t0
    model.eval()
    test = load_preferences("builtin:test")
    correct = 0
    dev = model.device
    # Scored as TRL trained it: prompt + response + EOS, in its training precision.
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if rc.bf16 else contextlib.nullcontext()
    with torch.no_grad(), amp:
        for i in range(0, len(test), 64):
            batch = test[i : i + 64]
            enc_c = tok([p.prompt + p.chosen + tok.eos_token for p in batch], padding=True, truncation=True,
                        max_length=args.max_length, return_tensors="pt").to(dev)
            enc_r = tok([p.prompt + p.rejected + tok.eos_token for p in batch], padding=True, truncation=True,
                        max_length=args.max_length, return_tensors="pt").to(dev)
            correct += (model(**enc_c).logits[:, 0].float() > model(**enc_r).logits[:, 0].float()).sum().item()
    return {"train_s": train_s, "test_accuracy": correct / len(test), "test_correct": correct,
            "peak_mem_mb": peak_mem_mb(), "precision": "bf16" if rc.bf16 else "fp32"}


def phase_score(args) -> dict:
    import torch

    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.reward.model import RewardModel, RewardModelConfig

    pairs = load_preferences("builtin:train")
    texts = [p.chosen for p in pairs][: args.score_texts]
    prompts = [p.prompt for p in pairs][: args.score_texts]
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def throughput(model, repeats: int = 1) -> float:
        model.score(prompts[:64], texts[:64])  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            model.score(prompts, texts, batch_size=64)
        if dev == "cuda":
            torch.cuda.synchronize()
        return repeats * len(texts) / (time.perf_counter() - t0)

    k10 = RewardModel(RewardModelConfig(backbone=args.backbone, head_type="ensemble", num_heads=10, max_length=args.max_length)).to(dev)
    k1 = RewardModel(RewardModelConfig(backbone=args.backbone, head_type="scalar", max_length=args.max_length)).to(dev)
    tp10, tp1 = throughput(k10), throughput(k1)
    # 10 separate single-head models: 10 backbone passes per text (timed on one, x10 sequential).
    tp_sep = tp1 / 10
    return {"k10_texts_per_s": tp10, "k1_texts_per_s": tp1, "separate10_texts_per_s": tp_sep,
            "peak_mem_mb": peak_mem_mb()}


def run_phase(name: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, *argv], capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"phase {name} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ours_precision(args) -> str:
    """What `model.precision=args.precision` resolves to on this machine (as the trainer resolves it)."""
    import torch

    from robust_rlhf.utils import autocast_dtype

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if autocast_dtype(dev, args.precision) == torch.bfloat16 else "fp32"


def _wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = correct / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / d
    return c - h, c + h


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="backbone optimizer steps for both trainers")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--score-texts", type=int, default=512)
    p.add_argument("--backbone", default="minilm-l6")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="ours: model.precision")
    p.add_argument("--trl-precision", choices=("both", "default", "ours"), default="both",
                   help="TRL at its own default (bf16), at the precision ours resolves to, or both")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.phase:
        fn = {"ours_ensemble": lambda: phase_ours(args, "ensemble", 10), "ours_bt": lambda: phase_ours(args, "scalar", 1),
              "trl_default": lambda: phase_trl(args, None), "trl_fp32": lambda: phase_trl(args, False),
              "trl_bf16": lambda: phase_trl(args, True), "score": lambda: phase_score(args)}[args.phase]
        print(json.dumps(fn()))
        return
    argv = [a for a in sys.argv[1:]]
    ours_prec = _ours_precision(args)
    trl_phases = []
    if args.trl_precision in ("both", "ours"):
        trl_phases.append(f"trl_{ours_prec}")
    if args.trl_precision in ("both", "default") and "trl_bf16" not in trl_phases:  # TRL's default is bf16
        trl_phases.append("trl_default")
    res = {name: run_phase(name, argv) for name in (*trl_phases, "ours_bt", "ours_ensemble", "score")}
    trl_same = res.get(f"trl_{ours_prec}") or res.get("trl_default")  # at our precision when it was run
    trl_default = res.get("trl_default") or res.get("trl_bf16")
    import torch

    print(f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}  backbone: {args.backbone}  "
          f"steps: {args.steps}  ours: {ours_prec} (--precision {args.precision})  load: {open('/proc/loadavg').read().split()[:3] if os.path.exists('/proc/loadavg') else '?'}")
    print(f"{'':28s}{'precision':>10s}{'train s':>10s}{'test acc':>10s}{'Wilson 95%':>16s}{'peak MB':>10s}")
    n_test = 150
    for name in (*trl_phases, "ours_bt", "ours_ensemble"):
        r = res[name]
        ci = _wilson(r["test_correct"], n_test) if r.get("test_correct") is not None else (float("nan"),) * 2
        label = name + (" (TRL default)" if name == "trl_default" else "")
        print(f"{label:28s}{r.get('precision') or '?':>10s}{r['train_s']:10.1f}{r['test_accuracy']:10.3f}"
              f"  [{ci[0]:.3f}, {ci[1]:.3f}]{r['peak_mem_mb']:10.0f}  {r.get('phases', '')}")
    s = res["score"]
    print(f"scoring texts/s: K=10 {s['k10_texts_per_s']:.1f}  K=1 {s['k1_texts_per_s']:.1f}  "
          f"10 separate models {s['separate10_texts_per_s']:.1f}  (peak MB {s['peak_mem_mb']:.0f})")
    summary = {
        "ensemble_train_time_vs_trl": res["ours_ensemble"]["train_s"] / trl_same["train_s"],
        "ensemble_train_time_vs_trl_default": res["ours_ensemble"]["train_s"] / trl_default["train_s"],
        "score_throughput_k10_vs_k1": s["k10_texts_per_s"] / s["k1_texts_per_s"],
        "score_speedup_vs_separate_models": s["k10_texts_per_s"] / s["separate10_texts_per_s"],
        "bt_accuracy_delta_vs_trl": res["ours_bt"]["test_accuracy"] - trl_same["test_accuracy"],
        "bt_accuracy_delta_vs_trl_default": res["ours_bt"]["test_accuracy"] - trl_default["test_accuracy"],
        "precision": {k: v.get("precision") for k, v in res.items() if k != "score"},
        "peak_mem_mb": {k: v["peak_mem_mb"] for k, v in res.items()},
        "steps": args.steps, "backbone": args.backbone,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
