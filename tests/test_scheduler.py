"""The unit scheduler: dependency order, caching, flows, worker processes (a killed worker's unit is
retried, never cached half-done), the folder lock across processes, Ctrl-C and resume, worker and
thread planning, the ETA -- and (tests/test_experiment.py) the same results.json from 2 workers
and from Ray as from the serial lab."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from robust_rlhf.errors import UserError
from robust_rlhf.experiments.scheduler import (
    LOCK_FILE,
    Execution,
    InlineBackend,
    LocalProcessBackend,
    Scheduler,
    UnitFailed,
    eta_seconds,
    plan_workers,
)
from robust_rlhf.experiments.units import DONE_FILE, LOG_FILE, Unit, read_done
from robust_rlhf.utils import FolderLock


# ----------------------------------------------------------------------------- unit functions (module level: they travel)
def write_sum(folder: Path, value: int, inputs: list[str]) -> dict:
    """value + the values of the input units (read from their folders)."""
    total = value + sum(json.loads((folder.parent / k / "value.json").read_text())["value"] for k in inputs)
    (folder / "value.json").write_text(json.dumps({"value": total, "pid": os.getpid()}))
    with open(folder.parent / "order.txt", "a") as f:
        f.write(folder.name + "\n")
    return {"value": total}


def die_once(folder: Path, marker: str) -> dict:
    """First attempt: leave a partial file and SIGKILL this process. Second: record what it found, finish."""
    m = Path(marker)
    if not m.exists():
        m.write_text(str(os.getpid()))
        (folder / "partial.txt").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
    (folder / "second.json").write_text(json.dumps({"done_existed": (folder / DONE_FILE).exists(),
                                                    "partial_existed": (folder / "partial.txt").exists(),
                                                    "first_pid": int(m.read_text()), "pid": os.getpid()}))
    (folder / "value.json").write_text(json.dumps({"value": 7}))
    return {"value": 7}


def always_die(folder: Path) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def fail(folder: Path, message: str) -> dict:
    raise UserError(message)


def log_and_return(folder: Path) -> dict:
    import logging

    logging.getLogger("robust_rlhf.test").info("inside the unit %s", folder.name)
    return {}


def _unit(key: str, value: int = 1, after: tuple[str, ...] = ()) -> Unit:
    return Unit(key, "test", {"key": key, "value": value, "after": list(after)}, write_sum,
                {"value": value, "inputs": list(after)}, after=after)


def _scheduler(root: Path, backend=None, **kw) -> Scheduler:
    return Scheduler(root, backend or InlineBackend(root), progress=False, **kw)


# ----------------------------------------------------------------------------- the graph
def test_units_must_be_module_level_functions():
    def closure(folder):
        return {}

    with pytest.raises(TypeError, match="module-level function"):
        Unit("x", "test", {}, closure)
    with pytest.raises(TypeError, match="module-level function"):
        Unit("x", "test", {}, lambda folder: {})


def test_dependency_order_cache_and_summaries(tmp_path):
    """a = 1; b = 2 + a = 3; c = 1 + a + b = 5 (by hand); a re-run runs nothing."""
    s = _scheduler(tmp_path)
    s.add(_unit("c", 1, ("a", "b")))  # declared first, still runs last
    s.add(_unit("a", 1))
    s.add(_unit("b", 2, ("a",)))
    s.run()
    assert s.executed == ["a", "b", "c"] and s.summaries["c"] == {"value": 5}
    assert (tmp_path / "order.txt").read_text().split() == ["a", "b", "c"]
    again = _scheduler(tmp_path)
    for u in (_unit("c", 1, ("a", "b")), _unit("a", 1), _unit("b", 2, ("a",))):
        again.add(u)
    again.run()
    assert again.executed == [] and sorted(again.skipped) == ["a", "b", "c"] and again.summaries["c"] == {"value": 5}


def test_flows_yield_units_after_earlier_summaries(tmp_path):
    """A flow sees each batch's summaries before yielding the next (as KL calibration does)."""
    seen = []

    def flow():
        (first,) = yield [_unit("f1", 3, ("a",))]
        seen.append(first["value"])  # 3 + 1
        second = yield [_unit(f"f2_{i}", first["value"] * i) for i in (1, 2)]
        seen.append([x["value"] for x in second])

    s = _scheduler(tmp_path)
    s.add(_unit("a", 1))
    s.add_flow(flow())
    s.run()
    assert seen == [4, [4, 8]]
    assert s.executed.index("a") < s.executed.index("f1") < s.executed.index("f2_1")


def test_unknown_dependency_is_reported(tmp_path):
    s = _scheduler(tmp_path)
    s.add(_unit("a", 1, ("nowhere",)))
    with pytest.raises(RuntimeError, match=r"a \(after nowhere\)"):
        s.run()


def test_before_run_hook_runs_before_each_executed_unit_only(tmp_path):
    """The lab re-checks its torch threads before every unit that runs, never for a cached one."""
    calls: list[str] = []

    def run(keys):
        s = _scheduler(tmp_path, InlineBackend(tmp_path, lambda: calls.append(f"check#{len(calls)}")))
        for k in keys:
            s.add(_unit(k))
        s.run()
        return s

    run(["a", "b"])
    assert calls == ["check#0", "check#1"]
    s = run(["a"])
    assert calls == ["check#0", "check#1"] and s.skipped == ["a"]


def test_unit_log_is_in_its_folder(tmp_path):
    s = _scheduler(tmp_path)
    s.add(Unit("logged", "test", {}, log_and_return))
    s.run()
    text = (tmp_path / "logged" / LOG_FILE).read_text()
    assert "inside the unit logged" in text and "logged finished in" in text


# ----------------------------------------------------------------------------- worker processes
def test_two_workers_run_independent_units_in_separate_processes(tmp_path):
    s = _scheduler(tmp_path, LocalProcessBackend(tmp_path, workers=2, threads=1))
    for k in ("a", "b", "c"):
        s.add(_unit(k, 1))
    s.add(_unit("d", 1, ("a", "b", "c")))
    s.run()
    assert s.summaries["d"] == {"value": 4}
    pids = {json.loads((tmp_path / k / "value.json").read_text())["pid"] for k in "abcd"}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_killed_worker_unit_is_retried_and_never_cached_half(tmp_path):
    """The unit SIGKILLs its own worker on the first attempt, after writing a partial file: no done
    marker remains from it, the unit runs again in a new process and its dependant runs after."""
    marker = tmp_path / "killed-once"
    root = tmp_path / "units"
    s = _scheduler(root, LocalProcessBackend(root, workers=2, threads=1))
    s.add(_unit("a", 1))
    s.add(Unit("dies", "test", {"k": "dies"}, die_once, {"marker": str(marker)}, after=("a",)))
    s.add(_unit("after", 1, ("dies",)))
    s.run()
    second = json.loads((root / "dies" / "second.json").read_text())
    assert second["done_existed"] is False  # the killed attempt left no done marker
    assert second["partial_existed"] is True and second["pid"] != second["first_pid"]
    assert s.attempts["dies"] == 2 and s.executed.count("dies") == 1
    assert s.summaries["after"] == {"value": 8}  # 1 + the retried unit's 7
    assert read_done(root, s.units["dies"])["summary"] == {"value": 7}


def test_worker_dying_every_time_fails_after_the_retries(tmp_path):
    s = _scheduler(tmp_path, LocalProcessBackend(tmp_path, workers=2, threads=1), retries=1)
    s.add(Unit("doomed", "test", {}, always_die))
    with pytest.raises(UnitFailed, match="unit doomed: its worker died 2 times"):
        s.run()
    assert not (tmp_path / "doomed" / DONE_FILE).exists()


def test_unit_error_in_a_worker_comes_back_as_itself(tmp_path):
    s = _scheduler(tmp_path, LocalProcessBackend(tmp_path, workers=2, threads=1))
    s.add(Unit("bad", "test", {}, fail, {"message": "bad.yaml: key 'x' is wrong"}))
    with pytest.raises(UserError) as e:
        s.run()
    assert str(e.value) == "bad.yaml: key 'x' is wrong"  # what the CLI prints; the worker's traceback is a note
    assert "in unit bad, worker pid" in e.value.__notes__[0] and "in fail" in e.value.__notes__[0]
    assert s.attempts["bad"] == 1  # an exception is not retried


# ----------------------------------------------------------------------------- the folder lock
def test_second_run_on_one_folder_is_refused_across_processes(tmp_path, capsys):
    """Process 1 holds the folder (as a running `experiment run` does); the CLI in this process is
    refused with one line, exit 2, and writes nothing."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from robust_rlhf.experiments.scheduler import LOCK_FILE
        from robust_rlhf.utils import FolderLock
        lock = FolderLock(Path({str(tmp_path)!r}), "`experiment run`", LOCK_FILE)
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(UserError, match=rf"another `experiment run` is using this folder \(pid {holder.pid} on "):
            FolderLock(tmp_path, "`experiment run`", LOCK_FILE)
        from robust_rlhf.cli import main

        assert main(["experiment", "run", "--config", "experiment_tiny", "--output-dir", str(tmp_path),
                     "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"robust-rlhf: error: {tmp_path}: another `experiment run` is using this folder") \
            and "\n" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no config.yaml, no units/
    finally:
        holder.kill()
        holder.wait()
    FolderLock(tmp_path, "`experiment run`", LOCK_FILE).release()  # the holder died: the kernel dropped its lock


# ----------------------------------------------------------------------------- Ctrl-C
_SLOW_GRAPH = """
import signal, sys, time
from pathlib import Path
# Ctrl-C as a terminal delivers it: a test runner started in the background of a non-interactive shell
# (nohup ... &) ignores SIGINT, and an ignored SIGINT is inherited by this child
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
from robust_rlhf.experiments.scheduler import LOCK_FILE, LocalProcessBackend, Scheduler
from robust_rlhf.experiments.units import Unit
from robust_rlhf.utils import FolderLock
import test_scheduler as t
root = Path({root!r})
lock = FolderLock(root, "`experiment run`", LOCK_FILE)
s = Scheduler(root, LocalProcessBackend(root, workers=2, threads=1), progress=False)
s.add(t._unit("a", 1))
for k in ("slow1", "slow2"):
    s.add(Unit(k, "test", {{"k": k}}, t.sleep_then_write, {{"seconds": {seconds}}}, after=("a",)))
s.add(t._unit("z", 1, ("slow1", "slow2")))
print("started", flush=True)
s.run()
print("finished", sorted(s.executed), flush=True)
"""


def sleep_then_write(folder: Path, seconds: float) -> dict:
    (folder / "pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    (folder / "value.json").write_text(json.dumps({"value": 1}))
    return {"value": 1}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_every_worker_and_the_folder_resumes(tmp_path):
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = _SLOW_GRAPH.format(tests=tests, root=str(tmp_path), seconds=60)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    deadline = time.time() + 90
    while not all((tmp_path / k / "pid").exists() for k in ("slow1", "slow2")):
        assert time.time() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.2)
    workers = [int((tmp_path / k / "pid").read_text()) for k in ("slow1", "slow2")]
    p.send_signal(signal.SIGINT)  # to the parent only: it must stop its workers itself
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "KeyboardInterrupt" in err
    time.sleep(0.5)
    assert not any(_alive(w) for w in workers)
    assert (tmp_path / "a" / DONE_FILE).exists()
    assert not (tmp_path / "slow1" / DONE_FILE).exists() and not (tmp_path / "z").exists()
    # resume, in this process (quick units this time; same inputs: the unfinished folders are continued)
    s = _scheduler(tmp_path)
    s.add(_unit("a", 1))
    for k in ("slow1", "slow2"):
        s.add(Unit(k, "test", {"k": k}, sleep_then_write, {"seconds": 0}, after=("a",)))
    s.add(_unit("z", 1, ("slow1", "slow2")))
    s.run()
    assert s.skipped == ["a"] and sorted(s.executed) == ["slow1", "slow2", "z"]
    assert json.loads((tmp_path / "z" / "value.json").read_text())["value"] == 3


# ----------------------------------------------------------------------------- planning
def test_plan_workers_keeps_workers_times_threads_within_free_cores():
    env: dict[str, str] = {}
    # 8 free of 8: auto threads -> 8 workers x 1 thread; 2 workers -> 4 threads each
    assert plan_workers("auto", None, env=env, measure=lambda: (8.0, 8.0))[:2] == (8, 1)
    assert plan_workers(2, "auto", env=env, measure=lambda: (8.0, 8.0))[:2] == (2, 4)
    # num_threads 2 with 5.9 free: 3 workers (5.9 rounds to 6 free cores) x 2
    assert plan_workers("auto", 2, env=env, measure=lambda: (8.0, 5.9))[:2] == (3, 2)
    # nothing free: one worker in this process, re-measuring its threads before each unit
    assert plan_workers("auto", None, env=env, measure=lambda: (2.0, 0.3))[:2] == (1, None)
    # OMP_NUM_THREADS fixes the threads per unit; 64 free cores cap at 8 workers
    assert plan_workers("auto", None, env={"OMP_NUM_THREADS": "4"}, measure=lambda: (64.0, 64.0))[:2] == (8, 4)
    assert plan_workers("auto", None, env={"OMP_NUM_THREADS": "4"}, measure=lambda: (64.0, 13.0))[:2] == (3, 4)


def test_execution_rejects_bad_values():
    with pytest.raises(UserError, match="--workers must be a positive integer or auto, got 0"):
        Execution(workers=0)
    with pytest.raises(UserError, match="--address needs --executor ray"):
        Execution(address="auto")
    with pytest.raises(UserError, match="--executor must be one of local, ray"):
        Execution(executor="slurm")


def test_eta_from_measured_stage_means():
    # stage a: mean 10 s, 3 left; stage b unmeasured -> overall mean (10 + 10 + 40) / 3 = 20, 1 left;
    # a running 'c' unit (mean 40) 15 s in -> 25 s left. Work 30 + 20 + 25 = 75 over 3 slots = 25 s.
    eta = eta_seconds({"a": 3, "b": 1}, [("c", 15.0)], {"a": [10.0, 10.0], "c": [40.0]}, slots=3)
    assert eta == pytest.approx(25.0)
    assert eta_seconds({"a": 1}, [], {}, slots=1) is None


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "argument --workers: must be a positive integer or auto, got '0'"),
    (["--address", "auto"], "robust-rlhf: error: --address needs --executor ray"),
])
def test_cli_bad_execution_flags_are_one_line_exit_2(argv, message, tmp_path, capsys):
    from robust_rlhf.cli import main

    out = tmp_path / "exp"
    assert main(["experiment", "run", "--config", "experiment_tiny", "--output-dir", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0,2"], "a comma-separated list of positive integers, got '0,2'"),
    (["--address", "auto"], "--address needs --executor ray"),
    (["--config", "experiment_tiny", "--set", "nosuch=1"], "unknown key 'nosuch'"),
])
def test_bench_workers_bad_input_is_one_line_exit_2(argv, message, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_workers", Path(__file__).parent.parent / "benchmarks" /
                                                  "bench_workers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err
