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
experiment only re-computes the analysis and re-renders the report. `run_experiment` declares
the units with their dependencies, then `robust_rlhf.experiments.scheduler` runs them: one after
another in this process, in N local worker processes, or as Ray tasks -- with the same results.

    robust-rlhf experiment run --config experiment_demo --output-dir runs/demo
    robust-rlhf experiment run --config experiment_study --output-dir runs/study --workers 4
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from robust_rlhf.config import build_dataclass, config_to_dict
from robust_rlhf.errors import UserError
from robust_rlhf.experiments.analysis import analyse
from robust_rlhf.experiments.calibration import calibration_flow
from robust_rlhf.experiments.config import ExperimentConfig, MethodSpec, expanded_methods, heads_of
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
from robust_rlhf.experiments.scheduler import LOCK_FILE, Execution, Scheduler, make_backend
from robust_rlhf.experiments.units import DONE_FILE, Unit, read_json, units_root
from robust_rlhf.utils import FolderLock, atomic_write_json, atomic_write_text

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


@dataclass
class _Plan:
    """The experiment's units, declared before any runs (`_plan`)."""

    data: Unit
    rm_units: dict[str, Unit]
    rm_heads: dict[str, int]
    pools: dict[int, Unit]
    pool_scores: dict[tuple[str, int], Unit]
    shift_units: dict[str, Unit]
    policies: list[tuple[dict, Unit]]
    """(run index entry, unit) of every policy whose KL coefficient is known now"""
    calibrated: dict[str, tuple]
    """calibrated method -> (method, seed, head, rm unit, the methods that take its coefficient)"""
    total: int
    """planned units (calibrations at their max_probes)"""
    bon_units: dict[str, Unit]
    """the best-of-n study: its pool ("pool") and each reward model's scores of it"""


def _plan(cfg: ExperimentConfig, root: Path, prompts: list[str], methods) -> _Plan:
    """Declare every unit (and check every method) before anything is written or run."""
    data = data_unit(cfg, prompts)
    data_dir = root / data.key
    prompts_file = data_dir / "prompts.jsonl"
    rm_specs = {r.name: r for r in cfg.reward_models}
    rm_units = rm_units_of(cfg, data, root)  # recipes and their replicate seeds
    rm_models = {name: rm_config(spec, data_dir, cfg.data.seed, cfg.device).model for name, spec in rm_specs.items()}
    rm_heads = {n: (1 if m.head_type == "scalar" else m.num_heads) for n, m in rm_models.items()}
    _check_methods(cfg, methods, rm_specs, rm_heads, data_dir, root, prompts_file)
    all_seeds = sorted({s for _, seeds, _ in methods for s in seeds})
    pools = {s: pool_unit(cfg, s, data, prompts_file) for s in all_seeds}
    used_rms = sorted({m.reward_model for m, _, _ in methods})
    pool_scores = {(r, s): pool_score_unit(rm_units[r], pools[s], root) for r in used_rms for s in all_seeds}
    shift_units: dict = {}
    if cfg.shift.enabled:
        sets = shift_sets_unit(cfg, data, prompts_file)
        shift_units = {"sets": sets, **{r: shift_score_unit(u, sets, root) for r, u in rm_units.items()}}
    # calibrated main methods: their policies (and their sweep / perturbation copies') wait for the coefficient
    calibrated = {m.name: (m, seeds[0], heads_of(m, rm_heads[m.reward_model])[0], rm_units[m.reward_model], [])
                  for m, seeds, study in methods if m.type != "best_of_n" and m.calibrate_kl and study == "main"}
    policies: list[tuple[dict, Unit]] = []
    for m, seeds, study in methods:
        if m.type == "best_of_n":
            continue
        owner = m.name if m.name in calibrated else m.name.split("@", 1)[0]
        if owner in calibrated:
            calibrated[owner][4].append((m, seeds))
            continue
        policies += _policy_units(cfg, m, seeds, rm_heads, rm_units, root, prompts_file, None)
    n_policy = sum(len(seeds) * len(heads_of(m, rm_heads[m.reward_model]))
                   for m, seeds, _ in methods if m.type != "best_of_n")
    bon_units = bon_study_units(cfg, data, rm_units, root) if cfg.bon_study.enabled else {}
    total = (len(bon_units) + 1 + len(rm_units) + len(pools) + len(pool_scores) + len(shift_units) + n_policy
             + cfg.calibration.max_probes * len(calibrated))
    return _Plan(data, rm_units, rm_heads, pools, pool_scores, shift_units, policies, calibrated, total, bon_units)


def _policy_units(cfg: ExperimentConfig, m: MethodSpec, seeds, rm_heads, rm_units, root: Path, prompts_file: Path,
                  coef: float | None) -> list[tuple[dict, Unit]]:
    out = []
    for seed in seeds:
        for head in heads_of(m, rm_heads[m.reward_model]):
            u = policy_unit(cfg, m, seed, head, rm_units[m.reward_model], root, prompts_file, kl_coef=coef)
            out.append(({"method": m.name, "seed": seed, "head": head, "key": u.key}, u))
    return out


def _calibrated_policies(cfg: ExperimentConfig, plan: _Plan, name: str, root: Path, prompts_file: Path,
                         scheduler: Scheduler, coefs: dict, run_index: list[dict]):
    """Flow: calibrate one method's KL coefficient, then run its policies (and its copies') at it."""
    method, seed, head, rm, copies = plan.calibrated[name]
    coef = yield from calibration_flow(cfg, method, seed, head, rm, root, prompts_file,
                                       on_probes=lambda n: scheduler.grow(n - cfg.calibration.max_probes))
    coefs[name] = coef
    units = []
    for m, seeds in copies:
        for entry, u in _policy_units(cfg, m, seeds, plan.rm_heads, plan.rm_units, root, prompts_file, coef):
            run_index.append(entry)
            units.append(u)
    yield units


def run_experiment(cfg: ExperimentConfig, output_dir: str | Path, on_unit_start: Callable[[str], None] | None = None,
                   progress: bool = True, render: bool = True, execution: Execution | None = None) -> ExperimentOutcome:
    """Run (or resume) the experiment into ``output_dir``; write results.json and the report.

    The units are declared first (data -> reward models -> pools and their scores, shifted sets
    -> calibration probes -> policies), then `Scheduler` runs them: one after another in this
    process (the default, 1 worker), in local worker processes or on Ray (``execution``). The
    results do not depend on which (at a fixed thread count per unit).

    Args:
        cfg: the resolved experiment config.
        output_dir: experiment folder (units/, results.json, plots/, report.html, config.yaml, .lock).
        on_unit_start: hook called in this process with each unit key just before it is
            submitted (tests inject crashes).
        progress: show the bar over units (running / run / cached, ETA).
        render: write the PNGs and report.html after results.json.
        execution: workers / executor (`Execution`); None = 1 worker in this process.

    Raises:
        UserError: a bad method or config (before anything is written); another `experiment run`
            holds the folder.
    """
    import yaml

    execution = execution or Execution()
    out = Path(output_dir)
    t0 = time.time()
    root = units_root(out)
    prompts = load_prompts(cfg.prompts)
    methods = expanded_methods(cfg)
    plan = _plan(cfg, root, prompts, methods)  # every check before the first write
    prompts_file = root / plan.data.key / "prompts.jsonl"
    _set_threads(cfg.num_threads)
    recheck = None if isinstance(cfg.num_threads, int) else (lambda: _set_threads(cfg.num_threads, True))
    backend = make_backend(execution, root, cfg.num_threads, cfg.device, before_run=recheck)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(out, "`experiment run`", LOCK_FILE)
    except BaseException:
        backend.close(kill=True)
        raise
    try:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        scheduler = Scheduler(root, backend, plan.total, progress, on_unit_start, retries=execution.retries)
        for u in [plan.data, *plan.rm_units.values(), *plan.pools.values(), *plan.pool_scores.values(),
                  *plan.shift_units.values(), *plan.bon_units.values()]:
            scheduler.add(u)
        coefs: dict[str, float] = {}
        run_index = [entry for entry, _ in plan.policies]
        for name in plan.calibrated:  # first: a calibration gates its policies
            scheduler.add_flow(_calibrated_policies(cfg, plan, name, root, prompts_file, scheduler, coefs, run_index))
        for _, u in plan.policies:
            scheduler.add(u)
        scheduler.run()
        results = analyse(cfg, out, methods, plan.rm_units, plan.pools, plan.pool_scores, run_index, coefs,
                          plan.shift_units, plan.bon_units)
        results["timing"] = {"wall_time_s": time.time() - t0, "execution": backend.describe,
                             "units_run": scheduler.executed,
                             "units_cached": scheduler.skipped,
                             "unit_seconds": {k: read_json(root / k / DONE_FILE)["seconds"]
                                              for k in scheduler.executed + scheduler.skipped}}
        atomic_write_json(out / RESULTS_FILE, results)
        report = None
        if render:
            from robust_rlhf.report.html import write_report

            report = write_report(out)
    finally:
        lock.release()
    log.info("experiment finished in %.0f s (%d units run, %d cached): %s", time.time() - t0,
             len(scheduler.executed), len(scheduler.skipped), out / RESULTS_FILE)
    return ExperimentOutcome(out, results, scheduler.executed, scheduler.skipped, report)
