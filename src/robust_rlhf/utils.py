"""Small shared helpers: atomic file writes, seeding, device/precision choice.

numpy and torch are imported where they are used, so that the write path, the temp-file owners
and the folder lock load in a moment (a second process checking a lock does not load torch)."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import stat
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from robust_rlhf.errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# Machine faults: one line per OS error, owner-tagged temp files, signals, folder locks.
_DISK_CAUSES = {  # a place that refuses a write (also matched in a library's error text: `disk_error`)
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit, e.g. `ulimit -f`, or the file system's maximum)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop)",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder",
    errno.EIO: "input/output error (a failing disk or network file system)",
    errno.EEXIST: "exists and is not a folder (a symlink loop or a dangling symlink?)",
}
_CAUSES = {**_DISK_CAUSES,  # and resources of the machine that are not a place to write
           errno.EMFILE: "too many open files (raise the limit: `ulimit -n`)",
           errno.ENFILE: "too many open files on this machine",
           errno.ENOMEM: "out of memory",
           errno.ESTALE: "stale file handle (a network file system lost the file)"}
MACHINE_ERRNOS = frozenset(_CAUSES)


def os_cause(e: OSError) -> str:
    """A short reason for an OS error (its errno's meaning, with a hint where one helps)."""
    return _CAUSES.get(e.errno or -1, e.strerror or type(e).__name__)


class WriteError(UserError):
    """A write that the machine refused (full disk, size limit, read-only, permission, symlink
    loop): one line naming the path and the cause. Nothing is left at the path or beside it."""

    def __init__(self, path: str | os.PathLike, e: OSError) -> None:
        self.path, self.errno = str(path), e.errno
        super().__init__(f"cannot write {str(path)!r}: {os_cause(e)}")


_ERRNO_IN_TEXT = re.compile(r"os error (\d+)|\[Errno (\d+)\]")
_STRERRORS = {os.strerror(n).lower(): n for n in _DISK_CAUSES}  # what a library's failed write may say


def disk_error(e: BaseException, where: str | os.PathLike | None = None) -> OSError | None:
    """The OS error behind a library's own exception type, or None: safetensors and the HF savers
    say "os error 28"; torch.save's zip writer says only that a write failed, so then the place
    is probed -- a full file system, or a file at the file-size limit (`ulimit -f`)."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    m = _ERRNO_IN_TEXT.search(text)
    if m:
        n = int(m.group(1) or m.group(2))
        return OSError(n, os.strerror(n))
    low = text.lower()
    for msg, n in _STRERRORS.items():
        if msg in low:
            return OSError(n, os.strerror(n))
    if where is None or not any(k in low for k in ("write", "unexpected pos", "streamwriter")):
        return None
    try:
        st = os.statvfs(where)
        if st.f_bavail == 0 or st.f_favail == 0:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            p = Path(where)
            files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
            if any(f.stat().st_size >= limit for f in files):
                return OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    except (OSError, ImportError):
        return None
    return None


@contextlib.contextmanager
def write_errors(path: str | os.PathLike, probe: str | os.PathLike | None = None):
    """Turn any `OSError` inside the block -- or a library's exception that stands for one
    (`disk_error`, probing `probe`) -- into a `WriteError` naming `path` (the final path, not a
    temp file the user never sees)."""
    try:
        yield
    except UserError:  # a WriteError already, or a check inside the block
        raise
    except OSError as e:
        raise WriteError(path, e) from None
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a refused write
        os_err = disk_error(e, probe)
        if os_err is None:
            raise
        raise WriteError(path, os_err) from None


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TEMP_RE = re.compile(r"\.(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[A-Za-z0-9_]+\.tmp$")
FOREIGN_TEMP_AGE_S = 24 * 3600
"""A temp file of another machine (shared file system) is only removed when older than this."""


def temp_prefix(final_name: str) -> str:
    """Hidden temp-file prefix for `final_name` carrying its owner: ``.<name>.<host>-<pid>-``
    (mkstemp/mkdtemp add a random part and ``.tmp``). The stale-temp cleaners read the owner
    back and remove only temps whose process is gone, never another live run's."""
    return f".{final_name[:120]}.{_HOST}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


def temp_is_stale(path: str | os.PathLike) -> bool:
    """True when `path` is one of our temp files (``*.tmp``) whose owner process is gone: on
    this machine its pid is dead; of another machine, older than `FOREIGN_TEMP_AGE_S`; a temp
    name without an owner (an interrupted write of an old version) counts as stale."""
    name = Path(path).name
    if not name.startswith(".") or not name.endswith(".tmp"):
        return False
    m = _TEMP_RE.search(name)
    if m is None:
        return True
    if m["host"] == _HOST:
        return not _pid_alive(int(m["pid"]))
    try:
        return time.time() - os.lstat(path).st_mtime > FOREIGN_TEMP_AGE_S
    except OSError:
        return False


def remove_stale_temps(folder: str | os.PathLike, prefix: str = ".") -> list[Path]:
    """Remove the temp files/folders in `folder` (names starting with `prefix`, ending in
    ``.tmp``) left by runs that are gone (`temp_is_stale`); returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).glob(f"{glob_escape(prefix)}*.tmp"))
    except OSError:
        return removed
    for stale in entries:
        if not temp_is_stale(stale):
            continue
        try:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        except OSError:
            continue
        removed.append(stale)
    return removed


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
    """Open a temp file beside `path` (owner-tagged, see `temp_prefix`) for writing; on a clean
    exit it is flushed, fsynced and renamed onto `path`, on any exit by an exception (a
    `Terminated` signal included) it is removed. OS errors become one `WriteError` line naming
    `path`. Temp files of earlier writes of `path` whose process is gone (a kill -9) are removed
    first. For outputs written piece by piece (`rm score` streams its rows through this)."""
    path = Path(path)
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    tmp = None
    with write_errors(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path.parent, prefix=f".{path.name[:120]}.")  # of a killed earlier write
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
            with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder + rename, so a reader (or a
    crash) never sees a half-written file; a refused write is one `WriteError` line."""
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Render a matplotlib figure to PNG in memory, close it, and write it atomically."""
    import io

    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", **savefig_kwargs)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP (see `raise_on_termination`), so every
    `finally` runs (temp files are removed) before the process exits with 128 + signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def raise_on_termination() -> None:
    """Install the CLI's signal policy (main thread only): SIGTERM and SIGHUP raise `Terminated`
    (cleanup runs, like Ctrl-C); SIGXFSZ is ignored, so exceeding a file-size limit is an
    `EFBIG` write error with a clean message instead of a killed process with a temp file left."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise_terminated)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class FolderLock:
    """An exclusive lock on a run folder, held until `release` (or the end of a ``with`` block, or
    the object's end). A second process that asks for the same folder is refused at once with a
    one-line `UserError` naming the folder. The kernel drops the lock when the holder exits (a
    kill -9 included), so a crashed run never blocks the next one. The folder must exist.

    Without `lock_file` the lock is ``fcntl.flock`` on the folder itself (no file is written:
    `rm train`, `policy train`). With `lock_file` it is ``flock`` on that file in the folder, into
    which the holder writes ``pid N on HOST``, and a refusal names the holder (`experiment run`,
    ``OUTPUT/.lock``). On a file system without ``flock`` (some network mounts) a warning says the
    folder is not locked and the run goes on.

    Args:
        folder: the run folder.
        what: the command a refusal names (e.g. ``"`rm train`"``).
        lock_file: None, or the name of the lock file in `folder` (created when missing).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run", lock_file: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder if lock_file is None else self.folder / lock_file
        self._fd: int | None = None
        with write_errors(self.path):
            if lock_file is None:
                fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            else:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except BlockingIOError:
            holder = self._holder(fd) if lock_file is not None else ""
            os.close(fd)
            if lock_file is None:
                raise UserError(f"{str(self.folder)!r}: another {what} is writing into this folder right now; "
                                "wait for it to finish or use another --output-dir") from None
            raise UserError(f"{self.folder}: another {what} is using this folder ({holder or 'pid unknown'}); "
                            "wait for it to finish or choose another --output-dir") from None
        except OSError:  # a file system without flock (some network mounts): go on unlocked
            log.warning("%s: cannot lock this folder (file system without flock); make sure no other run "
                        "writes into it", self.folder)
        self._fd = fd
        if lock_file is not None:
            try:
                with write_errors(self.path):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            except BaseException:
                self.release()
                raise

    @staticmethod
    def _holder(fd: int) -> str:
        """What the holder wrote into the lock file (``pid N on HOST``), or "" when unreadable."""
        try:
            return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


MAX_LINE_BYTES = 1 << 20
"""Default cap on one line of a JSON Lines input (1 MiB; `ROBUST_RLHF_MAX_LINE_BYTES` or a
command's --max-line-bytes changes it): a longer line is refused with its number and size."""
MEMORY_FACTOR = 4
"""An input read whole into memory needs about this many times its size (bytes, text, rows)."""


MAX_LINE_CAP = 1 << 40
"""The largest line cap taken (1 TiB): beyond it a number is a typo (and overflows the reader)."""


def check_line_cap(value: int, what: str = "--max-line-bytes") -> int:
    """A line cap in [1, `MAX_LINE_CAP`] bytes, or a one-line `UserError` naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LINE_CAP:
        raise UserError(f"{what} must be a number of bytes in [1, {MAX_LINE_CAP:,}], got {value!r}")
    return value


def max_line_bytes() -> int:
    """The line cap: `ROBUST_RLHF_MAX_LINE_BYTES` if set, else `MAX_LINE_BYTES`."""
    raw = os.environ.get("ROBUST_RLHF_MAX_LINE_BYTES", "").strip()
    if not raw:
        return MAX_LINE_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"ROBUST_RLHF_MAX_LINE_BYTES must be a positive number of bytes, got {raw!r}") from None
    return check_line_cap(value, "ROBUST_RLHF_MAX_LINE_BYTES")


def memory_available() -> int | None:
    """Bytes this process may still allocate: the smaller of the machine's available memory
    (/proc/meminfo MemAvailable) and what the address-space limit (RLIMIT_AS, `ulimit -v`)
    leaves above the current size; None when neither is known."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            vm = 0
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmSize:"):
                    vm = int(line.split()[1]) * 1024
            limits.append(max(0, soft - vm))
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


_SPECIAL_FILES = [(stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]


def check_regular_file(path: str | os.PathLike, what: str = "") -> None:
    """Refuse, with one line, an input that is a FIFO, a device or a socket (symlinks followed):
    reading one blocks for ever (a pipe no one writes) or never ends (/dev/zero). A missing file
    or a folder is left to the caller's own message."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    for test, kind in _SPECIAL_FILES:
        if test(mode):
            raise UserError(f"{what + ' ' if what else ''}{str(path)!r} is {kind}, not a regular file; "
                            "give a file on disk")


def check_fits_in_memory(path: str | os.PathLike, what: str = "input") -> None:
    """Refuse, with one line, a file too large to be read whole into memory on this machine
    (`MEMORY_FACTOR` times its size must fit in `memory_available`), before reading it."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return  # the reader reports a missing/unreadable file itself
    free = memory_available()
    if free is not None and size * MEMORY_FACTOR > free:
        raise UserError(f"{path}: this {what} is {size / 2**20:.0f} MiB, too large to read into memory here "
                        f"(about {free / 2**20:.0f} MiB available, {MEMORY_FACTOR}x the file needed); "
                        "split it into smaller files (JSON Lines inputs of `rm score` are streamed)")


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-inf; also numpy/torch scalars and arrays) replaced
    by None, so that it serialises as strict JSON (RFC 8259 has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if _array_module(obj):  # numpy/torch scalars and arrays
        try:
            return strict_json(_json_default(obj))
        except TypeError:
            return obj
    return obj


def _array_module(obj: Any) -> str | None:
    """"numpy" or "torch" when `obj`'s type comes from there (checked without importing them)."""
    top = type(obj).__module__.partition(".")[0]
    return top if top in ("numpy", "torch") else None


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """The one JSON writer of the project: strict JSON (non-finite floats -> null, `allow_nan=False`),
    numpy/torch values and paths converted."""
    return json.dumps(strict_json(obj), allow_nan=False, default=_json_default, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(dumps_json(r) + "\n" for r in rows))


def _json_default(obj: Any) -> Any:
    kind = _array_module(obj)
    if kind == "numpy":
        import numpy as np

        if isinstance(obj, (np.floating, np.integer)):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    if kind == "torch":
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_save_dir(final_dir: str | os.PathLike, write: Callable[[Path], None],
                    keep_previous: str | os.PathLike | None = None) -> Path:
    """Build a directory completely in a sibling temp folder, then swap it into place.

    `write(tmp_dir)` fills the folder. A crash at any point leaves either the previous
    `final_dir` or the new one -- never a half-written checkpoint; the temp folder carries its
    owner (`temp_prefix`) and is removed on every exit by an exception (signals included). OS
    errors (full disk, size limit, read-only, permission, symlink loop) become one `WriteError`
    line naming `final_dir`. `keep_previous`: where the replaced folder goes (instead of being
    deleted), e.g. a checkpoint's previous good copy.
    """
    final_dir = Path(final_dir)
    tmp: Path | None = None
    with write_errors(final_dir):
        try:
            final_dir.parent.mkdir(parents=True, exist_ok=True)
            recover_dir(final_dir)
            tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final_dir.name), suffix=".tmp", dir=final_dir.parent))
            with write_errors(final_dir, probe=tmp):
                write(tmp)
            normalise_modes(tmp)
            old = None
            if final_dir.exists():
                old = final_dir.with_name(f".{final_dir.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(final_dir, old)
            os.replace(tmp, final_dir)
            tmp = None
            if old is not None:
                if keep_previous is not None:
                    keep = Path(keep_previous)
                    if keep.exists():
                        shutil.rmtree(keep)
                    os.replace(old, keep)
                else:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
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
    unfinished write whose owner process is gone are removed (a live run's never)."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(f".{final_dir.name}.old")
    if old.exists():
        if final_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final_dir)
    if final_dir.parent.exists():
        remove_stale_temps(final_dir.parent, prefix=f".{final_dir.name[:120]}.")
    return final_dir


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) for reproducible runs."""
    import numpy as np
    import torch

    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls natively (x86: AVX512-BF16 or AMX-BF16; Arm: the
    BF16 extension) AND oneDNN will use them. Plain AVX-512 without BF16 makes oneDNN *emulate*
    bf16 (`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is then True too), which is the ~20x
    slower case of USER_NEEDS #14 -- so both the oneDNN check and the native-instruction check
    must hold."""
    import torch

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
    import torch

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
    """Every existing ancestor of `path` must be a folder, and the nearest one writable; no
    part of it may be a symlink that leads nowhere (a loop, or a missing target)."""
    for anc in [*list(path.parents)[::-1], path]:
        if anc.is_symlink() and not anc.exists():
            try:
                anc.stat()
                why = "a symlink that leads nowhere"
            except OSError as e:
                why = ("a symlink loop" if e.errno == errno.ELOOP
                       else f"a symlink to a missing target ({os.readlink(anc)!r})")
            raise UserError(f"{what} {str(path)!r}: {str(anc)!r} is {why}")
        if anc != path and anc.exists() and not anc.is_dir():
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


def check_free_space(path: str | os.PathLike, nbytes: int, what: str = "--output-dir") -> None:
    """Refuse, with one line, an output whose known size (`nbytes`: a lower bound, e.g. the weights
    a model save writes) does not fit in the free space of the file system `path` lies on (its
    nearest existing folder). Checked before the first write, so a run that would certainly end
    on a full disk is not started; what it writes beyond `nbytes` is still guarded by the atomic
    writers (`WriteError`)."""
    base = _nearest_existing(Path(path).expanduser())
    try:
        st = os.statvfs(base)
    except (OSError, AttributeError):  # no statvfs (not POSIX) or an unreadable place: the writers report
        return
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise UserError(f"{what} {str(path)!r}: needs at least {nbytes / 2**20:.1f} MiB but only "
                        f"{free / 2**20:.1f} MiB is free on its file system; free some space or choose another place")


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
    import torch

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
