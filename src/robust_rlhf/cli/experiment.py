"""`robust-rlhf experiment ...`: the over-optimisation lab (run, resume, re-render the report)."""

from __future__ import annotations

import argparse
import logging

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
            "Presets: experiment_demo (about 10 minutes on 2 CPU cores), experiment_study (each seed paper's claim "
            "with 95% intervals and a verdict; ~50 minutes on 2 CPU cores), experiment_tiny (tests), experiment_paper "
            "(a GPU; seed 002's scale).\n\n"
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
    from robust_rlhf.experiments.overopt import load_experiment_config, run_experiment

    from robust_rlhf.utils import check_output_dir

    from robust_rlhf.experiments.scheduler import Execution

    check_output_dir(args.output_dir)
    execution = Execution(workers=args.workers, executor=args.executor, address=args.address,
                          gpus_per_unit=args.gpus_per_unit)
    cfg = load_experiment_config(args.config, args.overrides)
    outcome = run_experiment(cfg, args.output_dir, progress=not args.no_progress, execution=execution)
    print(f"results: {outcome.output_dir / 'results.json'}")
    if outcome.report is not None:
        print(f"report:  {outcome.report}")
    for line in outcome.results.get("summary", []):
        print(f"  - {line}")
    return 0


def cmd_report(args) -> int:
    from robust_rlhf.report.html import write_report

    from robust_rlhf.utils import check_output_dir

    path = write_report(check_output_dir(args.output_dir))
    print(f"report: {path}")
    return 0
