"""Machine faults and doors found by the session-7 probes (tests/test_faults.py holds the older
classes): each test fails without its fix and uses real inputs, no model training."""

import os

import pytest

from robust_rlhf.errors import UserError


# ---------------------------------------------------------------- one check per read ----
def test_a_fifo_input_is_checked_once_by_its_lowest_reader(tmp_path, monkeypatch):
    """A FIFO given as preferences / prompts is refused with one line and checked exactly once per
    path (by the reader that opens it), never at every level of one read."""
    from robust_rlhf import utils
    from robust_rlhf.data.preferences import iter_source, load_preferences
    from robust_rlhf.data.prompts import load_prompts_file

    calls: list[str] = []
    real = utils.check_regular_file

    def counting(path, what=""):
        calls.append(str(path))
        return real(path, what)

    monkeypatch.setattr(utils, "check_regular_file", counting)
    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    for read in (lambda: load_preferences(str(fifo)), lambda: load_prompts_file(str(fifo)),
                 lambda: list(iter_source(str(fifo))[1])):
        calls.clear()
        with pytest.raises(UserError, match="named pipe"):
            read()
        assert calls == [str(fifo)]
    plain = tmp_path / "prompts.txt"  # plain-text prompts: read by `_read_text`
    os.mkfifo(plain)
    calls.clear()
    with pytest.raises(UserError, match="named pipe"):
        load_prompts_file(str(plain))
    assert calls == [str(plain)]
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    calls.clear()
    assert len(load_preferences(str(ok))) == 1
    assert calls == [str(ok)]


# ---------------------------------------------------------------- config messages ----
def test_unknown_nested_key_names_the_valid_keys_once():
    from robust_rlhf.config import build_dataclass
    from robust_rlhf.reward.train_config import RewardTrainConfig

    for data, key in (({"model": {"bogus": 1}}, "'model.bogus'"), ({"model": {3: 1}}, "model.3")):
        with pytest.raises(UserError) as e:
            build_dataclass(RewardTrainConfig, data)
        msg = str(e.value)
        assert key in msg and msg.count("valid keys") == 1 and msg.count("under model") == 1, msg
        assert "num_heads" in msg


def test_learned_gold_config_with_an_unknown_key_names_the_file_once(tmp_path):
    import json

    from robust_rlhf.gold.learned import _read_config

    (tmp_path / "config.json").write_text(json.dumps({"model": {"steps": 3, "bogus": 1}}))
    with pytest.raises(UserError) as e:
        _read_config(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'config.json'}: unknown key 'model.bogus'; valid keys under model: "), msg
    assert msg.count(str(tmp_path)) == 1


# ---------------------------------------------------------------- --workers ----
def test_local_workers_beyond_the_cores_are_refused_ray_takes_any_positive(capsys):
    from robust_rlhf.cli import main
    from robust_rlhf.experiments.scheduler import Execution

    cores = os.cpu_count() or 1
    assert Execution(workers=cores).workers == cores
    with pytest.raises(UserError, match=f"--workers {cores + 1}: this machine has {cores} CPU cores"):
        Execution(workers=cores + 1)
    assert Execution(workers=100000, executor="ray").workers == 100000
    with pytest.raises(UserError, match="positive"):
        Execution(workers=0, executor="ray")
    assert main(["experiment", "run", "--config", "experiment_tiny", "--output-dir", "/nonexistent-dir/x",
                 "--workers", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers 100000" in err[0], err
    assert main(["experiment", "run", "--output-dir", "/nonexistent-dir/x", "--executor", "ray", "--workers", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ---------------------------------------------------------------- append-only logs ----
def test_a_refused_metrics_append_names_the_log_file(tmp_path):
    """`policy train`'s metrics.jsonl is appended to (not written atomically): a full disk or a
    file-size limit there is one `WriteError` naming metrics.jsonl, not an anonymous OS error."""
    import resource
    import signal

    from robust_rlhf.policy.ppo import PPOConfig
    from robust_rlhf.policy.tracking import LogConfig, Run
    from robust_rlhf.utils import WriteError

    run = Run(tmp_path / "run", PPOConfig(), resume=False, log_cfg=LogConfig(progress=False), total_steps=3)
    try:
        run.log({"step": 1, "kl": 0.0})
        size = (tmp_path / "run" / "metrics.jsonl").stat().st_size
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        before = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4, hard))
        try:
            with pytest.raises(WriteError, match=r"metrics\.jsonl'?: file too large"):
                run.log({"step": 2, "kl": 0.0, "proxy_reward": 1.0})
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, before)
    finally:
        run.close()


# ---------------------------------------------------------------- free space before the first write ----
def _tmpfs(path, size: str):
    import subprocess

    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    return path


def test_rm_train_whose_model_cannot_fit_the_disk_is_refused_before_the_first_write(tmp_path, capsys):
    """A 2 MiB file system cannot hold a fine-tuned MiniLM (~90 MB of weights): refused up front
    (exit 2, one line naming the folder and both sizes), nothing written -- not an ENOSPC after
    the whole training."""
    import subprocess

    from robust_rlhf.cli import main
    from robust_rlhf.utils import check_free_space

    small = _tmpfs(tmp_path / "small", "2m")
    try:
        check_free_space(small / "x", 1 << 20)  # 1 MiB fits
        with pytest.raises(UserError, match=r"needs at least 3\.0 MiB but only 2\.0 MiB is free"):
            check_free_space(small / "a" / "b", 3 << 20)
        out = small / "rm"
        rc = main(["rm", "train", "--config", "rm_tiny", "--output-dir", str(out), "data.limit=8"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"'{out}': needs at least" in err[0], err
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# ---------------------------------------------------------------- memory ----
_UNDER_MEMORY_LIMIT = """
import resource, sys
from pathlib import Path
from robust_rlhf.cli import main
import robust_rlhf.cli.experiment, robust_rlhf.report.html, robust_rlhf.utils, robust_rlhf.experiments.bandit  # loaded
import matplotlib.pyplot, scipy.stats, scipy.special  # before the limit
vm = next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + {extra}, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.exit(main(["experiment", "report", "--output-dir", {folder!r}]))
"""


def _report_under_limit(folder, extra: int):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _UNDER_MEMORY_LIMIT.format(extra=extra, folder=str(folder))],
                          capture_output=True, text=True, timeout=120, env=env)


def test_results_file_too_large_for_memory_is_refused_before_reading(tmp_path):
    """`experiment report` reads results.json whole: one too large for the memory left (here a
    30 MB file under `ulimit -v` = now + 60 MB) is refused with exit 2 before it is read."""
    (tmp_path / "results.json").write_text('{"methods": [' + "1," * 15_000_000 + "1]}")
    r = _report_under_limit(tmp_path, 60 << 20)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "results.json: this results file is 29 MiB" in lines[0], r.stderr


def test_out_of_memory_while_reading_is_one_line_not_a_traceback(tmp_path):
    """A file that passes the size check but expands past the memory left while parsed (2.4 MB of
    nested empty lists: ~20x in Python objects) ends with one line and exit 1 (a machine fault)."""
    (tmp_path / "results.json").write_text('{"methods": [' + "[]," * 800_000 + "[]]}")
    r = _report_under_limit(tmp_path, 40 << 20)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("robust-rlhf: error: out of memory"), r.stderr


def test_too_many_open_files_is_one_line_naming_the_limit(tmp_path, capsys):
    """Out of file descriptors (`ulimit -n`): a write is one `WriteError` line saying so, and a read
    outside the atomic writers ends the command with one line (exit 1), not a traceback."""
    import resource

    from robust_rlhf.cli import main
    from robust_rlhf.utils import WriteError, atomic_write_text

    (tmp_path / "results.json").write_text('{"methods": {}, "reference": {}, "reward_models": {}}')
    main(["experiment", "report", "--output-dir", str(tmp_path / "none")])  # the command's modules, loaded
    capsys.readouterr()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(map(int, os.listdir("/proc/self/fd"))) + 1, hard))
    fillers = []
    try:
        while True:  # fill every free descriptor number below the limit
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        with pytest.raises(WriteError, match=r"too many open files \(raise the limit: `ulimit -n`\)"):
            atomic_write_text(tmp_path / "out.txt", "x")
        rc = main(["experiment", "report", "--output-dir", str(tmp_path)])
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "too many open files" in err[0], err
    assert not (tmp_path / "out.txt").exists()


# ---------------------------------------------------------------- one writer per folder ----
def test_experiment_report_is_refused_while_a_run_holds_the_folder(tmp_path, capsys):
    from robust_rlhf.cli import main
    from robust_rlhf.experiments.scheduler import LOCK_FILE
    from robust_rlhf.utils import FolderLock

    (tmp_path / "results.json").write_text('{"methods": {}, "reference": {}, "reward_models": {}}')
    with FolderLock(tmp_path, "`experiment run`", LOCK_FILE):  # a running `experiment run`
        before = sorted(p.name for p in tmp_path.iterdir())
        rc = main(["experiment", "report", "--output-dir", str(tmp_path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "is using this folder (pid" in err[0], err
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no plots, no report.html


def test_train_gold_is_refused_while_another_rewrites_the_same_task(tmp_path):
    import shutil

    from robust_rlhf.data.preferences import FIXTURE_DIR
    from robust_rlhf.data.train_gold import train_learned_gold
    from robust_rlhf.gold.learned import LearnedGoldConfig
    from robust_rlhf.utils import FolderLock

    task = tmp_path / "task"
    task.mkdir()
    for name in ("large_task.json", "large_task.jsonl"):
        shutil.copyfile(FIXTURE_DIR / name, task / name)
    with FolderLock(task, "`data train-gold`"):
        with pytest.raises(UserError, match="another `data train-gold` is writing into this folder"):
            train_learned_gold(LearnedGoldConfig(), task, tmp_path / "features", tmp_path / "gold")
    assert not (tmp_path / "gold").exists()


# ---------------------------------------------------------------- huge numbers ----
def test_huge_line_cap_is_refused_with_one_line_not_an_overflow(tmp_path, capsys, monkeypatch):
    """A line cap past what a read can take (here 10**30 bytes) once ended in Python's OverflowError."""
    from robust_rlhf.cli import main
    from robust_rlhf.data.preferences import iter_jsonl_lines

    rows = tmp_path / "in.jsonl"
    rows.write_text('{"prompt": "p", "response": "r"}\n')
    assert list(iter_jsonl_lines(rows, 1 << 40)) == [(1, {"prompt": "p", "response": "r"})]
    with pytest.raises(UserError, match=r"must be a number of bytes in \[1, 1,099,511,627,776\], got 10{30}"):
        list(iter_jsonl_lines(rows, 10**30))
    monkeypatch.setenv("ROBUST_RLHF_MAX_LINE_BYTES", str(10**30))
    with pytest.raises(UserError, match="ROBUST_RLHF_MAX_LINE_BYTES must be a number of bytes"):
        list(iter_jsonl_lines(rows))
    monkeypatch.delenv("ROBUST_RLHF_MAX_LINE_BYTES")
    rc = main(["rm", "score", "--model", str(tmp_path / "m"), "--input", str(rows), "--output",
               str(tmp_path / "o.jsonl"), "--max-line-bytes", str(10**30)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--max-line-bytes must be a number of bytes" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize("flag", ["--num-samples", "--batch-size", "--max-new-tokens"])
def test_policy_sample_refuses_absurd_sizes_before_reading_anything(tmp_path, capsys, flag):
    from robust_rlhf.cli import main

    (tmp_path / "p.txt").write_text("a prompt\n")
    rc = main(["policy", "sample", "--policy", str(tmp_path / "none"), "--prompts", str(tmp_path / "p.txt"),
               "--output", str(tmp_path / "o.jsonl"), flag, str(10**30)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"robust-rlhf: error: {flag} {10**30} is absurdly large (limit 4,294,967,295)"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]
