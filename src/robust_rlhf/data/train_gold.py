"""Training the learned gold (`robust-rlhf data train-gold`): an MLP head on the frozen policy's
pooled hidden states of the large task's completions (`robust_rlhf.data.large_task`), fitted to
Bradley-Terry labels sampled from VADER, saved where `robust_rlhf.gold.learned.LearnedGold` loads it.
Lives beside the task it trains on: the gold itself (`gold/`) knows nothing of the task's files."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from robust_rlhf.data.large_task import META_FILE, TASK_FILE, load_features, load_large_task, summarize
from robust_rlhf.errors import UserError
from robust_rlhf.gold.learned import CONFIG, HEAD, LearnedGoldConfig, bt_labels, make_head


def task_features(task_dir: Path, features_dir: Path, rows: Sequence[dict], meta: dict):
    """(prompts, n, H) pooled features of the task's completions, checked against the rows."""
    import torch

    cp, n = meta["config"]["chunk_prompts"], meta["config"]["completions_per_prompt"]
    out = []
    for ci in range(-(-len(rows) // cp)):
        part = rows[ci * cp : (ci + 1) * cp]
        f = load_features(features_dir, ci, part)
        if f is None:
            raise UserError(f"--features-dir {str(features_dir)!r}: no features of chunk {ci} for these completions "
                            "(build the task with --features-dir; a resumed build fills in missing ones)")
        out.append(f.view(len(part), n, -1))
    return torch.cat(out)


def train_learned_gold(cfg: LearnedGoldConfig, task_dir: str | Path, features_dir: str | Path,
                       output_dir: str | Path) -> dict:
    """Train the learned gold on the large task in `task_dir`, save it to `output_dir` and (unless
    it holds a split out) write its scores of every completion into the task's rows. Returns its report."""
    from robust_rlhf.utils import FolderLock, check_output_dir

    task_dir, features_dir = Path(task_dir), Path(features_dir)
    output_dir = check_output_dir(output_dir)
    rows, meta = load_large_task(task_dir)
    if meta["config"]["policy"] != cfg.base:
        raise UserError(f"base={cfg.base!r}: the task was sampled (and its features taken) with {meta['config']['policy']!r}")
    # the task's rows are rewritten with this gold's scores: one train-gold per task at a time
    with FolderLock(task_dir, "`data train-gold`"):
        return _fit_and_save(cfg, task_dir, features_dir, output_dir, rows, meta)


def _fit_and_save(cfg: LearnedGoldConfig, task_dir: Path, features_dir: Path, output_dir: Path,
                  rows: list[dict], meta: dict) -> dict:
    """`train_learned_gold` once the task is read, checked and locked."""
    import torch
    from safetensors.torch import save

    from robust_rlhf.utils import atomic_write_bytes, atomic_write_json, atomic_write_jsonl

    feats = task_features(task_dir, features_dir, rows, meta)  # (P, n, H)
    P, n, H = feats.shape
    rng = random.Random(cfg.seed)
    labels = [bt_labels(r["gold"]["vader"], rng, cfg.bt_temperature) for r in rows]
    train_idx = [i for i, r in enumerate(rows) if r["split"] != cfg.holdout_split]
    flat_train = feats[train_idx].reshape(-1, H)
    mean, std = flat_train.mean(0), flat_train.std(0).clamp_min(1e-6)
    x = (feats - mean) / std  # (P, n, H)

    def pair_index(idx):
        row = torch.tensor([i for i in idx for _ in labels[i]], dtype=torch.long)
        win = torch.tensor([w for i in idx for w, _ in labels[i]], dtype=torch.long)
        lose = torch.tensor([l for i in idx for _, l in labels[i]], dtype=torch.long)
        return row, win, lose

    torch.manual_seed(cfg.seed)
    head = make_head(H, cfg.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    row, win, lose = pair_index(train_idx)
    xt = x[train_idx]  # (Pt, n, H)
    pos = {i: k for k, i in enumerate(train_idx)}
    row_t = torch.tensor([pos[int(i)] for i in row], dtype=torch.long)
    history = []
    for step in range(cfg.steps):
        s = head(xt).squeeze(-1)  # (Pt, n)
        loss = -torch.nn.functional.logsigmoid(s[row_t, win] - s[row_t, lose]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step + 1, "bt_loss": round(float(loss.detach()), 5)})
    head.eval()
    with torch.no_grad():
        scores = head(x).squeeze(-1)  # (P, n)

    def accuracy(idx: list[int]) -> dict:
        r, w, l = pair_index(idx)
        bt = (scores[r, w] > scores[r, l]).float()
        vd = []
        for i in idx:
            v = rows[i]["gold"]["vader"]
            vd += [bool(scores[i, a] > scores[i, b]) == (v[a] > v[b])
                   for a in range(n) for b in range(a + 1, n) if v[a] != v[b]]
        return {"prompts": len(idx), "pairs": int(bt.numel()), "accuracy_bt_labels": round(float(bt.mean()), 4),
                "accuracy_vader_order": round(sum(vd) / max(len(vd), 1), 4)}

    report = {"model": asdict(cfg), "training": history, "num_prompts": P,
              "accuracy_training_labels": accuracy(train_idx),
              "labels": "every pair of a prompt's completions with distinct VADER scores, the winner sampled "
                        f"once by Bradley-Terry from VADER (temperature {cfg.bt_temperature}, seed {cfg.seed})"}
    if cfg.holdout_split:
        report["accuracy_held_out"] = {"split": cfg.holdout_split, **accuracy(
            [i for i, r in enumerate(rows) if r["split"] == cfg.holdout_split])}
    output_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    sd.update(feature_mean=mean.contiguous(), feature_std=std.contiguous())
    atomic_write_bytes(output_dir / HEAD, save(sd))  # whole or absent: never a torn head on a full disk
    atomic_write_json(output_dir / CONFIG, report)
    if not cfg.holdout_split:
        for r, sc in zip(rows, scores.tolist()):
            r["gold"]["learned"] = [round(v, 4) for v in sc]
        meta["summary"] = summarize(rows)
        meta["learned_gold"] = {"trainer": "robust-rlhf data train-gold", "model": asdict(cfg),
                                "accuracy_training_labels": report["accuracy_training_labels"]}
        atomic_write_jsonl(task_dir / TASK_FILE, rows)
        atomic_write_json(task_dir / META_FILE, meta)
    return report
