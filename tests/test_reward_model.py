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
    rm = minilm_rm_factory(head_type="ensemble", num_heads=4)
    prompts = ["This movie was", "I", "The ending felt"]
    responses = [" great.", " really did not enjoy a single minute of this long, dull and boring film.", " odd"]
    batch = rm.score(prompts, responses, batch_size=3)
    for i in range(3):
        alone = rm.score([prompts[i]], [responses[i]])
        assert torch.allclose(alone.per_head[0], batch.per_head[i], atol=1e-5)


def test_decoder_backbone_pools_last_real_token_with_pad_equal_eos():
    # smollm2's pad token is its EOS: pooling must come from the mask, not a pad-id search.
    from robust_rlhf.reward.model import RewardModelConfig

    rm = RewardModel(RewardModelConfig(backbone="smollm2-135m", head_type="ensemble", num_heads=2, max_length=32))
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
    assert torch.allclose(out.var, out.per_head.var(dim=1, unbiased=True))
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
