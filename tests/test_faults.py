"""Faults of the machine, not of the input (issue 24): full disks and file-size limits, torn
files in run folders, two runs on one folder, inputs larger than memory, incomplete model
folders, signals during writes -- each class with its own instance here.

The two `kill -9` tests (at random points of `rm train` / `policy train`: every checkpoint on disk
is complete or absent, and resuming reaches the same final weights as an uninterrupted run) are
slow (they restart the CLI many times): run them with `python -m pytest -m slow tests/test_faults.py`."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

RM_ARGS = ["rm", "train", "--config", "rm_tiny", "stage1.max_steps=12", "stage1.checkpoint_every=1",
           "data.validation=null", "stage2.epochs=3", "model.max_length=32", "data.limit=64"]


def _run(out, env):
    return subprocess.run(timeout=900, args=[sys.executable, "-m", "robust_rlhf.cli", *RM_ARGS, "--output-dir", str(out)],
                          env=env, capture_output=True, text=True)


def _kill_when(cmd, progress, target, rng, env):
    """Start `cmd`, wait until `progress()` reaches `target` (a step number), then SIGKILL it after
    a random extra delay that lands mid-step or mid-write. Returns True if it was killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if progress() >= target:
            time.sleep(rng.uniform(0.0, 0.8))
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def _rm_progress(out):
    try:
        return json.loads((out / "checkpoints" / "stage1" / "state.json").read_text())["progress"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _policy_progress(out):
    steps = [int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*")] if (out / "checkpoints").exists() else []
    return max(steps, default=0)


def _checkpoint_is_complete_or_absent(out):
    ck = out / "checkpoints" / "stage1"
    if ck.exists():
        names = {p.name for p in ck.iterdir()}
        assert names == {"weights.safetensors", "optimizer.pt", "state.json"}, names
        json.loads((ck / "state.json").read_text())
        load_file(str(ck / "weights.safetensors"))
    if (out / "reward_config.json").exists():  # a final model present is a complete one
        load_file(str(out / "heads.safetensors"))


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "reference"
    assert _run(ref, env).returncode == 0
    out = tmp_path / "killed"
    rng = random.Random(1234)
    # Kill points: 5 random stage-1 steps, then once more after the last stage-1 checkpoint
    # (i.e. inside the feature pass / stage 2 / the final save).
    targets = sorted(rng.sample(range(1, 12), 5)) + [12]
    cmd = [sys.executable, "-m", "robust_rlhf.cli", *RM_ARGS, "--output-dir", str(out)]
    kills = 0
    for t in targets:
        kills += _kill_when(cmd, lambda: _rm_progress(out), t, rng, env)
        _checkpoint_is_complete_or_absent(out)
    assert kills >= 5
    assert _run(out, env).returncode == 0
    a, b = load_file(str(ref / "heads.safetensors")), load_file(str(out / "heads.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert not list(out.glob(".*.tmp")) and not list((out / "checkpoints").glob(".*.tmp"))


POLICY_ARGS = ["policy", "train", "--config", "policy_tiny", "train.steps=10", "log.checkpoint_every=1",
               "log.eval_every=5", "resume=true"]


@pytest.mark.slow
def test_kill9_policy_train_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "robust_rlhf.cli", *POLICY_ARGS, "--output-dir"]
    ref = tmp_path / "reference"
    assert subprocess.run(timeout=900, args=[*cmd, str(ref)], env=env, capture_output=True).returncode == 0
    out = tmp_path / "killed"
    rng = random.Random(99)
    targets = sorted(rng.sample(range(1, 10), 5)) + [10]  # the last one lands in the final save
    kills = 0
    for t in targets:
        kills += _kill_when([*cmd, str(out)], lambda: _policy_progress(out), t, rng, env)
        for ck in (out / "checkpoints").glob("step_*"):  # complete or absent
            assert (ck / "state.json").exists(), sorted(p.name for p in ck.iterdir())
            json.loads((ck / "state.json").read_text())
    assert kills >= 5
    r = subprocess.run(timeout=900, args=[*cmd, str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    strip = lambda rows: [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]  # noqa: E731
    a = strip([json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()])
    b = strip([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    assert len(a) == len(b) == 10
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (ra["step"], k)
    wa = load_file(str(ref / "policy" / "adapter_model.safetensors"))
    wb = load_file(str(out / "policy" / "adapter_model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


# =============================================================================================
# Fast fault tests (run in CI). Each builds its own fault: a file-size limit or a tiny tmpfs for
# the disk, truncation for torn files, a second process for the second run, an address-space
# limit for memory.
import contextlib  # noqa: E402
import errno  # noqa: E402
import resource  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

from robust_rlhf.errors import UserError  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _leftovers(folder: Path) -> list[str]:
    """Hidden temp files/folders anywhere under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name.endswith(".tmp"))


def _readline(stream, timeout: float) -> str:
    """The next line of a child's text pipe, waiting at most `timeout` seconds for it to come
    ("" at end of file or on timeout)."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        return stream.readline() if sel.select(timeout) else ""


def _wait_for_entry(folder: Path, found, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until `found()` holds -- checked again each time an entry is created in or moved into
    `folder` (inotify) -- or until `proc` exits (its pidfd), at most `timeout` seconds. Returns
    `found()`. Linux (inotify, pidfd_open)."""
    import ctypes
    import select

    libc = ctypes.CDLL(None, use_errno=True)
    ino = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if ino < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1 failed")
    pidfd = os.pidfd_open(proc.pid)
    try:
        if libc.inotify_add_watch(ino, os.fsencode(folder), 0x100 | 0x80) < 0:  # IN_CREATE | IN_MOVED_TO
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
        end = time.monotonic() + timeout
        while not found():  # the watch is in place first: an entry created from here on wakes us
            ready, _, _ = select.select([ino, pidfd], [], [], max(0.0, end - time.monotonic()))
            if not ready or pidfd in ready:
                break
            os.read(ino, 1 << 16)  # the events themselves do not matter: found() decides
        return found()
    finally:
        os.close(ino)
        os.close(pidfd)


def _python(code: str, *, timeout: int = 120, **kw) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """This process under a file-size limit (the soft RLIMIT_FSIZE; the hard one stays, so it can
    be lifted again) with SIGXFSZ ignored, as the CLI runs: a write past it fails with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    before = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, before)


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A small tmpfs mounted at `path` (skips the test where mounting is not allowed)."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory, minilm_rm_factory):
    """A K = 2 ensemble on the embedded MiniLM (stored by reference: kilobytes)."""
    torch.manual_seed(0)
    model = minilm_rm_factory(head_type="ensemble", num_heads=2, max_length=32)
    out = tmp_path_factory.mktemp("rm2")
    model.save_pretrained(out, save_backbone=False)
    return out


def _model_copy(rm_folder: Path, dest: Path) -> Path:
    """A copy of `rm_folder` whose backbone lives in its own ``backbone/`` folder: config and
    tokenizer files copied (editable), the weights symlinked (no 90 MB copy)."""
    import shutil

    from robust_rlhf.models.hub import resolve_model_path

    shutil.copytree(rm_folder, dest)
    src = Path(resolve_model_path("minilm-l6"))
    (dest / "backbone").mkdir()
    for f in src.iterdir():
        if f.name == "model.safetensors":
            os.symlink(f, dest / "backbone" / f.name)
        elif f.is_file():
            shutil.copyfile(f, dest / "backbone" / f.name)
    _edit_json(dest / "reward_config.json", lambda d: d.update(backbone_location="backbone"))
    return dest


# ---------------------------------------------------------------- full disk / size limit ----
def test_file_size_limit_every_atomic_writer_fails_with_one_line_and_leaves_nothing(tmp_path):
    """Under a 64 KiB file-size limit (SIGXFSZ ignored, as the CLI does): the byte writer, the
    streaming writer, the folder writer and the figure writer each raise one WriteError naming the
    final path and the cause; the previous file/folder stays intact; no temp file is left."""
    (tmp_path / "old.bin").write_bytes(b"previous")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w").write_bytes(b"previous")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from robust_rlhf.utils import WriteError, atomic_save_dir, atomic_write_bytes, atomic_writer, save_figure

    def stream():
        with atomic_writer(tmp_path / "rows.jsonl", "w") as f:
            for i in range(5000):
                f.write(json.dumps({"row": i, "pad": "y" * 40}) + "\n")

    def figure():
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(np.random.default_rng(0).random((300, 300)))
        save_figure(fig, tmp_path / "plot.png", dpi=100)

    out = {}
    with _file_size_limit(64 * 1024):
        for name, fn in [("bytes", lambda: atomic_write_bytes(tmp_path / "old.bin", b"x" * 200_000)),
                         ("stream", stream),
                         ("dir", lambda: atomic_save_dir(tmp_path / "ckpt",
                                                         lambda t: (t / "w").write_bytes(b"z" * 300_000))),
                         ("figure", figure)]:
            try:
                fn()
                out[name] = "no error"
            except WriteError as e:
                out[name] = str(e)
    for name, target in [("bytes", "old.bin"), ("stream", "rows.jsonl"), ("dir", "ckpt"), ("figure", "plot.png")]:
        assert out[name].startswith(f"cannot write '{tmp_path / target}': file too large"), out[name]
        assert "\n" not in out[name]
    assert (tmp_path / "old.bin").read_bytes() == b"previous"
    assert (tmp_path / "ckpt" / "w").read_bytes() == b"previous"
    assert not (tmp_path / "rows.jsonl").exists() and not (tmp_path / "plot.png").exists()
    assert _leftovers(tmp_path) == []


def test_rm_score_under_a_file_size_limit_is_one_line_and_no_partial_output(tmp_path, rm_folder, capsys):
    """`rm score` whose output outgrows `ulimit -f` (the CLI's entry point in this process, under a
    32 KiB limit): the CLI ignores SIGXFSZ, so the write fails with EFBIG -> one line naming
    --output, exit 2, no output and no temp file. SIGXFSZ is made to raise here beforehand, so a
    CLI that did not ignore it fails the test (a plain process would be killed by it)."""
    from robust_rlhf.cli import main

    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Q{i}: ", "response": "a fine answer " * 30}) + "\n"
                            for i in range(100)))
    out = tmp_path / "out" / "scored.jsonl"
    (tmp_path / "out").mkdir()

    class SignalNotIgnored(Exception):
        pass

    def not_ignored(signum, frame):
        raise SignalNotIgnored("SIGXFSZ reached the CLI: it does not ignore it")

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    before = signal.signal(signal.SIGXFSZ, not_ignored)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))
    try:
        rc = main(["rm", "score", "--model", str(rm_folder), "--input", str(rows), "--output", str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, before)
    stderr = capsys.readouterr().err
    assert rc == 2, stderr[-2000:]
    err = stderr.strip().splitlines()
    assert err[-1] == f"robust-rlhf: error: cannot write '{out}': file too large (a file-size limit, e.g. `ulimit -f`, " \
                      "or the file system's maximum)", err[-3:]
    assert "Traceback" not in stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_full_and_read_only_tmpfs_give_one_line_each(tmp_path):
    """A 32 KiB tmpfs (ENOSPC) and a read-only one (EROFS): writes through the one write path
    fail with the cause named; nothing is left on the full disk."""
    from robust_rlhf.utils import WriteError, atomic_save_dir, atomic_write_json

    with _tmpfs(tmp_path / "full", "size=32k") as full:
        with pytest.raises(WriteError, match=r"^cannot write '.*results\.json': no space left on the device$"):
            atomic_write_json(full / "results.json", {"values": list(range(40_000))})
        with pytest.raises(WriteError, match=r"no space left on the device$"):
            atomic_save_dir(full / "model", lambda t: (t / "weights.bin").write_bytes(os.urandom(100_000)))
        assert list(full.iterdir()) == []
    with _tmpfs(tmp_path / "ro", "size=32k,ro") as ro:
        with pytest.raises(WriteError, match=r"read-only file system$"):
            atomic_write_json(ro / "metrics.json", {"a": 1})


def test_rm_eval_and_rm_train_on_a_full_disk_print_one_line(tmp_path, rm_folder, capsys):
    """`rm eval` (metrics + plots) into a 24 KiB tmpfs; `rm train` whose model cannot fit a 2 MiB one
    (refused before the first write) and whose first stage-1 checkpoint does not fit a 120 MiB one:
    exit 2, one line naming what could not be written, no temp file left."""
    from robust_rlhf.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q{i}: ", "chosen": f"a helpful answer {i}",
                                         "rejected": f"no {i}"}) + "\n" for i in range(8)))
    with _tmpfs(tmp_path / "small", "size=24k") as small:
        assert main(["rm", "eval", "--model", str(rm_folder), "--data", str(pairs), "--output-dir", str(small)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"robust-rlhf: error: cannot write '{small}/")
        assert err[0].endswith("no space left on the device")
        assert _leftovers(small) == []
    train = ["rm", "train", "--config", "rm_tiny", f"data.train={pairs}", "data.validation=null", "stage1.max_steps=1",
             "stage1.checkpoint_every=1", "stage1.batch_size=4", "model.max_length=16"]
    with _tmpfs(tmp_path / "two", "size=2m") as two:  # the model save cannot fit: refused before the first write
        assert main([*train, "--output-dir", str(two / "rm")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"robust-rlhf: error: --output-dir '{two / 'rm'}': needs at least ") and \
            err[-1].endswith("free some space or choose another place"), err[-3:]
        assert list(two.iterdir()) == []
    with _tmpfs(tmp_path / "big", "size=120m") as big:  # the model fits, its stage-1 checkpoint (+ Adam state) does not
        assert main([*train, "--output-dir", str(big / "rm")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"robust-rlhf: error: cannot write '{big / 'rm' / 'checkpoints' / 'stage1'}': " \
                          "no space left on the device", err[-3:]
        assert _leftovers(big) == []


def test_feature_cache_on_a_full_disk_is_skipped_not_fatal(tmp_path, minilm_rm_factory, caplog):
    """The stage-2 feature cache is only a cache: when the disk refuses it, training goes on
    (warning) and the features are still right."""
    from robust_rlhf.data.preferences import PreferencePair
    from robust_rlhf.reward.stage2 import cached_features

    model = minilm_rm_factory(head_type="ensemble", num_heads=2, max_length=24)
    pairs = [PreferencePair("Q: ", f"good answer {i}", f"bad {i}") for i in range(6)]
    with _tmpfs(tmp_path / "tiny", "size=4k") as tiny:
        feats = cached_features(model, pairs, tiny / "train_features.safetensors")
        assert not (tiny / "train_features.safetensors").exists() and _leftovers(tiny) == []
    _, direct = model.score([""] * 6, [p.prompt + p.chosen for p in pairs], return_features=True)
    assert torch.allclose(feats[:, 0], direct, atol=1e-5)
    assert "going on without the feature cache" in caplog.text


# --------------------------------------------------------------------- output locations ----
def test_symlink_loop_as_output_folder_is_refused_before_any_work(tmp_path, capsys):
    from robust_rlhf.cli import main

    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert main(["policy", "train", "--config", "policy_tiny", "--output-dir", str(tmp_path / "a" / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"'{tmp_path / 'a'}' is a symlink loop") and "\n" not in err


def test_unwritable_model_cache_fails_before_the_conversion(tmp_path, monkeypatch):
    """The embedded policy is converted once into the cache: a cache that cannot be written (here
    under a file) is refused before the conversion starts, naming the setting."""
    from robust_rlhf.models import hub

    (tmp_path / "cachefile").write_text("not a folder")
    monkeypatch.setenv("ROBUST_RLHF_CACHE", str(tmp_path / "cachefile"))
    called = []
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: called.append(a))
    with pytest.raises(UserError, match=r"model cache \(ROBUST_RLHF_CACHE\) .*is a file, not a folder"):
        hub.resolve_model_path("smollm2-135m")
    assert called == []


# ------------------------------------------------------------------------ signals -----------
def test_sigterm_while_rm_score_writes_removes_its_temp_file(tmp_path, rm_folder):
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "Say: ", "response": f"answer number {i} " * 6}) + "\n"
                            for i in range(6000)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "robust_rlhf.cli", "rm", "score", "--model", str(rm_folder),
                             "--input", str(rows), "--output", str(out_dir / "s.jsonl"), "--batch-size", "8"],
                            env=ENV, stderr=subprocess.PIPE, text=True)
    assert _wait_for_entry(out_dir, lambda: bool(_leftovers(out_dir)), proc, 300), \
        f"the streaming temp file never appeared (exit status {proc.poll()})"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "terminated by SIGTERM" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []


# -------------------------------------------------------------- temp owners and locks -------
def test_stale_temp_cleanup_spares_a_live_runs_temp_file(tmp_path):
    """Two runs on one folder: A (another process) holds a temp file open mid-write while B (this
    process), starting, cleans stale temps -- A's survives and A completes; a temp file of a
    process that is gone (a killed run) is removed."""
    from robust_rlhf.utils import atomic_write_text, remove_stale_temps, temp_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / (temp_prefix("scores.json").replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-") + "x1.tmp")
    stale.write_text("left by a killed run")
    # A says "ready" on its stdout once its temp file is written; it finishes when told "go" on its stdin.
    a = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from robust_rlhf.utils import atomic_writer
        with atomic_writer(Path({str(tmp_path)!r}) / "metrics.json", "w") as f:
            f.write("{{}}")
            print("ready", flush=True)
            assert sys.stdin.readline() == "go\\n"
    """)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert _readline(a.stdout, 120) == "ready\n"
    live = [p for p in _leftovers(tmp_path) if p != stale.name]
    assert len(live) == 1 and f"-{a.pid}-" in live[0]
    assert [p.name for p in remove_stale_temps(tmp_path)] == [stale.name]
    a.communicate("go\n", timeout=60)
    assert a.returncode == 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == {}
    assert _leftovers(tmp_path) == []
    # a write of a file also removes what a killed earlier write of that same file left
    stale.write_text("left by a killed run")
    atomic_write_text(tmp_path / "scores.json", "{}")
    assert _leftovers(tmp_path) == []


def test_two_processes_lock_one_folder_exactly_one_wins(tmp_path):
    """Two processes started together ask for the same run folder: one holds it, the other is
    refused with one line; once the holder is killed (kill -9) the folder is free again."""
    code = f"""
        import time
        from robust_rlhf.errors import UserError
        from robust_rlhf.utils import FolderLock
        try:
            with FolderLock({str(tmp_path)!r}, "`rm train`"):
                print("held", flush=True)
                time.sleep(120)
        except UserError as e:
            print("refused:", e, flush=True)
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=ENV, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    first = [p.stdout.readline().strip() for p in procs]
    assert sorted(first)[0] == "held", first
    assert sorted(first)[1] == (f"refused: {str(tmp_path)!r}: another `rm train` is writing into this folder right "
                                "now; wait for it to finish or use another --output-dir"), first
    holder = procs[first.index("held")]
    holder.kill()
    for p in procs:
        p.wait(timeout=60)
    from robust_rlhf.utils import FolderLock

    with FolderLock(tmp_path):
        pass


def test_rm_train_into_a_folder_another_run_holds_is_refused(tmp_path):
    from robust_rlhf.config import load_config
    from robust_rlhf.reward.train import train_reward_model
    from robust_rlhf.reward.train_config import RewardTrainConfig
    from robust_rlhf.utils import FolderLock

    cfg = load_config(RewardTrainConfig, "rm_tiny", ["data.limit=8", "data.validation=null"])
    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out, "`rm train`"):  # another open description of the folder = another run
        with pytest.raises(UserError, match="another `rm train` is writing into this folder"):
            train_reward_model(cfg, out)
    assert list(out.iterdir()) == []


def test_policy_run_folder_is_locked_for_the_runs_lifetime(tmp_path):
    from robust_rlhf.config import load_config
    from robust_rlhf.policy.ppo import PPOConfig
    from robust_rlhf.policy.tracking import Run

    cfg = load_config(PPOConfig, "policy_tiny", [])
    run = Run(tmp_path / "p", cfg, False, cfg.log, 2)
    with pytest.raises(UserError, match="another `policy train` is writing into this folder"):
        Run(tmp_path / "p", cfg, False, cfg.log, 2)
    run.close()
    Run(tmp_path / "p", cfg, False, cfg.log, 2).close()


# -------------------------------------------------------------------------- torn files ------
def _tiny_stage1():
    """A real (small) backbone + head + AdamW + scheduler, as `BackboneHeadCheckpoint` stores them."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
    head = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return backbone, head, opt, sched


def _train_steps(backbone, head, opt, sched, n):
    for _ in range(n):
        loss = head(backbone(torch.randn(8, 6))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("torn", ["weights.safetensors", "optimizer.pt", "state.json"])
def test_torn_stage1_checkpoint_falls_back_to_the_previous_good_one(tmp_path, torn, caplog):
    from robust_rlhf.checkpoint import BackboneHeadCheckpoint, TornCheckpoint

    backbone, head, opt, sched = _tiny_stage1()
    ck = BackboneHeadCheckpoint(tmp_path)
    _train_steps(backbone, head, opt, sched, 2)
    ck.save(backbone, head, opt, sched, {"step": 2, "log": []}, {"cfg": 1})
    at_step2 = {k: v.clone() for k, v in backbone.state_dict().items()}
    _train_steps(backbone, head, opt, sched, 3)
    ck.save(backbone, head, opt, sched, {"step": 5, "log": []}, {"cfg": 1})
    _truncate(ck.dir / torn)

    fresh = _tiny_stage1()
    progress = ck.load(*fresh, {"cfg": 1})
    assert progress["step"] == 2
    for k, v in fresh[0].state_dict().items():
        assert torch.equal(v, at_step2[k]), k
    assert f"{ck.dir / torn}: unreadable" in caplog.text

    _truncate(ck.dir.with_name("stage1.prev") / "weights.safetensors", 0.9)
    with pytest.raises(TornCheckpoint) as e:
        ck.load(*_tiny_stage1(), {"cfg": 1})
    msg = str(e.value)
    assert msg.startswith(f"{ck.dir.with_name('stage1.prev') / 'weights.safetensors'}: unreadable")
    assert "no good checkpoint is left to resume from" in msg and "\n" not in msg


def test_torn_policy_checkpoint_resumes_from_the_one_before(tmp_path):
    from robust_rlhf.config import load_config
    from robust_rlhf.policy.ppo import PPOConfig
    from robust_rlhf.policy.tracking import Run

    class Trainable(torch.nn.Linear):  # what Run's checkpoints use of a policy
        use_lora = False

        def trainable_state_dict(self):
            return {k: v.detach().clone() for k, v in self.state_dict().items()}

        def load_trainable_state_dict(self, state):
            self.load_state_dict(state)

    cfg = load_config(PPOConfig, "policy_tiny", ["log.keep_checkpoints=3"])
    run = Run(tmp_path, cfg, True, cfg.log, 10)
    pol = Trainable(3, 2)
    opt = torch.optim.SGD(pol.parameters(), lr=0.1)
    saved = {}
    for step in (1, 2):
        with torch.no_grad():
            pol.weight.add_(1.0)
        run.log({"step": step, "kl": 0.1 * step})
        run.save_checkpoint(step, pol, opt)
        saved[step] = pol.weight.clone()
    run.close()
    _truncate(tmp_path / "checkpoints" / "step_000002" / "trainable.pt")
    run2 = Run(tmp_path, cfg, True, cfg.log, 10)
    fresh = Trainable(3, 2)
    step, _ = run2.restore(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    run2.close()
    assert step == 1 and torch.equal(fresh.weight, saved[1])
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


def _pool_unit_fn(folder: Path, calls: str) -> dict:
    """A unit's work (module level: units must be picklable): writes pool.json, counts its runs."""
    with open(calls, "a") as f:
        f.write("1")
    (folder / "pool.json").write_text(json.dumps({"responses": [["a"] * 50] * 20}))
    return {"n": 20}


def test_torn_unit_files_are_recomputed_and_a_torn_record_is_refused_when_read(tmp_path):
    """The experiment's unit cache: a truncated output file, a torn done marker and a torn
    unit record each make the unit run again; reading a torn record directly is one line."""
    from robust_rlhf.experiments.units import Unit, execute_unit, read_done, read_json

    calls = tmp_path / "calls"
    calls.write_text("")
    unit = Unit("pool/s0", "pools", {"seed": 0}, _pool_unit_fn, {"calls": str(calls)})
    root = tmp_path / "units"

    def go():  # what the scheduler does with one unit: cached when its done record is valid
        done = read_done(root, unit)
        return (done or execute_unit(unit, root))["summary"]

    def runs() -> int:
        return len(calls.read_text())

    assert go() == {"n": 20} and runs() == 1
    assert go() == {"n": 20} and runs() == 1  # cached
    _truncate(root / "pool/s0" / "pool.json", 0.7)
    with pytest.raises(UserError, match=r"pool\.json: cannot read \(torn or not JSON\)"):
        read_json(root / "pool/s0" / "pool.json")
    assert go() == {"n": 20} and runs() == 2
    json.loads((root / "pool/s0" / "pool.json").read_text())
    _truncate(root / "pool/s0" / "done", 0.5)
    assert go() == {"n": 20} and runs() == 3
    _truncate(root / "pool/s0" / "unit.json", 0.3)
    (root / "pool/s0" / "done").unlink()
    assert go() == {"n": 20} and runs() == 4


# ------------------------------------------------------------------- model folders ----------
def _edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_backbone_config_that_does_not_describe_its_weights_is_refused_unless_opted_in(tmp_path, rm_folder):
    """A backbone config.json claiming 4 layers where the files hold 6: the two extra layers'
    weights would be dropped silently -- refused, naming them; opting in loads with a warning."""
    from robust_rlhf.reward.model import RewardModel

    m = _model_copy(rm_folder, tmp_path / "m")
    _edit_json(m / "backbone" / "config.json", lambda d: d.update(num_hidden_layers=4))
    with pytest.raises(UserError) as e:
        RewardModel.from_pretrained(m)
    msg = str(e.value)
    assert "its config.json does not describe the weights present" in msg and "\n" not in msg
    assert "weights the config has no place for: encoder.layer.4." in msg and "allow_partial_weights=true" in msg
    _edit_json(m / "reward_config.json", lambda d: d.update(allow_partial_weights=True))
    model = RewardModel.from_pretrained(m)
    assert len(model.backbone.encoder.layer) == 4


def test_reward_config_without_its_backbone_name_is_refused(tmp_path, rm_folder):
    import shutil

    from robust_rlhf.reward.model import RewardModel

    m = tmp_path / "m"
    shutil.copytree(rm_folder, m)
    _edit_json(m / "reward_config.json", lambda d: d.pop("backbone"))
    with pytest.raises(UserError, match=r"reward_config\.json: field 'backbone' is missing, so it does not name"):
        RewardModel.from_pretrained(m)
    _edit_json(m / "reward_config.json", lambda d: d.update(backbone="minilm-l6", backbone_location="backbone"))
    with pytest.raises(UserError, match=r"the backbone is stored in the model folder, but .*backbone is missing"):
        RewardModel.from_pretrained(m)


def test_heads_file_that_does_not_match_the_config_names_every_difference(tmp_path, rm_folder):
    import shutil

    from safetensors.torch import load_file, save_file

    from robust_rlhf.reward.model import RewardModel

    m = tmp_path / "m"
    shutil.copytree(rm_folder, m)
    heads = load_file(str(m / "heads.safetensors"))
    w = next(k for k in heads if k.endswith("weight"))
    b = next(k for k in heads if k.endswith("bias"))
    save_file({w: heads[w]}, str(m / "heads.safetensors"))  # the bias is missing
    with pytest.raises(UserError) as e:
        RewardModel.from_pretrained(m)
    assert str(e.value) == (f"{m / 'heads.safetensors'}: cannot load heads: does not match the model (missing {b}) "
                            "(head_type=ensemble, num_heads=2 in reward_config.json)")
    _edit_json(m / "reward_config.json", lambda d: d.update(num_heads=3))
    save_file(heads, str(m / "heads.safetensors"))
    with pytest.raises(UserError) as e:
        RewardModel.from_pretrained(m)
    assert f"shape {b} (2,) instead of (3,)" in str(e.value) and "num_heads=3" in str(e.value)


# -------------------------------------------------------------- big inputs ------------------
def test_rm_score_streams_in_chunks_and_matches_scoring_all_at_once(tmp_path, rm_folder, monkeypatch, capsys):
    from robust_rlhf.cli import main, rm
    from robust_rlhf.reward.model import RewardModel

    prompts = [f"Question {i}? " for i in range(23)]
    responses = [("ok " * (i % 7 + 1)) + f"#{i}" for i in range(23)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": p, "response": r, "id": i})
                             for i, (p, r) in enumerate(zip(prompts, responses))) + "\n\n")
    monkeypatch.setattr(rm, "SCORE_CHUNK_ROWS", 5)
    assert main(["rm", "score", "--model", str(rm_folder), "--input", str(src), "--output", str(tmp_path / "o.jsonl"),
                 "--batch-size", "3"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(23))
    ref = RewardModel.from_pretrained(rm_folder).score(prompts, responses, batch_size=64)
    got = torch.tensor([r["rewards_per_head"] for r in rows])
    assert torch.allclose(got, ref.per_head, atol=1e-5)
    assert "scored 23 rows" in capsys.readouterr().out


def test_over_long_line_is_refused_with_its_number_and_size(tmp_path, capsys):
    from robust_rlhf.cli import main
    from robust_rlhf.data.preferences import iter_scoring_inputs, load_preferences

    src = tmp_path / "in.jsonl"
    long_row = json.dumps({"prompt": "p", "response": "w" * 2_500_000})
    src.write_text(json.dumps({"prompt": "p", "response": "short"}) + "\n\n" + long_row + "\n")
    with pytest.raises(UserError) as e:
        list(iter_scoring_inputs(src))
    assert str(e.value).startswith(f"{src}: line 3 is {len(long_row):,} bytes, over the limit of 1,048,576 bytes")
    assert main(["rm", "score", "--model", str(tmp_path), "--input", str(src), "--output", str(tmp_path / "o.jsonl"),
                 "--max-line-bytes", "100"]) == 2
    assert f"line 3 is {len(long_row):,} bytes, over the limit of 100 bytes" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "p", "chosen": "c" * 1_200_000, "rejected": "r"}) + "\n")
    with pytest.raises(UserError, match=r"line 1 is 1,200,0\d\d bytes, over the limit"):
        load_preferences(prefs)


def test_input_larger_than_the_memory_limit_is_streamed_or_refused(tmp_path, rm_folder):
    """Under an address-space limit (RLIMIT_AS) leaving 300 MiB above the warmed-up process (the
    model itself needs ~180 MiB of it), a 330 MiB JSON Lines input (three rows among blank padding
    lines): `rm score` streams it and scores the three rows; the in-memory preference reader
    refuses it with one line instead of a MemoryError."""
    big = tmp_path / "big.jsonl"
    pad = (" " * 65_535 + "\n").encode()
    with big.open("wb") as f:
        for i in range(3):
            f.write((json.dumps({"prompt": "Q: ", "response": f"answer {i}"}) + "\n").encode())
            f.write(pad * 1760)  # 110 MiB of blank lines
    assert big.stat().st_size > 330 << 20
    r = _python(f"""
        import resource, sys
        from robust_rlhf.cli import main
        from robust_rlhf.errors import UserError
        from robust_rlhf.reward.model import RewardModel
        from robust_rlhf.data.preferences import load_preferences
        RewardModel.from_pretrained({str(rm_folder)!r})  # everything imported and warmed up first
        vm = next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (300 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            load_preferences({str(big)!r})
        except UserError as e:
            print("refused:", e)
        rc = main(["rm", "score", "--model", {str(rm_folder)!r}, "--input", {str(big)!r},
                   "--output", {str(tmp_path / "out.jsonl")!r}])
        sys.exit(rc)
    """, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MemoryError" not in r.stderr
    assert "too large to read into memory here" in r.stdout, r.stdout
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["response"] for x in rows] == ["answer 0", "answer 1", "answer 2"]
