"""Sampling responses from a policy: left-padded prompts, KV-cached ``generate``, EOS masking.

A rollout is ``[query (B, P) left-padded | response (B, T)]``. The response mask keeps every
token up to and including the first EOS and zeroes everything after it (``generate`` pads
finished rows with the pad token, which for many LMs *is* EOS -- so we never search for the
pad id, USER_NEEDS #6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    always come from the policy itself (robust_rlhf.policy.sampler)"""
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
    """

    prompts: list[str]
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    responses: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def index(self, idx: torch.Tensor | list[int]) -> "Rollout":
        idx_list = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        t = torch.as_tensor(idx_list, dtype=torch.long)
        return Rollout(
            [self.prompts[i] for i in idx_list], self.query_ids[t], self.query_mask[t],
            self.response_ids[t], self.response_mask[t], [self.responses[i] for i in idx_list],
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


def _eos_ids(tokenizer, model) -> list[int]:
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
             seeds: list[int] | None = None) -> Rollout:
    """Sample one response per prompt with ``lm.generate`` (KV cache, left padding).

    Samples from `robust_rlhf.policy.sampler.sampling_model` (``lm`` itself, or its refreshed bf16
    copy per ``cfg.precision``). Uses the global torch RNG (seed it for reproducibility). With ``seeds`` (one per prompt),
    each prompt is generated alone (no padding) after ``torch.manual_seed(seeds[i])``, inside a
    forked RNG: a response then depends only on its prompt and seed, not on the batch it is in.
    Returns a `Rollout` on ``device``.
    """
    from transformers import GenerationConfig

    from robust_rlhf.policy.sampler import sampling_model

    device = device or next(lm.parameters()).device
    eos_ids = _eos_ids(tokenizer, lm)
    lm = sampling_model(lm, cfg.precision, device)
    query_ids, query_mask = encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    gen_cfg = GenerationConfig(
        do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, min_new_tokens=1,
        eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, use_cache=True,
    )
    was_training = lm.training
    lm.eval()
    chunks = []
    try:
        if seeds is not None:
            if len(seeds) != len(prompts):
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
            for i, seed in enumerate(seeds):
                q = query_ids[i : i + 1, query_mask[i].bool()].to(device)  # (1, P_i) unpadded
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    out = lm.generate(input_ids=q, attention_mask=torch.ones_like(q), generation_config=gen_cfg)
                chunks.append(out[:, q.shape[1] :])
        for i in range(0, len(prompts) if seeds is None else 0, cfg.generation_batch_size):
            q, m = query_ids[i : i + cfg.generation_batch_size].to(device), query_mask[i : i + cfg.generation_batch_size].to(device)
            out = lm.generate(input_ids=q, attention_mask=m, generation_config=gen_cfg)
            chunks.append(out[:, q.shape[1] :])  # (b, T_i)
    finally:
        lm.train(was_training)
    T = max(c.shape[1] for c in chunks)
    pad = tokenizer.pad_token_id
    response_ids = torch.cat([torch.nn.functional.pad(c, (0, T - c.shape[1]), value=pad) for c in chunks])  # (B, T)
    response_mask = response_mask_after_eos(response_ids, eos_ids)  # (B, T)
    responses = decode_responses(tokenizer, response_ids, response_mask)
    return Rollout(list(prompts), query_ids.to(device), query_mask.to(device), response_ids, response_mask, responses)


def gather_rollout(local: Rollout, prompts: list[str], tokenizer, lm, cfg: SamplingConfig, accelerator) -> Rollout:
    """The global batch's rollout from each process's share (processes hold contiguous shares, in order).

    Prompts are re-encoded over the whole batch and responses right-padded to the longest across
    processes, so every process holds exactly the tensors a one-process run builds."""
    device = local.response_ids.device
    query_ids, query_mask = encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    ids = accelerator.pad_across_processes(local.response_ids, dim=1, pad_index=tokenizer.pad_token_id)
    response_ids = accelerator.gather(ids.contiguous())  # (B, T)
    response_mask = response_mask_after_eos(response_ids, _eos_ids(tokenizer, lm))
    responses = decode_responses(tokenizer, response_ids, response_mask)
    return Rollout(list(prompts), query_ids.to(device), query_mask.to(device), response_ids, response_mask, responses)


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Decode the masked part of each response, dropping special tokens (EOS)."""
    return [
        tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
        for ids, mask in zip(response_ids, response_mask)
    ]


# ----------------------------------------------------------------------------- prompts


@dataclass
class DataConfig:
    """Where prompts come from and how they are split."""

    prompts: str | None = None
    """prompt file (JSONL with a `prompt` field, or plain text one per line); null = the 162 built-in review openings"""
    eval_fraction: float = 0.2
    """share of prompts held out for the gold evaluation (never trained on)"""
    split_seed: int = 0
    """seed of the train / held-out split"""

    def __post_init__(self) -> None:
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")


def load_prompts_file(path: str) -> list[str]:
    """Prompts from rows with a ``prompt`` text field (JSONL, JSON, CSV, Parquet, a datasets folder or
    ``hf:org/name[:split]``) or from plain text, one prompt per line (blank lines skipped).

    The reading rules are those of the preference data (`robust_rlhf.data.preferences`): a byte-order
    mark is dropped, JSON Lines are split on "\\n" only (U+2028 inside a string is an ordinary
    character), and every error names the file and the line. An empty prompt is refused."""
    from pathlib import Path

    from robust_rlhf.data.preferences import _json_loads, _read_text, _text_field, iter_source
    from robust_rlhf.errors import UserError

    p = Path(path)
    if str(path).startswith("hf:") or p.is_dir() or p.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        if not str(path).startswith("hf:") and not p.exists():
            raise UserError(f"prompts file {str(path)!r} does not exist")
        name, rows = iter_source(path)
    else:
        if not p.is_file():
            raise UserError(f"prompts file {str(path)!r} does not exist")
        name, lines = str(p), _read_text(p).split("\n")
        numbered = [(i, line.removesuffix("\r")) for i, line in enumerate(lines, 1) if line.strip()]
        if numbered and numbered[0][1].lstrip().startswith("{"):  # JSON Lines under another suffix
            rows = ((f"line {i}", _json_loads(line, p, f"line {i}")) for i, line in numbered)
        else:  # plain text: the line is the prompt
            rows = ((f"line {i}", {"prompt": line}) for i, line in numbered)
    prompts: list[str] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{name}: {where}: expected an object with a text field 'prompt'")
        if "prompt" not in row:
            raise UserError(f"{name}: {where}: missing field 'prompt' (fields: {', '.join(map(str, row)) or 'none'})")
        if isinstance(row["prompt"], list):
            raise UserError(f"{name}: {where}: field 'prompt': expected text, got a list of messages "
                            "(the policy recipes sample from plain-text prompts)")
        prompts.append(_text_field(row["prompt"], f"{name}: {where}", "prompt"))
    if not prompts:
        raise UserError(f"prompts file {str(path)!r} holds no prompts")
    return prompts


def train_eval_prompts(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(training prompts, held-out evaluation prompts)."""
    from robust_rlhf.data.prompts import builtin_prompts, split_prompts
    from robust_rlhf.errors import UserError

    prompts = load_prompts_file(cfg.prompts) if cfg.prompts else builtin_prompts()
    if len(prompts) < 2:
        raise UserError("need at least 2 prompts (one to train on, one held out)")
    train, held_out = split_prompts(prompts, (1 - cfg.eval_fraction, cfg.eval_fraction), cfg.split_seed)
    if not train or not held_out:
        raise UserError(f"data.eval_fraction={cfg.eval_fraction} leaves an empty split of {len(prompts)} prompts")
    return train, held_out


def prompt_batch(prompts: list[str], step: int, batch_size: int, seed: int) -> list[str]:
    """The prompts of step ``step`` (0-based): consecutive slices of a stream of reshuffled passes.

    A pure function of (step, seed), so a resumed run draws the same prompts."""
    import random

    n = len(prompts)
    out = []
    for j in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(j, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(prompts[order[pos]])
    return out
