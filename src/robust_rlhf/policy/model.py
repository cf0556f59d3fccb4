"""The policy: any HF causal LM, optionally LoRA-wrapped, plus a scalar value head, plus the
frozen reference it is penalised against.

* LoRA (default, peft, r = 16 on q/k/v/o): the reference is the *same* model with its adapters
  disabled (``with model.disable_adapter():``), so PPO holds one copy of the weights
  (USER_NEEDS #8). Full fine-tuning keeps a frozen deep copy as the reference.
* Value head: a linear layer on the policy's last hidden state (TRL removed its value-head
  classes, USER_NEEDS #7). ``V(s_t)`` is read at the position that *predicts* response token
  t, i.e. the same positions the logits of the response come from.
* Sequences are ``[left-padded query | response right-padded after EOS]``. Position ids are
  computed from the attention mask (``cumsum - 1``) exactly as ``generate`` does, so a
  sequence gets the same log-probs alone or in a left-padded batch (tested).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from robust_rlhf.errors import UserError

log = logging.getLogger(__name__)

ADAPTER_SUBDIR = "policy"
VALUE_HEAD_FILE = "value_head.pt"


@dataclass
class ModelConfig:
    """Which LM to optimise and how (LoRA or full fine-tuning)."""

    name: str = "smollm2-135m"
    """policy LM: embedded name, local HF folder, or hub id"""
    use_lora: bool = True
    """train LoRA adapters (reference = same model, adapters disabled); false = full fine-tuning + a frozen reference copy"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA scaling alpha (effective scale alpha / r)"""
    lora_dropout: float = 0.0
    """LoRA dropout (0 keeps rollout and update log-probs identical)"""
    lora_target_modules: list[str] = None  # type: ignore[assignment]
    """modules that get adapters (default: q_proj, k_proj, v_proj, o_proj)"""
    trust_remote_code: bool = False
    """allow custom model code from the model folder / hub"""
    allow_pickle: bool = False
    """Allow pickle (.bin) weights; off: safetensors only, since pickle can run code on load."""
    allow_partial_weights: bool = False
    """Load a model whose config.json does not match its weight files (missing weights randomly initialised);
    off: such a folder is refused, naming the weights."""
    precision: str = "auto"
    """auto | fp32 | bf16: dtype of the frozen base weights under LoRA (adapters and value head stay fp32). auto = bf16
    where the hardware computes it natively (bf16 GPU; CPU with AVX-512 BF16 / AMX), fp32 elsewhere. Policy and
    reference are then both computed on the same bf16 base (KL is exactly 0 at the start). Full fine-tuning keeps fp32."""

    def __post_init__(self) -> None:
        if self.lora_target_modules is None:
            self.lora_target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be positive, got {self.lora_r}")
        from robust_rlhf.utils import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"model.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "bf16" and not self.use_lora:
            raise ValueError("model.precision=bf16 stores the frozen base weights in bf16, which needs LoRA "
                             "(model.use_lora=true); full fine-tuning keeps fp32 master weights")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


class ValueHead(nn.Module):
    """Scalar value V(s) = w·h + b on the last hidden state h (hidden size H)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        # Small init: V starts near 0, so early explained variance is not dominated by noise.
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)  # (B, T, H) -> (B, T)


@dataclass
class ForwardOutput:
    """Per-response-token quantities; every tensor is (B, T) over the response positions."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None
    logprobs_all: torch.Tensor | None = None
    """(B, T, V) log-probs of every vocabulary token (``with_full_logprobs``; held-out evaluation's exact KL)"""


class Policy(nn.Module):
    """A causal LM (LoRA-wrapped or not) + value head + access to its reference.

    Attributes:
        lm: the trainable LM (a peft ``PeftModel`` when LoRA is on).
        value_head: ``ValueHead`` or None (RLOO / best-of-n need none).
        tokenizer: the policy's tokenizer (pad token set; padding side left for generation).
    """

    def __init__(self, lm: nn.Module, tokenizer, value_head: ValueHead | None, use_lora: bool) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = value_head
        self.tokenizer = tokenizer
        self.use_lora = use_lora
        # Full fine-tuning: a frozen copy as the reference (kept out of .parameters()).
        self._ref: list[nn.Module] = []
        if not use_lora:
            ref = copy.deepcopy(lm).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self._ref.append(ref)

    def to(self, *args, **kwargs) -> "Policy":
        super().to(*args, **kwargs)
        if self._ref:
            self._ref[0].to(*args, **kwargs)
        return self

    # --- reference ------------------------------------------------------------------------
    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """Context yielding the reference LM: the policy with LoRA adapters disabled, or the copy."""
        if self.use_lora:
            with self.lm.disable_adapter():
                yield self.lm
        else:
            yield self._ref[0]

    # --- forward passes -------------------------------------------------------------------
    def forward_response(
        self,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
        with_values: bool = False,
        with_entropy: bool = False,
        reference: bool = False,
        with_full_logprobs: bool = False,
    ) -> ForwardOutput:
        """Log-probs (and values / entropy) of the response tokens.

        Args:
            query_ids, query_mask: (B, P) left-padded prompts.
            response_ids, response_mask: (B, T) responses; mask 0 after the first EOS.
            temperature: the sampling temperature; log-probs are of ``softmax(logits / temperature)``,
                the distribution the tokens were drawn from.
            reference: score with the reference instead of the policy (no values).
            with_full_logprobs: also return the (B, T, V) log-probs over the vocabulary.
        Returns:
            ForwardOutput with (B, T) tensors; positions where ``response_mask`` is 0 hold
            garbage the caller must mask.
        """
        if reference:
            with self.reference() as ref:
                return _forward(ref, None, query_ids, query_mask, response_ids, response_mask, temperature, False,
                                with_entropy, with_full_logprobs)
        return _forward(
            self.lm, self.value_head if with_values else None, query_ids, query_mask,
            response_ids, response_mask, temperature, with_values, with_entropy, with_full_logprobs,
        )

    # --- persistence ----------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the trainable tensors (LoRA adapters or all LM weights, and the value head)."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state]
        if missing:
            raise UserError(f"checkpoint does not match the policy: {len(missing)} tensors missing (e.g. {missing[0]})")
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write a loadable policy folder: adapter (or full model) + tokenizer + value head."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        if self.value_head is not None:
            torch.save(self.value_head.state_dict(), directory / VALUE_HEAD_FILE)


class TrainForward(nn.Module):
    """``forward`` = ``policy.forward_response(..., with_values=True)``: the module to hand to
    ``accelerator.prepare`` (DDP hooks the parameters a module's ``forward`` uses)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, query_ids, query_mask, response_ids, response_mask, temperature: float = 1.0,
                with_entropy: bool = False) -> ForwardOutput:
        return self.policy.forward_response(query_ids, query_mask, response_ids, response_mask, temperature,
                                            with_values=True, with_entropy=with_entropy)


def _forward(lm, value_head, query_ids, query_mask, response_ids, response_mask, temperature, with_values, with_entropy,
             with_full_logprobs=False):
    from robust_rlhf.policy.losses import entropy_from_logits

    P, T = query_ids.shape[1], response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # (B, P+T)
    attention_mask = torch.cat([query_mask, response_mask], dim=1).long()  # (B, P+T)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # as generate() does with left padding
    out = lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=with_values,
        use_cache=False,
        logits_to_keep=T + 1,  # positions P-1 .. P+T-1; the last one predicts past the response
    )
    logits = out.logits[:, :-1].float() / temperature  # (B, T, V): position P-1+t predicts response token t
    logprobs_all = torch.log_softmax(logits, dim=-1)
    logprobs = torch.gather(logprobs_all, 2, response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():  # logged only; no graph
            entropy = entropy_from_logits(logits)
    values = None
    if with_values and value_head is not None:
        hidden = out.hidden_states[-1][:, P - 1 : P + T - 1]  # (B, T, H): the states that predict each token
        values = value_head(hidden.float())  # (B, T)
    return ForwardOutput(logprobs=logprobs, entropy=entropy, values=values,
                         logprobs_all=logprobs_all if with_full_logprobs else None)


def load_policy(cfg: ModelConfig, with_value_head: bool = True, adapter_path: str | Path | None = None,
                device: torch.device | None = None) -> Policy:
    """Load `cfg.name`, wrap it with LoRA (or prepare full fine-tuning) and add a value head.

    Args:
        adapter_path: a folder written by ``Policy.save_pretrained`` to start from (its
            adapter / weights and value head, if present).
        device: where the policy will run (decides ``model.precision: auto``; default: cuda if available).
    """
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer
    from robust_rlhf.models.sampler import contiguous_lm_head

    base_name = cfg.name
    if adapter_path is not None and not cfg.use_lora:
        base_name = str(adapter_path)  # a full fine-tuned policy folder is a complete model
    lm = load_causal_lm(base_name, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle,
                        allow_partial_weights=cfg.allow_partial_weights)
    tokenizer = load_tokenizer(base_name if not cfg.use_lora else cfg.name, trust_remote_code=cfg.trust_remote_code)
    tokenizer.padding_side = "left"
    lm.config.use_cache = True
    if cfg.use_lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter_path is not None:
            lm = PeftModel.from_pretrained(lm, str(adapter_path), is_trainable=True)
        else:
            available = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
            missing = [m for m in cfg.lora_target_modules if m not in available]
            if missing:
                raise UserError(
                    f"model.lora_target_modules: {missing} not found in {cfg.name!r} "
                    f"(linear layers it has include: {', '.join(sorted(a for a in available if 'proj' in a)[:12])})"
                )
            lora = LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM", bias="none",
            )
            lm = get_peft_model(lm, lora)
    contiguous_lm_head(lm)  # logits_to_keep slices would otherwise copy the LM head's weight per row
    if cfg.use_lora:
        base_dtype = _base_dtype(cfg.precision, device)
        if base_dtype is not None:
            for p in lm.parameters():
                if not p.requires_grad and p.dtype == torch.float32:
                    p.data = p.data.to(base_dtype)  # frozen: no master copy needed; buffers (rotary) stay fp32
    value_head = ValueHead(lm.config.hidden_size) if with_value_head else None
    if value_head is not None and adapter_path is not None and (Path(adapter_path) / VALUE_HEAD_FILE).exists():
        value_head.load_state_dict(torch.load(Path(adapter_path) / VALUE_HEAD_FILE, weights_only=True))
    return Policy(lm, tokenizer, value_head, use_lora=cfg.use_lora)


def _base_dtype(precision: str, device: torch.device | None) -> torch.dtype | None:
    from robust_rlhf.utils import autocast_dtype, default_device

    return autocast_dtype(device if device is not None else default_device(), precision)


def load_saved_policy(directory: str | Path, trust_remote_code: bool = False) -> Policy:
    """Load a policy folder written by training (run dir, its ``policy/`` folder, or a checkpoint)."""
    d = Path(directory)
    for cand in (d, d / ADAPTER_SUBDIR):
        if (cand / "adapter_config.json").exists():
            import json

            try:
                base = json.loads((cand / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
            except (OSError, ValueError, RecursionError, TypeError, KeyError) as e:
                why = "no 'base_model_name_or_path'" if isinstance(e, (KeyError, TypeError)) else "torn or not JSON"
                raise UserError(f"{cand / 'adapter_config.json'}: cannot read ({why})") from None
            return load_policy(ModelConfig(name=base, trust_remote_code=trust_remote_code), True, cand)
        if (cand / "config.json").exists():
            return load_policy(ModelConfig(name=str(cand), use_lora=False, trust_remote_code=trust_remote_code), True, cand)
    raise UserError(f"policy {str(directory)!r}: no adapter_config.json or config.json in it or in its {ADAPTER_SUBDIR}/ folder")
