"""`robust-rlhf rm ...`: train, evaluate and score reward models."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from robust_rlhf.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_PRESET = "rm_ensemble_minilm"


def register(sub) -> None:
    rm = sub.add_parser("rm", help="reward models: train, eval, score",
                        description="Train, evaluate and score reward models (BT, BSR, linear-head ensembles, BRME).")
    rm_sub = rm.add_subparsers(dest="rm_command", metavar="SUBCOMMAND")
    rm_sub.required = True

    t = rm_sub.add_parser(
        "train", help="train a reward model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a reward model. Without --config: the embedded default, a K = 10 two-stage ensemble "
            f"on minilm-l6 over the built-in task (preset {DEFAULT_PRESET!r}).\n\n"
            "Override any config key with key=value, e.g.\n"
            "  robust-rlhf rm train --output-dir runs/rm model.num_heads=5 loss.bsr_coef=1e-3 stage1.max_steps=100\n\n"
            "Presets: rm_ensemble_minilm, rm_bt_minilm, rm_bsr_minilm, rm_brme_minilm, rm_layer_ensemble_minilm, "
            "rm_ensemble_smollm2_lora, rm_tiny."),
    )
    t.add_argument("--config", help="YAML file or built-in preset name (default: %(default)s)", default=DEFAULT_PRESET)
    t.add_argument("--output-dir", required=True, help="folder for the model, its config, logs and checkpoints")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    t.set_defaults(func=cmd_train)

    e = rm_sub.add_parser("eval", help="evaluate a reward model on preference pairs (metrics.json + PNG plots)",
                          description="Accuracy (per head, of the mean, per aggregator, per subset), ensemble "
                                      "variance histograms, uncertainty AUROC and calibration, hidden-state-norm "
                                      "dispersion, reward scale.")
    e.add_argument("--model", required=True, help="folder written by `rm train` (or save_pretrained)")
    e.add_argument("--data", default=None, help="preference pairs: .jsonl/.csv/.parquet, datasets folder, hf:org/name[:split] or builtin:<split>")
    e.add_argument("--pool", default=None,
                   help="best-of-n pool for uncertainty under shift (pool/... keys): prompt/response rows, several "
                        "responses per prompt, gold from --gold or a `gold` field; or builtin:validation|test")
    e.add_argument("--output-dir", required=True, help="where metrics.json and the plots go")
    e.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: %(default)s)")
    e.add_argument("--gold", default=None,
                   help="gold reward (vader, hf:<model>, module:function) for uncertainty/auroc_gold_abs_error: "
                        "does the per-text std predict a large error of the affinely matched reward? (default: none)")
    e.set_defaults(func=cmd_eval)

    s = rm_sub.add_parser("score", help="score (prompt, response) rows of a JSONL file",
                          description="Each input row has `prompt` and `response`; each output row is the input plus "
                                      "`reward` (mean over heads), `reward_std` and `rewards_per_head` "
                                      "(and `reward_std_per_head` for BRME heads).")
    s.add_argument("--model", required=True, help="reward model folder")
    s.add_argument("--input", required=True, help="JSONL with prompt and response fields")
    s.add_argument("--output", required=True, help="JSONL to write (atomically)")
    s.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: %(default)s)")
    s.add_argument("--max-line-bytes", type=int, default=None,
                   help="refuse an input line longer than this (default: 1 MiB, or ROBUST_RLHF_MAX_LINE_BYTES)")
    s.set_defaults(func=cmd_score)


def cmd_train(args) -> int:
    from robust_rlhf.config import load_config
    from robust_rlhf.utils import check_output_dir

    check_output_dir(args.output_dir)  # before the heavy imports: an unset variable fails at once
    from robust_rlhf.cli.guard import check_device, unchanged_on_refusal
    from robust_rlhf.models.hub import check_model_source
    from robust_rlhf.reward.train import train_reward_model
    from robust_rlhf.reward.train_config import RewardTrainConfig
    from robust_rlhf.threads import apply_threads

    cfg = load_config(RewardTrainConfig, args.config, args.overrides)
    check_device(cfg)
    check_model_source(cfg.model.backbone, "model.backbone")
    apply_threads("auto", announce=False)  # the cores free now (the user's OMP_NUM_THREADS wins); logged by the recipe
    with unchanged_on_refusal(args.output_dir):
        out = train_reward_model(cfg, args.output_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun / accelerate launch only the main process reports
    summary = json.loads((Path(out) / "train_summary.json").read_text())
    print(f"reward model saved to {out}")
    if "val_accuracy_mean" in summary:
        print(f"validation accuracy (mean of {cfg.model.num_heads} head(s)): {summary['val_accuracy_mean']:.3f}")
    return 0


MAX_BATCH = 1_000_000


def _check_batch_size(n: int) -> None:
    if not 1 <= n <= MAX_BATCH:
        raise UserError(f"--batch-size must be >= 1 and <= {MAX_BATCH}, got {n}")


def cmd_eval(args) -> int:
    from robust_rlhf.data.preferences import check_prompt_lengths, load_preferences
    from robust_rlhf.report.reward_eval import write_eval_report
    from robust_rlhf.reward.evaluate import evaluate_reward_model
    from robust_rlhf.reward.model import RewardModel

    from robust_rlhf.utils import check_output_dir

    _check_batch_size(args.batch_size)
    check_output_dir(args.output_dir)
    if args.data is None and args.pool is None:
        raise UserError("rm eval: give --data (preference pairs), --pool (a best-of-n pool) or both")
    gold = None
    if args.gold is not None:
        from robust_rlhf.gold import load_gold

        gold = load_gold(args.gold)  # a bad spec fails before the model is loaded
    pool = None
    if args.pool is not None:
        from robust_rlhf.reward.uncertainty import read_pool

        pool = read_pool(args.pool, gold is not None)  # bad rows fail before the model is loaded
    pairs = load_preferences(args.data) if args.data is not None else None  # bad rows fail before the model loads
    model = RewardModel.from_pretrained(args.model)
    if pairs is not None:
        check_prompt_lengths(pairs, model.tokenizer, model.config.max_length)
        metrics, arrays = evaluate_reward_model(model, pairs, batch_size=args.batch_size, gold=gold)
    else:
        metrics, arrays = {}, {}
    if pool is not None:
        from robust_rlhf.reward.uncertainty import evaluate_pool

        prompts, responses, pool_gold = pool
        metrics.update(evaluate_pool(model, prompts, responses, pool_gold if gold is None else gold(prompts, responses),
                                     batch_size=args.batch_size))
        metrics["pool"] = str(args.pool)
    metrics["model"], metrics["data"] = str(args.model), None if args.data is None else str(args.data)
    if args.data is None:
        from robust_rlhf.utils import atomic_write_json, write_errors

        with write_errors(Path(args.output_dir)):
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.output_dir) / "metrics.json", metrics)
        _print_pool(metrics)
        print(f"wrote {Path(args.output_dir) / 'metrics.json'}")
        return 0
    written = write_eval_report(metrics, arrays, args.output_dir)
    print(f"pairs: {metrics['num_pairs']}   accuracy (mean reward): {metrics['accuracy']:.3f} "
          f"[{metrics['accuracy_ci95'][0]:.3f}, {metrics['accuracy_ci95'][1]:.3f}]   "
          f"length-only baseline: {metrics['length_baseline_accuracy']:.3f}")
    if metrics["num_heads"] > 1:
        heads = metrics["accuracy_per_head"]
        print(f"per head: min {min(heads):.3f} max {max(heads):.3f}")
    u = metrics["uncertainty/auroc_misranked"]
    print(f"AUROC for misranked pairs: uncertainty {'n/a (one point head)' if u is None else f'{u:.3f}'}   "
          f"-|margin| baseline {metrics['uncertainty/auroc_misranked_small_margin']:.3f}"
          + (f"   gold |error| (per-text std) {metrics['uncertainty/auroc_gold_abs_error']:.3f}"
             if metrics.get("uncertainty/auroc_gold_abs_error") is not None else ""))
    if metrics.get("truncated_texts"):
        print(f"note: {metrics['truncated_texts']} texts were truncated to max_length")
    _print_pool(metrics)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _print_pool(metrics: dict) -> None:
    if "pool/num_prompts" not in metrics:
        return

    def f(key: str) -> str:
        v, se = metrics.get(f"pool/{key}"), metrics.get(f"pool/{key}_se")
        return "n/a" if v is None else f"{v:.3f}" + ("" if se is None else f" ± {se:.3f}")

    print(f"pool: {metrics['pool/num_prompts']} prompts x {metrics['pool/samples_per_prompt']} responses   "
          f"top picks below their prompt's median gold: {metrics['pool/top_pick_num_bad']}   "
          f"AUROC(std) for them: {f('top_pick_auroc')}   over-scoring AUROC(std): {f('overscoring_auroc')}   "
          f"Spearman: {f('overscoring_spearman')}")


SCORE_CHUNK_ROWS = 2048
SCORE_CHUNK_CHARS = 32 << 20
"""`rm score` reads, scores and writes at most this many rows / characters of text at a time."""


def _chunks(rows, max_rows: int = SCORE_CHUNK_ROWS, max_chars: int = SCORE_CHUNK_CHARS):
    """Lists of consecutive rows, each at most `max_rows` rows and (beyond its first row)
    `max_chars` characters of prompt + response."""
    chunk, chars = [], 0
    for row in rows:
        size = len(row["prompt"]) + len(row["response"])
        if chunk and (len(chunk) >= max_rows or chars + size > max_chars):
            yield chunk
            chunk, chars = [], 0
        chunk.append(row)
        chars += size
    if chunk:
        yield chunk


def cmd_score(args) -> int:
    from robust_rlhf.data.preferences import iter_scoring_inputs
    from robust_rlhf.data.text import render_pair
    from robust_rlhf.reward.model import RewardModel
    from robust_rlhf.utils import atomic_writer, check_line_cap, check_output_file, dumps_json

    _check_batch_size(args.batch_size)
    if args.max_line_bytes is not None:
        check_line_cap(args.max_line_bytes, "--max-line-bytes")
    model_files = [Path(args.model) / n for n in ("reward_config.json", "heads.safetensors")]
    check_output_file(args.output, inputs=[args.input, *model_files])
    # Two streamed passes, memory bounded by one chunk: every row is validated before the model
    # loads and before anything is written; then rows are read, scored and written chunk by chunk
    # into a temp file that becomes --output only when complete (removed on any failure or signal).
    for _ in iter_scoring_inputs(args.input, args.max_line_bytes):
        pass
    model = RewardModel.from_pretrained(args.model)
    n = 0
    with atomic_writer(args.output, "w", encoding="utf-8") as f:
        for chunk in _chunks(iter_scoring_inputs(args.input, args.max_line_bytes)):
            texts = [render_pair(r["prompt"], r["response"]) for r in chunk]  # the one rule (data/text.py)
            out = model.score([p for p, _ in texts], [r for _, r in texts], batch_size=args.batch_size)
            lines = []
            for i, row in enumerate(chunk):
                row = dict(row)
                row["reward"] = float(out.mean[i])
                row["reward_std"] = float(out.std[i])
                row["rewards_per_head"] = out.per_head[i].tolist()
                if out.per_head_std is not None:
                    row["reward_std_per_head"] = out.per_head_std[i].tolist()
                lines.append(dumps_json(row) + "\n")
            f.write("".join(lines))
            n += len(chunk)
    print(f"scored {n} rows -> {args.output}")
    if model.truncated_count:
        print(f"note: {model.truncated_count} texts were truncated to max_length={model.config.max_length}")
    return 0
