"""Uncertainty under shift: does a reward model's spread flag where the proxy *over-scores*?

Pure functions on arrays (no model, no I/O). A *pool* is P prompts x N responses each, with the
proxy's per-head scores and a gold reward:

    per_head   (P, N, K)  every head's reward for every response
    gold       (P, N)     the gold reward
    std        (P, N)     the model's per-text std (across heads; `text_std`)

Metrics (issue 23):
* `top_pick_flags`: the proxy's top pick per prompt (argmax of the mean over heads); AUROC of the
  pick's std for "the pick's gold is below its prompt's median gold" (a reward-hacked pick);
* `overscoring`: within-prompt over-scoring ``z(proxy) - z(gold)`` (z = standardised across the
  prompt's N responses); AUROC of the std for over-scoring in the top quartile of all texts, and
  Spearman of std vs over-scoring; beside them the AUROC of z(proxy) itself (the baseline);
* `lcb_pick_gain`: mean gold of the pick by mean - std minus that of the pick by the mean;
* `bootstrap_se`: standard error of any of these by resampling prompts;
* `step_overscoring`: the same questions on PPO evaluation samples, per evaluation step (as KL grows).

AUROC and Spearman are `robust_rlhf.reward.evaluate.auroc` / `spearman` (ties count half).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from robust_rlhf.errors import UserError
from robust_rlhf.reward.evaluate import auroc, spearman

OVERSCORING_QUANTILE = 0.75
"""Texts whose over-scoring is above this quantile (over all texts of the pool) are the positives."""


def text_std(per_head: np.ndarray, per_head_std: np.ndarray | None = None) -> np.ndarray:
    """(..., K) per-head rewards [and (..., K) learned stds] -> (...) std of the equal-weight mixture
    of the K heads: sqrt(var_k(mu_k) + mean_k(s_k^2)), var with divisor K (as `evaluate.text_uncertainty`)."""
    per_head = np.asarray(per_head, dtype=float)
    var = per_head.var(axis=-1)
    if per_head_std is not None:
        var = var + (np.asarray(per_head_std, dtype=float) ** 2).mean(axis=-1)
    return np.sqrt(var)


def within_prompt_z(x: np.ndarray) -> np.ndarray:
    """(P, N) -> (P, N) standardised within each row (mean 0, population std 1); a constant row -> 0."""
    x = np.asarray(x, dtype=float)
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1.0), 0.0)


def top_pick_flags(proxy: np.ndarray, gold: np.ndarray, std: np.ndarray) -> dict:
    """proxy, gold, std: (P, N). Per prompt the proxy's top pick i* = argmax_n proxy (first on ties);
    it is *bad* when gold[i*] < median_n gold. Returns {"auroc": AUROC of std[i*] for bad picks
    (NaN when all picks are bad or none is), "num_bad": int, "num_prompts": P,
    "bad": (P,) bool, "pick_std": (P,)}."""
    proxy, gold, std = (np.asarray(a, dtype=float) for a in (proxy, gold, std))
    pick = proxy.argmax(axis=1)  # (P,)
    rows = np.arange(len(pick))
    bad = gold[rows, pick] < np.median(gold, axis=1)
    pick_std = std[rows, pick]
    return {"auroc": auroc(pick_std, bad), "num_bad": int(bad.sum()), "num_prompts": int(len(pick)),
            "bad": bad, "pick_std": pick_std}


def overscoring(proxy: np.ndarray, gold: np.ndarray, std: np.ndarray,
                quantile: float = OVERSCORING_QUANTILE) -> dict:
    """proxy, gold, std: (P, N). Over-scoring o = z(proxy) - z(gold), z within each prompt (`within_prompt_z`).
    Returns {"auroc": AUROC of std for o above its `quantile` over all P*N texts, "spearman":
    Spearman(std, o) over all texts, "auroc_proxy_baseline": AUROC of z(proxy) itself for the same
    texts (the honest baseline: o grows with z(proxy) by construction, so the std adds something only
    if it beats this), "threshold": that quantile, "overscore": (P, N)}."""
    proxy, gold, std = (np.asarray(a, dtype=float) for a in (proxy, gold, std))
    zp = within_prompt_z(proxy)
    o = zp - within_prompt_z(gold)  # (P, N)
    thr = float(np.quantile(o, quantile))
    return {"auroc": auroc(std.ravel(), o.ravel() > thr), "spearman": spearman(std.ravel(), o.ravel()),
            "auroc_proxy_baseline": auroc(zp.ravel(), o.ravel() > thr), "threshold": thr, "overscore": o}


def lcb_pick_gain(proxy: np.ndarray, gold: np.ndarray, std: np.ndarray, coef: float = 1.0) -> float:
    """proxy, gold, std: (P, N). Mean over prompts of gold[argmax(proxy - coef*std)] - gold[argmax(proxy)]:
    what choosing by a lower confidence bound instead of the mean changes in best-of-N gold."""
    proxy, gold, std = (np.asarray(a, dtype=float) for a in (proxy, gold, std))
    rows = np.arange(proxy.shape[0])
    return float((gold[rows, (proxy - coef * std).argmax(axis=1)] - gold[rows, proxy.argmax(axis=1)]).mean())


def bootstrap_se(stat: Callable[[np.ndarray], float], num_prompts: int, num_boot: int = 1000,
                 seed: int = 0) -> float:
    """Standard error of ``stat(prompt_indices)`` over `num_boot` resamples of the P prompts with
    replacement (resamples where the statistic is NaN, e.g. one class empty, are skipped); NaN if
    fewer than 2 resamples gave a number."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(num_boot):
        v = stat(rng.integers(0, num_prompts, num_prompts))
        if v is not None and math.isfinite(v):
            vals.append(v)
    return float(np.std(vals, ddof=1)) if len(vals) >= 2 else float("nan")


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def pool_uncertainty(per_head: np.ndarray, gold: np.ndarray, per_head_std: np.ndarray | None = None,
                     num_boot: int = 1000, seed: int = 0) -> dict:
    """per_head (P, N, K) [+ per_head_std (P, N, K)], gold (P, N) -> the pool's metrics (JSON-ready;
    NaN -> None), each AUROC/Spearman with its bootstrap-over-prompts standard error:
    top_pick_auroc(_se), top_pick_num_bad, overscoring_auroc(_se), overscoring_spearman(_se),
    lcb_pick_gold_gain(_se), mean_std, num_prompts, samples_per_prompt, num_heads."""
    per_head = np.asarray(per_head, dtype=float)
    gold = np.asarray(gold, dtype=float)
    if per_head.ndim != 3 or gold.shape != per_head.shape[:2]:
        raise ValueError(f"per_head must be (P, N, K) and gold (P, N); got {per_head.shape} and {gold.shape}")
    proxy = per_head.mean(axis=2)
    std = text_std(per_head, per_head_std)
    P = proxy.shape[0]
    tp = top_pick_flags(proxy, gold, std)
    ov = overscoring(proxy, gold, std)
    out = {"num_prompts": P, "samples_per_prompt": int(proxy.shape[1]), "num_heads": int(per_head.shape[2]),
           "mean_std": float(std.mean()), "top_pick_num_bad": tp["num_bad"],
           "top_pick_auroc": _num(tp["auroc"]), "overscoring_auroc": _num(ov["auroc"]),
           "overscoring_spearman": _num(ov["spearman"]), "overscoring_auroc_proxy_baseline": _num(ov["auroc_proxy_baseline"]),
           "lcb_pick_gold_gain": lcb_pick_gain(proxy, gold, std)}
    if per_head.shape[2] > 1 or per_head_std is not None:
        out["top_pick_auroc_se"] = _num(bootstrap_se(lambda i: top_pick_flags(proxy[i], gold[i], std[i])["auroc"], P, num_boot, seed))
        ov_boot: dict = {}

        def ov_stat(i, key):
            k = tuple(i)
            if k not in ov_boot:
                ov_boot[k] = overscoring(proxy[i], gold[i], std[i])
            return ov_boot[k][key]

        out["overscoring_auroc_se"] = _num(bootstrap_se(lambda i: ov_stat(i, "auroc"), P, num_boot, seed))
        out["overscoring_spearman_se"] = _num(bootstrap_se(lambda i: ov_stat(i, "spearman"), P, num_boot, seed))
        out["lcb_pick_gold_gain_se"] = _num(bootstrap_se(lambda i: lcb_pick_gain(proxy[i], gold[i], std[i]), P, num_boot, seed))
    return out


def group_pool(prompts: list[str], values: np.ndarray) -> tuple[list[str], list[list[int]]]:
    """Rows of a flat pool -> (distinct prompts in first-seen order, row indices of each prompt).
    `values` (R, ...) is only checked for length."""
    if len(prompts) != len(values):
        raise ValueError(f"{len(prompts)} prompts but {len(values)} rows")
    order: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        order.setdefault(p, []).append(i)
    return list(order), list(order.values())


def flat_pool_uncertainty(prompts: list[str], per_head: np.ndarray, gold: np.ndarray,
                          per_head_std: np.ndarray | None = None, num_boot: int = 1000, seed: int = 0) -> dict:
    """A flat pool (R rows of prompt, per-head scores (R, K), gold (R,)) with several rows per prompt ->
    `pool_uncertainty` on the prompts' first N rows, N = the smallest number of rows a prompt has
    (prompts with one row are left out and counted in ``prompts_left_out``)."""
    per_head = np.asarray(per_head, dtype=float)
    gold = np.asarray(gold, dtype=float)
    names, groups = group_pool(prompts, per_head)
    kept = [g for g in groups if len(g) >= 2]
    if not kept:
        raise ValueError("a pool needs prompts with at least 2 responses each")
    N = min(len(g) for g in kept)
    idx = np.array([g[:N] for g in kept])  # (P, N)
    out = pool_uncertainty(per_head[idx], gold[idx], None if per_head_std is None else np.asarray(per_head_std)[idx],
                           num_boot, seed)
    out["prompts_left_out"] = len(groups) - len(kept)
    out["rows_left_out"] = int(len(prompts) - idx.size)
    return out


def step_overscoring(steps: list[int], kl: list[float], per_head: np.ndarray, gold: np.ndarray,
                     quantile: float = OVERSCORING_QUANTILE) -> list[dict]:
    """PPO evaluation samples (rows of `eval_samples.jsonl`): steps (R,), kl (R,), per_head (R, K), gold (R,).
    Per step, over that step's samples: over-scoring o = z(proxy mean) - z(gold), z over the step's
    samples; AUROC of the std for o above its `quantile`, Spearman(std, o), the z(proxy) baseline AUROC
    (`overscoring`), the mean KL, std and gold. With one head (K = 1) there is no spread: its AUROC and
    Spearman are None (left out of `pooled_policy_steps`), not the 0.5 of a constant std.
    Returns one dict per step in step order."""
    per_head = np.asarray(per_head, dtype=float)
    gold = np.asarray(gold, dtype=float)
    steps_a, kl_a = np.asarray(steps), np.asarray(kl, dtype=float)
    spread = per_head.shape[1] > 1  # one head: no spread to judge
    rows = []
    for s in sorted(set(steps_a.tolist())):
        m = steps_a == s
        proxy = per_head[m].mean(axis=1)[None, :]  # (1, n): one "prompt" = the whole step
        std = text_std(per_head[m])[None, :]
        g = gold[m][None, :]
        ov = overscoring(proxy, g, std, quantile)
        rows.append({"step": int(s), "num_samples": int(m.sum()), "kl": float(kl_a[m].mean()),
                     "mean_std": float(std.mean()), "gold": float(g.mean()), "proxy": float(proxy.mean()),
                     "overscoring_auroc": _num(ov["auroc"]) if spread else None,
                     "overscoring_spearman": _num(ov["spearman"]) if spread else None,
                     "overscoring_auroc_proxy_baseline": _num(ov["auroc_proxy_baseline"])})
    return rows


def read_pool(source: str, gold_given: bool) -> tuple[list[str], list[str], list[float] | None]:
    """A best-of-n pool for `rm eval --pool`: (prompts, responses, gold or None) of R rows.

    `source`: a JSONL/CSV/... file of `prompt`/`response` rows (several responses per prompt; an
    optional numeric `gold` per row, used when no --gold is given), or ``builtin:validation`` /
    ``builtin:test`` -- the built-in held-out prompts with their distinct fixture responses and
    their VADER gold. Bad rows name the file and row (`UserError`)."""
    if source.startswith("builtin:"):
        from robust_rlhf.data.preferences import load_preferences

        seen: dict[tuple[str, str], float] = {}
        for p in load_preferences(source):
            seen.setdefault((p.prompt, p.chosen), float(p.extra["gold_chosen"]))
            seen.setdefault((p.prompt, p.rejected), float(p.extra["gold_rejected"]))
        keys = sorted(seen, key=lambda k: k[0])
        return [k[0] for k in keys], [k[1] for k in keys], [seen[k] for k in keys]
    from robust_rlhf.data.preferences import load_scoring_inputs

    rows = load_scoring_inputs(source)
    gold = None
    if not gold_given:
        for i, r in enumerate(rows):
            g = r.get("gold")
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
                raise UserError(f"{source}: row {i + 1}: field 'gold': expected a number (or pass --gold to "
                                f"score the pool with a gold reward), got {g!r}")
        gold = [float(r["gold"]) for r in rows]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["prompt"]] = counts.get(r["prompt"], 0) + 1
    if max(counts.values()) < 2:
        raise UserError(f"{source}: a best-of-n pool needs several responses per prompt; every prompt has one")
    return [r["prompt"] for r in rows], [r["response"] for r in rows], gold


def evaluate_pool(model, prompts: list[str], responses: list[str], gold: list[float],
                  batch_size: int = 64, num_boot: int = 1000) -> dict:
    """Score a best-of-n pool (R rows, several per prompt) and measure uncertainty under shift
    (`robust_rlhf.reward.uncertainty.flat_pool_uncertainty`); keys prefixed ``pool/``."""
    out = model.score(prompts, responses, batch_size=batch_size)
    std = None if out.per_head_std is None else out.per_head_std.numpy()
    m = flat_pool_uncertainty(prompts, out.per_head.numpy(), np.asarray(gold, float), std, num_boot=num_boot)
    return {f"pool/{k}": v for k, v in m.items()}
