"""The shipped large fixture and learned gold: they load, match their generator's recorded
settings, and the recorded scores are what the golds give."""

from __future__ import annotations

import pytest

from robust_rlhf.data.preferences import FIXTURE_DIR, SPLITS
from robust_rlhf.data.large_task import LargeTaskConfig, load_large_task, summarize
from robust_rlhf.data.prompts import large_prompts, split_prompts
from robust_rlhf.gold.learned import DEFAULT_DIR


def test_fixture_matches_its_generator_settings():
    rows, meta = load_large_task()
    cfg = LargeTaskConfig()
    assert meta["config"] == cfg.to_dict() and meta["generator"] == "robust-rlhf data build-task --task large"
    prompts = large_prompts()
    assert [r["prompt"] for r in rows] == prompts and len(rows) >= 1000
    for split, part in zip(SPLITS, split_prompts(prompts, cfg.split_fractions, cfg.seed)):
        assert {r["prompt"] for r in rows if r["split"] == split} == set(part)
    assert all(len(r["completions"]) == cfg.completions_per_prompt for r in rows)
    assert set(meta["summary"]["golds"]) == {"vader", "learned"}
    assert meta["summary"] == summarize(rows)
    size = sum(p.stat().st_size for p in FIXTURE_DIR.glob("large_task.*")) + \
        sum(p.stat().st_size for p in DEFAULT_DIR.iterdir())
    assert size < 10 * 2**20


def test_recorded_vader_scores_are_vaders():
    from robust_rlhf.gold import load_gold

    rows, _ = load_large_task()
    vader = load_gold("vader")
    for r in rows[::50]:
        assert r["gold"]["vader"] == pytest.approx(vader([r["prompt"]] * 8, r["completions"]), abs=6e-5)


def test_learned_gold_gives_the_recorded_scores():
    """`gold: learned` re-reads the text; the recorded scores came from the sampling's own
    forward passes. They agree wherever the text re-tokenises to the sampled tokens (nearly always)."""
    from robust_rlhf.gold import load_gold

    rows, meta = load_large_task()
    gold = load_gold("learned")
    assert gold.name == "learned"
    got, want = [], []
    for r in rows[::250]:
        got += gold([r["prompt"]] * len(r["completions"]), r["completions"])
        want += r["gold"]["learned"]
    close = [abs(a - b) < 2e-3 for a, b in zip(got, want)]
    assert sum(close) >= 0.9 * len(close), list(zip(got, want))
    acc = meta["learned_gold"]["accuracy_training_labels"]
    assert 0.5 < acc["accuracy_bt_labels"] <= 1.0
