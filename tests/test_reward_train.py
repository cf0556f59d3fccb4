"""Training recipe on the real MiniLM backbone: tiny runs, resume, CLI eval/score, accuracy."""

import json

import pytest
import torch
from safetensors.torch import load_file

from robust_rlhf.checkpoint import BackboneHeadCheckpoint
from robust_rlhf.cli import main
from robust_rlhf.config import load_config
from robust_rlhf.reward.model import RewardModel
from robust_rlhf.reward.train import train_reward_model
from robust_rlhf.reward.train_config import RewardTrainConfig


def test_tiny_ensemble_trains_saves_and_reloads(tiny_trained_rm, read_jsonl):
    out = tiny_trained_rm
    rm = RewardModel.from_pretrained(out)
    assert rm.config.num_heads == 3 and rm.config.head_type == "ensemble"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["stage1"]["steps"] == 8
    assert (out / "config.yaml").exists() and (out / "train_log.jsonl").exists()
    log = read_jsonl(out / "train_log.jsonl")
    assert any(r["stage"] == 1 and "eval/val_accuracy" in r for r in log)
    # seed 001's hidden-state statistics are tracked at every stage-1 evaluation
    evals = [r for r in log if r["stage"] == 1 and "eval/val_accuracy" in r]
    for key in ("hidden_norm_dispersion", "hidden_diff_norm_mean", "hidden_diff_norm_std", "hidden_effective_rank",
                "head_weight_norm"):
        assert all(r[f"eval/{key}"] > 0 for r in evals), key
    assert any(r["stage"] == 2 for r in log)
    # heads differ (own init + bootstrap), so the ensemble has non-zero variance
    out_ = rm.score(["This movie was"], [" great fun"])
    assert out_.var.item() > 0
    assert len(rm.config.head_stats["mean"]) == 3


def test_resume_after_interruption_reaches_the_same_weights(tmp_path, monkeypatch):
    # 4 steps, a checkpoint every 2: the interrupted run stops right after the step-2 checkpoint, so the
    # resumed one restores weights, optimizer, scheduler and data order mid-run and does steps 3-4
    overrides = ["model.num_heads=2", "data.limit=48", "stage1.max_steps=4", "stage1.checkpoint_every=2",
                 "stage2.epochs=3", "model.max_length=32", "data.validation=null"]
    cfg = load_config(RewardTrainConfig, "rm_tiny", overrides)
    train_reward_model(cfg, tmp_path / "full")

    original = BackboneHeadCheckpoint.save
    def crash_after_step_2(self, backbone, head, opt, sched, progress, cfg_dict):
        original(self, backbone, head, opt, sched, progress, cfg_dict)
        if progress["step"] == 2:
            raise RuntimeError("simulated crash")
    monkeypatch.setattr(BackboneHeadCheckpoint, "save", crash_after_step_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_reward_model(cfg, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "reward_config.json").exists()  # no half model
    monkeypatch.setattr(BackboneHeadCheckpoint, "save", original)
    train_reward_model(cfg, tmp_path / "resumed")

    a, b = load_file(str(tmp_path / "full" / "heads.safetensors")), load_file(str(tmp_path / "resumed" / "heads.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    la = (tmp_path / "full" / "train_log.jsonl").read_text()
    lb = (tmp_path / "resumed" / "train_log.jsonl").read_text()
    assert [json.loads(x)["losses/loss"] for x in la.splitlines() if '"stage": 1' in x] == pytest.approx(
        [json.loads(x)["losses/loss"] for x in lb.splitlines() if '"stage": 1' in x], rel=1e-5)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, monkeypatch):
    cfg = load_config(RewardTrainConfig, "rm_tiny", ["stage1.max_steps=2", "stage1.checkpoint_every=1",
                                                     "data.validation=null", "stage2.epochs=1"])
    train_reward_model(cfg, tmp_path)
    from robust_rlhf.errors import UserError

    other = load_config(RewardTrainConfig, "rm_tiny", ["stage1.max_steps=3", "stage1.lr=1e-3",
                                                       "data.validation=null", "stage2.epochs=1"])
    with pytest.raises(UserError, match="checkpoint of a different config"):
        train_reward_model(other, tmp_path)


def test_cli_eval_and_score(tiny_trained_rm, tmp_path, capsys, read_jsonl):
    assert main(["rm", "eval", "--model", str(tiny_trained_rm), "--data", "builtin:test",
                 "--output-dir", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["num_pairs"] > 100 and len(m["accuracy_per_head"]) == 3
    # accuracy recomputed independently: score the same pairs through the public API and count
    # chosen > rejected under the ensemble mean (one pair of slack for batch-padding round-off)
    from robust_rlhf.data.preferences import load_preferences

    pairs = load_preferences("builtin:test")
    rm_direct = RewardModel.from_pretrained(tiny_trained_rm)
    ch = rm_direct.score([p.prompt for p in pairs], [p.chosen for p in pairs]).mean
    rj = rm_direct.score([p.prompt for p in pairs], [p.rejected for p in pairs]).mean
    assert m["num_pairs"] == len(pairs)
    assert m["accuracy"] == pytest.approx(sum(int(c > r) for c, r in zip(ch.tolist(), rj.tolist())) / len(pairs),
                                          abs=1.01 / len(pairs))
    assert (tmp_path / "ev" / "variance_histograms.png").stat().st_size > 1000
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "The film was", "response": " wonderful", "id": 7}\n'
                   '{"prompt": "The film was", "response": " awful"}\n')
    assert main(["rm", "score", "--model", str(tiny_trained_rm), "--input", str(inp),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert rows[0]["id"] == 7 and len(rows[0]["rewards_per_head"]) == 3
    rm = RewardModel.from_pretrained(tiny_trained_rm)
    direct = rm.score(["The film was"] * 2, [" wonderful", " awful"])  # one batch, as the CLI scores it
    assert rows[0]["reward"] == pytest.approx(direct.mean[0].item(), abs=1e-5)
    assert rows[0]["reward_std"] == pytest.approx(direct.std[0].item(), abs=1e-5)


def test_cli_user_errors_are_one_line(tmp_path, cli_error):
    cli_error(["rm", "train", "--output-dir", tmp_path, "stage1.nope=1"], "unknown key 'stage1.nope'")
    cli_error(["rm", "train", "--output-dir", tmp_path, "loss.bsr_coef=-1"], "bsr_coef must be a finite number >= 0")
    cli_error(["rm", "eval", "--model", tmp_path, "--data", "builtin:test", "--output-dir", tmp_path / "e"],
              "not a robust-rlhf reward model")


def test_bt_minilm_held_out_accuracy_well_above_chance(tmp_path):
    """A real (short) BT run of MiniLM on the built-in task beats chance clearly on unseen prompts."""
    cfg = load_config(RewardTrainConfig, "rm_bt_minilm", ["stage1.max_steps=40", "stage1.eval_every=0",
                                                          "data.validation=null"])
    train_reward_model(cfg, tmp_path)
    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.reward.evaluate import evaluate_reward_model

    rm = RewardModel.from_pretrained(tmp_path)
    metrics, _ = evaluate_reward_model(rm, load_preferences("builtin:test"))
    assert metrics["accuracy"] >= 0.65, metrics["accuracy"]
    assert metrics["accuracy_ci95"][0] > 0.5


@pytest.mark.parametrize("overrides", [
    ["model.head_type=gaussian", "stage2.gaussian_loss=marginal"],
    ["model.head_type=gaussian", "stage2.gaussian_loss=bt_reparam"],
    ["model.head_type=gaussian", "stage2.gaussian_loss=regression"],
    ["stage1.lora=true", "model.head_type=scalar"],
    ["loss.bsr_coef=1e-3", "loss.center_coef=1e-2", "model.head_type=scalar"],
    ["stage1.enabled=false"],
], ids=["brme-marginal", "brme-bt-reparam", "brme-regression", "lora-stage1", "bsr-and-centering", "frozen-pretrained-heads-only"])
def test_recipe_variants_train_save_and_reload(tmp_path, overrides, read_jsonl):
    cfg = load_config(RewardTrainConfig, "rm_tiny", ["stage1.max_steps=2", "stage2.epochs=2", "data.limit=32",
                                                     "model.max_length=32", *overrides])
    train_reward_model(cfg, tmp_path)
    rm = RewardModel.from_pretrained(tmp_path)
    out = rm.score(["The film was"], [" lovely"])
    assert out.per_head.shape == (1, rm.config.num_heads)
    assert torch.isfinite(out.per_head).all()
    if cfg.model.head_type == "gaussian":
        assert out.per_head_std is not None and (out.per_head_std > 0).all()
    if not cfg.stage1.enabled:  # untouched backbone stored by reference: heads only
        assert not (tmp_path / "backbone").exists()
    if cfg.stage1.lora:  # LoRA merged into an ordinary backbone folder
        assert (tmp_path / "backbone" / "model.safetensors").exists()
        assert not any("lora" in k for k in load_file(str(tmp_path / "backbone" / "model.safetensors")))
    log = read_jsonl(tmp_path / "train_log.jsonl")
    if cfg.loss.bsr_coef > 0:
        assert all("losses/bsr_penalty" in r and "losses/center_penalty" in r for r in log if r["stage"] == 1)


def _synthetic_pairs(N=256, seed=0):
    """(N, 2, 3) features [f0, flag, 1] of (chosen, rejected): even pairs are clear (chosen has
    the larger f0), odd pairs are ambiguous (flag 1 on both texts, order random)."""
    g = torch.Generator().manual_seed(seed)
    f0c, f0r = torch.randn(N, generator=g), torch.randn(N, generator=g)
    amb = torch.arange(N) % 2 == 1
    swap = (f0c < f0r) & ~amb
    f0c, f0r = torch.where(swap, f0r, f0c), torch.where(swap, f0c, f0r)
    flag, one = amb.float(), torch.ones(N)
    return torch.stack([torch.stack([f0c, flag, one], 1), torch.stack([f0r, flag, one], 1)], 1), amb


def _train_synthetic_brme(loss: str, **stage2):
    import types

    from robust_rlhf.reward.heads import RewardHeads
    from robust_rlhf.reward.stage2 import train_stage2
    from robust_rlhf.reward.train_config import Stage2Config

    feats, amb = _synthetic_pairs()
    cfg = load_config(RewardTrainConfig, "rm_brme_minilm", ["model.num_heads=3"])
    cfg.stage2 = Stage2Config(gaussian_loss=loss, **{"epochs": 30, "stop": "epochs", **stage2})
    model = types.SimpleNamespace(heads=RewardHeads(3, 3, "gaussian"))
    rows: list = []
    summary = train_stage2(model, feats, None, None, cfg, rows)
    with torch.no_grad():
        _, std = model.heads(feats.reshape(-1, 3))
    return std.reshape(-1, 2, 3), amb, summary, rows


def test_marginal_brme_learns_larger_std_on_ambiguous_pairs_and_bt_reparam_collapses():
    std, amb, _, _ = _train_synthetic_brme("marginal")
    assert std[amb].mean() > 1.2 * std[~amb].mean()  # s flags the pairs whose labels are coin flips
    std_reparam, _, _, _ = _train_synthetic_brme("bt_reparam")
    assert std_reparam.mean() < std.mean() / 3  # noise only raises BT's expected loss: s shrinks


def test_stage2_stops_at_the_training_loss_level():
    _, _, summary, rows = _train_synthetic_brme("marginal", stop="loss_threshold", loss_threshold=0.66, epochs=30)
    assert summary["stopped"] is not None and summary["epochs"] == len(rows) < 30
    assert rows[-1]["losses/epoch_loss_mean_head"] <= 0.66 < rows[-2]["losses/epoch_loss_mean_head"]


def test_cli_eval_with_gold_writes_uncertainty_metrics(tiny_trained_rm, tmp_path, capsys):
    assert main(["rm", "eval", "--model", str(tiny_trained_rm), "--data", "builtin:test", "--gold", "vader",
                 "--output-dir", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("uncertainty/auroc_misranked", "uncertainty/auroc_misranked_small_margin",
                "uncertainty/auroc_gold_abs_error"):
        assert 0 <= m[key] <= 1, key
    assert m["gold"] == "vader" and "AUROC for misranked pairs" in capsys.readouterr().out
    assert (tmp_path / "ev" / "uncertainty.png").stat().st_size > 1000


def test_stage1_optimizer_is_fused_adamw_with_the_plain_update():
    """Fused AdamW (issue 15: 0.09 vs 0.73 s per MiniLM step on one CPU thread) makes the same
    update as the per-parameter loop, up to float rounding."""
    from robust_rlhf.reward.train import _adamw

    torch.manual_seed(0)
    a = [torch.randn(7, 5, requires_grad=True), torch.randn(5, requires_grad=True)]
    b = [p.detach().clone().requires_grad_() for p in a]
    start = [p.detach().clone() for p in a]
    fused = _adamw(a, 1e-2, 0.1)
    plain = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(4):
        g = [torch.randn_like(p) for p in a]
        for p, q, gi in zip(a, b, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q, atol=1e-6)
    assert all((p - s0).abs().max() > 1e-3 for p, s0 in zip(a, start))  # 4 steps of lr 1e-2 moved them
