"""The experiment's units: data, proxy reward models, best-of-n pools and their proxy scores,
policy runs (via the policy recipes), and the shifted evaluation sets of seed 001.

Each ``*_unit`` function declares a `Unit`: its key, its fingerprint spec, a module-level
``_run_*`` function with picklable arguments (the unit may run in another process or on another
machine) and the keys of the units whose folders it reads (``after``). A spec holds what the
result is computed from, never where the experiment folder lives: paths inside it relative to
it (`root_relative`), and the content of a file outside it (a prompt file is read when its unit
is declared, and that text goes to both the spec and the unit's arguments)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from robust_rlhf.config import _merge, build_dataclass, config_to_dict, read_config_source
from robust_rlhf.errors import UserError
from robust_rlhf.experiments.config import ExperimentConfig, MethodSpec, PromptsConfig, RewardModelSpec, nest_dotted
from robust_rlhf.experiments.units import Unit, read_json, root_relative
from robust_rlhf.policy.tracking import _flatten
from robust_rlhf.utils import atomic_write_json, atomic_write_jsonl


DATA_KEY = "data"
"""the data unit's key: every unit reads its prompts or preference files"""


def load_prompts(cfg: PromptsConfig) -> list[str]:
    import random

    from robust_rlhf.data.prompts import builtin_prompts, load_prompts_file

    prompts = load_prompts_file(cfg.source) if cfg.source else builtin_prompts()
    if cfg.limit is not None:
        order = list(prompts)
        random.Random(cfg.seed).shuffle(order)
        prompts = order[: cfg.limit]
    if len(prompts) < 5:
        raise UserError(f"the experiment needs at least 5 prompts, got {len(prompts)}")
    return prompts


def prompts_of(source: str | None, default: list[str], limit: int, key: str) -> list[str]:
    """The first ``limit`` prompts of the file ``source`` (config key ``key``), or of ``default`` when
    it is null. Read when a unit is declared: the unit is keyed by these prompts, not by the path."""
    from robust_rlhf.data.prompts import load_prompts_file

    if source is None:
        return list(default)[:limit]
    try:
        return load_prompts_file(source)[:limit]
    except UserError as e:
        raise UserError(f"{key}: {e}") from None


def _run_data(folder: Path, cfg: ExperimentConfig, prompts: list[str]) -> dict:
    from robust_rlhf.data.builtin_task import TaskConfig, build_task

    atomic_write_jsonl(folder / "prompts.jsonl", ({"prompt": p} for p in prompts))
    d = cfg.data
    if d.task == "large":
        from robust_rlhf.data.large_task import write_large_task_splits

        return write_large_task_splits(folder, cfg.gold, d.train_pairs, d.label_noise, d.eval_pairs, d.seed)
    if d.source == "builtin":
        from robust_rlhf.data.preferences import FIXTURE_DIR, SPLITS

        if cfg.gold != "vader":
            raise UserError("data.source=builtin holds VADER labels; use gold: vader or data.source: generate")
        summary = json.loads((FIXTURE_DIR / "builtin_task.json").read_text())["summary"]
        for split in SPLITS:
            shutil.copyfile(FIXTURE_DIR / f"builtin_{split}.jsonl", folder / f"builtin_{split}.jsonl")
        return summary
    task_keys = {f.name for f in dataclasses.fields(TaskConfig)}  # the generate path's settings only
    fields = {k: v for k, v in config_to_dict(d).items() if k in task_keys}
    fields["split_fractions"] = tuple(fields["split_fractions"])
    task = TaskConfig(policy=cfg.policy, gold=cfg.gold, **fields)
    summary = build_task(task, folder, prompts)
    for split in ("train", "validation", "test"):
        if summary[split]["pairs"] == 0:
            raise UserError(f"data: the {split} split got no preference pairs; use more prompts or completions")
    return summary


def data_unit(cfg: ExperimentConfig, prompts: list[str]) -> Unit:
    spec = {"policy": cfg.policy, "gold": cfg.gold, "prompts": prompts, "data": config_to_dict(cfg.data)}
    if cfg.data.task == "large":  # a rebuilt fixture is other data
        import hashlib

        from robust_rlhf.data.large_task import large_task_paths

        meta = large_task_paths()[1]
        spec["large_task"] = hashlib.sha256(meta.read_bytes()).hexdigest()[:16] if meta.exists() else None
    return Unit(DATA_KEY, "data", spec, _run_data, {"cfg": cfg, "prompts": prompts})


def rm_config(spec: RewardModelSpec, data_dir: Path, seed: int, device: str):
    from robust_rlhf.reward.train_config import RewardTrainConfig

    raw = _merge(read_config_source(spec.preset), nest_dotted(spec.overrides))
    raw = _merge(raw, {"data": {"train": str(data_dir / "builtin_train.jsonl"),
                                "validation": str(data_dir / "builtin_validation.jsonl")},
                       "seed": raw.get("seed", seed), "resume": True,
                       "device": None if device == "auto" else device})
    return build_dataclass(RewardTrainConfig, raw, f"reward_models[{spec.name}]")


def _run_rm(folder: Path, rm_cfg, data_dir: Path) -> dict:
    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.report.reward_eval import write_eval_report
    from robust_rlhf.reward.evaluate import evaluate_reward_model
    from robust_rlhf.reward.model import RewardModel
    from robust_rlhf.reward.train import train_reward_model

    train_reward_model(rm_cfg, folder / "model")
    model = RewardModel.from_pretrained(folder / "model")
    test = load_preferences(data_dir / "builtin_test.jsonl")
    metrics, arrays = evaluate_reward_model(model, test)
    write_eval_report(metrics, arrays, folder / "eval")
    keep = {k: [float(x) for x in arrays[k]] for k in ("chosen_var", "diff_var") if k in arrays}
    atomic_write_json(folder / "eval" / "arrays.json", keep)
    return {"accuracy": metrics["accuracy"], "accuracy_ci95": metrics["accuracy_ci95"],
            "num_heads": metrics["num_heads"], "head_type": rm_cfg.model.head_type}


def rm_unit(spec: RewardModelSpec, data: Unit, root: Path, cfg: ExperimentConfig) -> Unit:
    data_dir = root / data.key
    rm_cfg = rm_config(spec, data_dir, cfg.data.seed, cfg.device)
    inputs = root_relative({"data": data.fingerprint, "rm": config_to_dict(rm_cfg)}, root)
    return Unit(f"rm/{spec.name}", "reward models", inputs, _run_rm, {"rm_cfg": rm_cfg, "data_dir": data_dir},
                after=(data.key,))


def rm_units_of(cfg: ExperimentConfig, data: Unit, root: Path) -> dict[str, Unit]:
    """Every reward-model unit: one per recipe (`rm/<name>`, trained with its first seed when
    ``seeds`` is set) and one per further replicate seed (`rm/<name>@s<seed>`, same recipe)."""
    out = {}
    for spec in cfg.reward_models:
        seeds = spec.seeds or [None]
        for i, seed in enumerate(seeds):
            own = spec if seed is None else dataclasses.replace(
                spec, name=spec.name if i == 0 else f"{spec.name}@s{seed}",
                overrides=_merge(nest_dotted(spec.overrides), {"seed": seed}))
            out[own.name] = rm_unit(own, data, root, cfg)
    return out


def eval_prompts(cfg: ExperimentConfig, prompts_file: Path) -> list[str]:
    from robust_rlhf.data.prompts import PromptDataConfig, train_eval_prompts

    ev = cfg.evaluation
    _, held_out = train_eval_prompts(PromptDataConfig(prompts=str(prompts_file), eval_fraction=ev.eval_fraction,
                                                split_seed=ev.split_seed))
    return held_out[: ev.eval_prompts]


def pool_unit(cfg: ExperimentConfig, seed: int, data: Unit, prompts_file: Path) -> Unit:
    """N base-policy samples per held-out prompt, gold-scored: best-of-n for every n <= N and
    the reference policy's gold reward (n = 1) come from it."""
    ev = cfg.evaluation
    spec = {"data": data.fingerprint, "policy": cfg.policy, "gold": cfg.gold, "evaluation": config_to_dict(ev),
            "seed": seed}
    return Unit(f"pool/s{seed}", "best-of-n pools", spec, _run_pool,
                {"cfg": cfg, "seed": seed, "prompts_file": prompts_file}, after=(data.key,))


def _run_pool(folder: Path, cfg: ExperimentConfig, seed: int, prompts_file: Path) -> dict:
    import torch

    from robust_rlhf.gold import load_gold
    from robust_rlhf.models.generation import SamplingConfig, generate
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer

    ev = cfg.evaluation
    prompts = eval_prompts(cfg, prompts_file)
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


def _run_pool_scores(folder: Path, pool_dir: Path, rm_dir: Path) -> dict:
    from robust_rlhf.reward.model import RewardModel

    p = read_json(pool_dir / "pool.json")
    model = RewardModel.from_pretrained(rm_dir / "model")
    prompts = [x for x, rs in zip(p["prompts"], p["responses"]) for _ in rs]
    responses = [r for rs in p["responses"] for r in rs]
    out = model.score(prompts, responses)
    atomic_write_json(folder / "scores.json", {
        "per_head": out.per_head.tolist(),
        "per_head_std": None if out.per_head_std is None else out.per_head_std.tolist(),
        "head_stats": model.config.head_stats})
    return {"num_samples": len(responses)}


def pool_score_unit(rm: Unit, pool: Unit, root: Path) -> Unit:
    rm_name, seed = rm.key.split("/", 1)[1], pool.key.split("/", 1)[1]
    return Unit(f"pool_scores/{rm_name}/{seed}", "best-of-n pools", {"rm": rm.fingerprint, "pool": pool.fingerprint},
                _run_pool_scores, {"pool_dir": root / pool.key, "rm_dir": root / rm.key}, after=(rm.key, pool.key))


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

    batch_size = 64

    def validation_uncertainty(self, form: str) -> float:
        """The whole ensemble's mean validation sigma^2 (or sigma): ``kl.variance_scale=validation``."""
        from robust_rlhf.reward.sources import RewardModelSource

        return RewardModelSource.validation_uncertainty(self, form)

    def all_heads(self, prompts, responses):
        """(B, K) every head of the reward model (held-out evaluation scores all of them, whatever
        the run trains on; `robust_rlhf.policy.recipe.all_heads`)."""
        key = (tuple(prompts), tuple(responses))
        if self._last is not None and self._last[0] == key:
            return self._last[1].per_head
        return self.model.score(list(prompts), list(responses)).per_head

    _last = None

    def __call__(self, prompts, responses):
        from robust_rlhf.reward.output import RewardOutput

        out = self.model.score(list(prompts), list(responses))
        self._last = ((tuple(prompts), tuple(responses)), out)
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


_RESERVED = ("model.name", "data.prompts", "reward.model", "reward.aggregator", "gold", "seed", "resume")


def trainer(method_type: str):
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


def policy_config_dict(cfg: ExperimentConfig, method: MethodSpec, seed: int, rm_dir: Path, prompts_file: Path,
                        kl_coef: float | None = None, steps: int | None = None) -> dict:
    # policy_overrides reach every RL method: a section another recipe lacks (ppo: for rloo,
    # rloo: for ppo) is skipped there; a method's own overrides are applied strictly.
    cls, _ = trainer(method.type)
    own_sections = {f.name for f in dataclasses.fields(cls)}
    shared = {k: v for k, v in nest_dotted(cfg.policy_overrides).items() if k in own_sections or k not in ("ppo", "rloo")}
    user = _merge(shared, nest_dotted(method.overrides))
    clash = [k for k in _flatten(user) if any(k == r or k.startswith(r + ".") for r in _RESERVED)]
    if clash:
        raise UserError(f"method {method.name!r}: {clash[0]!r} is set by the experiment itself "
                        f"(reserved: {', '.join(_RESERVED)})")
    ev = cfg.evaluation
    base = {"model": {"name": cfg.policy},
            "data": {"prompts": str(prompts_file), "eval_fraction": ev.eval_fraction, "split_seed": ev.split_seed},
            "sampling": {"max_new_tokens": ev.max_new_tokens, "temperature": ev.temperature},
            "log": {"eval_prompts": ev.eval_prompts, "eval_samples_per_prompt": ev.samples_per_prompt,
                    "progress": False},
            "device": cfg.device}
    d = _merge(base, user)
    d = _merge(d, {"reward": {"model": str(rm_dir), "aggregator": config_to_dict(method.aggregator)},
                   "gold": cfg.gold, "seed": seed, "resume": True})
    if kl_coef is not None:
        d = _merge(d, {"kl": {"coef": kl_coef}})
    if steps is not None:
        d = _merge(d, {"train": {"steps": steps}})
    return d


def read_metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_bytes().decode("utf-8", "replace").split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise UserError(f"{path}: line {n}: torn or not JSON; delete the unit's folder to recompute it") from None
    return rows


def policy_unit(cfg: ExperimentConfig, method: MethodSpec, seed: int, head: int | None, rm: Unit, root: Path,
                 prompts_file: Path, kl_coef: float | None = None, steps: int | None = None,
                 key: str | None = None, stage: str = "policies") -> Unit:
    rm_dir = root / rm.key / "model"
    cfg_dict = policy_config_dict(cfg, method, seed, rm_dir, prompts_file, kl_coef, steps)
    cls, _ = trainer(method.type)
    policy_cfg = build_dataclass(cls, cfg_dict, f"methods[{method.name}]")

    keep_var = head is not None and bool(getattr(getattr(policy_cfg, "kl", None), "variance_aware", False))
    if keep_var and method.aggregator.name != "mean":
        raise UserError(f"method {method.name!r}: variance-aware training per head needs aggregator mean "
                        f"(the reward is the head's own), got {method.aggregator.name}")

    suffix = f"s{seed}" + ("" if head is None else f"-h{head}")
    spec = root_relative({"rm": rm.fingerprint, "prompts": str(prompts_file), "config": config_to_dict(policy_cfg),
                          "head": head, "type": method.type}, root)
    args = {"policy_cfg": policy_cfg, "method_type": method.type, "rm_dir": rm_dir, "head": head, "keep_var": keep_var}
    return Unit(key or f"runs/{method.name}/{suffix}", stage, spec, _run_policy, args,
                after=(DATA_KEY, rm.key))


def _run_policy(folder: Path, policy_cfg, method_type: str, rm_dir: Path, head: int | None, keep_var: bool) -> dict:
    _, train = trainer(method_type)
    source = _ExperimentRewardSource(rm_dir, head, keep_ensemble_variance=keep_var)
    train(policy_cfg, folder, reward_source=source)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the final policy/ stays
    rows = [r for r in read_metrics(folder) if r.get("gold_reward") is not None]
    if not rows:
        raise UserError(f"{folder}: the run logged no gold evaluation (set log.eval_every > 0)")
    last = rows[-1]
    return {"final_gold": last["gold_reward"], "final_kl": last.get("gold/kl", last.get("kl")),
            "final_proxy": last.get("gold/proxy_reward")}


# ---------------------------------------------------------------------------- shifted sets (seed 001)
_SHIFT_SUBJECTS = ["The restaurant", "This hotel", "The waiter", "My new phone", "This laptop", "The novel",
                   "This blender", "The service", "Our room", "This album", "The pizza", "The headphones"]
SHIFTED_PROMPTS = [f"{s} {v}" for s in _SHIFT_SUBJECTS for v in ("was", "is", "felt")]
"""Built-in prompt-shifted openings (36): reviews of restaurants, hotels, gadgets, books and music
rather than the built-in movie-review openings the proxies were trained on."""

SHIFT_SETS = ("prompt", "response", "in_domain")


def shift_sets_unit(cfg: ExperimentConfig, data: Unit, prompts_file: Path) -> Unit:
    """The shifted evaluation sets: responses_per_prompt base-policy responses per prompt, gold-scored.
    Keyed by the prompt-shifted prompts themselves (shift.prompt_source is read now), not the file's path."""
    sh, ev = cfg.shift, cfg.evaluation
    shifted = prompts_of(sh.prompt_source, SHIFTED_PROMPTS, sh.num_prompts, "shift.prompt_source")
    shift = {k: v for k, v in config_to_dict(sh).items() if k != "prompt_source"}
    spec = {"data": data.fingerprint, "policy": cfg.policy, "gold": cfg.gold, "shift": shift,
            "shifted_prompts": shifted, "evaluation": config_to_dict(ev)}
    return Unit("shift/sets", "shifted sets", spec, _run_shift_sets,
                {"cfg": cfg, "shifted": shifted, "prompts_file": prompts_file}, after=(data.key,))


def _run_shift_sets(folder: Path, cfg: ExperimentConfig, shifted: list[str], prompts_file: Path) -> dict:
    import torch

    from robust_rlhf.gold import load_gold
    from robust_rlhf.models.generation import SamplingConfig, generate
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer

    sh, ev = cfg.shift, cfg.evaluation
    held_out = eval_prompts(cfg, prompts_file)
    plan = {"prompt": (shifted, ev.temperature),
            "response": (held_out[: sh.num_prompts], sh.response_temperature),
            "in_domain": (held_out[: sh.num_prompts], ev.temperature)}
    lm = load_causal_lm(cfg.policy).eval()
    tok = load_tokenizer(cfg.policy)
    gold_fn = load_gold(cfg.gold)
    n = sh.responses_per_prompt
    sets = {}
    for i, (name, (prompts, temp)) in enumerate(plan.items()):
        flat = [p for p in prompts for _ in range(n)]
        torch.manual_seed(1_000_003 * sh.seed + 31 * i + 5)
        ro = generate(lm, tok, flat, SamplingConfig(max_new_tokens=ev.max_new_tokens, temperature=temp))
        gold = gold_fn(ro.prompts, ro.responses)
        sets[name] = {"prompts": list(prompts), "temperature": temp,
                      "responses": [ro.responses[j * n : (j + 1) * n] for j in range(len(prompts))],
                      "gold": [gold[j * n : (j + 1) * n] for j in range(len(prompts))]}
    atomic_write_json(folder / "sets.json", sets)
    return {name: len(s["prompts"]) for name, s in sets.items()}


def shift_score_unit(rm: Unit, sets: Unit, root: Path) -> Unit:
    """One proxy on the shifted sets: its reward (mean over heads) and the hidden-state norm of every response."""
    rm_name = rm.key.split("/", 1)[1]
    return Unit(f"shift/scores/{rm_name}", "shifted sets", {"rm": rm.fingerprint, "sets": sets.fingerprint},
                _run_shift_scores, {"sets_dir": root / sets.key, "rm_dir": root / rm.key}, after=(rm.key, sets.key))


def _run_shift_scores(folder: Path, sets_dir: Path, rm_dir: Path) -> dict:
    from robust_rlhf.reward.model import RewardModel

    data = read_json(sets_dir / "sets.json")
    model = RewardModel.from_pretrained(rm_dir / "model")
    out = {}
    for name, s in data.items():
        prompts = [p for p, rs in zip(s["prompts"], s["responses"]) for _ in rs]
        responses = [r for rs in s["responses"] for r in rs]
        scores, feats = model.score(prompts, responses, return_features=True)
        out[name] = {"reward": scores.mean.tolist(), "norm": feats.double().norm(dim=1).tolist(),
                     "per_head": scores.per_head.tolist()}  # (R, K): uncertainty under shift (uncertainty_shift.py)
    atomic_write_json(folder / "scores.json", out)
    return {name: len(v["reward"]) for name, v in out.items()}


# ---------------------------------------------------------------------------- best-of-n study
def bon_pool_unit(cfg: ExperimentConfig, data: Unit) -> Unit:
    """The best-of-n study's pool: bon_study.pool_size reference-policy samples on each of its prompts, gold-scored.
    Keyed by the prompts themselves (bon_study.prompt_source is read now), not the file's path."""
    from robust_rlhf.experiments.bon_study import HELD_OUT_PROMPTS

    bs, ev = cfg.bon_study, cfg.evaluation
    prompts = prompts_of(bs.prompt_source, HELD_OUT_PROMPTS, bs.num_prompts, "bon_study.prompt_source")
    spec = {"data": data.fingerprint, "policy": cfg.policy, "gold": cfg.gold, "max_new_tokens": ev.max_new_tokens,
            "temperature": ev.temperature, "prompts": prompts, "pool_size": bs.pool_size, "seed": bs.seed}
    return Unit("bon/pool", "best-of-n study", spec, _run_bon_pool, {"cfg": cfg, "prompts": prompts})


def _run_bon_pool(folder: Path, cfg: ExperimentConfig, prompts: list[str]) -> dict:
    import torch

    from robust_rlhf.gold import load_gold
    from robust_rlhf.models.generation import SamplingConfig, generate
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer

    bs, ev = cfg.bon_study, cfg.evaluation
    lm = load_causal_lm(cfg.policy).eval()
    tok = load_tokenizer(cfg.policy)
    N = bs.pool_size
    torch.manual_seed(1_000_003 * bs.seed + 101)
    ro = generate(lm, tok, [p for p in prompts for _ in range(N)],
                  SamplingConfig(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature))
    gold = load_gold(cfg.gold)(ro.prompts, ro.responses)
    atomic_write_json(folder / "pool.json", {
        "prompts": prompts, "pool_size": N,
        "responses": [ro.responses[i * N : (i + 1) * N] for i in range(len(prompts))],
        "gold": [gold[i * N : (i + 1) * N] for i in range(len(prompts))]})
    return {"num_prompts": len(prompts), "gold_mean": sum(gold) / len(gold)}


def bon_score_unit(rm: Unit, pool: Unit, root: Path) -> Unit:
    """One proxy's per-head scores of the best-of-n study's pool (`pool_score_unit` on that pool)."""
    u = pool_score_unit(rm, pool, root)
    return Unit(f"bon/scores/{rm.key.split('/', 1)[1]}", "best-of-n study", u.spec, u.fn, u.args, u.after)


def bon_study_units(cfg: ExperimentConfig, data: Unit, rm_units: dict[str, Unit], root: Path) -> dict[str, Unit]:
    """{"pool": the study's pool, <rm>: its scores} for bon_study.reward_models (null = every recipe)."""
    pool = bon_pool_unit(cfg, data)
    names = cfg.bon_study.reward_models or [r.name for r in cfg.reward_models]
    return {"pool": pool, **{r: bon_score_unit(rm_units[r], pool, root) for r in names}}
