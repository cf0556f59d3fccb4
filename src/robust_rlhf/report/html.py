"""A self-contained HTML report (images embedded as base64) of an over-optimisation experiment.

Reads ``OUTPUT/results.json`` only and imports no training code, so a finished experiment can
be re-rendered anywhere: ``robust-rlhf experiment report --output-dir OUTPUT``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from robust_rlhf.report.plots import render_all

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
.meta { color: #666; font-size: 0.9em; } .summary li { margin-bottom: 0.35em; }
.neg { color: #b03030; } .pos { color: #2a7a2a; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; }
"""


def _e(x) -> str:
    return html.escape(str(x))


def _num(x, fmt: str = ".3f") -> str:
    if x is None:
        return "–"
    try:
        return format(x, fmt)
    except (TypeError, ValueError):
        return _e(x)


def _ci(s: dict | None) -> str:
    if not s or s.get("ci_low") is None:
        return "–"
    return f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def _diff(d: dict | None) -> str:
    if not d or d.get("diff") is None:
        return "–"
    cls = ""
    if d.get("ci_low") is not None:
        cls = "pos" if d["ci_low"] > 0 else ("neg" if d["ci_high"] < 0 else "")
    ci = f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d.get("ci_low") is not None else ""
    return f'<span class="{cls}">{d["diff"]:+.3f}{ci}</span>'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _agg(a: dict) -> str:
    params = ", ".join(f"{k}={a[k]:g}" for k in ("lam", "beta") if a.get(k) is not None)
    return a["name"] + (f"({params})" if params else "") + (" norm" if a.get("normalize") else "")


def build_html(results: dict, plots: dict[str, list[Path]]) -> str:
    """The report page as one string."""
    cfg = results.get("config", {})
    level = results.get("confidence", 0.95)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(results.get('name', 'experiment'))}"
             f"</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>Over-optimisation experiment: {_e(results.get('name', ''))}</h1>")
    data = cfg.get("data", {})
    timing = results.get("timing", {})
    parts.append(
        f"<p class='meta'>policy <code>{_e(cfg.get('policy'))}</code> · gold <code>{_e(cfg.get('gold'))}</code> · "
        f"label noise {_num(data.get('label_noise'), '.0%')}{' · BT-sampled labels' if data.get('bt_sampling') else ''} · "
        f"seeds {_e(cfg.get('seeds'))} · held-out prompts {_e(cfg.get('evaluation', {}).get('eval_prompts'))} · "
        f"compute {_num(sum(timing.get('unit_seconds', {}).values()), '.0f')} s over {len(timing.get('unit_seconds', {}))} "
        f"units (last call: {_num(timing.get('wall_time_s'), '.0f')} s, {len(timing.get('units_run', []))} units run, "
        f"{len(timing.get('units_cached', []))} cached) · intervals: {level:.0%} Student-t over policies</p>")

    parts += _claims_section(results.get("claims") or [])

    parts.append("<h2>Summary</h2><ul class='summary'>")
    parts += [f"<li>{_e(line)}</li>" for line in results.get("summary", [])]
    parts.append("</ul>")

    comp = results.get("comparison")
    if comp:
        parts.append(f"<h2>At matched KL (d* = {comp['d_star']:.2f}, KL {comp['kl_star']:.2f}; baseline "
                     f"<code>{_e(comp['baseline'])}</code>)</h2>")
        rows = []
        for r in comp["rows"]:
            m = r["matched_gold"]
            rows.append([_e(r["method"]), _num(m["mean"]), _ci(m), _e(r["matched_coverage"]),
                         _diff(r["matched_vs_baseline"]), _diff(r["final_vs_baseline"]), _num(r["final_kl_mean"], ".2f")])
        parts.append(_table(["method", "gold at d*", f"{level:.0%} CI", "runs reaching d*", "Δ vs baseline at d*",
                             "Δ final gold vs baseline", "final KL"], rows))
        own_rows = [[_e(r["method"]), _num(r["at_own_kl"]["kl"], ".2f"), _num(r["at_own_kl"]["gold"]["mean"]),
                     _num(r["at_own_kl"]["baseline_gold"]["mean"]), _diff(r["at_own_kl"]["vs_baseline"])]
                    for r in comp["rows"] if r.get("at_own_kl")]
        if own_rows:
            parts.append("<p>Methods that stop short of d* (best-of-n's KL is at most log N − (N−1)/N), compared at "
                         "their own largest KL, where the baseline's curves are interpolated:</p>")
            parts.append(_table(["method", "KL", "gold", f"{_e(comp['baseline'])} gold there", "Δ"], own_rows))
        parts.append("<p class='meta'>Gold at d*: each policy's gold-vs-sqrt(KL) curve (reference point at d = 0 "
                     "included) interpolated at the baseline's mean final sqrt(KL). Δ: Welch t-interval; green = "
                     "interval above 0, red = below.</p>")

    parts.append("<h2>Methods</h2>")
    rows = []
    ref = results["reference"]["final_gold"]
    rows.append(["reference policy", "–", "–", "–", str(ref["n"]), _num(ref["mean"]), _ci(ref), _num(ref["var"], ".4f"),
                 "0", "–", "–", "–"])
    for name, v in results["methods"].items():
        fit = v.get("gold_fit") or {}
        rows.append([_e(name) + ("" if v["study"] == "main" else f" <span class='meta'>({_e(v['study'])})</span>"),
                     _e(v["type"]), _e(v["reward_model"]),
                     _e(_agg(v["aggregator"]) + (" · per head" if v["train_on"] == "each_head" else "")),
                     str(v["num_policies"]), _num(v["final_gold"]["mean"]), _ci(v["final_gold"]),
                     _num(v["final_gold"]["var"], ".4f"), _num(v["final_kl"]["mean"], ".2f"),
                     _num(v["final_proxy"]["mean"]), _num(v.get("kl_coef"), ".3g") + (" (cal.)" if v.get("calibrated") else ""),
                     (f"α={fit['alpha']:.3f} β={fit['beta']:.3f}" + (f" peak d={fit['peak_d']:.2f}" if fit.get("peak_d") else ""))
                     if fit else "–"])
    parts.append(_table(["method", "type", "proxy RM", "training reward", "policies", "final gold", f"{level:.0%} CI",
                         "variance", "final KL", "final proxy", "KL coef", "Gao fit (gold − ref)"], rows))

    parts.append("<h2>Gold and proxy reward against sqrt(KL)</h2>")
    parts.append("<p class='meta'>Best-of-n: Coste et al.'s unbiased estimator for every n ≤ N from one pool, "
                 "KL = log n − (n−1)/n, fit R(d) = d(α − βd). RL: held-out evaluations during training, "
                 "fit R(d) = d(α − β log d). Fits are least squares on gold − reference gold.</p>")
    parts += [_img(p, p.stem) for p in plots.get("curves", [])]

    parts.append("<h2>Final gold reward over policies</h2>")
    parts += [_img(p, p.stem) for p in plots.get("final_gold", [])]

    if "lambda_sweep" in results:
        sw = results["lambda_sweep"]
        parts.append(f"<h2>BRME λ sweep (seed 000) — base <code>{_e(sw['base'])}</code></h2>")
        parts.append(_table(["λ", "final gold", f"{level:.0%} CI", "final KL", "final proxy"],
                            [[f"{r['lam']:g}" + (" ★" if r["lam"] == sw["best_lam"] else ""), _num(r["final_gold"]["mean"]),
                              _ci(r["final_gold"]), _num(r["final_kl"]["mean"], ".2f"), _num(r["final_proxy"]["mean"])]
                             for r in sw["rows"]]))
        parts += [_img(p, p.stem) for p in plots.get("lambda_sweep", [])]

    if "perturbation" in results:
        pt = results["perturbation"]
        parts.append(f"<h2>Over- vs under-scoring (seed 000) — base <code>{_e(pt['base'])}</code></h2>")
        parts.append(_table(["perturbation", "final gold", f"{level:.0%} CI", "final KL", "Δ vs unperturbed"],
                            [[_e(r["mode"]), _num(r["final_gold"]["mean"]), _ci(r["final_gold"]),
                              _num(r["final_kl"]["mean"], ".2f"), _diff(r["vs_unperturbed"])] for r in pt["rows"]]))
        parts += [_img(p, p.stem) for p in plots.get("perturbation", [])]

    ew = results.get("early_warning") or {}
    if ew:
        cfg_ew = cfg.get("early_warning", {})
        parts.append("<h2>Early warning of reward hacking</h2>")
        parts.append(f"<p class='meta'>Per policy, at every evaluation (the reference policy first): the warning is the "
                     f"first evaluation where the std over all heads of its reward model on the policy's own held-out "
                     f"samples (trailing mean over {_e(cfg_ew.get('window', '–'))} evaluations) exceeds "
                     f"(1 + {_e(cfg_ew.get('rise', '–'))}) × its level in the first ones; the gold turns down when an "
                     f"evaluation falls more than {_e(cfg_ew.get('gold_drop_se', '–'))} standard errors below the best so "
                     f"far (the downturn starts at that best). A peak before the earliest possible warning is counted "
                     f"apart. Lead = (gold peak − warning) in evaluation steps; positive = warned earlier.</p>")
        outcomes = ["warned before downturn", "warned after downturn", "downturn without warning",  # stats.EW_OUTCOMES
                    "peak before earliest warning", "no gold downturn (false alarm)", "no gold downturn, no warning"]
        parts.append(_table(["method", "policies"] + outcomes + ["mean lead (eval steps)"],
                            [[_e(n), str(v["num_policies"])] + [str(v["outcomes"].get(o, 0)) for o in outcomes]
                             + [_num(v["mean_lead_eval_steps"], "+.1f")] for n, v in ew.items()]))
        parts += [_img(p, p.stem) for p in plots.get("early_warning", [])]

    parts += _bon_study_section(results.get("bon_study"), level)
    parts += _uncertainty_shift_section(results.get("uncertainty_shift"))

    shift = results.get("shift")
    if shift:
        sets = shift["sets"]
        parts.append("<h2>Shifted sets (seed 001): Kendall τ against the gold, hidden-state norms</h2>")
        parts.append("<p class='meta'>" + " · ".join(
            f"{_e(k)}: {v['num_prompts']} prompts × {v['responses_per_prompt']} responses at temperature "
            f"{v['temperature']:g}" for k, v in sets.items())
            + ". τ: Kendall τ-b of the proxy (mean over heads) vs the gold over each prompt's responses, mean and "
              f"{level:.0%} t-interval over prompts; dispersion: std(‖h‖)/mean(‖h‖) of the pooled last hidden state.</p>")
        rows = []
        for rm, per in shift["reward_models"].items():
            row = [_e(rm)]
            for k in sets:
                row += [_num(per[k]["kendall_tau"]["mean"]), _ci(per[k]["kendall_tau"]), _num(per[k]["norm_dispersion"], ".4f")]
            rows.append(row)
        parts.append(_table(["reward model"] + [f"{h} ({k})" for k in sets for h in ("τ", "CI", "norm disp.")], rows))

    parts.append("<h2>Proxy reward models (test pairs)</h2>")
    rows = []
    for name, rm in results["reward_models"].items():
        cv = rm.get("chosen_reward_variance") or {}
        dv = rm.get("difference_variance") or {}
        rows.append([_e(name), _e(rm.get("head_type")), str(rm["num_heads"]), str(rm["num_test_pairs"]),
                     _num(rm["test_accuracy"]), f"[{rm['test_accuracy_ci95'][0]:.3f}, {rm['test_accuracy_ci95'][1]:.3f}]",
                     _num(cv.get("mean"), ".4f"), _num(dv.get("mean"), ".4f")])
    parts.append(_table(["reward model", "heads", "K", "test pairs", "accuracy (mean)", "95% Wilson CI",
                         "mean var (chosen)", "mean var (difference)"], rows))
    parts += [_img(p, p.stem) for p in plots.get("rm_variance", [])]

    if timing.get("unit_seconds"):
        parts.append("<h2>Units</h2><details><summary>seconds per unit</summary>")
        parts.append(_table(["unit", "seconds", "this call"],
                            [[_e(k), _num(s, ".0f"), "run" if k in timing.get("units_run", []) else "cached"]
                             for k, s in timing["unit_seconds"].items()]))
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _bon_study_section(bon: dict | None, level: float) -> list[str]:
    """The best-of-n study: gold at n = 1, 2, 4, ..., N per proxy x aggregator with the prompt-bootstrap interval."""
    if not bon:
        return []
    N = bon["pool_size"]
    ns = sorted({1, N} | {2**i for i in range(1, 7) if 2**i < N})
    rows = []
    for rm, curves in bon["reward_models"].items():
        for agg, c in curves.items():
            rows.append([_e(rm), _e(agg)] + [f"{c['gold'][n - 1]:.3f} [{c['ci_low'][n - 1]:.3f}, {c['ci_high'][n - 1]:.3f}]"
                                             for n in ns] + [str(c["peak_n"])])
    return [f"<h2>Best-of-n study: {bon['num_prompts']} held-out prompts × N = {N} reference samples</h2>",
            f"<p class='meta'>Expected gold of the best of n (Coste's unbiased estimator per prompt, mean over prompts) "
            f"with a {level:.0%} prompt-bootstrap interval; reference gold {bon['reference_gold']:.3f}. Aggregators: "
            f"mean, min / max of the standardised heads, lcb = mean − β·std, uwo, the same two on standardised heads "
            f"(lcb_norm, uwo_norm), BRME λ ∈ {{0, 0.5, 1}}.</p>",
            _table(["reward model", "aggregator"] + [f"n = {n}" for n in ns] + ["peak n"], rows)]


def _pm(m: dict, key: str) -> str:
    """``m[key] ± m[key_se]`` (or just the value)."""
    v, se = m.get(key), m.get(f"{key}_se")
    return _num(v) + (f" ± {se:.3f}" if isinstance(se, (int, float)) and se == se else "")


def _uncertainty_shift_section(us: dict | None) -> list[str]:
    """Does each proxy's spread flag where it over-scores -- on held-out best-of-n pools, shifted sets and
    the policies' own samples as KL grows (results.json ``uncertainty_shift``)?"""
    if not us:
        return []
    rows = []
    for where, per_rm in (("best-of-n study pool", us.get("bon_study") or {}),
                          *((f"shifted set: {k}", {rm: sets[k] for rm, sets in (us.get("shift") or {}).items()
                                                    if k in sets and "missing" not in sets[k]})
                            for k in sorted({k for sets in (us.get("shift") or {}).values() for k in sets}))):
        for rm, m in per_rm.items():
            if m.get("num_heads", 1) < 2:
                continue
            rows.append([_e(where), _e(rm), f"{m['num_prompts']} × {m['samples_per_prompt']}", str(m["num_heads"]),
                         _pm(m, "overscoring_auroc"), _num(m.get("overscoring_auroc_proxy_baseline")),
                         _pm(m, "overscoring_spearman"), f"{_pm(m, 'top_pick_auroc')} ({m.get('top_pick_num_bad')} bad)",
                         _pm(m, "lcb_pick_gold_gain")])
    out = []
    if rows:
        out += ["<h2>Uncertainty under shift: does the spread flag over-scoring?</h2>",
                "<p class='meta'>Per multi-head proxy, the std over heads of each text against its over-scoring "
                "o = z(proxy) − z(gold) within its prompt: AUROC for o in its top quarter (0.5 = blind) beside the "
                "z(proxy) baseline (o grows with the proxy by construction; the spread helps only if it adds to it), "
                "Spearman; top pick: AUROC of the std for the proxy's best text having gold below its prompt's "
                "median; the gold gained by picking by mean − std instead of the mean. ± bootstrap SE over "
                "prompts.</p>",
                _table(["texts", "proxy", "prompts × texts", "K", "over-scoring AUROC", "z(proxy) baseline",
                        "Spearman", "top-pick AUROC", "gold gain of mean − std"], rows)]
    steps = us.get("policy_steps") or {}
    prow = [[_e(name), str(r["step"]), str(r["num_runs"]), _num(r["kl"], ".2f"), _num(r["gold"]),
             _pm(r, "overscoring_auroc"), _num(r.get("proxy_baseline"))]
            for name, rs in steps.items() if name != "all" for r in rs]
    if prow:
        out += ["<h3>On the policies' own held-out samples, as KL grows</h3>",
                "<p class='meta'>At every evaluation of every PPO run scored by a multi-head proxy (all its heads, "
                "whatever the run trains on): over-scoring AUROC of the std over that evaluation's samples, mean over "
                "the method's runs ± standard error across runs.</p>",
                _table(["method", "step", "runs", "KL", "gold", "over-scoring AUROC", "z(proxy) baseline"], prow)]
    return out


def _arms(d: dict | None) -> str:
    return "–" if not d else " vs ".join(str(v) for k, v in d.items() if k != "unit")


def _claims_section(claims: list[dict]) -> list[str]:
    """The claims table (first in the report): one row per seed claim with its interval, p (raw and
    Holm-adjusted), minimum detectable effect, replication unit with the counts that entered the test
    (matched counts for policy claims), and its raw and Holm verdicts."""
    if not claims:
        return []
    cls = {"reproduced": "pos", "not reproduced": "neg", "inconclusive": ""}
    rows = []
    for c in claims:
        st, (lo, hi) = c["statistic"], c["ci95"]
        units = c.get("n_units") or c.get("n_matched") or c.get("n") or {}  # results.json before n_units: the counts
        n_txt = f"{_arms(units)} {_e(units.get('unit', ''))}".strip()
        if c.get("n_matched") and c.get("n_policies"):
            n_txt += f" (matched at the KL; of {_arms(c['n_policies'])})"
        kl = c.get("kl")
        if not kl:
            kl_txt = "–"
        elif "matched_at" in kl:
            kl_txt = (", ".join(f"{_e(k)} {v:.2f}" for k, v in kl.items() if k != "matched_at")
                      + f"; compared at {kl['matched_at']:.2f}")
        else:
            kl_txt = ", ".join(f"{_e(k)} {v:g}" for k, v in kl.items())
        mde = c.get("mde")
        rows.append([_e(c["seed"]), _e(c["claim"]), _e(st["name"]), _num(st["value"], "+.3f"),
                     "–" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]",
                     f"{'<' if st['direction'] == 'less' else '>'} {st['null']:g}", n_txt,
                     _num(mde, ".3f" if st["kind"] == "variance_ratio" else "+.3f"),
                     _num(c.get("p"), ".3g"), _num(c.get("p_holm"), ".3g"), kl_txt,
                     f"<b class='{cls.get(c['verdict'], '')}'>{_e(c['verdict'])}</b>",
                     f"<b class='{cls.get(c.get('verdict_holm'), '')}'>{_e(c.get('verdict_holm', '–'))}</b>"])
    return ["<h2>Claims of the seed papers</h2>",
            _table(["seed", "claim", "statistic", "value", "95% CI", "claimed", "n (unit)", "MDE (80 %)", "p",
                    "p (Holm)", "KL / n", "verdict", "verdict (Holm)"], rows),
            f"<p class='meta'>Verdict rule: {_e(claims[0].get('rule', ''))}. MDE: the smallest true effect (a ratio "
            f"for variance ratios) the row's test detects with 80 % power at its two-sided Holm level.</p>"]


def write_report(output_dir: str | Path) -> Path:
    """Render ``OUTPUT/plots/*.png`` and ``OUTPUT/report.html`` from ``OUTPUT/results.json``."""
    from robust_rlhf.errors import UserError

    out = Path(output_dir)
    path = out / RESULTS_FILE
    if not path.exists():
        raise UserError(f"{out}: no {RESULTS_FILE} (run `robust-rlhf experiment run` into this folder first)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e.msg})") from None
    except (ValueError, RecursionError):  # a torn multi-byte character, absurd nesting
        raise UserError(f"{path}: invalid JSON (torn or not UTF-8)") from None
    plots = render_all(results, out / PLOTS_DIR)
    target = out / REPORT_FILE
    from robust_rlhf.utils import atomic_write_text

    atomic_write_text(target, build_html(results, plots))  # atomic: a reader never sees a half-written report
    return target
