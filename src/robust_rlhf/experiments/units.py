"""Cached units of work: a unit fills its own folder under OUTPUT/units/ and is marked finished
by a ``done`` file written atomically *last*, holding a fingerprint (a hash of everything the
unit depends on) and the size of every file the unit wrote. A finished unit with a torn or
unreadable file (its size changed, a broken marker) counts as unfinished and is recomputed
(`read_done`). `execute_unit` wipes a folder left by different inputs, lets an unfinished one
continue (policy runs resume from their own checkpoints) and writes the unit's log to
``log.txt`` in its folder.

A fingerprint never depends on where the experiment folder lives: a spec names a file inside the
units/ folder relative to it (`root_relative`), so a folder given relative or absolute, run from
another working directory, or moved keeps its cache; a file outside it stands in the spec by its
content (the stages read it when they declare the unit). Which units run when, and where, is
`robust_rlhf.experiments.scheduler`.

A `Unit` is a picklable description -- a module-level function and its arguments -- so the same
unit runs in this process, in a local worker process or as a Ray task on another machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable

from robust_rlhf.errors import UserError
from robust_rlhf.utils import atomic_write_json

log = logging.getLogger(__name__)

DONE_FILE = "done"
UNIT_FILE = "unit.json"
LOG_FILE = "log.txt"
ROOT_MARK = "<units>"
"""stands for the units/ folder in a spec (`root_relative`)"""


def fingerprint(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def root_relative(spec: Any, root: str | Path) -> Any:
    """``spec`` with every path inside the units/ folder ``root`` -- a string or path equal to it or
    under it, as given or made absolute -- written as ``<units>/<relative posix path>``; every other
    value unchanged (tuples become lists, as JSON writes them).

    Args:
        spec: nested dicts / lists / scalars (a unit's spec; configs from `config_to_dict`).
        root: the units/ folder the spec's paths were built from (relative or absolute).
    """
    root = Path(root)
    prefixes = sorted({str(root), os.path.abspath(root), str(root.resolve())}, key=len, reverse=True)

    def rel(v: Any) -> Any:
        if isinstance(v, (str, PurePath)):
            s = str(v)
            for p in prefixes:
                if s == p or s.startswith(p + os.sep):
                    return ROOT_MARK + s[len(p):].replace(os.sep, "/")
            return v
        if isinstance(v, dict):
            return {k: rel(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [rel(x) for x in v]
        return v

    return rel(spec)


def read_json(path: Path) -> Any:
    """A run folder's JSON file; an unreadable or torn one is a `UserError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON and UTF-8 errors
        why = e.strerror if isinstance(e, OSError) else "torn or not JSON"
        raise UserError(f"{path}: cannot read ({why}); delete it (or its unit folder) to recompute it") from None


def _read_object(path: Path) -> dict | None:
    """A JSON object, or None when the file is missing, torn or not an object (a cache record)."""
    try:
        obj = read_json(path)
    except UserError:
        return None
    return obj if isinstance(obj, dict) else None


def file_sizes(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file in a unit folder (its done marker and log excepted)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name not in (DONE_FILE, LOG_FILE)}


def torn_file(folder: Path, sizes: dict) -> str | None:
    """The first file of `sizes` that is gone or changed size since the unit finished, or None."""
    for rel, size in sizes.items():
        try:
            if (folder / rel).stat().st_size != size:
                return rel
        except OSError:
            return rel
    return None


def units_root(output_dir: Path) -> Path:
    return output_dir / "units"


@dataclass(frozen=True)
class Unit:
    """One cacheable piece of work: ``fn(folder, **args)`` fills the folder and returns a summary.

    ``fn`` must be a module-level function and ``args`` picklable: a unit travels to worker
    processes and Ray nodes (a closure cannot).
    """

    key: str
    """folder under units/, e.g. rm/bt or runs/ppo-mean/s0"""
    stage: str
    """shown in progress: data, reward models, pools, calibration, policies"""
    spec: dict
    """everything the result depends on (its fingerprint decides whether a cached result is valid): no
    path inside the experiment folder (`root_relative`), files outside it by their content"""
    fn: Callable[..., dict]
    """does the work into the folder (first argument); the returned dict is stored in the done marker"""
    args: dict = field(default_factory=dict)
    """keyword arguments of ``fn`` (picklable: paths, configs, numbers)"""
    after: tuple[str, ...] = ()
    """keys of the units whose folders this one reads (they finish first)"""

    def __post_init__(self) -> None:
        qualname = getattr(self.fn, "__qualname__", "")
        if not callable(self.fn) or "<locals>" in qualname or "<lambda>" in qualname or not getattr(self.fn, "__module__", None):
            raise TypeError(f"unit {self.key!r}: fn must be a module-level function (units travel to worker "
                            f"processes), got {qualname or self.fn!r}")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.spec)

    def run(self, folder: Path) -> dict:
        return self.fn(folder, **self.args) or {}


def read_done(root: Path, unit: Unit) -> dict | None:
    """The unit's done record (``fingerprint``, ``seconds``, ``summary``, ``files``) when it is
    finished with these inputs and every file it wrote is still whole; None otherwise (missing,
    left by other inputs, or torn: a torn marker or file makes the unit recompute from scratch)."""
    folder = root / unit.key
    marker = folder / DONE_FILE
    if not marker.exists():
        return None
    done = _read_object(marker)
    if done is None or not isinstance(done.get("files"), dict) or "summary" not in done:
        log.warning("%s: its done marker is torn or unreadable; recomputing this unit", unit.key)
        return None
    if done.get("fingerprint") != unit.fingerprint:
        return None
    torn = torn_file(folder, done["files"])
    if torn is not None:
        log.warning("%s: %s is torn or gone since the unit finished; recomputing this unit", unit.key, torn)
        marker.unlink(missing_ok=True)
        (folder / UNIT_FILE).unlink(missing_ok=True)  # a cache: start it afresh
        return None
    return done


class _UnitLog:
    """Copies the records of this process to ``folder/log.txt`` (appending: a resumed unit keeps
    the log of its earlier attempts) while the unit runs."""

    def __init__(self, folder: Path) -> None:
        self.handler = logging.FileHandler(folder / LOG_FILE, encoding="utf-8")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        self.ours = logging.getLogger("robust_rlhf")
        self.level = self.ours.level

    def __enter__(self) -> None:
        logging.getLogger().addHandler(self.handler)
        if not self.ours.isEnabledFor(logging.INFO):
            self.ours.setLevel(logging.INFO)

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.ours.setLevel(self.level)
        self.handler.close()


def execute_unit(unit: Unit, root: str | Path) -> dict:
    """Run one unit into ``root/unit.key`` (in whichever process or node this is called).

    A folder left by a unit of different inputs is wiped; one of the same inputs is continued.
    ``unit.json`` is written first, ``done`` atomically last -- a unit killed in between leaves
    no ``done``, so the cache never holds half a unit.

    Returns:
        the done record: ``{"fingerprint", "seconds", "summary", "files"}``.
    """
    folder = Path(root) / unit.key
    if folder.exists():
        recorded = folder / UNIT_FILE
        same = (_read_object(recorded) or {}).get("fingerprint") == unit.fingerprint
        if not same:
            log.info("%s: inputs changed (or unknown leftovers); starting this unit afresh", unit.key)
            shutil.rmtree(folder)
        else:
            log.info("%s: continuing an unfinished unit", unit.key)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / UNIT_FILE, {"key": unit.key, "fingerprint": unit.fingerprint, "spec": unit.spec})
    with _UnitLog(folder):
        log.info("%s (%s) started", unit.key, unit.stage)
        t0 = time.time()
        summary = unit.run(folder)
        seconds = time.time() - t0
        log.info("%s finished in %.1f s", unit.key, seconds)
    done = {"fingerprint": unit.fingerprint, "seconds": seconds, "summary": summary, "files": file_sizes(folder)}
    atomic_write_json(folder / DONE_FILE, done)
    return done
