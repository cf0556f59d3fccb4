"""Issue 13 leftovers: the one result container, reward whitening, the lab's best-of-n curve,
the shared pair-sampling config, and CLI / stage-1 behaviour without a test before."""

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robust_rlhf.cli import main
from robust_rlhf.reward.output import RewardOutput


# ---- one result container ------------------------------------------------------------------
def test_reward_output_carries_aggregate_slices_and_round_trips_json():
    per_head = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]])  # (B=3, K=2)
    out = RewardOutput(per_head).with_reward(torch.tensor([2.0, 2.0, 2.0]))
    # ensemble std per row: |a - b| / sqrt(2) -> [sqrt2, 0, 2 sqrt2]
    j = out.to_json()
    assert j["rewards"] == [2.0, 2.0, 2.0] and j["rewards_per_head"] == per_head.tolist()
    assert j["reward_std"] == pytest.approx([math.sqrt(2), 0.0, 2 * math.sqrt(2)])
    back = RewardOutput.from_json(j)
    torch.testing.assert_close(back.per_head, per_head)
    torch.testing.assert_close(back.reward, out.reward)
    part = out.slice(1, 3)
    assert len(part) == 2 and part.reward.tolist() == [2.0, 2.0] and part.per_head.tolist() == [[2.0, 2.0], [0.0, 4.0]]
    assert RewardOutput.cat([out.slice(0, 1), part]).reward.tolist() == [2.0, 2.0, 2.0]
    bad = RewardOutput(per_head, reward=torch.tensor([1.0, float("nan"), 1.0]))
    assert bad.nonfinite_rows() == [1]
    empty = RewardOutput.empty(3, gaussian=True)
    assert empty.to_json() == {"rewards": [], "reward_std": [], "rewards_per_head": [], "reward_std_per_head": []}
    with pytest.raises(ValueError, match="reward must be"):
        RewardOutput(per_head, reward=torch.zeros(2))


def test_client_score_result_converts_to_reward_output():
    from robust_rlhf.integrations.client import ScoreResult

    res = ScoreResult([2.0], [math.sqrt(2)], [[1.0, 3.0]])
    assert res.to_output().per_head.tolist() == [[1.0, 3.0]] and res.to_output().reward.tolist() == [2.0]


def test_training_reward_returns_reward_output_without_warnings():
    from robust_rlhf.policy.rewards import RewardConfig, TrainingReward, reward_metrics
    from robust_rlhf.reward.sources import FunctionEnsemble

    source = FunctionEnsemble([lambda p, r: [1.0, 2.0], lambda p, r: [3.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rb = TrainingReward(source, RewardConfig())(["a", "b"], ["x", "y"])
        m = reward_metrics(rb)
    assert type(rb) is RewardOutput
    assert rb.reward.tolist() == [2.0, 2.0] and rb.training.tolist() == [2.0, 2.0]
    assert m["reward/proxy"] == 2.0 and m["reward/ensemble_std"] == pytest.approx(math.sqrt(2) / 2 + 0.0)


# ---- whitening ------------------------------------------------------------------------------
def test_whiten_matches_numpy():
    from robust_rlhf.policy.losses import whiten

    x = np.array([1.0, 2.0, 4.0, 7.0])
    expected = (x - x.mean()) / np.sqrt(x.var(ddof=1) + 1e-8)  # unbiased variance, as masked_whiten
    np.testing.assert_allclose(whiten(torch.tensor(x)).numpy(), expected, rtol=1e-10)
    # hand-worked: [1, 3] -> mean 2, var 2 -> [-1/sqrt2, 1/sqrt2]
    np.testing.assert_allclose(whiten(torch.tensor([1.0, 3.0])).numpy(), [-1 / math.sqrt(2), 1 / math.sqrt(2)], rtol=1e-6)
    assert whiten(torch.tensor([5.0])).tolist() == [5.0]  # one sample: unchanged


# ---- one pair-sampling config ----------------------------------------------------------------
def test_task_and_lab_data_configs_share_fields_and_keep_defaults():
    import dataclasses

    from robust_rlhf.data.builtin_task import PairSamplingConfig, TaskConfig
    from robust_rlhf.experiments.config import PreferenceDataConfig

    task, lab = TaskConfig(), PreferenceDataConfig()
    assert isinstance(task, PairSamplingConfig) and isinstance(lab, PairSamplingConfig)
    assert (task.completions_per_prompt, lab.completions_per_prompt) == (6, 4)
    assert task.split_fractions == (0.7, 0.15, 0.15) and lab.split_fractions == [0.7, 0.15, 0.15]
    assert {f.name for f in dataclasses.fields(task)} - {"policy", "gold"} == \
        {f.name for f in dataclasses.fields(lab)} - {"source", "task", "train_pairs", "eval_pairs"}
    with pytest.raises(ValueError, match="label_noise"):
        PreferenceDataConfig(label_noise=0.6)
    with pytest.raises(ValueError, match="completions_per_prompt"):
        TaskConfig(completions_per_prompt=1)


# ---- CLI ----------------------------------------------------------------------------------
def test_experiment_run_prints_its_summary(tmp_path, monkeypatch, capsys):
    """The printing of `experiment run` (the pipeline itself is tested in test_experiment.py)."""
    import robust_rlhf.experiments.overopt as overopt

    out = tmp_path / "exp"
    seen = {}

    def fake_run(cfg, output_dir, progress=True, execution=None):
        seen["cfg"], seen["progress"], seen["execution"] = cfg, progress, execution
        return SimpleNamespace(output_dir=out, report=out / "report.html",
                               results={"summary": ["BRME keeps gold reward up", "LCB stops earlier"]})

    monkeypatch.setattr(overopt, "run_experiment", fake_run)
    assert main(["experiment", "run", "--config", "experiment_tiny", "--output-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"results: {out / 'results.json'}", f"report:  {out / 'report.html'}",
                       "  - BRME keeps gold reward up", "  - LCB stops earlier"]
    assert seen["progress"] is False and seen["cfg"].name
    assert (seen["execution"].workers, seen["execution"].executor) == ("auto", "local")  # the defaults


@pytest.mark.parametrize("flag,value,message", [
    ("--num-samples", "0", "--num-samples and --batch-size must be >= 1"),
    ("--batch-size", "0", "--num-samples and --batch-size must be >= 1"),
    ("--temperature", "0", "--temperature must be a finite number > 0"),
    ("--temperature", "nan", "--temperature must be a finite number > 0"),
    ("--max-new-tokens", "0", "--max-new-tokens must be >= 1"),
])
def test_policy_sample_rejects_bad_options(tmp_path, cli_error, flag, value, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\n")
    cli_error(["policy", "sample", "--policy", "nonexistent", "--prompts", prompts,
               "--output", tmp_path / "out.jsonl", flag, value], message, watch=tmp_path)


# ---- stage-1 stopping -------------------------------------------------------------------------
_TINY = ["model.num_heads=1", "data.limit=32", "model.max_length=16", "stage1.batch_size=8", "stage1.max_steps=6",
         "stage1.checkpoint_every=0", "stage2.epochs=1"]


def _stage1_rows(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if json.loads(x)["stage"] == 1]


@pytest.mark.slow  # ~23 s on 2 CPU cores (two tiny MiniLM runs)
def test_stage1_loss_threshold_patience_and_warmup(tmp_path, monkeypatch):
    from robust_rlhf.config import load_config
    from robust_rlhf.reward.train import train_reward_model
    from robust_rlhf.reward.train_config import RewardTrainConfig

    lrs = []

    class RecordingAdamW(torch.optim.AdamW):  # stage 1's optimiser; records the lr of each step
        def step(self, *a, **kw):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(*a, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    # loss_threshold far above any BT loss: stops once the running window (3 steps) is full;
    # warmup_steps=4: lr ramps (step + 1) / 4 * lr -> 0.25, 0.5, 0.75 of 1e-4
    cfg = load_config(RewardTrainConfig, "rm_tiny", _TINY + [
        "stage1.loss_threshold=100", "stage1.running_window=3", "stage1.eval_every=0", "data.validation=null",
        "stage1.lr=1e-4", "stage1.warmup_steps=4"])
    train_reward_model(cfg, tmp_path / "threshold")
    assert [r["step"] for r in _stage1_rows(tmp_path / "threshold")] == [1, 2, 3]
    assert lrs == pytest.approx([0.25e-4, 0.5e-4, 0.75e-4])

    # lr = 0: the validation loss never improves after the first evaluation -> patience 1 stops at step 2
    cfg = load_config(RewardTrainConfig, "rm_tiny", _TINY + [
        "stage1.loss_threshold=null", "stage1.patience=1", "stage1.eval_every=1", "stage1.lr=0"])
    train_reward_model(cfg, tmp_path / "patience")
    rows = _stage1_rows(tmp_path / "patience")
    assert [r["step"] for r in rows] == [1, 2] and "eval/val_loss" in rows[-1]
