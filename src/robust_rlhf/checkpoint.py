"""Checkpoints shared by every training recipe (reward models and policies).

A checkpoint is one folder written with `atomic_save_dir` (never half-written: a kill leaves
either the previous folder or the new one) holding whatever the recipe needs to continue,
``state.json`` last. The pieces here are the ones every recipe repeats:

* `capture_rng` / `restore_rng` -- python, numpy, torch and CUDA generator states;
* `StepCheckpoints` -- a ``checkpoints/step_NNNNNN/`` series with rotation (policies);
* `StageCheckpoint` -- one named checkpoint folder, overwritten in place, and on it
  `BackboneHeadCheckpoint` -- backbone + head + optimizer + scheduler (reward stage 1).

What a policy checkpoint holds is written by `robust_rlhf.policy.tracking.Run` (on `StepCheckpoints`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from robust_rlhf.utils import atomic_save_dir, dumps_json, recover_dir

__all__ = ["CHECKPOINT_DIR", "BackboneHeadCheckpoint", "StageCheckpoint", "StepCheckpoints", "capture_rng", "restore_rng"]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"


def _np_state_to_torch(st: tuple) -> tuple:
    kind, keys, pos, has_gauss, gauss = st
    return (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def capture_rng() -> dict:
    """Every global generator's state, loadable with ``torch.load(..., weights_only=True)``."""
    return {
        "python": random.getstate(),
        "numpy": _np_state_to_torch(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict) -> None:
    """Inverse of `capture_rng` (CUDA states are skipped when there is no GPU now)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StepCheckpoints:
    """``root/checkpoints/step_NNNNNN/`` folders, the newest ``keep`` kept.

    Args:
        root: the run folder.
        keep: how many most recent checkpoints survive a `save` (>= 1).
    """

    def __init__(self, root: str | Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir = Path(root) / CHECKPOINT_DIR
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.dir / f"step_{step:06d}"

    def latest(self) -> Path | None:
        """The newest complete checkpoint (one whose ``state.json`` exists), or None."""
        done = [c for c in sorted(self.dir.glob("step_*")) if (c / STATE_FILE).exists()]
        return done[-1] if done else None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Atomically write checkpoint ``step`` with ``write(tmp_folder)`` (which must write
        ``state.json``), then delete all but the newest ``keep``. Returns the folder."""
        final = atomic_save_dir(self.path(step), write)
        for old in sorted(self.dir.glob("step_*"))[: -self.keep]:
            # Rename first (atomic), then delete: a kill mid-delete leaves a hidden temp folder
            # (cleaned by the next save), never a half-deleted step_* checkpoint.
            doomed = old.with_name(f".{old.name}.deleting.tmp")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        for stale in self.dir.glob(".step_*.deleting.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        return final


class StageCheckpoint:
    """One checkpoint folder ``root/checkpoints/<name>/``, replaced atomically on each save.

    Args:
        root: the run folder.
        name: the folder's name (e.g. ``stage1``).
    """

    def __init__(self, root: str | Path, name: str) -> None:
        self.dir = Path(root) / CHECKPOINT_DIR / name

    def exists(self) -> bool:
        """True when a complete checkpoint is there (an interrupted replacement is recovered first)."""
        recover_dir(self.dir)
        return (self.dir / STATE_FILE).exists()

    def save(self, write: Callable[[Path], None]) -> Path:
        """Atomically replace the folder with what ``write(tmp_folder)`` writes (``state.json`` included)."""
        return atomic_save_dir(self.dir, write)

    def state(self) -> dict:
        """The checkpoint's ``state.json``."""
        return json.loads((self.dir / STATE_FILE).read_text(encoding="utf-8"))


class BackboneHeadCheckpoint:
    """A backbone's trainable parameters + a head + optimizer + scheduler + torch RNG + progress,
    in one atomic folder ``root/checkpoints/<name>/`` (the reward models' stage 1).

    Files: ``weights.safetensors`` (``backbone.*``, ``head.*``), ``optimizer.pt`` (optimizer,
    scheduler, torch / CUDA RNG), ``state.json`` (progress and the config it belongs to).

    Args:
        root: the run folder.
        name: the checkpoint folder's name.
    """

    def __init__(self, root: str | Path, name: str = "stage1") -> None:
        self._ck = StageCheckpoint(root, name)
        self.dir = self._ck.dir

    def exists(self) -> bool:
        return self._ck.exists()

    def save(self, backbone: torch.nn.Module, head: torch.nn.Module, opt, sched, progress: dict, cfg_dict: dict) -> None:
        """`backbone` and `head` are the plain modules (not DDP-wrapped), so names carry no `module.` prefix."""
        from safetensors.torch import save as save_safetensors

        trainable = {k: v.detach().cpu().contiguous() for k, v in backbone.named_parameters() if v.requires_grad}

        def write(tmp: Path) -> None:
            (tmp / "weights.safetensors").write_bytes(save_safetensors(
                {**{f"backbone.{k}": v for k, v in trainable.items()},
                 **{f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}}))
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                       tmp / "optimizer.pt")
            (tmp / STATE_FILE).write_text(dumps_json({"progress": progress, "config": cfg_dict}, indent=2), encoding="utf-8")

        self._ck.save(write)

    def load(self, backbone: torch.nn.Module, head: torch.nn.Module, opt, sched, cfg_dict: dict) -> dict:
        """Restore everything `save` wrote; returns the progress. A checkpoint of another config is a `UserError`."""
        from safetensors.torch import load_file

        from robust_rlhf.errors import UserError

        state = self._ck.state()
        if state["config"] != cfg_dict:
            raise UserError(
                f"{self.dir}: a checkpoint of a different config is here; use another --output-dir "
                "or resume=false to start over")
        weights = load_file(str(self.dir / "weights.safetensors"))
        params = dict(backbone.named_parameters())
        for k, v in weights.items():
            if k.startswith("backbone."):
                params[k[len("backbone."):]].data.copy_(v)
        head.load_state_dict({k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")})
        extra = torch.load(self.dir / "optimizer.pt", weights_only=False, map_location="cpu")
        opt.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        if extra["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        return state["progress"]
