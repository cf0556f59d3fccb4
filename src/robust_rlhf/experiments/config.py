"""The over-optimisation experiment's config: one dataclass per section, a doc line per field,
unknown keys rejected (robust_rlhf.config.build_dataclass); plus the expansion of the methods
into the runs the λ sweep and the perturbation study add."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.config import _merge, load_config
from robust_rlhf.data.builtin_task import PairSamplingConfig
from robust_rlhf.errors import UserError

METHOD_TYPES = ("best_of_n", "ppo", "rloo")


def nest_dotted(d: dict) -> dict:
    """{'a.b': 1, 'c': {'d': 2}} -> {'a': {'b': 1}, 'c': {'d': 2}} (dotted keys allowed at any level)."""
    out: dict = {}
    for key, value in d.items():
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        value = nest_dotted(value) if isinstance(value, dict) else value
        node[parts[-1]] = _merge(node[parts[-1]], value) if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict) else value
    return out


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
class PreferenceDataConfig(PairSamplingConfig):
    """Gold-labelled preference pairs sampled from the base policy (robust_rlhf.data.builtin_task).

    The sampling keys are `PairSamplingConfig`'s (shared with ``data build-task``'s `TaskConfig`);
    the lab samples 4 completions per prompt and keeps ``split_fractions`` a list."""

    completions_per_prompt: int = 4
    """completions sampled per prompt; pairs are drawn among them"""
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    """fractions of prompts for train / validation / test pairs"""
    source: Literal["generate", "builtin"] = "generate"
    """generate: sample and label pairs with the settings below; builtin: reuse the shipped fixture
    (made by the same pipeline with its default settings over all built-in prompts, VADER gold)"""
    task: Literal["small", "large"] = "small"
    """small: the pairs of `source`; large: draw from the shipped large task (1,003 prompts x 8
    completions, robust_rlhf.data.large_task) -- `train_pairs` training pairs labelled by the
    experiment's gold (vader or learned) with `label_noise`, and up to `eval_pairs` noiseless
    validation / test pairs; `source` and the sampling keys are then unused"""
    train_pairs: int | None = None
    """task large: training pairs drawn (null = all the train split holds under that gold; the
    split caps it -- see docs/experiments.md)"""
    eval_pairs: int | None = 1000
    """task large: validation and test pairs each, at most (null = all)"""

    def __post_init__(self) -> None:
        if len(self.split_fractions) != 3 or any(f <= 0 for f in self.split_fractions):
            raise ValueError("data.split_fractions must be three positive fractions (train, validation, test)")
        if not 0 <= self.label_noise < 0.5:
            raise ValueError(f"data.label_noise must be in [0, 0.5), got {self.label_noise}")
        if self.task != "large" and (self.train_pairs is not None or self.eval_pairs != 1000):
            raise ValueError("data.train_pairs and data.eval_pairs apply to data.task: large")
        for key in ("train_pairs", "eval_pairs"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"data.{key} must be a positive integer or null, got {v!r}")
        if self.task == "large" and self.bt_sampling:
            raise ValueError("data.bt_sampling does not apply to data.task: large (labels follow the gold's "
                             "recorded scores; use label_noise)")


@dataclass
class RewardModelSpec:
    """One proxy reward-model recipe."""

    name: str
    """name used by methods (`reward_model: <name>`) and in the report"""
    preset: str = "rm_bt_minilm"
    """rm preset name or YAML file (rm_bt_minilm, rm_bsr_minilm, rm_ensemble_minilm, rm_brme_minilm, rm_tiny, ...)"""
    overrides: dict[str, Any] = field(default_factory=dict)
    """keys of the rm config to change, nested or dotted (e.g. {stage1.max_steps: 40, model.num_heads: 5})"""
    seeds: list[int] | None = None
    """independently trained replicates (training seeds): the first is `rm/<name>` (the one methods use), the
    others `rm/<name>@s<seed>`; reward-model claims then take the reward models as their unit (null = one model)"""

    def __post_init__(self) -> None:
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"reward_models[{self.name}].seeds must be distinct training seeds (or null)")


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
    """how many held-out prompts are evaluated (at most: the held-out split may hold fewer)"""
    samples_per_prompt: int = 1
    """responses sampled per held-out prompt at every policy evaluation (gold evaluations per point =
    prompts x this; the study uses >= 64); each is logged in the run's eval_samples.jsonl"""
    split_seed: int = 0
    """seed of the policy train / held-out split"""
    max_new_tokens: int = 24
    """response length of every policy (and of the best-of-n pool)"""
    temperature: float = 1.0
    """sampling temperature of every policy"""
    pool_size: int = 16
    """best-of-n pool: N base-policy samples per held-out prompt (every n <= N is estimated from it)"""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError(f"evaluation.samples_per_prompt must be >= 1, got {self.samples_per_prompt}")


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
class ShiftConfig:
    """Seed 001's shifted evaluation sets: responses_per_prompt base-policy responses per prompt,
    gold-scored, scored by every proxy (Kendall tau against the gold per prompt; hidden-state norms).

    * prompt-shifted: prompts from another distribution than the training prompts -- by default
      reviews of restaurants, hotels, gadgets and books instead of the built-in movie-review openings;
    * response-shifted: the held-out (in-domain) evaluation prompts, responses sampled at
      ``response_temperature`` instead of evaluation.temperature;
    * in-domain: the same held-out prompts at evaluation.temperature (the unshifted reference)."""

    enabled: bool = False
    """build the shifted sets and score them with every proxy"""
    responses_per_prompt: int = 4
    """responses per prompt ranked against the gold (seed 001: 4)"""
    prompt_source: str | None = None
    """prompt-shifted prompts: JSONL with `prompt` (or text, one per line); null = the built-in out-of-domain openings"""
    num_prompts: int = 32
    """prompts per set (at most; the response-shifted and in-domain sets use the held-out prompts)"""
    response_temperature: float = 1.6
    """sampling temperature of the response-shifted set"""
    seed: int = 0
    """seed of the sampling"""

    def __post_init__(self) -> None:
        if self.responses_per_prompt < 2:
            raise ValueError("shift.responses_per_prompt must be >= 2 (a ranking needs two responses)")
        if self.num_prompts < 2:
            raise ValueError("shift.num_prompts must be >= 2")
        if self.response_temperature <= 0:
            raise ValueError("shift.response_temperature must be > 0")


@dataclass
class EarlyWarningConfig:
    """Reward-hacking early warning per policy (robust_rlhf.experiments.stats.early_warning_se): does the
    ensemble std (all heads of the run's reward model) on the policy's own held-out samples rise before
    the held-out gold turns down? Both are read at every evaluation (the reference policy's pool first)."""

    window: int = 2
    """evaluations averaged (the first `window`, the reference included, are the baseline level)"""
    rise: float = 0.25
    """warning when the trailing mean exceeds (1 + rise) x the baseline"""
    gold_drop_se: float = 2.0
    """gold downturn when an evaluation is more than this many standard errors (of the difference) below
    the best gold so far"""


CLAIM_STATISTICS = ("variance_ratio", "gold_difference", "kendall_tau_difference", "dispersion_difference",
                    "bon_gold_difference")
BON_AGGREGATORS = ("mean", "min", "max", "lcb", "uwo", "lcb_norm", "uwo_norm", "brme_l0", "brme_l05", "brme_l1")
"""The best-of-n study's aggregators: min / max and the ``_norm`` ones on heads standardised by their validation
statistics (independently trained members carry arbitrary offsets, which the raw lcb / uwo spread measures)."""


@dataclass
class BonStudyConfig:
    """Best-of-n with the power to decide (robust_rlhf.experiments.bon_study): ``pool_size`` reference-policy
    samples on each of ``num_prompts`` prompts none of the proxies was trained on, gold-scored once; every proxy
    x every aggregator selects -> gold at n = 1..pool_size (Coste's unbiased estimator per prompt) with
    prompt-bootstrap intervals. Claims (statistic bon_gold_difference) compare two `<rm>:<aggregator>` at n."""

    enabled: bool = False
    """build the pool and score it with every proxy"""
    num_prompts: int = 200
    """prompts (at most the source's count)"""
    prompt_source: str | None = None
    """JSONL with `prompt` (or text, one per line); null = the built-in held-out review openings (240, none in the
    built-in task the proxies are trained on)"""
    pool_size: int = 64
    """N samples per prompt from the reference policy"""
    reward_models: list[str] | None = None
    """proxies to score the pool with (null = every reward model)"""
    beta: float = 1.0
    """lcb = mean - beta * std over heads"""
    uwo_lam: float = 0.5
    """UWO's variance weight"""
    n: int | None = None
    """the n at which bon_gold_difference claims are judged (null = pool_size)"""
    n_boot: int = 1000
    """prompt-bootstrap resamples of the curves' intervals"""
    seed: int = 0
    """seed of the sampling and of the bootstrap"""

    def __post_init__(self) -> None:
        if self.num_prompts < 2 or self.pool_size < 2:
            raise ValueError("bon_study.num_prompts and bon_study.pool_size must be >= 2")
        if self.n is not None and not 1 <= self.n <= self.pool_size:
            raise ValueError(f"bon_study.n must be in [1, pool_size={self.pool_size}], got {self.n}")



@dataclass
class ClaimSpec:
    """One headline claim of a seed paper, tested with a 95 % interval (robust_rlhf.experiments.claims).

    Statistics (treatment vs control): variance_ratio = between-policy variance of gold, net of each
    policy's sampling noise, treatment / control, and gold_difference = mean gold difference (Welch),
    both at matched KL (each policy's gold at the FIRST crossing of the smaller of the two arms' mean
    final sqrt(KL)); kendall_tau_difference = mean Kendall tau vs the gold and dispersion_difference =
    std/mean of hidden-state norms on a shifted set, treatment - control, over independently trained
    reward models (reward_models[].seeds; with one model per arm: paired over prompts / bootstrap over
    texts); bon_gold_difference = best-of-n gold at bon_study.n, `<rm>:<aggregator>` treatment -
    control, paired over the study's prompts. Every claim gets a two-sided p, its Holm-adjusted p
    and verdict over the whole table, and its minimum detectable effect at 80 % power."""

    claim: str
    """the claim in words (shown in the report)"""
    seed: str
    """which seed paper makes it: "000", "001" or "002" (quote it in YAML)"""
    statistic: str
    """variance_ratio, gold_difference (methods), kendall_tau_difference, dispersion_difference (reward models)
    or bon_gold_difference (best-of-n study)"""
    treatment: str
    """method name (variance_ratio, gold_difference), reward-model name (kendall_tau / dispersion) or
    `<reward model>:<aggregator>` (bon_gold_difference; aggregators mean, min, max, lcb, uwo, brme_l0/l05/l1)"""
    control: str
    """the method / reward model it is compared with"""
    direction: Literal["less", "greater"]
    """the claim: the statistic is less / greater than its null (1 for the ratio, 0 for differences)"""
    shift: Literal["prompt", "response", "in_domain"] = "prompt"
    """kendall_tau_difference / dispersion_difference: which evaluation set"""

    def __post_init__(self) -> None:
        if self.seed not in ("000", "001", "002"):
            raise ValueError(f"claims: seed must be \"000\", \"001\" or \"002\", got {self.seed!r}")
        if self.statistic not in CLAIM_STATISTICS:
            raise ValueError(f"claims: statistic {self.statistic!r} is not one of {', '.join(CLAIM_STATISTICS)}")


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
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    """seed 001's prompt- / response-shifted evaluation sets (Kendall tau, hidden-state norms)"""
    early_warning: EarlyWarningConfig = field(default_factory=EarlyWarningConfig)
    """reward-hacking early warning from the ensemble's disagreement during training"""
    bon_study: BonStudyConfig = field(default_factory=BonStudyConfig)
    """best-of-n over many held-out prompts, every proxy x every aggregator (its claims: bon_gold_difference)"""
    claims: list[ClaimSpec] = field(default_factory=list)
    """headline claims tested with 95 % intervals and a verdict (results.json `claims`, first in the report)"""
    baseline: str | None = None
    """vanilla method every other method is compared with (null = the first method)"""
    confidence: float = 0.95
    """level of the t-intervals over seeds"""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto"""
    num_threads: int | str | None = None
    """torch CPU threads: N, or auto / null = the cores free right now (sampled from /proc/stat, within the
    affinity set and cgroup quota; the user's OMP_NUM_THREADS wins), re-checked before every unit
    (robust_rlhf.threads; threads spinning against another busy process made a PPO unit 5x slower)"""

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads != "auto" and (
                isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ValueError(f"num_threads must be a positive integer, auto or null, got {self.num_threads!r}")
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
        all_methods = method_names + [f"{self.perturbation.base}@{m}" for m in ("over", "under")
                                      if self.perturbation.base] + [
            f"{self.lambda_sweep.base}@lam={lam:g}" for lam in self.lambda_sweep.lambdas if self.lambda_sweep.base]
        bon_rms = self.bon_study.reward_models if self.bon_study.reward_models is not None else names
        for r in bon_rms:
            if r not in names:
                raise ValueError(f"bon_study.reward_models: {r!r} is not one of {names}")
        for c in self.claims:
            if c.statistic == "bon_gold_difference":
                if not self.bon_study.enabled:
                    raise ValueError("claims: bon_gold_difference needs the best-of-n study (bon_study.enabled: true)")
                for n in (c.treatment, c.control):
                    rm, _, agg = n.partition(":")
                    if rm not in bon_rms or agg not in BON_AGGREGATORS:
                        raise ValueError(f"claims: bon_gold_difference compares <reward model>:<aggregator> with a "
                                         f"reward model of {bon_rms} and an aggregator of {list(BON_AGGREGATORS)}; "
                                         f"got {n!r}")
                continue
            pool = all_methods if c.statistic in ("variance_ratio", "gold_difference") else names
            what = "methods" if pool is all_methods else "reward_models"
            for n in (c.treatment, c.control):
                if n not in pool:
                    raise ValueError(f"claims: {c.statistic} compares {what}; {n!r} is not one of {pool}")
            if pool is names and not self.shift.enabled:
                raise ValueError(f"claims: {c.statistic} needs the shifted sets (shift.enabled: true)")


def _no_duplicates(names: list[str], where: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: duplicate name {dup[0]!r}")


def load_experiment_config(source: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A YAML file or built-in preset (experiment_demo, experiment_tiny, experiment_paper) + key=value overrides."""
    return load_config(ExperimentConfig, source, overrides)



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
            ov = _merge(nest_dotted(base.overrides), {"reward": {"perturb": mode, "perturb_size": pt.size,
                                                           "perturb_fraction": pt.fraction}})
            m = dataclasses.replace(base, name=f"{base.name}@{mode}", overrides=ov, train_on="aggregate")
            out.append((m, list(pt.seeds or cfg.seeds), "perturbation"))
    return out


def heads_of(method: MethodSpec, num_heads: int) -> list[int | None]:
    if method.train_on == "aggregate":
        return [None]
    heads = method.heads if method.heads is not None else list(range(num_heads))
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad:
        raise UserError(f"method {method.name!r}: head {bad[0]} does not exist (the reward model has {num_heads})")
    return heads


def replicate_of(name: str) -> str:
    """The recipe a reward-model unit name belongs to (`bt@s3` -> `bt`)."""
    return name.split("@", 1)[0]
