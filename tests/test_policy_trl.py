"""The TRL adapter: conversational inputs, aggregation, and a real TRL trainer step."""

from __future__ import annotations

import pytest
import torch

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.integrations.trl import EnsembleRewardFunc, message_text
from robust_rlhf.reward.output import RewardOutput


def _two_heads(prompts, responses):
    """Head 0: characters of the response; head 1: head 0 + 2 (so mean = len + 1, min = len)."""
    n = torch.tensor([float(len(r)) for r in responses])
    return RewardOutput(torch.stack([n, n + 2], dim=1))


def test_adapter_plain_and_conversational():
    f = EnsembleRewardFunc(_two_heads, AggregatorConfig(name="min"))
    assert f.__name__ == "robust_rlhf_reward"
    # the one rendering rule joins "p1" + "abc" with a space: 4 and 3 characters
    assert f(["p1", "p2"], ["abc", "de"]) == [4.0, 3.0]
    assert f(["p1\n", "p2,"], ["abc", ".de"]) == [3.0, 3.0]  # whitespace already there / attaching punctuation
    g = EnsembleRewardFunc(_two_heads)  # mean
    prompts = [[{"role": "user", "content": "hi"}]]
    completions = [[{"role": "assistant", "content": "hello"}]]
    logged = {}
    # rendered as ("hi", " hello"): a space joins prompt and response -> 6 characters, mean 7
    assert g(prompts, completions, log_metric=lambda k, v: logged.__setitem__(k, v)) == [7.0]
    assert logged["reward/ensemble_std"] == pytest.approx(2**0.5)  # std of (5, 7)
    # one user turn scores like its plain twin; several turns keep their roles
    assert message_text([{"role": "user", "content": "a"}]) == "a"
    assert message_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}]) == "user: a\nassistant: b\nuser: c\nassistant: "
    # a completion list is a response (issue 22: not 'assistant: ...\nassistant: ')
    assert message_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\nb"


def test_adapter_conversational_none_content_roles_and_ensemble_std_logging():
    seen = []

    def recording(prompts, responses):
        seen.append((list(prompts), list(responses)))
        return _two_heads(prompts, responses)

    f = EnsembleRewardFunc(recording)  # mean = len(rendered response) + 1
    prompts = [[{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
               [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}]]
    completions = [[{"role": "assistant", "content": None,  # a tool call without text: scored as the call
                     "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
                   [{"role": "assistant", "content": "ok"}]]
    logged, extra = {}, {}
    out = f(prompts=prompts, completions=completions, completion_ids=[[1], [2]], trainer_state=None,
            log_metric=lambda k, v: logged.__setitem__(k, v), log_extra=lambda k, v: extra.__setitem__(k, v))
    assert seen[0] == (["hi", "user: q1\nassistant: a1\nuser: q2\nassistant: "], [" call f({})", "ok"])
    assert out == [12.0, 3.0]
    assert f.last_std == pytest.approx([2**0.5, 2**0.5]) and f.last_mean == pytest.approx([12.0, 3.0])
    assert extra == {"ensemble_std": pytest.approx([2**0.5, 2**0.5])}
    assert logged == {"reward/ensemble_mean": pytest.approx(7.5), "reward/ensemble_std": pytest.approx(2**0.5)}


def test_adapter_rejects_nonfinite():
    f = EnsembleRewardFunc(lambda p, r: RewardOutput(torch.full((len(r), 2), float("nan"))))
    with pytest.raises(ValueError, match="non-finite"):
        f(["p"], ["c"])


def test_adapter_inside_trl_rloo_trainer(tmp_path):
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from robust_rlhf.models.hub import load_tokenizer, resolve_model_path

    calls = []

    def recording(prompts, responses):
        calls.append(list(responses))
        return _two_heads(prompts, responses)

    reward_fn = EnsembleRewardFunc(recording, AggregatorConfig(name="lcb", beta=1.0), name="rm_lcb")
    path = resolve_model_path("smollm2-135m")
    tok = load_tokenizer("smollm2-135m")
    tok.padding_side = "left"
    ds = Dataset.from_dict({"prompt": ["This movie was", "The plot", "Honestly,", "My kids"]})
    args = RLOOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=4,
        max_steps=1, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
        learning_rate=1e-5, seed=0, gradient_checkpointing=False,
    )
    trainer = RLOOTrainer(model=path, reward_funcs=[reward_fn], args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    assert calls and len(calls[0]) == 2  # called by TRL with the generated completions
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert any("rm_lcb" in k for k in logs), sorted(logs)
    assert "reward/ensemble_std" in logs
