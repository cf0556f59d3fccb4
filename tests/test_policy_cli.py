"""`policy train` / `policy sample` through an argparse parser built here (the lead wires `register`)."""

from __future__ import annotations

import argparse

import pytest

from robust_rlhf.cli import policy as policy_cli
from robust_rlhf.errors import UserError


def _parser():
    p = argparse.ArgumentParser(prog="robust-rlhf")
    sub = p.add_subparsers(dest="command")
    policy_cli.register(sub)
    return p


def test_help_texts_everywhere():
    p = _parser()
    for action in p._subparsers._group_actions[0].choices["policy"]._subparsers._group_actions[0].choices.values():
        for a in action._actions:
            if a.dest != "help":
                assert a.help, f"{action.prog} {a.dest} has no help"


def test_train_then_sample(tmp_path, capsys, read_jsonl):
    p = _parser()
    run = tmp_path / "run"
    args = p.parse_args(["policy", "train", "--config", "policy_tiny", "--output-dir", str(run),
                         "sampling.max_new_tokens=4", "log.progress=false", "log.eval_prompts=2"])
    assert args.func(args) == 0
    assert "proxy reward" in capsys.readouterr().out
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 2 and "gold_reward" in rows[-1]

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("This movie was\nThe plot\n", encoding="utf-8")
    out = tmp_path / "samples.jsonl"
    args = p.parse_args(["policy", "sample", "--policy", str(run), "--prompts", str(prompts), "--output", str(out),
                         "--num-samples", "2", "--max-new-tokens", "4"])
    assert args.func(args) == 0
    samples = read_jsonl(out)
    assert len(samples) == 4
    assert {"prompt", "response", "proxy_reward", "proxy_std", "gold_reward"} <= set(samples[0])
    # the run's proxy was gold:vader, so proxy == gold here
    assert all(abs(s["proxy_reward"] - s["gold_reward"]) < 1e-6 for s in samples)


def test_bad_method_and_unknown_key(tmp_path):
    p = _parser()
    args = p.parse_args(["policy", "train", "--output-dir", str(tmp_path), "method=dpo"])
    with pytest.raises(UserError, match="method"):
        args.func(args)
    args = p.parse_args(["policy", "train", "--config", "policy_rloo", "--output-dir", str(tmp_path), "ppo.epochs=2"])
    with pytest.raises(UserError, match="unknown key"):
        args.func(args)


def test_sample_needs_a_proxy(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n", encoding="utf-8")
    args = _parser().parse_args(["policy", "sample", "--policy", "smollm2-135m", "--prompts", str(prompts),
                                 "--output", str(tmp_path / "o.jsonl")])
    with pytest.raises(UserError, match="reward-model"):
        args.func(args)
