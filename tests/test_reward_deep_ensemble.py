"""Deep-ensemble recipes (issue 23): members on their own data / backbones, the Laplace last layer.
Each preset: a tiny real run, scores (B, K), members that differ, save -> load -> the same scores."""

import json

import pytest
import torch

from robust_rlhf.config import load_config
from robust_rlhf.errors import UserError
from robust_rlhf.reward.deep_ensemble import member_pairs, member_prompt_sets
from robust_rlhf.reward.laplace import bt_laplace_precision, laplace_head_weights
from robust_rlhf.reward.model import RewardModel
from robust_rlhf.reward.train import train_reward_model
from robust_rlhf.reward.train_config import RewardTrainConfig

PROMPTS = ["This movie was", "The film is really", "I went to see"]
RESPONSES = [" wonderful and moving.", " a dull, lifeless mess.", " it twice, and loved it."]


def _tiny(preset, tmp_path, *extra):
    val = tmp_path / "val.jsonl"
    if not val.exists():
        rows = [json.loads(l) for l in open(__import__("robust_rlhf").__path__[0] + "/data/fixtures/builtin_validation.jsonl")][:4]
        val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(RewardTrainConfig, preset, [
        "data.limit=24", f"data.validation={val}", "model.max_length=32", "stage1.max_steps=1", "stage1.batch_size=4",
        "stage1.eval_every=0", "stage1.checkpoint_every=0", "stage1.loss_threshold=null", *extra])


def _check_round_trip(out, K):
    model = RewardModel.from_pretrained(out)
    scores = model.score(PROMPTS, RESPONSES)
    assert scores.per_head.shape == (3, K)
    assert torch.isfinite(scores.per_head).all()
    # members/heads differ: a non-zero spread on every text
    assert (scores.std > 1e-6).all()
    again = RewardModel.from_pretrained(out).score(PROMPTS, RESPONSES)
    torch.testing.assert_close(again.per_head, scores.per_head, rtol=0, atol=1e-5)
    return model, scores


@pytest.mark.parametrize("preset,data", [("rm_deep_partition_minilm", "partition"),
                                         ("rm_deep_bootstrap_minilm", "bootstrap"),
                                         ("rm_deep_seed_minilm", "seed")])
def test_deep_ensemble_presets_tiny_run(tmp_path, preset, data):
    cfg = _tiny(preset, tmp_path, "model.num_heads=2")
    assert cfg.members.data == data
    out = tmp_path / "rm"
    train_reward_model(cfg, out)
    model, scores = _check_round_trip(out, 2)
    assert model.config.head_type == "deep_ensemble" and len(model.config.head_stats["mean"]) == 2
    # each member is an ordinary single-head reward model; its own score is column k
    m1 = RewardModel.from_pretrained(out / "members" / "1")
    torch.testing.assert_close(m1.score(PROMPTS, RESPONSES).per_head[:, 0], scores.per_head[:, 1], rtol=0, atol=1e-5)
    sizes = [sum(1 for _ in open(out / "members" / "data" / f"member_{k}.jsonl")) for k in range(2)]
    summary = json.loads((out / "train_summary.json").read_text())
    if data == "partition":  # disjoint prompts covering the 24 pairs; `rm score` serves the (B, K) scores
        from robust_rlhf.cli import main

        inp = tmp_path / "in.jsonl"
        inp.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, RESPONSES)))
        assert main(["rm", "score", "--model", str(out), "--input", str(inp), "--output", str(tmp_path / "o.jsonl")]) == 0
        rows = [json.loads(l) for l in open(tmp_path / "o.jsonl")]
        torch.testing.assert_close(torch.tensor([r["rewards_per_head"] for r in rows]), scores.per_head, rtol=0, atol=1e-5)
        p0 = {json.loads(l)["prompt"] for l in open(out / "members" / "data" / "member_0.jsonl")}
        p1 = {json.loads(l)["prompt"] for l in open(out / "members" / "data" / "member_1.jsonl")}
        assert not p0 & p1 and sum(sizes) == 24
    elif data == "seed":
        assert sizes == [24, 24] and [m["seed"] for m in summary["members"]] == [0, 1]
    # re-running the same command reuses the finished members and gives the same model
    train_reward_model(cfg, out)
    torch.testing.assert_close(RewardModel.from_pretrained(out).score(PROMPTS, RESPONSES).per_head, scores.per_head,
                               rtol=0, atol=1e-5)


def test_lora_members_tiny_run(tmp_path):
    cfg = _tiny("rm_deep_lora_minilm", tmp_path, "model.num_heads=2")
    out = tmp_path / "rm"
    train_reward_model(cfg, out)
    _check_round_trip(out, 2)


def test_backbone_diverse_members_tiny_run(tmp_path):
    cfg = _tiny("rm_deep_backbones", tmp_path, "model.num_heads=2")
    out = tmp_path / "rm"
    train_reward_model(cfg, out)
    model, _ = _check_round_trip(out, 2)
    assert [m.config.backbone for m in model.members] == ["minilm-l6", "smollm2-135m"]
    assert [m.config.pooling for m in model.members] == ["mean", "last"]


def test_laplace_preset_tiny_run(tmp_path):
    cfg = _tiny("rm_deep_laplace_minilm", tmp_path, "model.num_heads=8")
    out = tmp_path / "rm"
    train_reward_model(cfg, out)
    model, scores = _check_round_trip(out, 8)
    # antithetic draws: the heads' mean is the stage-1 (MAP) head exactly
    w = model.heads.linear.weight
    torch.testing.assert_close(w[:4] + w[4:], 2 * w.mean(0, keepdim=True).expand(4, -1), rtol=0, atol=1e-5)


def test_member_prompt_sets_by_hand():
    prompts = ["b", "a", "c", "a", "d"]
    assert member_prompt_sets(prompts, 2, "seed", 0) == [["a", "b", "c", "d"]] * 2
    parts = member_prompt_sets(prompts, 3, "partition", 0)
    assert sorted(p for part in parts for p in part) == ["a", "b", "c", "d"] and sorted(map(len, parts)) == [1, 1, 2]
    boots = member_prompt_sets(prompts, 3, "bootstrap", 0)
    assert all(len(b) == 4 and set(b) <= {"a", "b", "c", "d"} for b in boots)
    assert len({tuple(b) for b in boots}) > 1  # members draw differently
    with pytest.raises(UserError, match="partition"):
        member_prompt_sets(prompts, 5, "partition", 0)

    class P:
        def __init__(self, prompt, i):
            self.prompt, self.i = prompt, i

    pairs = [P("a", 0), P("b", 1), P("a", 2)]
    assert [p.i for p in member_pairs(pairs, ["a", "a", "c"])] == [0, 2, 0, 2]


def test_laplace_by_hand():
    # H = 2, two pairs: d1 = (1, 0), d2 = (0, 2); w = 0 -> p = 1/2, p(1-p) = 1/4
    d = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    G = bt_laplace_precision(d, torch.zeros(2), 0.5)
    torch.testing.assert_close(G, torch.tensor([[0.75, 0.0], [0.0, 1.5]], dtype=torch.float64))
    # many antithetic draws: mean = MAP exactly, covariance -> G^-1 = diag(4/3, 2/3)
    w = torch.tensor([1.0, -1.0])
    heads = laplace_head_weights(G, w, 20001, torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(heads.mean(0), w.double(), rtol=0, atol=1e-6)
    cov = torch.cov(heads.T)
    torch.testing.assert_close(cov, torch.tensor([[4 / 3, 0.0], [0.0, 2 / 3]], dtype=torch.float64), rtol=0.05, atol=0.03)


def test_bad_member_overrides_refused_before_writing(tmp_path):
    out = tmp_path / "rm"
    cfg = _tiny("rm_deep_seed_minilm", tmp_path, "model.num_heads=2", "members.overrides=[[model.head_type=ensemble]]")
    with pytest.raises(UserError, match="members.overrides"):
        train_reward_model(cfg, out)
    cfg = _tiny("rm_deep_seed_minilm", tmp_path, "model.num_heads=2", "members.overrides=[[stage1.nope=1]]")
    with pytest.raises(UserError, match="nope"):
        train_reward_model(cfg, out)
    cfg = _tiny("rm_deep_seed_minilm", tmp_path, "model.num_heads=1")
    with pytest.raises(UserError, match="num_heads >= 2"):
        train_reward_model(cfg, out)
    assert not out.exists()
