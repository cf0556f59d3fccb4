"""The model responses are sampled from: the policy itself, or a bf16 copy of it with LoRA merged in.

Generation on a small batch is dominated by reading every weight once per new token. A bf16 copy
with the LoRA deltas merged into its weights reads half the bytes and skips the adapters' extra
matmuls: on this project's 2-core CPU (AVX-512 BF16) SmolLM2-135M samples 8 x 16 tokens in
~1.0 s instead of ~1.7 s (docs/benchmarks.md). Training keeps the fp32 weights: the copy is only
read by ``generate``, and log-probs for the update come from the fp32 policy, as with any
rollout engine (vLLM in TRL / OpenRLHF / verl) that samples in bf16.

The copy is refreshed before every use from the live weights: a LoRA layer's merged weight
``W0 + scale * B @ A`` (peft's own ``get_delta_weight``), every other tensor copied only when
it is trainable or has changed since the last refresh (its version counter). It costs half the
policy's fp32 memory; ``sampling.precision: fp32`` turns it off.

Also here: `contiguous_lm_head`, a forward pre-hook that makes the input of the output layer
contiguous. ``logits_to_keep`` hands the LM head a strided slice of the hidden states, and
``torch.nn.functional.linear`` on a non-contiguous 3-D input falls back to a batched matmul that
materialises the weight once per row (B x H x V floats: 906 MB for 8 rows of SmolLM2 in fp32),
which cost ~40 % of a no-grad forward here. The hook changes no value.
"""

from __future__ import annotations

import copy
import logging
import weakref

import torch
from torch import nn

from robust_rlhf.utils import PRECISIONS, autocast_dtype  # native bf16: GPU, x86 AVX-512 BF16 / AMX, Arm (USER_NEEDS #14)

log = logging.getLogger(__name__)




def sampling_dtype(precision: str, device: torch.device, lm: nn.Module) -> torch.dtype | None:
    """The dtype of the sampling copy, or None to sample from ``lm`` itself.

    ``auto``: bf16 when ``lm`` holds fp32 weights or LoRA adapters (merged in the copy) and the device
    computes bf16 natively (a CUDA GPU with bf16, or a CPU with AVX-512 BF16 / AMX); otherwise None. ``bf16`` forces the copy,
    ``fp32`` never makes one."""
    if precision not in PRECISIONS:
        raise ValueError(f"sampling.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    # worth a copy when some weight the copy would hold is fp32 (half the bytes per token), or -- on a CPU,
    # where each small matmul has a fixed cost -- when LoRA adapters would run as separate matmuls. On a GPU
    # a bf16 base with adapters samples from the policy itself: a merged copy would cost memory for little
    # time. The adapters' own fp32 tensors (trainable under peft) are merged away, so they do not count.
    peft = _is_peft(lm)
    has_fp32 = any(p.dtype == torch.float32 for p in lm.parameters() if not (peft and p.requires_grad))
    if precision == "bf16":
        return torch.bfloat16 if has_fp32 or peft else None
    worth_it = has_fp32 or (peft and device.type == "cpu")
    return torch.bfloat16 if worth_it and autocast_dtype(device, "auto") is not None else None


def contiguous_lm_head(lm: nn.Module) -> None:
    """Register (once) a pre-hook that makes the LM head's input contiguous (see the module doc)."""
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is None or getattr(head, "_robust_rlhf_contiguous", False):
        return
    head.register_forward_pre_hook(_contiguous_first_arg)
    head._robust_rlhf_contiguous = True


def _contiguous_first_arg(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else args


def _is_peft(lm: nn.Module) -> bool:
    return hasattr(lm, "peft_config") and hasattr(lm, "get_base_model")


class SamplingCopy:
    """A plain (adapter-free) copy of ``lm`` in ``dtype`` whose weights follow ``lm``'s.

    Attributes:
        model: the copy (eval mode, no gradients), ready for ``generate``.
    """

    def __init__(self, lm: nn.Module, dtype: torch.dtype) -> None:
        with torch.no_grad():
            if _is_peft(lm):
                # merge_and_unload on a deep copy: module names become the base model's
                self.model = copy.deepcopy(lm).merge_and_unload()
            else:
                self.model = copy.deepcopy(lm)
            # parameters only: buffers such as rotary inv_freq keep their fp32 precision
            for p in self.model.parameters():
                p.data = p.data.to(dtype)
                p.requires_grad_(False)
            self.model.eval()
        contiguous_lm_head(self.model)
        self.dtype = dtype
        self._versions: dict[str, int] = {}
        self.refresh(lm)

    @torch.no_grad()
    def refresh(self, lm: nn.Module) -> None:
        """Copy ``lm``'s current weights (LoRA deltas merged) into the copy."""
        from peft.tuners.lora import LoraLayer

        src_root = lm.get_base_model() if _is_peft(lm) else lm
        for name, mod in self.model.named_modules():
            src = src_root.get_submodule(name) if name else src_root
            if isinstance(src, LoraLayer):
                base = src.get_base_layer()
                weight = base.weight.detach().float()
                if not src.merged and not src.disable_adapters:
                    for adapter in src.active_adapters:
                        if adapter in src.lora_A:
                            weight = weight + src.get_delta_weight(adapter).float()
                mod.weight.copy_(weight)
                if getattr(base, "bias", None) is not None:
                    mod.bias.copy_(base.bias)
                continue
            for pname, p in mod.named_parameters(recurse=False):
                sp = getattr(src, pname)
                key = f"{name}.{pname}"
                if sp.requires_grad or self._versions.get(key) != sp._version:
                    p.copy_(sp)
                    self._versions[key] = sp._version


_COPIES: "weakref.WeakKeyDictionary[nn.Module, SamplingCopy]" = weakref.WeakKeyDictionary()


def sampling_model(lm: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """The model to sample from for ``sampling.precision`` (`sampling_dtype`): ``lm`` itself, or its
    refreshed low-precision copy (made once per ``lm`` and kept while ``lm`` lives)."""
    dtype = sampling_dtype(precision, device, lm)
    if dtype is None:
        contiguous_lm_head(lm)
        return lm
    entry = _COPIES.get(lm)
    if entry is None or entry.dtype != dtype:
        entry = SamplingCopy(lm, dtype)
        _COPIES[lm] = entry
        log.info("sampling from a %s copy of the policy (sampling.precision=%s)", str(dtype).removeprefix("torch."), precision)
    else:
        entry.refresh(lm)
    return entry.model
