"""The over-optimisation laboratory (Gao et al. 2022; Coste et al. 2023; METHODS.md section 5).

    prompts ─► base policy samples ─► gold labels (BT sampling, label noise) ─► train/val/test pairs
                                                                                     │
    proxy reward models (BT, BT+BSR, ensemble K, BRME K) ◄───────────────────────────┘
              │            └─► rm eval on the test pairs (accuracy, ensemble-variance histograms)
              ▼
    methods × seeds (× heads): best-of-n from one pool of N base samples (Coste's unbiased
    estimator), PPO / variance-aware PPO / BRME-λ PPO / RLOO via the policy recipes
              │   (optional: KL coefficient calibrated per method so all end at the same KL)
              ▼
    gold + proxy reward against d = sqrt(KL) ─► Gao fits, final-gold distributions, λ sweep,
    over- vs under-scoring ─► results.json ─► PNGs + report.html (robust_rlhf.report)

Every finished *unit* (the data, one reward model, one pool of base samples, one policy run,
one calibration probe) lives in its own folder under ``OUTPUT/units/`` and is marked finished
by a ``done`` file written atomically *last*, holding a fingerprint of everything the unit
depends on. A killed experiment therefore resumes where it stopped (a policy run also resumes
from its own last checkpoint); a unit whose inputs changed is re-run; re-running a finished
experiment only re-computes the analysis and re-renders the report.

    robust-rlhf experiment run --config experiment_demo --output-dir runs/demo
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from robust_rlhf.config import build_dataclass, config_to_dict
from robust_rlhf.errors import UserError
from robust_rlhf.experiments.analysis import _best_of_n_curve, analyse  # noqa: F401  (re-exported)
from robust_rlhf.experiments.calibration import calibrate_all, calibrate_kl_coef  # noqa: F401
from robust_rlhf.experiments.config import (  # noqa: F401  (re-exported: tests and the CLI import them from here)
    CalibrationConfig,
    EvaluationConfig,
    ExperimentConfig,
    LambdaSweepConfig,
    MethodSpec,
    PerturbationConfig,
    PreferenceDataConfig,
    PromptsConfig,
    RewardModelSpec,
    expanded_methods,
    heads_of,
    load_experiment_config,
)
from robust_rlhf.experiments.stages import (
    data_unit,
    load_prompts,
    policy_config_dict,
    policy_unit,
    pool_score_unit,
    pool_unit,
    rm_config,
    bon_study_units,
    rm_units_of,
    shift_score_unit,
    shift_sets_unit,
    trainer,
)
from robust_rlhf.experiments.summary import summary_lines  # noqa: F401
from robust_rlhf.experiments.units import DONE_FILE, Unit, UnitRunner, read_json, units_root  # noqa: F401
from robust_rlhf.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


# ============================================================================ planning and running
@dataclass
class ExperimentOutcome:
    """What `run_experiment` did."""

    output_dir: Path
    results: dict
    executed: list[str]
    """unit keys that ran in this call"""
    skipped: list[str]
    """unit keys found finished on disk"""
    report: Path | None

def _set_threads(num_threads: int | str | None, quiet_if_unchanged: bool = False) -> int:
    """Set torch's CPU threads: N as configured, or (null / auto) the cores free right now.

    Called at the start and again before every unit that runs (the load of the shared cores
    changes between units); a change is logged. See `robust_rlhf.threads`.
    """
    from robust_rlhf.threads import apply_threads

    return apply_threads(num_threads, quiet_if_unchanged=quiet_if_unchanged)


def _check_methods(cfg: ExperimentConfig, methods, rm_specs: dict, rm_heads: dict, data_dir: Path, root: Path,
                   prompts_file: Path) -> None:
    """Refuse a bad method (aggregator vs reward model, heads, every policy config) before any unit runs."""
    for m, _, _ in methods:
        if m.aggregator.name.startswith("brme") and not (m.aggregator.name == "brme_tradeoff" and m.aggregator.lam == 0):
            head_type = rm_config(rm_specs[m.reward_model], data_dir, cfg.data.seed, cfg.device).model.head_type
            if head_type != "gaussian":
                raise UserError(f"method {m.name!r}: aggregator {m.aggregator.name} needs a gaussian (BRME) reward "
                                f"model; {m.reward_model!r} has {head_type} heads")
    for m, seeds, _ in methods:
        heads_of(m, rm_heads[m.reward_model])
        if m.type != "best_of_n":
            cls, _ = trainer(m.type)
            pc = build_dataclass(cls, policy_config_dict(cfg, m, seeds[0], root / "rm", prompts_file), f"methods[{m.name}]")
            if m.train_on == "each_head" and pc.kl.variance_aware and m.aggregator.name != "mean":
                raise UserError(f"method {m.name!r}: variance-aware training per head needs aggregator mean "
                                f"(the reward is the head's own), got {m.aggregator.name}")


def run_experiment(cfg: ExperimentConfig, output_dir: str | Path, on_unit_start: Callable[[str], None] | None = None,
                   progress: bool = True, render: bool = True) -> ExperimentOutcome:
    """Run (or resume) the experiment into ``output_dir``; write results.json and the report.

    Args:
        cfg: the resolved experiment config.
        output_dir: experiment folder (units/, results.json, plots/, report.html, config.yaml).
        on_unit_start: hook called with each unit key just before it runs (tests inject crashes).
        progress: show the tqdm bar over units (stage, current unit, ETA).
        render: write the PNGs and report.html after results.json.
    """
    import yaml

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _set_threads(cfg.num_threads)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    root = units_root(out)
    prompts = load_prompts(cfg.prompts)
    data = data_unit(cfg, prompts)
    data_dir = root / data.key
    prompts_file = data_dir / "prompts.jsonl"
    rm_specs = {r.name: r for r in cfg.reward_models}
    rm_units = rm_units_of(cfg, data, data_dir)  # recipes and their replicate seeds
    rm_heads = {name: rm_config(spec, data_dir, cfg.data.seed, cfg.device).model for name, spec in rm_specs.items()}
    rm_heads = {n: (1 if m.head_type == "scalar" else m.num_heads) for n, m in rm_heads.items()}
    methods = expanded_methods(cfg)
    _check_methods(cfg, methods, rm_specs, rm_heads, data_dir, root, prompts_file)  # before any unit runs
    all_seeds = sorted({s for _, seeds, _ in methods for s in seeds})
    pools = {s: pool_unit(cfg, s, data, prompts_file) for s in all_seeds}
    used_rms = sorted({m.reward_model for m, _, _ in methods})
    pool_scores = {(r, s): pool_score_unit(rm_units[r], pools[s], root) for r in used_rms for s in all_seeds}
    n_policy = sum(len(seeds) * len(heads_of(m, rm_heads[m.reward_model]))
                   for m, seeds, _ in methods if m.type != "best_of_n")
    n_calib = sum(cfg.calibration.max_probes for m, _, study in methods if m.calibrate_kl and study == "main")
    shift_units: dict = {}
    if cfg.shift.enabled:
        sets = shift_sets_unit(cfg, data, prompts_file)
        shift_units = {"sets": sets, **{r: shift_score_unit(u, sets, root) for r, u in rm_units.items()}}
    bon_units = bon_study_units(cfg, data, rm_units, root) if cfg.bon_study.enabled else {}
    total = len(bon_units) + 1 + len(rm_units) + len(pools) + len(pool_scores) + len(shift_units) + n_policy + n_calib
    recheck = None if isinstance(cfg.num_threads, int) else (lambda: _set_threads(cfg.num_threads, True))
    runner = UnitRunner(root, total, on_unit_start, progress, before_run=recheck)
    try:
        runner(data)
        for u in rm_units.values():
            runner(u)
        for u in pools.values():
            runner(u)
        for u in pool_scores.values():
            runner(u)
        for u in shift_units.values():
            runner(u)
        for u in bon_units.values():
            runner(u)
        coefs = calibrate_all(cfg, methods, rm_units, rm_heads, root, prompts_file, runner)
        run_index: list[dict] = []
        for m, seeds, study in methods:
            if m.type == "best_of_n":
                continue
            base_name = m.name.split("@", 1)[0]
            coef = coefs.get(m.name, coefs.get(base_name))
            for seed in seeds:
                for head in heads_of(m, rm_heads[m.reward_model]):
                    u = policy_unit(cfg, m, seed, head, rm_units[m.reward_model], root, prompts_file, kl_coef=coef)
                    runner(u)
                    run_index.append({"method": m.name, "seed": seed, "head": head, "key": u.key})
    finally:
        runner.close()
    results = analyse(cfg, out, methods, rm_units, pools, pool_scores, run_index, coefs, shift_units, bon_units)
    results["timing"] = {"wall_time_s": time.time() - t0, "units_run": runner.executed,
                         "units_cached": runner.skipped,
                         "unit_seconds": {k: read_json(root / k / DONE_FILE)["seconds"]
                                          for k in runner.executed + runner.skipped}}
    atomic_write_json(out / RESULTS_FILE, results)
    report = None
    if render:
        from robust_rlhf.report.html import write_report

        report = write_report(out)
    log.info("experiment finished in %.0f s (%d units run, %d cached): %s", time.time() - t0,
             len(runner.executed), len(runner.skipped), out / RESULTS_FILE)
    return ExperimentOutcome(out, results, runner.executed, runner.skipped, report)

