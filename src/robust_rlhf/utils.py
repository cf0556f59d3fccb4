"""Small shared helpers: atomic file writes, seeding, device/precision choice."""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from robust_rlhf.errors import UserError


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


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-inf; also numpy/torch scalars and arrays) replaced
    by None, so that it serialises as strict JSON (RFC 8259 has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.ndarray, torch.Tensor)):
        return strict_json(_json_default(obj))
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """The one JSON writer of the project: strict JSON (non-finite floats -> null, `allow_nan=False`),
    numpy/torch values and paths converted."""
    return json.dumps(strict_json(obj), allow_nan=False, default=_json_default, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(dumps_json(r) + "\n" for r in rows))


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
        write(tmp)
        normalise_modes(tmp)
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


def normalise_modes(folder: str | os.PathLike) -> None:
    """Give `folder` and everything in it the modes of a plain `open`/`mkdir` under the current
    umask (files 0666 & ~umask, folders 0777 & ~umask): libraries that write through temp files
    leave 0600, so a model saved by one account could not be read by another."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            fp = os.path.join(root, f)
            if not os.path.islink(fp):
                os.chmod(fp, 0o666 & ~mask)


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
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls natively (x86: AVX512-BF16 or AMX-BF16; Arm: the
    BF16 extension) AND oneDNN will use them. Plain AVX-512 without BF16 makes oneDNN *emulate*
    bf16 (`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is then True too), which is the ~20x
    slower case of USER_NEEDS #14 -- so both the oneDNN check and the native-instruction check
    must hold."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    import platform

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        cpu = getattr(torch, "cpu", None)
        try:  # cpuinfo's own flags, as torch reads them
            if cpu._is_avx512_bf16_supported():
                return True
        except (AttributeError, RuntimeError):
            pass
        return bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})
    if machine in ("aarch64", "arm64"):
        # On Arm, oneDNN's bf16 check above is the hardware's BF16 extension itself.
        return True
    return False


def _cpuinfo_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `device` (None = plain fp32).

    precision: "auto" -- bf16 on GPUs that support it and on CPUs with native bf16
    (`cpu_has_native_bf16`), fp32 elsewhere (emulated bf16 is ~20x slower: USER_NEEDS #14);
    "fp32" -- always fp32; "bf16" -- always bf16 (refused on a GPU without bf16)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if precision == "bf16":
            raise UserError(f"precision=bf16: {device} does not support bf16; use precision=auto or fp32")
        return None
    if device.type == "cpu" and (precision == "bf16" or cpu_has_native_bf16()):
        return torch.bfloat16
    return None


# ---------------------------------------------------------------------------------------------
# Checks done before a command writes anything (each raises UserError with one clear line).
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_location(path: Path, what: str) -> None:
    """Every existing ancestor of `path` must be a folder, and the nearest one writable."""
    for anc in list(path.parents)[::-1]:
        if anc.exists() and not anc.is_dir():
            raise UserError(f"{what} {str(path)!r}: {str(anc)!r} is a file, not a folder")
    # Files are written by a rename inside their folder: the (nearest existing) folder must be writable.
    base = path if path.is_dir() else _nearest_existing(path.parent)
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{what} {str(path)!r}: {str(base)!r} is not writable (permission denied)")


def check_output_dir(path: str | os.PathLike | None, what: str = "--output-dir") -> Path:
    """Refuse an output folder that cannot be one: empty (an unset shell variable), an existing
    file, under a file, or in a read-only place. Creates nothing."""
    if path is None or not str(path).strip():
        raise UserError(f"{what} is empty (an unset shell variable?); name a folder")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {str(path)!r} is a file, not a folder")
    _check_writable_location(p, what)
    return p


def check_output_file(path: str | os.PathLike | None, what: str = "--output",
                      inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output file that cannot be written, is a folder, or is one of the command's
    `inputs` (a command never rewrites what it reads). Creates nothing."""
    if path is None or not str(path).strip():
        raise UserError(f"{what} is empty (an unset shell variable?); name a file")
    p = Path(path).expanduser()
    if p.is_dir() or str(path).endswith(os.sep):
        raise UserError(f"{what} {str(path)!r} is a folder, not a file")
    for src in inputs:
        if src is not None and same_path(p, src):
            raise UserError(f"{what} {str(path)!r} is also an input of this command; write to another file")
    _check_writable_location(p, what)
    return p


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def is_inside(child: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """True when `child` is `parent` or lies below it (symlinks resolved)."""
    try:
        c, p = Path(child).expanduser().resolve(), Path(parent).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
    return c == p or p in c.parents


def resolve_device(spec: str | None) -> torch.device:
    """A device string from a config (cpu, cuda, cuda:1, mps; None or ``auto`` = cuda if available),
    checked against this machine. Every recipe (reward models, policies) resolves its ``device`` here."""
    if spec is None or spec == "auto":
        return default_device()
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"device {spec!r}: not a device name (use cpu, cuda, cuda:N, auto or null)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r}: no CUDA GPU is available on this machine (use device=cpu or null)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {spec!r}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise UserError(f"device {spec!r}: unsupported device type {dev.type!r} (use cpu, cuda, cuda:N, auto or null)")
    return dev


MAX_SEED = 2**32 - 1


def check_seed(seed: Any, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{what} must be an integer in [0, 2**32 - 1], got {seed!r}")
    return seed
