"""Policy-optimisation benchmark: our RLOO vs TRL's RLOOTrainer, our PPO vs our RLOO, one PPO
iteration vs the passes it is made of, and the peak memory of a LoRA policy whose reference is
the same model with adapters disabled vs a separate reference copy.

    python benchmarks/bench_policy.py                    # defaults: 4 prompts x k=2, 16 new tokens, 3 steps
    python benchmarks/bench_policy.py --prompts 8 --k 2 --new-tokens 24 --steps 4
    python benchmarks/bench_policy.py --trl-precision fp32 --steps 2 --new-tokens 4 --repeats 1   # quick

Every part runs in its own subprocess (clean peak-memory numbers, no warm caches shared), on the
same model (--model, default smollm2-135m, LoRA r = 16 on q/k/v/o), prompts, batch, generation
length, sampling (temperature 1, no top-k/top-p) and beta = 0.05. Throughput = samples per second
over the timed steps (the first step is a warm-up and not timed). Throughput parts run round-robin
--repeats times and the best run of each is kept (the least disturbed on a shared machine).

Parts:
  ours_rloo        our RLOO (robust_rlhf.policy.rloo.train_rloo), gold reward vader, no eval/checkpoints.
  trl_rloo_fp32    TRL RLOOTrainer with bf16=False (fp32, as ours).
  trl_rloo_bf16    TRL RLOOTrainer with bf16 left unset: TRL's own default, which its config's
                   __post_init__ turns on (bf16 mixed precision, and a bf16 copy for generation).
  ours_ppo         our PPO (train_ppo, ppo.epochs=1, ppo.num_minibatches=1, batch = prompts * k
                   samples), then, in the same process and on the same batch shapes, the passes one
                   such PPO iteration is made of, each timed alone (see "PPO iteration vs parts").
  mem_shared/copy  one PPO step; peak memory with the shared LoRA reference vs a separate copy.

PPO iteration vs parts. With one epoch of one minibatch, train_ppo scores the rollout with a
forward *with* gradients (values included) and reuses it as the update forward, so one iteration
needs exactly: (1) one `generate` of the batch, (2) one policy forward with values, with grad,
(3) one no-grad reference forward (adapters disabled), (4) one backward of the loss, (5) gradient
clip + optimizer step. The sum of (1)-(5), each timed alone, is the denominator of
``ppo_iteration_vs_parts``; what the ratio counts above 1 is the recipe's own work (reward scoring,
KL / GAE / whitening, entropy for the logs, metrics). A no-grad policy forward with values (what a
multi-epoch PPO does before its update forwards) is timed too and reported as ``forward_nograd_s``,
outside the sum.

The last output line is one JSON object with every ratio:
  rloo_samples_per_s_vs_trl        ours / TRL at fp32 (> 1: ours faster; null if not run)
  rloo_samples_per_s_vs_trl_bf16   ours / TRL at its default bf16 (null if not run)
  ppo_cost_per_sample_vs_rloo      our RLOO samples/s / our PPO samples/s (target <= 1.5)
  ppo_iteration_vs_parts           PPO iteration time / sum of its parts (target <= 1.3)
  lora_ref_peak_mem_vs_copy        shared-reference peak memory / separate copy (< 1: saves memory)
plus the card, the setting and the raw numbers of every part.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

MODEL = "smollm2-135m"


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return f"cpu ({os.cpu_count()} cores)"


def _common(a) -> list[str]:
    return [f"model.name={a.model}", f"train.batch_size={a.prompts}", f"sampling.max_new_tokens={a.new_tokens}",
            f"train.steps={a.steps}", "reward.model=gold:vader", "log.eval_every=0", "log.checkpoint_every=0",
            "log.progress=false", "train.lr=1e-5", "kl.coef=0.05"]


def _ppo_overrides(a) -> list[str]:
    n = a.prompts * a.k  # the same number of samples per step as RLOO
    return _common(a) + [f"train.batch_size={n}", "ppo.epochs=1", "ppo.num_minibatches=1", *a.set]


def _rloo_overrides(a) -> list[str]:
    return _common(a) + [f"rloo.k={a.k}", *a.set]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def part_ours_rloo(a) -> dict:
    from robust_rlhf.config import load_config
    from robust_rlhf.policy.rloo import RLOOConfig, train_rloo

    cfg = load_config(RLOOConfig, None, _rloo_overrides(a))
    times, lengths = [], []
    with tempfile.TemporaryDirectory() as d:
        train_rloo(cfg, d, callback=lambda s, row: (times.append(row["time/step_s"]),
                                                    lengths.append(row["policy/response_length"])))
    n = a.prompts * a.k
    return {"samples_per_s": n * len(times[1:]) / sum(times[1:]), "mean_length": _mean(lengths),
            "sampling_precision": _sampling_precision(cfg)}


def _sampling_precision(cfg) -> str:
    """The configured sampling precision (``sampling.precision`` where the config has it; else fp32)."""
    return str(getattr(cfg.sampling, "precision", "fp32"))


def _timed(fn, device: torch.device):
    """``(fn(), seconds)``, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def ppo_parts(cfg) -> dict:
    """Time, each alone, the passes one PPO iteration (ppo.epochs=1, ppo.num_minibatches=1) needs.

    A fresh policy (the recipe's initial one: same config and seed), the recipe's prompts and
    sampling seeds per step, so the batch shapes are those of the recipe's steps. Step 0 is a
    warm-up; the means are over steps 1 .. train.steps - 1, like the recipe's iteration time.
    Returns mean seconds per part, their sum (``parts_sum_s``) and the mean response length.
    """
    from robust_rlhf.data.prompts import train_eval_prompts
    from robust_rlhf.models.generation import generate
    from robust_rlhf.policy.model import load_policy
    from robust_rlhf.policy.recipe import make_optimizer, step_seed
    from robust_rlhf.policy.sampling import prompt_batch
    from robust_rlhf.utils import resolve_device, set_seed

    device = resolve_device(cfg.device)
    set_seed(cfg.seed)
    policy = load_policy(cfg.model, with_value_head=True).to(device)
    optimizer = make_optimizer(policy, cfg.train)
    params = [p for p in policy.parameters() if p.requires_grad]
    train_prompts, _ = train_eval_prompts(cfg.data)
    B, temp = cfg.train.batch_size, cfg.sampling.temperature
    names = ("generate_s", "forward_with_values_s", "reference_forward_s", "backward_s", "optimizer_step_s",
             "forward_nograd_s")
    rows: list[dict[str, float]] = []
    lengths: list[float] = []
    for step in range(cfg.train.steps):
        torch.manual_seed(step_seed(cfg.seed, step))  # as PolicySession.begin_step
        prompts = prompt_batch(train_prompts, step, B, cfg.seed)
        t: dict[str, float] = {}
        # (1) rollout
        ro, t["generate_s"] = _timed(lambda: generate(policy.lm, policy.tokenizer, prompts, cfg.sampling, device),
                                     device)
        batch = (ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask, temp)
        mask = ro.response_mask.float()  # (B, T)
        optimizer.zero_grad(set_to_none=True)
        # (2) the policy forward with values and gradients (rollout scoring = update forward)
        policy.train()
        out, t["forward_with_values_s"] = _timed(lambda: policy.forward_response(*batch, with_values=True), device)
        # (3) the reference forward, no grad
        with torch.no_grad():
            _, t["reference_forward_s"] = _timed(lambda: policy.forward_response(*batch, reference=True), device)
        # (4) backward of a scalar loss through log-probs and values (cost independent of the loss's form)
        loss = ((out.logprobs + out.values) * mask).sum() / mask.sum().clamp_min(1)
        _, t["backward_s"] = _timed(loss.backward, device)
        # (5) gradient clip + optimizer step (as the recipe)
        _, t["optimizer_step_s"] = _timed(
            lambda: (torch.nn.utils.clip_grad_norm_(params, cfg.ppo.max_grad_norm), optimizer.step()), device)
        # outside the sum: a no-grad policy forward with values (multi-epoch PPO's rollout scoring)
        optimizer.zero_grad(set_to_none=True)
        del out, loss
        with torch.no_grad():
            _, t["forward_nograd_s"] = _timed(lambda: policy.forward_response(*batch, with_values=True), device)
        rows.append(t)
        lengths.append(float(ro.response_mask.sum(1).float().mean()))
    timed = rows[1:]
    res = {n: _mean([r[n] for r in timed]) for n in names}
    res["parts_sum_s"] = sum(res[n] for n in names[:5])
    res["mean_length"] = _mean(lengths)
    try:  # what sampling.precision resolved to here (None: sampled from the fp32 policy itself)
        from robust_rlhf.models.sampler import sampling_dtype

        res["sampling_dtype"] = str(sampling_dtype(_sampling_precision(cfg), device, policy.lm) or torch.float32)
    except ImportError:  # no robust_rlhf.models.sampler.sampling_dtype in this version
        res["sampling_dtype"] = "unknown"
    return res


def part_ours_ppo(a) -> dict:
    from robust_rlhf.config import load_config
    from robust_rlhf.policy.ppo import PPOConfig, train_ppo

    n = a.prompts * a.k
    cfg = load_config(PPOConfig, None, _ppo_overrides(a))
    times, lengths = [], []
    with tempfile.TemporaryDirectory() as d:
        train_ppo(cfg, d, callback=lambda s, row: (times.append(row["time/step_s"]),
                                                   lengths.append(row["policy/response_length"])))
    iteration_s = _mean(times[1:])
    parts = ppo_parts(cfg)
    return {"samples_per_s": n * len(times[1:]) / sum(times[1:]), "mean_length": _mean(lengths),
            "sampling_precision": _sampling_precision(cfg), "iteration_s": iteration_s, "parts": parts,
            "iteration_vs_parts": iteration_s / parts["parts_sum_s"]}


def part_trl_rloo(a, precision: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from robust_rlhf.data.prompts import builtin_prompts
    from robust_rlhf.gold import load_gold
    from robust_rlhf.models.hub import load_tokenizer, resolve_model_path

    vader = load_gold("vader")

    def vader_reward(prompts, completions, **kw):
        return vader(prompts, completions)

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    tok = load_tokenizer(a.model)
    tok.padding_side = "left"
    n = a.prompts * a.k
    ds = Dataset.from_dict({"prompt": builtin_prompts()[: n * (a.steps + 1)]})
    timer = Timer()
    # fp32: bf16 forced off. bf16: left unset, i.e. TRL's default (its __post_init__ sets it on unless fp16).
    precision_kw = {"bf16": False} if precision == "fp32" else {}
    with tempfile.TemporaryDirectory() as d:
        args = RLOOConfig(
            output_dir=d, per_device_train_batch_size=n, num_generations=a.k, max_completion_length=a.new_tokens,
            steps_per_generation=1, num_iterations=1, max_steps=a.steps, use_cpu=not torch.cuda.is_available(),
            report_to=[], save_strategy="no", logging_steps=1, learning_rate=1e-5, beta=0.05,
            gradient_checkpointing=False, seed=0, temperature=1.0, top_k=0, top_p=1.0, **precision_kw,
        )
        if precision == "bf16" and not args.bf16:
            raise RuntimeError(f"TRL's default precision is no longer bf16 (bf16={args.bf16}, fp16={args.fp16})")
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          task_type="CAUSAL_LM")
        trainer = RLOOTrainer(model=resolve_model_path(a.model), reward_funcs=[vader_reward], args=args,
                              train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[timer])
        trainer.train()
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    return {"samples_per_s": n * len(timer.times[1:]) / sum(timer.times[1:]),
            "mean_length": _mean(lengths) if lengths else None, "bf16": bool(args.bf16)}


def part_memory(a, separate_copy: bool) -> dict:
    """One PPO step (rollout, policy + reference forwards, update) and the process's peak memory."""
    import copy
    import contextlib

    from robust_rlhf.config import load_config
    from robust_rlhf.policy import model as model_mod
    from robust_rlhf.policy.ppo import PPOConfig, train_ppo

    if separate_copy:
        orig_init = model_mod.Policy.__init__

        def init_with_copy(self, lm, tokenizer, value_head, use_lora):
            orig_init(self, lm, tokenizer, value_head, use_lora)
            base = copy.deepcopy(lm.get_base_model()).eval()  # a second full copy of the weights
            for p in base.parameters():
                p.requires_grad_(False)
            self._copy = [base]

        @contextlib.contextmanager
        def reference(self):
            yield self._copy[0]  # its LoRA B matrices are the initial zeros: the base model

        model_mod.Policy.__init__ = init_with_copy
        model_mod.Policy.reference = reference
    cfg = load_config(PPOConfig, None, _ppo_overrides(a) + ["train.steps=1"])
    with tempfile.TemporaryDirectory() as d:
        train_ppo(cfg, d)
    return {"peak_mb": _peak_mb()}


PARTS = {
    "ours_rloo": part_ours_rloo,
    "trl_rloo_fp32": lambda a: part_trl_rloo(a, "fp32"),
    "trl_rloo_bf16": lambda a: part_trl_rloo(a, "bf16"),
    "ours_ppo": part_ours_ppo,
    "mem_shared": lambda a: part_memory(a, False),
    "mem_copy": lambda a: part_memory(a, True),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (no usage dump)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench_policy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL,
                   help="policy LM for every part: embedded name or a local HF folder (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (default: %(default)s)")
    p.add_argument("--k", type=int, default=2,
                   help="samples per prompt for RLOO; PPO gets prompts * k samples per step (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=16, help="max new tokens per response (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3,
                   help="steps per throughput run, >= 2; the first is an untimed warm-up (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2,
                   help="throughput runs per part, round-robin, best kept (default: %(default)s)")
    p.add_argument("--trl-precision", choices=("fp32", "bf16", "both", "none"), default="both",
                   help="TRL RLOOTrainer at fp32 (bf16=False), at its own default (bf16), both, or none (where TRL is "
                        "not installed); each run gets its ratio on the last line, null otherwise (default: %(default)s)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads of every part (OMP_NUM_THREADS; default: torch's own). On a shared machine "
                        "1 is far steadier: threads that lose their core stall the others at every barrier")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for our RLOO and PPO runs (repeatable), e.g. a precision setting; "
                        "an unknown key is refused")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    return p


def _check(p: argparse.ArgumentParser, a) -> None:
    """Refuse bad input before any subprocess starts: one line, exit 2."""
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    for name, low in (("prompts", 1), ("k", 2), ("new_tokens", 1), ("steps", 2), ("repeats", 1)):
        if getattr(a, name) < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(a, name)}")
    from robust_rlhf.config import load_config
    from robust_rlhf.errors import UserError
    from robust_rlhf.policy.ppo import PPOConfig
    from robust_rlhf.policy.rloo import RLOOConfig

    from robust_rlhf.models.hub import resolve_model_path

    try:
        resolve_model_path(a.model)
        load_config(RLOOConfig, None, _rloo_overrides(a))
        load_config(PPOConfig, None, _ppo_overrides(a))
    except (UserError, ValueError, TypeError) as e:
        p.error(str(e).splitlines()[0] if str(e) else type(e).__name__)


def main(argv: list[str] | None = None) -> None:
    p = _parser()
    a = p.parse_args(argv)
    if a.part:
        torch.manual_seed(0)
        print("RESULT " + json.dumps(PARTS[a.part](a)), flush=True)
        return
    _check(p, a)

    def run_part(name: str) -> dict:
        cmd = [sys.executable, os.path.abspath(__file__), "--part", name, "--model", a.model, "--prompts", str(a.prompts),
               "--k", str(a.k), "--new-tokens", str(a.new_tokens), "--steps", str(a.steps),
               *[x for s in a.set for x in ("--set", s)]]
        t0 = time.perf_counter()
        env = {**os.environ, "TQDM_DISABLE": "1"}
        if a.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(a.threads)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"part {name} failed (exit {proc.returncode})")
        res = json.loads(lines[-1][7:])
        print(f"{name}: {res} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return res

    trl_parts = {"both": ["trl_rloo_fp32", "trl_rloo_bf16"], "none": []}.get(a.trl_precision,
                                                                          [f"trl_rloo_{a.trl_precision}"])
    # Throughput parts round-robin, best of `repeats` each: on a shared machine the best run is
    # the one least disturbed by other load, and interleaving exposes every part to the same drift.
    results: dict[str, dict] = {}
    for _ in range(a.repeats):
        for name in ("ours_rloo", *trl_parts, "ours_ppo"):
            res = run_part(name)
            if name not in results or res["samples_per_s"] > results[name]["samples_per_s"]:
                results[name] = res
    for name in ("mem_shared", "mem_copy"):
        results[name] = run_part(name)
    ours = results["ours_rloo"]["samples_per_s"]

    def vs_trl(precision: str) -> float | None:
        r = results.get(f"trl_rloo_{precision}")
        return ours / r["samples_per_s"] if r else None

    summary = {
        "rloo_samples_per_s_vs_trl": vs_trl("fp32"),
        "rloo_samples_per_s_vs_trl_bf16": vs_trl("bf16"),
        "ppo_cost_per_sample_vs_rloo": ours / results["ours_ppo"]["samples_per_s"],
        "ppo_iteration_vs_parts": results["ours_ppo"]["iteration_vs_parts"],
        "lora_ref_peak_mem_vs_copy": results["mem_shared"]["peak_mb"] / results["mem_copy"]["peak_mb"],
        "device": _device_name(),
        "setting": {"repeats": a.repeats, "prompts": a.prompts, "k": a.k, "new_tokens": a.new_tokens, "steps": a.steps,
                    "model": a.model, "lora_r": 16, "trl_precision": a.trl_precision, "ours_overrides": a.set,
                    "threads": a.threads or torch.get_num_threads()},
        "raw": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
