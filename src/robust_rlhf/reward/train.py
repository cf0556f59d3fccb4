"""Recipe: train a reward model -- single BT head, BT + BSR, linear-head ensemble (two-stage,
seed 002) or BRME Gaussian heads (seed 000).

    stage 1  backbone + one scalar head, Bradley-Terry (+ BSR / centering), full fine-tune or
             LoRA; periodic validation, early stop at a training-loss threshold (0.3 in seed
             002) or on validation patience; atomic checkpoints, resumable.
    stage 2  (ensemble / gaussian) backbone frozen; pooled features of every text computed
             once and cached; K heads trained with the additive loss sum_k L(head k), each
             with its own init and (optionally) its own bootstrap resample and data order.
             Head 0 starts from the stage-1 head. (`robust_rlhf.reward.stage2`; the configs
             are in `robust_rlhf.reward.train_config`.)

    python -c "from robust_rlhf.reward import *; train_reward_model(RewardTrainConfig(), 'out')"
    robust-rlhf rm train --output-dir out [key=value ...]
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from robust_rlhf.checkpoint import BackboneHeadCheckpoint
from robust_rlhf.config import config_to_dict, first_difference, saved_run_config
from robust_rlhf.data.preferences import PreferencePair, check_prompt_lengths, load_preferences
from robust_rlhf.errors import UserError
from robust_rlhf.models.hub import load_tokenizer
from robust_rlhf.reward.evaluate import hidden_state_stats
from robust_rlhf.reward.layer_ensemble import train_layer_ensemble
from robust_rlhf.reward.losses import bradley_terry_loss, bsr_penalty, centering_penalty, global_bsr_penalty
from robust_rlhf.reward.model import RewardModel, RewardModelConfig
from robust_rlhf.reward.stage2 import cached_features, train_stage2
from robust_rlhf.reward.train_config import RewardTrainConfig
from robust_rlhf.utils import (
    FolderLock,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    check_free_space,
    check_output_dir,
    is_inside,
    remove_stale_temps,
    resolve_device,
    set_seed,
    write_errors,
)

log = logging.getLogger(__name__)


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


def _adamw(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch has the fused kernel for these tensors (CPU and CUDA; HF Trainer's
    default `adamw_torch_fused` too): the same update, measured 0.09 vs 0.73 s per MiniLM step on
    one CPU thread (max weight difference after 6 steps 4e-8, float rounding)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # device / dtype without a fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


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
    opt = _adamw(params, s1.lr, s1.weight_decay)
    plain_backbone = model.backbone
    steps_per_epoch = math.ceil(len(train) / s1.batch_size)
    total_steps = int(math.ceil(s1.max_epochs * steps_per_epoch))
    if s1.max_steps is not None:
        total_steps = min(total_steps, s1.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: min(1.0, (st + 1) / max(1, s1.warmup_steps)))
    ckpt = BackboneHeadCheckpoint(out)  # trainable weights + optimizer + RNG + progress, one atomic folder
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
        # Backbone under autocast in model.precision (RewardModel.trunk_states); the head in fp32.
        feats = model.features(model.tokenize(_texts(train, idx)))  # (2B, H)
        rewards = head(feats)  # (2B, 1)
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


# Files and folders `train_reward_model` writes into its output folder.
_RUN_OUTPUTS = ("config.yaml", "train_summary.json", "train_log.jsonl", "checkpoints", "backbone",
                "reward_config.json", "heads.safetensors")
MAX_HEADS = 4096


def _check_run_config(cfg: RewardTrainConfig, out: Path) -> None:
    """Before anything is written: no input lies where this run writes, and a folder that holds
    another run (its config.yaml differs) is refused rather than overwritten."""
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
    old = saved_run_config(out, "a reward-model run's")
    if old is None:
        return
    old.pop("resume", None)
    diff = first_difference(_config_fingerprint(cfg), old)
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


@dataclass
class _Run:
    """What `train_reward_model` validated and loaded before its first write."""

    cfg: RewardTrainConfig
    out: Path
    accelerator: Any
    device: torch.device
    model: RewardModel
    train: list[PreferencePair]
    val: list[PreferencePair] | None
    t0: float


def _validate_and_load(cfg: RewardTrainConfig, output_dir: str | Path) -> _Run:
    """Validate everything -- config, output location, inputs, resources -- and load the data and
    the model, before the first write, so bad input leaves the output folder exactly as it was."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

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
    train = load_preferences(cfg.data.train, limit=cfg.data.limit)
    val = load_preferences(cfg.data.validation) if cfg.data.validation else None
    model = RewardModel(RewardModelConfig(**config_to_dict(cfg.model)), tokenizer=tokenizer).to(device)
    _check_backbone_fits(cfg, model)
    saved = [*model.heads.parameters(), *(model.backbone.parameters() if cfg.stage1.enabled else ())]
    check_free_space(out, sum(p.numel() * p.element_size() for p in saved))  # the model save, at least
    for pairs in (train, val or []):
        check_prompt_lengths(pairs, model.tokenizer, cfg.model.max_length)
    return _Run(cfg, out, accelerator, device, model, train, val, t0)


def _stage2_layer_ensemble(run: _Run, stage1_head: torch.nn.Linear | None, log_rows: list[dict]) -> dict:
    """K top-layer copies over the frozen trunk (`robust_rlhf.reward.layer_ensemble`)."""
    with run.model.training_pass():
        summary = train_layer_ensemble(run.model, run.train, run.val, stage1_head, run.cfg, log_rows, run.device)
    run.model.heads.to(run.device)
    return summary


def _stage2_heads(run: _Run, stage1_head: torch.nn.Linear | None, log_rows: list[dict]) -> dict:
    """K heads (ensemble / Gaussian, or a scalar head without stage 1) on cached pooled features
    of the frozen backbone (`robust_rlhf.reward.stage2`)."""
    cache = run.out / "checkpoints"
    t_feat = time.time()
    with run.model.training_pass():
        train_feats = cached_features(run.model, run.train, cache / "train_features.safetensors")
        val_feats = cached_features(run.model, run.val, cache / "val_features.safetensors") if run.val else None
    t_stage2 = time.time()
    if run.cfg.laplace.enabled:  # Bayesian last layer: K heads drawn around the stage-1 head (reward/laplace.py)
        from robust_rlhf.reward.laplace import laplace_heads

        summary = laplace_heads(run.model, train_feats, stage1_head, run.cfg)
    else:
        summary = train_stage2(run.model, train_feats, val_feats, stage1_head, run.cfg, log_rows, run.device)
    summary.update(features_s=t_stage2 - t_feat, heads_s=time.time() - t_stage2)
    run.model.heads.to(run.device)
    return summary


def _stage2_keep_stage1_head(run: _Run, stage1_head: torch.nn.Linear | None, log_rows: list[dict]) -> None:
    """A scalar model trained by stage 1: its head is the stage-1 head; no stage 2."""
    with torch.no_grad():
        run.model.heads.linear.weight.copy_(stage1_head.weight)
        run.model.heads.linear.bias.copy_(stage1_head.bias)


# Stage 2 by head type: (head type, stage 1 enabled) -> step; None = any.
_STAGE2: dict[tuple[str, bool | None], Callable[[_Run, torch.nn.Linear | None, list[dict]], dict | None]] = {
    ("layer_ensemble", None): _stage2_layer_ensemble,
    ("scalar", True): _stage2_keep_stage1_head,
    ("scalar", False): _stage2_heads,
    ("ensemble", None): _stage2_heads,
    ("gaussian", None): _stage2_heads,
}


def stage2_step(head_type: str, stage1_enabled: bool) -> Callable[[_Run, torch.nn.Linear | None, list[dict]], dict | None]:
    """The stage-2 step of a head type (`_STAGE2`)."""
    return _STAGE2.get((head_type, stage1_enabled)) or _STAGE2[(head_type, None)]


def _validation_stats(run: _Run, summary: dict) -> None:
    """Per-head (mean, std) and the ensemble's mean uncertainty on the validation pairs, saved with
    the model (``head_stats``: aggregator normalisation, ``kl.variance_scale=validation``)."""
    val = run.val
    vout = run.model.score([p.prompt for p in val] * 2, [p.chosen for p in val] + [p.rejected for p in val])
    ph = vout.per_head
    run.model.config.head_stats = {"mean": ph.mean(0).tolist(), "std": ph.std(0).clamp_min(1e-6).tolist(),
                                   "source": str(run.cfg.data.validation),
                                   # policy/theory helper: fixed scale of kl.variance_scale=validation (seed 002)
                                   "ensemble_var_mean": vout.var.mean().item(), "ensemble_std_mean": vout.std.mean().item()}
    n = len(val)
    summary["val_accuracy_mean"] = (vout.mean[:n] > vout.mean[n:]).float().mean().item()


def _save(run: _Run, summary: dict, log_rows: list[dict]) -> None:
    """The model (``reward_config.json`` last), ``train_summary.json`` and ``train_log.jsonl``."""
    model, out = run.model, run.out
    summary["truncated_texts"] = model.truncated_count
    if model.truncated_count:
        log.warning("%d texts were longer than max_length=%d and were truncated", model.truncated_count,
                    run.cfg.model.max_length)
    t_save = time.time()
    model.save_pretrained(out, save_backbone=run.cfg.stage1.enabled)
    summary["save_s"] = time.time() - t_save
    summary["wall_time_s"] = time.time() - run.t0
    atomic_write_json(out / "train_summary.json", summary)
    atomic_write_jsonl(out / "train_log.jsonl", log_rows)
    log.info("saved reward model to %s (validation accuracy of the mean: %s)", out, summary.get("val_accuracy_mean"))


def train_reward_model(cfg: RewardTrainConfig, output_dir: str | Path) -> Path:
    """Train per `cfg`; the trained model is saved into `output_dir` (loads with
    `RewardModel.from_pretrained(output_dir)`), with `config.yaml`, `train_log.jsonl` and
    `train_summary.json` beside it. Returns `output_dir`.

    validate + load (nothing written) -> stage 1 -> stage 2 (by head type, `stage2_step`) -> save.
    A deep ensemble (``model.head_type: deep_ensemble``) is K such runs, one per member
    (`robust_rlhf.reward.deep_ensemble`)."""
    if cfg.model.head_type == "deep_ensemble":
        from robust_rlhf.reward.train_deep_ensemble import train_deep_ensemble

        return train_deep_ensemble(cfg, output_dir, train_reward_model, _check_run_config)
    run = _validate_and_load(cfg, output_dir)
    with write_errors(run.out):
        run.out.mkdir(parents=True, exist_ok=True)
    # One run per folder: a second `rm train` into it is refused while this one holds the lock.
    with FolderLock(run.out, "`rm train`") if run.accelerator.is_main_process else contextlib.nullcontext():
        return _train_locked(run)


def _train_locked(run: _Run) -> Path:
    """`train_reward_model` once everything is validated and the output folder is locked."""
    import yaml

    cfg, model, out, accelerator = run.cfg, run.model, run.out, run.accelerator
    if accelerator.is_main_process:
        remove_stale_temps(out)  # temp files of a write that a hard kill interrupted (never a live run's)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    with model.training_pass():
        train_precision = model.precision_name
    log.info("training %s reward model (K=%d) on %s: %d train pairs, %s validation pairs, device %s, precision %s, "
             "%d torch threads", cfg.model.head_type, model.config.num_heads, model.config.backbone, len(run.train),
             len(run.val) if run.val else 0, run.device, f"{train_precision} (model.precision={cfg.model.precision}; "
             f"scoring {model.precision_name})", torch.get_num_threads())
    log_rows: list[dict] = []
    summary: dict = {"num_train_pairs": len(run.train), "num_val_pairs": len(run.val) if run.val else 0,
                     "precision": train_precision, "score_precision": model.precision_name}
    summary["setup_s"] = time.time() - run.t0  # model + data loading, validation
    # stage 1: backbone + one scalar head
    stage1_head = None
    if cfg.stage1.enabled:
        t_stage1 = time.time()
        with model.training_pass():
            s1 = train_stage1(model, run.train, run.val, cfg, out, log_rows, accelerator)
        s1["wall_time_s"] = time.time() - t_stage1
        stage1_head = s1.pop("head").cpu()
        summary["stage1"] = s1
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()  # stage 2 is cheap (cached features); the main process does it and saves
        return out
    # stage 2: the heads, by head type, on the frozen backbone
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    s2 = stage2_step(cfg.model.head_type, cfg.stage1.enabled)(run, stage1_head, log_rows)
    if s2 is not None:
        summary["stage2"] = s2
    if run.val:
        _validation_stats(run, summary)
    _save(run, summary, log_rows)
    accelerator.wait_for_everyone()
    return out
