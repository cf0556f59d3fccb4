"""The sampling copy (bf16, LoRA merged) follows the live policy; the LM-head hook changes no value."""

from __future__ import annotations

import pytest
import torch

import robust_rlhf.utils as utils_mod
from robust_rlhf.models.generation import SamplingConfig
from robust_rlhf.models.sampler import SamplingCopy, contiguous_lm_head, sampling_dtype, sampling_model


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _tiny_lora(seed: int = 0, r: int = 4, alpha: int = 8):
    from peft import LoraConfig, get_peft_model

    lm = get_peft_model(_tiny_llama(seed), LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"],
                                                      lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():  # B starts at zero (policy == base); make the adapters matter
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return lm


def _hand_merged_q(lm, layer: int = 0, scale: float = 8 / 4) -> torch.Tensor:
    """W0 + (alpha / r) * B @ A of one q_proj, computed from the raw tensors."""
    q = lm.base_model.model.model.layers[layer].self_attn.q_proj
    return q.base_layer.weight + scale * q.lora_B["default"].weight @ q.lora_A["default"].weight


def test_copy_holds_merged_weights_and_follows_training():
    lm = _tiny_lora()
    copy_ = SamplingCopy(lm, torch.bfloat16)
    q_copy = copy_.model.model.layers[0].self_attn.q_proj
    assert q_copy.weight.dtype == torch.bfloat16 and not any(p.requires_grad for p in copy_.model.parameters())
    torch.testing.assert_close(q_copy.weight.float(), _hand_merged_q(lm).detach(), atol=2e-2, rtol=1e-2)
    # a module without adapters is the base weight
    k0 = lm.base_model.model.model.layers[0].self_attn.k_proj.weight
    torch.testing.assert_close(copy_.model.model.layers[0].self_attn.k_proj.weight.float(), k0, atol=1e-2, rtol=1e-2)
    # an optimizer step on the adapters moves the copy after refresh
    opt = torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=1.0)
    lm(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    before = q_copy.weight.clone()
    copy_.refresh(lm)
    assert not torch.equal(before, q_copy.weight)
    torch.testing.assert_close(q_copy.weight.float(), _hand_merged_q(lm).detach(), atol=2e-2, rtol=1e-2)


def test_copy_sees_in_place_change_of_a_frozen_weight_and_disabled_adapters():
    lm = _tiny_lora()
    copy_ = SamplingCopy(lm, torch.bfloat16)
    emb = lm.base_model.model.model.embed_tokens.weight
    with torch.no_grad():
        emb[5] += 3.0  # frozen, changed in place: its version counter moves
    copy_.refresh(lm)
    torch.testing.assert_close(copy_.model.model.embed_tokens.weight[5].float(), emb[5], atol=3e-2, rtol=1e-2)
    with lm.disable_adapter():  # sampling the reference: the base weight, no delta
        copy_.refresh(lm)
        base_q = lm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
        torch.testing.assert_close(copy_.model.model.layers[0].self_attn.q_proj.weight.float(), base_q,
                                   atol=1e-2, rtol=1e-2)


def test_full_finetune_copy_follows_every_weight():
    lm = _tiny_llama()
    for p in lm.parameters():
        p.requires_grad_(True)
    copy_ = SamplingCopy(lm, torch.bfloat16)
    with torch.no_grad():
        lm.model.layers[1].mlp.down_proj.weight.mul_(-1.0)
    copy_.refresh(lm)
    torch.testing.assert_close(copy_.model.model.layers[1].mlp.down_proj.weight.float(),
                               lm.model.layers[1].mlp.down_proj.weight, atol=1e-2, rtol=1e-2)
    # the rotary frequencies keep their fp32 precision (only parameters are cast)
    assert copy_.model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_sampling_dtype_rules(monkeypatch):
    lm = _tiny_llama()
    cpu = torch.device("cpu")
    assert sampling_dtype("fp32", cpu, lm) is None
    assert sampling_dtype("bf16", cpu, lm) == torch.bfloat16
    monkeypatch.setattr(utils_mod, "cpu_has_native_bf16", lambda: False)
    assert sampling_dtype("auto", cpu, lm) is None  # emulated bf16 is slower than fp32: no copy
    monkeypatch.setattr(utils_mod, "cpu_has_native_bf16", lambda: True)
    assert sampling_dtype("auto", cpu, lm) == torch.bfloat16
    peft_bf16 = _tiny_lora()
    for p in peft_bf16.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    assert sampling_dtype("auto", cpu, peft_bf16) == torch.bfloat16  # CPU: merging the adapters pays
    assert sampling_dtype("auto", cpu, lm.to(torch.bfloat16)) is None  # already low precision: sample from it
    # A bf16 GPU: a LoRA policy with a bf16 base samples from itself (its fp32 adapters do not count) ...
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = torch.device("cuda")
    assert sampling_dtype("auto", gpu, peft_bf16) is None
    # ... one with an fp32 base gets the copy
    assert sampling_dtype("auto", gpu, _tiny_lora()) == torch.bfloat16
    with pytest.raises(ValueError, match="sampling.precision must be one of"):
        sampling_dtype("fp16", cpu, lm)
    with pytest.raises(ValueError, match="sampling.precision must be one of"):
        SamplingConfig(precision="half")


def test_contiguous_head_hook_changes_no_value():
    lm = _tiny_llama()
    ids = torch.randint(0, 97, (3, 9))
    with torch.no_grad():
        full = lm(input_ids=ids).logits[:, -4:]  # every position, sliced afterwards: an independent path
        contiguous_lm_head(lm)
        contiguous_lm_head(lm)  # idempotent: one hook
        kept = lm(input_ids=ids, logits_to_keep=4).logits
    assert len(lm.get_output_embeddings()._forward_pre_hooks) == 1
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=1e-5)


def test_sampling_model_is_cached_per_model_and_fp32_is_the_model_itself():
    lm = _tiny_lora()
    cpu = torch.device("cpu")
    assert sampling_model(lm, "fp32", cpu) is lm
    a = sampling_model(lm, "bf16", cpu)
    b = sampling_model(lm, "bf16", cpu)
    assert a is b and a is not lm and next(a.parameters()).dtype == torch.bfloat16


def test_bf16_copy_samples_nearly_the_policys_distribution():
    """On the real SmolLM2 policy: per-token KL(fp32 policy || bf16 copy) over sampled responses is tiny
    next to the KL a policy run moves (docs/policy.md gives the measured figures)."""
    from robust_rlhf.models.generation import generate
    from robust_rlhf.policy.model import ModelConfig, load_policy

    torch.manual_seed(0)
    p = load_policy(ModelConfig(), with_value_head=False)
    with torch.no_grad():
        for n, prm in p.lm.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.02)
    prompts = ["This movie was", "I went to see this film", "The acting in this one", "Honestly, the plot"]
    ro = generate(p.lm, p.tokenizer, prompts, SamplingConfig(max_new_tokens=12, precision="bf16"))
    copy_ = sampling_model(p.lm, "bf16", torch.device("cpu"))
    ids = torch.cat([ro.query_ids, ro.response_ids], 1)
    am = torch.cat([ro.query_mask, ro.response_mask], 1)
    pos = (am.cumsum(1) - 1).clamp(min=0)
    P, T = ro.query_ids.shape[1], ro.response_ids.shape[1]
    with torch.no_grad():
        l32 = torch.log_softmax(p.lm(input_ids=ids, attention_mask=am, position_ids=pos).logits[:, P - 1 : P + T - 1].float(), -1)
        l16 = torch.log_softmax(copy_(input_ids=ids, attention_mask=am, position_ids=pos).logits[:, P - 1 : P + T - 1].float(), -1)
    kl = (l32.exp() * (l32 - l16)).sum(-1)[ro.response_mask.bool()]  # per token
    assert 0 < kl.mean().item() < 0.01
