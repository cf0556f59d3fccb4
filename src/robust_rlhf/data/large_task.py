"""The large built-in task: 1,003 review openings x 8 completions of the embedded policy.

The setup of Gao et al. 2022 and Coste et al. 2023: many completions per prompt, scored by a gold
(VADER, and a learned gold -- `robust_rlhf.gold.learned` -- trained once on the whole labelled
set), from which proxy training sets of a chosen size and label noise are drawn. The 670-pair
`builtin_task` stays for the fast demo and the tests.

Prompts (`prompts.large_prompts`): 17 templates x 59 subjects in 8 domains (movies, restaurants,
hotels, books, gadgets, music, games, travel), split by prompt into train / validation / test.
The shipped fixture (`data/fixtures/large_task.jsonl` + `large_task.json`, one row per prompt:
its completions and every gold's score of each) was made by (docs/reward_models.md, "The large task")

    robust-rlhf data build-task --task large --output-dir runs/large_task \
        --features-dir runs/large_features [--shard I/N]      # then once without --shard
    robust-rlhf data train-gold --task-dir runs/large_task --features-dir runs/large_features \
        --output-dir src/robust_rlhf/gold/learned_gold
    cp runs/large_task/large_task.json* src/robust_rlhf/data/fixtures/

The first samples in chunks of ``chunk_prompts`` prompts (each chunk seeded by its index, so a
killed run resumes where it stopped and gives the same completions) and records VADER's scores;
the second trains the learned gold and adds its scores (``gold.learned``) to the rows.

`draw_pairs` turns the rows of one split into preference pairs: every pair of distinct,
non-empty completions of a prompt whose gold scores differ, the higher one `chosen`; a draw of
``size`` pairs (uniform without replacement, seeded), then exactly round(label_noise x size)
of them flipped (Coste et al.'s 25 % label noise).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from robust_rlhf.data.preferences import FIXTURE_DIR, SPLITS, PreferencePair, save_preferences_jsonl
from robust_rlhf.data.prompts import large_prompt_domain, large_prompts, split_prompts
from robust_rlhf.errors import UserError

log = logging.getLogger(__name__)

TASK_FILE = "large_task.jsonl"
META_FILE = "large_task.json"
CHUNK_DIR = "large_chunks"


@dataclass
class LargeTaskConfig:
    """``robust-rlhf data build-task --task large``: how the large task's completions are sampled."""

    policy: str = "smollm2-135m"
    """base policy that completes the openings"""
    completions_per_prompt: int = 8
    """completions per prompt (C(8, 2) = 28 candidate pairs per prompt)"""
    max_new_tokens: int = 12
    """completion length in tokens"""
    temperature: float = 1.0
    """sampling temperature of the base policy (pure ancestral sampling: top_k = 0, top_p = 1)"""
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """fractions of prompts for train / validation / test"""
    batch_size: int = 64
    """generation batch size (sequences); part of the seeding, so keep it to reproduce the fixture"""
    chunk_prompts: int = 32
    """prompts per resumable chunk (each chunk's sampling is seeded by seed and its index)"""
    seed: int = 0
    """seed of the split and the sampling"""

    def __post_init__(self) -> None:
        if not 2 <= self.completions_per_prompt <= 64:
            raise ValueError(f"completions_per_prompt must be in [2, 64], got {self.completions_per_prompt}")
        if not 1 <= self.max_new_tokens <= 256:
            raise ValueError(f"max_new_tokens must be in [1, 256], got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        fr = tuple(self.split_fractions)
        if len(fr) != 3 or any(not (math.isfinite(f) and 0 < f < 1) for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be three numbers in (0, 1) summing to 1, got {list(fr)}")
        self.split_fractions = fr
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size must be in [1, 4096], got {self.batch_size}")
        if not 1 <= self.chunk_prompts <= 100_000:
            raise ValueError(f"chunk_prompts must be in [1, 100000], got {self.chunk_prompts}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split_fractions"] = list(d["split_fractions"])
        return d


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def build_large_task(cfg: LargeTaskConfig, output_dir: str | Path, prompts: Sequence[str] | None = None,
                     features_dir: str | Path | None = None, shard: tuple[int, int] = (0, 1)) -> dict | None:
    """Sample the completions chunk by chunk (resumable), score them with VADER and write
    ``large_task.jsonl`` + ``large_task.json`` in `output_dir`. Returns the summary.

    With `features_dir`, the policy's own mean-pooled final hidden state of every prompt +
    completion -- what the learned gold (`robust_rlhf.gold.learned`) reads -- is kept there per
    chunk (``chunk_*.pt``), taken from the sampling's forward passes at no extra cost.

    With ``shard=(i, n)`` only the chunks with index % n == i are sampled, so n processes share
    the work; the task is assembled (and its summary returned) only once every chunk exists, else
    None -- run once more without a shard to assemble."""
    from robust_rlhf.gold import load_gold
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer
    from robust_rlhf.utils import atomic_write_json, atomic_write_jsonl, check_output_dir

    output_dir = check_output_dir(output_dir)
    if features_dir is not None:
        features_dir = check_output_dir(features_dir, "--features-dir")
    prompts = list(prompts) if prompts is not None else large_prompts()
    if len(set(prompts)) != len(prompts):
        raise UserError("the large task's prompts must be distinct")
    parts = split_prompts(prompts, cfg.split_fractions, cfg.seed)
    for split, part in zip(SPLITS, parts):
        if not part:
            raise UserError(f"split_fractions={list(cfg.split_fractions)} leave the {split} split without prompts")
    meta_path, chunk_dir = output_dir / META_FILE, output_dir / CHUNK_DIR
    recorded = {"config": cfg.to_dict(), "prompts": prompts}
    if meta_path.exists():
        old = _read_json(meta_path)
        what = "with other settings" if old is None or old.get("config") != cfg.to_dict() else "already"
        raise UserError(f"--output-dir {str(output_dir)!r} holds a large task built {what} ({META_FILE}); "
                        "choose another --output-dir, or delete it first")
    if (chunk_dir / "config.json").exists() and _read_json(chunk_dir / "config.json") != recorded:
        raise UserError(f"--output-dir {str(output_dir)!r} holds chunks of a large task built with other settings "
                        f"({CHUNK_DIR}/config.json); choose another --output-dir, or delete it first")
    chunk_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(chunk_dir / "config.json", recorded)
    if features_dir is not None:
        Path(features_dir).mkdir(parents=True, exist_ok=True)

    n_chunks = -(-len(prompts) // cfg.chunk_prompts)
    model = tok = None
    completions: list[list[str]] = []
    missing = 0
    for ci in range(n_chunks):
        chunk = prompts[ci * cfg.chunk_prompts : (ci + 1) * cfg.chunk_prompts]
        path = chunk_dir / f"chunk_{ci:05d}.jsonl"
        rows = _read_chunk(path, chunk, cfg.completions_per_prompt)
        if rows is not None and features_dir is not None and not has_features(features_dir, ci, rows):
            rows = None  # resample (same seed, same completions) to get its features
        if rows is None and ci % shard[1] != shard[0]:
            missing += 1
            continue
        if rows is None:
            if model is None:
                model, tok = load_causal_lm(cfg.policy).eval(), load_tokenizer(cfg.policy)
            comps, feats = sample_chunk(model, tok, chunk, cfg, seed=cfg.seed * 1_000_003 + ci)
            rows = [{"prompt": p, "completions": c} for p, c in zip(chunk, comps)]
            if features_dir is not None:
                save_features(features_dir, ci, rows, feats)
            atomic_write_jsonl(path, rows)
            log.info("chunk %d/%d sampled (%d prompts)", ci + 1, n_chunks, len(chunk))
        completions += [r["completions"] for r in rows]
    if missing:
        log.info("shard %d/%d done; %d chunks of other shards are missing", shard[0], shard[1], missing)
        return None

    vader = load_gold("vader")
    split_of = {p: s for s, part in zip(SPLITS, parts) for p in part}
    out_rows = []
    for p, comps in zip(prompts, completions):
        out_rows.append({"prompt": p, "domain": _domain(p), "split": split_of[p], "completions": comps,
                         "gold": {"vader": [round(x, 4) for x in vader([p] * len(comps), comps)]}})
    summary = summarize(out_rows)
    atomic_write_jsonl(output_dir / TASK_FILE, out_rows)
    atomic_write_json(meta_path, {"config": cfg.to_dict(), "generator": "robust-rlhf data build-task --task large",
                                  "prompts": "robust_rlhf.data.prompts.large_prompts()" if prompts == large_prompts()
                                  else "custom", "summary": summary})
    shutil.rmtree(chunk_dir, ignore_errors=True)
    return summary


def sample_chunk(model, tok, prompts: Sequence[str], cfg: LargeTaskConfig, seed: int):
    """`cfg.completions_per_prompt` completions of each prompt and, for each prompt + completion,
    the mean over its tokens of the policy's final (normed) hidden state, drawn by the package's
    one LM sampler (`robust_rlhf.models.generation.generate` with ``return_pooled_hidden``: one
    more token than ``max_new_tokens`` is sampled and dropped, so every kept token went through the
    model; tokens from an end-of-text on are not part of the completion) from the model itself in fp32;
    pure ancestral sampling, empty completions allowed, prompts never truncated; each batch of
    ``batch_size`` sequences reseeds from `seed`. Returns (completions, (N, H) features)."""
    import torch

    from robust_rlhf.models.generation import SamplingConfig, generate

    n = cfg.completions_per_prompt
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=0, top_p=1.0,
                              max_prompt_tokens=1 << 20, generation_batch_size=cfg.batch_size, precision="fp32")
    flat = [p for p in prompts for _ in range(n)]
    texts: list[str] = []
    feats = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(flat), cfg.batch_size):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        rollout = generate(model, tok, flat[i : i + cfg.batch_size], sampling, min_new_tokens=0,
                           return_pooled_hidden=True)
        texts.extend(rollout.responses)
        feats.append(rollout.pooled_hidden)
    return [texts[j * n : (j + 1) * n] for j in range(len(prompts))], torch.cat(feats)


def _features_key(rows: Sequence[dict]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([[r["prompt"], r["completions"]] for r in rows]).encode()).hexdigest()[:16]


def save_features(features_dir: str | Path, ci: int, rows: Sequence[dict], feats) -> None:
    import io

    import torch

    from robust_rlhf.utils import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"key": _features_key(rows), "features": feats}, buf)
    atomic_write_bytes(Path(features_dir) / f"chunk_{ci:05d}.pt", buf.getvalue())


def load_features(features_dir: str | Path, ci: int, rows: Sequence[dict]):
    """Chunk `ci`'s (N, H) features, or None when missing or not of these rows."""
    import torch

    path = Path(features_dir) / f"chunk_{ci:05d}.pt"
    if not path.exists():
        return None
    try:
        d = torch.load(path, weights_only=True)
    except Exception:  # a torn or foreign file: resample
        return None
    return d["features"] if d.get("key") == _features_key(rows) else None


def has_features(features_dir: str | Path, ci: int, rows: Sequence[dict]) -> bool:
    return load_features(features_dir, ci, rows) is not None


def _domain(prompt: str) -> str:
    try:
        return large_prompt_domain(prompt)
    except KeyError:
        return "other"


def _read_chunk(path: Path, chunk: Sequence[str], n: int) -> list[dict] | None:
    """A finished chunk's rows, or None when it is missing or does not hold these prompts."""
    if not path.exists():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    if [r.get("prompt") for r in rows] != list(chunk) or any(len(r.get("completions", ())) != n for r in rows):
        return None
    return rows


def summarize(rows: Sequence[dict]) -> dict:
    """Counts per split (prompts, completions, and the pairs each gold's scores give) and per domain."""
    golds = sorted({g for r in rows for g in r["gold"]})
    summary: dict = {"num_prompts": len(rows), "completions_per_prompt": len(rows[0]["completions"]) if rows else 0,
                     "golds": golds, "domains": {}}
    for r in rows:
        summary["domains"][r["domain"]] = summary["domains"].get(r["domain"], 0) + 1
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        summary[split] = {"prompts": len(part), "pairs": {g: len(task_pairs(part, g)) for g in golds}}
    return summary


# ---------------------------------------------------------------------------- loading and drawing
def large_task_paths(task_dir: str | Path | None = None) -> tuple[Path, Path]:
    d = Path(task_dir) if task_dir is not None else FIXTURE_DIR
    return d / TASK_FILE, d / META_FILE


def load_large_task(task_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """(rows, metadata) of the large task (the shipped fixture by default), checked against the
    generator's recorded settings: one row per prompt with ``completions_per_prompt`` completions
    and, for every gold, one score per completion."""
    rows_path, meta_path = large_task_paths(task_dir)
    for p in (rows_path, meta_path):
        if not p.exists():
            raise UserError(f"{p}: no such file (build it with robust-rlhf data build-task --task large)")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or "config" not in meta or "summary" not in meta:
        raise UserError(f"{meta_path}: not a large-task metadata file (needs 'config' and 'summary')")
    n = meta["config"]["completions_per_prompt"]
    rows = []
    for i, line in enumerate(rows_path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            raise UserError(f"{rows_path}: line {i}: invalid JSON ({e})") from None
        if not isinstance(r, dict) or not all(k in r for k in ("prompt", "split", "completions", "gold")):
            raise UserError(f"{rows_path}: line {i}: needs prompt, split, completions and gold")
        if r["split"] not in SPLITS or len(r["completions"]) != n:
            raise UserError(f"{rows_path}: line {i}: split must be one of {SPLITS} and {n} completions are recorded")
        for g, scores in r["gold"].items():
            if len(scores) != n or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in scores):
                raise UserError(f"{rows_path}: line {i}: gold {g!r} needs {n} finite scores")
        rows.append(r)
    if len(rows) != meta["summary"]["num_prompts"]:
        raise UserError(f"{rows_path}: {len(rows)} rows but {meta_path.name} records {meta['summary']['num_prompts']}")
    return rows, meta


def task_pairs(rows: Sequence[dict], gold: str) -> list[PreferencePair]:
    """Every preference pair of the rows: each pair of distinct, non-empty completions of a prompt
    whose `gold` scores differ, the higher-scored one chosen (in a fixed order)."""
    pairs = []
    for r in rows:
        comps, scores = r["completions"], r["gold"].get(gold)
        if scores is None:
            raise UserError(f"the large task holds no {gold!r} gold scores (it has: {', '.join(sorted(r['gold']))})")
        for a in range(len(comps)):
            for b in range(a + 1, len(comps)):
                ga, gb = scores[a], scores[b]
                if ga == gb or not comps[a].strip() or not comps[b].strip() or comps[a] == comps[b]:
                    continue
                c, j = (a, b) if ga > gb else (b, a)
                pairs.append(PreferencePair(r["prompt"], comps[c], comps[j],
                                            extra={"gold_chosen": scores[c], "gold_rejected": scores[j]}))
    return pairs


def draw_pairs(rows: Sequence[dict], split: str, gold: str, size: int | None, label_noise: float,
               seed: int) -> list[PreferencePair]:
    """`size` pairs (None = all) of `split`'s prompts drawn uniformly without replacement, then
    exactly round(label_noise x size) of them flipped (chosen <-> rejected, their gold scores with
    them). Deterministic per seed. Raises UserError when the split holds fewer pairs than `size`."""
    if not 0 <= label_noise <= 1:
        raise UserError(f"label_noise must be in [0, 1], got {label_noise}")
    pool = task_pairs([r for r in rows if r["split"] == split], gold)
    if size is not None and not 1 <= size <= len(pool):
        raise UserError(f"the large task's {split} split holds {len(pool)} pairs under the {gold} gold; "
                        f"cannot draw {size}")
    rng = random.Random(f"{seed}:{split}:{gold}")
    drawn = rng.sample(pool, len(pool) if size is None else size)
    flip = set(rng.sample(range(len(drawn)), int(round(label_noise * len(drawn)))))
    out = []
    for i, p in enumerate(drawn):
        if i in flip:
            p = PreferencePair(p.prompt, p.rejected, p.chosen, extra={
                "gold_chosen": p.extra["gold_rejected"], "gold_rejected": p.extra["gold_chosen"], "flipped": True})
        out.append(p)
    return out


def write_large_task_splits(folder: str | Path, gold: str, train_pairs: int | None, label_noise: float,
                            eval_pairs: int | None, seed: int, task_dir: str | Path | None = None) -> dict:
    """The lab's data from the large task: ``builtin_{train,validation,test}.jsonl`` in `folder`
    -- `train_pairs` training pairs with `label_noise`, and up to `eval_pairs` noiseless
    validation and test pairs each -- all labelled by `gold`'s recorded scores. Returns a summary."""
    rows, meta = load_large_task(task_dir)
    if gold not in meta["summary"].get("golds", []):
        raise UserError(f"gold {gold!r}: the large task records the scores of {', '.join(meta['summary']['golds'])} "
                        "only (use gold: vader or gold: learned with data.task: large)")
    draws = {}
    for split in SPLITS:
        available = len(task_pairs([r for r in rows if r["split"] == split], gold))
        size = train_pairs if split == "train" else (None if eval_pairs is None else min(eval_pairs, available))
        if split == "train" and size is not None and size > available:
            raise UserError(f"data.train_pairs={size}: the large task's train split holds {available} pairs "
                            f"under the {gold} gold (its {meta['summary']['train']['prompts']} prompts x C(8, 2) "
                            "less ties); choose at most that")
        draws[split] = draw_pairs(rows, split, gold, size, label_noise if split == "train" else 0.0, seed)
    summary: dict = {"task": "large", "gold": gold, "label_noise": label_noise, "num_prompts": len(rows)}
    for split, pairs in draws.items():
        save_preferences_jsonl(Path(folder) / f"builtin_{split}.jsonl", pairs)
        summary[split] = {"prompts": len({p.prompt for p in pairs}), "pairs": len(pairs),
                          "flipped": sum(1 for p in pairs if p.extra.get("flipped"))}
    return summary
