"""Sampling from a causal language model: left-padded prompts, KV-cached ``generate``, EOS masking.

The one LM sampler of the package: the policy recipes (`robust_rlhf.policy`), the lab's sample
pools and the built-in tasks' generators (`robust_rlhf.data.builtin_task`, and
`robust_rlhf.data.large_task`, which also takes the pooled hidden states its learned gold reads)
all draw through `generate`. The model it samples from is
`robust_rlhf.models.sampler.sampling_model` (the model itself, or its bf16 copy with LoRA merged).

A rollout is ``[query (B, P) left-padded | response (B, T)]``. The response mask keeps every
token up to and including the first EOS and zeroes everything after it (``generate`` pads
finished rows with the pad token, which for many LMs *is* EOS -- so we never search for the
pad id, USER_NEEDS #6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Rollout", "SamplingConfig", "decode_responses", "encode_prompts", "eos_ids", "generate",
           "response_mask_after_eos"]


@dataclass
class SamplingConfig:
    """How responses are drawn from the policy."""

    max_new_tokens: int = 24
    """response length cap in tokens"""
    temperature: float = 1.0
    """sampling temperature (log-probs in training use the same temperature)"""
    top_k: int = 0
    """top-k filter (0 = off; keep 0 for unbiased on-policy log-probs)"""
    top_p: float = 1.0
    """nucleus filter (1.0 = off; keep 1.0 for unbiased on-policy log-probs)"""
    max_prompt_tokens: int = 64
    """prompts are truncated (from the left) to this many tokens"""
    generation_batch_size: int = 64
    """generate at most this many sequences at once (memory)"""
    precision: str = "auto"
    """auto | fp32 | bf16: sample from a bf16 copy of the policy with LoRA merged (auto: where the hardware computes
    bf16 natively -- a bf16 GPU or a CPU with AVX-512 BF16 / AMX -- and the weights are fp32); log-probs for the update
    always come from the policy itself (robust_rlhf.models.sampler)"""
    seed_per_sample: bool = False
    """PPO: draw each response alone with its own seed from (step, index in the global batch), so samples do
    not depend on batching or on the number of processes (exact multi-process equivalence; slower)"""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        from robust_rlhf.utils import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"sampling.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class Rollout:
    """A batch of sampled responses.

    Attributes:
        prompts: B prompt strings.
        query_ids, query_mask: (B, P) left-padded prompt tokens.
        response_ids: (B, T) generated tokens (T = longest response in the batch).
        response_mask: (B, T) 1 up to and including the first EOS, 0 after.
        responses: B decoded response strings (special tokens removed).
        pooled_hidden: (B, H) fp32 mean of the sampled model's final (normed) hidden state over the
            prompt tokens and the response tokens before the first EOS, taken from the sampling's own
            forward passes; only from ``generate(..., return_pooled_hidden=True)``, else None.
    """

    prompts: list[str]
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    responses: list[str]
    pooled_hidden: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def index(self, idx: torch.Tensor | list[int]) -> "Rollout":
        idx_list = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        t = torch.as_tensor(idx_list, dtype=torch.long)
        return Rollout(
            [self.prompts[i] for i in idx_list], self.query_ids[t], self.query_mask[t],
            self.response_ids[t], self.response_mask[t], [self.responses[i] for i in idx_list],
            None if self.pooled_hidden is None else self.pooled_hidden[t.to(self.pooled_hidden.device)],
        )


def response_mask_after_eos(response_ids: torch.Tensor, eos_token_ids: int | list[int]) -> torch.Tensor:
    """Mask of the response tokens that count: everything up to and including the first EOS.

    Args:
        response_ids: (B, T) generated token ids.
        eos_token_ids: EOS id or ids.
    Returns:
        (B, T) long mask.

    Example: ids ``[5, 7, EOS, EOS, 9]`` -> ``[1, 1, 1, 0, 0]``.
    """
    eos = torch.as_tensor(eos_token_ids if isinstance(eos_token_ids, list) else [eos_token_ids])
    is_eos = torch.isin(response_ids, eos.to(response_ids.device))  # (B, T)
    # number of EOS tokens strictly before position t; a token counts while none came before it
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


def eos_ids(tokenizer, model) -> list[int]:
    ids = model.generation_config.eos_token_id if getattr(model, "generation_config", None) is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return [int(i) for i in ids if i is not None]


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, P) prompt ids and mask (left truncation keeps a prompt's end)."""
    side, tside = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        enc = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_prompt_tokens,
                        return_tensors="pt", add_special_tokens=False)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, tside
    if enc["input_ids"].shape[1] == 0 or bool((enc["attention_mask"].sum(1) == 0).any()):
        from robust_rlhf.errors import UserError

        raise UserError("a prompt is empty after tokenisation; every prompt needs at least one token")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def generate(lm, tokenizer, prompts: list[str], cfg: SamplingConfig, device: torch.device | None = None,
             seeds: list[int] | None = None, min_new_tokens: int = 1,
             return_pooled_hidden: bool = False) -> Rollout:
    """Sample one response per prompt with ``lm.generate`` (KV cache, left padding).

    Samples from `robust_rlhf.models.sampler.sampling_model` (``lm`` itself, or its refreshed bf16
    copy per ``cfg.precision``). Uses the global torch RNG (seed it for reproducibility). With ``seeds`` (one per prompt),
    each prompt is generated alone (no padding) after ``torch.manual_seed(seeds[i])``, inside a
    forked RNG: a response then depends only on its prompt and seed, not on the batch it is in.

    ``min_new_tokens``: EOS is barred before this many tokens (1: no empty response; 0: an empty
    response is possible). ``return_pooled_hidden``: also return `Rollout.pooled_hidden`, the mean
    of the final hidden state over prompt + response tokens; one token more than
    ``cfg.max_new_tokens`` is then sampled and dropped, so that every kept token went through the
    model.
    Returns a `Rollout` on ``device``.
    """
    from transformers import GenerationConfig

    from robust_rlhf.models.sampler import sampling_model

    device = device or next(lm.parameters()).device
    eos = eos_ids(tokenizer, lm)
    lm = sampling_model(lm, cfg.precision, device)
    query_ids, query_mask = encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    gen_cfg = GenerationConfig(
        do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens + int(return_pooled_hidden), min_new_tokens=min_new_tokens,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True,
        output_hidden_states=return_pooled_hidden, return_dict_in_generate=return_pooled_hidden,
    )
    was_training = lm.training
    lm.eval()
    chunks, pooled = [], []

    def run(q: torch.Tensor, m: torch.Tensor) -> None:
        out = lm.generate(input_ids=q, attention_mask=m, generation_config=gen_cfg)
        seqs = out.sequences if return_pooled_hidden else out
        new = seqs[:, q.shape[1] : q.shape[1] + cfg.max_new_tokens]  # (b, T_i), T_i <= max_new_tokens
        chunks.append(new)
        if return_pooled_hidden:
            pooled.append(_pool_final_hidden(out.hidden_states, m, new, eos))

    try:
        if seeds is not None:
            if len(seeds) != len(prompts):
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
            for i, seed in enumerate(seeds):
                q = query_ids[i : i + 1, query_mask[i].bool()].to(device)  # (1, P_i) unpadded
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    run(q, torch.ones_like(q))
        for i in range(0, len(prompts) if seeds is None else 0, cfg.generation_batch_size):
            rows = slice(i, i + cfg.generation_batch_size)
            run(query_ids[rows].to(device), query_mask[rows].to(device))
    finally:
        lm.train(was_training)
    T = max(c.shape[1] for c in chunks)
    pad = tokenizer.pad_token_id
    response_ids = torch.cat([torch.nn.functional.pad(c, (0, T - c.shape[1]), value=pad) for c in chunks])  # (B, T)
    response_mask = response_mask_after_eos(response_ids, eos)  # (B, T)
    responses = decode_responses(tokenizer, response_ids, response_mask)
    return Rollout(list(prompts), query_ids.to(device), query_mask.to(device), response_ids, response_mask, responses,
                   torch.cat(pooled) if return_pooled_hidden else None)


def _pool_final_hidden(hidden_states: tuple, query_mask: torch.Tensor, new: torch.Tensor,
                       eos_token_ids: list[int]) -> torch.Tensor:
    """Mean final hidden state over the prompt tokens and the kept new tokens before the first EOS.

    Args:
        hidden_states: ``generate``'s per-step tuples of layer outputs: step 0 the prefill
            (each (b, P, H)), step s the forward of new token s (each (b, 1, H)); the last layer's
            output is the final (normed) hidden state.
        query_mask: (b, P) 1 for real prompt tokens (left padding).
        new: (b, T) the kept new tokens (a forward of each exists when one more step was taken).
        eos_token_ids: EOS ids; a token at or after the first EOS is not counted.
    Returns:
        (b, H) fp32 pooled states.
    """
    P, T = query_mask.shape[1], new.shape[1]
    states = torch.cat([h[-1] for h in hidden_states[: T + 1]], dim=1)[:, : P + T]  # (b, P + T', H)
    eos = torch.as_tensor(eos_token_ids, device=new.device)
    ended = torch.cumsum(torch.isin(new, eos).long(), dim=1) > 0  # (b, T) at or after the first EOS
    keep = torch.cat([query_mask.bool(), ~ended], dim=1)[:, : states.shape[1]]  # (b, P + T')
    return ((states * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True)).float()


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Decode the masked part of each response, dropping special tokens (EOS)."""
    return [
        tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
        for ids, mask in zip(response_ids, response_mask)
    ]
