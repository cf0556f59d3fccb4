"""Policy-optimisation benchmark: our RLOO vs TRL's RLOOTrainer, our PPO vs our RLOO, and the
peak memory of a LoRA policy whose reference is the same model with adapters disabled vs a
separate reference copy.

Every part runs in its own subprocess (clean peak-memory numbers, no warm caches shared), on the
same model, prompts, batch and generation length. Throughput = samples per second over the
timed steps (the first step is a warm-up and not timed).

    python benchmarks/bench_policy.py                    # defaults: 4 prompts x k=2, 16 new tokens, 3 steps
    python benchmarks/bench_policy.py --prompts 8 --k 2 --new-tokens 24 --steps 4

The last output line is one JSON object with ``rloo_samples_per_s_vs_trl`` (> 1: ours faster),
``ppo_cost_per_sample_vs_rloo`` and ``lora_ref_peak_mem_vs_copy`` (< 1: the shared reference
saves memory), plus the raw numbers.
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


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _common(a) -> list[str]:
    return [f"train.batch_size={a.prompts}", f"sampling.max_new_tokens={a.new_tokens}", f"train.steps={a.steps}",
            "reward.model=gold:vader", "log.eval_every=0", "log.checkpoint_every=0", "log.progress=false",
            "train.lr=1e-5", "kl.coef=0.05"]


def part_ours_rloo(a) -> dict:
    from robust_rlhf.config import load_config
    from robust_rlhf.policy.rloo import RLOOConfig, train_rloo

    cfg = load_config(RLOOConfig, None, _common(a) + [f"rloo.k={a.k}"])
    times, lengths = [], []
    with tempfile.TemporaryDirectory() as d:
        train_rloo(cfg, d, callback=lambda s, row: (times.append(row["time/step_s"]),
                                                    lengths.append(row["policy/response_length"])))
    n = a.prompts * a.k
    return {"samples_per_s": n * len(times[1:]) / sum(times[1:]), "mean_length": sum(lengths) / len(lengths)}


def part_ours_ppo(a) -> dict:
    from robust_rlhf.config import load_config
    from robust_rlhf.policy.ppo import PPOConfig, train_ppo

    n = a.prompts * a.k  # the same number of samples per step as RLOO
    over = _common(a) + [f"train.batch_size={n}", "ppo.epochs=1", "ppo.num_minibatches=1"]
    cfg = load_config(PPOConfig, None, over)
    times, lengths = [], []
    with tempfile.TemporaryDirectory() as d:
        train_ppo(cfg, d, callback=lambda s, row: (times.append(row["time/step_s"]),
                                                   lengths.append(row["policy/response_length"])))
    return {"samples_per_s": n * len(times[1:]) / sum(times[1:]), "mean_length": sum(lengths) / len(lengths)}


def part_trl_rloo(a) -> dict:
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

    tok = load_tokenizer("smollm2-135m")
    tok.padding_side = "left"
    n = a.prompts * a.k
    ds = Dataset.from_dict({"prompt": builtin_prompts()[: n * (a.steps + 1)]})
    timer = Timer()
    with tempfile.TemporaryDirectory() as d:
        args = RLOOConfig(
            output_dir=d, per_device_train_batch_size=n, num_generations=a.k, max_completion_length=a.new_tokens,
            steps_per_generation=1, num_iterations=1, max_steps=a.steps, use_cpu=not torch.cuda.is_available(),
            bf16=False, report_to=[], save_strategy="no", logging_steps=1, learning_rate=1e-5, beta=0.05,
            gradient_checkpointing=False, seed=0, temperature=1.0, top_k=0, top_p=1.0,
        )
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          task_type="CAUSAL_LM")
        trainer = RLOOTrainer(model=resolve_model_path("smollm2-135m"), reward_funcs=[vader_reward], args=args,
                              train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[timer])
        trainer.train()
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    return {"samples_per_s": n * len(timer.times[1:]) / sum(timer.times[1:]),
            "mean_length": sum(lengths) / len(lengths) if lengths else None}


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
    n = a.prompts * a.k
    cfg = load_config(PPOConfig, None, _common(a) + [f"train.batch_size={n}", "train.steps=1", "ppo.epochs=1",
                                                     "ppo.num_minibatches=1"])
    with tempfile.TemporaryDirectory() as d:
        train_ppo(cfg, d)
    return {"peak_mb": _peak_mb()}


PARTS = {
    "ours_rloo": part_ours_rloo,
    "trl_rloo": part_trl_rloo,
    "ours_ppo": part_ours_ppo,
    "mem_shared": lambda a: part_memory(a, False),
    "mem_copy": lambda a: part_memory(a, True),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (default: %(default)s)")
    p.add_argument("--k", type=int, default=2, help="samples per prompt for RLOO (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=16, help="max new tokens per response (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="steps per throughput run; the first is warm-up (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="throughput runs per part, best kept (default: %(default)s)")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part:
        torch.manual_seed(0)
        print("RESULT " + json.dumps(PARTS[a.part](a)), flush=True)
        return
    def run_part(name: str) -> dict:
        cmd = [sys.executable, __file__, "--part", name, "--prompts", str(a.prompts), "--k", str(a.k),
               "--new-tokens", str(a.new_tokens), "--steps", str(a.steps)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"part {name} failed (exit {proc.returncode})")
        res = json.loads(lines[-1][7:])
        print(f"{name}: {res} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return res

    # Throughput parts round-robin, best of `repeats` each: on a shared machine the best run is
    # the one least disturbed by other load, and interleaving exposes every part to the same drift.
    results: dict[str, dict] = {}
    for _ in range(a.repeats):
        for name in ("ours_rloo", "trl_rloo", "ours_ppo"):
            res = run_part(name)
            if name not in results or res["samples_per_s"] > results[name]["samples_per_s"]:
                results[name] = res
    for name in ("mem_shared", "mem_copy"):
        results[name] = run_part(name)
    summary = {
        "rloo_samples_per_s_vs_trl": results["ours_rloo"]["samples_per_s"] / results["trl_rloo"]["samples_per_s"],
        "ppo_cost_per_sample_vs_rloo": results["ours_rloo"]["samples_per_s"] / results["ours_ppo"]["samples_per_s"],
        "lora_ref_peak_mem_vs_copy": results["mem_shared"]["peak_mb"] / results["mem_copy"]["peak_mb"],
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "setting": {"repeats": a.repeats, "prompts": a.prompts, "k": a.k, "new_tokens": a.new_tokens, "steps": a.steps,
                    "model": "smollm2-135m", "lora_r": 16},
        "raw": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
