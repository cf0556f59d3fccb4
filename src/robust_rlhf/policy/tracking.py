"""Run bookkeeping shared by the policy recipes: output folder, resolved config, metrics
(JSONL + CSV + optional TensorBoard / W&B + a tqdm bar), atomic checkpoints, and resume.

Output folder layout::

    config.yaml            the resolved config
    metrics.jsonl          one row per step: step, kl, proxy_reward, [gold_reward], losses/..., reward/..., policy/..., gold/...
                           (each metric under one name)
    metrics.csv            the same rows as CSV (columns = union of keys)
    checkpoints/step_NNNNNN/   trainable.pt, optimizer.pt, rng.pt, state.json (+ policy/ for LoRA)
    policy/                the final policy (adapter or full model + tokenizer + value head)

A checkpoint is written with `atomic_save_dir`, so it is never half-written. ``resume=true``
restores the latest one (weights, optimizer, RNG, KL controller, metrics so far) and the run
then produces exactly the metrics an uninterrupted run would. A folder that holds another run
(its config.yaml differs; `check_run_folder`) is refused before anything is written, as in
``rm train``. Every JSON file is strict JSON (a non-finite metric is written as null).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robust_rlhf.checkpoint import (
    CHECKPOINT_DIR,
    StepCheckpoints,
    TornCheckpoint,
    capture_rng,
    read_state,
    read_torch,
    restore_rng,
)
from robust_rlhf.config import config_to_dict, first_difference, saved_run_config
from robust_rlhf.errors import UserError
from robust_rlhf.utils import FolderLock, atomic_write_jsonl, atomic_write_text, dumps_json, write_errors

__all__ = ["LogConfig", "Run", "check_run_folder",
           "write_metrics", "write_metrics_csv"]

log = logging.getLogger(__name__)

# Keys that may differ between the interrupted run and its resumption.
_RESUME_FREE_KEYS = {"resume", "log.progress", "log.report_to", "log.keep_checkpoints"}
# Names logged before 0.2 for metrics that have one name now: old name -> the name kept.


@dataclass
class LogConfig:
    """Evaluation, logging and checkpointing."""

    eval_every: int = 5
    """every N steps, sample on held-out prompts and log the gold reward (never used for training); 0 = off"""
    eval_prompts: int = 32
    """how many held-out prompts to evaluate on"""
    eval_samples_per_prompt: int = 1
    """responses sampled per held-out prompt at each evaluation (gold evaluations = prompts x this)"""
    checkpoint_every: int = 10
    """save an atomic checkpoint every N steps (0 = only at the end)"""
    keep_checkpoints: int = 2
    """how many most recent checkpoints to keep"""
    report_to: list[str] = field(default_factory=list)
    """extra metric sinks: tensorboard, wandb (only if installed)"""
    wandb_project: str = "robust-rlhf"
    """W&B project name when report_to contains wandb"""
    progress: bool = True
    """show a tqdm progress bar"""

    def __post_init__(self) -> None:
        if self.eval_samples_per_prompt < 1:
            raise ValueError(f"log.eval_samples_per_prompt must be >= 1, got {self.eval_samples_per_prompt}")
        for name in ("eval_every", "checkpoint_every", "eval_prompts"):
            if getattr(self, name) < 0:
                raise ValueError(f"log.{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"log.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        bad = [r for r in self.report_to if r not in ("tensorboard", "wandb")]
        if bad:
            raise ValueError(f"log.report_to: unknown sink {bad[0]!r}; valid: tensorboard, wandb")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _comparable(cfg_dict: dict, resume: bool) -> dict[str, Any]:
    flat = _flatten(cfg_dict)
    return {k: v for k, v in flat.items() if k not in _RESUME_FREE_KEYS and not (resume and k.endswith("steps"))}


def check_run_folder(output_dir: str | os.PathLike, cfg: Any, resume: bool) -> None:
    """Refuse (`UserError`, before anything is written) an output folder that holds another run:
    its ``config.yaml`` differs from ``cfg``. The same config may run there again; keys free to differ:
    `_RESUME_FREE_KEYS`, and when resuming the step counts (a run may be extended). The same rule as
    ``rm train`` (`robust_rlhf.reward.train._check_run_config`)."""
    saved = saved_run_config(output_dir, "a policy run's")
    if saved is None:
        return
    diff = first_difference(_comparable(config_to_dict(cfg), resume), _comparable(saved, resume))
    if diff:
        raise UserError(f"--output-dir {str(output_dir)!r} holds another run: its config differs from this one in "
                        f"{diff}; choose another --output-dir, or delete that run first")


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    """Atomically write ``rows`` as CSV; the columns are the union of their keys in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_metrics(folder: Path, rows: list[dict]) -> None:
    """Atomically write ``folder/metrics.jsonl`` and ``folder/metrics.csv`` holding ``rows``."""
    atomic_write_jsonl(folder / "metrics.jsonl", rows)
    write_metrics_csv(folder / "metrics.csv", rows)


class Run:
    """One training run's folder: config, metrics, checkpoints, progress bar.

    Args:
        output_dir: the run folder (created).
        cfg: the recipe's resolved config dataclass (saved as config.yaml).
        resume: continue from the latest checkpoint in ``output_dir``.
        log_cfg: the recipe's `LogConfig`.
        total_steps: number of steps of the whole run (for the bar).
        is_main: False on the other processes of a multi-process run: they read the checkpoint
            to resume from but write nothing (no config, metrics, sinks, bar or checkpoints).
    """

    def __init__(self, output_dir: str | Path, cfg: Any, resume: bool, log_cfg: LogConfig, total_steps: int,
                 is_main: bool = True) -> None:
        self.dir = Path(output_dir)
        self.is_main = is_main
        self.cfg = cfg
        self.log_cfg = log_cfg
        self.total_steps = total_steps
        self.rows: list[dict] = []
        self._bar = None
        self._tb = None
        self._wandb = None
        self._ckpts = StepCheckpoints(self.dir, log_cfg.keep_checkpoints)
        check_run_folder(self.dir, cfg, resume)  # before anything is written
        self._lock: FolderLock | None = None
        if is_main:
            with write_errors(self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
            # One run per folder: a second `policy train` into it is refused while this one runs.
            self._lock = FolderLock(self.dir, "`policy train`")
        cfg_dict = config_to_dict(cfg)
        self.checkpoint = self.latest_checkpoint() if resume else None
        if resume and self.checkpoint is None:
            log.info("resume=true but %s has no checkpoint; starting from step 0", self.dir / CHECKPOINT_DIR)
        if self.checkpoint is None and (self.dir / "metrics.jsonl").exists() and is_main:
            log.warning("%s already holds a run of this config%s; its metrics will be overwritten", self.dir,
                        " without a checkpoint to resume from" if resume else " (use resume=true to continue it)")
        if is_main:
            atomic_write_text(self.dir / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
            self._open_sinks(cfg_dict)

    # --- metrics --------------------------------------------------------------------------
    def _open_sinks(self, cfg_dict: dict) -> None:
        for sink in self.log_cfg.report_to:
            if sink == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise UserError("log.report_to contains tensorboard, but it is not installed: pip install tensorboard") from None
                self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
            elif sink == "wandb":
                try:
                    import wandb
                except ImportError:
                    raise UserError("log.report_to contains wandb, but it is not installed: pip install wandb") from None
                self._wandb = wandb.init(project=self.log_cfg.wandb_project, config=cfg_dict, dir=str(self.dir),
                                         resume="allow")

    def progress(self, start_step: int):
        if self.log_cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=start_step, desc="policy", dynamic_ncols=True)
        return self._bar

    def log(self, row: dict[str, Any]) -> None:
        """Append one step's metrics (a flat dict with at least `step`) to every sink."""
        row = {k: (float(v) if isinstance(v, (torch.Tensor, np.floating)) else v) for k, v in row.items()}
        self.rows.append(row)
        if not self.is_main:
            return
        log_path = self.dir / "metrics.jsonl"
        with write_errors(log_path), open(log_path, "a", encoding="utf-8") as f:  # a refused append names the file
            f.write(dumps_json(row) + "\n")
        self._write_csv()
        step = int(row["step"])
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if self._bar is not None:
            post = {k: row[k] for k in ("kl", "proxy_reward", "gold_reward") if k in row}
            self._bar.set_postfix({k: f"{v:.3f}" for k, v in post.items()}, refresh=False)
            self._bar.update(1)

    def _write_csv(self) -> None:
        write_metrics_csv(self.dir / "metrics.csv", self.rows)

    def _rewrite_jsonl(self) -> None:
        write_metrics(self.dir, self.rows)

    # --- checkpoints ----------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        return self._ckpts.latest()

    def save_checkpoint(self, step: int, policy, optimizer: torch.optim.Optimizer, extra: dict | None = None) -> Path:
        """Atomically write everything needed to continue after ``step`` (1-based count of steps done).

        Returns the checkpoint folder; a no-op on a non-main process."""
        if not self.is_main:
            return self._ckpts.path(step)

        def write(tmp: Path) -> None:
            torch.save(policy.trainable_state_dict(), tmp / "trainable.pt")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(capture_rng(), tmp / "rng.pt")
            if policy.use_lora:
                policy.save_pretrained(tmp / "policy")
            state = {"step": step, "extra": extra or {}, "metrics": self.rows}
            (tmp / "state.json").write_text(dumps_json(state), encoding="utf-8")

        return self._ckpts.save(step, write)

    def restore(self, policy, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
        """Load the latest checkpoint (if resuming): returns (steps done, extra state)."""
        if self.checkpoint is None:
            if self.is_main:
                (self.dir / "metrics.jsonl").unlink(missing_ok=True)
                (self.dir / "metrics.csv").unlink(missing_ok=True)
            return 0, {}
        # Read and check every file before changing anything; a torn checkpoint is skipped for the
        # next older complete one (warning), and with none left resuming is refused (one line).
        torn: list[TornCheckpoint] = []
        for c in [self.checkpoint, *[d for d in self._ckpts.complete() if d != self.checkpoint]]:
            try:
                state = read_state(c / "state.json", ("step", "metrics"))
                if not isinstance(state["step"], int) or not isinstance(state["metrics"], list):
                    raise TornCheckpoint(f"{c / 'state.json'}: 'step' is not a step count or 'metrics' not a list")
                trainable = read_torch(c / "trainable.pt")
                opt_state = read_torch(c / "optimizer.pt")
                rng = read_torch(c / "rng.pt")
            except TornCheckpoint as e:
                log.warning("%s; trying the previous checkpoint", e)
                torn.append(e)
                continue
            log.info("resuming from %s", c)
            self.checkpoint = c
            policy.load_trainable_state_dict(trainable)
            try:
                optimizer.load_state_dict(opt_state)
                restore_rng(rng)
            except (KeyError, ValueError, TypeError, RuntimeError) as e:
                raise TornCheckpoint(f"{c}: optimizer or RNG state does not match this run ({e}); "
                                     "delete the checkpoint or set resume=false") from None
            self.rows = list(state["metrics"])
            if self.is_main:
                self._rewrite_jsonl()  # drop rows a crashed run wrote after its last checkpoint
            return int(state["step"]), state.get("extra", {})
        raise TornCheckpoint(f"{torn[-1]}; no good checkpoint is left to resume from -- delete "
                             f"{self.dir / CHECKPOINT_DIR} or set resume=false to start over")

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
