"""The lab's uncertainty-under-shift section (`results.json` -> ``uncertainty_shift``; issue 23):
does each proxy's spread across heads flag where it over-scores -- on the policy's own samples
rather than on in-distribution test pairs?

Per proxy (reading finished units only; the metrics are `robust_rlhf.reward.uncertainty`):
* ``pools``: every best-of-n pool (P held-out prompts x N base-policy samples, gold-scored) with
  the proxy's per-head scores -- top-pick AUROC, over-scoring AUROC/Spearman, LCB-pick gold gain,
  each with a bootstrap-over-prompts standard error;
* ``shift``: the same on every prompt-/response-shifted set (needs the per-head scores the shift
  scoring unit keeps; sets scored before it did are reported as missing);
* ``policy_runs``: per policy run with an ``eval_samples.jsonl`` (rows
  ``{step, kl, prompt, response, per_head, gold}``, written by the policy recipes), per evaluation
  step: mean KL, over-scoring AUROC/Spearman of the std over that step's samples -- as KL grows;
* ``policy_steps``: those per-step AUROCs averaged over each method's runs, with standard errors
  across runs (`pooled_policy_steps`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from robust_rlhf.reward.uncertainty import pool_uncertainty, step_overscoring

NUM_BOOT = 500
EVAL_SAMPLES = "eval_samples.jsonl"


def pool_section(pool: dict, scores: dict, num_boot: int = NUM_BOOT) -> dict:
    """pool.json {prompts, responses (P x N), gold (P x N)} + scores.json {per_head (P*N, K),
    per_head_std} -> `pool_uncertainty` of the pool."""
    gold = np.asarray(pool["gold"], dtype=float)  # (P, N)
    P, N = gold.shape
    per_head = np.asarray(scores["per_head"], dtype=float).reshape(P, N, -1)  # (P, N, K)
    std = scores.get("per_head_std")
    return pool_uncertainty(per_head, gold, None if std is None else np.asarray(std, float).reshape(P, N, -1),
                            num_boot=num_boot)


def shift_section(sets: dict, scores: dict, num_boot: int = NUM_BOOT) -> dict:
    """sets.json {name: {prompts, responses (P x n), gold (P x n)}} + one proxy's shift scores
    {name: {per_head (P*n, K), ...}} -> {name: `pool_uncertainty`} ({"missing": ...} without per-head scores)."""
    out = {}
    for name, s in sets.items():
        if "per_head" not in scores.get(name, {}):
            out[name] = {"missing": "per-head scores were not kept for this set (scored by an older version)"}
            continue
        gold = np.asarray(s["gold"], dtype=float)
        if gold.ndim != 2 or gold.shape[1] < 2:
            out[name] = {"missing": "fewer than 2 responses per prompt"}
            continue
        out[name] = pool_uncertainty(np.asarray(scores[name]["per_head"], float).reshape(*gold.shape, -1), gold,
                                     num_boot=num_boot)
    return out


def read_eval_samples(path: Path) -> list[dict]:
    """Rows of an ``eval_samples.jsonl`` with a gold reward and per-head scores (others skipped)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("gold") is not None and r.get("per_head"):
                rows.append(r)
    return rows


def policy_run_section(folder: Path) -> list[dict] | None:
    """`step_overscoring` of the ``eval_samples.jsonl`` under a policy run's unit folder (None if absent)."""
    files = sorted(folder.rglob(EVAL_SAMPLES)) if folder.exists() else []
    if not files:
        return None
    rows = read_eval_samples(files[0])
    if not rows:
        return None
    return step_overscoring([r["step"] for r in rows], [r.get("kl", float("nan")) for r in rows],
                            np.asarray([r["per_head"] for r in rows], float), np.asarray([r["gold"] for r in rows], float))


def pooled_policy_steps(policy_runs: list[dict]) -> dict:
    """Per method and evaluation step, the over-scoring AUROC of the spread on the policy's own samples
    averaged over that method's runs (the replication unit: one policy run), with its standard error
    across runs, beside the z(proxy) baseline, the mean KL and gold -- does the spread flag over-scoring
    more as KL grows? ``policy_runs``: `uncertainty_shift_results`'s list ({method, steps: [step rows of
    `step_overscoring`]}); runs whose spread is undefined (one-head proxies) are left out.
    Returns {method: [{step, num_runs, kl, gold, overscoring_auroc, overscoring_auroc_se,
    proxy_baseline, proxy_baseline_se}]} and ``"all"``: the same over every method's runs."""

    def mean_se(vals: list[float]) -> tuple[float | None, float | None]:
        if not vals:
            return None, None
        a = np.asarray(vals, dtype=float)
        return float(a.mean()), (float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None)

    groups: dict[str, dict[int, list[dict]]] = {}
    for run in policy_runs:
        for row in run["steps"]:
            if row.get("overscoring_auroc") is None:
                continue
            for name in (run["method"], "all"):
                groups.setdefault(name, {}).setdefault(row["step"], []).append(row)
    out: dict = {}
    for name, by_step in groups.items():
        rows = []
        for step in sorted(by_step):
            rs = by_step[step]
            auc, auc_se = mean_se([r["overscoring_auroc"] for r in rs])
            base, base_se = mean_se([r["overscoring_auroc_proxy_baseline"] for r in rs
                                     if r.get("overscoring_auroc_proxy_baseline") is not None])
            rows.append({"step": step, "num_runs": len(rs), "kl": float(np.mean([r["kl"] for r in rs])),
                         "gold": float(np.mean([r["gold"] for r in rs])), "overscoring_auroc": auc,
                         "overscoring_auroc_se": auc_se, "proxy_baseline": base, "proxy_baseline_se": base_se})
        out[name] = rows
    return out


def uncertainty_shift_results(root: Path, pool_data: dict, score_data: dict, shift_units: dict | None = None,
                              run_index: list[dict] = (), num_boot: int = NUM_BOOT,
                              bon: tuple[dict, dict[str, dict]] | None = None) -> dict:
    """results.json's ``uncertainty_shift``: {"pools": {proxy: {seed: metrics}}, "bon_study": {proxy: metrics}
    (the best-of-n study's held-out pool, when enabled), "shift": {proxy: {set: metrics}}, "policy_runs":
    [{method, seed, head, steps: [...]}], "policy_steps": `pooled_policy_steps` of them}. `score_data` is
    keyed (proxy, seed); `bon` is the best-of-n
    study's (pool.json, {proxy: scores.json}) as the study's analysis read them."""
    from robust_rlhf.experiments.units import read_json

    out: dict = {"pools": {}, "bon_study": {}, "shift": {}, "policy_runs": []}
    for (rm, seed), scores in score_data.items():
        out["pools"].setdefault(rm, {})[str(seed)] = pool_section(pool_data[seed], scores, num_boot)
    if bon is not None:
        bon_pool, bon_scores = bon
        out["bon_study"] = {rm: pool_section(bon_pool, scores, num_boot) for rm, scores in bon_scores.items()}
    if shift_units:
        sets = read_json(root / shift_units["sets"].key / "sets.json")
        for rm, u in shift_units.items():
            if rm != "sets":
                out["shift"][rm] = shift_section(sets, read_json(root / u.key / "scores.json"), num_boot)
    for entry in run_index:
        steps = policy_run_section(root / entry["key"])
        if steps is not None:
            out["policy_runs"].append({"method": entry["method"], "seed": entry["seed"], "head": entry["head"],
                                       "steps": steps})
    out["policy_steps"] = pooled_policy_steps(out["policy_runs"])
    return out
