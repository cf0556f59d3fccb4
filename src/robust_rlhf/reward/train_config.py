"""Config of the reward-model recipe (`robust_rlhf.reward.train`): one dataclass per section,
nested in `RewardTrainConfig`; every field documented. Presets: src/robust_rlhf/configs/rm_*.yaml."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from robust_rlhf.reward.deep_ensemble import MembersConfig
from robust_rlhf.reward.laplace import LaplaceConfig
from robust_rlhf.reward.layer_ensemble import LayerEnsembleConfig
from robust_rlhf.reward.model import RewardModelConfig


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
    members: MembersConfig = field(default_factory=MembersConfig)
    """model.head_type=deep_ensemble: each of the K members' data and per-member overrides (backbone, LoRA)."""
    laplace: LaplaceConfig = field(default_factory=LaplaceConfig)
    """Bayesian last layer: K heads drawn from the Laplace posterior of the stage-1 head instead of trained heads."""
    seed: int = 0
    """Seed for init, data order, bootstrap and dropout."""
    device: str | None = None
    """cpu / cuda / cuda:1; null or auto = cuda if available (as for policies)."""
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
        if self.laplace.enabled and (self.model.head_type != "ensemble" or not self.stage1.enabled):
            raise ValueError("laplace.enabled needs model.head_type=ensemble and stage1.enabled=true "
                             "(the heads are drawn around the stage-1 head)")
        if not (self.laplace.prior_precision > 0 and math.isfinite(self.laplace.prior_precision)):
            raise ValueError(f"laplace.prior_precision must be a finite number > 0, got {self.laplace.prior_precision}")
        if self.stage1.batch_size < 1 or self.stage2.batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.stage2.epochs < 1:
            raise ValueError(f"stage2.epochs must be >= 1, got {self.stage2.epochs}")
        if not (self.stage2.loss_threshold > 0 and math.isfinite(self.stage2.loss_threshold)):
            raise ValueError(f"stage2.loss_threshold must be a finite number > 0, got {self.stage2.loss_threshold}")
