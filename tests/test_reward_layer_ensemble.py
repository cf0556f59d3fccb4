"""Layer ensemble (reward/layer_ensemble.py): the batched K-copy layer against each copy run alone
through Hugging Face's own BertLayer (eager attention: an independent computation), pooling and
per-member heads by hand, a tiny training run, save/load, and bad input."""

import json

import pytest
import torch
import torch.nn as nn

from robust_rlhf.errors import UserError
from robust_rlhf.reward.layer_ensemble import LayerEnsembleHeads, StackedLayer, transformer_layers


def _bert_config():
    from transformers import BertConfig

    return BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=2,
                      hidden_act="gelu", layer_norm_eps=1e-12, attn_implementation="eager")


def _random_layers(cfg, K, seed=0):
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(seed)
    layers = []
    for _ in range(K):
        layer = BertLayer(cfg).eval()
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0.0, 0.3)  # LayerNorm weights/biases too, so every parameter matters
        layers.append(layer)
    return layers


def _run_alone(layer, hidden, mask):
    """HF BertLayer with its additive (B, 1, 1, T) mask: 0 for tokens, a large negative for padding."""
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        out = layer(hidden, attention_mask=additive)
    return out[0] if isinstance(out, tuple) else out


def _mask():
    return torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])  # (B=3, T=5), right padding


def test_stacked_layer_equals_each_copy_run_alone():
    cfg, K = _bert_config(), 3
    layers = _random_layers(cfg, K)
    stacked = StackedLayer(cfg, K).eval()
    for k, layer in enumerate(layers):
        stacked.set_copy(k, layer)
    torch.manual_seed(1)
    shared = torch.randn(3, 5, 32)  # (B, T, H)
    per_member = torch.randn(K, 3, 5, 32)  # (K, B, T, H)
    mask = _mask()
    with torch.no_grad():
        out_shared = stacked(shared, mask)  # (K, B, T, H)
        out_member = stacked(per_member, mask.expand(K, -1, -1))
    assert out_shared.shape == (K, 3, 5, 32)
    for k, layer in enumerate(layers):
        torch.testing.assert_close(out_shared[k], _run_alone(layer, shared, mask), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_member[k], _run_alone(layer, per_member[k], mask), atol=1e-5, rtol=1e-5)
    # copy_state gives slot k back in the HF layer's naming
    for name, value in stacked.copy_state(1).items():
        torch.testing.assert_close(value, dict(layers[1].named_parameters())[name])


def test_layer_ensemble_heads_pool_each_member_and_apply_its_own_head():
    cfg, K = _bert_config(), 3
    layers = [_random_layers(cfg, K, seed=s) for s in (2, 3)]  # two top layers per member
    heads = LayerEnsembleHeads(cfg, K, top_layers=2, pooling="mean").eval()
    for j in range(2):
        for k in range(K):
            heads.layers[j].set_copy(k, layers[j][k])
    with torch.no_grad():
        heads.linear.weight.normal_()
        heads.linear.bias.normal_()
    torch.manual_seed(4)
    hidden, mask = torch.randn(3, 5, 32), _mask()
    with torch.no_grad():
        rewards, std = heads(hidden, mask)
    assert std is None and rewards.shape == (3, K)
    for k in range(K):
        x = _run_alone(layers[1][k], _run_alone(layers[0][k], hidden, mask), mask)  # (B, T, H)
        for b in range(3):
            n = int(mask[b].sum())
            pooled = x[b, :n].mean(0)  # mean over the real tokens only
            expected = pooled @ heads.linear.weight[k] + heads.linear.bias[k]
            torch.testing.assert_close(rewards[b, k], expected, atol=1e-5, rtol=1e-5)


def test_dropout_draws_differ_per_member_in_training():
    cfg, K = _bert_config(), 2
    cfg.hidden_dropout_prob = 0.5
    layer = _random_layers(cfg, 1)[0]
    stacked = StackedLayer(cfg, K)
    for k in range(K):
        stacked.set_copy(k, layer)  # identical weights: only dropout can make the copies differ
    torch.manual_seed(5)
    out = stacked.train()(torch.randn(3, 5, 32), _mask())
    assert not torch.allclose(out[0], out[1])
    out = stacked.eval()(torch.randn(3, 5, 32), _mask())
    torch.testing.assert_close(out[0], out[1])


def test_non_bert_backbones_and_too_many_top_layers_are_refused(minilm_rm_factory):
    with pytest.raises(UserError, match="BERT-family"):
        transformer_layers(nn.Linear(2, 2))
    model = minilm_rm_factory(head_type="layer_ensemble", num_heads=2, top_layers=6)
    with pytest.raises(UserError, match="top_layers=6"):
        model.score(["a"], [" b"])


def _tiny_cfg(overrides):
    from robust_rlhf.config import load_config
    from robust_rlhf.reward.train_config import RewardTrainConfig

    base = ["model.num_heads=3", "model.max_length=48", "data.limit=16", "stage1.max_steps=1", "stage1.eval_every=0",
            "stage1.loss_threshold=null", "layer_ensemble.epochs=2", "layer_ensemble.batch_size=8"]
    return load_config(RewardTrainConfig, "rm_layer_ensemble_minilm", base + overrides)


def test_tiny_layer_ensemble_trains_saves_reloads_and_members_differ(tmp_path):
    from safetensors.torch import load_file

    from robust_rlhf.reward.model import RewardModel
    from robust_rlhf.reward.train import train_reward_model

    out = train_reward_model(_tiny_cfg([]), tmp_path / "rm")
    saved = json.loads((out / "reward_config.json").read_text())
    assert saved["head_type"] == "layer_ensemble" and saved["trunk_layers"] == 5
    # the fine-tuned trunk is saved with 5 layers; the 3 top-layer copies live in heads.safetensors
    assert json.loads((out / "backbone" / "config.json").read_text())["num_hidden_layers"] == 5
    state = load_file(str(out / "heads.safetensors"))
    assert state["layers.0.query_weight"].shape == (3, 384, 384)
    w = state["layers.0.inter_weight"]
    assert all(not torch.equal(w[i], w[j]) for i in range(3) for j in range(i + 1, 3))  # copies differ

    prompts, responses = ["The film was", "I thought it", "Overall"], [" wonderful.", " dull and slow.", " fine"]
    model = RewardModel.from_pretrained(out)
    again = RewardModel.from_pretrained(out)
    a, b = model.score(prompts, responses), again.score(prompts, responses)
    assert a.per_head.shape == (3, 3)
    torch.testing.assert_close(a.per_head, b.per_head, atol=0, rtol=0)
    assert (a.per_head.std(dim=1) > 1e-4).all()  # the members disagree
    assert len(transformer_layers(model.backbone)) == 5


def test_without_stage1_the_trunk_is_stored_by_reference_and_cut_on_load(tmp_path):
    from robust_rlhf.reward.model import RewardModel
    from robust_rlhf.reward.train import train_reward_model

    cfg = _tiny_cfg(["stage1.enabled=false", "layer_ensemble.epochs=1", "layer_ensemble.init=reinit",
                     "data.validation=null"])
    out = train_reward_model(cfg, tmp_path / "rm")
    assert not (out / "backbone").exists()
    assert json.loads((out / "reward_config.json").read_text())["backbone_location"] == "minilm-l6"
    model = RewardModel.from_pretrained(out)
    assert len(transformer_layers(model.backbone)) == 5
    r = model.score(["The film was"], [" great"])
    assert r.per_head.shape == (1, 3) and torch.isfinite(r.per_head).all()
