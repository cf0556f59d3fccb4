"""`robust-rlhf experiment ...`: the over-optimisation lab (run, resume, re-render the report)."""

from __future__ import annotations

import argparse
import logging

from robust_rlhf.cli.guard import check_device, unchanged_on_refusal

log = logging.getLogger(__name__)

DEFAULT_PRESET = "experiment_demo"


def register(sub) -> None:
    ex = sub.add_parser("experiment", help="over-optimisation experiments: run, report",
                        description="Measure reward over-optimisation: gold-labelled data -> proxy reward models -> "
                                    "best-of-n / PPO / robust PPO / RLOO x seeds -> gold and proxy reward against "
                                    "sqrt(KL), Gao fits, final-gold distributions, a self-contained HTML report.")
    ex_sub = ex.add_subparsers(dest="experiment_command", metavar="SUBCOMMAND")
    ex_sub.required = True

    r = ex_sub.add_parser(
        "run", help="run or resume an experiment (results.json, PNGs, report.html)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run an experiment into --output-dir. Every finished unit (data, each reward model, each policy run) is "
            "cached there; re-running the same command resumes a killed experiment, and re-running a finished one "
            "only re-renders the report.\n\n"
            "Presets: experiment_demo (~8 minutes on 2 CPU cores with the default --workers auto), experiment_study "
            "(each seed paper's claim with a 95% interval, MDE and Holm verdict; several hours on 2 CPU cores: a GPU or "
            "a Ray cluster), experiment_study_bon (its reward-model and best-of-n claims only, no policy training), "
            "experiment_large (the large task with a learned gold), experiment_tiny (tests), experiment_paper (a GPU; "
            "seed 002's scale).\n\n"
            "Parallel: units whose inputs are finished run at once -- on this machine with --workers N, on a Ray "
            "cluster with --executor ray --address auto. The results are those of a serial run.\n\n"
            "Override any key with key=value, e.g.\n"
            "  robust-rlhf experiment run --output-dir runs/demo seeds=[0,1,2] data.label_noise=0.25"),
    )
    r.add_argument("--config", default=DEFAULT_PRESET,
                   help="YAML file or built-in preset name (default: %(default)s)")
    r.add_argument("--output-dir", required=True, help="experiment folder (units/, results.json, plots/, report.html)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar (logging still reports each unit)")
    r.add_argument("--workers", default="auto", type=_workers, metavar="N|auto",
                   help="units at once on this machine (each a separate process; threads per unit split so that "
                        "workers x threads <= free cores; 1 = one after another in this process). With --executor "
                        "ray: the most units submitted at once. Default: auto (from the free cores)")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local (this machine) or ray (each unit a Ray task; the output folder must be on a path "
                        "every node sees; pip install -e '.[ray]'). Default: %(default)s")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, ray://HEAD:10001); default: start a local Ray")
    r.add_argument("--gpus-per-unit", type=float, default=None, metavar="F",
                   help="Ray: GPUs per unit, fractional to share a GPU (default: 0.25 when the cluster has GPUs)")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    r.set_defaults(func=cmd_run)

    p = ex_sub.add_parser("report", help="re-render report.html and the PNGs from an experiment's results.json",
                          description="Reads OUTPUT/results.json only (no training); writes OUTPUT/plots/*.png and "
                                      "OUTPUT/report.html.")
    p.add_argument("--output-dir", required=True, help="a folder written by `experiment run`")
    p.set_defaults(func=cmd_report)


def _workers(text: str) -> int | str:
    if text == "auto":
        return "auto"
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}")
    return int(text)


def cmd_run(args) -> int:
    from robust_rlhf.experiments.config import load_experiment_config
    from robust_rlhf.experiments.overopt import run_experiment
    from robust_rlhf.experiments.scheduler import Execution
    from robust_rlhf.utils import check_output_dir

    check_output_dir(args.output_dir)
    execution = Execution(workers=args.workers, executor=args.executor, address=args.address,
                          gpus_per_unit=args.gpus_per_unit)
    cfg = load_experiment_config(args.config, args.overrides)
    check_experiment(cfg)  # every refusal the plan can make, before the folder is touched
    with unchanged_on_refusal(args.output_dir):
        outcome = run_experiment(cfg, args.output_dir, progress=not args.no_progress, execution=execution)
    print(f"results: {outcome.output_dir / 'results.json'}")
    if outcome.report is not None:
        print(f"report:  {outcome.report}")
    for line in outcome.results.get("summary", []):
        print(f"  - {line}")
    return 0


def check_experiment(cfg) -> None:
    """Refuse a config the lab would refuse after writing config.yaml: device, prompts, methods
    against their reward models (`_check_methods`), each policy config. Writes nothing."""
    import tempfile
    from pathlib import Path

    from robust_rlhf.experiments.config import expanded_methods
    from robust_rlhf.experiments.overopt import _check_methods
    from robust_rlhf.experiments.stages import data_unit, load_prompts, rm_config

    check_device(cfg)
    prompts = load_prompts(cfg.prompts)
    data = data_unit(cfg, prompts)
    root = Path(tempfile.gettempdir()) / "robust-rlhf-plan-check"  # paths only: nothing is created there
    data_dir = root / data.key
    rm_specs = {r.name: r for r in cfg.reward_models}
    models = {name: rm_config(spec, data_dir, cfg.data.seed, cfg.device).model for name, spec in rm_specs.items()}
    rm_heads = {n: (1 if m.head_type == "scalar" else m.num_heads) for n, m in models.items()}
    _check_methods(cfg, expanded_methods(cfg), rm_specs, rm_heads, data_dir, root, data_dir / "prompts.jsonl")


REPORT_KEYS = ("methods", "reference", "reward_models")


def cmd_report(args) -> int:
    import contextlib
    import json
    from pathlib import Path

    from robust_rlhf.errors import UserError
    from robust_rlhf.experiments.scheduler import LOCK_FILE
    from robust_rlhf.report.html import write_report
    from robust_rlhf.utils import FolderLock, check_fits_in_memory, check_output_dir

    out = check_output_dir(args.output_dir)
    results = Path(out) / "results.json"
    # no results.json: write_report's own one-line refusal, and no lock file left in a folder that is no experiment
    lock = contextlib.nullcontext()
    if results.is_file():  # a folder of another kind (an rm eval, a simulation) has another results.json
        check_fits_in_memory(results, "results file")
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise UserError(f"{results}: invalid JSON ({e})") from None
        missing = [k for k in REPORT_KEYS if not isinstance(data, dict) or k not in data]
        if missing:
            raise UserError(f"{results}: not an experiment's results (no {', '.join(repr(k) for k in missing)}); "
                            f"--output-dir must be a folder written by `robust-rlhf experiment run`")
        lock = FolderLock(out, "`experiment run` or `experiment report`", LOCK_FILE)  # not while a run writes here
    with lock:
        path = write_report(out)
    print(f"report: {path}")
    return 0
