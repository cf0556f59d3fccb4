"""Best-of-n sampling: draw n responses, keep the one the proxy reward likes best.

Its KL to the sampling policy is analytic, ``KL_bon = log n - (n - 1) / n`` (Stiennon et al.
2020), so best-of-n traces the over-optimisation curve without any training (Gao et al.
2022). From one pool of N samples per prompt, the expected proxy and gold reward of best-of-n
for every n <= N come from Coste et al.'s unbiased estimator (`best_of_n_expected_reward`),
without resampling.

Output folder: ``config.yaml``, ``metrics.jsonl`` / ``metrics.csv`` (one row per n: ``step`` = n,
``kl``, ``proxy_reward``, ``gold_reward``, ``policy/sqrt_kl``), ``samples.jsonl`` (the pool).
The curve itself is `best_of_n_curve` (the over-optimisation lab uses it too). Config layout as
every recipe (`robust_rlhf.policy.recipe`): ``seed`` and ``device`` at the top level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from robust_rlhf.config import config_to_dict
from robust_rlhf.data.prompts import train_eval_prompts
from robust_rlhf.gold import load_gold
from robust_rlhf.models.generation import SamplingConfig, generate
from robust_rlhf.policy.losses import best_of_n_expected_reward, best_of_n_kl
from robust_rlhf.policy.model import load_policy
from robust_rlhf.policy.recipe import PolicySamplingConfig, build_reward_source, require_one_process
from robust_rlhf.policy.rewards import TrainingReward
from robust_rlhf.policy.tracking import check_run_folder, write_metrics
from robust_rlhf.reward.sources import RewardSource
from robust_rlhf.utils import atomic_write_jsonl, atomic_write_text, resolve_device, set_seed

log = logging.getLogger(__name__)


@dataclass
class BestOfNParams:
    """Pool size and the n values reported."""

    n_max: int = 16
    """samples per prompt (the pool size N)"""
    n_values: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """best-of-n values to report (each 1 <= n <= n_max)"""
    num_prompts: int = 32
    """held-out prompts to evaluate on"""

    def __post_init__(self) -> None:
        if self.n_max < 1:
            raise ValueError(f"best_of_n.n_max must be >= 1, got {self.n_max}")
        bad = [n for n in self.n_values if not 1 <= n <= self.n_max]
        if bad or not self.n_values:
            raise ValueError(f"best_of_n.n_values must be non-empty with 1 <= n <= n_max={self.n_max}, got {self.n_values}")
        if self.num_prompts < 1:
            raise ValueError("best_of_n.num_prompts must be >= 1")


@dataclass
class BestOfNConfig(PolicySamplingConfig):
    """Best-of-n against the proxy, judged by the gold reward (method: best_of_n). Shared
    sections: `PolicySamplingConfig` (the held-out split of ``data`` is used)."""

    method: Literal["best_of_n"] = "best_of_n"
    """the optimiser (this config is best-of-n's)"""
    best_of_n: BestOfNParams = field(default_factory=BestOfNParams)
    """pool size and reported n"""


@dataclass
class BestOfNResult:
    """Best-of-n for P prompts.

    Attributes:
        responses: P lists of n sampled responses.
        proxy: (P, n) aggregated proxy reward of each sample.
        best_index: (P,) index of the selected sample (argmax of proxy).
        best: the P selected responses.
    """

    responses: list[list[str]]
    proxy: torch.Tensor
    best_index: torch.Tensor
    best: list[str]


@torch.no_grad()
def best_of_n(policy, prompts: list[str], n: int, reward: TrainingReward, sampling_cfg: SamplingConfig) -> BestOfNResult:
    """Sample n responses per prompt and keep the proxy's favourite (uses the global torch RNG)."""
    expanded = [p for p in prompts for _ in range(n)]  # contiguous blocks of n
    ro = generate(policy.lm, policy.tokenizer, expanded, sampling_cfg)
    _, proxy = reward.score(ro.prompts, ro.responses)
    proxy = proxy.reshape(len(prompts), n)  # (P, n)
    best = proxy.argmax(dim=1)  # (P,)
    responses = [ro.responses[i * n : (i + 1) * n] for i in range(len(prompts))]
    return BestOfNResult(responses, proxy, best, [responses[i][int(best[i])] for i in range(len(prompts))])


def best_of_n_curve(proxy: torch.Tensor, gold: torch.Tensor, ns: list[int]) -> list[dict]:
    """Expected proxy and gold reward of best-of-n selection by the proxy, for each n, from one pool.

    Coste et al.'s unbiased estimator (`best_of_n_expected_reward`) per prompt, averaged over
    prompts; ``KL = log n - (n - 1) / n``.

    Args:
        proxy: (P, N) proxy reward of each pooled sample (selection).
        gold: (P, N) gold reward of the same samples.
        ns: the n values (each 1 <= n <= N).

    Returns:
        one row per n: ``step`` (= n), ``n``, ``kl``, ``policy/sqrt_kl``, ``proxy_reward``, ``gold_reward``.
    """
    if proxy.shape != gold.shape or proxy.dim() != 2:
        raise ValueError(f"proxy and gold must both be (P, N), got {tuple(proxy.shape)} and {tuple(gold.shape)}")
    P = proxy.shape[0]
    rows = []
    for n in ns:
        proxy_n = float(sum(best_of_n_expected_reward(proxy[i], proxy[i], n) for i in range(P)) / P)
        gold_n = float(sum(best_of_n_expected_reward(proxy[i], gold[i], n) for i in range(P)) / P)
        kl = best_of_n_kl(n)
        rows.append({"step": n, "n": n, "kl": kl, "policy/sqrt_kl": kl**0.5, "proxy_reward": proxy_n,
                     "gold_reward": gold_n})
    return rows


def run_best_of_n(cfg: BestOfNConfig, output_dir: str | Path, reward_source: RewardSource | None = None) -> Path:
    """Sample a pool of n_max per held-out prompt; report proxy and gold of best-of-n for each n.

    One process only (nothing to synchronise; several would race on the output folder)."""
    require_one_process("best_of_n")
    output_dir = Path(output_dir)
    check_run_folder(output_dir, cfg, resume=False)  # another run there is refused, before any write
    output_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    atomic_write_text(output_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    set_seed(cfg.seed)
    device = resolve_device(cfg.device)
    # LoRA adapters start at zero, so the wrapped model samples exactly like the base model (and,
    # unlike full fine-tuning, no reference copy is made).
    policy = load_policy(cfg.model, with_value_head=False).to(device).eval()
    reward = TrainingReward(reward_source or build_reward_source(cfg.reward, output_dir, device), cfg.reward)
    gold = load_gold(cfg.gold)
    _, held_out = train_eval_prompts(cfg.data)
    prompts = held_out[: cfg.best_of_n.num_prompts]
    N = cfg.best_of_n.n_max
    res = best_of_n(policy, prompts, N, reward, cfg.sampling)
    flat_responses = [r for rs in res.responses for r in rs]
    flat_prompts = [p for p in prompts for _ in range(N)]
    gold_scores = torch.tensor(gold(flat_prompts, flat_responses), dtype=torch.float32).reshape(len(prompts), N)

    rows = best_of_n_curve(res.proxy, gold_scores, cfg.best_of_n.n_values)
    for r in rows:
        log.info("best-of-%d: KL %.3f proxy %.4f gold %.4f", r["n"], r["kl"], r["proxy_reward"], r["gold_reward"])
    write_metrics(output_dir, rows)
    samples = [
        {"prompt": p, "response": r, "proxy": float(res.proxy[i, j]), "gold": float(gold_scores[i, j]),
         "selected": j == int(res.best_index[i])}
        for i, p in enumerate(prompts) for j, r in enumerate(res.responses[i])
    ]
    atomic_write_jsonl(output_dir / "samples.jsonl", samples)
    return output_dir
