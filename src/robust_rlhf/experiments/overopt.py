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

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.config import build_dataclass, config_to_dict, load_config, read_config_source
from robust_rlhf.errors import UserError
from robust_rlhf.experiments.fits import fit_gao, interpolate_at, t_interval, welch_difference
from robust_rlhf.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
DONE_FILE = "done"
UNIT_FILE = "unit.json"
METHOD_TYPES = ("best_of_n", "ppo", "rloo")


# ============================================================================ config
@dataclass
class PromptsConfig:
    """Where the prompts come from."""

    source: str | None = None
    """JSONL with a `prompt` field (or plain text, one per line); null = the built-in review openings"""
    limit: int | None = None
    """use only the first N prompts after a seeded shuffle (null = all)"""
    seed: int = 0
    """seed of that shuffle"""


@dataclass
class PreferenceDataConfig:
    """Gold-labelled preference pairs sampled from the base policy (robust_rlhf.data.builtin_task)."""

    source: Literal["generate", "builtin"] = "generate"
    """generate: sample and label pairs with the settings below; builtin: reuse the shipped fixture
    (made by the same pipeline with its default settings over all built-in prompts, VADER gold)"""
    completions_per_prompt: int = 4
    """completions sampled per prompt; pairs are drawn among them"""
    pairs_per_prompt: int = 6
    """pairs kept per prompt (at most C(n, 2))"""
    max_new_tokens: int = 20
    """completion length in tokens"""
    temperature: float = 1.0
    """base-policy sampling temperature"""
    label_noise: float = 0.0
    """probability of flipping a label (Coste et al.'s hard setting: 0.25)"""
    bt_sampling: bool = False
    """sample labels from Bradley-Terry P(a > b) = sigmoid((g_a - g_b) / bt_temperature)"""
    bt_temperature: float = 0.1
    """temperature of BT label sampling"""
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    """fractions of prompts for train / validation / test pairs"""
    batch_size: int = 36
    """generation batch size"""
    seed: int = 0
    """seed of sampling, pairing, noise and split"""

    def __post_init__(self) -> None:
        if len(self.split_fractions) != 3 or any(f <= 0 for f in self.split_fractions):
            raise ValueError("data.split_fractions must be three positive fractions (train, validation, test)")
        if not 0 <= self.label_noise < 0.5:
            raise ValueError(f"data.label_noise must be in [0, 0.5), got {self.label_noise}")


@dataclass
class RewardModelSpec:
    """One proxy reward-model recipe."""

    name: str
    """name used by methods (`reward_model: <name>`) and in the report"""
    preset: str = "rm_bt_minilm"
    """rm preset name or YAML file (rm_bt_minilm, rm_bsr_minilm, rm_ensemble_minilm, rm_brme_minilm, rm_tiny, ...)"""
    overrides: dict[str, Any] = field(default_factory=dict)
    """keys of the rm config to change, nested or dotted (e.g. {stage1.max_steps: 40, model.num_heads: 5})"""


@dataclass
class MethodSpec:
    """One optimisation method; run once per seed (and per head with train_on: each_head)."""

    name: str
    """label in results and plots"""
    type: Literal["best_of_n", "ppo", "rloo"] = "ppo"
    """best_of_n (from the shared pool), ppo (also variance-aware / BRME-λ by overrides) or rloo"""
    reward_model: str = ""
    """name of a reward_models entry"""
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    """how the heads become one training reward (mean, min, uwo, lcb, median, brme_nominal, brme_tradeoff)"""
    train_on: Literal["aggregate", "each_head"] = "aggregate"
    """aggregate: the aggregated ensemble; each_head: one policy per head per seed, trained on that head alone
    (seed 002; with kl.variance_aware the KL weight still uses the whole ensemble's variance)"""
    heads: list[int] | None = None
    """with each_head: which heads (null = all)"""
    overrides: dict[str, Any] = field(default_factory=dict)
    """policy-trainer config keys for this method, nested or dotted (e.g. {kl.variance_aware: true, kl.coef: 0.05})"""
    calibrate_kl: bool = False
    """tune kl.coef with short runs so this method ends at calibration.target_kl (ppo / rloo)"""


@dataclass
class EvaluationConfig:
    """Held-out gold evaluation, shared by best-of-n and the policy runs so they are comparable."""

    eval_fraction: float = 0.2
    """share of prompts held out from policy training; gold is measured on them"""
    eval_prompts: int = 32
    """how many held-out prompts are evaluated"""
    split_seed: int = 0
    """seed of the policy train / held-out split"""
    max_new_tokens: int = 24
    """response length of every policy (and of the best-of-n pool)"""
    temperature: float = 1.0
    """sampling temperature of every policy"""
    pool_size: int = 16
    """best-of-n pool: N base-policy samples per held-out prompt (every n <= N is estimated from it)"""


@dataclass
class CalibrationConfig:
    """Match final KL across methods (methods with calibrate_kl: true)."""

    target_kl: float = 1.0
    """final KL (nats, held-out evaluation) every calibrated method should reach"""
    steps: int | None = None
    """length of a probe run (null = the method's full train.steps)"""
    max_probes: int = 4
    """probe runs per method at most"""
    tolerance: float = 0.15
    """stop when |KL / target - 1| <= tolerance"""
    coef_min: float = 1e-4
    """smallest KL coefficient tried"""
    coef_max: float = 2.0
    """largest KL coefficient tried"""


@dataclass
class LambdaSweepConfig:
    """Seed 000: PPO on BRME's lam * r_nominal + (1 - lam) * min_k mu_k for each lam."""

    base: str | None = None
    """a ppo method (on a gaussian/BRME reward model) to copy; null = no sweep"""
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    """the lam values"""
    seeds: list[int] | None = None
    """seeds of the sweep runs (null = the experiment's seeds)"""


@dataclass
class PerturbationConfig:
    """Seed 000: over- vs under-scoring -- the same PPO with +size or -size added to a random
    fraction of each batch's training reward."""

    base: str | None = None
    """a ppo method to copy; null = no perturbation study"""
    size: float = 0.5
    """perturbation size (reward units)"""
    fraction: float = 0.25
    """share of each batch perturbed"""
    seeds: list[int] | None = None
    """seeds (null = the experiment's seeds)"""


@dataclass
class ExperimentConfig:
    """An over-optimisation experiment: data -> proxies -> methods x seeds -> report."""

    name: str = "experiment"
    """title of the report"""
    policy: str = "smollm2-135m"
    """base policy (embedded name, HF folder or hub id)"""
    gold: str = "vader"
    """gold reward: vader, hf:<model>, or module:function"""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    """prompt source"""
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    """preference-data generation"""
    reward_models: list[RewardModelSpec] = field(default_factory=list)
    """proxy reward-model recipes"""
    methods: list[MethodSpec] = field(default_factory=list)
    """optimisation methods"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """seeds of every method (policies per method = seeds x heads)"""
    policy_overrides: dict[str, Any] = field(default_factory=dict)
    """policy-trainer config keys applied to every ppo/rloo method (e.g. {train.steps: 20, log.eval_every: 5});
    a `ppo:` section is skipped for rloo and vice versa"""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """held-out gold evaluation and the best-of-n pool"""
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    """KL matching across methods"""
    lambda_sweep: LambdaSweepConfig = field(default_factory=LambdaSweepConfig)
    """seed 000's lam sweep"""
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    """seed 000's over- vs under-scoring"""
    baseline: str | None = None
    """vanilla method every other method is compared with (null = the first method)"""
    confidence: float = 0.95
    """level of the t-intervals over seeds"""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto"""
    num_threads: int | None = None
    """torch CPU threads; null = auto: torch's default, or 1 when the 1-minute load average already reaches the
    core count (other jobs share the cores: measured here, sampling ran ~20x faster with 1 thread than with 2)"""

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")
        if not self.reward_models:
            raise ValueError("reward_models: list at least one proxy reward model")
        if not self.methods:
            raise ValueError("methods: list at least one optimisation method")
        if not self.seeds:
            raise ValueError("seeds: list at least one seed")
        names = [r.name for r in self.reward_models]
        _no_duplicates(names, "reward_models")
        _no_duplicates([m.name for m in self.methods], "methods")
        for m in self.methods:
            if m.reward_model not in names:
                raise ValueError(f"method {m.name!r}: reward_model {m.reward_model!r} is not one of {names}")
            if m.calibrate_kl and m.type == "best_of_n":
                raise ValueError(f"method {m.name!r}: calibrate_kl applies to ppo / rloo (best-of-n's KL is log n - (n-1)/n)")
            for n in (m.name, m.reward_model):
                if "/" in n or n.startswith("."):
                    raise ValueError(f"name {n!r} must not contain '/' or start with '.' (it names a folder)")
        method_names = [m.name for m in self.methods]
        for study, base in (("lambda_sweep", self.lambda_sweep.base), ("perturbation", self.perturbation.base)):
            if base is not None and base not in method_names:
                raise ValueError(f"{study}.base {base!r} is not one of the methods {method_names}")
        if self.baseline is not None and self.baseline not in method_names:
            raise ValueError(f"baseline {self.baseline!r} is not one of the methods {method_names}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if any(not 0 <= lam <= 1 for lam in self.lambda_sweep.lambdas):
            raise ValueError("lambda_sweep.lambdas must lie in [0, 1]")


def _no_duplicates(names: list[str], where: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: duplicate name {dup[0]!r}")


def load_experiment_config(source: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A YAML file or built-in preset (experiment_demo, experiment_tiny, experiment_paper) + key=value overrides."""
    return load_config(ExperimentConfig, source, overrides)


# ============================================================================ helpers
def _nest(d: dict) -> dict:
    """{'a.b': 1, 'c': {'d': 2}} -> {'a': {'b': 1}, 'c': {'d': 2}} (dotted keys allowed)."""
    out: dict = {}
    for key, value in d.items():
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _nest(value) if isinstance(value, dict) else value
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _fingerprint(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _units_root(output_dir: Path) -> Path:
    return output_dir / "units"


@dataclass
class Unit:
    """One cacheable piece of work: ``run(folder)`` fills the folder and returns a summary."""

    key: str
    """folder under units/, e.g. rm/bt or runs/ppo-mean/s0"""
    stage: str
    """shown in progress: data, reward models, pools, calibration, policies"""
    spec: dict
    """everything the result depends on (its fingerprint decides whether a cached result is valid)"""
    run: Callable[[Path], dict]
    """does the work into the folder; the returned dict is stored in the done marker"""

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.spec)


class UnitRunner:
    """Executes units once: a unit with a valid ``done`` marker is skipped; a folder left by a
    unit of different inputs is wiped first; ``done`` is written atomically and last.

    Args:
        root: the units/ folder.
        total: planned number of units (progress bar; grows if more are added).
        on_unit_start: test hook called with the unit key before the unit runs (e.g. to
            inject a crash).
    """

    def __init__(self, root: Path, total: int, on_unit_start: Callable[[str], None] | None = None,
                 progress: bool = True) -> None:
        from tqdm.auto import tqdm

        self.root = root
        self.executed: list[str] = []
        self.skipped: list[str] = []
        self.on_unit_start = on_unit_start
        self.bar = tqdm(total=total, desc="experiment", unit="unit", disable=not progress, dynamic_ncols=True)

    def is_done(self, unit: Unit) -> bool:
        marker = self.root / unit.key / DONE_FILE
        if not marker.exists():
            return False
        try:
            return _read_json(marker).get("fingerprint") == unit.fingerprint
        except (json.JSONDecodeError, OSError):
            return False

    def __call__(self, unit: Unit) -> dict:
        folder = self.root / unit.key
        if self.is_done(unit):
            self.skipped.append(unit.key)
            self.bar.update(1)
            return _read_json(folder / DONE_FILE)["summary"]
        if folder.exists():
            recorded = folder / UNIT_FILE
            same = recorded.exists() and _read_json(recorded).get("fingerprint") == unit.fingerprint
            if not same:
                log.info("%s: inputs changed (or unknown leftovers); starting this unit afresh", unit.key)
                shutil.rmtree(folder)
            else:
                log.info("%s: continuing an unfinished unit", unit.key)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / UNIT_FILE, {"key": unit.key, "fingerprint": unit.fingerprint, "spec": unit.spec})
        done = len(self.executed) + len(self.skipped)
        self.bar.set_description(f"{unit.stage}")
        self.bar.set_postfix_str(unit.key, refresh=True)
        log.info("[%d/%d] %s: %s", done + 1, self.bar.total, unit.stage, unit.key)
        if self.on_unit_start is not None:
            self.on_unit_start(unit.key)
        t0 = time.time()
        summary = unit.run(folder) or {}
        seconds = time.time() - t0
        atomic_write_json(folder / DONE_FILE, {"fingerprint": unit.fingerprint, "seconds": seconds, "summary": summary})
        self.executed.append(unit.key)
        self.bar.update(1)
        log.info("%s finished in %.0f s", unit.key, seconds)
        return summary

    def grow(self, n: int) -> None:
        self.bar.total += n
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# ============================================================================ units
def _load_prompts(cfg: PromptsConfig) -> list[str]:
    import random

    from robust_rlhf.data.prompts import builtin_prompts
    from robust_rlhf.policy.sampling import load_prompts_file

    prompts = load_prompts_file(cfg.source) if cfg.source else builtin_prompts()
    if cfg.limit is not None:
        order = list(prompts)
        random.Random(cfg.seed).shuffle(order)
        prompts = order[: cfg.limit]
    if len(prompts) < 5:
        raise UserError(f"the experiment needs at least 5 prompts, got {len(prompts)}")
    return prompts


def _data_unit(cfg: ExperimentConfig, prompts: list[str]) -> Unit:
    def run(folder: Path) -> dict:
        from robust_rlhf.data.builtin_task import TaskConfig, build_task

        atomic_write_text(folder / "prompts.jsonl", "".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        d = cfg.data
        if d.source == "builtin":
            from robust_rlhf.data.builtin_task import FIXTURE_DIR, SPLITS

            if cfg.gold != "vader":
                raise UserError("data.source=builtin holds VADER labels; use gold: vader or data.source: generate")
            summary = json.loads((FIXTURE_DIR / "builtin_task.json").read_text())["summary"]
            for split in SPLITS:
                shutil.copyfile(FIXTURE_DIR / f"builtin_{split}.jsonl", folder / f"builtin_{split}.jsonl")
            return summary
        fields = {k: v for k, v in config_to_dict(d).items() if k != "source"}
        fields["split_fractions"] = tuple(fields["split_fractions"])
        task = TaskConfig(policy=cfg.policy, gold=cfg.gold, **fields)
        summary = build_task(task, folder, prompts)
        for split in ("train", "validation", "test"):
            if summary[split]["pairs"] == 0:
                raise UserError(f"data: the {split} split got no preference pairs; use more prompts or completions")
        return summary

    spec = {"policy": cfg.policy, "gold": cfg.gold, "prompts": prompts, "data": config_to_dict(cfg.data)}
    return Unit("data", "data", spec, run)


def _rm_config(spec: RewardModelSpec, data_dir: Path, seed: int, device: str):
    from robust_rlhf.reward.train import RewardTrainConfig

    raw = _merge(read_config_source(spec.preset), _nest(spec.overrides))
    raw = _merge(raw, {"data": {"train": str(data_dir / "builtin_train.jsonl"),
                                "validation": str(data_dir / "builtin_validation.jsonl")},
                       "seed": raw.get("seed", seed), "resume": True,
                       "device": None if device == "auto" else device})
    return build_dataclass(RewardTrainConfig, raw, f"reward_models[{spec.name}]")


def _rm_unit(spec: RewardModelSpec, data: Unit, data_dir: Path, cfg: ExperimentConfig) -> Unit:
    rm_cfg = _rm_config(spec, data_dir, cfg.data.seed, cfg.device)

    def run(folder: Path) -> dict:
        from robust_rlhf.data.preferences import load_preferences
        from robust_rlhf.reward.evaluate import evaluate_reward_model, write_eval_report
        from robust_rlhf.reward.model import RewardModel
        from robust_rlhf.reward.train import train_reward_model

        train_reward_model(rm_cfg, folder / "model")
        model = RewardModel.from_pretrained(folder / "model")
        test = load_preferences(data_dir / "builtin_test.jsonl", model.tokenizer)
        metrics, arrays = evaluate_reward_model(model, test)
        write_eval_report(metrics, arrays, folder / "eval")
        keep = {k: [float(x) for x in arrays[k]] for k in ("chosen_var", "diff_var") if k in arrays}
        atomic_write_json(folder / "eval" / "arrays.json", keep)
        return {"accuracy": metrics["accuracy"], "accuracy_ci95": metrics["accuracy_ci95"],
                "num_heads": metrics["num_heads"], "head_type": rm_cfg.model.head_type}

    return Unit(f"rm/{spec.name}", "reward models", {"data": data.fingerprint, "rm": config_to_dict(rm_cfg)}, run)


def _eval_prompts(cfg: ExperimentConfig, prompts_file: Path) -> list[str]:
    from robust_rlhf.policy.sampling import DataConfig, train_eval_prompts

    ev = cfg.evaluation
    _, held_out = train_eval_prompts(DataConfig(prompts=str(prompts_file), eval_fraction=ev.eval_fraction,
                                                split_seed=ev.split_seed))
    return held_out[: ev.eval_prompts]


def _pool_unit(cfg: ExperimentConfig, seed: int, data: Unit, prompts_file: Path) -> Unit:
    """N base-policy samples per held-out prompt, gold-scored: best-of-n for every n <= N and
    the reference policy's gold reward (n = 1) come from it."""
    ev = cfg.evaluation

    def run(folder: Path) -> dict:
        import torch

        from robust_rlhf.gold import load_gold
        from robust_rlhf.models.hub import load_causal_lm, load_tokenizer
        from robust_rlhf.policy.sampling import SamplingConfig, generate

        prompts = _eval_prompts(cfg, prompts_file)
        lm = load_causal_lm(cfg.policy).eval()
        tok = load_tokenizer(cfg.policy)
        flat = [p for p in prompts for _ in range(ev.pool_size)]
        torch.manual_seed(1_000_003 * seed + 17)
        ro = generate(lm, tok, flat, SamplingConfig(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature))
        gold = load_gold(cfg.gold)(ro.prompts, ro.responses)
        N = ev.pool_size
        pool = {"prompts": prompts, "pool_size": N,
                "responses": [ro.responses[i * N : (i + 1) * N] for i in range(len(prompts))],
                "gold": [gold[i * N : (i + 1) * N] for i in range(len(prompts))]}
        atomic_write_json(folder / "pool.json", pool)
        return {"gold_mean": sum(gold) / len(gold), "num_prompts": len(prompts)}

    spec = {"data": data.fingerprint, "policy": cfg.policy, "gold": cfg.gold, "evaluation": config_to_dict(ev),
            "seed": seed}
    return Unit(f"pool/s{seed}", "best-of-n pools", spec, run)


def _pool_score_unit(rm: Unit, pool: Unit, root: Path) -> Unit:
    def run(folder: Path) -> dict:
        from robust_rlhf.reward.model import RewardModel

        p = _read_json(root / pool.key / "pool.json")
        model = RewardModel.from_pretrained(root / rm.key / "model")
        prompts = [x for x, rs in zip(p["prompts"], p["responses"]) for _ in rs]
        responses = [r for rs in p["responses"] for r in rs]
        out = model.score(prompts, responses)
        atomic_write_json(folder / "scores.json", {
            "per_head": out.per_head.tolist(),
            "per_head_std": None if out.per_head_std is None else out.per_head_std.tolist(),
            "head_stats": model.config.head_stats})
        return {"num_samples": len(responses)}

    rm_name, seed = rm.key.split("/", 1)[1], pool.key.split("/", 1)[1]
    return Unit(f"pool_scores/{rm_name}/{seed}", "best-of-n pools", {"rm": rm.fingerprint, "pool": pool.fingerprint}, run)


# ---------------------------------------------------------------------------- policy runs
class _ExperimentRewardSource:
    """A saved reward model as the policy's reward source -- all heads, or one head alone.

    Exposes ``head_stats`` as ``(mean (K,), std (K,))`` tensors for ``aggregator.normalize``."""

    def __init__(self, path: Path, head: int | None = None, keep_ensemble_variance: bool = False) -> None:
        import torch

        from robust_rlhf.reward.model import RewardModel

        self.model = RewardModel.from_pretrained(path)
        self.head = head
        self.keep_ensemble_variance = keep_ensemble_variance
        stats = self.model.config.head_stats or {}
        self.head_stats = None
        if stats.get("mean"):
            mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
            self.head_stats = (mean, std) if head is None else (mean[head : head + 1], std[head : head + 1])
        if head is not None and not 0 <= head < self.model.config.num_heads:
            raise UserError(f"head {head} does not exist; the reward model at {path} has {self.model.config.num_heads}")

    def __call__(self, prompts, responses):
        from robust_rlhf.reward.output import RewardOutput

        out = self.model.score(list(prompts), list(responses))
        if self.head is None:
            return out
        k = self.head
        if self.keep_ensemble_variance:
            # Variance-aware PPO per head (seed 002): reward = head k, KL weight from the
            # ensemble's variance. Shifting every head by (r_k - mean) keeps var_k exactly and
            # makes the mean equal r_k, so the `mean` aggregator returns head k.
            shifted = out.per_head - out.per_head.mean(dim=1, keepdim=True) + out.per_head[:, k : k + 1]  # (B, K)
            return RewardOutput(shifted, None)
        std = None if out.per_head_std is None else out.per_head_std[:, k : k + 1]
        return RewardOutput(out.per_head[:, k : k + 1], std)  # (B, 1)


_RESERVED = ("model.name", "data.prompts", "reward.model", "reward.aggregator", "gold", "train.seed", "resume")


def _trainer(method_type: str):
    """(config class, train function) of a policy recipe."""
    if method_type == "ppo":
        from robust_rlhf.policy.ppo import PPOConfig, train_ppo

        return PPOConfig, train_ppo
    if method_type == "rloo":
        try:
            from robust_rlhf.policy.rloo import RLOOConfig, train_rloo
        except ImportError as e:
            raise UserError(f"method type rloo: the RLOO recipe is not available ({e})") from None
        return RLOOConfig, train_rloo
    raise UserError(f"method type {method_type!r} has no policy trainer")


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.extend(_flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])
    return out


def _policy_config_dict(cfg: ExperimentConfig, method: MethodSpec, seed: int, rm_dir: Path, prompts_file: Path,
                        kl_coef: float | None = None, steps: int | None = None) -> dict:
    # policy_overrides reach every RL method: a section another recipe lacks (ppo: for rloo,
    # rloo: for ppo) is skipped there; a method's own overrides are applied strictly.
    cls, _ = _trainer(method.type)
    own_sections = {f.name for f in dataclasses.fields(cls)}
    shared = {k: v for k, v in _nest(cfg.policy_overrides).items() if k in own_sections or k not in ("ppo", "rloo")}
    user = _merge(shared, _nest(method.overrides))
    clash = [k for k in _flat_keys(user) if any(k == r or k.startswith(r + ".") for r in _RESERVED)]
    if clash:
        raise UserError(f"method {method.name!r}: {clash[0]!r} is set by the experiment itself "
                        f"(reserved: {', '.join(_RESERVED)})")
    ev = cfg.evaluation
    base = {"model": {"name": cfg.policy},
            "data": {"prompts": str(prompts_file), "eval_fraction": ev.eval_fraction, "split_seed": ev.split_seed},
            "sampling": {"max_new_tokens": ev.max_new_tokens, "temperature": ev.temperature},
            "log": {"eval_prompts": ev.eval_prompts, "progress": False},
            "train": {"device": cfg.device}}
    d = _merge(base, user)
    d = _merge(d, {"reward": {"model": str(rm_dir), "aggregator": config_to_dict(method.aggregator)},
                   "gold": cfg.gold, "train": {"seed": seed}, "resume": True})
    if kl_coef is not None:
        d = _merge(d, {"kl": {"coef": kl_coef}})
    if steps is not None:
        d = _merge(d, {"train": {"steps": steps}})
    return d


def _read_metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _policy_unit(cfg: ExperimentConfig, method: MethodSpec, seed: int, head: int | None, rm: Unit, root: Path,
                 prompts_file: Path, kl_coef: float | None = None, steps: int | None = None,
                 key: str | None = None, stage: str = "policies") -> Unit:
    rm_dir = root / rm.key / "model"
    cfg_dict = _policy_config_dict(cfg, method, seed, rm_dir, prompts_file, kl_coef, steps)
    cls, train = _trainer(method.type)
    policy_cfg = build_dataclass(cls, cfg_dict, f"methods[{method.name}]")

    keep_var = head is not None and bool(getattr(getattr(policy_cfg, "kl", None), "variance_aware", False))
    if keep_var and method.aggregator.name != "mean":
        raise UserError(f"method {method.name!r}: variance-aware training per head needs aggregator mean "
                        f"(the reward is the head's own), got {method.aggregator.name}")

    def run(folder: Path) -> dict:
        source = _ExperimentRewardSource(rm_dir, head, keep_ensemble_variance=keep_var)
        train(policy_cfg, folder, reward_source=source)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the final policy/ stays
        rows = [r for r in _read_metrics(folder) if r.get("gold_reward") is not None]
        if not rows:
            raise UserError(f"{folder}: the run logged no gold evaluation (set log.eval_every > 0)")
        last = rows[-1]
        return {"final_gold": last["gold_reward"], "final_kl": last.get("gold/kl", last.get("kl")),
                "final_proxy": last.get("gold/proxy_reward")}

    suffix = f"s{seed}" + ("" if head is None else f"-h{head}")
    spec = {"rm": rm.fingerprint, "prompts": str(prompts_file), "config": config_to_dict(policy_cfg), "head": head,
            "type": method.type}
    return Unit(key or f"runs/{method.name}/{suffix}", stage, spec, run)


# ---------------------------------------------------------------------------- KL calibration
def calibrate_kl_coef(probe: Callable[[float], float], target: float, coef0: float, coef_min: float,
                      coef_max: float, max_probes: int, tolerance: float) -> tuple[float, list[dict]]:
    """Find the KL coefficient whose run ends at KL ``target``: a secant on (log coef, log KL)
    -- final KL falls roughly as a power of the coefficient -- safeguarded by bisection in log
    space once the target is bracketed, clipped to [coef_min, coef_max].

    Args:
        probe: runs a (short) training with a coefficient and returns its final KL.
        target: target KL (> 0).
        coef0: first coefficient tried.
        max_probes: at most this many probes.
        tolerance: stop when ``|KL / target - 1| <= tolerance``.

    Returns:
        (the probed coefficient whose KL was closest to target in log ratio, probe history).
    """
    if target <= 0:
        raise UserError(f"calibration.target_kl must be > 0, got {target}")
    lo_c, hi_c = math.log(coef_min), math.log(coef_max)
    history: list[dict] = []
    x = min(max(math.log(coef0), lo_c), hi_c)
    below: tuple[float, float] | None = None  # (log coef, log KL) with KL < target (coef too large)
    above: tuple[float, float] | None = None  # KL > target (coef too small)
    for _ in range(max_probes):
        kl = float(probe(math.exp(x)))
        y = math.log(max(kl, 1e-6))
        history.append({"coef": math.exp(x), "kl": kl})
        if abs(kl / target - 1) <= tolerance:
            break
        if kl < target:
            below = (x, y) if below is None or x < below[0] else below
        else:
            above = (x, y) if above is None or x > above[0] else above
        if below is not None and above is not None:
            (x1, y1), (x2, y2) = below, above
            slope = (y2 - y1) / (x2 - x1) if x2 != x1 else 0.0
            nxt = x1 + (math.log(target) - y1) / slope if slope < 0 else (x1 + x2) / 2
            if not min(x1, x2) < nxt < max(x1, x2):
                nxt = (x1 + x2) / 2  # secant left the bracket: bisect
        else:
            # one side only: assume KL ~ coef^-1 and step (at least a factor 2, at most 10)
            step = min(max(abs(y - math.log(target)), math.log(2)), math.log(10))
            nxt = x + step if kl > target else x - step
        nxt = min(max(nxt, lo_c), hi_c)
        if any(abs(nxt - math.log(h["coef"])) < 1e-9 for h in history):
            break  # clipped onto a coefficient already tried
        x = nxt
    best = min(history, key=lambda h: abs(math.log(max(h["kl"], 1e-6) / target)))
    return best["coef"], history


def _coef_tag(coef: float) -> str:
    return f"{coef:.4g}".replace("+", "")


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


def expanded_methods(cfg: ExperimentConfig) -> list[tuple[MethodSpec, list[int], str]]:
    """(method, seeds, study) for the main methods, the lam sweep and the perturbation study."""
    out: list[tuple[MethodSpec, list[int], str]] = [(m, list(cfg.seeds), "main") for m in cfg.methods]
    by_name = {m.name: m for m in cfg.methods}
    sw = cfg.lambda_sweep
    if sw.base is not None:
        base = by_name[sw.base]
        for lam in sw.lambdas:
            agg = AggregatorConfig(name="brme_tradeoff", lam=float(lam), normalize=base.aggregator.normalize)
            m = dataclasses.replace(base, name=f"{base.name}@lam={lam:g}", aggregator=agg, train_on="aggregate")
            out.append((m, list(sw.seeds or cfg.seeds), "lambda_sweep"))
    pt = cfg.perturbation
    if pt.base is not None:
        base = by_name[pt.base]
        for mode in ("over", "under"):
            ov = _merge(_nest(base.overrides), {"reward": {"perturb": mode, "perturb_size": pt.size,
                                                           "perturb_fraction": pt.fraction}})
            m = dataclasses.replace(base, name=f"{base.name}@{mode}", overrides=ov, train_on="aggregate")
            out.append((m, list(pt.seeds or cfg.seeds), "perturbation"))
    return out


def _heads_of(method: MethodSpec, num_heads: int) -> list[int | None]:
    if method.train_on == "aggregate":
        return [None]
    heads = method.heads if method.heads is not None else list(range(num_heads))
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad:
        raise UserError(f"method {method.name!r}: head {bad[0]} does not exist (the reward model has {num_heads})")
    return heads


def _set_threads(num_threads: int | None) -> None:
    import os

    import torch

    if num_threads is None:
        cores = os.cpu_count() or 1
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if torch.cuda.is_available() or load < cores:
            return
        num_threads = 1
        log.info("load average %.1f >= %d cores: using 1 torch thread (set num_threads to override)", load, cores)
    torch.set_num_threads(num_threads)


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
    root = _units_root(out)
    prompts = _load_prompts(cfg.prompts)
    data = _data_unit(cfg, prompts)
    data_dir = root / data.key
    prompts_file = data_dir / "prompts.jsonl"
    rm_specs = {r.name: r for r in cfg.reward_models}
    rm_units = {name: _rm_unit(spec, data, data_dir, cfg) for name, spec in rm_specs.items()}
    rm_heads = {name: _rm_config(spec, data_dir, cfg.data.seed, cfg.device).model for name, spec in rm_specs.items()}
    rm_heads = {n: (1 if m.head_type == "scalar" else m.num_heads) for n, m in rm_heads.items()}
    methods = expanded_methods(cfg)
    for m, _, _ in methods:
        if m.aggregator.name.startswith("brme") and not (m.aggregator.name == "brme_tradeoff" and m.aggregator.lam == 0):
            head_type = _rm_config(rm_specs[m.reward_model], data_dir, cfg.data.seed, cfg.device).model.head_type
            if head_type != "gaussian":
                raise UserError(f"method {m.name!r}: aggregator {m.aggregator.name} needs a gaussian (BRME) reward "
                                f"model; {m.reward_model!r} has {head_type} heads")
    for m, seeds, _ in methods:  # every policy config is checked before any unit runs
        _heads_of(m, rm_heads[m.reward_model])
        if m.type != "best_of_n":
            cls, _ = _trainer(m.type)
            pc = build_dataclass(cls, _policy_config_dict(cfg, m, seeds[0], root / "rm", prompts_file), f"methods[{m.name}]")
            if m.train_on == "each_head" and pc.kl.variance_aware and m.aggregator.name != "mean":
                raise UserError(f"method {m.name!r}: variance-aware training per head needs aggregator mean "
                                f"(the reward is the head's own), got {m.aggregator.name}")
    all_seeds = sorted({s for _, seeds, _ in methods for s in seeds})
    pools = {s: _pool_unit(cfg, s, data, prompts_file) for s in all_seeds}
    used_rms = sorted({m.reward_model for m, _, _ in methods})
    pool_scores = {(r, s): _pool_score_unit(rm_units[r], pools[s], root) for r in used_rms for s in all_seeds}
    n_policy = sum(len(seeds) * len(_heads_of(m, rm_heads[m.reward_model]))
                   for m, seeds, _ in methods if m.type != "best_of_n")
    n_calib = sum(cfg.calibration.max_probes for m, _, study in methods if m.calibrate_kl and study == "main")
    total = 1 + len(rm_units) + len(pools) + len(pool_scores) + n_policy + n_calib
    runner = UnitRunner(root, total, on_unit_start, progress)
    try:
        runner(data)
        for u in rm_units.values():
            runner(u)
        for u in pools.values():
            runner(u)
        for u in pool_scores.values():
            runner(u)
        coefs = _calibrate_all(cfg, methods, rm_units, rm_heads, root, prompts_file, runner)
        run_index: list[dict] = []
        for m, seeds, study in methods:
            if m.type == "best_of_n":
                continue
            base_name = m.name.split("@", 1)[0]
            coef = coefs.get(m.name, coefs.get(base_name))
            for seed in seeds:
                for head in _heads_of(m, rm_heads[m.reward_model]):
                    u = _policy_unit(cfg, m, seed, head, rm_units[m.reward_model], root, prompts_file, kl_coef=coef)
                    runner(u)
                    run_index.append({"method": m.name, "seed": seed, "head": head, "key": u.key})
    finally:
        runner.close()
    results = analyse(cfg, out, methods, rm_units, pools, pool_scores, run_index, coefs)
    results["timing"] = {"wall_time_s": time.time() - t0, "units_run": runner.executed,
                         "units_cached": runner.skipped,
                         "unit_seconds": {k: _read_json(root / k / DONE_FILE)["seconds"]
                                          for k in runner.executed + runner.skipped}}
    atomic_write_json(out / RESULTS_FILE, results)
    report = None
    if render:
        from robust_rlhf.report.html import write_report

        report = write_report(out)
    log.info("experiment finished in %.0f s (%d units run, %d cached): %s", time.time() - t0,
             len(runner.executed), len(runner.skipped), out / RESULTS_FILE)
    return ExperimentOutcome(out, results, runner.executed, runner.skipped, report)


def _calibrate_all(cfg: ExperimentConfig, methods, rm_units: dict, rm_heads: dict, root: Path, prompts_file: Path,
                   runner: UnitRunner) -> dict[str, float]:
    """KL coefficient per calibrated method (sweep / perturbation copies inherit their base's)."""
    cal = cfg.calibration
    coefs: dict[str, float] = {}
    for m, seeds, study in methods:
        if not m.calibrate_kl or study != "main":
            continue
        cls, _ = _trainer(m.type)
        coef0 = build_dataclass(cls, _policy_config_dict(cfg, m, seeds[0], root, prompts_file),
                                f"methods[{m.name}]").kl.coef
        head = _heads_of(m, rm_heads[m.reward_model])[0]
        probes = 0

        def probe(coef: float, m=m, head=head) -> float:
            nonlocal probes
            probes += 1
            u = _policy_unit(cfg, m, seeds[0], head, rm_units[m.reward_model], root, prompts_file, kl_coef=coef,
                             steps=cal.steps, key=f"calibration/{m.name}/coef_{_coef_tag(coef)}", stage="calibration")
            return float(runner(u)["final_kl"])

        coef, history = calibrate_kl_coef(probe, cal.target_kl, coef0 or 0.05, cal.coef_min, cal.coef_max,
                                          cal.max_probes, cal.tolerance)
        runner.grow(probes - cal.max_probes)
        coefs[m.name] = coef
        atomic_write_json(root / "calibration" / m.name / "calibration.json",
                          {"target_kl": cal.target_kl, "chosen_coef": coef, "probes": history})
        log.info("calibrated %s: kl.coef = %.4g (probes: %s)", m.name, coef,
                 ", ".join(f"{h['coef']:.3g}->{h['kl']:.2f}" for h in history))
    return coefs


# ============================================================================ analysis
def _bon_ns(N: int) -> list[int]:
    ns, n = [], 1
    while n < N:
        ns.append(n)
        n *= 2
    return ns + [N]


def _aggregated(scores: dict, agg: AggregatorConfig, head: int | None):
    """(S,) aggregated proxy reward of pool samples from stored per-head scores."""
    import torch

    from robust_rlhf.aggregate import aggregate
    from robust_rlhf.reward.output import RewardOutput

    ph = torch.tensor(scores["per_head"], dtype=torch.float32)  # (S, K)
    std = None if scores["per_head_std"] is None else torch.tensor(scores["per_head_std"], dtype=torch.float32)
    stats = scores.get("head_stats") or {}
    hs = (torch.tensor(stats["mean"]), torch.tensor(stats["std"])) if agg.normalize and stats.get("mean") else None
    if head is not None:
        ph = ph[:, head : head + 1]
        std = None if std is None else std[:, head : head + 1]
        hs = None if hs is None else (hs[0][head : head + 1], hs[1][head : head + 1])
    return aggregate(RewardOutput(ph, std), agg, hs)


def _best_of_n_curve(pool: dict, proxy_flat, ns: list[int]) -> dict:
    """Coste's unbiased estimator per prompt, averaged over prompts, for each n."""
    import torch

    from robust_rlhf.policy.losses import best_of_n_expected_reward, best_of_n_kl

    N = pool["pool_size"]
    proxy = proxy_flat.reshape(len(pool["prompts"]), N)  # (P, N)
    gold = torch.tensor(pool["gold"], dtype=torch.float64)  # (P, N)
    gold_c, proxy_c = [], []
    for n in ns:
        gold_c.append(float(sum(best_of_n_expected_reward(proxy[i], gold[i], n) for i in range(len(proxy))) / len(proxy)))
        proxy_c.append(float(sum(best_of_n_expected_reward(proxy[i], proxy[i], n) for i in range(len(proxy))) / len(proxy)))
    kl = [best_of_n_kl(n) for n in ns]
    return {"n": ns, "kl": kl, "d": [math.sqrt(k) for k in kl], "gold": gold_c, "proxy": proxy_c}


def _stats(values: list[float], level: float) -> dict:
    return t_interval(values, level)


def analyse(cfg: ExperimentConfig, out: Path, methods, rm_units: dict, pools: dict, pool_scores: dict,
            run_index: list[dict], coefs: dict[str, float]) -> dict:
    """Assemble results.json from the finished units (pure reading + statistics)."""
    root = _units_root(out)
    level = cfg.confidence
    pool_data = {s: _read_json(root / u.key / "pool.json") for s, u in pools.items()}
    score_data = {k: _read_json(root / u.key / "scores.json") for k, u in pool_scores.items()}
    reference_gold = {s: float(sum(sum(g) for g in p["gold"]) / sum(len(g) for g in p["gold"]))
                      for s, p in pool_data.items()}
    results: dict = {"name": cfg.name, "config": config_to_dict(cfg), "confidence": level,
                     "reference": {"per_seed": {str(s): v for s, v in reference_gold.items()},
                                   "final_gold": _stats(list(reference_gold.values()), level)},
                     "reward_models": {}, "methods": {}}
    for name, u in rm_units.items():
        d = root / u.key
        metrics = _read_json(d / "eval" / "metrics.json")
        arrays = _read_json(d / "eval" / "arrays.json") if (d / "eval" / "arrays.json").exists() else {}
        results["reward_models"][name] = {
            "head_type": _read_json(d / DONE_FILE)["summary"].get("head_type"),
            "num_heads": metrics["num_heads"], "test_accuracy": metrics["accuracy"],
            "test_accuracy_ci95": metrics["accuracy_ci95"], "accuracy_per_head": metrics["accuracy_per_head"],
            "accuracy_by_aggregator": metrics.get("accuracy_by_aggregator", {}),
            "chosen_reward_variance": metrics.get("chosen_reward_variance"),
            "difference_variance": metrics.get("difference_variance"),
            "variance_arrays": arrays, "num_test_pairs": metrics["num_pairs"]}
    for m, seeds, study in methods:
        runs = []
        heads = _heads_of(m, results["reward_models"][m.reward_model]["num_heads"])
        for seed in seeds:
            for head in heads:
                proxy0 = _aggregated(score_data[(m.reward_model, seed)], m.aggregator, head)
                if m.type == "best_of_n":
                    c = _best_of_n_curve(pool_data[seed], proxy0, _bon_ns(cfg.evaluation.pool_size))
                    runs.append({"seed": seed, "head": head, "final_gold": c["gold"][-1], "final_kl": c["kl"][-1],
                                 "final_proxy": c["proxy"][-1], "curve": {k: c[k] for k in ("d", "gold", "proxy", "n")}})
                    continue
                entry = next(r for r in run_index if r["method"] == m.name and r["seed"] == seed and r["head"] == head)
                rows = [r for r in _read_metrics(root / entry["key"]) if r.get("gold_reward") is not None]
                curve = {"d": [0.0] + [math.sqrt(max(r.get("gold/kl", r.get("kl", 0.0)), 0.0)) for r in rows],
                         "gold": [reference_gold[seed]] + [r["gold_reward"] for r in rows],
                         "proxy": [float(proxy0.mean())] + [r.get("gold/proxy_reward") for r in rows],
                         "step": [0] + [r["step"] for r in rows]}
                train_rows = _read_metrics(root / entry["key"])
                runs.append({"seed": seed, "head": head, "final_gold": rows[-1]["gold_reward"],
                             "final_kl": rows[-1].get("gold/kl", rows[-1].get("kl")),
                             "final_proxy": rows[-1].get("gold/proxy_reward"), "curve": curve,
                             "train_curve": {"step": [r["step"] for r in train_rows],
                                             "kl": [r.get("kl") for r in train_rows],
                                             "proxy": [r.get("proxy_reward") for r in train_rows]}})
        results["methods"][m.name] = _method_summary(m, study, runs, reference_gold, level,
                                                     coefs.get(m.name, coefs.get(m.name.split("@", 1)[0])))
    _compare(cfg, results)
    _studies(cfg, results)
    results["summary"] = summary_lines(results)
    return results


def _method_summary(m: MethodSpec, study: str, runs: list[dict], reference_gold: dict, level: float,
                    coef: float | None) -> dict:
    import numpy as np

    form = "bon" if m.type == "best_of_n" else "rl"
    d_all, r_all = [], []
    for r in runs:
        g0 = reference_gold[r["seed"]]
        d_all += r["curve"]["d"]
        r_all += [g - g0 for g in r["curve"]["gold"]]
    fit = fit_gao(d_all, r_all, form)
    finals = [r["final_gold"] for r in runs]
    return {"type": m.type, "study": study, "reward_model": m.reward_model,
            "aggregator": config_to_dict(m.aggregator), "train_on": m.train_on, "kl_coef": coef,
            "calibrated": coef is not None, "num_policies": len(runs),
            "final_gold": _stats(finals, level), "final_kl": _stats([r["final_kl"] for r in runs], level),
            "final_proxy": _stats([r["final_proxy"] for r in runs if r["final_proxy"] is not None], level),
            "final_d_mean": float(np.mean([math.sqrt(max(r["final_kl"], 0.0)) for r in runs])),
            "gold_fit": fit.to_dict() if fit else None, "runs": runs}


def _compare(cfg: ExperimentConfig, results: dict) -> None:
    """Each main method vs the baseline: at the baseline's final sqrt(KL) d* (each run's curve
    interpolated there; a run that stops short of d* counts with its final value only if it ends
    within 15 % of d*), and on final gold reward with each method's own final KL beside it."""
    methods = results["methods"]
    main = [n for n, v in methods.items() if v["study"] == "main"]
    baseline = cfg.baseline or main[0]
    d_star = methods[baseline]["final_d_mean"]

    def matched(name: str) -> list[float]:
        vals = []
        for r in methods[name]["runs"]:
            v = interpolate_at(r["curve"]["d"], r["curve"]["gold"], d_star)
            d_final = math.sqrt(max(r["final_kl"], 0.0))
            if v is None and abs(d_final - d_star) <= 0.15 * max(d_star, 1e-9):
                v = r["final_gold"]
            if v is not None:
                vals.append(v)
        return vals

    def at(name: str, d: float) -> list[float]:
        vals = [interpolate_at(r["curve"]["d"], r["curve"]["gold"], d) for r in methods[name]["runs"]]
        return [v for v in vals if v is not None]

    base_vals = matched(baseline)
    rows = []
    for name in main:
        vals = matched(name)
        own = None
        if not vals and name != baseline:
            # It stops short of d* (best-of-n's KL is at most log N - (N-1)/N): compare at its own largest
            # common d instead, where the baseline's curves are interpolated.
            d_own = min(max(r["curve"]["d"]) for r in methods[name]["runs"])
            mine, theirs = at(name, d_own), at(baseline, d_own)
            own = {"d": d_own, "kl": d_own**2, "gold": _stats(mine, cfg.confidence),
                   "baseline_gold": _stats(theirs, cfg.confidence),
                   "vs_baseline": welch_difference(mine, theirs, cfg.confidence) if mine and theirs else None}
        rows.append({
            "method": name, "matched_gold": _stats(vals, cfg.confidence),
            "matched_coverage": f"{len(vals)}/{len(methods[name]['runs'])}",
            "matched_vs_baseline": welch_difference(vals, base_vals, cfg.confidence) if vals and name != baseline else None,
            "final_vs_baseline": welch_difference([r["final_gold"] for r in methods[name]["runs"]],
                                                  [r["final_gold"] for r in methods[baseline]["runs"]], cfg.confidence)
            if name != baseline else None,
            "final_kl_mean": methods[name]["final_kl"]["mean"], "at_own_kl": own})
    results["comparison"] = {"baseline": baseline, "d_star": d_star, "kl_star": d_star**2, "rows": rows}


def _studies(cfg: ExperimentConfig, results: dict) -> None:
    methods = results["methods"]
    if cfg.lambda_sweep.base is not None:
        rows = []
        for lam in cfg.lambda_sweep.lambdas:
            v = methods[f"{cfg.lambda_sweep.base}@lam={lam:g}"]
            rows.append({"lam": lam, "method": f"{cfg.lambda_sweep.base}@lam={lam:g}", "final_gold": v["final_gold"],
                         "final_kl": v["final_kl"], "final_proxy": v["final_proxy"]})
        best = max(rows, key=lambda r: r["final_gold"]["mean"])
        results["lambda_sweep"] = {"base": cfg.lambda_sweep.base, "rows": rows, "best_lam": best["lam"]}
    if cfg.perturbation.base is not None:
        base = cfg.perturbation.base
        rows = []
        for mode, name in (("none", base), ("over", f"{base}@over"), ("under", f"{base}@under")):
            rows.append({"mode": mode, "method": name, "final_gold": methods[name]["final_gold"],
                         "final_kl": methods[name]["final_kl"],
                         "vs_unperturbed": None if mode == "none" else welch_difference(
                             [r["final_gold"] for r in methods[name]["runs"]],
                             [r["final_gold"] for r in methods[base]["runs"]], cfg.confidence)})
        results["perturbation"] = {"base": base, "size": cfg.perturbation.size,
                                   "fraction": cfg.perturbation.fraction, "rows": rows}


def _fmt_ci(d: dict | None, level: float) -> str:
    if not d or d.get("ci_low") is None:
        return "no interval: fewer than 2 runs per side"
    return f"{100 * level:.0f}% CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _verdict(diff: dict) -> str:
    lo, hi = diff["ci_low"], diff["ci_high"]
    if lo is not None and lo > 0:
        return "beat the baseline"
    if hi is not None and hi < 0:
        return "did NOT beat the baseline: it was worse"
    if diff["diff"] > 0:
        return ("did NOT clearly beat the baseline: higher on average, but "
                + ("the interval includes 0" if lo is not None else "with one run per side there is no interval"))
    return "did NOT beat the baseline"


def summary_lines(results: dict) -> list[str]:
    """Plain-language findings, written from the numbers (including the negative ones)."""
    level = results["confidence"]
    lines: list[str] = []
    comp = results["comparison"]
    base = comp["baseline"]
    methods = results["methods"]
    calibrated = all(methods[r["method"]]["calibrated"] or methods[r["method"]]["type"] == "best_of_n"
                     for r in comp["rows"])
    lines.append(
        f"Baseline: {base} (final gold {methods[base]['final_gold']['mean']:.3f}, final KL "
        f"{methods[base]['final_kl']['mean']:.2f}). Methods are compared at its mean final sqrt(KL) "
        f"d* = {comp['d_star']:.2f} (KL {comp['kl_star']:.2f}); "
        + ("KL coefficients were calibrated to a common target." if calibrated else
           "KL coefficients were NOT calibrated, so final KLs differ between methods; the matched-KL "
           "comparison interpolates each run's gold curve at d*."))
    ref = results["reference"]["final_gold"]
    lines.append(f"The reference (base) policy scores gold {ref['mean']:.3f} on the held-out prompts.")
    best = None
    for row in comp["rows"]:
        name = row["method"]
        if name == base:
            continue
        diff = row["matched_vs_baseline"]
        if diff is None or diff["diff"] is None:
            line = (f"{name}: no run reaches d* = {comp['d_star']:.2f} (coverage {row['matched_coverage']}), so it "
                    f"cannot be compared at the baseline's KL; its final gold is "
                    f"{methods[name]['final_gold']['mean']:.3f} at KL {methods[name]['final_kl']['mean']:.2f}.")
            own = row.get("at_own_kl")
            if own and own["vs_baseline"] and own["vs_baseline"]["diff"] is not None:
                d = own["vs_baseline"]
                line += (f" At its own largest KL {own['kl']:.2f} it {_verdict(d)}: gold {own['gold']['mean']:.3f} vs "
                         f"{base} {own['baseline_gold']['mean']:.3f} there ({d['diff']:+.3f}, {_fmt_ci(d, level)}).")
            lines.append(line)
            continue
        lines.append(f"{name} {_verdict(diff)} at matched KL: gold difference {diff['diff']:+.3f} "
                     f"({_fmt_ci(diff, level)}, runs {row['matched_coverage']} vs baseline).")
        if best is None or diff["diff"] > best[1]["diff"]:
            best = (name, diff)
    if best is not None:
        name, d = best
        if d["diff"] > 0:
            sig = "significant" if d["ci_low"] is not None and d["ci_low"] > 0 else "NOT significant: the interval includes 0"
            lines.append(f"Highest mean gold at matched KL: {name} ({d['diff']:+.3f} over {base}; {sig}).")
        else:
            lines.append(f"No method improved on {base} at matched KL.")
    spreads = [(n, v["final_gold"]["var"]) for n, v in methods.items() if v["study"] == "main" and v["final_gold"]["var"] is not None]
    if spreads:
        lo_n, lo_v = min(spreads, key=lambda t: t[1])
        lines.append("Variance of final gold over policies: " + ", ".join(f"{n} {v:.4f}" for n, v in spreads)
                     + (f" (reference {ref['var']:.4f})" if ref["var"] is not None else "")
                     + f"; the least spread is {lo_n}.")
    for name, v in methods.items():
        fit = v["gold_fit"]
        if v["study"] != "main" or not fit or fit["num_points"] < 5 or fit["peak_d"] is None:
            continue
        if fit["peak_d"] < max(max(r["curve"]["d"]) for r in v["runs"]):
            lines.append(f"{name}: the Gao fit peaks at d = {fit['peak_d']:.2f}, inside the measured range -- "
                         "gold turns down while optimisation continues (over-optimisation).")
    if "lambda_sweep" in results:
        sw = results["lambda_sweep"]
        lines.append(f"λ sweep ({sw['base']}): best final gold at λ = {sw['best_lam']:g} ("
                     + ", ".join(f"λ={r['lam']:g}: {r['final_gold']['mean']:.3f}" for r in sw["rows"]) + ").")
    if "perturbation" in results:
        pt = results["perturbation"]
        d = {r["mode"]: r for r in pt["rows"]}
        o, u = d["over"]["vs_unperturbed"], d["under"]["vs_unperturbed"]
        hurt_more = "over-scoring hurt more" if o["diff"] < u["diff"] else "under-scoring hurt more (unlike seed 000's finding)"
        lines.append(f"Perturbation ±{pt['size']:g} on {pt['fraction']:.0%} of samples: gold change over-scoring "
                     f"{o['diff']:+.3f}, under-scoring {u['diff']:+.3f} vs unperturbed -- {hurt_more}"
                     + ("" if o["ci_low"] is not None else " (single seed: no interval)") + ".")
    return lines
