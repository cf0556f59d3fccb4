"""The large built-in task: prompts, pair draws of a chosen size and label noise, the lab's data
unit from it, resumable generation, and the shipped fixture + learned gold."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from robust_rlhf.data.large_task import (LargeTaskConfig, build_large_task, draw_pairs, load_large_task, task_pairs,
                                         write_large_task_splits)
from robust_rlhf.data.prompts import LARGE_DOMAINS, large_prompt_domain, large_prompts, split_prompts
from robust_rlhf.errors import UserError


def _rows(n_prompts: int = 30, n: int = 8, seed: int = 0) -> list[dict]:
    """Synthetic task rows with distinct completions and (almost surely) distinct scores."""
    rng = random.Random(seed)
    splits = ["train"] * (n_prompts - 10) + ["validation"] * 5 + ["test"] * 5
    return [{"prompt": f"P{i} was", "domain": "movies", "split": splits[i],
             "completions": [f" c{i}-{j}" for j in range(n)],
             "gold": {"vader": [round(rng.uniform(-1, 1), 4) for _ in range(n)],
                      "learned": [rng.gauss(0, 1) for _ in range(n)]}} for i in range(n_prompts)]


def test_large_prompts_are_distinct_templates_times_subjects():
    p = large_prompts()
    subjects = sum(len(s) for s in LARGE_DOMAINS.values())
    assert (subjects, len(p), len(set(p))) == (59, 1003, 1003)  # 59 subjects x 17 templates
    assert p[0] == "This movie was" and "Compared to last time, our trip was" in p
    assert "Honestly, my new phone was" in p and large_prompt_domain("Honestly, my new phone was") == "gadgets"
    counts = {d: sum(large_prompt_domain(x) == d for x in p) for d in LARGE_DOMAINS}
    assert counts == {"movies": 221, "restaurants": 136, "hotels": 119, "books": 102, "gadgets": 136,
                      "music": 102, "games": 85, "travel": 102}


def test_task_pairs_hand_worked():
    rows = [{"prompt": "A", "split": "train", "completions": [" x", " y", " z", " w", " "],
             "gold": {"vader": [0.1, 0.1, 0.5, -0.2, 0.9]}}]
    pairs = task_pairs(rows, "vader")
    # C(5, 2) = 10 candidates: 4 with the empty completion and the (x, y) tie are dropped -> 5
    assert sorted((p.chosen, p.rejected) for p in pairs) == sorted(
        [(" z", " x"), (" x", " w"), (" z", " y"), (" y", " w"), (" z", " w")])
    assert all(p.extra["gold_chosen"] > p.extra["gold_rejected"] for p in pairs)
    with pytest.raises(UserError, match="no 'learned' gold"):
        task_pairs(rows, "learned")


@pytest.mark.parametrize("size,noise", [(100, 0.0), (200, 0.25), (101, 0.25)])
def test_draw_has_size_and_flips_exact_fraction(size, noise):
    rows = _rows()
    pairs = draw_pairs(rows, "train", "learned", size, noise, seed=3)
    assert len(pairs) == size
    assert len({(p.prompt, p.chosen, p.rejected) for p in pairs}) == size  # without replacement
    # independent count: a pair whose chosen has the lower gold score was flipped
    wrong = sum(1 for p in pairs if p.extra["gold_chosen"] < p.extra["gold_rejected"])
    assert wrong == int(round(noise * size))
    scores = {(r["prompt"], c): g for r in rows for c, g in zip(r["completions"], r["gold"]["learned"])}
    assert all(scores[(p.prompt, p.chosen)] == p.extra["gold_chosen"] for p in pairs)
    train_prompts = {r["prompt"] for r in rows if r["split"] == "train"}
    assert {p.prompt for p in pairs} <= train_prompts


def test_draw_is_deterministic_per_seed_and_capped():
    rows = _rows()
    a = draw_pairs(rows, "train", "vader", 150, 0.25, seed=0)
    b = draw_pairs(rows, "train", "vader", 150, 0.25, seed=0)
    c = draw_pairs(rows, "train", "vader", 150, 0.25, seed=1)
    key = lambda ps: [(p.prompt, p.chosen, p.rejected) for p in ps]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
    available = len(task_pairs([r for r in rows if r["split"] == "train"], "vader"))
    assert available <= 20 * 28
    with pytest.raises(UserError, match=f"holds {available} pairs"):
        draw_pairs(rows, "train", "vader", available + 1, 0.0, seed=0)


def _write_task(folder, rows):
    from robust_rlhf.data.large_task import summarize

    (folder / "large_task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "large_task.json").write_text(json.dumps({"config": LargeTaskConfig().to_dict(),
                                                        "summary": summarize(rows)}))


def test_lab_splits_from_large_task(tmp_path):
    from robust_rlhf.data.preferences import load_preferences

    task = tmp_path / "task"
    task.mkdir()
    _write_task(task, _rows())
    out = tmp_path / "data"
    out.mkdir()
    summary = write_large_task_splits(out, "learned", 120, 0.25, 50, seed=0, task_dir=task)
    train = load_preferences(out / "builtin_train.jsonl")
    test = load_preferences(out / "builtin_test.jsonl")
    assert len(train) == 120 and summary["train"]["flipped"] == 30
    assert sum(p.extra["gold_chosen"] < p.extra["gold_rejected"] for p in train) == 30
    assert len(test) == 50 and all(p.extra["gold_chosen"] > p.extra["gold_rejected"] for p in test)
    assert summary["validation"]["pairs"] == 50
    with pytest.raises(UserError, match="records the scores of learned, vader only"):
        write_large_task_splits(tmp_path / "x", "hf:foo", 10, 0.0, 10, seed=0, task_dir=task)
    with pytest.raises(UserError, match="data.train_pairs=100000"):
        write_large_task_splits(tmp_path / "x", "vader", 100_000, 0.0, 10, seed=0, task_dir=task)


def test_data_config_keys():
    from robust_rlhf.config import build_dataclass
    from robust_rlhf.experiments.config import PreferenceDataConfig

    d = build_dataclass(PreferenceDataConfig, {"task": "large", "train_pairs": 5000, "label_noise": 0.25})
    assert (d.task, d.train_pairs, d.label_noise) == ("large", 5000, 0.25)
    with pytest.raises(ValueError, match="apply to data.task: large"):
        PreferenceDataConfig(train_pairs=10)
    with pytest.raises(ValueError, match="data.train_pairs must be a positive integer"):
        PreferenceDataConfig(task="large", train_pairs=0)


def test_build_large_task_resumes_finished_chunks(tmp_path):
    """A finished chunk is reused as it is; the others are sampled with their own seed, so a
    resumed build gives the chunks an uninterrupted one gives."""
    prompts = ["The film was", "The pizza is", "Our room felt"]
    cfg = LargeTaskConfig(completions_per_prompt=2, max_new_tokens=2, chunk_prompts=2, batch_size=4,
                          split_fractions=(0.34, 0.33, 0.33))
    full = build_large_task(cfg, tmp_path / "a", prompts)
    rows_a, meta = load_large_task(tmp_path / "a")
    assert full["num_prompts"] == 3 and meta["config"] == cfg.to_dict()
    assert not (tmp_path / "a" / "large_chunks").exists()
    chunks = tmp_path / "b" / "large_chunks"
    chunks.mkdir(parents=True)
    (chunks / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "prompts": prompts}))
    planted = [{"prompt": p, "completions": [" planted one", " planted two"]} for p in prompts[:2]]
    (chunks / "chunk_00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in planted))
    build_large_task(cfg, tmp_path / "b", prompts)
    rows_b, _ = load_large_task(tmp_path / "b")
    assert [r["completions"] for r in rows_b[:2]] == [[" planted one", " planted two"]] * 2
    assert rows_b[2]["completions"] == rows_a[2]["completions"]
    with pytest.raises(UserError, match="already"):
        build_large_task(cfg, tmp_path / "b", prompts)
    with pytest.raises(UserError, match="other settings"):
        build_large_task(dataclasses.replace(cfg, max_new_tokens=3), tmp_path / "b", prompts)


def test_sampled_features_match_a_fresh_forward_pass():
    """The pooled hidden states kept during sampling are what the learned gold computes from the
    text alone (mean of the final hidden state over prompt + completion tokens)."""
    import torch

    from robust_rlhf.data.large_task import sample_chunk
    from robust_rlhf.gold.learned import pooled_features
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    prompts = ["The film was", "Compared to last time, our trip was"]
    comps, feats = sample_chunk(model, tok, prompts, LargeTaskConfig(completions_per_prompt=3, max_new_tokens=5,
                                                                     batch_size=4), seed=1)
    texts = [p + c for p, cs in zip(prompts, comps) for c in cs]
    ids = tok(texts).input_ids
    ref = pooled_features(model, tok, texts, max_length=64)
    assert feats.shape == (6, model.config.hidden_size)
    for i, t in enumerate(texts):  # a text that re-tokenises to other tokens than were sampled may differ
        if len(ids[i]) <= len(tok(prompts[i // 3]).input_ids) + 5:
            assert torch.allclose(feats[i], ref[i], atol=1e-4), t


def _hf_generate_chunk(model, tok, prompts, cfg, seed):
    """The large task's sampling written directly on Hugging Face's ``model.generate`` (what
    `sample_chunk` did before it went through the package's sampler): the reference."""
    import torch

    tok.padding_side = "left"
    n, k = cfg.completions_per_prompt, cfg.max_new_tokens
    flat = [p for p in prompts for _ in range(n)]
    texts, feats = [], []
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(0, len(flat), cfg.batch_size):
            enc = tok(flat[i : i + cfg.batch_size], return_tensors="pt", padding=True)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            out = model.generate(**enc, max_new_tokens=k + 1, do_sample=True, temperature=cfg.temperature,
                                 top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id,
                                 output_hidden_states=True, return_dict_in_generate=True)
            P = enc.input_ids.shape[1]
            new = out.sequences[:, P : P + k]
            steps = [h[-1] for h in out.hidden_states[: new.shape[1] + 1]]  # prefill (B, P, H), then (B, 1, H)
            states = torch.cat(steps, dim=1)[:, : P + new.shape[1]]
            ended = torch.cumsum((new == tok.eos_token_id).long(), dim=1) > 0
            keep = torch.cat([enc.attention_mask.bool(), ~ended], dim=1)[:, : states.shape[1]]
            feats.append(((states * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True)).float())
            texts.extend(tok.batch_decode(new, skip_special_tokens=True))
    return [texts[j * n : (j + 1) * n] for j in range(len(prompts))], torch.cat(feats)


def test_sample_chunk_draws_what_hf_generate_draws():
    """`sample_chunk` samples through `models.generation.generate`: for a fixed seed its
    completions and pooled states are those of Hugging Face's ``generate`` called directly with
    the task's settings (prompts of different lengths: left padding; 12 sequences in batches of
    8: the reseeding; prompts that repeat a text and its end-of-text, so that completions end
    early or are empty: the end-of-text cut, and no minimum length)."""
    import torch

    from robust_rlhf.data.large_task import sample_chunk
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    e = tok.eos_token
    prompts = [f"Yes.{e}Yes.{e}Yes.{e}Yes.", f"I agree.{e}I agree.{e}I", "The film was"]
    cfg = LargeTaskConfig(completions_per_prompt=4, max_new_tokens=6, batch_size=8)
    comps, feats = sample_chunk(model, tok, prompts, cfg, seed=3)
    ref_comps, ref_feats = _hf_generate_chunk(model, tok, prompts, cfg, seed=3)
    assert "" in comps[0]  # an end-of-text first: an empty completion
    assert comps == ref_comps
    assert feats.shape == ref_feats.shape == (12, model.config.hidden_size)
    assert torch.allclose(feats, ref_feats, atol=1e-5)


def test_bt_labels_follow_vader_at_low_temperature():
    from robust_rlhf.gold.learned import bt_labels

    labels = bt_labels([0.5, -0.1, 0.5, 0.9], random.Random(0), temperature=1e-4)
    assert sorted(labels) == sorted([(0, 1), (3, 0), (2, 1), (3, 1), (3, 2)])  # the (0, 2) tie skipped


def test_learned_gold_trains_saves_and_scores_like_recorded(tmp_path):
    """train-gold on a 4-prompt task: the saved folder, loaded as `learned:<folder>`, gives the
    scores it wrote into the task, and it fits its own training labels."""
    from robust_rlhf.data.large_task import save_features, summarize
    from robust_rlhf.gold import load_gold
    from robust_rlhf.data.train_gold import train_learned_gold
    from robust_rlhf.gold.learned import LearnedGoldConfig, pooled_features
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer

    comps = [" great, I loved it", " awful and boring", " fine I guess", " the worst ever",
             " wonderful fun", " bad, very bad", " okay", " a true delight"]
    rows = [{"prompt": p, "domain": "movies", "split": s, "completions": comps[i % 2 * 4: i % 2 * 4 + 4],
             "gold": {"vader": [0.8, -0.6, 0.2, -0.7] if i % 2 == 0 else [0.7, -0.5, 0.1, 0.6]}}
            for i, (p, s) in enumerate([("The film was", "train"), ("The pizza was", "train"),
                                        ("Our room was", "validation"), ("The album was", "test")])]
    task, feats_dir = tmp_path / "task", tmp_path / "features"
    task.mkdir()
    feats_dir.mkdir()
    cfg = LargeTaskConfig(completions_per_prompt=4)
    (task / "large_task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task / "large_task.json").write_text(json.dumps({"config": cfg.to_dict(), "summary": summarize(rows)}))
    model, tok = load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    save_features(feats_dir, 0, rows, pooled_features(model, tok, [r["prompt"] + c for r in rows for c in r["completions"]], 64))
    report = train_learned_gold(LearnedGoldConfig(steps=60, hidden=16), task, feats_dir, tmp_path / "gold")
    assert report["accuracy_training_labels"]["accuracy_bt_labels"] > 0.8
    recorded, _ = load_large_task(task)
    gold = load_gold(f"learned:{tmp_path / 'gold'}")
    for r in recorded:
        assert gold([r["prompt"]] * 4, r["completions"]) == pytest.approx(r["gold"]["learned"], abs=2e-4)
