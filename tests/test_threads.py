"""robust_rlhf.threads: free cores from /proc/stat snapshots, cgroup quotas, affinity, the env
override, and the lab's re-check before every unit. No timing: every measurement is injected."""

from __future__ import annotations

import logging

import pytest

from robust_rlhf.errors import UserError
from robust_rlhf.threads import (
    CpuSample,
    apply_threads,
    cgroup_cpu_limit,
    choose_threads,
    free_cores,
    idle_cores_between,
    parse_cfs_quota,
    parse_cpu_max,
    parse_proc_stat,
    threads_for,
)

# Two snapshots 0.25 s apart of a 2-CPU machine (fields: user nice system idle iowait irq softirq steal guest gn).
# cpu0: user +60, system +10, idle +20, iowait +5, irq +5   -> total +100, idle(+iowait) +25 -> 0.25 idle
# cpu1: user +2, idle +98                                    -> total +100, idle +98           -> 0.98 idle
# cpu  (sum):                                                   total +200, idle +123          -> 0.615 idle
BEFORE = """cpu  1000 50 300 5000 40 10 5 0 0 0
cpu0 600 20 200 2000 30 10 5 0 0 0
cpu1 400 30 100 3000 10 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""
AFTER = """cpu  1062 50 310 5118 45 15 5 0 0 0
cpu0 660 20 210 2020 35 15 5 0 0 0
cpu1 402 30 100 3098 10 0 0 0 0 0
intr 12399 0 0
ctxt 1200
"""


def test_parse_proc_stat_sums_fields_and_skips_other_lines():
    s = parse_proc_stat(BEFORE)
    assert set(s) == {"cpu", "cpu0", "cpu1"}
    # cpu0: 600+20+200+2000+30+10+5+0 = 2865 jiffies; idle = 2000 + 30 (iowait)
    assert s["cpu0"] == CpuSample(idle=2030, total=2865)
    # guest fields (here 7 and 9) are already inside user/nice and must not be counted twice
    g = parse_proc_stat("cpu0 10 0 0 10 0 0 0 0 7 9\n")
    assert g["cpu0"] == CpuSample(idle=10, total=20)
    # an old kernel's 4-field line
    assert parse_proc_stat("cpu 1 2 3 4\n")["cpu"] == CpuSample(idle=4, total=10)


def test_idle_cores_per_cpu_and_affinity():
    b, a = parse_proc_stat(BEFORE), parse_proc_stat(AFTER)
    assert idle_cores_between(b, a) == pytest.approx(0.25 + 0.98)
    assert idle_cores_between(b, a, {0}) == pytest.approx(0.25)
    assert idle_cores_between(b, a, {1}) == pytest.approx(0.98)


def test_idle_cores_falls_back_to_aggregate_line():
    # per-CPU lines hidden (or the allowed CPU not listed): the aggregate idle fraction times allowed CPUs
    b = {"cpu": parse_proc_stat(BEFORE)["cpu"]}
    a = {"cpu": parse_proc_stat(AFTER)["cpu"]}
    assert idle_cores_between(b, a, {0, 1}) == pytest.approx(123 / 200 * 2)
    assert idle_cores_between(parse_proc_stat(BEFORE), parse_proc_stat(AFTER), {5}) == pytest.approx(123 / 200)
    # nothing advanced: no measurement
    assert idle_cores_between(b, b, {0}) is None


def _reader(*texts):
    snaps = iter([parse_proc_stat(t) for t in texts])
    return lambda: next(snaps)


def test_free_cores_with_injected_reader_affinity_and_quota():
    waited = []
    cores, free = free_cores(0.3, reader=_reader(BEFORE, AFTER), sleep=waited.append, affinity={0, 1}, quota=None)
    assert waited == [0.3]
    assert (cores, free) == (2.0, pytest.approx(1.23))
    cores, free = free_cores(reader=_reader(BEFORE, AFTER), sleep=lambda s: None, affinity={1}, quota=None)
    assert (cores, free) == (1.0, pytest.approx(0.98))
    # a 1-core cgroup quota caps both (1.23 idle cores, but only 1 usable)
    cores, free = free_cores(reader=_reader(BEFORE, AFTER), sleep=lambda s: None, affinity={0, 1}, quota=1.0)
    assert (cores, free) == (1.0, 1.0)


def test_free_cores_falls_back_to_loadavg_when_proc_stat_unreadable():
    def unreadable():
        raise OSError("no /proc")

    cores, free = free_cores(reader=unreadable, sleep=lambda s: None, affinity={0, 1}, quota=None, loadavg=lambda: 1.5)
    assert (cores, free) == (2.0, 0.5)
    _, free = free_cores(reader=unreadable, sleep=lambda s: None, affinity={0, 1}, quota=None, loadavg=lambda: 7.0)
    assert free == 0.0


def test_cgroup_quota_parsing():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cpu_max("50000\n") == 0.5  # period defaults to 100 ms
    assert parse_cpu_max("garbage") is None
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("250000\n", "100000\n") == 2.5


def test_cgroup_cpu_limit_takes_the_tightest_over_ancestors_and_v1(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "a" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "a" / "b" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/a/b\n") == 3.0
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None  # root: no quota
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/a/b\n") == 1.5
    assert cgroup_cpu_limit(tmp_path / "nothing-here", "") is None


def test_threads_for_rounds_down_unless_nearly_free():
    assert threads_for(2.0, 2.0) == 2
    assert threads_for(1.8, 2.0) == 2  # >= 0.75 of the second core idle
    assert threads_for(1.7, 2.0) == 1  # a busy neighbour on the second core: do not spin against it
    assert threads_for(1.0, 2.0) == 1
    assert threads_for(0.0, 2.0) == 1  # never 0
    assert threads_for(8.0, 4.0) == 4  # never above the usable cores
    assert threads_for(4.0, 4.0, processes=2) == 2  # torchrun: the free cores are shared per node


def _no_measure():
    raise AssertionError("must not measure")


def test_choose_threads_explicit_and_env_override():
    assert choose_threads(3, env={}, measure=_no_measure) == 3
    assert choose_threads(3, env={"OMP_NUM_THREADS": "1"}, measure=_no_measure) == 3  # the config is explicit
    assert choose_threads("auto", env={"OMP_NUM_THREADS": "1"}, measure=_no_measure) == 1
    assert choose_threads(None, env={"OMP_NUM_THREADS": "4,2"}, measure=_no_measure) == 4
    assert choose_threads("auto", env={}, measure=lambda: (2.0, 0.9)) == 1
    assert choose_threads(None, env={"OMP_NUM_THREADS": ""}, measure=lambda: (2.0, 1.95)) == 2
    assert choose_threads("auto", env={"LOCAL_WORLD_SIZE": "2"}, measure=lambda: (4.0, 4.0)) == 2


@pytest.mark.parametrize("bad", [0, -1, True, "many", 2.5, "2"])
def test_bad_num_threads_is_a_clear_error(bad):
    with pytest.raises(UserError, match="num_threads must be a positive integer, 'auto' or null"):
        choose_threads(bad, env={}, measure=_no_measure)


@pytest.mark.parametrize("bad", ["abc", "0", "-2"])
def test_bad_omp_num_threads_is_a_clear_error(bad):
    with pytest.raises(UserError, match="OMP_NUM_THREADS must be a positive integer"):
        choose_threads("auto", env={"OMP_NUM_THREADS": bad}, measure=_no_measure)


@pytest.mark.parametrize("bad", ["0", "many", "-3", "true"])
def test_experiment_config_rejects_bad_num_threads(bad):
    from robust_rlhf.experiments.config import load_experiment_config

    with pytest.raises(UserError, match="num_threads must be a positive integer, auto or null"):
        load_experiment_config("experiment_tiny", [f"num_threads={bad}"])


def test_experiment_config_accepts_auto_null_and_n():
    from robust_rlhf.experiments.config import load_experiment_config

    assert load_experiment_config("experiment_tiny", ["num_threads=auto"]).num_threads == "auto"
    assert load_experiment_config("experiment_tiny", ["num_threads=null"]).num_threads is None
    assert load_experiment_config("experiment_tiny", ["num_threads=3"]).num_threads == 3


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_apply_threads_sets_torch_and_logs_once(torch_threads, caplog):
    torch = torch_threads
    torch.set_num_threads(2)
    with caplog.at_level(logging.DEBUG, logger="robust_rlhf.threads"):
        assert apply_threads("auto", env={}, measure=lambda: (2.0, 1.0)) == 1
    assert torch.get_num_threads() == 1
    (rec,) = caplog.records
    assert rec.levelno == logging.INFO and "cores 2.0, free 1.00, was 2" in rec.getMessage()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="robust_rlhf.threads"):
        apply_threads(None, quiet_if_unchanged=True, env={}, measure=lambda: (2.0, 0.5))  # still 1: DEBUG only
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("command", [["rm", "train", "--config", "rm_tiny"],
                                     ["policy", "train", "--config", "policy_tiny"]])
def test_cli_bad_omp_num_threads_is_one_line_exit_2(command, tmp_path, monkeypatch, cli_error):
    """rm / policy train choose their threads at start; a bad OMP_NUM_THREADS stops them before any work."""
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    line = cli_error([*command, "--output-dir", tmp_path / "out"], "OMP_NUM_THREADS", watch=tmp_path)
    assert line == "robust-rlhf: error: OMP_NUM_THREADS must be a positive integer, got 'lots'"
