"""PNG figures of the theory checks (`robust-rlhf simulate`, docs/theory.md), drawn from the
results dict and arrays that `robust_rlhf.experiments.{bandit,kl_policies,scoring}` return.

Imports no simulation code; each `plot_*` writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from robust_rlhf.utils import atomic_write_bytes


def _new_figure(width: float, height: float):  # -> matplotlib Figure
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _two_hist(ax, a: np.ndarray, b: np.ndarray, edges: np.ndarray, label_a: str, label_b: str) -> None:
    ax.hist(a, bins=edges, alpha=0.55, color="tab:red", label=label_a)
    ax.hist(b, bins=edges, alpha=0.55, color="tab:blue", label=label_b)
    ax.set_ylabel("trials")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom so the legend does not cover the bars
    ax.legend(fontsize=8)


def plot_bandit(results: dict, arrays: dict, path: str | os.PathLike) -> Path:
    """Seed 002 Figs. 3-5 style histogram of the true returns of pi1 and pi2."""
    r = results
    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.asarray(r["histogram"]["bin_edges"])
    _two_hist(
        ax, arrays["returns_vanilla"], arrays["returns_variance_aware"], edges,
        f"π1 variance-unaware: mean {r['return_mean_vanilla']:.3f}, std {r['return_std_vanilla']:.3f}",
        f"π2 variance-aware: mean {r['return_mean_variance_aware']:.3f}, std {r['return_std_variance_aware']:.3f}",
    )
    ax.axvline(r["return_pi0"], color="k", ls="--", lw=1, label="π0ᵀr*")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("true return πᵀr*")
    title = r["preset"] or "custom"
    ax.set_title(
        f"Linear bandit ({title}): d={r['dim']}, λ∈[{r['lambda_min']:.3g}, {r['lambda_max']:.3g}], "
        f"ε={r['epsilon']:g}, {r['trials']} trials\n"
        f"P(π1ᵀr* ≤ π0ᵀr*) = {r['p_under_vanilla_empirical']:.3f} (theory {r['p_under_vanilla_theory']:.3f});  "
        f"P(π2ᵀr* ≤ π0ᵀr*) = {r['p_under_variance_aware_empirical']:.3f} (theory {r['p_under_variance_aware_theory']:.3f})",
        fontsize=9,
    )
    return _save_png(fig, Path(path))


def plot_softmax(results: dict, arrays: dict, path: str | os.PathLike) -> Path:
    """Return histograms (vanilla, Thm 3.6 as printed, Thm 3.6 exact) and regret histograms."""
    r = results
    fig = _new_figure(11.0, 4.2)
    ax1 = fig.add_subplot(1, 2, 1)
    edges = np.asarray(r["histogram"]["bin_edges"])
    _two_hist(
        ax1, arrays["returns_vanilla"], arrays["returns_variance_aware"], edges,
        f"π ∝ π0·exp(R̂/β): mean {r['return_mean_vanilla']:.3f}, std {r['return_std_vanilla']:.3f}",
        f"π ∝ π0·exp(R̂/(βσ²)) (Thm 3.6 as printed): mean {r['return_mean_variance_aware']:.3f}, std {r['return_std_variance_aware']:.3f}",
    )
    if "returns_variance_aware_exact" in arrays:
        ex = r["thm36_exact_vs_paper"]
        ax1.hist(arrays["returns_variance_aware_exact"], bins=edges, histtype="step", color="tab:green", lw=1.5,
                 label=f"Thm 3.6 exact (same β): mean {ex['return_mean_exact']:.3f}, KL {ex['kl_mean_exact']:.2f}")
    ax1.axvline(r["return_oracle"], color="k", ls="--", lw=1, label="oracle (true r*, same KL)")
    ax1.legend(fontsize=8)
    ax1.set_xlabel("true return πᵀr*")
    ax1.set_title(f"Theorem 3.6, K={r['n_actions']}, KL(π‖π0)={r['kl_target']:g} nats, {r['trials']} trials", fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2)
    reg_v, reg_va = arrays["regret_vanilla"], arrays["regret_variance_aware"]
    redges = np.linspace(min(reg_v.min(), reg_va.min()), max(reg_v.max(), reg_va.max()), 61)
    _two_hist(
        ax2, reg_v, reg_va, redges,
        f"vanilla: mean regret {r['regret_mean_vanilla']:.3f}",
        f"variance-aware: mean regret {r['regret_mean_variance_aware']:.3f}",
    )
    ax2.set_xlabel("regret = oracle return − πᵀr*")
    ax2.set_title(f"variance-aware better in {100 * r['p_variance_aware_beats_vanilla']:.1f}% of trials", fontsize=9)
    return _save_png(fig, Path(path))


def plot_scoring(results: dict, arrays: dict, path: str | os.PathLike) -> Path:
    """Over- vs under-scoring loss against beta and against the fraction perturbed."""
    r = results
    fig = _new_figure(11.0, 4.2)
    ax1 = fig.add_subplot(1, 2, 1)
    sb = r["sweep_beta"]
    ax1.plot(sb["beta"], sb["loss_mean_over"], "o-", color="tab:red", ms=3, label=f"over-scoring (+{r['delta']:g})")
    ax1.plot(sb["beta"], sb["loss_mean_under"], "o-", color="tab:blue", ms=3, label=f"under-scoring (−{r['delta']:g})")
    ax1.axvline(r["beta"], color="k", ls=":", lw=1)
    ax1.set_xscale("log")
    ax1.invert_xaxis()
    ax1.set_xlabel("β (KL coefficient; right = stronger optimisation)")
    ax1.set_ylabel("true-return loss vs policy on true reward")
    ax1.set_title(f"{r['n_perturbed']}/{r['n_actions']} actions perturbed, {r['trials']} trials", fontsize=9)
    ax1.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    sf = r["sweep_fraction"]
    ax2.plot(sf["fraction"], sf["loss_mean_over"], "o-", color="tab:red", ms=3, label="over-scoring")
    ax2.plot(sf["fraction"], sf["loss_mean_under"], "o-", color="tab:blue", ms=3, label="under-scoring")
    ax2.axvline(r["fraction"], color="k", ls=":", lw=1)
    ax2.set_xlabel("fraction of actions perturbed")
    ax2.set_title(f"β={r['beta']:g}, δ={r['delta']:g}: {r['verdict']}", fontsize=9)
    ax2.legend(fontsize=8)
    return _save_png(fig, Path(path))
