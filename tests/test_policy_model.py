"""Policy model + sampling: padding-invariant log-probs, EOS masking, reference = adapters off."""

from __future__ import annotations

import pytest
import torch

from robust_rlhf.data.prompts import PromptDataConfig, load_prompts_file, train_eval_prompts
from robust_rlhf.models.generation import SamplingConfig, encode_prompts, generate, response_mask_after_eos
from robust_rlhf.models.hub import load_causal_lm
from robust_rlhf.policy.model import ModelConfig, _forward, load_policy
from robust_rlhf.policy.sampling import prompt_batch


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    # fp32: padding invariance and exact reference equality are fp32 properties (bf16 rounds per batch shape)
    p = load_policy(ModelConfig(precision="fp32"), with_value_head=True)
    # Make the adapters non-trivial (LoRA B starts at zero, i.e. policy == reference).
    with torch.no_grad():
        for n, prm in p.lm.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.02)
    return p.eval()


def _batch(policy, prompts, responses):
    tok = policy.tokenizer
    q, qm = encode_prompts(tok, prompts, 64)
    eos = tok.eos_token_id
    T = max(len(r) for r in responses)
    r_ids = torch.tensor([r + [eos] * (T - len(r)) for r in responses])
    r_mask = response_mask_after_eos(r_ids, eos)
    return q, qm, r_ids, r_mask


def test_response_mask_after_eos_hand_example():
    E = 2
    ids = torch.tensor([[5, 7, E, E, 9], [5, 7, 8, 9, 10], [E, 3, 3, 3, 3]])
    # first row: EOS itself counts, the pad (= EOS) after it and the token after that do not
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(response_mask_after_eos(ids, E), expected)
    # several EOS ids
    assert response_mask_after_eos(torch.tensor([[4, 9, 1]]), [9, 1]).tolist() == [[1, 1, 0]]


def test_logprobs_left_padding_equal_alone(policy):
    tok = policy.tokenizer
    eos = tok.eos_token_id
    prompts = ["This movie was", "I have to say that the acting in this film", "Honestly,"]
    responses = [[tok.encode(" great fun")[0], 314, 1109, eos], [253, 4771, 351, 787, 16480, 6365], [30, eos]]
    q, qm, r, rm = _batch(policy, prompts, responses)
    assert qm[0, 0] == 0 and qm[1].all()  # left padding really happened
    with torch.no_grad():
        batch = policy.forward_response(q, qm, r, rm, with_values=True, with_entropy=True)
        for i in range(len(prompts)):
            qi, qmi, ri, rmi = _batch(policy, [prompts[i]], [responses[i]])
            alone = policy.forward_response(qi, qmi, ri, rmi, with_values=True, with_entropy=True)
            n = len(responses[i])
            torch.testing.assert_close(batch.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(batch.values[i, :n], alone.values[0, :n], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(batch.entropy[i, :n], alone.entropy[0, :n], atol=1e-4, rtol=1e-4)


def test_reference_is_base_model_with_adapters_disabled(policy):
    prompts = ["The plot was", "My kids"]
    tok = policy.tokenizer
    responses = [tok.encode(" not good at all"), tok.encode(" loved it")]
    q, qm, r, rm = _batch(policy, prompts, responses)
    base = load_causal_lm("smollm2-135m").eval()
    with torch.no_grad():
        ref = policy.forward_response(q, qm, r, rm, reference=True)
        pol = policy.forward_response(q, qm, r, rm)
        expected = _forward(base, None, q, qm, r, rm, 1.0, False, False)
    m = rm.bool()
    torch.testing.assert_close(ref.logprobs[m], expected.logprobs[m], atol=1e-5, rtol=1e-5)
    assert (pol.logprobs[m] - ref.logprobs[m]).abs().max() > 1e-3  # the adapters do change the policy
    # and leaving the context re-enables the adapters
    with torch.no_grad():
        again = policy.forward_response(q, qm, r, rm)
    torch.testing.assert_close(again.logprobs, pol.logprobs)


def test_generate_masks_after_eos_and_decodes(policy):
    torch.manual_seed(0)
    cfg = SamplingConfig(max_new_tokens=6)
    ro = generate(policy.lm, policy.tokenizer, ["This movie was", "The cast is really"], cfg)
    assert ro.response_ids.shape[0] == 2 and ro.response_ids.shape[1] <= 6
    eos = policy.tokenizer.eos_token_id
    expected = response_mask_after_eos(ro.response_ids, eos)
    assert torch.equal(ro.response_mask, expected)
    assert all(isinstance(s, str) for s in ro.responses)
    assert ro.query_mask[0, 0] == 0  # shorter prompt left-padded
    # same seed -> same samples
    torch.manual_seed(0)
    ro2 = generate(policy.lm, policy.tokenizer, ["This movie was", "The cast is really"], cfg)
    assert ro2.responses == ro.responses


def test_generate_pools_the_final_hidden_state_of_prompt_and_kept_tokens():
    """generate(return_pooled_hidden=True): each row's pooled state is the mean of a fresh,
    unpadded forward's final hidden state over its prompt tokens and its response tokens before
    the first EOS -- batched (left padding) and with per-sample seeds; `Rollout.index` keeps it."""
    from robust_rlhf.models.hub import load_tokenizer

    lm, tok = load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    e, eos = tok.eos_token, tok.eos_token_id
    prompts = [f"Yes.{e}Yes.{e}Yes.", "The film was", f"I agree.{e}I agree.{e}I"]  # EOS likely early in 1 and 3
    cfg = SamplingConfig(max_new_tokens=5, precision="fp32")
    for seeds in (None, [11, 12, 13]):
        torch.manual_seed(0)
        ro = generate(lm, tok, prompts, cfg, seeds=seeds, min_new_tokens=0, return_pooled_hidden=True)
        assert ro.pooled_hidden.shape == (3, lm.config.hidden_size) and ro.response_ids.shape[1] <= 5
        for i in range(3):
            q = ro.query_ids[i][ro.query_mask[i].bool()]
            r = ro.response_ids[i][ro.response_mask[i].bool()]
            ids = torch.cat([q, r[r != eos]]).unsqueeze(0)  # (1, prompt + kept tokens)
            with torch.no_grad():
                h = lm.model(input_ids=ids).last_hidden_state[0]  # (L, H)
            assert torch.allclose(ro.pooled_hidden[i], h.mean(0), atol=1e-4, rtol=1e-4), (seeds, i)
        assert torch.equal(ro.index([2, 0]).pooled_hidden, ro.pooled_hidden[[2, 0]])
    torch.manual_seed(0)
    assert generate(lm, tok, prompts, cfg).pooled_hidden is None


def test_prompts_file_and_batches(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a"}\n{"prompt": "b"}\n\n', encoding="utf-8")
    assert load_prompts_file(str(jl)) == ["a", "b"]
    txt = tmp_path / "p.txt"
    txt.write_text("x\ny\n", encoding="utf-8")
    assert load_prompts_file(str(txt)) == ["x", "y"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n', encoding="utf-8")
    from robust_rlhf.errors import UserError

    with pytest.raises(UserError, match="prompt"):
        load_prompts_file(str(bad))
    prompts = list("abcde")
    b0, b1, b2 = (prompt_batch(prompts, s, 2, seed=3) for s in range(3))
    assert sorted(b0 + b1 + b2[:1]) == sorted(prompts)  # one pass covers every prompt once
    assert prompt_batch(prompts, 1, 2, seed=3) == b1  # pure function of (step, seed)
    train, held = train_eval_prompts(PromptDataConfig())
    assert not set(train) & set(held) and len(held) > 0


def test_full_finetune_reference_is_a_frozen_copy():
    p = load_policy(ModelConfig(use_lora=False), with_value_head=False).eval()
    tok = p.tokenizer
    q, qm = encode_prompts(tok, ["This movie was"], 16)
    r = torch.tensor([tok.encode(" fine")])
    rm = torch.ones_like(r)
    with torch.no_grad():
        before = p.forward_response(q, qm, r, rm).logprobs
        for prm in p.lm.parameters():
            prm.add_(0.01 * torch.randn_like(prm))
        ref = p.forward_response(q, qm, r, rm, reference=True).logprobs
        after = p.forward_response(q, qm, r, rm).logprobs
    torch.testing.assert_close(ref, before)  # the reference did not move with the policy
    assert (after - before).abs().max() > 1e-4
    assert all(not prm.requires_grad for prm in p._ref[0].parameters())
    assert not any(prm is rp for prm in p.parameters() for rp in p._ref[0].parameters())
