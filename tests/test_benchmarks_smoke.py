"""benchmarks/bench_policy.py and benchmarks/gpu_bench.py: bad input, the random-init model builder,
and (slow) one tiny end-to-end run of the GPU script on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1"], "--steps must be >= 2, got 1"),
    (["--k", "1"], "--k must be >= 2, got 1"),
    (["--trl-precision", "fp16"], "invalid choice: 'fp16'"),
    (["--set", "nosuch.key=1"], "unknown key 'nosuch'"),
    (["--set", "sampling.max_new_tokens=0"], "max_new_tokens must be >= 1"),
    (["--model", "/no/such/folder"], "model '/no/such/folder'"),
])
def test_bench_policy_bad_input_is_one_line_exit_2(argv, message, capsys):
    bench = _load("bench_policy")
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_gpu_bench_bad_input_is_one_line_exit_2(tmp_path, capsys):
    gb = _load("gpu_bench")
    for argv, message in ((["run", "--benchmarks", "reward,nope"], "expected a subset of reward,policy"),
                          (["run", "--random-init", "--assets", str(tmp_path)], "no models/ folder")):
        with pytest.raises(SystemExit) as e:
            gb.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_random_init_model_has_the_architecture_of_the_config(tmp_path):
    """SmolLM2's config at 2 layers: the parameter count worked out from the config by hand, a
    loadable folder with its tokenizer, and weights that are not the pretrained ones."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from robust_rlhf.models.hub import load_tokenizer, resolve_model_path

    gb = _load("gpu_bench")
    real = Path(resolve_model_path("smollm2-135m"))
    cfg_dir = tmp_path / "cfg"
    copied = gb.copy_model_files(real, cfg_dir)
    assert "config.json" in copied and "tokenizer.json" in copied
    assert not any(n.endswith(".safetensors") for n in copied)
    info = gb.random_init_model(cfg_dir, tmp_path / "rand", layers=2)
    c = json.loads((real / "config.json").read_text())
    H, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    per_layer = 2 * H * H + 2 * H * kv + 3 * H * I + 2 * H  # q, o; k, v; gate/up/down; two RMSNorms
    assert c["tie_word_embeddings"]
    assert info == {"architecture": "LlamaForCausalLM", "parameters": V * H + 2 * per_layer + H, "layers": 2}
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "rand")
    assert lm.config.num_hidden_layers == 2 and lm.config.hidden_size == H
    tok = load_tokenizer(str(tmp_path / "rand"))
    assert tok("hello")["input_ids"] == load_tokenizer("smollm2-135m")("hello")["input_ids"]
    with safe_open(str(real / "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if "embed_tokens" in k)
        pretrained = f.get_tensor(key)
    assert not torch.allclose(lm.get_input_embeddings().weight[:100], pretrained[:100])


@pytest.mark.slow
def test_gpu_bench_smoke_runs_both_benchmarks_on_cpu(tmp_path):
    """The GPU script end to end in --smoke mode (2-layer random-init models, tiny settings): both
    benchmarks' last JSON lines land in --out with every ratio finite and the weights labelled."""
    assets, out = tmp_path / "assets", tmp_path / "out"
    script = str(ROOT / "benchmarks" / "gpu_bench.py")
    subprocess.run([sys.executable, script, "prepare", "--assets", str(assets), "--no-wheels"], check=True)
    proc = subprocess.run([sys.executable, script, "run", "--random-init", "--smoke", "--assets", str(assets),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "card: " in proc.stdout
    summary = json.loads((out / "gpu_bench.json").read_text())
    assert summary["weights"] == "random-init" and "random-init" in summary["label"] and summary["smoke"]
    policy, reward = json.loads((out / "policy.json").read_text()), json.loads((out / "reward.json").read_text())
    assert policy == summary["policy"]["result"] and reward == summary["reward"]["result"]
    for key in ("rloo_samples_per_s_vs_trl", "ppo_cost_per_sample_vs_rloo", "ppo_iteration_vs_parts",
                "lora_ref_peak_mem_vs_copy"):
        assert math.isfinite(policy[key]) and policy[key] > 0, key
    assert policy["rloo_samples_per_s_vs_trl_bf16"] is None  # the smoke runs TRL at fp32 only
    parts = policy["raw"]["ours_ppo"]["parts"]
    assert parts["parts_sum_s"] == pytest.approx(sum(parts[k] for k in (
        "generate_s", "forward_with_values_s", "reference_forward_s", "backward_s", "optimizer_step_s")))
    assert policy["setting"]["model"].endswith("smollm2-135m-random-init")
    assert math.isfinite(reward["ensemble_train_time_vs_trl"])
