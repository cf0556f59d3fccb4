"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, arXiv:2402.14740).

No value head: k samples per prompt, each sample's baseline is the mean reward of the other
k - 1 samples of its prompt. The KL penalty enters the *sequence* reward,
``R(x, y) = r(x, y) - beta * sum_t KL_t`` (``beta`` per sample when variance-aware, seed 002),
and the advantage ``A_i = R_i - mean_{j != i} R_j`` is shared by all tokens of the response.
The update is the clipped surrogate (`ppo_policy_loss`); with one epoch and one minibatch the
ratio is 1 and it is exactly REINFORCE.

Same config sections, metrics and run folder as `robust_rlhf.policy.ppo`, and the same scaffold
(`robust_rlhf.policy.recipe.PolicySession`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from robust_rlhf.models.generation import generate
from robust_rlhf.policy.kl import kl_estimate, token_level_rewards
from robust_rlhf.policy.losses import ppo_policy_loss, rloo_advantages, whiten
from robust_rlhf.policy.recipe import PolicyRecipeConfig, PolicySession, require_one_process
from robust_rlhf.policy.sampling import prompt_batch
from robust_rlhf.reward.sources import RewardSource


@dataclass
class RLOOHyperparams:
    """The RLOO update."""

    k: int = 2
    """samples per prompt (>= 2; the leave-one-out baseline uses the other k-1)"""
    epochs: int = 1
    """passes over each batch (1 = on-policy REINFORCE)"""
    num_minibatches: int = 1
    """minibatches per pass (batch_size * k must be divisible by it)"""
    clip_range: float = 0.2
    """ratio clip when epochs or minibatches > 1"""
    whiten_advantages: bool = False
    """standardise advantages over the batch"""
    max_grad_norm: float = 1.0
    """gradient-norm clip"""

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"rloo.k must be >= 2, got {self.k}")
        if self.epochs < 1 or self.num_minibatches < 1:
            raise ValueError("rloo.epochs and rloo.num_minibatches must be >= 1")
        if self.clip_range < 0 or self.max_grad_norm <= 0:
            raise ValueError("rloo.clip_range must be >= 0 and rloo.max_grad_norm > 0")


@dataclass
class RLOOConfig(PolicyRecipeConfig):
    """RLOO (method: rloo); batch_size counts prompts, each sampled k times. Shared sections:
    `PolicyRecipeConfig` (the KL penalty enters the sequence reward)."""

    method: Literal["rloo"] = "rloo"
    """the optimiser (this config is RLOO's)"""
    rloo: RLOOHyperparams = field(default_factory=RLOOHyperparams)
    """RLOO update"""

    def __post_init__(self) -> None:
        if (self.train.batch_size * self.rloo.k) % self.rloo.num_minibatches:
            raise ValueError(
                f"train.batch_size * rloo.k = {self.train.batch_size * self.rloo.k} is not divisible by "
                f"rloo.num_minibatches={self.rloo.num_minibatches}"
            )


def train_rloo(
    cfg: RLOOConfig,
    output_dir: str | Path,
    reward_source: RewardSource | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> Path:
    """Run RLOO; returns the output folder. Arguments as `robust_rlhf.policy.ppo.train_ppo`.

    One process only (multi-process training is PPO's, docs/scaling.md)."""
    require_one_process("rloo")
    s = PolicySession.start(cfg, output_dir, reward_source, with_value_head=False)
    policy, optimizer, device = s.policy, s.optimizer, s.device
    k = cfg.rloo.k
    N = cfg.train.batch_size * k  # samples per step
    mb_size = N // cfg.rloo.num_minibatches

    for step in range(s.start_step, cfg.train.steps):
        gen = s.begin_step(step)

        # --- 1. rollout: k samples per prompt, in contiguous blocks -----------------------------
        prompts = [p for p in prompt_batch(s.train_prompts, step, cfg.train.batch_size, cfg.seed) for _ in range(k)]
        ro = generate(policy.lm, policy.tokenizer, prompts, cfg.sampling, device)
        mask = ro.response_mask  # (N, T)

        # --- 2. rewards and KL-penalised sequence reward ---------------------------------------
        rb = s.reward(ro.prompts, ro.responses, generator=gen)
        kl_coef = s.reward.kl_coef(rb, s.kl_ctl.value)
        # One epoch of one minibatch: the rollout forward *is* the update forward (one pass saved;
        # the parameters have not changed in between, so the log-probs are identical).
        single_pass = cfg.rloo.epochs == 1 and cfg.rloo.num_minibatches == 1
        policy.train(single_pass)
        with torch.set_grad_enabled(single_pass):
            out = policy.forward_response(ro.query_ids, ro.query_mask, ro.response_ids, mask,
                                          cfg.sampling.temperature, with_entropy=True)
        with torch.no_grad():
            ref = policy.forward_response(ro.query_ids, ro.query_mask, ro.response_ids, mask,
                                          cfg.sampling.temperature, reference=True)
            old_logprobs = out.logprobs.detach()  # (N, T)
            kl = kl_estimate(old_logprobs, ref.logprobs, cfg.kl.estimator)  # (N, T)
            scores = rb.training.to(device)
            coef = kl_coef.to(device) if isinstance(kl_coef, torch.Tensor) else kl_coef
            seq_rewards = token_level_rewards(scores, kl, coef, mask).sum(1)  # (N,) r - beta * sum_t KL_t

            # --- 3. leave-one-out advantages, shared by every token of a response ------------------
            advantages = rloo_advantages(seq_rewards, k)  # (N,)
            if cfg.rloo.whiten_advantages:
                advantages = whiten(advantages)
            b_advantages = advantages.unsqueeze(1).expand_as(old_logprobs)  # (N, T)

        # --- 4. policy update ------------------------------------------------------------------
        policy.train()
        stats: dict[str, list[float]] = {}
        for _epoch in range(cfg.rloo.epochs):
            b_perm = torch.randperm(N)
            for i in range(0, N, mb_size):
                mb = b_perm[i : i + mb_size].to(device)
                if single_pass:
                    new, mb = out, torch.arange(N, device=device)
                else:
                    new = policy.forward_response(ro.query_ids[mb], ro.query_mask[mb], ro.response_ids[mb], mask[mb],
                                                  cfg.sampling.temperature)
                loss, pg_stats = ppo_policy_loss(new.logprobs, old_logprobs[mb], b_advantages[mb], mask[mb],
                                                 cfg.rloo.clip_range)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                           cfg.rloo.max_grad_norm)
                optimizer.step()
                for key, v in {"losses/policy": loss, "losses/grad_norm": grad_norm,
                               **{f"policy/{n}": v for n, v in pg_stats.items()}}.items():
                    stats.setdefault(key, []).append(float(v.detach()))

        # --- 5. KL controller, metrics, evaluation, checkpoint -------------------------------------
        seq_kl = (kl * mask).sum(1)  # (N,)
        s.update_kl_controller(seq_kl)
        row = {**s.step_metrics(step, seq_kl, rb, kl_coef, out.entropy, mask),
               "reward/kl_penalised": seq_rewards.mean().item(),
               "policy/kl_penalty": (scores - seq_rewards).mean().item(),
               "policy/advantage_std": advantages.std().item(),
               **{key: sum(v) / len(v) for key, v in stats.items()}}
        s.end_step(step, row, callback)

    return s.finish()
