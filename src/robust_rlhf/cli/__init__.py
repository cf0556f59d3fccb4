"""The `robust-rlhf` command line: thin -- parse arguments, load a config, call a recipe.

Each command group lives in its own module exposing `register(subparsers)`.
User errors (`UserError`) print one line and exit 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

# GNU OpenMP (torch's libgomp) threads that find no work spin before sleeping: 300,000 spins by
# default, forever with OMP_WAIT_POLICY=ACTIVE, none with PASSIVE. On shared cores a long spin
# steals the core a busy sibling needs (B's measurements: MiniLM forward 2.0 s/step spinning vs
# 0.4-0.8 s passive under load); no spin makes every parallel region pay a wake-up (PPO step of the
# demo, idle: 4.3 s passive vs 3.1 s spinning). A short spin keeps both: 2.81 s/step idle, 4.24 s
# with a competing busy process (PASSIVE 4.09, one thread 4.18) -- docs/experiments.md "Threads".
# Read when libgomp starts, so it is set here, before anything imports torch; any OpenMP wait
# setting the user made wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"

from robust_rlhf import __version__
from robust_rlhf.errors import UserError

# Command-group modules, in the order `--help` lists them.
COMMAND_MODULES = [
    "robust_rlhf.cli.rm",
    "robust_rlhf.cli.data",
    "robust_rlhf.cli.policy",
    "robust_rlhf.cli.experiment",
    "robust_rlhf.cli.simulate",
    "robust_rlhf.cli.serve",
]


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit status 2), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"robust-rlhf: error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robust-rlhf",
        description=(
            "Reward-robust RLHF: train reward models that know their uncertainty "
            "(BT, BSR, linear-head ensembles, BRME), aggregate them robustly, and optimise "
            "policies against them without reward hacking."
        ),
    )
    parser.add_argument("--version", action="version", version=f"robust-rlhf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _close_progress_bars() -> None:
    """Close the progress bars a failed command left open, so its error is a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help/--version (0) or a usage error (2, already printed on one line)
        return int(e.code or 0)
    if not args.verbose:
        # Keep stderr for our progress bars and one-line errors: no weight-loading bars or
        # library warnings from transformers unless --verbose.
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|trl)\.")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from robust_rlhf.utils import MACHINE_ERRNOS, Terminated, os_cause, raise_on_termination

    raise_on_termination()  # SIGTERM/SIGHUP unwind like Ctrl-C (temp files removed); SIGXFSZ -> EFBIG
    try:
        return int(args.func(args) or 0)
    except OSError as e:
        if e.errno not in MACHINE_ERRNOS:
            raise
        # The machine refused (full disk, size limit, read-only, permission, symlink loop) in a
        # write that does not go through utils' atomic writers: still one line naming the file.
        where = e.filename if e.filename is not None else "a file"
        _close_progress_bars()
        print(f"robust-rlhf: error: {where}: {os_cause(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        _close_progress_bars()
        print("robust-rlhf: error: out of memory (the machine's memory or `ulimit -v`); use smaller inputs or "
              "batches, or a machine with more memory", file=sys.stderr)
        return 1
    except RuntimeError as e:  # torch's allocators: "can't allocate memory", "CUDA out of memory"
        first = (str(e).strip().splitlines() or [""])[0]
        if not any(k in first.lower() for k in ("out of memory", "can't allocate memory", "cannot allocate memory")):
            raise
        _close_progress_bars()
        print(f"robust-rlhf: error: out of memory ({first[:200]}); use a smaller batch_size or max_length, or "
              "a machine with more memory", file=sys.stderr)
        return 1
    except Terminated as e:
        _close_progress_bars()
        print(f"robust-rlhf: {e} (temporary files removed)", file=sys.stderr)
        return 128 + e.signum
    except RecursionError:
        print("robust-rlhf: error: input nested too deeply", file=sys.stderr)
        return 2
    except UserError as e:
        _close_progress_bars()
        print(f"robust-rlhf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robust-rlhf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
