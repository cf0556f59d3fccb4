"""How many torch CPU threads to use: as many as there are cores *free right now*.

Why: torch's intra-op pool (GNU OpenMP here) spins at every barrier. With more threads than
free cores a thread that lost its core holds every other thread at the next barrier: on the
shared 2-core machine one PPO unit of the lab went 76 s -> 392 s with 2 threads against one
busy process. The 1-minute load average lags by minutes, so we sample ``/proc/stat`` over a
short window instead, and re-check between units of work (when this process is idle, so
nothing of ours needs subtracting).

    free_cores()            cores idle over ~0.25 s, within affinity and the cgroup CPU quota
    choose_threads(req)     an explicit N, or the env's OMP_NUM_THREADS, or round-down(free)
    apply_threads(req)      choose + torch.set_num_threads + one INFO line

Units: jiffies (``/proc/stat`` ticks, USER_HZ) for raw counts, cores (float) for capacity and
free capacity, threads (int) for the choice.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping

from robust_rlhf.errors import UserError

__all__ = [
    "CpuSample",
    "ThreadChoice",
    "apply_threads",
    "cgroup_cpu_limit",
    "choose_threads",
    "decide_threads",
    "free_cores",
    "idle_cores_between",
    "omp_num_threads",
    "parse_cfs_quota",
    "parse_cpu_max",
    "parse_proc_stat",
    "threads_for",
    "usable_cores",
]

log = logging.getLogger(__name__)

Requested = int | Literal["auto"] | None
"""``None`` and ``"auto"`` both mean: measure; an int >= 1 is used as given."""

WINDOW_S = 0.25
"""length of the /proc/stat sampling window (seconds)"""
ROUND_UP_FROM = 0.75
"""a fractional free core counts as a thread only when at least this idle: oversubscribing
(spinning threads, 5x slower) costs far more than leaving a core a little under-used (<= 2x)"""
_ALL_SPEC = "cpu"


@dataclass(frozen=True)
class CpuSample:
    """One CPU's counters from one /proc/stat line (jiffies since boot)."""

    idle: int
    """idle + iowait"""
    total: int
    """user + nice + system + idle + iowait + irq + softirq + steal (guest time is already in user/nice)"""


@dataclass(frozen=True)
class ThreadChoice:
    """What `decide_threads` chose and from what."""

    threads: int
    """torch intra-op threads to use"""
    cores: float
    """cores this process may use (affinity, capped by the cgroup quota)"""
    free: float | None
    """of those, idle over the sampling window (None: not measured)"""
    reason: str
    """config, OMP_NUM_THREADS, /proc/stat, loadavg"""


# ---------------------------------------------------------------------------------- /proc/stat
def parse_proc_stat(text: str) -> dict[str, CpuSample]:
    """``"cpu"`` (all CPUs) and ``"cpuN"`` -> counters, from the text of /proc/stat.

    A line is ``cpuN user nice system idle iowait irq softirq steal guest guest_nice`` (older
    kernels list fewer fields; missing ones count as 0).
    """
    out: dict[str, CpuSample] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith(_ALL_SPEC):
            continue
        try:
            v = [int(x) for x in parts[1:9]]
        except ValueError:
            continue
        if len(v) < 4:
            continue
        v += [0] * (8 - len(v))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        total = user + nice + system + idle + iowait + irq + softirq + steal
        out[parts[0]] = CpuSample(idle=idle + iowait, total=total)
    return out


def idle_cores_between(before: Mapping[str, CpuSample], after: Mapping[str, CpuSample],
                       cpus: set[int] | None = None) -> float | None:
    """Cores idle between two /proc/stat snapshots, counting only CPUs in ``cpus``.

    Each allowed CPU contributes its idle fraction ``d_idle / d_total`` (in [0, 1]). When the
    per-CPU lines are missing (some containers hide them), the aggregate line's idle fraction
    times the number of allowed CPUs is used. None when nothing advanced (window too short).

    Args:
        before, after: `parse_proc_stat` results, ``after`` taken later.
        cpus: allowed CPU numbers (``os.sched_getaffinity(0)``); None = every CPU listed.
    """
    per_cpu = {int(k[3:]): k for k in after if k != _ALL_SPEC and k[3:].isdigit() and k in before}
    wanted = set(per_cpu) if cpus is None else set(cpus)
    if wanted and wanted <= set(per_cpu):
        free, seen = 0.0, False
        for c in wanted:
            k = per_cpu[c]
            dt = after[k].total - before[k].total
            if dt > 0:
                seen = True
                free += min(1.0, max(0.0, (after[k].idle - before[k].idle) / dt))
            # dt == 0: no tick on this CPU in the window (tickless idle): count it as idle
            else:
                free += 1.0
        return free if seen else None
    if _ALL_SPEC in before and _ALL_SPEC in after:
        dt = after[_ALL_SPEC].total - before[_ALL_SPEC].total
        if dt <= 0:
            return None
        frac = min(1.0, max(0.0, (after[_ALL_SPEC].idle - before[_ALL_SPEC].idle) / dt))
        n = len(wanted) if wanted else max(1, len(per_cpu))
        return frac * n
    return None


# ---------------------------------------------------------------------------------- cgroups
def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` (``"QUOTA PERIOD"`` or ``"max PERIOD"``) -> cores, None = no limit."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` -> cores, None = no limit (quota -1)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup", self_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota (in cores) over this process's cgroup and its ancestors; None = none.

    Args:
        root: the cgroup mount.
        self_cgroup: text of /proc/self/cgroup (read when None); its ``0::/path`` line locates
            our cgroup v2 folder. Inside a cgroup namespace that path is ``/`` (the root files).
    """
    root = Path(root)
    if self_cgroup is None:
        self_cgroup = _read(Path("/proc/self/cgroup")) or ""
    limits: list[float] = []
    # cgroup v2: our folder and every ancestor up to the mount
    v2_path = next((ln.split("::", 1)[1].strip() for ln in self_cgroup.splitlines() if ln.startswith("0::")), "/")
    folder = root / v2_path.strip("/") if v2_path.strip("/") else root
    while True:
        text = _read(folder / "cpu.max")
        if text is not None and (lim := parse_cpu_max(text)) is not None:
            limits.append(lim)
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    # cgroup v1: the cpu controller's folder (as mounted in a container: the root of that controller)
    for ctl in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        q, p = _read(root / ctl / "cpu.cfs_quota_us"), _read(root / ctl / "cpu.cfs_period_us")
        if q is not None and p is not None and (lim := parse_cfs_quota(q, p)) is not None:
            limits.append(lim)
    return min(limits) if limits else None


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _read_proc_stat() -> dict[str, CpuSample]:
    return parse_proc_stat(Path("/proc/stat").read_text())


# ---------------------------------------------------------------------------------- the measure
def usable_cores(affinity: set[int] | None, quota: float | None) -> float:
    """Cores this process may use: its affinity set (or os.cpu_count()), capped by the cgroup quota."""
    n = float(len(affinity)) if affinity else float(os.cpu_count() or 1)
    return min(n, quota) if quota is not None else n


def free_cores(window_s: float = WINDOW_S, *, reader: Callable[[], dict[str, CpuSample]] = _read_proc_stat,
               sleep: Callable[[float], None] = time.sleep, affinity: set[int] | None | Literal["auto"] = "auto",
               quota: float | None | Literal["auto"] = "auto",
               loadavg: Callable[[], float] | None = None) -> tuple[float, float]:
    """``(cores, free)``: cores usable by this process and how many of them were idle over the window.

    Call it while this process is idle (between units of work): nothing of ours is subtracted.
    ``free`` = sum over allowed CPUs of their idle fraction in ``/proc/stat`` over ``window_s``,
    capped by ``cores``. If /proc/stat cannot be read: ``cores - loadavg(1 min)``, floored at 0.

    Args:
        window_s: sampling window (seconds).
        reader: returns a `parse_proc_stat` snapshot (tests inject a pair of snapshots).
        sleep: waits between the two snapshots (tests inject a no-op).
        affinity: allowed CPUs; "auto" = ``os.sched_getaffinity(0)``.
        quota: cgroup CPU quota in cores, None = none; "auto" = `cgroup_cpu_limit()`.
        loadavg: the fallback's 1-minute load average; None = ``os.getloadavg()[0]``.
    """
    aff = _affinity() if affinity == "auto" else affinity
    q = cgroup_cpu_limit() if quota == "auto" else quota
    cores = usable_cores(aff, q)
    idle: float | None
    try:
        before = reader()
        sleep(window_s)
        after = reader()
        idle = idle_cores_between(before, after, aff)
    except OSError:
        idle = None
    if idle is None:
        load = loadavg() if loadavg is not None else (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
        idle = max(0.0, cores - load)
    return cores, min(cores, idle)


# ---------------------------------------------------------------------------------- the choice
def _check_requested(requested: object) -> int | None:
    if requested is None or requested == "auto":
        return None
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise UserError(f"num_threads must be a positive integer, 'auto' or null, got {requested!r}")
    return requested


def omp_num_threads(env: Mapping[str, str]) -> int | None:
    """The user's OMP_NUM_THREADS (its first level if a list such as ``4,2``), None when unset."""
    raw = env.get("OMP_NUM_THREADS", "").strip()
    if not raw:
        return None
    first = raw.split(",", 1)[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise UserError(f"OMP_NUM_THREADS must be a positive integer, got {raw!r}")
    return int(first)


def threads_for(free: float, cores: float, processes: int = 1) -> int:
    """Threads per process from free cores: round ``free / processes`` down unless within
    ``1 - ROUND_UP_FROM`` of the next integer; at least 1, at most ``cores / processes``."""
    per = free / max(1, processes)
    n = math.floor(per + (1.0 - ROUND_UP_FROM) + 1e-9)
    return max(1, min(n, max(1, math.floor(cores / max(1, processes)))))


def decide_threads(requested: Requested = "auto", *, env: Mapping[str, str] | None = None,
                   measure: Callable[[], tuple[float, float]] = free_cores) -> ThreadChoice:
    """`choose_threads` with its reasons (for the log line).

    Order: an explicit ``requested`` int; else the user's OMP_NUM_THREADS; else measured free
    cores (`free_cores`), shared among this node's processes (``LOCAL_WORLD_SIZE`` under
    torchrun / accelerate).
    """
    env = os.environ if env is None else env
    n = _check_requested(requested)
    if n is not None:
        return ThreadChoice(n, float("nan"), None, "config")
    omp = omp_num_threads(env)
    if omp is not None:
        return ThreadChoice(omp, float("nan"), None, "OMP_NUM_THREADS")
    cores, free = measure()
    try:
        procs = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        procs = 1
    return ThreadChoice(threads_for(free, cores, procs), cores, free, "/proc/stat")


def choose_threads(requested: Requested = "auto", *, env: Mapping[str, str] | None = None,
                   measure: Callable[[], tuple[float, float]] = free_cores) -> int:
    """torch threads to use: ``requested`` if an int >= 1; for None / "auto" the user's
    OMP_NUM_THREADS if set, else the cores free right now (see `decide_threads`).

    Raises:
        UserError: ``requested`` is not None, "auto" or an int >= 1; OMP_NUM_THREADS is not a
            positive integer.
    """
    return decide_threads(requested, env=env, measure=measure).threads


def apply_threads(requested: Requested = "auto", *, quiet_if_unchanged: bool = False, announce: bool = True,
                  env: Mapping[str, str] | None = None,
                  measure: Callable[[], tuple[float, float]] = free_cores) -> int:
    """Choose the thread count and set it with ``torch.set_num_threads``; log one INFO line
    (cores, free, chosen). Returns the count.

    Args:
        requested: int >= 1, "auto" or None (= auto).
        quiet_if_unchanged: log at DEBUG (not INFO) when the count is what torch already uses
            (re-checks between units log only changes).
        announce: False logs at DEBUG: the CLI commands set threads before their recipe has
            validated its inputs, and a refusal must be the only line on stderr (the recipes'
            start lines report the count instead).
    """
    import torch

    choice = decide_threads(requested, env=env, measure=measure)
    before = torch.get_num_threads()
    if choice.threads != before:
        torch.set_num_threads(choice.threads)
    level = logging.DEBUG if not announce or (quiet_if_unchanged and choice.threads == before) else logging.INFO
    if choice.free is None:
        log.log(level, "torch threads: %d (from %s)", choice.threads, choice.reason)
    else:
        log.log(level, "torch threads: %d (cores %.1f, free %.2f, was %d)", choice.threads, choice.cores,
                choice.free, before)
    return choice.threads
