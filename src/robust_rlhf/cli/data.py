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
    b.add_argument("--output-dir", required=True, help="folder for the JSONL files and builtin_task.json "
                   "(--task large: large_task.jsonl and large_task.json)")
    b.add_argument("--task", choices=("small", "large"), default="small",
                   help="small: the 670-pair task of the demo and tests (default); large: 1,003 openings in 8 domains "
                        "x 8 completions, sampled in resumable chunks (LargeTaskConfig keys as overrides). The shipped "
                        "large fixture: robust-rlhf data build-task --task large --output-dir runs/large_task "
                        "--features-dir runs/large_features, then data train-gold, then copy large_task.json* into "
                        "src/robust_rlhf/data/fixtures (docs/reward_models.md)")
    b.add_argument("--features-dir", default=None,
                   help="--task large: also keep the policy's pooled hidden states of every completion here "
                        "(what data train-gold reads; taken from the sampling at no extra cost; not shipped)")
    b.add_argument("--shard", default="0/1", metavar="I/N",
                   help="--task large: sample only chunks whose index %% N == I (N processes share the work); "
                        "run once more without it to assemble")
    b.add_argument("overrides", nargs="*", metavar="key=value",
                   help="TaskConfig overrides, e.g. completions_per_prompt=8 label_noise=0.25 gold=vader policy=smollm2-135m")
    b.set_defaults(func=cmd_build_task)
    g = d_sub.add_parser(
        "train-gold", help="train the learned gold on the large task (an MLP head on frozen SmolLM2-135M)",
        description="Train the learned gold once on the large task's whole labelled set (labels sampled by "
                    "Bradley-Terry from VADER): an MLP head on the sampling policy's pooled hidden states, kept by "
                    "build-task --task large --features-dir. Saves head.safetensors + config.json to --output-dir "
                    "and writes its scores of every completion into the task (gold.learned). The shipped gold: "
                    "robust-rlhf data train-gold --task-dir runs/large_task --features-dir runs/large_features "
                    "--output-dir src/robust_rlhf/gold/learned_gold")
    g.add_argument("--task-dir", required=True, help="folder holding large_task.jsonl and large_task.json")
    g.add_argument("--features-dir", required=True, help="the --features-dir of build-task --task large")
    g.add_argument("--output-dir", required=True, help="folder for the gold's head.safetensors and config.json")
    g.add_argument("overrides", nargs="*", metavar="key=value",
                   help="LearnedGoldConfig overrides, e.g. steps=300 hidden=128 holdout_split=test")
    g.set_defaults(func=cmd_train_gold)


def cmd_build_task(args) -> int:
    from robust_rlhf.config import build_dataclass, parse_overrides
    from robust_rlhf.data.builtin_task import TaskConfig, build_task

    from robust_rlhf.utils import check_output_dir

    check_output_dir(args.output_dir)
    if args.task == "large":
        from robust_rlhf.data.large_task import LargeTaskConfig, build_large_task

        from robust_rlhf.errors import UserError

        i, _, n = args.shard.partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise UserError(f"--shard {args.shard!r}: expected I/N with 0 <= I < N, e.g. 0/2")
        cfg = build_dataclass(LargeTaskConfig, parse_overrides(args.overrides))
        summary = build_large_task(cfg, args.output_dir, features_dir=args.features_dir, shard=(int(i), int(n)))
        if summary is None:
            print(f"shard {args.shard} sampled; chunks of other shards are missing (run again without --shard "
                  "once they are done, to assemble)")
            return 0
        for split in ("train", "validation", "test"):
            s = summary[split]
            pairs = ", ".join(f"{n} pairs under {g}" for g, n in s["pairs"].items())
            print(f"{split}: {s['prompts']} prompts, {pairs}")
        return 0
    cfg = build_dataclass(TaskConfig, parse_overrides(args.overrides))
    summary = build_task(cfg, args.output_dir)
    for split in ("train", "validation", "test"):
        s = summary[split]
        print(f"{split}: {s['prompts']} prompts, {s['pairs']} pairs ({s['skipped_ties']} tied candidates skipped)")
    return 0


def cmd_train_gold(args) -> int:
    from robust_rlhf.config import build_dataclass, parse_overrides
    from robust_rlhf.data.train_gold import train_learned_gold
    from robust_rlhf.gold.learned import LearnedGoldConfig
    from robust_rlhf.utils import check_output_dir

    check_output_dir(args.output_dir)
    cfg = build_dataclass(LearnedGoldConfig, parse_overrides(args.overrides))
    report = train_learned_gold(cfg, args.task_dir, args.features_dir, args.output_dir)
    for key, what in (("accuracy_training_labels", "training"), ("accuracy_held_out", "held-out")):
        if key in report:
            a = report[key]
            print(f"{what} prompts: {a['prompts']} ({a['pairs']} pairs): accuracy {a['accuracy_bt_labels']:.3f} vs the "
                  f"BT-sampled labels, {a['accuracy_vader_order']:.3f} vs VADER's order")
    return 0
