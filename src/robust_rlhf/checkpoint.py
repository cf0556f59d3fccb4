"""Checkpoints shared by every training recipe (reward models and policies).

A checkpoint is one folder written with `atomic_save_dir` (never half-written: a kill leaves
either the previous folder or the new one) holding whatever the recipe needs to continue,
``state.json`` last. The pieces here are the ones every recipe repeats:

* `capture_rng` / `restore_rng` -- python, numpy, torch and CUDA generator states;
* `StepCheckpoints` -- a ``checkpoints/step_NNNNNN/`` series with rotation (policies);
* `StageCheckpoint` -- one named checkpoint folder, overwritten in place (the previous good one
  kept beside it as ``<name>.prev``), and on it `BackboneHeadCheckpoint` -- backbone + head +
  optimizer + scheduler (reward stage 1).

Every reader validates what it reads before it changes any module: a checkpoint torn after it
was written (truncated by a copy, a full disk elsewhere, a bad sector) is skipped with a warning
and the previous good one is used where there is one; with none, resuming is refused with one
line naming the file (`TornCheckpoint`).

What a policy checkpoint holds is written by `robust_rlhf.policy.tracking.Run` (on `StepCheckpoints`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from robust_rlhf.errors import UserError
from robust_rlhf.utils import atomic_save_dir, dumps_json, recover_dir

__all__ = ["CHECKPOINT_DIR", "BackboneHeadCheckpoint", "StageCheckpoint", "StepCheckpoints", "TornCheckpoint",
           "capture_rng", "read_state", "read_torch", "read_weights", "restore_rng"]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"


class TornCheckpoint(UserError):
    """A checkpoint file that cannot be read back (truncated, corrupt, or not what it should
    hold); the message names the file and what is wrong with it."""


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def read_state(path: Path, required: tuple[str, ...] = ()) -> dict:
    """A checkpoint's JSON object with `required` keys, or `TornCheckpoint` naming the file."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON and UTF-8 errors
        raise TornCheckpoint(f"{path}: unreadable ({_reason(e)})") from None
    if not isinstance(state, dict):
        raise TornCheckpoint(f"{path}: expected a JSON object, got {type(state).__name__}")
    missing = [k for k in required if k not in state]
    if missing:
        raise TornCheckpoint(f"{path}: missing {', '.join(map(repr, missing))}")
    return state


def read_torch(path: Path, weights_only: bool = True) -> Any:
    """``torch.load`` of a checkpoint file on the CPU, or `TornCheckpoint` naming the file."""
    try:
        return torch.load(path, weights_only=weights_only, map_location="cpu")
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # truncated zip, bad pickle, missing file: torch raises many types
        raise TornCheckpoint(f"{path}: unreadable ({_reason(e)})") from None


def read_weights(path: Path, expected: dict[str, torch.Size] | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file, checked against `expected` names and shapes when given (every
    missing, unexpected or mis-shaped tensor named), or `TornCheckpoint` naming the file."""
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
        raise TornCheckpoint(f"{path}: unreadable ({_reason(e)})") from None
    if expected is not None:
        problem = describe_mismatch(expected, {k: v.shape for k, v in weights.items()})
        if problem:
            raise TornCheckpoint(f"{path}: does not match the model ({problem})")
    return weights


def describe_mismatch(expected: dict[str, Any], found: dict[str, Any], limit: int = 5) -> str:
    """'' when `found` has exactly the names of `expected` with the same shapes; else what
    differs: missing names, unexpected names, mis-shaped ones (the first `limit` of each, and
    how many in all)."""
    def some(names: list[str]) -> str:
        names = sorted(names)
        more = f", ... ({len(names)} in all)" if len(names) > limit else ""
        return ", ".join(names[:limit]) + more

    parts = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k])} instead of {tuple(expected[k])}" for k in expected
              if k in found and tuple(found[k]) != tuple(expected[k])]
    if missing:
        parts.append(f"missing {some(missing)}")
    if unexpected:
        parts.append(f"unexpected {some(unexpected)}")
    if shapes:
        parts.append(f"shape {some(shapes)}")
    return "; ".join(parts)


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
        done = self.complete()
        return done[0] if done else None

    def complete(self) -> list[Path]:
        """Every complete checkpoint (``state.json`` present), newest first: a reader that finds
        the newest torn falls back to the next."""
        return [c for c in sorted(self.dir.glob("step_*"), reverse=True) if (c / STATE_FILE).exists()]

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
        self.previous = self.dir.with_name(f"{name}.prev")

    def candidates(self) -> list[Path]:
        """The complete checkpoint folders, newest first: the current one, then the previous
        good one (kept by `save`). An interrupted replacement is recovered first."""
        recover_dir(self.dir)
        return [d for d in (self.dir, self.previous) if (d / STATE_FILE).exists()]

    def exists(self) -> bool:
        """True when a complete checkpoint is there (the current or the previous one)."""
        return bool(self.candidates())

    def save(self, write: Callable[[Path], None]) -> Path:
        """Atomically replace the folder with what ``write(tmp_folder)`` writes (``state.json``
        included); the replaced one becomes ``<name>.prev``."""
        return atomic_save_dir(self.dir, write, keep_previous=self.previous)

    def state(self) -> dict:
        """The checkpoint's ``state.json`` (validated: a torn one is a `TornCheckpoint`)."""
        return read_state(self.dir / STATE_FILE)

    def remove(self) -> None:
        """Delete the checkpoint and its previous copy."""
        for d in (self.dir, self.previous):
            shutil.rmtree(d, ignore_errors=True)


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
        """Restore everything `save` wrote; returns the progress. A checkpoint of another config
        is a `UserError`. Each file is read and checked before any module changes; a torn
        checkpoint is skipped (warning) for the previous good one, and with none left resuming
        is refused (`TornCheckpoint` naming the file)."""
        torn: list[TornCheckpoint] = []
        for folder in self._ck.candidates():
            try:
                state, weights, extra = self._read(folder, backbone, head, cfg_dict)
            except TornCheckpoint as e:
                log.warning("%s; trying the previous checkpoint", e)
                torn.append(e)
                continue
            if torn:
                log.warning("resuming from the previous good checkpoint %s", folder)
            params = dict(backbone.named_parameters())
            for k, v in weights.items():
                if k.startswith("backbone."):
                    params[k[len("backbone."):]].data.copy_(v)
            head.load_state_dict({k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")})
            try:
                opt.load_state_dict(extra["optimizer"])
                sched.load_state_dict(extra["scheduler"])
            except (KeyError, ValueError, TypeError) as e:
                raise TornCheckpoint(f"{folder / 'optimizer.pt'}: does not match the optimizer ({_reason(e)}); "
                                     "delete the checkpoint or set resume=false") from None
            torch.set_rng_state(extra["torch_rng"])
            if extra.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(extra["cuda_rng"])
            return state["progress"]
        raise TornCheckpoint(f"{torn[-1]}; no good checkpoint is left to resume from -- delete "
                             f"{self.dir.parent} or set resume=false to start over")

    def _read(self, folder: Path, backbone: torch.nn.Module, head: torch.nn.Module, cfg_dict: dict):
        """(state, weights, optimizer extras) of one checkpoint folder, all validated."""
        state = read_state(folder / STATE_FILE, ("progress", "config"))
        if state["config"] != cfg_dict:
            raise UserError(
                f"{folder}: a checkpoint of a different config is here; use another --output-dir "
                "or resume=false to start over")
        progress = state["progress"]
        if not isinstance(progress, dict) or not isinstance(progress.get("step"), int) or "log" not in progress:
            raise TornCheckpoint(f"{folder / STATE_FILE}: 'progress' is not a step count with its log")
        expected = {f"backbone.{k}": v.shape for k, v in backbone.named_parameters() if v.requires_grad}
        expected.update({f"head.{k}": v.shape for k, v in head.state_dict().items()})
        weights = read_weights(folder / "weights.safetensors", expected)
        extra = read_torch(folder / "optimizer.pt", weights_only=False)
        if not isinstance(extra, dict) or not {"optimizer", "scheduler", "torch_rng"} <= set(extra):
            raise TornCheckpoint(f"{folder / 'optimizer.pt'}: not an optimizer checkpoint "
                                 "(no optimizer, scheduler and torch_rng)")
        return state, weights, extra
