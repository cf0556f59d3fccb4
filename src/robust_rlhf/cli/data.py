"""`robust-rlhf data ...`: build the built-in gold-labelled task."""

from __future__ import annotations


def register(sub) -> None:
    d = sub.add_parser("data", help="build gold-labelled preference data",
                       description="Data utilities for the built-in gold-labelled task.")
    d_sub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    d_sub.required = True
    b = d_sub.add_parser(
        "build-task", help="generate the built-in positive-review task (the shipped fixture)",
        description="Complete the built-in review openings with the base policy, label pairs of completions "
                    "with the gold reward (VADER by default), split by prompt and write "
                    "builtin_{train,validation,test}.jsonl. The shipped fixture was made with the defaults: "
                    "robust-rlhf data build-task --output-dir src/robust_rlhf/data/fixtures")
    b.add_argument("--output-dir", required=True, help="folder for the JSONL files and builtin_task.json")
    b.add_argument("overrides", nargs="*", metavar="key=value",
                   help="TaskConfig overrides, e.g. completions_per_prompt=8 label_noise=0.25 gold=vader policy=smollm2-135m")
    b.set_defaults(func=cmd_build_task)


def cmd_build_task(args) -> int:
    from robust_rlhf.config import build_dataclass, parse_overrides
    from robust_rlhf.data.builtin_task import TaskConfig, build_task

    from robust_rlhf.utils import check_output_dir

    check_output_dir(args.output_dir)
    cfg = build_dataclass(TaskConfig, parse_overrides(args.overrides))
    summary = build_task(cfg, args.output_dir)
    for split in ("train", "validation", "test"):
        s = summary[split]
        print(f"{split}: {s['prompts']} prompts, {s['pairs']} pairs ({s['skipped_ties']} tied candidates skipped)")
    return 0
