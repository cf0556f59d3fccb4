"""Layer ensemble: K copies of the top transformer layer(s) + a linear head each, over one
shared, frozen trunk (the backbone's lower layers).

Why: K linear heads on one frozen backbone learn nearly the same function of the same
features, so their spread is initialisation noise and does not predict their mistakes
(docs/reward_models.md, "Layer ensemble"). Giving each member its own top layer(s) lets the
members compute different features; their disagreement can then track what the data do not
determine (deep-ensemble style, Lakshminarayanan et al. 2017, applied to the top of the network).

Shapes: K members, B texts, T tokens, H hidden, I intermediate (FFN) size.

    trunk:   embeddings + layers 1..L-n of the backbone, run once        -> (B, T, H)
    members: n stacked layers, each holding K copies' weights (K, ...)   -> (K, B, T, H)
             (batched matmuls over K: the K copies cost K layer-evaluations, with no
             per-member Python loop and one call into attention for all K)
    pooling: the model's pooling (mean for encoders) per member          -> (K, B, H)
    heads:   member k's linear head on its own pooled features            -> (B, K)

Supported backbones: BERT-family encoders (`backbone.encoder.layer`, BertLayer-style
modules: MiniLM, BERT, RoBERTa-style layer naming). Others are refused with one clear line.

Stage 2 (`train_layer_ensemble`): after stage 1 fine-tunes the whole backbone with one scalar
head, the top n layers are split off, the trunk's hidden states of every training text are
computed once and kept, and the K members are trained on them with the additive
Bradley-Terry loss sum_k L(member k) (seed 002's additive ensemble loss), each member with
its own initialisation (`init`), data order and dropout draws (and optionally its own bootstrap
resample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from robust_rlhf.errors import UserError
from robust_rlhf.reward.heads import pool_hidden
from robust_rlhf.reward.losses import bradley_terry_loss

# Stacked parameter name -> the path of the same tensor inside one BertLayer.
LAYER_PARAMS: dict[str, str] = {
    "query_weight": "attention.self.query.weight",
    "query_bias": "attention.self.query.bias",
    "key_weight": "attention.self.key.weight",
    "key_bias": "attention.self.key.bias",
    "value_weight": "attention.self.value.weight",
    "value_bias": "attention.self.value.bias",
    "attn_out_weight": "attention.output.dense.weight",
    "attn_out_bias": "attention.output.dense.bias",
    "attn_ln_weight": "attention.output.LayerNorm.weight",
    "attn_ln_bias": "attention.output.LayerNorm.bias",
    "inter_weight": "intermediate.dense.weight",
    "inter_bias": "intermediate.dense.bias",
    "out_weight": "output.dense.weight",
    "out_bias": "output.dense.bias",
    "out_ln_weight": "output.LayerNorm.weight",
    "out_ln_bias": "output.LayerNorm.bias",
}


@dataclass
class LayerEnsembleConfig:
    """Stage 2 of the layer ensemble (model.head_type: layer_ensemble)."""

    lr: float = 2e-4
    """Adam learning rate of the K copied layers."""
    head_lr: float = 1e-3
    """Adam learning rate of the K linear heads."""
    epochs: int = 4
    """Passes over the cached trunk hidden states (the epoch with the best validation loss is kept)."""
    batch_size: int = 32
    """Pairs per member per step."""
    init: Literal["perturb", "reinit", "copy"] = "perturb"
    """Members' layers: the stage-1 top layer(s) plus relative Gaussian noise (perturb), BERT's
    random init N(0, initializer_range) (reinit), or exact copies (copy: diversity from heads,
    data order and dropout only)."""
    perturb_scale: float = 0.5
    """perturb: noise std as a fraction of each weight matrix's own std (member 0 included)."""
    dropout: bool = True
    """Keep the copied layers' dropout on while training (each member draws its own masks)."""
    bootstrap: bool = False
    """Each member trains on its own bootstrap resample of the pairs (off: init/order only)."""
    weight_decay: float = 0.0
    """Adam(W) weight decay of the copied layers and heads."""

    def __post_init__(self) -> None:
        for name in ("lr", "head_lr", "perturb_scale", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"layer_ensemble.{name} must be a finite number >= 0, got {v!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("layer_ensemble.epochs and layer_ensemble.batch_size must be >= 1")
        if self.init not in ("perturb", "reinit", "copy"):
            raise ValueError(f"layer_ensemble.init must be perturb, reinit or copy, got {self.init!r}")


# ---- the backbone's layer stack ---------------------------------------------------------
def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer layers (BERT family: `backbone.encoder.layer`)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UserError(f"head_type=layer_ensemble supports BERT-family encoders (e.g. minilm-l6); "
                        f"{type(backbone).__name__} has no encoder.layer list")
    names = dict(layers[0].named_parameters())
    missing = [p for p in LAYER_PARAMS.values() if p not in names]
    if missing:
        raise UserError(f"head_type=layer_ensemble: {type(layers[0]).__name__} is not a BERT-style layer "
                        f"(no {missing[0]})")
    return layers


def truncate_backbone(backbone: nn.Module, keep: int) -> list[nn.Module]:
    """Keep the first `keep` layers in the backbone (its config too, so it saves and reloads as a
    `keep`-layer model); returns the removed top layers (in order)."""
    layers = transformer_layers(backbone)
    removed = list(layers[keep:])
    backbone.encoder.layer = nn.ModuleList(list(layers[:keep]))
    backbone.config.num_hidden_layers = keep
    return removed


# ---- K stacked copies of one layer ------------------------------------------------------
class StackedLayer(nn.Module):
    """K copies of one BERT layer with their weights stacked on a leading K axis.

    forward(hidden (B, T, H) shared or (K, B, T, H) per member, mask (B, T) or (K, B, T), 1 = token)
        -> (K, B, T, H). Copy k computes exactly what a BertLayer with copy k's weights computes
        (post-LayerNorm attention block, then the feed-forward block), dropout included in training.
    """

    def __init__(self, backbone_config, num_copies: int):
        super().__init__()
        c = backbone_config
        H, I, K = c.hidden_size, c.intermediate_size, num_copies
        if H % c.num_attention_heads:
            raise UserError(f"hidden_size {H} is not divisible by num_attention_heads {c.num_attention_heads}")
        shapes = {"query_weight": (H, H), "key_weight": (H, H), "value_weight": (H, H), "attn_out_weight": (H, H),
                  "inter_weight": (I, H), "out_weight": (H, I), "inter_bias": (I,)}
        for name in LAYER_PARAMS:
            shape = shapes.get(name, (H,))
            init = torch.ones if name.endswith("ln_weight") else torch.zeros
            setattr(self, name, nn.Parameter(init(K, *shape)))
        from transformers.activations import ACT2FN

        self.num_copies, self.num_heads_attn, self.head_dim = K, c.num_attention_heads, H // c.num_attention_heads
        self.eps = c.layer_norm_eps
        self.act = ACT2FN[c.hidden_act]
        self.hidden_dropout = c.hidden_dropout_prob
        self.attn_dropout = c.attention_probs_dropout_prob

    @torch.no_grad()
    def set_copy(self, k: int, layer: nn.Module) -> None:
        """Copy an HF layer's weights into slot k."""
        params = dict(layer.named_parameters())
        for name, path in LAYER_PARAMS.items():
            getattr(self, name)[k].copy_(params[path])

    def copy_state(self, k: int) -> dict[str, torch.Tensor]:
        """Slot k's weights in the HF layer's own naming (load into a BertLayer to run it alone)."""
        return {path: getattr(self, name)[k].detach().clone() for name, path in LAYER_PARAMS.items()}

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x (B, T, I) shared or (K, B, T, I) per copy -> (K, B, T, O): copy k's x W_k^T + b_k."""
        w, b = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")  # (K, O, I), (K, O)
        K, O, I = w.shape
        if x.dim() == 3:  # shared input: one matmul against all K copies' weights side by side
            B, T, _ = x.shape
            return F.linear(x, w.reshape(K * O, I), b.reshape(K * O)).view(B, T, K, O).permute(2, 0, 1, 3)
        B, T = x.shape[1:3]
        return torch.baddbmm(b[:, None, :], x.reshape(K, B * T, I), w.transpose(1, 2)).view(K, B, T, O)

    def _layer_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w, b = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")  # (K, H)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * w[:, None, None] + b[:, None, None]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        K, nh, d = self.num_copies, self.num_heads_attn, self.head_dim
        B, T, H = hidden.shape[-3:]
        p_hidden = self.hidden_dropout if self.training else 0.0

        def split_heads(x):  # (K, B, T, H) -> (K * B, nh, T, d)
            return x.reshape(K * B, T, nh, d).transpose(1, 2)

        q, k, v = (split_heads(self._linear(hidden, n)) for n in ("query", "key", "value"))
        keep = mask.bool().expand(K, B, T).reshape(K * B, 1, 1, T)  # True = attend to this key
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(K, B, T, H)
        attn = self._layer_norm(F.dropout(self._linear(ctx, "attn_out"), p_hidden, self.training) + hidden, "attn_ln")
        ffn = F.dropout(self._linear(self.act(self._linear(attn, "inter")), "out"), p_hidden, self.training)
        return self._layer_norm(ffn + attn, "out_ln")  # (K, B, T, H)


class LayerEnsembleHeads(nn.Module):
    """K members = n stacked top layers + one linear head each, on the trunk's hidden states.

    forward(hidden (B, T, H) or (K, B, T, H), mask (B, T) or (K, B, T))
        -> (rewards (B, K), None); `member_features` gives the pooled (K, B, H).
    The K heads are one `nn.Linear(H, K)`: row k is member k's head, applied to member k's features.
    """

    head_type = "layer_ensemble"

    def __init__(self, backbone_config, num_heads: int, top_layers: int, pooling: str):
        super().__init__()
        self.hidden_size, self.num_heads, self.pooling = backbone_config.hidden_size, num_heads, pooling
        self.layers = nn.ModuleList([StackedLayer(backbone_config, num_heads) for _ in range(top_layers)])
        self.linear = nn.Linear(backbone_config.hidden_size, num_heads)

    def member_features(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(K, B, H): each member's pooled output."""
        x = hidden
        for layer in self.layers:
            x = layer(x, mask)  # (K, B, T, H)
        K, B, T, H = x.shape
        m = mask.expand(K, B, T).reshape(K * B, T)
        return pool_hidden(x.reshape(K * B, T, H), m, self.pooling).reshape(K, B, H)

    def head_rewards(self, feats: torch.Tensor) -> torch.Tensor:
        """(K, B, H) member features -> (B, K) rewards: member k's head on member k's features."""
        return torch.einsum("kbh,kh->bk", feats, self.linear.weight) + self.linear.bias

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.head_rewards(self.member_features(hidden, mask)), None  # (B, K)


# ---- building the members ---------------------------------------------------------------
def split_trunk(model) -> None:
    """Move the backbone's top `config.top_layers` layers into every member (K identical copies)
    and drop them from the backbone, which becomes the trunk. Idempotent."""
    if model.config.trunk_layers is not None and len(transformer_layers(model.backbone)) == model.config.trunk_layers:
        return
    n_total = len(transformer_layers(model.backbone))
    top = model.config.top_layers
    if top >= n_total:
        raise UserError(f"model.top_layers={top} must be smaller than the backbone's {n_total} layers")
    keep = model.config.trunk_layers if model.config.trunk_layers is not None else n_total - top
    removed = truncate_backbone(model.backbone, keep)
    if model.config.trunk_layers is None:  # fresh split: members start as copies of the removed layers
        for stacked, layer in zip(model.heads.layers, removed):
            for k in range(model.config.num_heads):
                stacked.set_copy(k, layer)
        model.config.trunk_layers = keep


@torch.no_grad()
def init_members(heads: LayerEnsembleHeads, cfg: LayerEnsembleConfig, backbone_config,
                 stage1_head: nn.Module | None, generator: torch.Generator) -> None:
    """Give each member its own start: layers per `cfg.init`, heads N(0, 1/sqrt(H)) (seed 001's
    init), except that with `init=copy|perturb` and a stage-1 head, member 0's head is the stage-1
    head (as head 0 of the linear ensemble)."""
    K, H = heads.num_heads, heads.hidden_size
    for stacked in heads.layers:
        for name in LAYER_PARAMS:
            p = getattr(stacked, name)  # (K, ...)
            if cfg.init == "reinit":
                if name.endswith("ln_weight"):
                    p.fill_(1.0)
                elif name.endswith("weight"):
                    p.copy_(torch.randn(p.shape, generator=generator) * backbone_config.initializer_range)
                else:
                    p.zero_()
            elif cfg.init == "perturb" and name.endswith("weight") and not name.endswith("ln_weight"):
                scale = cfg.perturb_scale * p[0].std()
                p.add_(torch.randn(p.shape, generator=generator).to(p) * scale)
    heads.linear.weight.copy_(torch.randn(K, H, generator=generator) / math.sqrt(H))
    heads.linear.bias.zero_()
    if stage1_head is not None and cfg.init != "reinit":
        heads.linear.weight[0].copy_(stage1_head.weight[0])
        heads.linear.bias[0].copy_(stage1_head.bias[0])


@torch.no_grad()
def trunk_hidden(model, texts: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's last hidden states of `texts`, right-padded to the longest: ((N, T, H), mask (N, T))."""
    model.eval()
    hs, ms = [], []
    for i in range(0, len(texts), batch_size):
        enc = model.tokenize(texts[i : i + batch_size])
        hs.append(model.trunk_states(enc).float().cpu())
        ms.append(enc["attention_mask"].cpu())
    T = max(h.shape[1] for h in hs)
    hidden = torch.cat([F.pad(h, (0, 0, 0, T - h.shape[1])) for h in hs])
    mask = torch.cat([F.pad(m, (0, T - m.shape[1])) for m in ms])
    return hidden, mask


def _pair_states(model, pairs, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, 2, T, H), (N, 2, T)): trunk states of each pair's chosen (0) and rejected (1) text."""
    texts = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    hidden, mask = trunk_hidden(model, texts, batch_size)
    N = len(pairs)
    return torch.stack([hidden[:N], hidden[N:]], 1), torch.stack([mask[:N], mask[N:]], 1)


def _member_rewards(heads: LayerEnsembleHeads, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (K, b, 2, T, H) per member (member k on its own rows) or (b, 2, T, H) shared by all,
    mask the same without H -> rewards (b, 2, K); right padding trimmed to the batch's longest text."""
    T = int(mask.sum(-1).max())
    b, H = hidden.shape[-4], hidden.shape[-1]
    lead = hidden.shape[:-4]  # (K,) or ()
    h = hidden[..., :T, :].reshape(*lead, 2 * b, T, H)
    m = mask[..., :T].reshape(*lead, 2 * b, T)
    return heads.head_rewards(heads.member_features(h, m)).reshape(b, 2, -1)  # (b, 2, K)


def train_layer_ensemble(model, train_pairs, val_pairs, stage1_head: nn.Module | None, cfg,
                         log_rows: list[dict], device: torch.device | None = None) -> dict:
    """Stage 2 of the layer ensemble on the (stage-1 fine-tuned) backbone `model.backbone`.

    `cfg` is the `RewardTrainConfig` (its `layer_ensemble` section and `seed` are read). Splits the
    trunk, caches its hidden states once, trains the K members with the additive BT loss and keeps
    the epoch with the best validation loss. Returns a summary dict."""
    import time

    le: LayerEnsembleConfig = cfg.layer_ensemble
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    split_trunk(model)
    heads = model.heads
    init_members(heads, le, model.backbone.config, stage1_head, gen)
    heads.to(device).float()
    t0 = time.time()
    hid, msk = _pair_states(model, train_pairs)  # (N, 2, T, H), (N, 2, T)
    val = _pair_states(model, val_pairs) if val_pairs else None
    cache_s = time.time() - t0
    hid, msk = hid.to(device), msk.to(device)
    K, N = heads.num_heads, hid.shape[0]
    samples = torch.stack([torch.arange(N)] + [
        torch.randint(0, N, (N,), generator=gen) if le.bootstrap else torch.arange(N) for _ in range(K - 1)]).to(device)
    layer_params = [p for layer in heads.layers for p in layer.parameters()]
    opt = torch.optim.AdamW([{"params": layer_params, "lr": le.lr}, {"params": heads.linear.parameters(), "lr": le.head_lr}],
                            weight_decay=le.weight_decay)
    best = (math.inf, None, -1)
    bar = tqdm(range(le.epochs), desc=f"stage 2 ({K} layer copies, frozen trunk)", unit="epoch")
    for epoch in bar:
        heads.train(le.dropout)
        perm = torch.stack([torch.randperm(N, generator=gen) for _ in range(K)]).to(device)  # own order per member
        for i in range(0, N, le.batch_size):
            idx = torch.gather(samples, 1, perm[:, i : i + le.batch_size])  # (K, b)
            r = _member_rewards(heads, hid[idx], msk[idx])  # (b, 2, K)
            loss, stats = bradley_terry_loss(r[:, 0], r[:, 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        row = {"stage": 2, "epoch": epoch + 1, **{f"losses/{k}": v for k, v in stats.items()}}
        if val is not None:
            heads.eval()
            with torch.no_grad():
                vr = torch.cat([_member_rewards(heads, val[0][j : j + 64].to(device), val[1][j : j + 64].to(device))
                                for j in range(0, val[0].shape[0], 64)])  # (Nv, 2, K)
                vloss, _ = bradley_terry_loss(vr[:, 0], vr[:, 1])
                acc = (vr[:, 0].mean(1) > vr[:, 1].mean(1)).float().mean().item()
            row.update({"eval/val_loss_sum_heads": vloss.item(), "eval/val_accuracy_mean": acc})
            if vloss.item() < best[0]:
                best = (vloss.item(), {k: v.detach().clone() for k, v in heads.state_dict().items()}, epoch + 1)
            bar.set_postfix(val_acc=f"{acc:.3f}")
        log_rows.append(row)
    if best[1] is not None:
        heads.load_state_dict(best[1])
    heads.eval()
    return {"epochs": le.epochs, "best_epoch": best[2] if best[1] is not None else le.epochs,
            "trunk_layers": model.config.trunk_layers, "cache_s": cache_s, "members_s": time.time() - t0 - cache_s}
