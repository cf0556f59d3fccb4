"""Figures of a reward-model evaluation (`rm eval`, the lab's reward-model units): metrics.json
and PNGs drawn from the metrics and arrays `robust_rlhf.reward.evaluate.evaluate_rewards` returns.
Imports no model code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robust_rlhf.reward.evaluate import error_rate_by_bin
from robust_rlhf.utils import atomic_write_json, save_figure, write_errors

__all__ = ["write_eval_report"]


def write_eval_report(metrics: dict, arrays: dict, output_dir: str | Path) -> list[Path]:
    """metrics.json + PNGs. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    with write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json"]
    atomic_write_json(out / "metrics.json", metrics)

    def save(fig, name: str) -> None:
        written.append(save_figure(fig, out / name, dpi=110))  # atomic; a refused write is one line

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
    # Reliability of the uncertainty: misranked rate per equal-count bin of u (and of -|margin|,
    # the baseline), the gold error per bin of the per-text std when a gold was given, calibration.
    gold_panel = arrays.get("text_uncertainty") is not None
    fig, axes = plt.subplots(1, 3 if gold_panel else 2, figsize=(13.5 if gold_panel else 9, 3.5))
    ax = axes[0]
    u, mis = arrays["pair_uncertainty"], arrays["misranked"]
    x = np.arange(1, 6)
    if u is not None:
        _, rates, _ = error_rate_by_bin(u, mis, 5)
        ax.plot(x[: len(rates)], rates, marker="o", label=f"pair uncertainty (AUROC {metrics['uncertainty/auroc_misranked']:.2f})")
    _, rates, _ = error_rate_by_bin(-np.abs(arrays["margin"]), mis, 5)
    ax.plot(x[: len(rates)], rates, marker="s", ls="--", color="gray",
            label=f"−|margin| baseline (AUROC {metrics['uncertainty/auroc_misranked_small_margin']:.2f})")
    ax.axhline(float(np.mean(mis)), color="black", lw=0.8, ls=":", label="overall")
    ax.set_xticks(x, ["most\ncertain", "2", "3", "4", "least\ncertain"])
    ax.set_ylabel("misranked rate")
    ax.set_title("error rate per uncertainty quintile")
    ax.legend(fontsize=7)
    if gold_panel:
        ts, err = arrays["text_uncertainty"], arrays["gold_abs_error"]
        centres, mean_err, _ = error_rate_by_bin(ts, err, 5)  # mean |error| per std quintile
        axes[1].plot(centres, mean_err, marker="o")
        axes[1].set_xlabel("per-text std (quintile means)")
        axes[1].set_ylabel("|gold − matched reward|")
        axes[1].set_title(f"gold error vs std (AUROC large err {metrics['uncertainty/auroc_gold_abs_error']:.2f})")
    _reliability(axes[-1], arrays["prob"], arrays["prob_correct"], metrics["expected_calibration_error"])
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
