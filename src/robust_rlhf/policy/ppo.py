"""PPO for language models against a (robust) reward ensemble -- one readable recipe.

Reads top to bottom: config -> policy + value head -> for each step: rollout -> rewards ->
log-probs / values / reference log-probs -> token rewards -> GAE -> PPO epochs -> log.
Every equation is one library call (`robust_rlhf.policy.losses`).

Variants, all by config:
* vanilla PPO (Ziegler et al. 2019, arXiv:1909.08593): token reward
  ``-beta * KL_t`` + the sequence reward at the last token; fixed or adaptive beta.
* variance-aware PPO (seed 002): ``kl.variance_aware=true`` -- each sample's coefficient is
  ``beta * sigma^2(x, y)`` (optionally normalised by the batch mean of sigma^2).
* BRME robust PPO (seed 000): ``reward.aggregator.name=brme_tradeoff reward.aggregator.lam=0.5``
  -- reward ``lam * r_nominal + (1 - lam) * min_k mu_k``; any aggregator by name.
* seed 000's perturbation experiment: ``reward.perturb=over|under|noise reward.perturb_size=...``.

Metrics (one row per step in metrics.jsonl): ``step``, ``kl``, ``proxy_reward``,
``gold_reward`` (evaluation steps), ``losses/*``, ``reward/*``, ``policy/*``, ``gold/*``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from robust_rlhf.gold import load_gold
from robust_rlhf.policy.logging import LogConfig, Run
from robust_rlhf.policy.losses import (
    compute_gae,
    kl_estimate,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    token_level_rewards,
)
from robust_rlhf.errors import UserError
from robust_rlhf.policy.model import ModelConfig, TrainForward, load_policy
from robust_rlhf.policy.rewards import (
    KLConfig,
    RewardConfig,
    RewardSource,
    TrainingReward,
    build_reward_source,
    evaluate_policy,
    reward_metrics,
)
from robust_rlhf.policy.sampling import (
    DataConfig,
    SamplingConfig,
    gather_rollout,
    generate,
    prompt_batch,
    train_eval_prompts,
)
from robust_rlhf.utils import atomic_save_dir, default_device, set_seed

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
class TrainConfig:
    """Optimisation length, batch and optimiser."""

    steps: int = 20
    """iterations (one rollout batch + its update each)"""
    batch_size: int = 16
    """prompts (= samples for PPO) per iteration"""
    lr: float = 1e-4
    """Adam learning rate (LoRA default; use ~1e-5 for full fine-tuning)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    adam_eps: float = 1e-5
    """Adam epsilon"""
    seed: int = 0
    """seed of sampling, minibatch order, perturbation and init"""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda if available)"""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("train.steps and train.batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")


@dataclass
class PPOConfig:
    """PPO / variance-aware PPO / BRME robust PPO (method: ppo)."""

    method: Literal["ppo"] = "ppo"
    """the optimiser (this config is PPO's)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the policy LM and LoRA / full fine-tuning"""
    data: DataConfig = field(default_factory=DataConfig)
    """prompts and the held-out split"""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """response sampling"""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """reward source, aggregator, perturbation"""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty to the reference"""
    ppo: PPOHyperparams = field(default_factory=PPOHyperparams)
    """PPO update"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """steps, batch, optimiser, seed"""
    log: LogConfig = field(default_factory=LogConfig)
    """evaluation, metrics, checkpoints"""
    gold: str = "vader"
    """gold reward for held-out evaluation only (vader, hf:<model>, module:function)"""
    resume: bool = False
    """continue from the latest checkpoint in the output folder"""

    def __post_init__(self) -> None:
        if self.train.batch_size % self.ppo.num_minibatches:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} is not divisible by ppo.num_minibatches={self.ppo.num_minibatches}"
            )


def resolve_device(name: str) -> torch.device:
    return default_device() if name == "auto" else torch.device(name)


def make_optimizer(policy, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in policy.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)


def step_seed(seed: int, step: int) -> int:
    """Each step reseeds from (seed, step): a resumed run draws exactly the same randomness."""
    return seed * 1_000_003 + step


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

    output_dir = Path(output_dir)
    # One process: a no-op. Under torchrun / accelerate launch: DDP over W processes (see docs/scaling.md).
    accelerator = Accelerator(cpu=cfg.train.device == "cpu" or not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    W, rank = accelerator.num_processes, accelerator.process_index
    B = cfg.train.batch_size
    mb_size = B // cfg.ppo.num_minibatches
    if W > 1 and (B % W or mb_size % W):
        raise UserError(f"train.batch_size={B} and its minibatches of {mb_size} must divide by the {W} processes")
    device = resolve_device(cfg.train.device) if W == 1 else accelerator.device
    set_seed(cfg.train.seed)
    run = Run(output_dir, cfg, cfg.resume, cfg.log, cfg.train.steps, is_main=accelerator.is_main_process)

    # --- models, reward, data -------------------------------------------------------------
    policy = load_policy(cfg.model, with_value_head=True).to(device)
    tokenizer = policy.tokenizer
    optimizer = make_optimizer(policy, cfg.train)
    reward = TrainingReward(reward_source or build_reward_source(cfg.reward, output_dir, device), cfg.reward, cfg.kl)
    gold = load_gold(cfg.gold)
    kl_ctl = cfg.kl.controller()
    train_prompts, eval_prompts = train_eval_prompts(cfg.data)
    eval_prompts = eval_prompts[: cfg.log.eval_prompts]
    start, extra = run.restore(policy, optimizer)
    if "kl_ctl" in extra:
        kl_ctl.load_state_dict(extra["kl_ctl"])
    # The forward that trains: DDP-wrapped under several processes (gradients averaged by DDP).
    train_forward = TrainForward(policy)
    if W > 1:
        train_forward = accelerator.prepare(train_forward)
    # Each process owns a contiguous 1/W share of every global batch (all of it in a one-process run).
    share, mb_share = B // W, mb_size // W
    own = torch.arange(rank * share, (rank + 1) * share, device=device)
    gather = accelerator.gather if W > 1 else (lambda t: t)
    run.progress(start)
    log.info("PPO: %d steps x %d samples, policy %s (%s), device %s, fp32, %d process(es)",
             cfg.train.steps, B, cfg.model.name, "LoRA" if cfg.model.use_lora else "full", device, W)

    for step in range(start, cfg.train.steps):
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(cfg.train.seed, step))
        gen = torch.Generator().manual_seed(step_seed(cfg.train.seed, step))

        # --- 1. rollout: each process samples its share; all processes then hold the global batch
        prompts = prompt_batch(train_prompts, step, B, cfg.train.seed)
        my_prompts = prompts[rank * share : (rank + 1) * share]
        if cfg.sampling.seed_per_sample:  # independent of batching / process count
            seeds = [sample_seed(cfg.train.seed, step, j) for j in own.tolist()]
            ro = generate(policy.lm, tokenizer, my_prompts, cfg.sampling, device, seeds=seeds)
        elif W == 1:
            ro = generate(policy.lm, tokenizer, prompts, cfg.sampling, device)
        else:  # own stream per process; the shared RNG (minibatch order) stays in step across processes
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(cfg.train.seed, step, B + rank))
                ro = generate(policy.lm, tokenizer, my_prompts, cfg.sampling, device)
        if W > 1:
            ro = gather_rollout(ro, prompts, tokenizer, policy.lm, cfg.sampling, accelerator)
        mask = ro.response_mask  # (B, T)

        # --- 2. rewards (proxy ensemble -> aggregate -> perturb) and per-sample KL coefficient
        # Scored over the global batch on every process (batch statistics: whitening, variance normalisation).
        rb = reward(ro.prompts, ro.responses, generator=gen)
        kl_coef = reward.kl_coef(rb, kl_ctl.value)  # float or (B,)

        # --- 3. rollout log-probs, values, reference log-probs (no grad) ----------------------
        # Each process scores its share; the results are gathered into the global (B, T) tensors.
        # With one epoch of one minibatch the rollout forward is reused as the update forward.
        single_pass = cfg.ppo.epochs == 1 and cfg.ppo.num_minibatches == 1
        q_ids, q_mask, r_ids, r_mask = ro.query_ids[own], ro.query_mask[own], ro.response_ids[own], mask[own]
        policy.train(single_pass)
        with torch.set_grad_enabled(single_pass):
            out = (train_forward if single_pass else TrainForward(policy))(
                q_ids, q_mask, r_ids, r_mask, cfg.sampling.temperature, with_entropy=True)
        with torch.no_grad():
            ref = policy.forward_response(q_ids, q_mask, r_ids, r_mask, cfg.sampling.temperature, reference=True)
            old_logprobs, old_values = gather(out.logprobs.detach()), gather(out.values.detach())  # (B, T)
            ref_logprobs, entropy = gather(ref.logprobs), gather(out.entropy)
            kl = kl_estimate(old_logprobs, ref_logprobs, cfg.kl.estimator)  # (B, T)

            # --- 4. token rewards and GAE (global batch, identical on every process) ------------
            scores = rb.training.to(device)
            coef = kl_coef.to(device) if isinstance(kl_coef, torch.Tensor) else kl_coef
            rewards = token_level_rewards(scores, kl, coef, mask)  # (B, T)
            advantages, returns = compute_gae(rewards, old_values, mask, cfg.ppo.gamma, cfg.ppo.lam)
            if cfg.ppo.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

        # --- 5. PPO epochs over minibatches --------------------------------------------------
        # A global minibatch `mb` (same permutation on every process); this process trains on
        # its contiguous share `local` of it.
        policy.train()
        stats: dict[str, list[float]] = {}
        for _epoch in range(cfg.ppo.epochs):
            b_perm = torch.randperm(B)
            for start_i in range(0, B, mb_size):
                mb = b_perm[start_i : start_i + mb_size].to(device)
                local = mb[rank * mb_share : (rank + 1) * mb_share]
                if single_pass:
                    new, mb, local = out, torch.arange(B, device=device), own
                else:
                    new = train_forward(ro.query_ids[local], ro.query_mask[local], ro.response_ids[local],
                                        mask[local], cfg.sampling.temperature)
                pg_loss, pg_stats = ppo_policy_loss(new.logprobs, old_logprobs[local], advantages[local], mask[local],
                                                    cfg.ppo.clip_range)
                vf_loss, vf_stats = ppo_value_loss(new.values, old_values[local], returns[local], mask[local],
                                                   cfg.ppo.clip_range_value)
                loss = pg_loss + cfg.ppo.vf_coef * vf_loss
                if W > 1:
                    # The losses are token means over the local share; DDP averages gradients over the W
                    # processes. Rescaling by W * n_local / n_global turns that average into the gradient of
                    # the token mean over the global minibatch, i.e. the one-process gradient.
                    n_local, n_global = mask[local].sum(), mask[mb].sum().clamp_min(1)
                    loss = loss * (W * n_local / n_global)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # under DDP (W > 1) this also all-reduces (averages) the gradients
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                           cfg.ppo.max_grad_norm)
                optimizer.step()
                if W > 1:  # log the global minibatch's statistics: the same functions on the gathered tensors
                    with torch.no_grad():
                        lp, v = gather(new.logprobs.detach()), gather(new.values.detach())
                        pg_loss, pg_stats = ppo_policy_loss(lp, old_logprobs[mb], advantages[mb], mask[mb],
                                                            cfg.ppo.clip_range)
                        vf_loss, vf_stats = ppo_value_loss(v, old_values[mb], returns[mb], mask[mb],
                                                           cfg.ppo.clip_range_value)
                        loss = pg_loss + cfg.ppo.vf_coef * vf_loss
                for k, v in {"losses/policy": pg_loss, "losses/value": vf_loss, "losses/total": loss,
                             "losses/grad_norm": grad_norm, **{f"policy/{k}": v for k, v in pg_stats.items()},
                             "losses/value_clipfrac": vf_stats["vf_clipfrac"],
                             "losses/explained_variance": vf_stats["explained_variance"]}.items():
                    stats.setdefault(k, []).append(float(v.detach()) if isinstance(v, torch.Tensor) else float(v))

        # --- 6. KL controller, metrics ---------------------------------------------------------
        seq_kl = (kl * mask).sum(1)  # (B,) raw KL per sequence (chosen estimator)
        seq_penalty = (-(rewards - _last_token(scores, mask)) * mask).sum(1)  # (B,) the applied KL penalty
        kl_ctl.update(seq_kl.mean().item(), B)
        row = {
            "step": step + 1,
            "kl": seq_kl.mean().item(),
            "proxy_reward": rb.proxy.mean().item(),
            **reward_metrics(rb),
            "policy/kl": seq_kl.mean().item(),
            "policy/kl_k1": ((old_logprobs - ref_logprobs) * mask).sum(1).mean().item(),
            "policy/kl_penalty": seq_penalty.mean().item(),
            "policy/kl_coef": float(kl_coef.mean()) if isinstance(kl_coef, torch.Tensor) else float(kl_coef),
            "policy/entropy": masked_mean(entropy, mask).item(),
            "policy/response_length": mask.sum(1).float().mean().item(),
            **{k: sum(v) / len(v) for k, v in stats.items()},
        }
        if accelerator.is_main_process and cfg.log.eval_every and (
                (step + 1) % cfg.log.eval_every == 0 or step + 1 == cfg.train.steps):
            policy.eval()
            row.update(evaluate_policy(policy, eval_prompts, cfg.sampling, reward, gold,
                                       seed=step_seed(cfg.train.seed + 1, step), kl_estimator=cfg.kl.estimator))
        row["time/step_s"] = time.perf_counter() - t0
        run.log(row)  # main process only writes
        if cfg.log.checkpoint_every and (step + 1) % cfg.log.checkpoint_every == 0:
            run.save_checkpoint(step + 1, policy, optimizer, {"kl_ctl": kl_ctl.state_dict()})
        if callback is not None and accelerator.is_main_process:
            callback(step + 1, row)

    if accelerator.is_main_process:
        atomic_save_dir(output_dir / "policy", policy.save_pretrained)  # never a half-written policy
    run.close()
    accelerator.wait_for_everyone()
    return output_dir


def sample_seed(seed: int, step: int, index: int) -> int:
    """Seed of sample ``index`` (its position in the global batch) at ``step`` (``sampling.seed_per_sample``)."""
    return step_seed(seed, step) * 65_537 + index


def _last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) tensor holding ``scores`` at each row's last response token, 0 elsewhere."""
    return token_level_rewards(scores, torch.zeros(mask.shape, device=scores.device), 0.0, mask)

