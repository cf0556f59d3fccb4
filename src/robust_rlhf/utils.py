"""Small shared helpers: atomic file writes, seeding, device/precision choice."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder + rename, so a reader (or a
    crash) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_save_dir(final_dir: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Build a directory completely in a sibling temp folder, then swap it into place.

    `write(tmp_dir)` fills the folder. A crash at any point leaves either the previous
    `final_dir` or the new one -- never a half-written checkpoint.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write(tmp)
        old = None
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final_dir


def recover_dir(final_dir: str | os.PathLike) -> Path:
    """Repair what a hard kill (SIGKILL, power loss) inside `atomic_save_dir` can leave behind:
    a kill between its two renames leaves only `.<name>.old` -- put it back; temp folders of an
    unfinished write are removed. Single writer per folder assumed (true for our recipes)."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(f".{final_dir.name}.old")
    if old.exists():
        if final_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final_dir)
    if final_dir.parent.exists():
        for stale in final_dir.parent.glob(f".{final_dir.name}.*.tmp"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return final_dir


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the GPU supports it; plain fp32 on CPU, where bf16 is ~20x slower
    (USER_NEEDS #14)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
