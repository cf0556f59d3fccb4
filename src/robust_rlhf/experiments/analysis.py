"""results.json from the finished units: per-policy curves, per-method statistics, Gao fits,
the matched-KL comparison, the λ sweep and the perturbation tables (reading + statistics only)."""

from __future__ import annotations

import math
from pathlib import Path

from robust_rlhf.config import config_to_dict
from robust_rlhf.experiments.config import ExperimentConfig, MethodSpec, heads_of
from robust_rlhf.experiments.fits import fit_gao, interpolate_at, t_interval, welch_difference
from robust_rlhf.experiments.bon_study import aggregated_scores
from robust_rlhf.experiments.claims import build_claims
from robust_rlhf.experiments.stages import read_metrics
from robust_rlhf.experiments.stats import early_warning_se, first_crossing, norm_dispersion, per_prompt_kendall
from robust_rlhf.experiments.summary import bon_study_lines, early_warning_lines, summary_lines
from robust_rlhf.experiments.units import DONE_FILE, read_json, units_root


def _bon_ns(N: int) -> list[int]:
    ns, n = [], 1
    while n < N:
        ns.append(n)
        n *= 2
    return ns + [N]


def _best_of_n_curve(pool: dict, proxy_flat, ns: list[int]) -> dict:
    """The best-of-n curve of one stored pool (`robust_rlhf.policy.best_of_n.best_of_n_curve`:
    Coste's unbiased estimator per prompt, averaged over prompts), as analysis columns."""
    import torch

    from robust_rlhf.policy.best_of_n import best_of_n_curve

    N = pool["pool_size"]
    proxy = proxy_flat.reshape(len(pool["prompts"]), N)  # (P, N)
    gold = torch.tensor(pool["gold"], dtype=torch.float64)  # (P, N)
    rows = best_of_n_curve(proxy, gold, ns)
    kl = [r["kl"] for r in rows]
    return {"n": [r["n"] for r in rows], "kl": kl, "d": [math.sqrt(k) for k in kl],
            "gold": [r["gold_reward"] for r in rows], "proxy": [r["proxy_reward"] for r in rows]}


def _stats(values: list[float], level: float) -> dict:
    return t_interval(values, level)


def _reference_std(scores: dict) -> float:
    """Mean over pool samples of the std across ALL heads (the early warning's reference level)."""
    import torch

    from robust_rlhf.reward.output import RewardOutput

    return float(RewardOutput(torch.tensor(scores["per_head"], dtype=torch.float64), None).std.mean())


def analyse(cfg: ExperimentConfig, out: Path, methods, rm_units: dict, pools: dict, pool_scores: dict,
            run_index: list[dict], coefs: dict[str, float], shift_units: dict | None = None,
            bon_units: dict | None = None) -> dict:
    """Assemble results.json from the finished units (pure reading + statistics)."""
    root = units_root(out)
    level = cfg.confidence
    pool_data = {s: read_json(root / u.key / "pool.json") for s, u in pools.items()}
    score_data = {k: read_json(root / u.key / "scores.json") for k, u in pool_scores.items()}
    reference_gold = {s: float(sum(sum(g) for g in p["gold"]) / sum(len(g) for g in p["gold"]))
                      for s, p in pool_data.items()}
    reference_se = {}
    for s, p in pool_data.items():
        g = [x for row in p["gold"] for x in row]
        m = sum(g) / len(g)
        reference_se[s] = math.sqrt(sum((x - m) ** 2 for x in g) / (len(g) - 1) / len(g)) if len(g) > 1 else 0.0
    results: dict = {"name": cfg.name, "config": config_to_dict(cfg), "confidence": level,
                     "reference": {"per_seed": {str(s): v for s, v in reference_gold.items()},
                                   "final_gold": _stats(list(reference_gold.values()), level)},
                     "reward_models": {}, "methods": {}}
    for name, u in rm_units.items():
        d = root / u.key
        metrics = read_json(d / "eval" / "metrics.json")
        arrays = read_json(d / "eval" / "arrays.json") if (d / "eval" / "arrays.json").exists() else {}
        results["reward_models"][name] = {
            "head_type": read_json(d / DONE_FILE)["summary"].get("head_type"),
            "num_heads": metrics["num_heads"], "test_accuracy": metrics["accuracy"],
            "test_accuracy_ci95": metrics["accuracy_ci95"], "accuracy_per_head": metrics["accuracy_per_head"],
            "accuracy_by_aggregator": metrics.get("accuracy_by_aggregator", {}),
            "chosen_reward_variance": metrics.get("chosen_reward_variance"),
            "difference_variance": metrics.get("difference_variance"),
            "variance_arrays": arrays, "num_test_pairs": metrics["num_pairs"]}
    for m, seeds, study in methods:
        runs = []
        heads = heads_of(m, results["reward_models"][m.reward_model]["num_heads"])
        for seed in seeds:
            for head in heads:
                proxy0 = aggregated_scores(score_data[(m.reward_model, seed)], m.aggregator, head)
                if m.type == "best_of_n":
                    c = _best_of_n_curve(pool_data[seed], proxy0, _bon_ns(cfg.evaluation.pool_size))
                    runs.append({"seed": seed, "head": head, "final_gold": c["gold"][-1], "final_kl": c["kl"][-1],
                                 "final_proxy": c["proxy"][-1], "curve": {k: c[k] for k in ("d", "gold", "proxy", "n")}})
                    continue
                entry = next(r for r in run_index if r["method"] == m.name and r["seed"] == seed and r["head"] == head)
                rows = [r for r in read_metrics(root / entry["key"]) if r.get("gold_reward") is not None]
                curve = {"d": [0.0] + [math.sqrt(max(r.get("gold/kl", r.get("kl", 0.0)), 0.0)) for r in rows],
                         "gold": [reference_gold[seed]] + [r["gold_reward"] for r in rows],
                         "gold_se": [reference_se[seed]] + [r.get("gold/reward_se") for r in rows],
                         "kl_se": [0.0] + [r.get("gold/kl_se") for r in rows],
                         "num_samples": [None] + [r.get("gold/num_samples") for r in rows],
                         "ensemble_std": [_reference_std(score_data[(m.reward_model, seed)])]
                         + [r.get("gold/ensemble_std") for r in rows],
                         "proxy": [float(proxy0.mean())] + [r.get("gold/proxy_reward") for r in rows],
                         "step": [0] + [r["step"] for r in rows]}
                train_rows = read_metrics(root / entry["key"])
                runs.append({"seed": seed, "head": head, "final_gold": rows[-1]["gold_reward"],
                             "final_kl": rows[-1].get("gold/kl", rows[-1].get("kl")),
                             "final_proxy": rows[-1].get("gold/proxy_reward"), "curve": curve,
                             "train_curve": {"step": [r["step"] for r in train_rows],
                                             "kl": [r.get("kl") for r in train_rows],
                                             "proxy": [r.get("proxy_reward") for r in train_rows],
                                             "ensemble_std": [r.get("reward/ensemble_std") for r in train_rows]}})
                stds = curve["ensemble_std"]
                if all(x is not None for x in stds) and max(stds) > 0:  # 0: a one-head reward model, no ensemble
                    ew = cfg.early_warning
                    runs[-1]["early_warning"] = early_warning_se(
                        curve["step"], stds, curve["gold"], curve["gold_se"], ew.window, ew.rise, ew.gold_drop_se)
        results["methods"][m.name] = _method_summary(m, study, runs, reference_gold, level,
                                                     coefs.get(m.name, coefs.get(m.name.split("@", 1)[0])))
    _compare(cfg, results)
    _studies(cfg, results)
    results["early_warning"] = _early_warning_summary(results)
    if shift_units:
        results["shift"] = _shift_results(root, shift_units, level)
    bon = None
    if bon_units:
        from robust_rlhf.experiments.bon_study import analyse_bon_study

        bon_pool = read_json(root / bon_units["pool"].key / "pool.json")
        bon_scores = {rm: read_json(root / u.key / "scores.json") for rm, u in bon_units.items() if rm != "pool"}
        info = {rm: results["reward_models"][rm] for rm in bon_scores}
        results["bon_study"] = analyse_bon_study(cfg.bon_study, bon_pool, bon_scores, info, level)
        bon = (bon_pool, bon_scores)
    from robust_rlhf.experiments.uncertainty_shift import uncertainty_shift_results  # issue 23

    results["uncertainty_shift"] = uncertainty_shift_results(root, pool_data, score_data, shift_units, run_index,
                                                             bon=bon)
    results["claims"] = build_claims(cfg.claims, results)
    results["summary"] = summary_lines(results) + early_warning_lines(results) + bon_study_lines(results)
    return results


def _method_summary(m: MethodSpec, study: str, runs: list[dict], reference_gold: dict, level: float,
                    coef: float | None) -> dict:
    import numpy as np

    form = "bon" if m.type == "best_of_n" else "rl"
    d_all, r_all = [], []
    for r in runs:
        g0 = reference_gold[r["seed"]]
        d_all += r["curve"]["d"]
        r_all += [g - g0 for g in r["curve"]["gold"]]
    fit = fit_gao(d_all, r_all, form)
    finals = [r["final_gold"] for r in runs]
    return {"type": m.type, "study": study, "reward_model": m.reward_model,
            "aggregator": config_to_dict(m.aggregator), "train_on": m.train_on, "kl_coef": coef,
            "calibrated": coef is not None, "num_policies": len(runs),
            "final_gold": _stats(finals, level), "final_kl": _stats([r["final_kl"] for r in runs], level),
            "final_proxy": _stats([r["final_proxy"] for r in runs if r["final_proxy"] is not None], level),
            "final_d_mean": float(np.mean([math.sqrt(max(r["final_kl"], 0.0)) for r in runs])),
            "gold_fit": fit.to_dict() if fit else None, "runs": runs}


def _compare(cfg: ExperimentConfig, results: dict) -> None:
    """Each main method vs the baseline: at the baseline's final sqrt(KL) d* (each run's gold where
    its curve FIRST reaches d*; a run that never reaches it is not counted -- `matched_coverage`),
    and on final gold reward with each method's own final KL beside it."""
    methods = results["methods"]
    main = [n for n, v in methods.items() if v["study"] == "main"]
    baseline = cfg.baseline or main[0]
    d_star = methods[baseline]["final_d_mean"]

    def matched(name: str) -> list[float]:
        vals = []
        for r in methods[name]["runs"]:
            v = first_crossing(r["curve"]["d"], r["curve"]["gold"], d_star)
            if v is not None:
                vals.append(v)
        return vals

    def at(name: str, d: float) -> list[float]:
        vals = [interpolate_at(r["curve"]["d"], r["curve"]["gold"], d) for r in methods[name]["runs"]]
        return [v for v in vals if v is not None]

    base_vals = matched(baseline)
    rows = []
    for name in main:
        vals = matched(name)
        own = None
        if not vals and name != baseline:
            # It stops short of d* (best-of-n's KL is at most log N - (N-1)/N): compare at its own largest
            # common d instead, where the baseline's curves are interpolated.
            d_own = min(max(r["curve"]["d"]) for r in methods[name]["runs"])
            mine, theirs = at(name, d_own), at(baseline, d_own)
            own = {"d": d_own, "kl": d_own**2, "gold": _stats(mine, cfg.confidence),
                   "baseline_gold": _stats(theirs, cfg.confidence),
                   "vs_baseline": welch_difference(mine, theirs, cfg.confidence) if mine and theirs else None}
        rows.append({
            "method": name, "matched_gold": _stats(vals, cfg.confidence),
            "matched_coverage": f"{len(vals)}/{len(methods[name]['runs'])}",
            "matched_vs_baseline": welch_difference(vals, base_vals, cfg.confidence) if vals and name != baseline else None,
            "final_vs_baseline": welch_difference([r["final_gold"] for r in methods[name]["runs"]],
                                                  [r["final_gold"] for r in methods[baseline]["runs"]], cfg.confidence)
            if name != baseline else None,
            "final_kl_mean": methods[name]["final_kl"]["mean"], "at_own_kl": own})
    results["comparison"] = {"baseline": baseline, "d_star": d_star, "kl_star": d_star**2, "rows": rows}


def _studies(cfg: ExperimentConfig, results: dict) -> None:
    methods = results["methods"]
    if cfg.lambda_sweep.base is not None:
        rows = []
        for lam in cfg.lambda_sweep.lambdas:
            v = methods[f"{cfg.lambda_sweep.base}@lam={lam:g}"]
            rows.append({"lam": lam, "method": f"{cfg.lambda_sweep.base}@lam={lam:g}", "final_gold": v["final_gold"],
                         "final_kl": v["final_kl"], "final_proxy": v["final_proxy"]})
        best = max(rows, key=lambda r: r["final_gold"]["mean"])
        results["lambda_sweep"] = {"base": cfg.lambda_sweep.base, "rows": rows, "best_lam": best["lam"]}
    if cfg.perturbation.base is not None:
        base = cfg.perturbation.base
        rows = []
        for mode, name in (("none", base), ("over", f"{base}@over"), ("under", f"{base}@under")):
            rows.append({"mode": mode, "method": name, "final_gold": methods[name]["final_gold"],
                         "final_kl": methods[name]["final_kl"],
                         "vs_unperturbed": None if mode == "none" else welch_difference(
                             [r["final_gold"] for r in methods[name]["runs"]],
                             [r["final_gold"] for r in methods[base]["runs"]], cfg.confidence)})
        results["perturbation"] = {"base": base, "size": cfg.perturbation.size,
                                   "fraction": cfg.perturbation.fraction, "rows": rows}


def _early_warning_summary(results: dict) -> dict:
    """Per method: outcome counts over its policies (peaks before the earliest possible warning
    counted apart), and the mean lead (evaluation steps) of the ensemble-std warning before the
    gold peak, over policies that had both."""
    out = {}
    for name, v in results["methods"].items():
        ews = [r["early_warning"] for r in v["runs"] if r.get("early_warning")]
        if not ews:
            continue
        counts: dict[str, int] = {}
        for e in ews:
            counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
        leads = [e["lead_eval_steps"] for e in ews if e["lead_eval_steps"] is not None]
        out[name] = {"num_policies": len(ews), "outcomes": counts, "leads": leads,
                     "mean_lead_eval_steps": sum(leads) / len(leads) if leads else None}
    return out


def _shift_results(root: Path, shift_units: dict, level: float) -> dict:
    """Per proxy and shifted set: Kendall tau vs the gold per prompt (mean, t-interval over prompts;
    prompts whose gold ties on every response are left out) and the hidden-state norm dispersion."""
    import numpy as np

    sets = read_json(root / shift_units["sets"].key / "sets.json")
    out: dict = {"sets": {k: {"num_prompts": len(s["prompts"]), "temperature": s["temperature"],
                              "responses_per_prompt": len(s["responses"][0]) if s["responses"] else 0}
                          for k, s in sets.items()}, "reward_models": {}}
    for rm, u in shift_units.items():
        if rm == "sets":
            continue
        scores = read_json(root / u.key / "scores.json")
        per_set = {}
        for k, s in sets.items():
            gold = np.asarray(s["gold"], dtype=float)  # (P, n)
            taus = per_prompt_kendall(np.asarray(scores[k]["reward"], dtype=float).reshape(gold.shape), gold)
            finite = [float(t) for t in taus if np.isfinite(t)]
            per_set[k] = {"kendall_tau": t_interval(finite, level),
                          "kendall_tau_per_prompt": [None if not np.isfinite(t) else float(t) for t in taus],
                          "norm_dispersion": norm_dispersion(scores[k]["norm"]), "norms": scores[k]["norm"]}
        out["reward_models"][rm] = per_set
    return out
