"""Stage 2 of the reward-model recipe (ensemble / gaussian heads, seed 002 / seed 000): the
backbone is frozen, the pooled features of every text are computed once and cached
(`cached_features`), and K heads train on them with the additive loss sum_k L(head k)
(`train_stage2`). Called by `robust_rlhf.reward.train.train_reward_model`."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from robust_rlhf.data.preferences import PreferencePair
from robust_rlhf.errors import UserError
from robust_rlhf.reward.losses import bradley_terry_loss, brme_bt_loss, brme_marginal_loss, gaussian_regression_loss
from robust_rlhf.reward.model import RewardModel
from robust_rlhf.reward.train_config import RewardTrainConfig
from robust_rlhf.utils import WriteError, atomic_write_bytes

# The recipe's logger name, as before this module was split out of it.
log = logging.getLogger("robust_rlhf.reward.train")


def _features_key(model: RewardModel, chosen: list[str], rejected: list[str]) -> str:
    """What cached features were computed from: every text, the backbone's weights, and the
    settings that change pooled features (max_length, pooling, the precision of the backbone pass)."""
    h = hashlib.sha256()
    h.update(json.dumps({"max_length": model.config.max_length, "pooling": model.config.pooling,
                         "precision": model.precision_name, "n": len(chosen)}, sort_keys=True).encode())
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
    try:
        atomic_write_bytes(cache, save_safetensors({"features": feats.contiguous()}, metadata={"key": key}))
    except WriteError as e:  # only a cache: training goes on without it
        log.warning("%s; going on without the feature cache", e)
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
