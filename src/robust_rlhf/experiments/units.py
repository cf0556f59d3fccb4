"""Cached units of work: a unit fills its own folder under OUTPUT/units/ and is marked finished
by a ``done`` file written atomically *last*, holding a fingerprint (a hash of everything the
unit depends on) and the size of every file the unit wrote. `UnitRunner` skips finished units
whose files are all still whole, wipes a folder left by different inputs, and lets an unfinished
one continue (policy runs resume from their own checkpoints); a finished unit with a torn or
unreadable file (its size changed, a broken marker) counts as unfinished and is recomputed."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from robust_rlhf.errors import UserError
from robust_rlhf.utils import atomic_write_json

log = logging.getLogger(__name__)

DONE_FILE = "done"
UNIT_FILE = "unit.json"


def fingerprint(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    """Relative path -> size of every file in a unit folder (its done marker excepted)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != DONE_FILE}


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


@dataclass
class Unit:
    """One cacheable piece of work: ``run(folder)`` fills the folder and returns a summary."""

    key: str
    """folder under units/, e.g. rm/bt or runs/ppo-mean/s0"""
    stage: str
    """shown in progress: data, reward models, pools, calibration, policies"""
    spec: dict
    """everything the result depends on (its fingerprint decides whether a cached result is valid)"""
    run: Callable[[Path], dict]
    """does the work into the folder; the returned dict is stored in the done marker"""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.spec)


class UnitRunner:
    """Executes units once: a unit with a valid ``done`` marker is skipped; a folder left by a
    unit of different inputs is wiped first; ``done`` is written atomically and last.

    Args:
        root: the units/ folder.
        total: planned number of units (progress bar; grows if more are added).
        on_unit_start: test hook called with the unit key before the unit runs (e.g. to
            inject a crash).
        before_run: called just before each unit that runs (not a cached one), while nothing of
            ours is busy: the lab re-checks its torch thread count here (`robust_rlhf.threads`).
    """

    def __init__(self, root: Path, total: int, on_unit_start: Callable[[str], None] | None = None,
                 progress: bool = True, before_run: Callable[[], None] | None = None) -> None:
        from tqdm.auto import tqdm

        self.root = root
        self.executed: list[str] = []
        self.skipped: list[str] = []
        self.on_unit_start = on_unit_start
        self.before_run = before_run
        self.bar = tqdm(total=total, desc="experiment", unit="unit", disable=not progress, dynamic_ncols=True)

    def is_done(self, unit: Unit) -> bool:
        """A valid marker of these inputs, and every file the unit wrote still whole."""
        marker = self.root / unit.key / DONE_FILE
        if not marker.exists():
            return False
        done = _read_object(marker)
        if done is None or not isinstance(done.get("files"), dict) or "summary" not in done:
            log.warning("%s: its done marker is torn or unreadable; recomputing this unit", unit.key)
            return False
        if done.get("fingerprint") != unit.fingerprint:
            return False
        torn = torn_file(self.root / unit.key, done["files"])
        if torn is not None:
            log.warning("%s: %s is torn or gone since the unit finished; recomputing this unit", unit.key, torn)
            marker.unlink(missing_ok=True)
            (self.root / unit.key / UNIT_FILE).unlink(missing_ok=True)  # a cache: start it afresh
            return False
        return True

    def __call__(self, unit: Unit) -> dict:
        folder = self.root / unit.key
        if self.is_done(unit):
            self.skipped.append(unit.key)
            self.bar.update(1)
            return read_json(folder / DONE_FILE)["summary"]
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
        done = len(self.executed) + len(self.skipped)
        self.bar.set_description(f"{unit.stage}")
        self.bar.set_postfix_str(unit.key, refresh=True)
        log.info("[%d/%d] %s: %s", done + 1, self.bar.total, unit.stage, unit.key)
        if self.on_unit_start is not None:
            self.on_unit_start(unit.key)
        if self.before_run is not None:
            self.before_run()
        t0 = time.time()
        summary = unit.run(folder) or {}
        seconds = time.time() - t0
        atomic_write_json(folder / DONE_FILE, {"fingerprint": unit.fingerprint, "seconds": seconds, "summary": summary,
                                               "files": file_sizes(folder)})
        self.executed.append(unit.key)
        self.bar.update(1)
        log.info("%s finished in %.0f s", unit.key, seconds)
        return summary

    def grow(self, n: int) -> None:
        self.bar.total += n
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
