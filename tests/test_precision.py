"""Precision chosen from the hardware (issue 15, USER_NEEDS #14): `autocast_dtype`, its CPU
detection, `model.precision` and what the backbone / heads of a RewardModel actually run in."""

import platform

import pytest
import torch

from robust_rlhf.errors import UserError
from robust_rlhf.utils import autocast_dtype, cpu_has_native_bf16

CPU = torch.device("cpu")


@pytest.fixture
def fresh_detection():
    cpu_has_native_bf16.cache_clear()
    yield
    cpu_has_native_bf16.cache_clear()


def test_explicit_precisions_and_bad_names():
    assert autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16  # asked for: honoured even if emulated
    assert autocast_dtype(CPU) == (torch.bfloat16 if cpu_has_native_bf16() else None)  # the old one-argument call
    with pytest.raises(UserError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        autocast_dtype(CPU, "fp16")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr("robust_rlhf.utils.cpu_has_native_bf16", lambda: native)
    assert autocast_dtype(CPU, "auto") is expected


def _fake_x86(monkeypatch, onednn: bool, torch_flag: bool, flags: set[str]):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: torch_flag)
    monkeypatch.setattr("robust_rlhf.utils._cpuinfo_flags", lambda: flags)


@pytest.mark.parametrize("onednn, torch_flag, flags, native", [
    # AVX-512 without BF16: oneDNN reports bf16 "supported" (it emulates it) -- the ~20x slow case: fp32.
    (True, False, {"avx512f", "avx512bw"}, False),
    (True, True, {"avx512f", "avx512_bf16"}, True),   # Cooper Lake, Zen 4+, Sapphire Rapids
    (True, False, {"avx512f", "amx_bf16"}, True),     # AMX without torch's AVX512-BF16 flag read
    (False, True, {"avx512_bf16"}, False),            # oneDNN will not run bf16 here
    (False, False, {"avx2"}, False),                  # AVX2-only laptop
], ids=["avx512-emulated", "avx512-bf16", "amx-bf16", "no-onednn-bf16", "avx2"])
def test_cpu_detection_needs_native_instructions(monkeypatch, fresh_detection, onednn, torch_flag, flags, native):
    _fake_x86(monkeypatch, onednn, torch_flag, flags)
    assert cpu_has_native_bf16() is native
    assert autocast_dtype(CPU, "auto") is (torch.bfloat16 if native else None)


def test_cuda_without_bf16_refuses_forced_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cuda = torch.device("cuda")
    assert autocast_dtype(cuda, "auto") is None
    with pytest.raises(UserError, match="does not support bf16"):
        autocast_dtype(cuda, "bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda, "auto") == torch.bfloat16 and autocast_dtype(cuda, "fp32") is None


def test_bad_precision_in_config_is_one_user_error():
    from robust_rlhf.config import load_config
    from robust_rlhf.reward.model import RewardModelConfig
    from robust_rlhf.reward.train_config import RewardTrainConfig

    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        RewardModelConfig(precision="fp16")
    with pytest.raises(UserError, match="precision"):
        load_config(RewardTrainConfig, "rm_tiny", ["model.precision=half"])


def _dtypes_seen(rm, prompts, responses):
    """dtype of every backbone Linear's output and of the heads' output during one score()."""
    seen = {"backbone": set(), "heads": set()}
    hooks = [m.register_forward_hook(lambda _m, _i, o: seen["backbone"].add(o.dtype))
             for m in rm.backbone.modules() if isinstance(m, torch.nn.Linear)]
    hooks.append(rm.heads.register_forward_hook(lambda _m, _i, o: seen["heads"].add(o[0].dtype)))
    out = rm.score(prompts, responses)
    for h in hooks:
        h.remove()
    return seen, out


def test_backbone_runs_in_the_chosen_precision_and_heads_in_fp32(minilm_rm_factory):
    prompts = ["This movie was", "I thought the plot", "The acting", "Overall"]
    responses = [" wonderful and moving.", " was dull and far too long.", " felt wooden.", " a fine evening out."]
    rm = minilm_rm_factory(head_type="ensemble", num_heads=4, precision="fp32")
    seen32, out32 = _dtypes_seen(rm, prompts, responses)
    assert seen32 == {"backbone": {torch.float32}, "heads": {torch.float32}} and rm.precision_name == "fp32"
    rm.config.precision = "bf16"
    seen16, out16 = _dtypes_seen(rm, prompts, responses)
    assert seen16 == {"backbone": {torch.bfloat16}, "heads": {torch.float32}} and rm.precision_name == "bf16"
    assert out16.per_head.dtype == torch.float32
    # bf16 changes the numbers a little (it did run) but not the ranking of these texts.
    assert not torch.equal(out16.per_head, out32.per_head)
    err = (out16.per_head - out32.per_head).abs().max().item()
    assert err < 0.05 * out32.per_head.abs().max().item(), err
    assert torch.equal(out16.per_head.mean(1).argsort(), out32.per_head.mean(1).argsort())


def test_auto_trains_in_the_hardware_precision_and_scores_in_fp32(minilm_rm_factory, monkeypatch):
    """`auto`: training passes use bf16 where it is native; scoring stays fp32 (batch-invariant scores)."""
    import robust_rlhf.utils as utils_mod

    monkeypatch.setattr(utils_mod, "cpu_has_native_bf16", lambda: True)
    prompts, responses = ["This movie was", "Overall"], [" wonderful.", " a dull evening."]
    rm = minilm_rm_factory(head_type="ensemble", num_heads=2, precision="auto")
    seen, _ = _dtypes_seen(rm, prompts, responses)
    assert seen["backbone"] == {torch.float32} and rm.precision_name == "fp32"
    with rm.training_pass():
        seen_train, _ = _dtypes_seen(rm, prompts, responses)
        assert rm.precision_name == "bf16"
    assert seen_train["backbone"] == {torch.bfloat16}
    assert rm.precision_name == "fp32"  # the context restores scoring precision
    monkeypatch.setattr(utils_mod, "cpu_has_native_bf16", lambda: False)
    with rm.training_pass():  # emulated bf16 is slower than fp32: auto keeps fp32
        assert rm.precision_name == "fp32"


def test_feature_cache_key_includes_the_precision(minilm_rm_factory):
    from robust_rlhf.reward.stage2 import _features_key

    rm = minilm_rm_factory(head_type="ensemble", num_heads=2, precision="fp32")
    k32 = _features_key(rm, ["a good film"], ["a bad film"])
    rm.config.precision = "bf16"
    assert _features_key(rm, ["a good film"], ["a bad film"]) != k32
