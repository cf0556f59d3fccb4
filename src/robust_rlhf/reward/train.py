"""Recipe: train a reward model -- single BT head, BT + BSR, linear-head ensemble (two-stage,
seed 002) or BRME Gaussian heads (seed 000).

    stage 1  backbone + one scalar head, Bradley-Terry (+ BSR / centering), full fine-tune or
             LoRA; periodic validation, early stop at a training-loss threshold (0.3 in seed
             002) or on validation patience; atomic checkpoints, resumable.
    stage 2  (ensemble / gaussian) backbone frozen; pooled features of every text computed
             once and cached; K heads trained with the additive loss sum_k L(head k), each
             with its own init and (optionally) its own bootstrap resample and data order.
             Head 0 starts from the stage-1 head.

    python -c "from robust_rlhf.reward.train import *; train_reward_model(RewardTrainConfig(), 'out')"
    robust-rlhf rm train --output-dir out [key=value ...]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from robust_rlhf.checkpoint import BackboneHeadCheckpoint
from robust_rlhf.config import config_to_dict, first_difference
from robust_rlhf.data.preferences import PreferencePair, check_prompt_lengths, load_preferences
from robust_rlhf.errors import UserError
from robust_rlhf.reward.evaluate import hidden_state_stats
from robust_rlhf.reward.losses import (
    bradley_terry_loss,
    brme_bt_loss,
    brme_marginal_loss,
    bsr_penalty,
    centering_penalty,
    gaussian_regression_loss,
    global_bsr_penalty,
)
from robust_rlhf.reward.layer_ensemble import LayerEnsembleConfig, train_layer_ensemble
from robust_rlhf.models.hub import load_tokenizer
from robust_rlhf.reward.model import RewardModel, RewardModelConfig
from robust_rlhf.utils import (
    atomic_save_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    autocast_dtype,
    check_output_dir,
    is_inside,
    resolve_device,
    set_seed,
)

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    train: str = "builtin:train"
    """Training pairs: file (.jsonl/.csv/.parquet), datasets folder, hf:org/name[:split], or builtin:<split>."""
    validation: str | None = "builtin:validation"
    """Validation pairs (same sources); null to skip validation."""
    limit: int | None = None
    """Use at most this many training pairs (quick experiments)."""


@dataclass
class LossConfig:
    bsr_coef: float = 0.0
    """Batch-wise sum-to-zero coefficient lambda (seed 001; 1e-3 in the paper; 0 = off)."""
    bsr_scope: Literal["device", "global"] = "device"
    """Under several processes: BSR's batch mean per device (as the seed's authors do) or over the global batch."""
    center_coef: float = 0.0
    """Reward-centering coefficient (Eisenstein et al. 2023, TRL's center_rewards_coefficient; 0.01 recommended; 0 = off)."""


@dataclass
class Stage1Config:
    enabled: bool = True
    """Fine-tune the backbone with one scalar head first. Off: stage 2 on the pretrained backbone."""
    lr: float = 5e-5
    """AdamW learning rate."""
    batch_size: int = 16
    """Pairs per step (the BSR batch)."""
    max_epochs: float = 3.0
    """Upper bound on passes over the training pairs."""
    max_steps: int | None = None
    """Upper bound on optimizer steps (overrides max_epochs when smaller)."""
    loss_threshold: float | None = 0.3
    """Stop when the running training BT loss reaches this (seed 002 uses 0.3); null = off."""
    running_window: int = 20
    """Steps in the running mean compared with loss_threshold."""
    eval_every: int = 50
    """Validate every N steps (0 = only at the end)."""
    patience: int | None = None
    """Stop after this many validations without improvement of validation loss; null = off."""
    disable_dropout: bool = False
    """Turn the backbone's dropout off while training (TRL's disable_dropout); makes runs independent of RNG streams."""
    checkpoint_every: int = 50
    """Write a resumable checkpoint every N steps (0 = only when stage 1 ends)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    lora: bool = False
    """Train LoRA adapters instead of all backbone weights (merged into the backbone when saved)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_target_modules: list[str] | None = None
    """Modules to adapt; null = peft's default for the architecture."""


@dataclass
class Stage2Config:
    lr: float = 1e-2
    """Adam learning rate of the heads."""
    epochs: int = 30
    """Passes over the cached features (an upper bound when `stop` ends training earlier)."""
    batch_size: int = 64
    """Pairs per head per step."""
    bootstrap: bool = False
    """Each head (except head 0) trains on its own bootstrap resample of the pairs. Off (seed 002):
    heads differ by initialisation and data order only."""
    stop: Literal["validation", "loss_threshold", "epochs"] = "validation"
    """validation: keep the epoch with the lowest validation loss; loss_threshold: stop after the
    first epoch whose mean per-head training loss is <= `loss_threshold` (seed 002's stage-1
    rule applied to the heads); epochs: train all epochs, keep the last."""
    loss_threshold: float = 0.3
    """Per-head training-loss level for stop=loss_threshold (0.3 as in seed 002)."""
    gaussian_loss: Literal["marginal", "bt_reparam", "regression"] = "marginal"
    """BRME heads: marginal = BT likelihood with each head's Gaussian integrated out (learns s);
    bt_reparam = BT on reparameterised samples; regression = Gaussian NLL to the stage-1 reward.
    The last two drive s to its floor (docs/reward_models.md)."""


@dataclass
class RewardTrainConfig:
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """Backbone, heads, pooling, max_length."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the preference pairs come from."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Regularisers added to Bradley-Terry."""
    stage1: Stage1Config = field(default_factory=Stage1Config)
    """Backbone fine-tuning stage."""
    stage2: Stage2Config = field(default_factory=Stage2Config)
    """Frozen-backbone multi-head stage (ensemble / gaussian only)."""
    layer_ensemble: LayerEnsembleConfig = field(default_factory=LayerEnsembleConfig)
    """Stage 2 of model.head_type=layer_ensemble: K top-layer copies over the frozen trunk."""
    seed: int = 0
    """Seed for init, data order, bootstrap and dropout."""
    device: str | None = None
    """cpu / cuda / cuda:1; null = cuda if available."""
    resume: bool = True
    """Continue from a checkpoint in the output folder when its config matches."""

    def __post_init__(self) -> None:
        for name, value in (("loss.bsr_coef", self.loss.bsr_coef), ("loss.center_coef", self.loss.center_coef),
                            ("stage1.lr", self.stage1.lr), ("stage2.lr", self.stage2.lr)):
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.model.num_heads < 1:
            raise ValueError("model.num_heads must be >= 1")
        if self.model.head_type == "scalar" and self.model.num_heads != 1:
            self.model.num_heads = 1
        if self.model.head_type != "scalar" and not self.stage1.enabled and self.stage1.lora:
            raise ValueError("stage1.lora has no effect when stage1.enabled is false")
        if self.stage1.batch_size < 1 or self.stage2.batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.stage2.epochs < 1:
            raise ValueError(f"stage2.epochs must be >= 1, got {self.stage2.epochs}")
        if not (self.stage2.loss_threshold > 0 and math.isfinite(self.stage2.loss_threshold)):
            raise ValueError(f"stage2.loss_threshold must be a finite number > 0, got {self.stage2.loss_threshold}")


# ----------------------------------------------------------------------------------------
def _pair_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _texts(pairs: list[PreferencePair], idx: list[int]) -> list[tuple[str, str]]:
    """2B (prompt, response) texts: chosen of each pair, then rejected of each pair (kept as
    pairs so that truncation cuts the prompt, never the response: `RewardModel.tokenize`)."""
    return [(pairs[i].prompt, pairs[i].chosen) for i in idx] + [(pairs[i].prompt, pairs[i].rejected) for i in idx]


def _stage1_loss(rewards: torch.Tensor, cfg: RewardTrainConfig, world: int = 1) -> tuple[torch.Tensor, dict]:
    """rewards: (2B, 1) -> BT (+ BSR, + centering) on the scalar stage-1 head (B local pairs)."""
    B = rewards.shape[0] // 2
    chosen, rejected = rewards[:B], rewards[B:]
    loss, stats = bradley_terry_loss(chosen, rejected)
    stats["bt_loss"] = loss.item()
    if cfg.loss.bsr_coef > 0:
        if cfg.loss.bsr_scope == "global" and world > 1:
            pen, s = global_bsr_penalty(chosen, rejected, cfg.loss.bsr_coef, world)
        else:
            pen, s = bsr_penalty(chosen, rejected, cfg.loss.bsr_coef)
        loss, stats = loss + pen, {**stats, **s}
    if cfg.loss.center_coef > 0:
        pen, s = centering_penalty(chosen, rejected, cfg.loss.center_coef)
        loss, stats = loss + pen, {**stats, **s}
    # The objective's value (for the global BSR the backward-scaled term is reported unscaled).
    stats["loss"] = stats["bt_loss"] + stats.get("bsr_penalty", 0.0) + stats.get("center_penalty", 0.0)
    return loss, stats


@torch.no_grad()
def _validate(model: RewardModel, head: torch.nn.Module, pairs: list[PreferencePair], batch_size: int) -> dict:
    """Validation BT loss and accuracy of the stage-1 head, and seed 001's hidden-state
    statistics of the validation texts (norm dispersion, chosen-rejected distance, head
    weight norm, effective rank), so their evolution during training is in the log."""
    was = model.training
    model.eval()
    losses, correct, fc, fr = [], 0, [], []
    for i in range(0, len(pairs), batch_size):
        idx = list(range(i, min(i + batch_size, len(pairs))))
        feats = model.features(model.tokenize(_texts(pairs, idx))).float()
        r = head(feats)
        B = len(idx)
        loss, _ = bradley_terry_loss(r[:B], r[B:])
        losses.append(loss.item() * B)
        correct += (r[:B, 0] > r[B:, 0]).sum().item()
        fc.append(feats[:B].cpu())
        fr.append(feats[B:].cpu())
    model.train(was)
    hs = hidden_state_stats(torch.cat(fc), torch.cat(fr))
    return {"val_loss": sum(losses) / len(pairs), "val_accuracy": correct / len(pairs),
            **{f"hidden_{k}": v for k, v in hs.items()}, "head_weight_norm": getattr(head, "module", head).weight.detach().norm().item()}


def _config_fingerprint(cfg: RewardTrainConfig) -> dict:
    d = config_to_dict(cfg)
    d.pop("resume", None)
    return d


# Stage-1 checkpoint: trainable weights + optimizer + RNG + progress, in one atomic folder
# (robust_rlhf.checkpoint, shared with the policy recipes).
_Checkpoint = BackboneHeadCheckpoint


# ----------------------------------------------------------------------------------------
def train_stage1(model: RewardModel, train: list[PreferencePair], val: list[PreferencePair] | None,
                 cfg: RewardTrainConfig, out: Path, log_rows: list[dict], accelerator) -> dict:
    """Fine-tune backbone + a scalar head with BT(+BSR). Returns the stage-1 summary.

    Under `torchrun`/`accelerate launch`, each of the W processes takes its contiguous 1/W of
    every global batch (`stage1.batch_size` is the global batch) and DDP averages gradients;
    logged losses are averaged over processes, so they equal a one-process run's."""
    s1 = cfg.stage1
    device = model.device
    world, rank = accelerator.num_processes, accelerator.process_index
    if s1.batch_size % world:
        raise UserError(f"stage1.batch_size={s1.batch_size} must be divisible by the {world} processes")
    if s1.disable_dropout:
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    head = torch.nn.Linear(model.backbone.config.hidden_size, 1).to(device)
    with torch.no_grad():  # seed 001's head init N(0, 1/sqrt(H))
        head.weight.normal_(0.0, 1.0 / math.sqrt(model.backbone.config.hidden_size))
        head.bias.zero_()
    if s1.lora:
        from peft import LoraConfig, get_peft_model

        model.backbone = get_peft_model(model.backbone, LoraConfig(
            r=s1.lora_r, lora_alpha=s1.lora_alpha, target_modules=s1.lora_target_modules, lora_dropout=0.0))
    params = [p for p in model.backbone.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=s1.lr, weight_decay=s1.weight_decay)
    plain_backbone = model.backbone
    steps_per_epoch = math.ceil(len(train) / s1.batch_size)
    total_steps = int(math.ceil(s1.max_epochs * steps_per_epoch))
    if s1.max_steps is not None:
        total_steps = min(total_steps, s1.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: min(1.0, (st + 1) / max(1, s1.warmup_steps)))
    ckpt = _Checkpoint(out)
    cfg_dict = _config_fingerprint(cfg)
    progress = {"step": 0, "recent_losses": [], "best_val_loss": None, "evals_without_improvement": 0,
                "stopped": None, "log": []}
    if cfg.resume and ckpt.exists():
        progress = ckpt.load(model.backbone, head, opt, sched, cfg_dict)
        log.info("resumed stage 1 from %s at step %d", ckpt.dir, progress["step"])
    log_rows[:] = progress["log"]
    plain_head = head
    if world > 1:  # DDP wrappers; single process keeps the plain modules
        model.backbone, head, opt = accelerator.prepare(model.backbone, head, opt)
    amp = autocast_dtype(device)
    model.train()
    bar = tqdm(total=total_steps, initial=progress["step"], desc="stage 1 (backbone + head)", unit="step",
               disable=not accelerator.is_main_process)
    while progress["step"] < total_steps and progress["stopped"] is None:
        step = progress["step"]
        epoch, within = divmod(step, steps_per_epoch)
        idx = _pair_batches(len(train), s1.batch_size, cfg.seed, epoch)[within]
        if world > 1:
            if len(idx) % world:
                idx = idx[: len(idx) - len(idx) % world]  # a ragged last batch is trimmed so ranks stay equal
            share = len(idx) // world
            idx = idx[rank * share : (rank + 1) * share]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            feats = model.features(model.tokenize(_texts(train, idx)))
            rewards = head(feats).float()  # (2B, 1)
        loss, stats = _stage1_loss(rewards, cfg, world)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        if world > 1:  # log the global (process-averaged) statistics
            keys = sorted(stats)
            vec = accelerator.reduce(torch.tensor([stats[k] for k in keys], device=device), reduction="mean")
            stats = dict(zip(keys, vec.tolist()))
        sched.step()
        progress["step"] = step = step + 1
        progress["recent_losses"] = (progress["recent_losses"] + [stats["bt_loss"]])[-s1.running_window:]
        running = sum(progress["recent_losses"]) / len(progress["recent_losses"])
        row = {"stage": 1, "step": step, "epoch": step / steps_per_epoch, **{f"losses/{k}": v for k, v in stats.items()},
               "losses/running_bt": running}
        if val is not None and ((s1.eval_every and step % s1.eval_every == 0) or step == total_steps):
            v = _validate(model, head, val, 2 * s1.batch_size)
            row.update({f"eval/{k}": x for k, x in v.items()})
            best = progress["best_val_loss"]
            if best is None or v["val_loss"] < best:
                progress["best_val_loss"], progress["evals_without_improvement"] = v["val_loss"], 0
            else:
                progress["evals_without_improvement"] += 1
            if s1.patience is not None and progress["evals_without_improvement"] >= s1.patience:
                progress["stopped"] = f"validation loss did not improve for {s1.patience} evaluations"
        if s1.loss_threshold is not None and len(progress["recent_losses"]) >= min(s1.running_window, steps_per_epoch) \
                and running <= s1.loss_threshold:
            progress["stopped"] = f"running training loss {running:.3f} <= threshold {s1.loss_threshold}"
        progress["log"].append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", **({"val_acc": f"{row['eval/val_accuracy']:.3f}"} if "eval/val_accuracy" in row else {}))
        if (s1.checkpoint_every and step % s1.checkpoint_every == 0) or progress["stopped"] or step == total_steps:
            if accelerator.is_main_process:
                ckpt.save(plain_backbone, plain_head, opt, sched, progress, cfg_dict)
            accelerator.wait_for_everyone()
    bar.close()
    model.backbone, head = plain_backbone, plain_head
    log_rows[:] = progress["log"]
    if progress["stopped"]:
        log.info("stage 1 stopped early at step %d: %s", progress["step"], progress["stopped"])
    if s1.lora:
        model.backbone = model.backbone.merge_and_unload()
    model.eval()
    return {"steps": progress["step"], "stopped": progress["stopped"], "head": head,
            "final_running_loss": sum(progress["recent_losses"]) / max(1, len(progress["recent_losses"]))}


def _features_key(model: RewardModel, chosen: list[str], rejected: list[str]) -> str:
    """What cached features were computed from: every text, the backbone's weights, and the
    settings that change pooled features (max_length, pooling)."""
    h = hashlib.sha256()
    h.update(json.dumps({"max_length": model.config.max_length, "pooling": model.config.pooling,
                         "n": len(chosen)}, sort_keys=True).encode())
    for t in chosen + rejected:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    for name, v in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(str(v.dtype).encode() + str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def cached_features(model: RewardModel, pairs: list[PreferencePair], cache: Path, batch_size: int = 64) -> torch.Tensor:
    """(N, 2, H) pooled features of (chosen, rejected) texts, computed once and cached on disk.
    The cache is reused only when its key (texts + backbone weights + max_length + pooling)
    matches, never merely because the number of rows does."""
    from safetensors import safe_open

    chosen = [p.prompt + p.chosen for p in pairs]
    rejected = [p.prompt + p.rejected for p in pairs]
    key = _features_key(model, chosen, rejected)
    if cache.exists():
        try:
            with safe_open(str(cache), framework="pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return f.get_tensor("features")
        except Exception:  # a corrupt or foreign cache file: recompute it
            pass
        log.info("%s: cached features are of other texts or another backbone; recomputing", cache)
    _, fc = model.score([""] * len(pairs), chosen, batch_size=batch_size, return_features=True)
    _, fr = model.score([""] * len(pairs), rejected, batch_size=batch_size, return_features=True)
    feats = torch.stack([fc, fr], dim=1)
    atomic_write_bytes(cache, save_safetensors({"features": feats.contiguous()}, metadata={"key": key}))
    return feats


def train_stage2(model: RewardModel, train_feats: torch.Tensor, val_feats: torch.Tensor | None,
                 stage1_head: torch.nn.Module | None, cfg: RewardTrainConfig, log_rows: list[dict],
                 device: torch.device | None = None) -> dict:
    """Train K heads on cached (N, 2, H) features with the additive per-head loss (on `device`;
    random draws come from a CPU generator so CPU and GPU runs draw the same samples)."""
    device = device or torch.device("cpu")
    s2 = cfg.stage2
    heads = model.heads
    K, N = heads.num_heads, train_feats.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    heads.reset_heads(list(range(K)), generator=gen)
    if stage1_head is not None:
        with torch.no_grad():
            heads.linear.weight[0].copy_(stage1_head.weight[0])
            heads.linear.bias[0].copy_(stage1_head.bias[0])
    heads.to(device).float()
    feats = train_feats.float().to(device)
    # Each head's sample of pair indices: head 0 the data itself, others a bootstrap resample.
    samples = [torch.arange(N)] + [
        torch.randint(0, N, (N,), generator=gen) if s2.bootstrap else torch.arange(N) for _ in range(K - 1)]
    samples = torch.stack(samples).to(device)  # (K, N)
    target = None
    if heads.head_type == "gaussian" and s2.gaussian_loss == "regression":
        if stage1_head is None:
            raise UserError("stage2.gaussian_loss=regression needs stage 1 (its reward is the regression target)")
        with torch.no_grad():
            target = stage1_head.to(device)(feats).squeeze(-1)  # (N, 2)
    opt = torch.optim.Adam(heads.parameters(), lr=s2.lr)
    W = heads.linear
    best = (math.inf, None, -1)
    stopped = None
    bar = tqdm(range(s2.epochs), desc=f"stage 2 ({K} heads, frozen backbone)", unit="epoch")
    for epoch in bar:
        perm = torch.stack([torch.randperm(N, generator=gen) for _ in range(K)]).to(device)  # own data order per head
        epoch_loss, seen = 0.0, 0
        for i in range(0, N, s2.batch_size):
            idx = torch.gather(samples, 1, perm[:, i : i + s2.batch_size])  # (K, b)
            f = feats[idx]  # (K, b, 2, H)
            out = torch.einsum("kbch,kh->bck", f, W.weight[:K]) + W.bias[:K]  # (b, 2, K): head k on its own rows
            if heads.head_type == "gaussian":
                raw = torch.einsum("kbch,kh->bck", f, W.weight[K:]) + W.bias[K:]
                std = torch.nn.functional.softplus(raw) + heads.min_std
                if s2.gaussian_loss == "marginal":
                    loss, stats = brme_marginal_loss(out[:, 0], std[:, 0], out[:, 1], std[:, 1])
                elif s2.gaussian_loss == "bt_reparam":
                    loss, stats = brme_bt_loss(out[:, 0], std[:, 0], out[:, 1], std[:, 1], generator=gen)
                else:
                    t = target[idx].permute(1, 2, 0)  # (K, b, 2) -> (b, 2, K): each head's own rows
                    loss, stats = gaussian_regression_loss(out.reshape(-1, K), std.reshape(-1, K), t.reshape(-1, K))
            else:
                loss, stats = bradley_terry_loss(out[:, 0], out[:, 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss, seen = epoch_loss + loss.item() / K * idx.shape[1], seen + idx.shape[1]
        row = {"stage": 2, "epoch": epoch + 1, **{f"losses/{k}": v for k, v in stats.items()},
               "losses/epoch_loss_mean_head": epoch_loss / seen}
        if val_feats is not None:
            with torch.no_grad():
                mean, _ = heads(val_feats.float().to(device).reshape(-1, val_feats.shape[-1]))
                mean = mean.reshape(val_feats.shape[0], 2, K)
                vloss, _ = bradley_terry_loss(mean[:, 0], mean[:, 1])
                acc = (mean[:, 0].mean(1) > mean[:, 1].mean(1)).float().mean().item()
            row.update({"eval/val_loss_sum_heads": vloss.item(), "eval/val_accuracy_mean": acc})
            if s2.stop == "validation" and vloss.item() < best[0]:
                best = (vloss.item(), {k: v.clone() for k, v in heads.state_dict().items()}, epoch + 1)
            bar.set_postfix(val_acc=f"{acc:.3f}")
        log_rows.append(row)
        if s2.stop == "loss_threshold" and epoch_loss / seen <= s2.loss_threshold:
            stopped = f"mean per-head training loss {epoch_loss / seen:.3f} <= {s2.loss_threshold} after epoch {epoch + 1}"
            break
    if best[1] is not None:  # stop=validation: keep the epoch with the best validation loss
        heads.load_state_dict(best[1])
    last = epoch + 1
    return {"epochs": last, "best_epoch": best[2] if best[1] is not None else last, "stopped": stopped}


# Files and folders `train_reward_model` writes into its output folder.
_RUN_OUTPUTS = ("config.yaml", "train_summary.json", "train_log.jsonl", "checkpoints", "backbone",
                "reward_config.json", "heads.safetensors")
MAX_HEADS = 4096


# Shared with the policy recipes (robust_rlhf.policy.tracking): one rule for "another run is here".
_first_difference = first_difference


def _check_run_config(cfg: RewardTrainConfig, out: Path) -> None:
    """Before anything is written: no input lies where this run writes, and a folder that holds
    another run (its config.yaml differs) is refused rather than overwritten."""
    import yaml

    own_backbone = out / "backbone"
    inputs = [("data.train", cfg.data.train), ("data.validation", cfg.data.validation),
              ("model.backbone", cfg.model.backbone)]
    for key, value in inputs:
        if not value or ":" in str(value).split("/")[0]:  # builtin:..., hf:...
            continue
        for name in _RUN_OUTPUTS:
            target = out / name
            if not is_inside(value, target):
                continue
            if key == "model.backbone" and name == "backbone" and not cfg.stage1.enabled:
                continue  # a frozen backbone is kept in place and referenced (heads-only re-training)
            raise UserError(f"{key}={value!r} lies inside the output folder at {str(target)!r}, which this run "
                            "would overwrite; copy it elsewhere or choose another --output-dir")
    cfg_file = out / "config.yaml"
    if not cfg_file.exists():
        return
    try:
        from robust_rlhf.config import safe_yaml_load

        old = safe_yaml_load(cfg_file.read_text(encoding="utf-8"), str(cfg_file))
    except (UserError, OSError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict):
        raise UserError(f"--output-dir {str(out)!r} holds a config.yaml that is not a reward-model run's; "
                        "choose another --output-dir")
    old.pop("resume", None)
    diff = _first_difference(_config_fingerprint(cfg), old)
    if diff:
        raise UserError(f"--output-dir {str(out)!r} holds a run/checkpoint of a different config ({diff}); "
                        "choose another --output-dir, or delete that run first")


def _check_ranges(cfg: RewardTrainConfig) -> None:
    """Numbers that type-check but make no sense (negative counts, absurd sizes)."""
    s1, s2 = cfg.stage1, cfg.stage2
    checks = [
        ("model.num_heads", cfg.model.num_heads, 1, MAX_HEADS), ("data.limit", cfg.data.limit, 1, None),
        ("stage1.max_steps", s1.max_steps, 1, None), ("stage1.running_window", s1.running_window, 1, None),
        ("stage1.eval_every", s1.eval_every, 0, None), ("stage1.checkpoint_every", s1.checkpoint_every, 0, None),
        ("stage1.patience", s1.patience, 1, None), ("stage1.warmup_steps", s1.warmup_steps, 0, None),
        ("stage1.weight_decay", s1.weight_decay, 0, None), ("stage2.epochs", s2.epochs, 0, None),
        ("stage1.loss_threshold", s1.loss_threshold, 0, None),
    ]
    for key, value, low, high in checks:
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
            raise UserError(f"config {key} must be {bound}, got {value}")
    if not s1.max_epochs > 0:
        raise UserError(f"config stage1.max_epochs must be > 0, got {s1.max_epochs}")


def _check_backbone_fits(cfg: RewardTrainConfig, model: RewardModel) -> None:
    """Limits of the loaded backbone that would otherwise fail minutes into training."""
    bcfg = model.backbone.config
    limit = getattr(bcfg, "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.model.max_length > limit:
        raise UserError(f"model.max_length={cfg.model.max_length} exceeds the backbone's position limit "
                        f"(max_position_embeddings={limit}); use model.max_length <= {limit}")
    s1 = cfg.stage1
    if cfg.stage1.enabled and s1.lora:
        if s1.lora_r < 1 or s1.lora_alpha < 1:
            raise UserError(f"stage1.lora_r and stage1.lora_alpha must be >= 1, got {s1.lora_r} and {s1.lora_alpha}")
        names = [n for n, _ in model.backbone.named_modules() if n]
        if s1.lora_target_modules is None:
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as default_targets

            if getattr(bcfg, "model_type", None) not in default_targets:
                raise UserError(f"stage1.lora_target_modules: peft has no default for backbone type "
                                f"{getattr(bcfg, 'model_type', None)!r}; name the modules to adapt")
        else:
            for t in s1.lora_target_modules:
                if not any(n == t or n.endswith("." + t) for n in names):
                    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.backbone.named_modules()
                                     if isinstance(m, torch.nn.Linear)})
                    raise UserError(f"stage1.lora_target_modules: the backbone has no module {t!r} "
                                    f"(its linear layers: {', '.join(leaves)})")


def train_reward_model(cfg: RewardTrainConfig, output_dir: str | Path) -> Path:
    """Train per `cfg`; the trained model is saved into `output_dir` (loads with
    `RewardModel.from_pretrained(output_dir)`), with `config.yaml`, `train_log.jsonl` and
    `train_summary.json` beside it. Returns `output_dir`."""
    import yaml
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Validate everything -- config, output location, inputs, resources -- before the first
    # write, so bad input leaves the output folder exactly as it was.
    out = check_output_dir(output_dir)
    t0 = time.time()
    _check_run_config(cfg, out)
    requested = resolve_device(cfg.device) if cfg.device else None
    set_seed(cfg.seed)
    # Single process: a no-op. Under torchrun / accelerate launch: DDP over the processes.
    # Unused parameters (e.g. an encoder's pooler) must not stall DDP's gradient reduction.
    accelerator = Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    device = requested if requested is not None and accelerator.num_processes == 1 else accelerator.device
    _check_ranges(cfg)
    # Data first (it needs only the tokenizer, which loads in a moment), then the backbone.
    tokenizer = load_tokenizer(cfg.model.backbone, cfg.model.trust_remote_code)
    train = load_preferences(cfg.data.train, tokenizer, limit=cfg.data.limit)
    val = load_preferences(cfg.data.validation, tokenizer) if cfg.data.validation else None
    model = RewardModel(RewardModelConfig(**config_to_dict(cfg.model)), tokenizer=tokenizer).to(device)
    _check_backbone_fits(cfg, model)
    for pairs in (train, val or []):
        check_prompt_lengths(pairs, model.tokenizer, cfg.model.max_length)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # temp files of a write that a hard kill interrupted
        if stale.is_file():
            stale.unlink()
    if accelerator.is_main_process:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    log.info("training %s reward model (K=%d) on %s: %d train pairs, %s validation pairs, device %s, precision %s",
             cfg.model.head_type, model.config.num_heads, model.config.backbone, len(train),
             len(val) if val else 0, device, autocast_dtype(device) or "fp32")
    log_rows: list[dict] = []
    summary: dict = {"num_train_pairs": len(train), "num_val_pairs": len(val) if val else 0}
    stage1_head = None
    summary["setup_s"] = time.time() - t0  # model + data loading, validation
    if cfg.stage1.enabled:
        t_stage1 = time.time()
        s1 = train_stage1(model, train, val, cfg, out, log_rows, accelerator)
        s1["wall_time_s"] = time.time() - t_stage1
        stage1_head = s1.pop("head").cpu()
        summary["stage1"] = s1
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()  # stage 2 is cheap (cached features); the main process does it and saves
        return out
    two_stage = cfg.model.head_type != "scalar" or not cfg.stage1.enabled
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    if cfg.model.head_type == "layer_ensemble":  # K top-layer copies over the frozen trunk
        summary["stage2"] = train_layer_ensemble(model, train, val, stage1_head, cfg, log_rows, device)
        model.heads.to(device)
    elif two_stage:
        cache = out / "checkpoints"
        t_feat = time.time()
        train_feats = cached_features(model, train, cache / "train_features.safetensors")
        val_feats = cached_features(model, val, cache / "val_features.safetensors") if val else None
        t_stage2 = time.time()
        summary["stage2"] = train_stage2(model, train_feats, val_feats, stage1_head, cfg, log_rows, device)
        summary["stage2"].update(features_s=t_stage2 - t_feat, heads_s=time.time() - t_stage2)
        model.heads.to(device)
    else:
        with torch.no_grad():
            model.heads.linear.weight.copy_(stage1_head.weight)
            model.heads.linear.bias.copy_(stage1_head.bias)
    if val:
        vout = model.score([p.prompt for p in val] * 2, [p.chosen for p in val] + [p.rejected for p in val])
        ph = vout.per_head
        model.config.head_stats = {"mean": ph.mean(0).tolist(), "std": ph.std(0).clamp_min(1e-6).tolist(),
                                   "source": str(cfg.data.validation),
                                   # policy/theory helper: fixed scale of kl.variance_scale=validation (seed 002)
                                   "ensemble_var_mean": vout.var.mean().item(), "ensemble_std_mean": vout.std.mean().item()}
        n = len(val)
        summary["val_accuracy_mean"] = (vout.mean[:n] > vout.mean[n:]).float().mean().item()
    summary["truncated_texts"] = model.truncated_count
    if model.truncated_count:
        log.warning("%d texts were longer than max_length=%d and were truncated", model.truncated_count, cfg.model.max_length)
    t_save = time.time()
    model.save_pretrained(out, save_backbone=cfg.stage1.enabled)
    summary["save_s"] = time.time() - t_save
    summary["wall_time_s"] = time.time() - t0
    atomic_write_json(out / "train_summary.json", summary)
    from robust_rlhf.utils import atomic_write_jsonl

    atomic_write_jsonl(out / "train_log.jsonl", log_rows)
    log.info("saved reward model to %s (validation accuracy of the mean: %s)", out, summary.get("val_accuracy_mean"))
    accelerator.wait_for_everyone()
    return out
