"""The rollouts of a policy recipe: which prompts each step draws (`prompt_batch`, a pure function
of the step, so a resume is exact) and the global batch's rollout gathered from every process
(`gather_rollout`). Sampling itself is `robust_rlhf.models.generation.generate`; prompts are
read by `robust_rlhf.data.prompts`.
"""

from __future__ import annotations

from robust_rlhf.models.generation import Rollout, SamplingConfig, decode_responses, encode_prompts, eos_ids, response_mask_after_eos

__all__ = ["gather_rollout", "prompt_batch"]


def gather_rollout(local: Rollout, prompts: list[str], tokenizer, lm, cfg: SamplingConfig, accelerator) -> Rollout:
    """The global batch's rollout from each process's share (processes hold contiguous shares, in order).

    Prompts are re-encoded over the whole batch and responses right-padded to the longest across
    processes, so every process holds exactly the tensors a one-process run builds."""
    device = local.response_ids.device
    query_ids, query_mask = encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    ids = accelerator.pad_across_processes(local.response_ids, dim=1, pad_index=tokenizer.pad_token_id)
    response_ids = accelerator.gather(ids.contiguous())  # (B, T)
    response_mask = response_mask_after_eos(response_ids, eos_ids(tokenizer, lm))
    responses = decode_responses(tokenizer, response_ids, response_mask)
    return Rollout(list(prompts), query_ids.to(device), query_mask.to(device), response_ids, response_mask, responses)


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
