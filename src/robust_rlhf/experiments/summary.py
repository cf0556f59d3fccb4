"""The report's plain-language findings, written from the numbers in results.json (including the
negative ones)."""

from __future__ import annotations


def _fmt_ci(d: dict | None, level: float) -> str:
    if not d or d.get("ci_low") is None:
        return "no interval: fewer than 2 runs per side"
    return f"{100 * level:.0f}% CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _verdict(diff: dict) -> str:
    lo, hi = diff["ci_low"], diff["ci_high"]
    if lo is not None and lo > 0:
        return "beat the baseline"
    if hi is not None and hi < 0:
        return "did NOT beat the baseline: it was worse"
    if diff["diff"] > 0:
        return ("did NOT clearly beat the baseline: higher on average, but "
                + ("the interval includes 0" if lo is not None else "with one run per side there is no interval"))
    return "did NOT beat the baseline"


def summary_lines(results: dict) -> list[str]:
    """Plain-language findings, written from the numbers (including the negative ones)."""
    level = results["confidence"]
    lines: list[str] = []
    comp = results["comparison"]
    base = comp["baseline"]
    methods = results["methods"]
    calibrated = all(methods[r["method"]]["calibrated"] or methods[r["method"]]["type"] == "best_of_n"
                     for r in comp["rows"])
    lines.append(
        f"Baseline: {base} (final gold {methods[base]['final_gold']['mean']:.3f}, final KL "
        f"{methods[base]['final_kl']['mean']:.2f}). Methods are compared at its mean final sqrt(KL) "
        f"d* = {comp['d_star']:.2f} (KL {comp['kl_star']:.2f}); "
        + ("KL coefficients were calibrated to a common target." if calibrated else
           "KL coefficients were NOT calibrated, so final KLs differ between methods; the matched-KL "
           "comparison interpolates each run's gold curve at d*."))
    ref = results["reference"]["final_gold"]
    lines.append(f"The reference (base) policy scores gold {ref['mean']:.3f} on the held-out prompts.")
    best = None
    for row in comp["rows"]:
        name = row["method"]
        if name == base:
            continue
        diff = row["matched_vs_baseline"]
        if diff is None or diff["diff"] is None:
            line = (f"{name}: no run reaches d* = {comp['d_star']:.2f} (coverage {row['matched_coverage']}), so it "
                    f"cannot be compared at the baseline's KL; its final gold is "
                    f"{methods[name]['final_gold']['mean']:.3f} at KL {methods[name]['final_kl']['mean']:.2f}.")
            own = row.get("at_own_kl")
            if own and own["vs_baseline"] and own["vs_baseline"]["diff"] is not None:
                d = own["vs_baseline"]
                line += (f" At its own largest KL {own['kl']:.2f} it {_verdict(d)}: gold {own['gold']['mean']:.3f} vs "
                         f"{base} {own['baseline_gold']['mean']:.3f} there ({d['diff']:+.3f}, {_fmt_ci(d, level)}).")
            lines.append(line)
            continue
        lines.append(f"{name} {_verdict(diff)} at matched KL: gold difference {diff['diff']:+.3f} "
                     f"({_fmt_ci(diff, level)}, runs {row['matched_coverage']} vs baseline).")
        if best is None or diff["diff"] > best[1]["diff"]:
            best = (name, diff)
    if best is not None:
        name, d = best
        if d["diff"] > 0:
            sig = "significant" if d["ci_low"] is not None and d["ci_low"] > 0 else "NOT significant: the interval includes 0"
            lines.append(f"Highest mean gold at matched KL: {name} ({d['diff']:+.3f} over {base}; {sig}).")
        else:
            lines.append(f"No method improved on {base} at matched KL.")
    spreads = [(n, v["final_gold"]["var"]) for n, v in methods.items() if v["study"] == "main" and v["final_gold"]["var"] is not None]
    if spreads:
        lo_n, lo_v = min(spreads, key=lambda t: t[1])
        lines.append("Variance of final gold over policies: " + ", ".join(f"{n} {v:.4f}" for n, v in spreads)
                     + (f" (reference {ref['var']:.4f})" if ref["var"] is not None else "")
                     + f"; the least spread is {lo_n}.")
    for name, v in methods.items():
        fit = v["gold_fit"]
        if v["study"] != "main" or not fit or fit["num_points"] < 5 or fit["peak_d"] is None:
            continue
        if fit["peak_d"] < max(max(r["curve"]["d"]) for r in v["runs"]):
            lines.append(f"{name}: the Gao fit peaks at d = {fit['peak_d']:.2f}, inside the measured range -- "
                         "gold turns down while optimisation continues (over-optimisation).")
    if "lambda_sweep" in results:
        sw = results["lambda_sweep"]
        lines.append(f"λ sweep ({sw['base']}): best final gold at λ = {sw['best_lam']:g} ("
                     + ", ".join(f"λ={r['lam']:g}: {r['final_gold']['mean']:.3f}" for r in sw["rows"]) + ").")
    if "perturbation" in results:
        pt = results["perturbation"]
        d = {r["mode"]: r for r in pt["rows"]}
        o, u = d["over"]["vs_unperturbed"], d["under"]["vs_unperturbed"]
        hurt_more = "over-scoring hurt more" if o["diff"] < u["diff"] else "under-scoring hurt more (unlike seed 000's finding)"
        lines.append(f"Perturbation ±{pt['size']:g} on {pt['fraction']:.0%} of samples: gold change over-scoring "
                     f"{o['diff']:+.3f}, under-scoring {u['diff']:+.3f} vs unperturbed -- {hurt_more}"
                     + ("" if o["ci_low"] is not None else " (single seed: no interval)") + ".")
    return lines


def bon_study_lines(results: dict) -> list[str]:
    """One sentence per proxy of the best-of-n study: which aggregator ends highest at n = N, and where the mean peaks."""
    bon = results.get("bon_study")
    if not bon:
        return []
    N, lines = bon["pool_size"], []
    for rm, curves in bon["reward_models"].items():
        best = max(curves, key=lambda a: curves[a]["gold"][N - 1])
        c, m = curves[best], curves["mean"]
        top = (f"the highest gold is {best} ({c['gold'][N - 1]:.3f} [{c['ci_low'][N - 1]:.3f}, "
               f"{c['ci_high'][N - 1]:.3f}]) vs mean {m['gold'][N - 1]:.3f}" if best != "mean" else
               f"no aggregator beats the mean ({m['gold'][N - 1]:.3f} [{m['ci_low'][N - 1]:.3f}, {m['ci_high'][N - 1]:.3f}]"
               + (f" over {len(curves) - 1} others)" if len(curves) > 1 else ", the only one of a one-head proxy)"))
        lines.append(f"Best-of-n study, {rm} ({bon['num_prompts']} prompts): at n = {N} {top}; the mean's curve peaks at "
                     f"n = {m['peak_n']} (reference {bon['reference_gold']:.3f}).")
    return lines


def early_warning_lines(results: dict) -> list[str]:
    """One sentence per method with an ensemble: did its disagreement rise before the gold turned down?"""
    lines = []
    for name, ew in results.get("early_warning", {}).items():
        c, n = ew["outcomes"], ew["num_policies"]
        before = c.get("warned before downturn", 0)
        downturns = before + c.get("warned after downturn", 0) + c.get("downturn without warning", 0)
        early = c.get("peak before earliest warning", 0)
        early_note = (f"; {early} more peaked before the earliest possible warning (counted apart)" if early else "")
        if downturns == 0:
            lines.append(f"Early warning, {name}: no gold downturn in any of its {n} policies, so there was nothing to "
                         f"warn of ({c.get('no gold downturn (false alarm)', 0)} ensemble-std rises anyway{early_note}).")
            continue
        lead = ew["mean_lead_eval_steps"]
        lines.append(f"Early warning, {name}: the ensemble std on its own samples rose before the gold peaked in "
                     f"{before} of {downturns} policies whose gold turned down by more than 2 standard errors "
                     f"({n} policies in all{early_note})"
                     + (f"; mean lead {lead:+.1f} evaluation steps" if lead is not None else "") + ".")
    return lines
