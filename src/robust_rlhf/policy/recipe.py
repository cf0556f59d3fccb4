"""The scaffold every policy recipe shares: setup, per-step seeding, evaluation, logging,
checkpoint / resume, and saving the final policy.

A recipe (`robust_rlhf.policy.ppo`, `robust_rlhf.policy.rloo`) keeps only its own algorithm:

    session = PolicySession.start(cfg, output_dir, reward_source, with_value_head=True)
    for step in range(session.start_step, cfg.train.steps):
        gen = session.begin_step(step)            # reseeds from (seed, step): resume is exact
        ... rollout, rewards, update ...
        session.update_kl_controller(seq_kl)      # adaptive KL: from this batch's KL
        row = {**session.step_metrics(step, seq_kl, rb, kl_coef, entropy, mask), ...}
        session.end_step(step, row, callback)     # evaluate, log, checkpoint, callback
    session.finish()                              # the final policy/, atomically

Config layout shared by every recipe (PPO, RLOO, best-of-n; the reward models too): ``seed``,
``device`` and ``resume`` at the top level, ``resume`` true by default.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from robust_rlhf.data.prompts import PromptDataConfig, train_eval_prompts
from robust_rlhf.errors import UserError
from robust_rlhf.gold import load_gold
from robust_rlhf.models.generation import SamplingConfig
from robust_rlhf.policy.kl import KLConfig
from robust_rlhf.policy.losses import masked_mean
from robust_rlhf.policy.model import ModelConfig, load_policy
from robust_rlhf.policy.rewards import RewardConfig, TrainingReward, reward_metrics
from robust_rlhf.policy.tracking import LogConfig, Run
from robust_rlhf.reward.sources import RewardSource, load_reward_source
from robust_rlhf.utils import atomic_save_dir, atomic_write_text, resolve_device, set_seed

__all__ = ["PolicyRecipeConfig", "build_reward_source", "PolicySamplingConfig", "TrainConfig", "PolicySession", "make_optimizer", "require_one_process",
           "sample_seed", "step_seed"]

log = logging.getLogger(__name__)

# Keys that moved (old -> where they are now): the loader names the new place when an old one is set.
RENAMED_KEYS = {"train.seed": "top-level seed", "train.device": "top-level device",
                "kl.variance_normalize": "kl.variance_scale (batch_mean = the former true, none = false)"}


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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("train.steps and train.batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")


@dataclass
class PolicySamplingConfig:
    """The sections of every policy recipe, best-of-n included: what samples, from which prompts,
    scored by which proxy and judged by which gold reward; seed and device."""

    method: str = ""
    """the optimiser (fixed by each recipe's config)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the policy LM and LoRA / full fine-tuning (best-of-n trains nothing)"""
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    """prompts and the held-out split"""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """response sampling"""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """proxy reward source, aggregator, perturbation (best-of-n selects on the unperturbed proxy)"""
    gold: str = "vader"
    """gold reward for held-out evaluation only (vader, hf:<model>, module:function)"""
    seed: int = 0
    """seed of sampling, minibatch order, perturbation and init"""
    device: str | None = None
    """cpu, cuda, cuda:N; null (or auto) = cuda if available"""


@dataclass
class PolicyRecipeConfig(PolicySamplingConfig):
    """The sections every RL recipe shares; a recipe's config adds its update section (``ppo:``,
    ``rloo:``) and fixes ``method``."""

    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty to the reference"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """steps, batch, optimiser"""
    log: LogConfig = field(default_factory=LogConfig)
    """evaluation, metrics, checkpoints"""
    resume: bool = True
    """continue from the latest checkpoint in the output folder (its config must match)"""

    renamed_keys: ClassVar[dict[str, str]] = RENAMED_KEYS


def build_reward_source(cfg: RewardConfig, output_dir: str | Path, device: str | torch.device | None = None) -> RewardSource:
    """The reward source of a run: ``cfg.model`` (folder or ``gold:<spec>``), or -- when it is
    null -- the default reward ensemble, trained first into ``output_dir/reward_model``
    (reused if a previous run already trained it there)."""
    if cfg.model is not None:
        return load_reward_source(cfg.model, cfg.batch_size, device)
    target = Path(output_dir) / "reward_model"
    if not (target / "reward_config.json").exists():  # written last: present = a complete reward model
        from robust_rlhf.reward.train import train_reward_model
        from robust_rlhf.reward.train_config import RewardTrainConfig

        # RewardTrainConfig's dataclass defaults (not a preset): see docs/policy.md
        log.info("reward.model is null: training the default reward ensemble into %s first", target)
        target = Path(train_reward_model(RewardTrainConfig(), target))
    else:
        log.info("reward.model is null: reusing the reward ensemble already trained in %s", target)
    return load_reward_source(str(target), cfg.batch_size, device)


def make_optimizer(policy, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in policy.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)


def step_seed(seed: int, step: int) -> int:
    """Each step reseeds from (seed, step): a resumed run draws exactly the same randomness."""
    return seed * 1_000_003 + step


def sample_seed(seed: int, step: int, index: int) -> int:
    """Seed of sample ``index`` (its position in the global batch) at ``step`` (``sampling.seed_per_sample``)."""
    return step_seed(seed, step) * 65_537 + index


def require_one_process(method: str) -> None:
    """A clear error when a one-process recipe is launched under torchrun / accelerate launch."""
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        raise UserError(f"method={method} runs in one process only; launch it without torchrun / accelerate launch "
                        "(multi-process policy training is supported for method=ppo)")


EVAL_SAMPLES_FILE = "eval_samples.jsonl"
"""Per-sample held-out evaluation of a policy run: one JSON row per (evaluation step, sample),
``{"step", "kl", "prompt", "response", "per_head", "gold"}`` (`append_eval_samples`)."""


def exact_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) summed over the whole vocabulary: ``sum_v p(v) (log p(v) - log q(v))``.

    Args:
        logprobs, ref_logprobs: (B, T, V) log-probs of the policy and of the reference at each
            response position (the sampled prefix as context).
    Returns:
        (B, T) exact KL per position, >= 0 (up to rounding, clamped at 0): summed over a response
        it is the Rao-Blackwellised sequence-KL estimate, unbiased and never negative.
    """
    return (logprobs.exp() * (logprobs - ref_logprobs)).sum(-1).clamp(min=0.0)


def all_heads(reward: TrainingReward, prompts: list[str], responses: list[str], scored) -> torch.Tensor:
    """(B, K) every head of the run's reward model on these texts, whatever the run trains on: a
    source with ``all_heads(prompts, responses)`` (one head of an ensemble) answers for the whole
    ensemble; otherwise the heads it scored (``scored``, its `RewardOutput`)."""
    source = getattr(reward, "source", None)
    fn = getattr(source, "all_heads", None)
    return (fn(prompts, responses) if fn is not None else scored.per_head).detach().float().cpu()


@torch.no_grad()
def evaluate_held_out(policy, prompts: list[str], samples_per_prompt: int, sampling_cfg: SamplingConfig,
                      reward: TrainingReward, gold, seed: int, chunk: int = 16) -> tuple[dict[str, float], list[dict]]:
    """Held-out evaluation: ``samples_per_prompt`` responses per prompt (own RNG stream, so training
    randomness is untouched), each scored by the gold, the proxy (every head) and its exact
    sequence KL to the reference (`exact_token_kl`, summed over the response).

    The gold reward is only logged here; it never feeds training.

    Returns:
        (metrics, samples): the logged means with their standard errors (``gold_reward``,
        ``gold/reward_se``, ``gold/kl``, ``gold/kl_se``, ``gold/ensemble_std`` over all heads, ...),
        and one dict per sample ``{"kl", "prompt", "response", "per_head", "gold"}``.
    """
    from robust_rlhf.models.generation import generate
    from robust_rlhf.reward.output import RewardOutput

    flat = [p for p in prompts for _ in range(samples_per_prompt)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ro = generate(policy.lm, policy.tokenizer, flat, sampling_cfg)
    gold_scores = torch.tensor(gold(ro.prompts, ro.responses), dtype=torch.float64)  # (S,)
    scored, proxy = reward.score(ro.prompts, ro.responses)
    heads = all_heads(reward, ro.prompts, ro.responses, scored)  # (S, K)
    kls = []
    for i in range(0, len(flat), chunk):
        part = [t[i : i + chunk] for t in (ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)]
        out = policy.forward_response(*part, sampling_cfg.temperature, with_full_logprobs=True)
        ref = policy.forward_response(*part, sampling_cfg.temperature, reference=True, with_full_logprobs=True)
        kls.append((exact_token_kl(out.logprobs_all, ref.logprobs_all) * part[3]).sum(1).double().cpu())  # (b,)
    kl = torch.cat(kls)  # (S,)
    n = len(flat)

    def se(x: torch.Tensor) -> float:
        return float(x.std() / n**0.5) if n > 1 else 0.0

    metrics = {
        "gold_reward": gold_scores.mean().item(),
        "gold/reward_std": gold_scores.std().item() if n > 1 else 0.0,
        "gold/reward_se": se(gold_scores),
        "gold/proxy_reward": proxy.mean().item(),
        "gold/kl": kl.mean().item(),
        "gold/kl_se": se(kl),
        "gold/ensemble_std": RewardOutput(heads, None).std.mean().item(),
        "gold/num_samples": n,
        "gold/response_length": ro.response_mask.sum(1).float().mean().item(),
    }
    samples = [{"kl": float(kl[j]), "prompt": ro.prompts[j], "response": ro.responses[j],
                "per_head": [float(v) for v in heads[j]], "gold": float(gold_scores[j])} for j in range(n)]
    return metrics, samples


def append_eval_samples(path: Path, step: int, samples: list[dict]) -> None:
    """Append one evaluation's samples to ``eval_samples.jsonl`` (rows of a step already there --
    a resumed run re-evaluating it -- are replaced, so every step appears once). The file is
    rewritten atomically, so a kill never leaves a half row."""
    import json

    rows = []
    if path.exists():
        rows = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] != step]
    rows += [json.dumps({"step": step, **s}) for s in samples]
    atomic_write_text(path, "\n".join(rows) + "\n")


def _mean(x: torch.Tensor | float) -> float:
    return float(x.mean()) if isinstance(x, torch.Tensor) else float(x)


@dataclass
class PolicySession:
    """One policy-training run: its models, reward, prompts and bookkeeping.

    Attributes:
        cfg: the recipe config (sections model, data, sampling, reward, kl, train, log; gold, seed, resume).
        output_dir: the run folder.
        device: where the policy lives.
        run: metrics and checkpoints (`robust_rlhf.policy.tracking.Run`).
        policy: the `PolicyModel` being trained.
        optimizer: AdamW over its trainable parameters.
        reward: proxy reward + aggregator + perturbation (`TrainingReward`).
        gold: the held-out judge (evaluation only).
        kl_ctl: the KL coefficient controller (fixed or adaptive).
        train_prompts, eval_prompts: the prompt split (eval_prompts cut to ``log.eval_prompts``).
        start_step: steps already done (> 0 when resumed).
        is_main: whether this process writes (False on the other processes of a DDP run).
    """

    cfg: Any
    output_dir: Path
    device: torch.device
    run: Run
    policy: Any
    optimizer: torch.optim.Optimizer
    reward: TrainingReward
    gold: Callable
    kl_ctl: Any
    train_prompts: list[str]
    eval_prompts: list[str]
    start_step: int
    is_main: bool = True

    @classmethod
    def start(cls, cfg, output_dir: str | Path, reward_source=None, *, with_value_head: bool,
              device: torch.device | None = None, is_main: bool = True) -> "PolicySession":
        """Seed, open the run folder, load policy / reward / gold / prompts, and restore the latest
        checkpoint when ``cfg.resume`` (weights, optimizer, RNG, KL controller, metrics so far)."""
        output_dir = Path(output_dir)
        device = device if device is not None else resolve_device(cfg.device)
        set_seed(cfg.seed)
        run = Run(output_dir, cfg, cfg.resume, cfg.log, cfg.train.steps, is_main=is_main)
        policy = load_policy(cfg.model, with_value_head=with_value_head, device=device).to(device)
        optimizer = make_optimizer(policy, cfg.train)
        source = reward_source or build_reward_source(cfg.reward, output_dir, device)
        reward = TrainingReward(source, cfg.reward, cfg.kl)
        gold = load_gold(cfg.gold)
        kl_ctl = cfg.kl.controller()
        train_prompts, eval_prompts = train_eval_prompts(cfg.data)
        start, extra = run.restore(policy, optimizer)
        if "kl_ctl" in extra:
            kl_ctl.load_state_dict(extra["kl_ctl"])
        run.progress(start)
        return cls(cfg, output_dir, device, run, policy, optimizer, reward, gold, kl_ctl, train_prompts,
                   eval_prompts[: cfg.log.eval_prompts], start, is_main)

    def begin_step(self, step: int) -> torch.Generator:
        """Reseed the global RNG from (seed, step); returns the step's generator for reward noise."""
        self._t0 = time.perf_counter()
        torch.manual_seed(step_seed(self.cfg.seed, step))
        return torch.Generator().manual_seed(step_seed(self.cfg.seed, step))

    def step_metrics(self, step: int, seq_kl: torch.Tensor, rb, kl_coef, entropy: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, float]:
        """The metrics every recipe logs (no side effect: the KL controller is updated by
        `update_kl_controller`).

        Args:
            seq_kl: (N,) KL to the reference summed over each response (the chosen estimator).
            rb: the step's `RewardOutput` (from `TrainingReward`).
            kl_coef: float or (N,) per-sample KL coefficient used.
            entropy: (N, T) per-token policy entropy of the rollout.
            mask: (N, T) response mask.
        """
        kl = seq_kl.mean().item()
        return {
            "step": step + 1,
            "kl": kl,
            "proxy_reward": rb.reward.mean().item(),
            **reward_metrics(rb),
            "policy/kl_coef": _mean(kl_coef),
            "policy/entropy": masked_mean(entropy, mask).item(),
            "policy/response_length": mask.sum(1).float().mean().item(),
        }

    def update_kl_controller(self, seq_kl: torch.Tensor) -> None:
        """Move the KL coefficient (adaptive controller) from this batch's (N,) sequence KL."""
        self.kl_ctl.update(seq_kl.mean().item(), len(seq_kl))

    def eval_due(self, step: int) -> bool:
        every = self.cfg.log.eval_every
        return bool(every) and ((step + 1) % every == 0 or step + 1 == self.cfg.train.steps)

    def end_step(self, step: int, row: dict, callback: Callable[[int, dict], None] | None = None) -> dict:
        """Gold evaluation when due (main process), step time, log, checkpoint when due, callback."""
        cfg = self.cfg
        if self.is_main and self.eval_due(step):
            self.policy.eval()
            metrics, samples = evaluate_held_out(self.policy, self.eval_prompts, cfg.log.eval_samples_per_prompt,
                                                 cfg.sampling, self.reward, self.gold, seed=step_seed(cfg.seed + 1, step))
            row.update(metrics)
            append_eval_samples(self.output_dir / EVAL_SAMPLES_FILE, step + 1, samples)
        row["time/step_s"] = time.perf_counter() - self._t0
        self.run.log(row)  # the main process only writes
        if cfg.log.checkpoint_every and (step + 1) % cfg.log.checkpoint_every == 0:
            self.run.save_checkpoint(step + 1, self.policy, self.optimizer, {"kl_ctl": self.kl_ctl.state_dict()})
        if callback is not None and self.is_main:
            callback(step + 1, row)
        return row

    def finish(self) -> Path:
        """Save the final policy (never half-written) and close the sinks; returns the run folder."""
        if self.is_main:
            atomic_save_dir(self.output_dir / "policy", self.policy.save_pretrained)
        self.run.close()
        return self.output_dir
