"""Commands that take ``key=value`` overrides into a run folder (``experiment run``, ``policy train``,
``rm train``): check what can be checked before the recipe runs, and leave the folder as it was
when the recipe still refuses before doing any work.

Each command first validates its resolved config up front (`check_device`, `check_input_path` and
the command's own checks); `unchanged_on_refusal` is the backstop for a refusal the recipe finds
later: if a `UserError` ends the command before it wrote anything but ``config.yaml``, the old
``config.yaml`` is put back (or the new one removed) and a folder the command created is removed.
A run that did work (wrote any other file) is left as it is.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator

from robust_rlhf.errors import UserError
from robust_rlhf.utils import atomic_write_bytes

__all__ = ["check_device", "check_input_path", "unchanged_on_refusal"]

_RECORD = "config.yaml"


def check_device(cfg: Any, key: str = "device") -> None:
    """The config's device exists on this machine (a missing GPU fails before anything is written)."""
    from robust_rlhf.utils import resolve_device

    spec = getattr(cfg, "device", None)
    if spec is not None and spec != "auto":
        try:
            resolve_device(str(spec))
        except UserError as e:
            raise UserError(f"config {key}: {e}") from None


def check_input_path(key: str, value: Any, marker: str | None = None) -> None:
    """A local path named by the config exists (and holds ``marker`` when given); specs such as
    ``builtin:...``, ``hf:...``, ``gold:...`` and model names are left to their loaders."""
    if not value or not isinstance(value, str) or ":" in value.split("/")[0]:
        return
    path = Path(value).expanduser()
    if marker is None:
        if not path.exists() and (value.startswith((".", "/", "~")) or path.suffix):
            raise UserError(f"config {key}={value!r}: no such file or folder")
        return
    if not (path / marker).is_file():
        raise UserError(f"config {key}={value!r}: not a folder holding {marker}")


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".tmp")}


def _dirs(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_dir()}


@contextlib.contextmanager
def unchanged_on_refusal(output_dir: str | Path) -> Iterator[None]:
    """On a `UserError` before any work: restore ``config.yaml`` and remove a folder created here."""
    out = Path(output_dir)
    existed = out.exists()
    record = out / _RECORD
    old = record.read_bytes() if record.is_file() else None
    before = _files(out) if existed else set()
    before_dirs = _dirs(out) if existed else set()
    try:
        yield
    except UserError:
        if out.is_dir():
            after = _files(out)
            if after - before <= {_RECORD}:  # nothing but the config record was written
                if not existed:
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    if old is not None:
                        if not record.is_file() or record.read_bytes() != old:
                            atomic_write_bytes(record, old)
                    elif record.is_file():
                        record.unlink()
                    for d in sorted(_dirs(out) - before_dirs, key=lambda p: len(p.parts), reverse=True):
                        with contextlib.suppress(OSError):
                            d.rmdir()  # only folders created here, and only when empty
        raise
