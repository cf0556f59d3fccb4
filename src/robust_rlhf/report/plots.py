"""PNG plots of an over-optimisation experiment, drawn from its ``results.json`` only.

Imports no training code: every function takes the results dict (as written by
`robust_rlhf.experiments.overopt`) and a folder, and returns the paths it wrote.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig, path: Path) -> Path:
    from robust_rlhf.utils import save_figure

    return save_figure(fig, path, dpi=100)  # atomic; a refused write is one line naming the file


def _gao(fit: dict, d: np.ndarray) -> np.ndarray:
    """R(d) of a stored fit (same formulas as experiments.fits.GaoFit.predict)."""
    if fit["form"] == "bon":
        return fit["alpha"] * d - fit["beta"] * d**2
    safe = np.where(d > 0, d, 1.0)
    return fit["alpha"] * d - fit["beta"] * np.where(d > 0, d * np.log(safe), 0.0)


def _main_methods(results: dict) -> list[str]:
    return [n for n, v in results["methods"].items() if v["study"] == "main"]


def plot_curves(results: dict, out: Path) -> list[Path]:
    """One panel per main method: gold (solid, left axis) and proxy (dashed, right axis)
    against d = sqrt(KL), every policy a thin line, the Gao fit thick; plus an overlay of
    every method's gold curve and fit."""
    plt = _plt()
    names = _main_methods(results)
    ref = results["reference"]["final_gold"]["mean"]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for i, name in enumerate(names):
        v = results["methods"][name]
        ax = axes.flat[i]
        ax2 = ax.twinx()
        dmax = 0.0
        for r in v["runs"]:
            c = r["curve"]
            ax.plot(c["d"], c["gold"], color=COLORS[0], alpha=0.45, lw=1, marker="o", ms=2.5)
            proxy = [p if p is not None else np.nan for p in c["proxy"]]
            ax2.plot(c["d"], proxy, color=COLORS[1], alpha=0.45, lw=1, ls="--")
            dmax = max(dmax, max(c["d"]))
        if v.get("gold_fit") and dmax > 0:
            dd = np.linspace(0, dmax * 1.05, 80)
            ax.plot(dd, ref + _gao(v["gold_fit"], dd), color="black", lw=2,
                    label=f"Gao fit ({'d(α−βd)' if v['gold_fit']['form'] == 'bon' else 'd(α−β log d)'})")
            ax.legend(fontsize=7, loc="lower left")
        ax.set_title(f"{name} ({v['type']}, {v['num_policies']} policies)", fontsize=9)
        ax.set_xlabel("d = sqrt(KL)")
        ax.set_ylabel("gold reward", color=COLORS[0])
        ax2.set_ylabel("proxy reward", color=COLORS[1])
    paths = [_save(fig, out / "curves_per_method.png")]

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, name in enumerate(names):
        v = results["methods"][name]
        color = COLORS[i % len(COLORS)]
        dmax = 0.0
        for j, r in enumerate(v["runs"]):
            c = r["curve"]
            ax.plot(c["d"], c["gold"], color=color, alpha=0.3, lw=1, marker="o", ms=2,
                    label=None if (j or v.get("gold_fit")) else name)
            dmax = max(dmax, max(c["d"]))
        if v.get("gold_fit") and dmax > 0:
            dd = np.linspace(0, dmax, 80)
            ax.plot(dd, ref + _gao(v["gold_fit"], dd), color=color, lw=2.2, label=f"{name} (fit)")
    ax.axhline(ref, color="gray", ls=":", lw=1, label="reference policy")
    d_star = results.get("comparison", {}).get("d_star")
    if d_star:
        ax.axvline(d_star, color="gray", ls="--", lw=1, label=f"d* (matched KL {d_star**2:.2f})")
    ax.set_xlabel("d = sqrt(KL(π‖π0))")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("Gold reward against sqrt(KL): every policy, with Gao fits")
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "gold_vs_sqrt_kl.png"))
    return paths


def plot_final_gold(results: dict, out: Path) -> list[Path]:
    """Distribution of the final gold reward over policies, per method, reference included
    (seed 002's mean / variance comparison): violins where there are >= 3 policies, points always."""
    plt = _plt()
    names = _main_methods(results)
    groups = [("reference", list(results["reference"]["per_seed"].values()))]
    groups += [(n, [r["final_gold"] for r in results["methods"][n]["runs"]]) for n in names]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(groups)), 4))
    for i, (name, vals) in enumerate(groups):
        color = "#999999" if name == "reference" else COLORS[(i - 1) % len(COLORS)]
        if len(vals) >= 3 and np.std(vals) > 0:
            parts = ax.violinplot([vals], positions=[i], widths=0.8, showextrema=False)
            for b in parts["bodies"]:
                b.set_facecolor(color)
                b.set_alpha(0.35)
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(vals))
        ax.scatter(i + jitter, vals, color=color, s=18, zorder=3)
        ax.errorbar(i + 0.3, np.mean(vals), yerr=np.std(vals, ddof=1) if len(vals) > 1 else 0, fmt="D",
                    color="black", ms=4, capsize=3)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("final gold reward")
    ax.set_title("Final gold reward of every policy (◆ mean ± std)")
    return [_save(fig, out / "final_gold_distribution.png")]


def plot_lambda_sweep(results: dict, out: Path) -> list[Path]:
    if "lambda_sweep" not in results:
        return []
    plt = _plt()
    rows = results["lambda_sweep"]["rows"]
    lam = [r["lam"] for r in rows]
    mean = np.array([r["final_gold"]["mean"] for r in rows])
    lo = np.array([r["final_gold"]["ci_low"] if r["final_gold"]["ci_low"] is not None else r["final_gold"]["mean"] for r in rows])
    hi = np.array([r["final_gold"]["ci_high"] if r["final_gold"]["ci_high"] is not None else r["final_gold"]["mean"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.errorbar(lam, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, color=COLORS[2])
    ax.axhline(results["reference"]["final_gold"]["mean"], color="gray", ls=":", label="reference policy")
    ax.set_xlabel("λ  (reward = λ·r_nominal + (1−λ)·min_k μ_k)")
    ax.set_ylabel("final gold reward")
    ax.set_title(f"BRME λ sweep ({results['lambda_sweep']['base']})")
    ax.legend(fontsize=8)
    return [_save(fig, out / "lambda_sweep.png")]


def plot_perturbation(results: dict, out: Path) -> list[Path]:
    if "perturbation" not in results:
        return []
    plt = _plt()
    rows = results["perturbation"]["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, r in enumerate(rows):
        vals = [x["final_gold"] for x in results["methods"][r["method"]]["runs"]]
        ax.bar(i, np.mean(vals), color=COLORS[i], alpha=0.6)
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(rows)), [f"{r['mode']}" for r in rows])
    ax.set_ylabel("final gold reward")
    pt = results["perturbation"]
    ax.set_title(f"Over- vs under-scoring (±{pt['size']:g} on {pt['fraction']:.0%} of samples)")
    return [_save(fig, out / "perturbation.png")]


def plot_rm_variance(results: dict, out: Path) -> list[Path]:
    """Seed 002's histograms: per-sample variance across heads of the chosen reward and of the
    chosen - rejected difference, on the test pairs, for every ensemble reward model."""
    plt = _plt()
    paths = []
    for name, rm in results["reward_models"].items():
        arr = rm.get("variance_arrays") or {}
        if rm["num_heads"] < 2 or not arr.get("chosen_var"):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.2))
        axes[0].hist(arr["chosen_var"], bins=30, color=COLORS[0])
        axes[0].set_title(f"{name}: variance across heads, chosen reward", fontsize=9)
        axes[1].hist(arr["diff_var"], bins=30, color=COLORS[3])
        axes[1].set_title(f"{name}: variance across heads, chosen − rejected", fontsize=9)
        for a in axes:
            a.set_xlabel("per-sample variance")
            a.set_ylabel("test pairs")
        paths.append(_save(fig, out / f"rm_variance_{safe_name(name)}.png"))
    return paths


def plot_early_warning(results: dict, out: Path) -> list[Path]:
    """Per method with an ensemble: the ensemble std (all heads) on the policy's own held-out samples
    at each evaluation (left axis), the held-out gold beside it (right axis), one colour per policy;
    ▲ = warning, ▼ = gold peak before the downturn."""
    ew = results.get("early_warning") or {}
    if not ew:
        return []
    plt = _plt()
    names = list(ew)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        gx = ax.twinx()
        for i, r in enumerate(results["methods"][name]["runs"]):
            e = r.get("early_warning")
            if not e:
                continue
            col = COLORS[i % len(COLORS)]
            c = r["curve"]
            pts = [(s, v) for s, v in zip(c["step"], c.get("ensemble_std") or []) if v is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=col, lw=1)
            gx.plot(r["curve"]["step"], r["curve"]["gold"], color=col, lw=1, ls="--", marker=".")
            if e["warning_step"] is not None:
                ax.plot([e["warning_step"]], [dict(pts).get(e["warning_step"], np.nan)], "^", color=col, ms=8)
            if e["peak_step"] is not None:
                gx.plot([e["peak_step"]], [dict(zip(r["curve"]["step"], r["curve"]["gold"]))[e["peak_step"]]], "v",
                        color=col, ms=8)
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.set_ylabel("ensemble std, own held-out samples (solid)")
        gx.set_ylabel("held-out gold (dashed)")
    return [_save(fig, out / "early_warning.png")]


def render_all(results: dict, out: str | Path) -> dict[str, list[Path]]:
    """Every plot of the report, by section."""
    out = Path(out)
    return {"curves": plot_curves(results, out), "final_gold": plot_final_gold(results, out),
            "lambda_sweep": plot_lambda_sweep(results, out), "perturbation": plot_perturbation(results, out),
            "rm_variance": plot_rm_variance(results, out), "early_warning": plot_early_warning(results, out)}
