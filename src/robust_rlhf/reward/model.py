"""`RewardModel`: any Hugging Face backbone + K reward heads; one backbone pass scores all heads.

Saved layout (`save_pretrained(dir)`):
    dir/reward_config.json      -- head type, K, pooling, max_length, where the backbone is,
                                   per-head normalisation statistics
    dir/heads.safetensors       -- the K heads (kilobytes: H x K floats)
    dir/backbone/               -- the fine-tuned backbone as an ordinary HF folder (+ tokenizer),
                                   only when the backbone was trained; a frozen, untouched backbone
                                   is stored by reference (its name/path), so K = 10 heads on a
                                   frozen backbone add kilobytes, not a model copy.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from robust_rlhf.errors import UserError
from robust_rlhf.models.hub import load_backbone, load_tokenizer
from robust_rlhf.reward.heads import HeadType, Pooling, RewardHeads, pool_hidden
from robust_rlhf.reward.output import RewardOutput
from robust_rlhf.utils import atomic_save_dir, atomic_write_bytes, atomic_write_text

CONFIG_NAME = "reward_config.json"
HEADS_NAME = "heads.safetensors"


@dataclass
class RewardModelConfig:
    backbone: str = "minilm-l6"
    """Backbone: embedded name (minilm-l6, smollm2-135m), HF folder or hub id."""
    head_type: HeadType = "ensemble"
    """scalar (K = 1), ensemble (K linear heads) or gaussian (BRME: K heads of mean and std)."""
    num_heads: int = 10
    """K, the number of heads."""
    pooling: Pooling | None = None
    """last (decoders), cls or mean (encoders); None picks last for decoders, mean for encoders."""
    max_length: int = 128
    """Tokens per (prompt, response) text; longer texts are truncated and counted."""
    min_std: float = 1e-3
    """Floor of Gaussian heads' std."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the backbone folder/hub (off by default)."""
    allow_pickle: bool = False
    """Allow pickle (.bin) backbone weights; off: safetensors only, since pickle can run code on load."""
    head_stats: dict = field(default_factory=dict)
    """Per-head reward mean/std on the validation set (for normalised aggregation)."""

    def __post_init__(self) -> None:
        if self.head_type not in ("scalar", "ensemble", "gaussian"):
            raise ValueError(f"head_type must be scalar, ensemble or gaussian, got {self.head_type!r}")
        if self.pooling not in (None, "last", "cls", "mean"):
            raise ValueError(f"pooling must be last, cls, mean or null, got {self.pooling!r}")
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ValueError(f"num_heads must be an integer >= 1, got {self.num_heads!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if not self.min_std > 0:
            raise ValueError(f"min_std must be > 0, got {self.min_std!r}")


def default_pooling(backbone_config) -> Pooling:
    decoder = getattr(backbone_config, "is_decoder", False) or any(
        a.endswith("ForCausalLM") for a in (getattr(backbone_config, "architectures", None) or []))
    return "last" if decoder else "mean"


class RewardModel(nn.Module):
    """Backbone + `RewardHeads`. `score()` for inference; `forward_texts()` for training."""

    def __init__(self, config: RewardModelConfig, backbone: nn.Module | None = None, tokenizer=None,
                 backbone_source: str | None = None):
        super().__init__()
        if config.head_type == "scalar":
            config.num_heads = 1
        self.config = config
        self.backbone = backbone if backbone is not None else load_backbone(config.backbone, config.trust_remote_code, config.allow_pickle)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.backbone, config.trust_remote_code)
        if self.config.pooling is None:
            self.config.pooling = default_pooling(self.backbone.config)
        if self.config.pooling == "last":
            self.tokenizer.padding_side = "left"  # pooled position is then always T-1; mask-based anyway
        self.heads = RewardHeads(self.backbone.config.hidden_size, config.num_heads, config.head_type, config.min_std)
        self.backbone_source = backbone_source or config.backbone
        self.truncated_count = 0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- text -> features -------------------------------------------------------------
    def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        if len(prompts) != len(responses):
            raise UserError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [p + r for p, r in zip(prompts, responses)]

    def tokenize(self, texts: Sequence[str]) -> dict:
        """Tokenize (truncating to max_length) and count truncated texts. Only texts that fill
        max_length can have been cut, so only those are re-tokenized untruncated to tell."""
        L = self.config.max_length
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=L, return_tensors="pt")
        full = [t for t, n in zip(texts, enc["attention_mask"].sum(dim=1).tolist()) if n >= L]
        if full:
            lengths = [len(ids) for ids in self.tokenizer(full, truncation=False)["input_ids"]]
            self.truncated_count += sum(n > L for n in lengths)
        return {k: v.to(self.device) for k, v in enc.items()}

    def features(self, enc: dict) -> torch.Tensor:
        """(B, H) pooled last hidden state."""
        out = self.backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                            **({"token_type_ids": enc["token_type_ids"]} if "token_type_ids" in enc else {}))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return pool_hidden(hidden, enc["attention_mask"], self.config.pooling)  # (B, H)

    def forward_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(mean (B, K), std (B, K) | None, features (B, H)) with grad."""
        feats = self.features(self.tokenize(texts))
        mean, std = self.heads(feats)
        return mean, std, feats

    # ---- inference --------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64,
              return_features: bool = False):
        """Per-head rewards for (prompt, response) pairs, batched, no grad.

        Returns a `RewardOutput` (B, K) -- and the (B, H) pooled features if asked."""
        texts = self.texts(prompts, responses)
        was_training = self.training
        self.eval()
        outs, feats = [], []
        # Sort by length so batches pad little; restore order after.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            mean, std, f = self.forward_texts([texts[j] for j in idx])
            outs.append(RewardOutput(mean.float().cpu(), None if std is None else std.float().cpu()))
            feats.append(f.float().cpu())
        self.train(was_training)
        if not outs:
            empty = torch.zeros(0, self.config.num_heads)
            out = RewardOutput(empty, empty.clone() if self.config.head_type == "gaussian" else None)
            return (out, torch.zeros(0, self.backbone.config.hidden_size)) if return_features else out
        merged = RewardOutput.cat(outs)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        out = RewardOutput(merged.per_head[inverse],
                           None if merged.per_head_std is None else merged.per_head_std[inverse])
        if return_features:
            return out, torch.cat(feats)[inverse]
        return out

    # ---- persistence ------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, save_backbone: bool = True) -> Path:
        """Write the model into folder `path` (which may hold other files, e.g. a training run).

        `save_backbone=False` stores the backbone by reference (`backbone_source`), for a frozen
        backbone unchanged from its source. Crash-safe: `reward_config.json` is removed first and
        written last, each file is written atomically, so a folder either loads completely or
        is reported as not a reward model -- never a mix of old and new weights."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).unlink(missing_ok=True)
        cfg = asdict(self.config)
        if save_backbone:
            def write_backbone(tmp: Path) -> None:
                self.backbone.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)

            atomic_save_dir(path / "backbone", write_backbone)
            cfg["backbone_location"] = "backbone"
        else:
            if (path / "backbone").exists():
                shutil.rmtree(path / "backbone")
            cfg["backbone_location"] = self.backbone_source
        atomic_write_bytes(path / HEADS_NAME, save_safetensors(
            {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}))
        atomic_write_text(path / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> "RewardModel":
        path = Path(path)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.exists():
            raise UserError(f"{path}: not a robust-rlhf reward model (no {CONFIG_NAME})")
        try:
            raw = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg_file}: invalid JSON ({e})") from None
        location = raw.pop("backbone_location", None)
        if not isinstance(raw, dict):
            raise UserError(f"{cfg_file}: expected a JSON object")
        try:
            config = RewardModelConfig(**raw)
        except (TypeError, ValueError) as e:
            raise UserError(f"{cfg_file}: {e}") from None
        source = str(path / location) if location == "backbone" else (location or config.backbone)
        backbone = load_backbone(source, config.trust_remote_code, config.allow_pickle)
        tokenizer = load_tokenizer(source, config.trust_remote_code)
        model = cls(config, backbone, tokenizer, backbone_source=location if location != "backbone" else config.backbone)
        try:
            state = load_file(str(path / HEADS_NAME))
            model.heads.load_state_dict(state)
        except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
            raise UserError(f"{path / HEADS_NAME}: cannot load heads ({str(e).splitlines()[0]})") from None
        model.eval()
        if device is not None:
            model.to(device)
        return model
