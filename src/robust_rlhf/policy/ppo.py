"""PPO for language models against a (robust) reward ensemble -- one readable recipe.

Reads top to bottom: config -> policy + value head -> for each step: rollout -> rewards ->
log-probs / values / reference log-probs -> token rewards -> GAE -> PPO epochs -> log.
Every equation is one library call (`robust_rlhf.policy.losses`).

Variants, all by config:
* vanilla PPO (Ziegler et al. 2019, arXiv:1909.08593): token reward
  ``-beta * KL_t`` + the sequence reward at the last token; fixed or adaptive beta.
* variance-aware PPO (seed 002): ``kl.variance_aware=true`` -- each sample's coefficient is
  ``beta * sigma^2(x, y)`` (raw as in the paper; ``kl.variance_form``/``kl.variance_scale`` in `KLConfig`).
* BRME robust PPO (seed 000): ``reward.aggregator.name=brme_tradeoff reward.aggregator.lam=0.5``
  -- reward ``lam * r_nominal + (1 - lam) * min_k mu_k``; any aggregator by name.
* seed 000's perturbation experiment: ``reward.perturb=over|under|noise reward.perturb_size=...``.

Metrics (one row per step in metrics.jsonl): ``step``, ``kl``, ``proxy_reward``,
``gold_reward`` (evaluation steps), ``losses/*``, ``reward/*``, ``policy/*``, ``gold/*``.
Setup, evaluation, logging, checkpoints and resume are the shared scaffold
(`robust_rlhf.policy.recipe.PolicySession`); this file is the PPO algorithm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from robust_rlhf.errors import UserError
from robust_rlhf.models.generation import generate
from robust_rlhf.policy.kl import kl_estimate, token_level_rewards
from robust_rlhf.policy.losses import compute_gae, masked_whiten, ppo_policy_loss, ppo_value_loss
from robust_rlhf.policy.model import TrainForward
from robust_rlhf.policy.recipe import PolicyRecipeConfig, PolicySession, sample_seed
from robust_rlhf.policy.sampling import gather_rollout, prompt_batch
from robust_rlhf.reward.sources import RewardSource

log = logging.getLogger(__name__)


@dataclass
class PPOHyperparams:
    """The PPO update (Schulman et al. 2017)."""

    epochs: int = 2
    """passes over each rollout batch"""
    num_minibatches: int = 2
    """minibatches per pass (batch_size must be divisible by it)"""
    clip_range: float = 0.2
    """policy ratio clip c in clip(ratio, 1-c, 1+c)"""
    clip_range_value: float | None = 0.2
    """value clip around the rollout values (null = unclipped value loss)"""
    vf_coef: float = 0.1
    """weight of the value loss"""
    gamma: float = 1.0
    """discount"""
    lam: float = 0.95
    """GAE lambda"""
    whiten_advantages: bool = True
    """standardise advantages over each batch's response tokens"""
    max_grad_norm: float = 1.0
    """gradient-norm clip"""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.num_minibatches < 1:
            raise ValueError("ppo.epochs and ppo.num_minibatches must be >= 1")
        if self.clip_range < 0 or (self.clip_range_value is not None and self.clip_range_value < 0):
            raise ValueError("ppo.clip_range and ppo.clip_range_value must be >= 0")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("ppo.gamma and ppo.lam must be in [0, 1]")
        if self.vf_coef < 0 or self.max_grad_norm <= 0:
            raise ValueError("ppo.vf_coef must be >= 0 and ppo.max_grad_norm > 0")


@dataclass
class PPOConfig(PolicyRecipeConfig):
    """PPO / variance-aware PPO / BRME robust PPO (method: ppo). Shared sections: `PolicyRecipeConfig`."""

    method: Literal["ppo"] = "ppo"
    """the optimiser (this config is PPO's)"""
    ppo: PPOHyperparams = field(default_factory=PPOHyperparams)
    """PPO update"""

    def __post_init__(self) -> None:
        if self.train.batch_size % self.ppo.num_minibatches:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} is not divisible by ppo.num_minibatches={self.ppo.num_minibatches}"
            )


def train_ppo(
    cfg: PPOConfig,
    output_dir: str | Path,
    reward_source: RewardSource | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> Path:
    """Run PPO; returns the output folder (policy/, metrics.jsonl, metrics.csv, config.yaml, checkpoints/).

    Args:
        cfg: the resolved config.
        output_dir: run folder.
        reward_source: overrides ``cfg.reward.model`` (any ``(prompts, responses) -> RewardOutput``).
        callback: called as ``callback(step, metrics_row)`` after each logged step.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # One process: a no-op. Under torchrun / accelerate launch: DDP over W processes (see docs/scaling.md).
    accelerator = Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    W = accelerator.num_processes
    B, mb_size = cfg.train.batch_size, cfg.train.batch_size // cfg.ppo.num_minibatches
    if W > 1 and (B % W or mb_size % W):
        raise UserError(f"train.batch_size={B} and its minibatches of {mb_size} must divide by the {W} processes")
    s = PolicySession.start(cfg, output_dir, reward_source, with_value_head=True,
                            device=None if W == 1 else accelerator.device, is_main=accelerator.is_main_process)
    d = _Distributed(accelerator, s.policy, B, mb_size, s.device)
    log.info("PPO: %d steps x %d samples, policy %s (%s), device %s, fp32, %d process(es), %d torch threads",
             cfg.train.steps, B, cfg.model.name, "LoRA" if cfg.model.use_lora else "full", s.device, W,
             torch.get_num_threads())

    for step in range(s.start_step, cfg.train.steps):
        gen = s.begin_step(step)
        # 1. rollout: each process samples its share; all processes then hold the global batch
        ro = _rollout(s, d, prompt_batch(s.train_prompts, step, B, cfg.seed), step)
        # 2. rewards (proxy ensemble -> aggregate -> perturb) and per-sample KL coefficient, scored over
        #    the global batch on every process (batch statistics: whitening, variance normalisation)
        rb = s.reward(ro.prompts, ro.responses, generator=gen)
        kl_coef = s.reward.kl_coef(rb, s.kl_ctl.value)  # float or (B,)
        # 3-4. log-probs, values, reference, token rewards, GAE
        b = _score(s, d, ro, rb.training.to(s.device), kl_coef)
        # 5. PPO epochs over minibatches
        stats = _ppo_epochs(s, d, ro, b)
        # 6. KL controller, metrics, evaluation, checkpoint
        mask = ro.response_mask
        seq_penalty = (-(b.rewards - _last_token(b.scores, mask)) * mask).sum(1)  # (B,) the applied KL penalty
        seq_kl = (b.kl * mask).sum(1)  # (B,)
        s.update_kl_controller(seq_kl)
        row = {**s.step_metrics(step, seq_kl, rb, kl_coef, b.entropy, mask),
               "policy/kl_k1": ((b.old_logprobs - b.ref_logprobs) * mask).sum(1).mean().item(),
               "policy/kl_penalty": seq_penalty.mean().item(),
               **{k: sum(v) / len(v) for k, v in stats.items()}}
        s.end_step(step, row, callback)

    out = s.finish()
    accelerator.wait_for_everyone()
    return out


class _Distributed:
    """This process's place in a (possibly one-process) DDP run: rank, shares and the DDP forward.

    Each process owns a contiguous 1/W share of every global batch (all of it in a one-process run)."""

    def __init__(self, accelerator, policy, B: int, mb_size: int, device: torch.device) -> None:
        self.accelerator, self.W, self.rank = accelerator, accelerator.num_processes, accelerator.process_index
        self.B, self.mb_size = B, mb_size
        self.share, self.mb_share = B // self.W, mb_size // self.W
        self.own = torch.arange(self.rank * self.share, (self.rank + 1) * self.share, device=device)
        # The forward that trains: DDP-wrapped under several processes (gradients averaged by DDP).
        self.train_forward = TrainForward(policy)
        if self.W > 1:
            self.train_forward = accelerator.prepare(self.train_forward)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(t) if self.W > 1 else t


def _rollout(s: PolicySession, d: _Distributed, prompts: list[str], step: int):
    cfg, policy = s.cfg, s.policy
    my_prompts = prompts[d.rank * d.share : (d.rank + 1) * d.share]
    if cfg.sampling.seed_per_sample:  # independent of batching / process count
        seeds = [sample_seed(cfg.seed, step, j) for j in d.own.tolist()]
        ro = generate(policy.lm, policy.tokenizer, my_prompts, cfg.sampling, s.device, seeds=seeds)
    elif d.W == 1:
        ro = generate(policy.lm, policy.tokenizer, prompts, cfg.sampling, s.device)
    else:  # own stream per process; the shared RNG (minibatch order) stays in step across processes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(cfg.seed, step, d.B + d.rank))
            ro = generate(policy.lm, policy.tokenizer, my_prompts, cfg.sampling, s.device)
    if d.W > 1:
        ro = gather_rollout(ro, prompts, policy.tokenizer, policy.lm, cfg.sampling, d.accelerator)
    return ro


@dataclass
class _ScoredBatch:
    """The rollout's global (B, T) tensors for the update (identical on every process)."""

    out: object  # this process's rollout forward (with grad when it is reused as the update forward)
    single_pass: bool
    scores: torch.Tensor  # (B,) training reward
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    ref_logprobs: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def _score(s: PolicySession, d: _Distributed, ro, scores: torch.Tensor, kl_coef) -> _ScoredBatch:
    """Rollout log-probs, values and reference log-probs (each process its share, gathered), then
    token rewards and GAE. With one epoch of one minibatch the rollout forward is reused as the
    update forward (the parameters have not changed in between)."""
    cfg, policy, mask, own = s.cfg, s.policy, ro.response_mask, d.own
    single_pass = cfg.ppo.epochs == 1 and cfg.ppo.num_minibatches == 1
    q_ids, q_mask, r_ids, r_mask = ro.query_ids[own], ro.query_mask[own], ro.response_ids[own], mask[own]
    policy.train(single_pass)
    with torch.set_grad_enabled(single_pass):
        out = (d.train_forward if single_pass else TrainForward(policy))(
            q_ids, q_mask, r_ids, r_mask, cfg.sampling.temperature, with_entropy=True)
    with torch.no_grad():
        ref = policy.forward_response(q_ids, q_mask, r_ids, r_mask, cfg.sampling.temperature, reference=True)
        old_logprobs, old_values = d.gather(out.logprobs.detach()), d.gather(out.values.detach())  # (B, T)
        ref_logprobs, entropy = d.gather(ref.logprobs), d.gather(out.entropy)
        kl = kl_estimate(old_logprobs, ref_logprobs, cfg.kl.estimator)  # (B, T)
        coef = kl_coef.to(s.device) if isinstance(kl_coef, torch.Tensor) else kl_coef
        rewards = token_level_rewards(scores, kl, coef, mask)  # (B, T)
        advantages, returns = compute_gae(rewards, old_values, mask, cfg.ppo.gamma, cfg.ppo.lam)
        if cfg.ppo.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
    return _ScoredBatch(out, single_pass, scores, old_logprobs, old_values, ref_logprobs, entropy, kl, rewards,
                        advantages, returns)


def _ppo_epochs(s: PolicySession, d: _Distributed, ro, b: _ScoredBatch) -> dict[str, list[float]]:
    """PPO epochs over minibatches. A global minibatch ``mb`` (same permutation on every process);
    this process trains on its contiguous share ``local`` of it. Returns each statistic's values."""
    cfg, policy, optimizer, mask = s.cfg, s.policy, s.optimizer, ro.response_mask
    hp, B, W = cfg.ppo, d.B, d.W
    policy.train()
    stats: dict[str, list[float]] = {}
    for _epoch in range(hp.epochs):
        b_perm = torch.randperm(B)
        for start_i in range(0, B, d.mb_size):
            mb = b_perm[start_i : start_i + d.mb_size].to(s.device)
            local = mb[d.rank * d.mb_share : (d.rank + 1) * d.mb_share]
            if b.single_pass:
                new, mb, local = b.out, torch.arange(B, device=s.device), d.own
            else:
                new = d.train_forward(ro.query_ids[local], ro.query_mask[local], ro.response_ids[local],
                                      mask[local], cfg.sampling.temperature)
            pg_loss, pg_stats = ppo_policy_loss(new.logprobs, b.old_logprobs[local], b.advantages[local], mask[local],
                                                hp.clip_range)
            vf_loss, vf_stats = ppo_value_loss(new.values, b.old_values[local], b.returns[local], mask[local],
                                               hp.clip_range_value)
            loss = pg_loss + hp.vf_coef * vf_loss
            if W > 1:
                # The losses are token means over the local share; DDP averages gradients over the W
                # processes. Rescaling by W * n_local / n_global turns that average into the gradient of
                # the token mean over the global minibatch, i.e. the one-process gradient.
                n_local, n_global = mask[local].sum(), mask[mb].sum().clamp_min(1)
                loss = loss * (W * n_local / n_global)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP (W > 1) this also all-reduces (averages) the gradients
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                       hp.max_grad_norm)
            optimizer.step()
            if W > 1:  # log the global minibatch's statistics: the same functions on the gathered tensors
                with torch.no_grad():
                    lp, v = d.gather(new.logprobs.detach()), d.gather(new.values.detach())
                    pg_loss, pg_stats = ppo_policy_loss(lp, b.old_logprobs[mb], b.advantages[mb], mask[mb],
                                                        hp.clip_range)
                    vf_loss, vf_stats = ppo_value_loss(v, b.old_values[mb], b.returns[mb], mask[mb],
                                                       hp.clip_range_value)
                    loss = pg_loss + hp.vf_coef * vf_loss
            for k, v in {"losses/policy": pg_loss, "losses/value": vf_loss, "losses/total": loss,
                         "losses/grad_norm": grad_norm, **{f"policy/{k}": v for k, v in pg_stats.items()},
                         "losses/value_clipfrac": vf_stats["vf_clipfrac"],
                         "losses/explained_variance": vf_stats["explained_variance"]}.items():
                stats.setdefault(k, []).append(float(v.detach()) if isinstance(v, torch.Tensor) else float(v))
    return stats


def _last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) tensor holding ``scores`` at each row's last response token, 0 elsewhere."""
    return token_level_rewards(scores, torch.zeros(mask.shape, device=scores.device), 0.0, mask)
