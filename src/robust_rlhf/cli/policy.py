"""`robust-rlhf policy ...`: optimise a policy against a (robust) reward ensemble, and sample from it."""

from __future__ import annotations

import argparse
import json
import math
import os
import logging
from pathlib import Path

from robust_rlhf.errors import UserError

from robust_rlhf.cli.guard import check_device, check_input_path, unchanged_on_refusal

log = logging.getLogger(__name__)

DEFAULT_PRESET = "policy_ppo_default"
METHODS = ("ppo", "rloo", "best_of_n")


def register(sub) -> None:
    pol = sub.add_parser("policy", help="policy optimisation: train (PPO / RLOO / best-of-n), sample",
                         description="Optimise an LM policy against a reward ensemble (PPO, variance-aware PPO, "
                                     "BRME robust PPO, RLOO, best-of-n) and sample from the result.")
    pol_sub = pol.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    pol_sub.required = True

    t = pol_sub.add_parser(
        "train", help="train a policy (method set by the config: ppo, rloo or best_of_n)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a policy. The config's `method` picks the optimiser: ppo (also variance-aware PPO with "
            "kl.variance_aware=true, BRME robust PPO with reward.aggregator.name=brme_tradeoff), rloo, or "
            "best_of_n (no training: sample n, pick by proxy, report gold against KL = log n - (n-1)/n).\n\n"
            f"Without --config: a short embedded-default PPO (preset {DEFAULT_PRESET!r}) of SmolLM2-135M on the "
            "built-in prompts against the default reward ensemble, which is trained first into "
            "OUTPUT_DIR/reward_model when reward.model is null.\n\n"
            "Override any config key with key=value, e.g.\n"
            "  robust-rlhf policy train --output-dir runs/ppo train.steps=50 kl.coef=0.1 reward.model=runs/rm\n"
            "  robust-rlhf policy train --config policy_vappo --output-dir runs/vappo reward.model=runs/rm\n"
            "  robust-rlhf policy train --output-dir runs/ppo resume=true   # continue after an interruption\n\n"
            "Presets: policy_ppo_default, policy_vappo, policy_brme, policy_rloo, policy_best_of_n, policy_tiny."),
    )
    t.add_argument("--config", default=DEFAULT_PRESET,
                   help="YAML file or built-in preset name (default: %(default)s)")
    t.add_argument("--output-dir", required=True,
                   help="run folder: config.yaml, metrics.jsonl/.csv, checkpoints/, policy/")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    t.set_defaults(func=cmd_train)

    s = pol_sub.add_parser(
        "sample", help="generate responses from a trained policy and score them with proxy and gold",
        description="Each output row: prompt, response, proxy_reward (aggregated), proxy_mean, proxy_std, "
                    "proxy_per_head, gold_reward.",
    )
    s.add_argument("--policy", required=True,
                   help="a `policy train` run folder, its policy/ folder, a checkpoint, or a model name/folder")
    s.add_argument("--prompts", required=True, help="prompts: JSONL with a `prompt` field, or plain text one per line")
    s.add_argument("--output", required=True, help="JSONL file to write (atomically)")
    s.add_argument("--reward-model", default=None,
                   help="proxy: reward model folder or gold:<spec> (default: the run's reward model, if any)")
    s.add_argument("--aggregator", default=None,
                   help="aggregator name for proxy_reward (default: the run's, else mean)")
    s.add_argument("--gold", default="vader", help="gold reward: vader, hf:<model>, module:function (default: %(default)s)")
    s.add_argument("--num-samples", type=int, default=1, help="responses per prompt (default: %(default)s)")
    s.add_argument("--max-new-tokens", type=int, default=None, help="response length cap (default: the run's, else 24)")
    s.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the run's, else 1.0)")
    s.add_argument("--batch-size", type=int, default=32, help="prompts generated at once (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    s.set_defaults(func=cmd_sample)


def _method(config: str | None, overrides: list[str]) -> str:
    from robust_rlhf.config import parse_overrides, read_config_source

    data = read_config_source(config) if config is not None else {}
    method = parse_overrides(overrides).get("method", data.get("method", "ppo"))
    if method not in METHODS:
        raise UserError(f"config method {method!r}: expected one of {', '.join(METHODS)}")
    return method


def cmd_train(args) -> int:
    from robust_rlhf.config import load_config

    from robust_rlhf.utils import check_output_dir

    check_output_dir(args.output_dir)
    method = _method(args.config, args.overrides)
    if method == "ppo":
        from robust_rlhf.policy.ppo import PPOConfig as Cfg, train_ppo as fn
    elif method == "rloo":
        from robust_rlhf.policy.rloo import RLOOConfig as Cfg, train_rloo as fn
    else:
        from robust_rlhf.policy.best_of_n import BestOfNConfig as Cfg, run_best_of_n as fn
    cfg = load_config(Cfg, args.config, args.overrides)
    check_policy_inputs(cfg)  # before the run folder is touched
    from robust_rlhf.threads import apply_threads

    apply_threads("auto", announce=False)  # the cores free now (the user's OMP_NUM_THREADS wins); logged by the recipe
    with unchanged_on_refusal(args.output_dir):
        out = Path(fn(cfg, args.output_dir))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun / accelerate launch only the main process reports
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    print(f"{method}: results in {out}")
    if rows:
        last = rows[-1]
        gold = [r for r in rows if "gold_reward" in r]

        def num(v) -> str:  # a non-finite value is written as null (strict JSON): never printed as a number
            return "not finite (null in metrics.jsonl)" if v is None or not math.isfinite(v) else f"{v:.4f}"

        msg = f"last step {last['step']}: proxy reward {num(last['proxy_reward'])}, KL {num(last['kl'])}"
        if gold:
            msg += f", gold reward {num(gold[-1]['gold_reward'])} (step {gold[-1]['step']})"
        print(msg)
    return 0


def check_policy_inputs(cfg) -> None:
    """What a policy run reads, checked before it writes config.yaml: the device, the reward model
    folder, the prompts and the policy model (a hub-looking name that is no local folder fails at
    once when the hub is not configured reachable)."""
    from robust_rlhf.models.hub import check_model_source

    check_device(cfg)
    reward = getattr(cfg, "reward", None)
    check_input_path("reward.model", getattr(reward, "model", None), "reward_config.json")
    data = getattr(cfg, "data", None)
    if getattr(data, "prompts", None):
        from robust_rlhf.data.prompts import train_eval_prompts

        train_eval_prompts(data)
    model = getattr(cfg, "model", None)
    if getattr(model, "name", None):
        check_model_source(model.name, "model.name")


def _run_config(policy_dir: Path) -> dict:
    """The config of the policy run ``policy_dir`` belongs to (itself, or up to two folders up), read
    by `robust_rlhf.config.saved_run_config`; {} when there is none or it cannot be read."""
    from robust_rlhf.config import saved_run_config

    for cand in (policy_dir, policy_dir.parent, policy_dir.parent.parent):
        try:
            data = saved_run_config(cand, "a policy run's")
        except UserError:
            return {}
        if data is not None and "method" in data:
            data["_dir"] = str(cand)
            return data
    return {}


def cmd_sample(args) -> int:
    import torch

    from robust_rlhf.aggregate import AggregatorConfig
    from robust_rlhf.data.prompts import load_prompts_file
    from robust_rlhf.gold import load_gold
    from robust_rlhf.models.generation import SamplingConfig, generate
    from robust_rlhf.policy.model import ModelConfig, load_policy, load_saved_policy
    from robust_rlhf.policy.rewards import RewardConfig, TrainingReward
    from robust_rlhf.reward.sources import load_reward_source
    from robust_rlhf.utils import atomic_write_jsonl

    from robust_rlhf.utils import check_output_file, check_seed

    from robust_rlhf.config import MAX_CONFIG_INT

    if args.num_samples < 1 or args.batch_size < 1:
        raise UserError("--num-samples and --batch-size must be >= 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    for flag in ("num_samples", "batch_size", "max_new_tokens"):  # absurd sizes: a typo, not a request
        value = getattr(args, flag)
        if value is not None and value > MAX_CONFIG_INT:
            raise UserError(f"--{flag.replace('_', '-')} {value} is absurdly large (limit {MAX_CONFIG_INT:,})")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature must be a finite number > 0, got {args.temperature}")
    check_seed(args.seed, "--seed")
    check_output_file(args.output, inputs=[args.prompts])
    prompts = load_prompts_file(args.prompts)
    pdir = Path(args.policy)
    run_cfg = _run_config(pdir) if pdir.exists() else {}
    reward_spec = args.reward_model
    rcfg = run_cfg.get("reward", {}) or {}
    if reward_spec is None:
        if rcfg.get("model"):
            reward_spec = rcfg["model"]
        elif run_cfg and (Path(run_cfg["_dir"]) / "reward_model" / "reward_config.json").exists():
            reward_spec = str(Path(run_cfg["_dir"]) / "reward_model")
    if reward_spec is None:
        raise UserError("no proxy reward: pass --reward-model (a reward model folder or gold:vader)")
    agg = dict(rcfg.get("aggregator") or {})
    if args.aggregator is not None:
        agg = {"name": args.aggregator}
    try:
        agg_cfg = AggregatorConfig(**agg)
    except TypeError as e:
        raise UserError(f"aggregator settings: {e}") from None
    reward = TrainingReward(load_reward_source(reward_spec), RewardConfig(model=reward_spec, aggregator=agg_cfg))
    gold = load_gold(args.gold)
    if pdir.exists():
        policy = load_saved_policy(pdir)  # run folder, policy/ folder, checkpoint, or a full model folder
    else:
        policy = load_policy(ModelConfig(name=args.policy), with_value_head=False)  # a base model name
    policy.eval()

    scfg = dict(run_cfg.get("sampling") or {})
    if args.max_new_tokens is not None:
        scfg["max_new_tokens"] = args.max_new_tokens
    if args.temperature is not None:
        scfg["temperature"] = args.temperature
    try:
        sampling = SamplingConfig(**scfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"sampling settings: {e}") from None

    torch.manual_seed(args.seed)
    rows = []
    expanded = [p for p in prompts for _ in range(args.num_samples)]
    for i in range(0, len(expanded), args.batch_size):
        ro = generate(policy.lm, policy.tokenizer, expanded[i : i + args.batch_size], sampling)
        out, proxy = reward.score(ro.prompts, ro.responses)
        golds = gold(ro.prompts, ro.responses)
        for j, (p, r) in enumerate(zip(ro.prompts, ro.responses)):
            rows.append({"prompt": p, "response": r, "proxy_reward": float(proxy[j]), "proxy_mean": float(out.mean[j]),
                         "proxy_std": float(out.std[j]), "proxy_per_head": out.per_head[j].tolist(),
                         "gold_reward": float(golds[j])})
    atomic_write_jsonl(args.output, rows)
    n = len(rows)
    print(f"wrote {n} samples to {args.output}: mean proxy {sum(r['proxy_reward'] for r in rows) / n:.4f}, "
          f"mean gold {sum(r['gold_reward'] for r in rows) / n:.4f}")
    return 0
