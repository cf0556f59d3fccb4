"""RewardModel on the real MiniLM backbone: pooling, padding invariance, heads, save/load."""

import json

import pytest
import torch

from robust_rlhf.errors import UserError
from robust_rlhf.reward.heads import RewardHeads, pool_hidden
from robust_rlhf.reward.model import RewardModel


def test_pool_last_uses_the_mask_for_left_and_right_padding():
    h = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_hidden(h, right, "last")[:, 0].tolist() == [1.0, 7.0]  # positions 1 and 3
    assert pool_hidden(h, left, "last")[:, 0].tolist() == [3.0, 7.0]
    assert pool_hidden(h, right, "mean")[:, 0].tolist() == [0.5, 5.5]
    assert pool_hidden(h, right, "cls")[:, 0].tolist() == [0.0, 4.0]


def test_gaussian_heads_give_positive_std_and_split_columns():
    heads = RewardHeads(8, 3, "gaussian", min_std=0.01)
    mean, std = heads(torch.randn(5, 8))
    assert mean.shape == std.shape == (5, 3)
    assert (std >= 0.01).all()


def test_each_head_gets_its_own_init():
    heads = RewardHeads(16, 4, "ensemble")
    heads.reset_heads([0, 1, 2, 3], generator=torch.Generator().manual_seed(0))
    w = heads.linear.weight
    assert not torch.allclose(w[0], w[1])
    assert w.std().item() == pytest.approx(1 / 16**0.5, rel=0.35)  # N(0, 1/sqrt(H))


def test_text_scored_alone_equals_text_scored_in_a_mixed_length_batch(minilm_rm_factory):
    # fp32: padding must not change the math (bf16 autocast rounds differently per batch shape; its
    # closeness to fp32 is tests/test_precision.py's).
    rm = minilm_rm_factory(head_type="ensemble", num_heads=4, precision="fp32")
    prompts = ["This movie was", "I", "The ending felt"]
    responses = [" great.", " really did not enjoy a single minute of this long, dull and boring film.", " odd"]
    batch = rm.score(prompts, responses, batch_size=3)
    for i in range(3):
        alone = rm.score([prompts[i]], [responses[i]])
        assert torch.allclose(alone.per_head[0], batch.per_head[i], atol=1e-5)


def test_decoder_backbone_pools_last_real_token_with_pad_equal_eos():
    # smollm2's pad token is its EOS: pooling must come from the mask, not a pad-id search.
    from robust_rlhf.reward.model import RewardModelConfig

    rm = RewardModel(RewardModelConfig(backbone="smollm2-135m", head_type="ensemble", num_heads=2, max_length=32,
                                       precision="fp32"))
    assert rm.config.pooling == "last"
    assert rm.tokenizer.pad_token_id == rm.tokenizer.eos_token_id
    texts = ["Great movie", "It was a long and rather tedious film overall"]
    batch = rm.score(["", ""], texts)
    alone = rm.score([""], texts[:1])
    assert torch.allclose(alone.per_head[0], batch.per_head[0], atol=1e-4)


def test_save_load_score_identical(minilm_rm_factory, tmp_path):
    rm = minilm_rm_factory(head_type="gaussian", num_heads=3)
    prompts, responses = ["A", "The plot was"], [" fine film", " a mess"]
    before = rm.score(prompts, responses)
    rm.save_pretrained(tmp_path / "m")
    loaded = RewardModel.from_pretrained(tmp_path / "m")
    after = loaded.score(prompts, responses)
    assert torch.equal(before.per_head, after.per_head)
    assert torch.equal(before.per_head_std, after.per_head_std)
    cfg = json.loads((tmp_path / "m" / "reward_config.json").read_text())
    assert cfg["head_type"] == "gaussian" and cfg["num_heads"] == 3


def test_frozen_backbone_ensemble_saves_heads_only(minilm_rm_factory, tmp_path):
    rm = minilm_rm_factory(head_type="ensemble", num_heads=10)
    rm.save_pretrained(tmp_path / "heads_only", save_backbone=False)
    files = {p.name: p.stat().st_size for p in (tmp_path / "heads_only").iterdir()}
    assert "backbone" not in files
    assert sum(files.values()) < 50_000  # kilobytes, not a model copy
    again = RewardModel.from_pretrained(tmp_path / "heads_only")
    assert torch.equal(rm.score(["x"], [" y"]).per_head, again.score(["x"], [" y"]).per_head)


def test_score_output_shapes_and_stats(minilm_rm_factory):
    rm = minilm_rm_factory(head_type="ensemble", num_heads=5)
    out = rm.score(["a", "b"], [" c", " d"])
    assert out.per_head.shape == (2, 5)
    # unbiased variance over the 5 heads, computed by hand in float64: sum (r_k - mean)^2 / (K - 1)
    rows = out.per_head.double().tolist()
    by_hand = [sum((r - sum(row) / 5) ** 2 for r in row) / 4 for row in rows]
    assert out.var.double().tolist() == pytest.approx(by_hand, rel=1e-5)
    assert out.std.double().tolist() == pytest.approx([v**0.5 for v in by_hand], rel=1e-5)
    assert out.per_head_std is None


def test_from_pretrained_rejects_non_model_folder(tmp_path):
    with pytest.raises(UserError, match="not a robust-rlhf reward model"):
        RewardModel.from_pretrained(tmp_path)


def test_mismatched_prompt_and_response_counts(minilm_rm_factory):
    rm = minilm_rm_factory(head_type="scalar")
    with pytest.raises(UserError, match="2 prompts but 1 responses"):
        rm.score(["a", "b"], ["c"])


def test_truncation_is_counted(minilm_rm_factory):
    rm = minilm_rm_factory(head_type="scalar", max_length=8)
    rm.score(["word " * 20, "short"], [" x", " y"])
    assert rm.truncated_count == 1


# ---- truncation keeps the response (issue 11) -------------------------------------------------
# Plain English words that MiniLM's WordPiece reads as one token each,
# that are one token each, so "the last n words" is "the last n prompt tokens", counted by hand.
_WORDS = ["apple", "river", "stone", "cloud", "green", "table", "light", "house", "music", "water"]


def test_long_prompt_keeps_response_and_equals_hand_left_truncation(minilm_rm_factory):
    rm = minilm_rm_factory(head_type="ensemble", num_heads=3, max_length=16)
    assert all(len(rm.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1 for w in _WORDS)
    prompt = " ".join(_WORDS * 3)  # 30 one-token words: far over max_length alone
    good, bad = " great fun", " awful mess"
    assert [len(rm.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in (good, bad)] == [2, 2]
    out = rm.score([prompt, prompt], [good, bad]).per_head
    assert rm.truncated_count == 2
    assert not torch.allclose(out[0], out[1])  # the responses are seen
    # By hand: 16 tokens = [CLS] + 12 prompt words + 2 response words + [SEP] -> the last 12 words.
    tail = " ".join((_WORDS * 3)[-12:])
    rm.truncated_count = 0
    hand = rm.score([tail, tail], [good, bad]).per_head
    assert rm.truncated_count == 0  # the hand-cut text fits exactly
    torch.testing.assert_close(out, hand, atol=1e-5, rtol=1e-5)


def test_response_longer_than_max_length(minilm_rm_factory):
    long_response = " " + " ".join(_WORDS * 2)  # 20 tokens
    rm = minilm_rm_factory(head_type="scalar", max_length=8)
    got = rm.score(["some prompt"], [long_response]).per_head
    # left_prompt: prompt dropped, response's first 8 - 2 = 6 tokens kept.
    hand = rm.score([""], [" " + " ".join(_WORDS[:6])]).per_head
    torch.testing.assert_close(got, hand, atol=1e-5, rtol=1e-5)
    strict = minilm_rm_factory(head_type="scalar", max_length=8, truncation="error")
    with pytest.raises(UserError, match="text 0: the response alone is 20 tokens"):
        strict.score(["some prompt"], [long_response])
    assert strict.score(["word " * 20], [" ok"]).per_head.shape == (1, 1)  # prompt cut, no error


def test_truncation_setting_is_saved_and_old_configs_default_to_left_prompt(minilm_rm_factory, tmp_path):
    import json

    from robust_rlhf.reward.model import RewardModel, RewardModelConfig

    rm = minilm_rm_factory(head_type="scalar", truncation="error")
    rm.save_pretrained(tmp_path / "a", save_backbone=False)
    assert json.loads((tmp_path / "a" / "reward_config.json").read_text())["truncation"] == "error"
    assert RewardModel.from_pretrained(tmp_path / "a").config.truncation == "error"
    raw = json.loads((tmp_path / "a" / "reward_config.json").read_text())
    del raw["truncation"]  # a model saved before the setting existed
    (tmp_path / "a" / "reward_config.json").write_text(json.dumps(raw))
    assert RewardModel.from_pretrained(tmp_path / "a").config.truncation == "left_prompt"
    with pytest.raises(ValueError, match="truncation must be"):
        RewardModelConfig(truncation="right")
