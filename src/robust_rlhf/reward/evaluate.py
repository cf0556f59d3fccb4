"""Reward-model evaluation: accuracy (per head, of the mean, of each aggregator, per subset,
with Wilson 95 % intervals, beside a length-only baseline), ensemble variance (seed 002
Figure 6: per-sample variance across heads of chosen rewards and of chosen - rejected
differences), whether uncertainty is informative (`uncertainty_quality`: AUROC of the pair
uncertainty for misranked pairs beside the AUROC of -|margin|, error rate per uncertainty bin,
with a gold reward the AUROC of the per-text std for large gold errors; accuracy on the most-
vs least-certain quartile; calibration error),
hidden-state-norm dispersion (seed 001) and reward-scale statistics.

`evaluate_reward_model(model, pairs)` -> (metrics dict, arrays); the figures and metrics.json are
written by `robust_rlhf.report.reward_eval.write_eval_report`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from robust_rlhf.data.preferences import PreferencePair
from robust_rlhf.reward.output import RewardOutput


# ---- pure statistics (unit-tested against independent computations) ---------------------
def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (centre - half, centre + half)


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of `scores`, ties given the average of their ranks."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (1 = positive), ties counted
    half (the Mann-Whitney U statistic / (n_pos n_neg)). NaN when a class is empty."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if either is constant."""
    rx, ry = _average_ranks(np.asarray(x, float)), _average_ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def pair_uncertainty(chosen: RewardOutput, rejected: RewardOutput) -> np.ndarray | None:
    """(B,) uncertainty of each pair's margin: the std of the margin d = r_c - r_r under the
    equal-weight mixture of the K heads, by the law of total variance

        u = sqrt( var_k(d_k) + mean_k(s_c,k^2 + s_r,k^2) ),   d_k = mu_c,k - mu_r,k,

    var_k over heads with divisor K (the mixture's variance); the second term is present only
    for Gaussian (BRME) heads, whose learned s enters this way. None for a single point head."""
    d = (chosen.per_head - rejected.per_head).double()
    var = d.var(dim=1, unbiased=False)
    if chosen.per_head_std is not None and rejected.per_head_std is not None:
        var = var + (chosen.per_head_std.double() ** 2 + rejected.per_head_std.double() ** 2).mean(dim=1)
    elif chosen.num_heads == 1:
        return None
    return var.sqrt().numpy()


def text_uncertainty(output: RewardOutput) -> np.ndarray | None:
    """(B,) std of one text's reward under the mixture of the K heads:
    sqrt(var_k(mu_k) + mean_k(s_k^2)) (divisor K; s only for Gaussian heads). None for K = 1 point heads."""
    var = output.per_head.double().var(dim=1, unbiased=False)
    if output.per_head_std is not None:
        var = var + (output.per_head_std.double() ** 2).mean(dim=1)
    elif output.num_heads == 1:
        return None
    return var.sqrt().numpy()


def error_rate_by_bin(scores: np.ndarray, errors: np.ndarray, bins: int = 5) -> tuple[list[float], list[float], list[int]]:
    """Reliability table: sort by `scores`, cut into `bins` groups of (nearly) equal size
    (np.array_split of the sorted order; ties broken by position), and return per group the mean
    score, the error rate (mean of 0/1 `errors`; of any values, their mean) and the count.
    Empty groups are dropped."""
    scores, errors = np.asarray(scores, float), np.asarray(errors, float)
    order = np.argsort(scores, kind="mergesort")
    centres, rates, counts = [], [], []
    for g in np.array_split(order, bins):
        if len(g):
            centres.append(float(scores[g].mean()))
            rates.append(float(errors[g].mean()))
            counts.append(int(len(g)))
    return centres, rates, counts


def affine_match(reward: np.ndarray, gold: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares a, b of gold ~= a * reward + b (reward scales are arbitrary), and the
    (N,) absolute errors |gold - (a reward + b)|. A constant reward gets a = 0, b = mean(gold)."""
    reward, gold = np.asarray(reward, float), np.asarray(gold, float)
    rc = reward - reward.mean()
    denom = (rc**2).sum()
    a = float((rc * (gold - gold.mean())).sum() / denom) if denom > 0 else 0.0
    b = float(gold.mean() - a * reward.mean())
    return a, b, np.abs(gold - (a * reward + b))


def uncertainty_quality(chosen: RewardOutput, rejected: RewardOutput, gold_chosen: np.ndarray | None = None,
                        gold_rejected: np.ndarray | None = None, bins: int = 5,
                        large_error_quantile: float = 0.75) -> tuple[dict, dict]:
    """Does the model's uncertainty predict its mistakes? Returns (metrics under `uncertainty/`,
    arrays for plots). With the pair uncertainty u (`pair_uncertainty`) and the mean margin m:

    * auroc_misranked: AUROC of u for misranked pairs (m <= 0); 0.5 = chance, null without u;
    * auroc_misranked_small_margin: AUROC of -|m| -- the honest baseline: small margins also
      predict mistakes, so u is informative *beyond the margin* only if it beats this or
      auroc_misranked_margin_over_uncertainty (AUROC of -|m|/u) does;
    * auroc_misranked_head_disagreement: AUROC of the heads' std of the margin alone (K > 1);
    * Gaussian heads: per_head_mean_std (mean learned s per head, over chosen and rejected
      texts), auroc_misranked_learned_std (AUROC of sqrt(mean_k(s_c^2 + s_r^2))) and
      auroc_misranked_per_head_std (head k's sqrt(s_c^2 + s_r^2) for head k's misranked pairs);
    * misranked_rate_by_uncertainty_bin / _by_small_margin_bin: error rate per equal-count bin;
    * with gold rewards of the chosen and rejected texts: the mean reward of all 2B texts is
      matched to gold affinely (least squares), and auroc_gold_abs_error is the AUROC of the
      per-text std (`text_uncertainty`) for a large absolute error (above its
      `large_error_quantile`), with spearman_std_gold_abs_error beside it."""
    m = (chosen.mean - rejected.mean).double().numpy()
    mis = m <= 0
    u = pair_uncertainty(chosen, rejected)
    q = "uncertainty/"
    metrics: dict = {
        q + "pair_definition": "sqrt(var_k(mu_c,k - mu_r,k) + mean_k(s_c,k^2 + s_r,k^2)), divisor K; s only for Gaussian heads",
        q + "misranked_rate": float(mis.mean()),
        q + "auroc_misranked": auroc(u, mis) if u is not None else None,
        q + "auroc_misranked_small_margin": auroc(-np.abs(m), mis),
        q + "auroc_misranked_margin_over_uncertainty": auroc(-np.abs(m) / np.maximum(u, 1e-12), mis) if u is not None else None,
    }
    arrays: dict = {"pair_uncertainty": u, "margin": m, "misranked": mis}
    _, rates, _ = error_rate_by_bin(-np.abs(m), mis, bins)
    metrics[q + "misranked_rate_by_small_margin_bin"] = rates
    if u is not None:
        _, rates, counts = error_rate_by_bin(u, mis, bins)
        metrics[q + "misranked_rate_by_uncertainty_bin"] = rates
        metrics[q + "bin_counts"] = counts
    if chosen.num_heads > 1:
        metrics[q + "auroc_misranked_head_disagreement"] = auroc(
            (chosen.per_head - rejected.per_head).double().std(dim=1).numpy(), mis)
    if chosen.per_head_std is not None and rejected.per_head_std is not None:
        sc, sr = chosen.per_head_std.double(), rejected.per_head_std.double()
        metrics[q + "per_head_mean_std"] = torch.cat([sc, sr]).mean(dim=0).tolist()
        metrics[q + "auroc_misranked_learned_std"] = auroc((sc**2 + sr**2).mean(dim=1).sqrt().numpy(), mis)
        dk = (chosen.per_head - rejected.per_head).numpy()
        metrics[q + "auroc_misranked_per_head_std"] = [
            auroc((sc[:, k] ** 2 + sr[:, k] ** 2).sqrt().numpy(), dk[:, k] <= 0) for k in range(chosen.num_heads)]
    if gold_chosen is not None and gold_rejected is not None:
        reward = torch.cat([chosen.mean, rejected.mean]).double().numpy()
        gold = np.concatenate([np.asarray(gold_chosen, float), np.asarray(gold_rejected, float)])
        a, b, err = affine_match(reward, gold)
        large = err > np.quantile(err, large_error_quantile)
        metrics[q + "gold_affine_fit"] = {"a": a, "b": b, "mean_abs_error": float(err.mean())}
        metrics[q + "gold_large_error_quantile"] = large_error_quantile
        ts = None
        if u is not None:
            ts = np.concatenate([text_uncertainty(chosen), text_uncertainty(rejected)])
        metrics[q + "auroc_gold_abs_error"] = auroc(ts, large) if ts is not None else None
        metrics[q + "spearman_std_gold_abs_error"] = spearman(ts, err) if ts is not None else None
        arrays.update(gold_abs_error=err, text_uncertainty=ts)
    return metrics, arrays


def expected_calibration_error(prob: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE of predicted probabilities `prob` (of the predicted class, in [0.5, 1]) against
    0/1 `correct`, equal-width bins over [0, 1]."""
    prob, correct = np.asarray(prob, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (prob > lo) & (prob <= hi) if lo > 0 else (prob >= lo) & (prob <= hi)
        if m.any():
            ece += m.mean() * abs(prob[m].mean() - correct[m].mean())
    return float(ece)


def effective_rank(matrix: torch.Tensor) -> float:
    """exp(-sum p_i log p_i), p_i = s_i / sum s_j over singular values (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals(matrix.double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def hidden_state_stats(feats_chosen: torch.Tensor, feats_rejected: torch.Tensor) -> dict:
    """Seed 001's hidden-state statistics of pooled features (N, H) of chosen and rejected texts:
    mean/std of ||h|| over all 2N texts, norm_dispersion = std/mean, mean/std of ||h_c - h_r||,
    and the effective rank of the (2N, H) feature matrix. Stds use divisor n - 1."""
    h = torch.cat([feats_chosen, feats_rejected]).double()
    norms = h.norm(dim=1)
    d = (feats_chosen - feats_rejected).double().norm(dim=1)
    return {"norm_mean": float(norms.mean()), "norm_std": float(norms.std()),
            "norm_dispersion": float(norms.std() / norms.mean()),
            "diff_norm_mean": float(d.mean()), "diff_norm_std": float(d.std()), "effective_rank": effective_rank(h)}


def _aggregators_for(output: RewardOutput) -> list[str]:
    """Aggregators that mean something for this output (all collapse to the reward when K = 1)."""
    if output.num_heads == 1:
        return []
    names = ["mean", "min", "uwo", "lcb", "median"]
    if output.per_head_std is not None:
        names += ["brme_nominal", "brme_tradeoff"]
    return names


def _accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    return float((chosen > rejected).double().mean())


# ---- evaluation -------------------------------------------------------------------------
def evaluate_rewards(chosen: RewardOutput, rejected: RewardOutput, pairs: Sequence[PreferencePair],
                     feats_chosen: torch.Tensor | None = None, feats_rejected: torch.Tensor | None = None,
                     head_weight: torch.Tensor | None = None, head_stats: dict | None = None,
                     gold_chosen: np.ndarray | None = None, gold_rejected: np.ndarray | None = None) -> tuple[dict, dict]:
    """Metrics from scored pairs (optionally with gold rewards of the chosen and rejected texts,
    for `uncertainty/auroc_gold_abs_error`). Returns (metrics, arrays-for-plots)."""
    from robust_rlhf.aggregate import AggregatorConfig, aggregate

    n, K = chosen.per_head.shape
    correct_mean = chosen.mean > rejected.mean
    lo, hi = wilson_interval(int(correct_mean.sum()), n)
    metrics: dict = {
        "num_pairs": n,
        "num_heads": K,
        "accuracy": float(correct_mean.double().mean()),
        "accuracy_ci95": [lo, hi],
        "accuracy_per_head": [_accuracy(chosen.per_head[:, k], rejected.per_head[:, k]) for k in range(K)],
    }
    length_correct = np.array([len(p.chosen) > len(p.rejected) for p in pairs])
    length_ties = np.array([len(p.chosen) == len(p.rejected) for p in pairs])
    metrics["length_baseline_accuracy"] = float((length_correct + 0.5 * length_ties).mean())
    metrics["accuracy_by_aggregator"] = {}
    for name in _aggregators_for(chosen):
        c = aggregate(chosen, AggregatorConfig(name=name))
        r = aggregate(rejected, AggregatorConfig(name=name))
        metrics["accuracy_by_aggregator"][name] = _accuracy(c, r)
    # Per-subset accuracy (RewardBench style) with intervals and the length baseline.
    subsets: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        if p.subset is not None:
            subsets[p.subset].append(i)
    if subsets:
        metrics["accuracy_per_subset"] = {}
        for name, idx in sorted(subsets.items()):
            t = torch.tensor(idx)
            k_correct = int(correct_mean[t].sum())
            metrics["accuracy_per_subset"][name] = {
                "num_pairs": len(idx), "accuracy": k_correct / len(idx),
                "accuracy_ci95": list(wilson_interval(k_correct, len(idx))),
                "length_baseline_accuracy": float((length_correct[idx] + 0.5 * length_ties[idx]).mean()),
            }
    # Ensemble variance (seed 002 Fig. 6).
    diff = RewardOutput(chosen.per_head - rejected.per_head)
    arrays = {"chosen_var": chosen.var.numpy(), "diff_var": diff.var.numpy(),
              "margin": (chosen.mean - rejected.mean).numpy(), "correct": correct_mean.numpy()}
    if K > 1:
        for key, v in (("chosen_reward_variance", chosen.var), ("difference_variance", diff.var)):
            v = v.numpy()
            metrics[key] = {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
                            "max": float(v.max())}
    # Is uncertainty informative? (`uncertainty_quality`)
    uq, uarrays = uncertainty_quality(chosen, rejected, gold_chosen, gold_rejected)
    metrics.update(uq)
    arrays.update(uarrays)
    u = uarrays["pair_uncertainty"]
    if u is not None:
        q = max(1, n // 4)
        order = np.argsort(u, kind="mergesort")
        metrics["accuracy_most_certain_quartile"] = float(correct_mean.numpy()[order[:q]].mean())
        metrics["accuracy_least_certain_quartile"] = float(correct_mean.numpy()[order[-q:]].mean())
    margin = arrays["margin"]
    prob = 1 / (1 + np.exp(-np.abs(margin)))  # BT probability of the predicted winner
    metrics["expected_calibration_error"] = expected_calibration_error(prob, margin > 0)
    arrays["prob"], arrays["prob_correct"] = prob, margin > 0
    # Reward scale.
    all_r = torch.cat([chosen.per_head, rejected.per_head])
    metrics["reward_scale"] = {"mean": float(all_r.mean()), "std": float(all_r.std()), "max_abs": float(all_r.abs().max()),
                               "per_head_mean": all_r.mean(0).tolist(), "per_head_std": all_r.std(0).tolist()}
    if head_stats and head_stats.get("mean") and K > 1:
        norm_mean = torch.tensor(head_stats["mean"]), torch.tensor(head_stats["std"])
        for name in ("min", "uwo", "lcb"):
            cfg = AggregatorConfig(name=name, normalize=True)
            metrics["accuracy_by_aggregator"][f"{name}_normalized"] = _accuracy(
                aggregate(chosen, cfg, head_stats=norm_mean), aggregate(rejected, cfg, head_stats=norm_mean))
    # Hidden-state norms (seed 001).
    if feats_chosen is not None and feats_rejected is not None:
        metrics["hidden_state"] = hidden_state_stats(feats_chosen, feats_rejected)
        arrays["hidden_norms"] = torch.cat([feats_chosen, feats_rejected]).double().norm(dim=1).numpy()
    if head_weight is not None:
        metrics["head_weight_norms"] = head_weight[:K].norm(dim=1).tolist()
    return metrics, arrays


def evaluate_reward_model(model, pairs: Sequence[PreferencePair], batch_size: int = 64,
                          gold=None) -> tuple[dict, dict]:
    """Score `pairs` with `model` and evaluate; `gold` is an optional gold reward
    `(prompts, responses) -> list[float]` (robust_rlhf.gold.load_gold) for the gold-error metrics."""
    prompts = [p.prompt for p in pairs]
    chosen, fc = model.score(prompts, [p.chosen for p in pairs], batch_size=batch_size, return_features=True)
    rejected, fr = model.score(prompts, [p.rejected for p in pairs], batch_size=batch_size, return_features=True)
    gc = gr = None
    if gold is not None:
        gc = np.asarray(gold(prompts, [p.chosen for p in pairs]), float)
        gr = np.asarray(gold(prompts, [p.rejected for p in pairs]), float)
    linear = getattr(getattr(model, "heads", None), "linear", None)  # a deep ensemble has no shared heads
    metrics, arrays = evaluate_rewards(chosen, rejected, pairs, fc, fr,
                                       None if linear is None else linear.weight.detach().cpu(),
                                       model.config.head_stats, gc, gr)
    if gold is not None:
        metrics["gold"] = getattr(gold, "name", str(gold))
    metrics["truncated_texts"] = model.truncated_count
    return metrics, arrays
