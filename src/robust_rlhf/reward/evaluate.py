"""Reward-model evaluation: accuracy (per head, of the mean, of each aggregator, per subset,
with Wilson 95 % intervals, beside a length-only baseline), ensemble variance (seed 002
Figure 6: per-sample variance across heads of chosen rewards and of chosen - rejected
differences), whether uncertainty is informative (AUROC of the ensemble std for predicting a
misranked pair; accuracy on the most- vs least-certain quartile; calibration error),
hidden-state-norm dispersion (seed 001) and reward-scale statistics.

`evaluate_reward_model(model, pairs)` -> metrics dict; `write_eval_report(metrics, arrays, dir)`
writes metrics.json and PNG plots.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from robust_rlhf.data.preferences import PreferencePair
from robust_rlhf.reward.output import RewardOutput
from robust_rlhf.utils import atomic_write_json


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


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (1 = positive), ties counted
    half (the Mann-Whitney U statistic / (n_pos n_neg)). NaN when a class is empty."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
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
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


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
                     head_weight: torch.Tensor | None = None, head_stats: dict | None = None) -> tuple[dict, dict]:
    """Metrics from scored pairs. Returns (metrics, arrays-for-plots)."""
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
        # Is uncertainty informative? Uncertainty of a pair = std across heads of the margin.
        u = diff.std.numpy()
        if chosen.per_head_std is not None:  # BRME: add the heads' own predicted std
            u = u + np.sqrt((chosen.per_head_std**2 + rejected.per_head_std**2).mean(1).numpy())
        misranked = ~correct_mean.numpy()
        metrics["uncertainty_auroc_misranked"] = auroc(u, misranked)
        q = max(1, n // 4)
        order = np.argsort(u, kind="mergesort")
        metrics["accuracy_most_certain_quartile"] = float(correct_mean.numpy()[order[:q]].mean())
        metrics["accuracy_least_certain_quartile"] = float(correct_mean.numpy()[order[-q:]].mean())
        arrays["uncertainty"] = u
    else:
        metrics["uncertainty_auroc_misranked"] = None
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
        h = torch.cat([feats_chosen, feats_rejected]).double()
        norms = h.norm(dim=1)
        d = (feats_chosen - feats_rejected).double().norm(dim=1)
        metrics["hidden_state"] = {
            "norm_mean": float(norms.mean()), "norm_std": float(norms.std()),
            "norm_dispersion": float(norms.std() / norms.mean()),
            "diff_norm_mean": float(d.mean()), "diff_norm_std": float(d.std()),
            "effective_rank": effective_rank(h),
        }
        arrays["hidden_norms"] = norms.numpy()
    if head_weight is not None:
        metrics["head_weight_norms"] = head_weight[:K].norm(dim=1).tolist()
    return metrics, arrays


def evaluate_reward_model(model, pairs: Sequence[PreferencePair], batch_size: int = 64) -> tuple[dict, dict]:
    prompts = [p.prompt for p in pairs]
    chosen, fc = model.score(prompts, [p.chosen for p in pairs], batch_size=batch_size, return_features=True)
    rejected, fr = model.score(prompts, [p.rejected for p in pairs], batch_size=batch_size, return_features=True)
    metrics, arrays = evaluate_rewards(chosen, rejected, pairs, fc, fr, model.heads.linear.weight.detach().cpu(),
                                       model.config.head_stats)
    metrics["truncated_texts"] = model.truncated_count
    return metrics, arrays


def write_eval_report(metrics: dict, arrays: dict, output_dir: str | Path) -> list[Path]:
    """metrics.json + PNGs. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json"]
    atomic_write_json(out / "metrics.json", metrics)

    def save(fig, name: str) -> None:
        path = out / name
        tmp = out / f".{name}.tmp.png"
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)

    K = metrics["num_heads"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"h{k}" for k in range(K)] + list(metrics["accuracy_by_aggregator"])
    values = metrics["accuracy_per_head"] + list(metrics["accuracy_by_aggregator"].values())
    ax.bar(range(len(values)), values, color=["#7aa6c2"] * K + ["#d08c60"] * (len(values) - K))
    ax.axhline(metrics["length_baseline_accuracy"], color="gray", ls="--", label="length-only baseline")
    ax.set_xticks(range(len(values)), labels, rotation=60, fontsize=8)
    ax.set_ylim(max(0.0, min(values + [metrics["length_baseline_accuracy"]]) - 0.1), 1.0)
    ax.set_ylabel("pairwise accuracy")
    ax.set_title(f"Accuracy per head and per aggregator (n = {metrics['num_pairs']})")
    ax.legend(fontsize=8)
    save(fig, "accuracy.png")
    if K > 1:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        axes[0].hist(arrays["chosen_var"], bins=40, color="#4c72b0")
        axes[0].set_title("variance across heads: chosen reward")
        axes[1].hist(arrays["diff_var"], bins=40, color="#c44e52")
        axes[1].set_title("variance across heads: chosen − rejected")
        for a in axes:
            a.set_xlabel("per-sample variance")
            a.set_ylabel("pairs")
        save(fig, "variance_histograms.png")
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        u, correct = arrays["uncertainty"], arrays["correct"]
        qs = np.quantile(u, np.linspace(0, 1, 6))
        accs = [correct[(u >= lo) & (u <= hi)].mean() if ((u >= lo) & (u <= hi)).any() else np.nan
                for lo, hi in zip(qs[:-1], qs[1:])]
        axes[0].bar(range(5), accs, color="#55a868")
        axes[0].set_xticks(range(5), ["most\ncertain", "2", "3", "4", "least\ncertain"])
        axes[0].set_ylabel("accuracy")
        axes[0].set_title(f"accuracy by uncertainty quintile (AUROC {metrics['uncertainty_auroc_misranked']:.2f})")
        _reliability(axes[1], arrays["prob"], arrays["prob_correct"], metrics["expected_calibration_error"])
        save(fig, "uncertainty.png")
    else:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        _reliability(ax, arrays["prob"], arrays["prob_correct"], metrics["expected_calibration_error"])
        save(fig, "uncertainty.png")
    if "hidden_norms" in arrays:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(arrays["hidden_norms"], bins=40, color="#8172b2")
        hs = metrics["hidden_state"]
        ax.set_title(f"‖h(x, y)‖  (std/mean = {hs['norm_dispersion']:.3f})")
        ax.set_xlabel("norm of the pooled hidden state")
        save(fig, "hidden_state_norms.png")
    return written


def _reliability(ax, prob, correct, ece: float) -> None:
    edges = np.linspace(0.5, 1.0, 6)
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (prob >= lo) & (prob <= hi)
        if m.any():
            xs.append(prob[m].mean())
            ys.append(correct[m].mean())
    ax.plot([0.5, 1], [0.5, 1], color="gray", ls="--")
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel("BT probability of the predicted winner")
    ax.set_ylabel("observed accuracy")
    ax.set_title(f"calibration (ECE {ece:.3f})")
