"""The built-in gold-labelled task: positive-sentiment review continuation.

Short review openings (`prompts.builtin_prompts`) are completed by the base policy
(`smollm2-135m` by default, sampled with `robust_rlhf.models.generation`); completions of the same prompt are paired and labelled by a gold
reward (VADER compound by default): the completion with the higher gold score is `chosen`,
optionally with Bradley-Terry sampling of the label and a label-noise rate (Gao et al. 2022;
Coste et al. 2023). Pairs whose gold scores tie are skipped, because they carry no preference
(their count is reported).

The repository ships a small generated fixture (`data/fixtures/builtin_{train,validation,test}.jsonl`)
so that tests and the default reward-model run need no generation. Regenerate it with

    robust-rlhf data build-task --output-dir src/robust_rlhf/data/fixtures

Prompts are split by prompt (not by pair) so validation/test prompts are unseen in training.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from robust_rlhf.data.preferences import SPLITS, PreferencePair, save_preferences_jsonl
from robust_rlhf.data.prompts import builtin_prompts, split_prompts

log = logging.getLogger(__name__)


@dataclass
class PairSamplingConfig:
    """How preference pairs are sampled from a base policy and labelled by a gold reward: the
    settings `TaskConfig` (``data build-task``) and the lab's
    `robust_rlhf.experiments.config.PreferenceDataConfig` share (each sets its own defaults)."""

    completions_per_prompt: int = 6
    """Completions sampled per prompt; pairs are drawn among them."""
    pairs_per_prompt: int = 6
    """Preference pairs kept per prompt (at most C(n, 2))."""
    max_new_tokens: int = 20
    """Completion length in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the base policy."""
    label_noise: float = 0.0
    """Probability of flipping a label (Coste et al. use 0.25 in their hard setting)."""
    bt_sampling: bool = False
    """Sample labels from the Bradley-Terry model P(a > b) = sigmoid((g_a - g_b) / bt_temperature)."""
    bt_temperature: float = 0.1
    """Temperature of BT label sampling (gold scores are in [-1, 1])."""
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """Fractions of prompts for train / validation / test."""
    batch_size: int = 36
    """Generation batch size."""
    seed: int = 0
    """Seed for sampling, pairing, noise and the split."""


@dataclass
class TaskConfig(PairSamplingConfig):
    """The built-in task (``robust-rlhf data build-task``): pair sampling plus the policy and gold."""

    policy: str = "smollm2-135m"
    """Base policy that completes the review openings."""
    gold: str = "vader"
    """Gold reward spec (see robust_rlhf.gold.load_gold)."""

    def __post_init__(self) -> None:
        """Refuse settings that cannot produce a task before any model is loaded."""
        if not self.completions_per_prompt >= 2:
            raise ValueError(f"completions_per_prompt must be >= 2 (a pair needs two completions), got {self.completions_per_prompt}")
        max_pairs = self.completions_per_prompt * (self.completions_per_prompt - 1) // 2
        if not 1 <= self.pairs_per_prompt <= max_pairs:
            raise ValueError(f"pairs_per_prompt must be in [1, {max_pairs}] (C(completions_per_prompt, 2)), "
                      f"got {self.pairs_per_prompt}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in [1, 4096], got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"label_noise must be a probability in [0, 1], got {self.label_noise}")
        if not (math.isfinite(self.bt_temperature) and self.bt_temperature > 0):
            raise ValueError(f"bt_temperature must be a finite number > 0, got {self.bt_temperature}")
        fr = tuple(self.split_fractions)
        if len(fr) != 3 or any(not (math.isfinite(f) and 0 < f < 1) for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be three numbers in (0, 1) summing to 1 (train, validation, test), got {list(fr)}")
        self.split_fractions = fr
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError(f"batch_size must be in [1, 100000], got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def sample_completions(policy_name: str, prompts: Sequence[str], n: int, max_new_tokens: int,
                       temperature: float, batch_size: int, seed: int) -> list[list[str]]:
    """n sampled completions per prompt from a causal LM (`generate_completions`)."""
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer

    model = load_causal_lm(policy_name).eval()
    tok = load_tokenizer(policy_name)
    return generate_completions(model, tok, prompts, n, max_new_tokens, temperature, batch_size, seed)


def generate_completions(model, tok, prompts: Sequence[str], n: int, max_new_tokens: int, temperature: float,
                         batch_size: int, seed: int, progress: bool = True) -> list[list[str]]:
    """n sampled completions per prompt from a loaded causal LM and its tokenizer, drawn by the
    package's one LM sampler (`robust_rlhf.models.generation.generate`, the policies' too) from the
    model itself in fp32; pure ancestral sampling; each batch reseeds from ``seed``."""
    import torch
    from tqdm.auto import tqdm

    from robust_rlhf.models.generation import SamplingConfig, generate

    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=0, top_p=1.0,
                         max_prompt_tokens=512, generation_batch_size=batch_size, precision="fp32")
    flat = [p for p in prompts for _ in range(n)]
    out: list[str] = []
    gen = torch.Generator().manual_seed(seed)
    for i in tqdm(range(0, len(flat), batch_size), desc="sampling completions", unit="batch", disable=not progress):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        out.extend(generate(model, tok, flat[i : i + batch_size], cfg, device=torch.device("cpu")).responses)
    return [out[j * n : (j + 1) * n] for j in range(len(prompts))]


def label_pairs(prompts: Sequence[str], completions: Sequence[Sequence[str]], gold_scores: Sequence[Sequence[float]],
                cfg: TaskConfig, rng: random.Random) -> tuple[list[PreferencePair], int]:
    """Pair completions of each prompt and label them by gold reward. Returns (pairs, n_ties)."""
    pairs, ties = [], 0
    for prompt, comps, scores in zip(prompts, completions, gold_scores):
        candidates = list(itertools.combinations(range(len(comps)), 2))
        rng.shuffle(candidates)
        kept = 0
        for a, b in candidates:
            if kept >= cfg.pairs_per_prompt:
                break
            ga, gb = scores[a], scores[b]
            if ga == gb or not comps[a].strip() or not comps[b].strip() or comps[a] == comps[b]:
                ties += 1
                continue
            if cfg.bt_sampling:
                p_a = 1.0 / (1.0 + math.exp(-(ga - gb) / cfg.bt_temperature))
                a_wins = rng.random() < p_a
            else:
                a_wins = ga > gb
            if cfg.label_noise > 0 and rng.random() < cfg.label_noise:
                a_wins = not a_wins
            c, r = (a, b) if a_wins else (b, a)
            pairs.append(PreferencePair(prompt, comps[c], comps[r], extra={
                "gold_chosen": scores[c], "gold_rejected": scores[r]}))
            kept += 1
    return pairs, ties


def build_task(cfg: TaskConfig, output_dir: str | Path, prompts: Sequence[str] | None = None) -> dict:
    """Generate, label and split the task; write builtin_{split}.jsonl files. Returns a summary."""
    from robust_rlhf.gold import load_gold
    from robust_rlhf.utils import atomic_write_json

    from robust_rlhf.errors import UserError
    from robust_rlhf.utils import check_output_dir

    output_dir = check_output_dir(output_dir)
    prompts = list(prompts) if prompts is not None else builtin_prompts()
    parts = split_prompts(prompts, cfg.split_fractions, cfg.seed)
    for split, part in zip(SPLITS, parts):
        if not part:
            raise UserError(f"split_fractions={list(cfg.split_fractions)} leave the {split} split without prompts "
                            f"({len(prompts)} prompts in all)")
    _check_task_folder(cfg, output_dir)
    gold = load_gold(cfg.gold)
    completions = sample_completions(cfg.policy, prompts, cfg.completions_per_prompt, cfg.max_new_tokens,
                                     cfg.temperature, cfg.batch_size, cfg.seed)
    scores = [gold([p] * len(c), list(c)) for p, c in zip(prompts, completions)]
    rng = random.Random(cfg.seed)
    index = {p: i for i, p in enumerate(prompts)}
    summary: dict = {"policy": cfg.policy, "gold": cfg.gold, "num_prompts": len(prompts)}
    output_dir = Path(output_dir)
    for split, split_prompts_ in zip(SPLITS, parts):
        idx = [index[p] for p in split_prompts_]
        pairs, ties = label_pairs([prompts[i] for i in idx], [completions[i] for i in idx],
                                  [scores[i] for i in idx], cfg, rng)
        save_preferences_jsonl(output_dir / f"builtin_{split}.jsonl", pairs)
        summary[split] = {"prompts": len(idx), "pairs": len(pairs), "skipped_ties": ties}
        log.info("%s: %d prompts, %d pairs (%d tied candidates skipped)", split, len(idx), len(pairs), ties)
    atomic_write_json(output_dir / "builtin_task.json", {"config": _task_config_dict(cfg), "summary": summary})
    return summary


def _task_config_dict(cfg: TaskConfig) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    d["split_fractions"] = list(d["split_fractions"])
    return d


def _check_task_folder(cfg: TaskConfig, output_dir: Path) -> None:
    """A folder that already holds a task built with other settings is refused, not overwritten."""
    import json

    from robust_rlhf.errors import UserError

    meta = output_dir / "builtin_task.json"
    if not meta.exists():
        return
    try:
        old = json.loads(meta.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError, RecursionError):
        old = None
    if old != json.loads(json.dumps(_task_config_dict(cfg))):
        raise UserError(f"--output-dir {str(output_dir)!r} holds a task built with other settings "
                        f"({meta.name}); choose another --output-dir, or delete it first")
