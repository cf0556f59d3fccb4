"""The unit scheduler: runs an experiment's units in dependency order, as many at once as the
executor has slots -- in this process (1 worker: the serial lab), in local worker processes
(``--workers N``) or as Ray tasks on a cluster (``--executor ray``).

    declare units (key, spec, fn + args, after=[keys]) and flows (generators in this process that
    yield units and receive their summaries: KL calibration, then the policies at the found KL
    coefficient)
        │
        ▼
    Scheduler.run: a unit whose ``after`` units are finished is cached (valid ``done``) or
    submitted; finished summaries feed the flows; the bar shows running / run / cached and an
    ETA from the units' measured times
        │
        ▼
    Backend: Inline (this process) | LocalProcesses (spawned workers, one unit each at a time;
    a killed worker's unit is retried) | Ray (tasks with num_cpus / num_gpus; Ray retries a
    task whose worker died)

Guarantees: a unit's ``done`` is written last, atomically (`execute_unit`), so a killed worker
never leaves half a unit in the cache; one `experiment run` per folder (`utils.FolderLock` on
``OUTPUT/.lock``); Ctrl-C stops every worker and leaves the folder resumable. The numbers do not
depend on the executor or the order: every unit seeds itself and reads only its ``after`` units'
folders (at a fixed thread count per unit the results are identical).
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Literal, Mapping

from robust_rlhf.errors import UserError
from robust_rlhf.experiments.units import Unit, execute_unit, fingerprint, read_done, root_relative

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
MAX_AUTO_WORKERS = 8
"""``--workers`` auto never starts more local workers than this (each holds its own models)"""
LOCK_FILE = ".lock"
"""one `experiment run` per folder: `robust_rlhf.utils.FolderLock` on ``OUTPUT/.lock`` (it holds the
holder's ``pid N on HOST``, named when a second run is refused)"""

Flow = Generator[list[Unit], list[dict], Any]
"""A generator run in the scheduling process: it yields a list of units (run concurrently) and
receives their summaries, in the same order, when all of them are finished."""


# ============================================================================ what to run where
@dataclass(frozen=True)
class Execution:
    """Where the units of an experiment run (never part of a unit's fingerprint: the results do
    not depend on it)."""

    workers: int | Literal["auto"] = 1
    """units at once: 1 = one after another in this process; auto = from the free cores
    (`plan_workers`); with ray: the most units submitted at once (auto = as many as are ready)"""
    executor: str = "local"
    """local (this machine) or ray"""
    address: str | None = None
    """Ray cluster address (``auto``, ``ray://head:10001``); None = a local Ray (``ray.init()``)"""
    gpus_per_unit: float | None = None
    """Ray: GPUs per unit (fractional: units share a GPU); None = 0.25 when the cluster has GPUs
    and the experiment's device is not cpu, else 0"""
    retries: int = 2
    """a unit whose worker died (killed, out of memory) is run again up to this many times"""

    def __post_init__(self) -> None:
        if self.workers != "auto" and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                       or self.workers < 1):
            raise UserError(f"--workers must be a positive integer or auto, got {self.workers!r}")
        if self.executor not in EXECUTORS:
            raise UserError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        cores = os.cpu_count() or 1
        if self.executor == "local" and self.workers != "auto" and self.workers > cores:
            # each local worker is a process holding its own models: more than the cores only thrash
            # (a Ray cluster's size is not known up front, so --executor ray takes any positive N)
            raise UserError(f"--workers {self.workers}: this machine has {cores} CPU cores; give at most {cores} "
                            "local workers (or auto), or --executor ray for a cluster")
        if self.address is not None and self.executor != "ray":
            raise UserError("--address needs --executor ray")
        if self.gpus_per_unit is not None and not 0 <= self.gpus_per_unit <= 8:
            raise UserError(f"--gpus-per-unit must be in [0, 8], got {self.gpus_per_unit}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise UserError(f"retries must be an integer >= 0, got {self.retries!r}")


def plan_workers(workers: int | Literal["auto"], num_threads: int | str | None, *,
                 env: Mapping[str, str] | None = None,
                 measure: Callable[[], tuple[float, float]] | None = None) -> tuple[int, int | None, str]:
    """``(workers, threads per unit, reason)`` for local execution, so that workers x threads
    stays within the free cores (`robust_rlhf.threads`).

    Threads per unit: ``num_threads`` when an int, else the user's OMP_NUM_THREADS, else the free
    cores shared among the workers (`threads_for`). ``threads`` None means 1 worker that
    re-measures its threads before every unit (the serial lab). Workers auto: free cores //
    threads per unit with a fixed count, else one worker per free core; at most
    `MAX_AUTO_WORKERS`.

    Args:
        workers: an int >= 1 or "auto".
        num_threads: the experiment's ``num_threads`` (int, "auto" or None).
        env: environment (OMP_NUM_THREADS); None = os.environ.
        measure: ``() -> (cores, free)``; None = `robust_rlhf.threads.free_cores`.
    """
    from robust_rlhf.threads import ROUND_UP_FROM, _check_requested, free_cores, omp_num_threads, threads_for

    env = os.environ if env is None else env
    fixed = _check_requested(num_threads) or omp_num_threads(env)
    measured: tuple[float, float] | None = None

    def cores_free() -> tuple[float, float]:
        nonlocal measured
        if measured is None:
            measured = (measure or free_cores)()
        return measured

    if workers == "auto":
        cores, free = cores_free()
        usable = math.floor(free + (1.0 - ROUND_UP_FROM) + 1e-9)
        n = usable // fixed if fixed else usable
        workers = max(1, min(MAX_AUTO_WORKERS, n))
        reason = f"{free:.1f} of {cores:.0f} cores free"
    else:
        reason = "--workers"
    if workers == 1:
        return 1, fixed, reason
    if fixed:
        return workers, fixed, reason
    cores, free = cores_free()
    return workers, threads_for(free, cores, workers), f"{reason}; {free:.1f} free cores shared by {workers} workers"


# ============================================================================ outcomes and backends
@dataclass
class Outcome:
    """What became of one submitted unit."""

    key: str
    done: dict | None = None
    """the done record when it finished"""
    error: BaseException | None = None
    """the exception the unit raised (not retried)"""
    died: str | None = None
    """why the worker vanished (killed, out of memory): the unit is retried"""


class InlineBackend:
    """One unit at a time, in this process: the serial lab (``--workers 1``)."""

    slots = 1

    def __init__(self, root: Path, before_run: Callable[[], None] | None = None) -> None:
        self.root = root
        self.before_run = before_run
        self.queue: list[Unit] = []
        self.describe = {"executor": "local", "workers": 1, "threads_per_unit": "this process's"}

    def submit(self, unit: Unit) -> None:
        self.queue.append(unit)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        unit = self.queue.pop(0)
        if self.before_run is not None:
            self.before_run()
        try:
            return [Outcome(unit.key, done=execute_unit(unit, self.root))]
        except Exception as e:  # KeyboardInterrupt and friends stop the run as they are
            return [Outcome(unit.key, error=e)]

    def close(self, kill: bool) -> None:
        self.queue.clear()


def _worker_main(conn, threads: int, log_level: int, parent: int, gpu: str | None) -> None:
    """A local worker: runs the units sent to it, one at a time, answering each with its done
    record or its exception. Ignores SIGINT (the parent decides) and exits when the parent does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for h in logging.getLogger().handlers:
        h.setLevel(max(log_level, logging.WARNING))  # the terminal gets warnings; each unit's log.txt gets the rest

    def watchdog() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)  # orphaned: never keep writing a unit nobody waits for

    threading.Thread(target=watchdog, daemon=True).start()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        unit, root = msg
        if "torch" in sys.modules:  # else torch takes OMP_NUM_THREADS when a unit imports it
            sys.modules["torch"].set_num_threads(threads)
        try:
            reply: tuple = ("done", execute_unit(unit, root))
        except BaseException as e:  # noqa: BLE001  (every failure goes back to the parent)
            tb = traceback.format_exc()
            reply = ("error", e, tb)
        try:
            conn.send(reply)
        except Exception:  # the exception does not pickle: send its text
            conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}"), reply[2]))


class _Worker:
    def __init__(self, ctx, index: int, threads: int, gpu: str | None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, name=f"robust-rlhf-unit-worker-{index}",
                                   args=(child, threads, logging.getLogger("robust_rlhf").getEffectiveLevel(),
                                         os.getpid(), gpu), daemon=True)
        self.process.start()
        child.close()
        self.unit: Unit | None = None


class LocalProcessBackend:
    """``workers`` spawned processes on this machine, each running one unit at a time with
    ``threads`` torch threads. A worker that dies mid-unit is replaced and its unit reported as
    died (the scheduler retries it); the others keep running."""

    def __init__(self, root: Path, workers: int, threads: int) -> None:
        import multiprocessing as mp

        self.root = root
        self.slots = workers
        self.threads = threads
        self.ctx = mp.get_context("spawn")
        self.idle: list[_Worker] = []
        self.busy: list[_Worker] = []
        self.started = 0
        self.gpus = _visible_gpus()
        self.describe = {"executor": "local", "workers": workers, "threads_per_unit": threads}

    def submit(self, unit: Unit) -> None:
        if self.idle:
            w = self.idle.pop()
        else:
            gpu = self.gpus[self.started % len(self.gpus)] if len(self.gpus) > 1 else None
            w = _Worker(self.ctx, self.started, self.threads, gpu)
            self.started += 1
        w.unit = unit
        w.conn.send((unit, str(self.root)))
        self.busy.append(w)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        from multiprocessing.connection import wait

        waitables = [w.conn for w in self.busy] + [w.process.sentinel for w in self.busy]
        wait(waitables, timeout)
        out: list[Outcome] = []
        for w in list(self.busy):
            assert w.unit is not None
            key = w.unit.key
            reply = None
            try:
                if w.conn.poll():
                    reply = w.conn.recv()
                elif w.process.is_alive():
                    continue
            except (EOFError, OSError):
                reply = None
            self.busy.remove(w)
            if reply is None:  # the process is gone without an answer
                w.process.join(timeout=5)
                out.append(Outcome(key, died=f"worker pid {w.process.pid} exited with {w.process.exitcode}"))
                w.conn.close()
                continue
            w.unit = None
            self.idle.append(w)
            if reply[0] == "done":
                out.append(Outcome(key, done=reply[1]))
            else:
                err: BaseException = reply[1]
                err.add_note(f"(in unit {key}, worker pid {w.process.pid}; its traceback:)\n{reply[2]}")
                out.append(Outcome(key, error=err))
        return out

    def close(self, kill: bool) -> None:
        workers = self.idle + self.busy
        for w in workers:
            if kill or w.unit is not None:
                w.process.terminate()
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    w.process.terminate()
        for w in workers:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()
        self.idle, self.busy = [], []


def _visible_gpus() -> list[str]:
    """CUDA device ids a worker may be pinned to (round-robin over local workers)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


def _ray_execute(unit: Unit, root: str, threads: int) -> dict:
    """A Ray task: one unit on whichever node Ray placed it (the unit folder is on a shared path)."""
    import torch

    torch.set_num_threads(threads)
    return execute_unit(unit, root)


class RayBackend:
    """The units as Ray tasks with ``num_cpus = threads`` and ``num_gpus = gpus``. Connects to
    ``address`` (or starts a local Ray when none is running and no address is given). The unit
    folders must be on a path every node sees at the same place (NFS or similar). Ray retries a
    task whose worker died (``max_retries``); a unit's own exception is not retried."""

    def __init__(self, root: Path, address: str | None, threads: int, gpus: float | None, slots: int | None,
                 retries: int, device: str) -> None:
        try:
            import ray
        except ImportError:
            raise UserError('--executor ray needs Ray: pip install -e ".[ray]"') from None
        self.ray = ray
        self.owns = not ray.is_initialized()
        if self.owns:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        if gpus is None:
            has_gpu = ray.cluster_resources().get("GPU", 0) > 0
            gpus = 0.25 if has_gpu and device != "cpu" else 0.0
        self.root = root
        self.threads = threads
        self.slots = slots or 1_000_000
        self.task = ray.remote(_ray_execute).options(num_cpus=threads, num_gpus=gpus, max_retries=retries,
                                                     retry_exceptions=False)
        self.refs: dict[Any, str] = {}
        self.describe = {"executor": "ray", "workers": slots or "auto", "threads_per_unit": threads,
                         "gpus_per_unit": gpus}
        log.info("ray: %s, %d CPU(s) and %.2g GPU per unit", ray.cluster_resources(), threads, gpus)

    def submit(self, unit: Unit) -> None:
        self.refs[self.task.remote(unit, str(self.root), self.threads)] = unit.key

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        ray = self.ray
        ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out: list[Outcome] = []
        for ref in ready:
            key = self.refs.pop(ref)
            try:
                out.append(Outcome(key, done=ray.get(ref)))
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                out.append(Outcome(key, error=cause))
            except ray.exceptions.RayError as e:  # worker or node lost beyond Ray's own retries
                out.append(Outcome(key, error=RuntimeError(f"unit {key}: {type(e).__name__}: {e}")))
        return out

    def close(self, kill: bool) -> None:
        if kill:
            for ref in self.refs:
                self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.owns:
            self.ray.shutdown()


def make_backend(execution: Execution, root: Path, num_threads: int | str | None, device: str,
                 before_run: Callable[[], None] | None = None):
    """The backend for ``execution`` (and the thread count of its units)."""
    if execution.executor == "ray":
        from robust_rlhf.threads import _check_requested, omp_num_threads

        threads = _check_requested(num_threads) or omp_num_threads(os.environ) or 1
        slots = None if execution.workers == "auto" else execution.workers
        return RayBackend(root, execution.address, threads, execution.gpus_per_unit, slots, execution.retries, device)
    workers, threads, reason = plan_workers(execution.workers, num_threads)
    if workers == 1:
        return InlineBackend(root, before_run)
    assert threads is not None
    log.info("%d local workers x %d torch threads per unit (%s)", workers, threads, reason)
    return LocalProcessBackend(root, workers, threads)


# ============================================================================ progress
def eta_seconds(remaining: Mapping[str, int], running: Iterable[tuple[str, float]], measured: Mapping[str, list[float]],
                slots: int) -> float | None:
    """Seconds until every unit is finished, from the units' measured times.

    Each stage's units are expected to take the mean of that stage's measured units (all stages'
    mean where a stage has none yet); a running unit its expectation minus its elapsed time (at
    least 0); the work is shared by ``slots`` units at once. None before anything was measured.

    Args:
        remaining: stage -> units not yet started.
        running: (stage, seconds elapsed) of each running unit.
        measured: stage -> seconds of its finished units (this run's and cached ones').
        slots: units at once (>= 1).
    """
    all_times = [s for v in measured.values() for s in v]
    if not all_times:
        return None
    overall = sum(all_times) / len(all_times)

    def mean(stage: str) -> float:
        v = measured.get(stage)
        return sum(v) / len(v) if v else overall

    work = sum(n * mean(stage) for stage, n in remaining.items())
    work += sum(max(0.0, mean(stage) - elapsed) for stage, elapsed in running)
    return work / max(1, slots)


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ============================================================================ the scheduler
class UnitFailed(RuntimeError):
    """A unit's worker kept dying (more than ``retries`` times)."""


class Scheduler:
    """Runs declared units (and flows) to completion on a backend.

    Args:
        root: the units/ folder.
        backend: `InlineBackend`, `LocalProcessBackend` or `RayBackend` (see `make_backend`).
        total: planned number of units (the bar; flows may add or `grow` it).
        progress: show the bar.
        on_unit_start: test hook, called in this process with a unit's key just before it is
            submitted (not for cached units).
        retries: runs again a unit whose worker died, at most this many times.
    """

    def __init__(self, root: Path, backend, total: int = 0, progress: bool = True,
                 on_unit_start: Callable[[str], None] | None = None, retries: int = 2) -> None:
        from tqdm.auto import tqdm

        self.root = root
        self.backend = backend
        self.on_unit_start = on_unit_start
        self.retries = retries
        self.units: dict[str, Unit] = {}
        self.priority: dict[str, tuple[int, int]] = {}
        self.waiting: list[str] = []
        self.running: dict[str, float] = {}
        self.summaries: dict[str, dict] = {}
        self.executed: list[str] = []
        self.skipped: list[str] = []
        self.attempts: dict[str, int] = {}
        self.measured: dict[str, list[float]] = {}
        self.flows: list[tuple[Flow, int, list[str] | None]] = []
        self.bar = tqdm(total=total, desc="experiment", unit="unit", disable=not progress, dynamic_ncols=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    # ---------------------------------------------------------------- declaring
    def add(self, unit: Unit, priority: int = 0) -> Unit:
        """Declare a unit (once per key). Higher ``priority`` goes first among ready units (the
        flows' units: they gate what comes after them); then declaration order."""
        if fingerprint(root_relative(unit.spec, self.root)) != unit.fingerprint:
            raise RuntimeError(f"unit {unit.key!r}: its spec names a path inside {self.root}; write it with "
                               "root_relative (a fingerprint must not change when the folder moves)")
        known = self.units.get(unit.key)
        if known is not None:
            if known.fingerprint != unit.fingerprint:
                raise RuntimeError(f"unit {unit.key!r} declared twice with different inputs")
            return known
        self.units[unit.key] = unit
        self.priority[unit.key] = (-priority, len(self.priority))
        done = read_done(self.root, unit)
        if done is not None:
            self.summaries[unit.key] = done.get("summary") or {}
            self.skipped.append(unit.key)
            self._measure(unit.stage, done.get("seconds"))
            self.bar.update(1)
        else:
            self.waiting.append(unit.key)
        return unit

    def add_flow(self, flow: Flow, priority: int = 1) -> None:
        """Declare a flow: a generator that yields lists of units and receives their summaries."""
        self.flows.append((flow, priority, None))

    def grow(self, n: int) -> None:
        """Change the planned number of units by ``n`` (a calibration that stopped early)."""
        self.bar.total += n
        self.bar.refresh()

    # ---------------------------------------------------------------- running
    def run(self) -> None:
        """Run everything declared (and whatever the flows add) to completion. On any exception
        (a unit's, Ctrl-C) the workers are stopped and the exception raised: finished units stay
        cached and unfinished ones resume on the next run."""
        try:
            self._advance_flows()
            while True:
                self._submit_ready()
                if not self.running:
                    if self.waiting or self.flows:
                        stuck = ", ".join(f"{k} (after {', '.join(self.units[k].after)})" for k in self.waiting)
                        raise RuntimeError(f"units wait for units that never finish: {stuck or 'a flow'}")
                    break
                for outcome in self.backend.wait(timeout=5.0):
                    self._finished(outcome)
                self._advance_flows()
                self._show()
        except BaseException:
            self.backend.close(kill=True)
            raise
        finally:
            self.bar.close()
        self.backend.close(kill=False)

    def _ready(self, key: str) -> bool:
        return all(a in self.summaries for a in self.units[key].after)

    def _submit_ready(self) -> None:
        ready = [(self.priority[k], k) for k in self.waiting if self._ready(k)]
        heapq.heapify(ready)
        while ready and len(self.running) < self.backend.slots:
            _, key = heapq.heappop(ready)
            unit = self.units[key]
            self.waiting.remove(key)
            if self.on_unit_start is not None:
                self.on_unit_start(key)
            self.attempts[key] = self.attempts.get(key, 0) + 1
            self.running[key] = time.time()
            n = len(self.executed) + len(self.skipped) + len(self.running)
            log.info("[%d/%d] %s: %s%s", n, self.bar.total, unit.stage, key,
                     f" (attempt {self.attempts[key]})" if self.attempts[key] > 1 else "")
            self._show(current=f"{unit.stage}: {key}")
            self.backend.submit(unit)

    def _finished(self, o: Outcome) -> None:
        started = self.running.pop(o.key)
        unit = self.units[o.key]
        if o.error is not None:
            raise o.error
        if o.died is not None:
            if self.attempts[o.key] > self.retries:
                raise UnitFailed(f"unit {o.key}: its worker died {self.attempts[o.key]} times ({o.died}); the folder "
                                 "is left resumable -- check memory and the unit's log.txt, then run again")
            log.warning("%s: %s mid-unit; running it again (its folder has no done marker)", o.key, o.died)
            self.waiting.insert(0, o.key)
            return
        assert o.done is not None
        self.summaries[o.key] = o.done.get("summary") or {}
        self.executed.append(o.key)
        self._measure(unit.stage, o.done.get("seconds", time.time() - started))
        self.bar.update(1)
        log.info("%s finished in %.0f s", o.key, o.done.get("seconds", 0.0))

    def _advance_flows(self) -> None:
        """Send finished summaries to the flows waiting on them; declare what they yield next."""
        progressed = True
        while progressed:
            progressed = False
            for i, (flow, priority, awaited) in enumerate(list(self.flows)):
                if awaited is not None and not all(k in self.summaries for k in awaited):
                    continue
                try:
                    units = next(flow) if awaited is None else flow.send([self.summaries[k] for k in awaited])
                except StopIteration:
                    self.flows[i] = None  # type: ignore[call-overload]
                    progressed = True
                    continue
                keys = [self.add(u, priority).key for u in units]
                self.flows[i] = (flow, priority, keys)
                progressed = True
            self.flows = [f for f in self.flows if f is not None]

    # ---------------------------------------------------------------- progress
    def _measure(self, stage: str, seconds: float | None) -> None:
        if seconds is not None:
            self.measured.setdefault(stage, []).append(float(seconds))

    def _show(self, current: str | None = None) -> None:
        if self.bar.disable:
            return
        now = time.time()
        remaining: dict[str, int] = {}
        for k in self.waiting:
            remaining[self.units[k].stage] = remaining.get(self.units[k].stage, 0) + 1
        undeclared = self.bar.total - len(self.units)
        if undeclared > 0:  # planned units the flows have not yielded yet (calibrated policies)
            remaining["policies"] = remaining.get("policies", 0) + undeclared
        eta = eta_seconds(remaining, [(self.units[k].stage, now - t) for k, t in self.running.items()],
                          self.measured, min(self.backend.slots, max(1, len(self.running))))
        if current is not None:
            self.bar.set_description_str(current[:60])
        self.bar.set_postfix_str(f"running {len(self.running)}, run {len(self.executed)}, "
                                 f"cached {len(self.skipped)}, ETA {_fmt_s(eta)}", refresh=True)
