"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, arXiv:2402.14740).

No value head: k samples per prompt, each sample's baseline is the mean reward of the other
k - 1 samples of its prompt. The KL penalty enters the *sequence* reward,
``R(x, y) = r(x, y) - beta * sum_t KL_t`` (``beta`` per sample when variance-aware, seed 002),
and the advantage ``A_i = R_i - mean_{j != i} R_j`` is shared by all tokens of the response.
The update is the clipped surrogate (`ppo_policy_loss`); with one epoch and one minibatch the
ratio is 1 and it is exactly REINFORCE.

Same config sections, metrics and run folder as `robust_rlhf.policy.ppo`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from robust_rlhf.errors import UserError
from robust_rlhf.gold import load_gold
from robust_rlhf.policy.logging import LogConfig, Run
from robust_rlhf.policy.losses import (
    kl_estimate,
    masked_mean,
    ppo_policy_loss,
    rloo_advantages,
    token_level_rewards,
)
from robust_rlhf.policy.model import ModelConfig, load_policy
from robust_rlhf.policy.ppo import TrainConfig, make_optimizer, resolve_device, step_seed
from robust_rlhf.policy.rewards import (
    KLConfig,
    RewardConfig,
    RewardSource,
    TrainingReward,
    build_reward_source,
    evaluate_policy,
    reward_metrics,
)
from robust_rlhf.policy.sampling import DataConfig, SamplingConfig, generate, prompt_batch, train_eval_prompts
from robust_rlhf.utils import atomic_save_dir, set_seed

log = logging.getLogger(__name__)


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
class RLOOConfig:
    """RLOO (method: rloo); batch_size counts prompts, each sampled k times."""

    method: Literal["rloo"] = "rloo"
    """the optimiser (this config is RLOO's)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the policy LM and LoRA / full fine-tuning"""
    data: DataConfig = field(default_factory=DataConfig)
    """prompts and the held-out split"""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """response sampling"""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """reward source, aggregator, perturbation"""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty to the reference (in the sequence reward)"""
    rloo: RLOOHyperparams = field(default_factory=RLOOHyperparams)
    """RLOO update"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """steps, batch (prompts), optimiser, seed"""
    log: LogConfig = field(default_factory=LogConfig)
    """evaluation, metrics, checkpoints"""
    gold: str = "vader"
    """gold reward for held-out evaluation only"""
    resume: bool = False
    """continue from the latest checkpoint in the output folder"""

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
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        raise UserError("method=rloo runs in one process only; launch it without torchrun / accelerate launch "
                        "(multi-process policy training is supported for method=ppo)")
    output_dir = Path(output_dir)
    device = resolve_device(cfg.train.device)
    set_seed(cfg.train.seed)
    run = Run(output_dir, cfg, cfg.resume, cfg.log, cfg.train.steps)

    policy = load_policy(cfg.model, with_value_head=False).to(device)
    optimizer = make_optimizer(policy, cfg.train)
    reward = TrainingReward(reward_source or build_reward_source(cfg.reward, output_dir, device), cfg.reward, cfg.kl)
    gold = load_gold(cfg.gold)
    kl_ctl = cfg.kl.controller()
    train_prompts, eval_prompts = train_eval_prompts(cfg.data)
    eval_prompts = eval_prompts[: cfg.log.eval_prompts]
    start, extra = run.restore(policy, optimizer)
    if "kl_ctl" in extra:
        kl_ctl.load_state_dict(extra["kl_ctl"])
    k = cfg.rloo.k
    N = cfg.train.batch_size * k  # samples per step
    mb_size = N // cfg.rloo.num_minibatches
    run.progress(start)

    for step in range(start, cfg.train.steps):
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(cfg.train.seed, step))
        gen = torch.Generator().manual_seed(step_seed(cfg.train.seed, step))

        # --- 1. rollout: k samples per prompt, in contiguous blocks -----------------------------
        prompts = [p for p in prompt_batch(train_prompts, step, cfg.train.batch_size, cfg.train.seed) for _ in range(k)]
        ro = generate(policy.lm, policy.tokenizer, prompts, cfg.sampling, device)
        mask = ro.response_mask  # (N, T)

        # --- 2. rewards and KL-penalised sequence reward ---------------------------------------
        rb = reward(ro.prompts, ro.responses, generator=gen)
        kl_coef = reward.kl_coef(rb, kl_ctl.value)
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
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            b_advantages = advantages.unsqueeze(1).expand_as(old_logprobs)  # (N, T)

        # --- 4. policy update ------------------------------------------------------------------
        policy.train()
        stats: dict[str, list[float]] = {}
        for _epoch in range(cfg.rloo.epochs):
            b_perm = torch.randperm(N)
            for s in range(0, N, mb_size):
                mb = b_perm[s : s + mb_size].to(device)
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

        # --- 5. KL controller, metrics -----------------------------------------------------------
        seq_kl = (kl * mask).sum(1)  # (N,)
        kl_ctl.update(seq_kl.mean().item(), N)
        row = {
            "step": step + 1,
            "kl": seq_kl.mean().item(),
            "proxy_reward": rb.proxy.mean().item(),
            **reward_metrics(rb),
            "reward/kl_penalised": seq_rewards.mean().item(),
            "policy/kl": seq_kl.mean().item(),
            "policy/kl_penalty": (scores - seq_rewards).mean().item(),
            "policy/kl_coef": float(kl_coef.mean()) if isinstance(kl_coef, torch.Tensor) else float(kl_coef),
            "policy/entropy": masked_mean(out.entropy, mask).item(),
            "policy/response_length": mask.sum(1).float().mean().item(),
            "policy/advantage_std": advantages.std().item(),
            **{key: sum(v) / len(v) for key, v in stats.items()},
        }
        if cfg.log.eval_every and ((step + 1) % cfg.log.eval_every == 0 or step + 1 == cfg.train.steps):
            policy.eval()
            row.update(evaluate_policy(policy, eval_prompts, cfg.sampling, reward, gold,
                                       seed=step_seed(cfg.train.seed + 1, step), kl_estimator=cfg.kl.estimator))
        row["time/step_s"] = time.perf_counter() - t0
        run.log(row)
        if cfg.log.checkpoint_every and (step + 1) % cfg.log.checkpoint_every == 0:
            run.save_checkpoint(step + 1, policy, optimizer, {"kl_ctl": kl_ctl.state_dict()})
        if callback is not None:
            callback(step + 1, row)

    atomic_save_dir(output_dir / "policy", policy.save_pretrained)  # never a half-written policy
    run.close()
    return output_dir
