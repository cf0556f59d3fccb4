"""The best-of-n study: every proxy x every aggregator selecting among N reference-policy samples on
many held-out prompts, judged by the gold at every n = 1..N (Coste et al. 2023's unbiased estimator,
`robust_rlhf.policy.losses.best_of_n_expected_reward`, per prompt), with prompt-bootstrap intervals.

Best-of-n trains nothing, so it can afford the power the PPO claims lack: one pool of N samples per
prompt (the `bon/pool` unit), scored once by each proxy (`bon/scores/<rm>`); every aggregator and n
comes from those scores. Claims (statistic ``bon_gold_difference``) compare two
``<reward model>:<aggregator>`` at ``bon_study.n``, paired over prompts (the replication unit).
"""

from __future__ import annotations

import math

import numpy as np

from robust_rlhf.experiments.config import BON_AGGREGATORS, BonStudyConfig

_SUBJECTS = ["The cinematography", "The villain", "The dialogue", "The pacing", "The special effects",
             "The lead actor", "The lead actress", "The score", "The twist", "The first half", "The second half",
             "The costumes", "The visuals", "The humor", "The premise", "The finale", "This remake",
             "This documentary", "This thriller", "This comedy", "This horror movie", "This cartoon", "The trailer",
             "The screenplay"]
_VERBS = ["was", "is", "felt", "seemed", "turned out"]
HELD_OUT_PROMPTS = ([f"{s} {v}" for s in _SUBJECTS for v in _VERBS]
                    + [f"{s} {v} really" for s in _SUBJECTS for v in _VERBS[:2]]
                    + [f"{s} was so" for s in _SUBJECTS]
                    + [f"{s} {v} a bit" for s in _SUBJECTS for v in _VERBS[2:4]])
"""240 built-in movie-review openings about subjects the built-in task (`robust_rlhf.data.prompts`) never
uses, so none of them is in the proxies' training pairs."""



def aggregated_scores(scores: dict, agg, head: int | None):
    """(S,) aggregated proxy reward of pool samples from stored per-head scores ``{"per_head" (S, K),
    "per_head_std" (S, K) | None, "head_stats"}``; `agg` an `AggregatorConfig`; `head`: one head alone."""
    import torch

    from robust_rlhf.aggregate import aggregate
    from robust_rlhf.reward.output import RewardOutput

    ph = torch.tensor(scores["per_head"], dtype=torch.float32)  # (S, K)
    std = None if scores["per_head_std"] is None else torch.tensor(scores["per_head_std"], dtype=torch.float32)
    stats = scores.get("head_stats") or {}
    hs = (torch.tensor(stats["mean"]), torch.tensor(stats["std"])) if agg.normalize and stats.get("mean") else None
    if head is not None:
        ph = ph[:, head : head + 1]
        std = None if std is None else std[:, head : head + 1]
        hs = None if hs is None else (hs[0][head : head + 1], hs[1][head : head + 1])
    return aggregate(RewardOutput(ph, std), agg, hs)

def aggregator_configs(cfg: BonStudyConfig, head_type: str, num_heads: int) -> dict:
    """The study's aggregators applicable to one proxy: name -> AggregatorConfig. A one-head proxy has
    only ``mean`` (every aggregator equals it); BRME's lambda > 0 needs gaussian heads (r_nominal). ``min``, ``max``
    and the ``_norm`` variants of lcb / uwo standardise each head by its validation statistics first."""
    from robust_rlhf.aggregate import AggregatorConfig

    if num_heads < 2:
        return {"mean": AggregatorConfig(name="mean")}
    out = {"mean": AggregatorConfig(name="mean"), "min": AggregatorConfig(name="min", normalize=True),
           "max": AggregatorConfig(name="max", normalize=True), "lcb": AggregatorConfig(name="lcb", beta=cfg.beta),
           "uwo": AggregatorConfig(name="uwo", lam=cfg.uwo_lam),
           "lcb_norm": AggregatorConfig(name="lcb", beta=cfg.beta, normalize=True),
           "uwo_norm": AggregatorConfig(name="uwo", lam=cfg.uwo_lam, normalize=True)}
    for lam, key in ((0.0, "brme_l0"), (0.5, "brme_l05"), (1.0, "brme_l1")):
        if lam == 0.0 or head_type == "gaussian":
            out[key] = AggregatorConfig(name="brme_tradeoff", lam=lam)
    assert set(out) <= set(BON_AGGREGATORS)
    return out


def per_prompt_bon(proxy: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """(P, N) expected gold of best-of-n at every n = 1..N, per prompt: Coste's unbiased estimator
    (`best_of_n_expected_reward`) on each prompt's pool. ``proxy``, ``gold``: (P, N)."""
    import torch

    from robust_rlhf.policy.losses import best_of_n_expected_reward

    P, N = proxy.shape
    out = np.empty((P, N))
    for p in range(P):
        pr, go = torch.as_tensor(proxy[p]), torch.as_tensor(gold[p])
        for n in range(1, N + 1):
            out[p, n - 1] = best_of_n_expected_reward(pr, go, n)
    return out


def bootstrap_curve(per_prompt: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Mean over prompts at every n with a prompt-bootstrap percentile interval (prompts resampled
    with replacement, the same resamples for every n). ``per_prompt``: (P, N)."""
    rng = np.random.default_rng(seed)
    P = per_prompt.shape[0]
    idx = rng.integers(0, P, size=(n_boot, P))
    boot = per_prompt[idx].mean(axis=1)  # (n_boot, N)
    alpha = 1 - level
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    return {"gold": per_prompt.mean(axis=0).tolist(), "ci_low": lo.tolist(), "ci_high": hi.tolist(),
            "se": (per_prompt.std(axis=0, ddof=1) / math.sqrt(P)).tolist() if P > 1 else None}


def analyse_bon_study(cfg: BonStudyConfig, pool: dict, scores: dict[str, dict], rm_info: dict[str, dict],
                      level: float) -> dict:
    """results.json's ``bon_study``: per proxy and aggregator the gold curve at n = 1..N with its
    prompt-bootstrap interval; ``per_prompt`` keeps each (rm, aggregator)'s (P,) gold at ``cfg.n`` for the claims.

    Args:
        pool: {"prompts", "pool_size", "responses", "gold" (P, N)} of the `bon/pool` unit.
        scores: rm name -> {"per_head" (P*N, K), "per_head_std", "head_stats"} of its `bon/scores` unit.
        rm_info: rm name -> {"head_type", "num_heads"}.
    """
    import torch

    gold = np.asarray(pool["gold"], dtype=float)  # (P, N)
    P, N = gold.shape
    n_claim = cfg.n or N
    kl = [math.log(n) - (n - 1) / n for n in range(1, N + 1)]
    out: dict = {"num_prompts": P, "pool_size": N, "n": list(range(1, N + 1)), "kl": kl, "claim_n": n_claim,
                 "reference_gold": float(gold.mean()), "reward_models": {}, "per_prompt": {}}
    for rm, sc in scores.items():
        info = rm_info[rm]
        curves = {}
        for name, agg in aggregator_configs(cfg, info["head_type"], info["num_heads"]).items():
            proxy = aggregated_scores(sc, agg, None).to(torch.float64).numpy().reshape(P, N)
            g = per_prompt_bon(proxy, gold)  # (P, N)
            c = bootstrap_curve(g, cfg.n_boot, cfg.seed, level)
            c["peak_n"] = int(np.argmax(c["gold"])) + 1
            curves[name] = c
            out["per_prompt"][f"{rm}:{name}"] = g[:, n_claim - 1].tolist()
        out["reward_models"][rm] = curves
    return out
