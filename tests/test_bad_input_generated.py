"""Generated bad input, per reader and per command (issue 12): every case gives exit status 2,
one line on stderr, no traceback -- and the output folder is unchanged byte for byte (snapshot
before/after; the `cli_error` fixture of conftest.py). Cases fail before any training."""

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from robust_rlhf.config import load_config


# ------------------------------------------------------------------ helpers
def rm_tiny_yaml(overrides=()) -> str:
    from robust_rlhf.config import config_to_dict
    from robust_rlhf.reward.train_config import RewardTrainConfig

    return yaml.safe_dump(config_to_dict(load_config(RewardTrainConfig, "rm_tiny", list(overrides))), sort_keys=False)


@pytest.fixture
def finished_run(tmp_path):
    """A folder that looks like a finished `rm train --config rm_tiny` run (config + model files)."""
    r = tmp_path / "run"
    (r / "backbone").mkdir(parents=True)
    (r / "backbone" / "config.json").write_text('{"model_type": "bert"}')
    (r / "backbone" / "model.safetensors").write_bytes(b"weights")
    (r / "config.yaml").write_text(rm_tiny_yaml())
    (r / "reward_config.json").write_text('{"backbone": "minilm-l6", "backbone_location": "backbone"}')
    (r / "heads.safetensors").write_bytes(b"heads")
    (r / "train_log.jsonl").write_text('{"stage": 1}\n')
    return r


def w(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


TRAIN = ["rm", "train", "--config", "rm_tiny"]


# ------------------------------------------------------------------ output locations
def test_output_dir_empty_string_is_refused(tmp_path, cli_error, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w(tmp_path / "config.yaml", "mine: true\n")  # the user's own file in the current folder
    for argv in (TRAIN + ["--output-dir", ""], ["data", "build-task", "--output-dir", ""],
                 ["policy", "train", "--output-dir", ""], ["experiment", "run", "--output-dir", ""],
                 ["rm", "eval", "--model", "m", "--data", "d.jsonl", "--output-dir", ""],
                 ["simulate", "bandit", "--out", ""]):
        cli_error(argv, "is empty", watch=tmp_path)


@pytest.mark.parametrize("cmd", [
    TRAIN + ["--output-dir"], ["data", "build-task", "--output-dir"], ["policy", "train", "--output-dir"],
    ["experiment", "run", "--output-dir"], ["experiment", "report", "--output-dir"], ["simulate", "softmax", "--out"],
])
def test_output_dir_that_is_a_file_or_under_a_file(tmp_path, cli_error, cmd):
    f = w(tmp_path / "taken", "precious")
    cli_error(cmd + [f], "is a file", watch=tmp_path)
    cli_error(cmd + [f / "sub"], "is a file, not a folder", watch=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_in_a_read_only_folder(tmp_path, cli_error):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        cli_error(TRAIN + ["--output-dir", ro / "out"], "not writable", watch=tmp_path)
        cli_error(["rm", "score", "--model", "m", "--input", "in.jsonl", "--output", ro / "x.jsonl"],
                "not writable", watch=tmp_path)
    finally:
        ro.chmod(0o755)


def test_score_output_must_not_be_an_input_or_a_folder(tmp_path, cli_error):
    inp = w(tmp_path / "in.jsonl", '{"prompt": "p", "response": "r"}\n')
    cli_error(["rm", "score", "--model", tmp_path / "m", "--input", inp, "--output", inp],
            "also an input", watch=tmp_path)
    cli_error(["rm", "score", "--model", tmp_path / "m", "--input", inp, "--output", tmp_path],
            "is a folder", watch=tmp_path)
    cli_error(["policy", "sample", "--policy", "x", "--prompts", inp, "--output", inp],
            "also an input", watch=tmp_path)


# ------------------------------------------------------------------ runs that hold other runs
def test_a_folder_holding_another_run_is_refused_before_any_write(finished_run, cli_error):
    cli_error(TRAIN + ["--output-dir", finished_run, "stage1.lr=1e-3"],
            "different config (stage1.lr", watch=finished_run)
    # re-training only the heads "in place" from the run's own backbone: refused, the backbone kept
    cli_error(TRAIN + ["--output-dir", finished_run, f"model.backbone={finished_run / 'backbone'}",
                     "stage1.enabled=false"], "different config", watch=finished_run)
    w(finished_run / "config.yaml", "- not\n- a run\n")
    cli_error(TRAIN + ["--output-dir", finished_run], "not a reward-model run", watch=finished_run)


def test_inputs_inside_the_output_folder_are_never_overwritten(tmp_path, cli_error):
    r = tmp_path / "r"
    w(r / "backbone" / "config.json", "{}")
    cli_error(TRAIN + ["--output-dir", r, f"model.backbone={r / 'backbone'}"],
            "lies inside the output folder", watch=tmp_path)
    w(r / "train_log.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    cli_error(TRAIN + ["--output-dir", r, f"data.train={r / 'train_log.jsonl'}"],
            "lies inside the output folder", watch=tmp_path)


def test_build_task_folder_of_other_settings_is_refused(tmp_path, cli_error):
    from robust_rlhf.data.preferences import FIXTURE_DIR

    d = tmp_path / "task"
    d.mkdir()
    (d / "builtin_task.json").write_bytes((FIXTURE_DIR / "builtin_task.json").read_bytes())
    cli_error(["data", "build-task", "--output-dir", d, "label_noise=0.25"], "other settings", watch=d)


# ------------------------------------------------------------------ config values
@pytest.mark.parametrize("overrides, expected", [
    (["seed=-1"], "seed must be >= 0"),
    (["seed=99999999999"], "absurdly large"),
    (["model.num_heads=1000000000"], "num_heads"),
    (["stage1.lr=.inf"], "finite"),
    (["stage2.lr=-.inf"], "finite"),
    (["loss.bsr_coef=nan"], "finite"),
    (["data.limit=-1"], "data.limit must be >= 1"),
    (["stage1.max_epochs=-2"], "max_epochs must be > 0"),
    (["stage1.eval_every=-5"], "eval_every must be >= 0"),
    (["device=banana"], "not a device name"),
    (["device=cuda:7"], "cuda:7"),
    (["data.train=/no/such.jsonl"], "no such file"),
])
def test_bad_numbers_and_devices(finished_run, cli_error, overrides, expected):
    # the folder holds a run of exactly this config, so only the bad value can be refused
    try:
        (finished_run / "config.yaml").write_text(rm_tiny_yaml(overrides))
    except Exception:
        pass  # the config itself is invalid: the folder keeps the rm_tiny run
    cli_error(TRAIN + ["--output-dir", finished_run, *overrides], expected, watch=finished_run)


def test_cuda_requested_without_a_gpu(tmp_path, cli_error):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cli_error(TRAIN + ["--output-dir", tmp_path / "o", "device=cuda"], "no CUDA GPU", watch=tmp_path)


def test_yaml_bombs_are_refused_before_they_are_built(tmp_path, cli_error, monkeypatch):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    bomb_text = "\n".join(levels) + "\n"
    bomb = w(tmp_path / "bomb.yaml", bomb_text)
    deep = w(tmp_path / "deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n")
    built = []  # texts handed to the YAML constructor (the step that would expand 9^9 aliases)
    real_safe_load = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text, *a, **k: built.append(text) or real_safe_load(text, *a, **k))
    cli_error(TRAIN + ["--config", bomb, "--output-dir", tmp_path / "o"], "expands to more than", watch=tmp_path)
    cli_error(TRAIN + ["--config", deep, "--output-dir", tmp_path / "o"], "nested too deeply", watch=tmp_path)
    assert bomb_text not in built and not any(t.startswith("a: [[[") for t in built)
    unclosed = w(tmp_path / "unclosed.yaml", "model:\n  num_heads: 3\nstage1: [1,\n  2\n")
    msg = cli_error(TRAIN + ["--config", unclosed, "--output-dir", tmp_path / "o"], "not valid YAML")
    assert "line 3" in msg  # where the unclosed '[' was opened


# ------------------------------------------------------------------ data read through `rm train`
DATA_CASES = [
    ("csv-unquoted-comma", "d.csv", "prompt,chosen,rejected\np,good, really good,bad\n", "line 2: 4 fields but the header has 3"),
    ("csv-short-row", "d.csv", "prompt,chosen,rejected\np,a,b\np,c\n", "line 3: 2 fields"),
    ("csv-duplicate-header", "d.csv", "prompt,chosen,chosen\np,a,b\n", "line 1: the header"),
    ("mixed-sides", "d.jsonl", '{"chosen": [{"role": "assistant", "content": "x"}], "rejected": "y"}\n', "same format"),
    ("mixed-rows", "d.jsonl", '{"chosen": "a", "rejected": "b"}\n{"chosen": [{"role": "user", "content": "x"}], '
     '"rejected": [{"role": "user", "content": "y"}]}\n', "line 2: this row is conversational"),
    ("all-identical", "d.jsonl", '{"prompt": "p", "chosen": " a", "rejected": " a"}\n' * 3, "every pair has chosen == rejected"),
    ("deep-json", "d.jsonl", '{"prompt": "p", "chosen": ' + "[" * 100000 + "]" * 100000 + ', "rejected": "r"}\n', "line 1"),
    ("latin1-csv", "d.csv", b"prompt,chosen,rejected\np,caf\xe9,x\n", "not valid UTF-8"),
    ("json-array-bad", "d.json", '[\n {"chosen": "a", "rejected": "b"},\n {"chosen": \n]\n', "line 4: invalid JSON (Expecting value at column 1)"),
]


@pytest.mark.parametrize("case_id, name, content, expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_malformed_data_through_rm_train(tmp_path, cli_error, case_id, name, content, expected):
    f = w(tmp_path / "in" / name, content)
    run = tmp_path / "run"
    over = [f"data.train={f}", "data.validation=null"]
    w(run / "config.yaml", rm_tiny_yaml(over))  # resuming a run of this very config: data is what fails
    w(run / "heads.safetensors", b"old heads")
    cli_error(TRAIN + ["--output-dir", run, *over], expected, watch=tmp_path)


# ------------------------------------------------------------------ model folders
def _model_dir(tmp_path: Path, cfg) -> Path:
    m = tmp_path / "model"
    w(m / "reward_config.json", cfg if isinstance(cfg, str) else json.dumps(cfg))
    w(m / "heads.safetensors", b"x")
    return m


@pytest.mark.parametrize("cfg, expected", [
    ("[1, 2, 3]", "expected a JSON object, got list"),
    ('"text"', "expected a JSON object, got str"),
    ({"backbone": "minilm-l6", "num_heads": "three"}, "num_heads: expected an integer"),
    ({"backbone": "minilm-l6", "max_length": 1.5}, "max_length: expected an integer"),
    ({"backbone": "minilm-l6", "nope": 1}, "unknown key 'nope'"),
    ({"backbone": "minilm-l6", "backbone_location": 5}, "backbone_location"),
    ({"backbone": ["a"]}, "backbone: expected a string"),
    ('{"a": ' * 50000 + "1" + "}" * 50000, "invalid JSON"),
    ("{\"backbone\": NaN}", "expected a string"),
])
def test_malformed_reward_config(tmp_path, cli_error, cfg, expected):
    m = _model_dir(tmp_path, cfg)
    data = w(tmp_path / "d.jsonl", '{"prompt": "p", "chosen": " a", "rejected": " b"}\n')
    cli_error(["rm", "eval", "--model", m, "--data", data, "--output-dir", tmp_path / "ev"], expected, watch=tmp_path)
    cli_error(["rm", "score", "--model", m, "--input", w(tmp_path / "s.jsonl", '{"prompt": "p", "response": "r"}\n'),
             "--output", tmp_path / "o.jsonl"], expected, watch=tmp_path)


def test_truncated_backbone_weights(tmp_path, cli_error):
    from robust_rlhf.models.hub import resolve_model_path

    src = Path(resolve_model_path("minilm-l6"))
    m = _model_dir(tmp_path, {"backbone": "minilm-l6", "num_heads": 3, "backbone_location": "backbone"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        w(m / "backbone" / name, (src / name).read_bytes())
    w(m / "backbone" / "model.safetensors", (src / "model.safetensors").open("rb").read(4096))
    data = w(tmp_path / "d.jsonl", '{"prompt": "p", "chosen": " a", "rejected": " b"}\n')
    cli_error(["rm", "eval", "--model", m, "--data", data, "--output-dir", tmp_path / "ev"],
            "cannot load", watch=tmp_path)


def test_model_path_typo_and_offline_hub_id_fail_fast(tmp_path, cli_error, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import socket

    connects = []  # no network attempt (and so no retries) before the error

    def connect(self, addr):
        connects.append(addr)
        raise OSError("test: no network")

    monkeypatch.setattr(socket.socket, "connect", connect)
    cli_error(TRAIN + ["--output-dir", tmp_path / "o", "model.backbone=runs/rm_typo"], "path typo",
            watch=tmp_path)
    cli_error(TRAIN + ["--output-dir", tmp_path / "o", "model.backbone=no-such-org/no-such-model"],
            "offline", watch=tmp_path)
    assert connects == []


def test_backbone_limits_checked_before_training(tmp_path, cli_error):
    cli_error(TRAIN + ["--output-dir", tmp_path / "o", "model.max_length=4096"],
            "max_position_embeddings=512", watch=tmp_path)
    cli_error(TRAIN + ["--output-dir", tmp_path / "o", "stage1.lora=true", "stage1.lora_target_modules=[q_proj]"],
            "no module 'q_proj'", watch=tmp_path)


# ------------------------------------------------------------------ other commands
@pytest.mark.parametrize("overrides, expected", [
    (["completions_per_prompt=1"], "completions_per_prompt must be >= 2"),
    (["pairs_per_prompt=100"], "pairs_per_prompt must be in [1, 15]"),
    (["split_fractions=[1.0, 0.0, 0.0]"], "split_fractions"),
    (["split_fractions=[0.5, 0.5]"], "split_fractions"),
    (["split_fractions=[0.996, 0.002, 0.002]"], "without prompts"),
    (["label_noise=2"], "label_noise"),
    (["temperature=0"], "temperature"),
    (["temperature=.nan"], "finite"),
    (["max_new_tokens=0"], "max_new_tokens"),
    (["seed=-3"], "seed"),
])
def test_build_task_impossible_settings(tmp_path, cli_error, overrides, expected):
    cli_error(["data", "build-task", "--output-dir", tmp_path / "t", *overrides], expected, watch=tmp_path)


@pytest.mark.parametrize("argv, expected", [
    (["simulate", "bandit", "--epsilon", "nan"], "finite"),
    (["simulate", "bandit", "--trials", "0"], "[1, "),
    (["simulate", "softmax", "--kl", "inf"], "finite"),
    (["simulate", "scoring", "--seed", "-1"], "seed"),
    (["simulate", "scoring", "--actions", "100000000000"], "[1, "),
    (["rm", "eval", "--model", "m", "--data", "d", "--output-dir", "o", "--batch-size", "x"], "invalid int"),
    (["rm", "nope"], "invalid choice"),
])
def test_usage_errors_are_one_line(tmp_path, cli_error, argv, expected):
    cli_error(argv + (["--out", tmp_path / "o"] if argv[0] == "simulate" else []), expected, watch=tmp_path)


# ------------------------------------------------------------------ what the project writes
def test_strict_json_everywhere(tmp_path):
    import numpy as np
    import torch

    from robust_rlhf.utils import atomic_write_json, atomic_write_jsonl

    obj = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": np.float32("nan"),
           "d": torch.tensor([1.0, float("nan")]), "e": np.array([np.inf, 2.0]), "f": {"g": (float("nan"), 3)}}
    atomic_write_json(tmp_path / "r.json", obj)
    atomic_write_jsonl(tmp_path / "r.jsonl", [obj])

    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    expected = {"a": None, "b": [None, None, 1.5], "c": None, "d": [1.0, None], "e": [None, 2.0], "f": {"g": [None, 3]}}
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == expected
    assert json.loads((tmp_path / "r.jsonl").read_text(), parse_constant=refuse) == expected


def test_saved_files_are_readable_by_other_accounts(tmp_path):
    from robust_rlhf.utils import atomic_save_dir, atomic_write_bytes

    old = os.umask(0o022)
    try:
        def write(d: Path) -> None:
            fd = os.open(d / "weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)  # like a temp-file writer
            os.write(fd, b"x")
            os.close(fd)
            (d / "sub").mkdir(mode=0o700)
            (d / "sub" / "f").write_text("y")
            os.chmod(d / "sub" / "f", 0o600)

        atomic_save_dir(tmp_path / "model", write)
        atomic_write_bytes(tmp_path / "heads.safetensors", b"z")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "model", *(tmp_path / "model").rglob("*"),
                                                                 tmp_path / "heads.safetensors"]}
    assert modes == {"model": 0o755, "weights.safetensors": 0o644, "sub": 0o755, "f": 0o644, "heads.safetensors": 0o644}


# ------------------------------------------------------------------ cached features and in-place saves
def test_feature_cache_is_keyed_by_content_not_shape(minilm_rm_factory, tmp_path):
    import torch

    from robust_rlhf.data.preferences import PreferencePair
    from robust_rlhf.reward.stage2 import cached_features

    model = minilm_rm_factory(num_heads=2, max_length=16)
    calls = []
    real_score = model.score

    def counting_score(*a, **k):
        calls.append(1)
        return real_score(*a, **k)

    model.score = counting_score
    a = [PreferencePair("p", " good film", " bad film"), PreferencePair("q", " great", " awful")]
    b = [PreferencePair("p", " dull plot", " fine plot"), PreferencePair("q", " boring", " lovely")]
    cache = tmp_path / "train_features.safetensors"
    fa = cached_features(model, a, cache)
    assert len(calls) == 2 and fa.shape == (2, 2, model.backbone.config.hidden_size)
    assert torch.equal(cached_features(model, a, cache), fa) and len(calls) == 2  # same texts: reused
    fb = cached_features(model, b, cache)  # same row count, other texts: recomputed
    assert len(calls) == 4 and not torch.allclose(fa, fb)
    _, direct = real_score([""] * 2, [p.prompt + p.chosen for p in b], return_features=True)
    assert torch.allclose(fb[:, 0], direct, atol=1e-6)
    model.config.max_length = 4  # other settings of the features: recomputed as well
    cached_features(model, b, cache)
    assert len(calls) == 6
    with torch.no_grad():  # another backbone (e.g. a different stage-1 result): recomputed
        next(model.backbone.parameters()).add_(0.01)
    cached_features(model, b, cache)
    assert len(calls) == 8


def test_heads_only_save_keeps_the_backbone_it_was_loaded_from(minilm_rm_factory, tmp_path):
    run = tmp_path / "run"
    w(run / "backbone" / "config.json", '{"marker": 1}')
    model = minilm_rm_factory(num_heads=2, max_length=16)
    model.backbone_source = str(run / "backbone")  # as if loaded with model.backbone=run/backbone
    model.save_pretrained(run, save_backbone=False)
    assert (run / "backbone" / "config.json").read_text() == '{"marker": 1}'
    assert json.loads((run / "reward_config.json").read_text())["backbone_location"] == "backbone"
    other = tmp_path / "other"
    w(other / "backbone" / "config.json", "{}")  # a stale backbone of an earlier run is replaced by the reference
    model.backbone_source = "minilm-l6"
    model.save_pretrained(other, save_backbone=False)
    assert not (other / "backbone").exists()
    assert json.loads((other / "reward_config.json").read_text())["backbone_location"] == "minilm-l6"


# ------------------------------------------------------------------ policy runs that hold other runs
def policy_tiny_yaml(overrides=()) -> str:
    from robust_rlhf.config import config_to_dict
    from robust_rlhf.policy.ppo import PPOConfig

    return yaml.safe_dump(config_to_dict(load_config(PPOConfig, "policy_tiny", list(overrides))), sort_keys=False)


@pytest.fixture
def finished_policy_run(tmp_path):
    """A folder that looks like a finished `policy train --config policy_tiny` run."""
    r = tmp_path / "prun"
    w(r / "config.yaml", policy_tiny_yaml())
    w(r / "metrics.jsonl", '{"step": 1, "kl": 0.0, "proxy_reward": 0.5}\n{"step": 2, "kl": 0.1, "proxy_reward": 0.6}\n')
    w(r / "metrics.csv", "step,kl,proxy_reward\n1,0.0,0.5\n2,0.1,0.6\n")
    w(r / "checkpoints" / "step_000002" / "state.json", '{"step": 2, "extra": {}, "metrics": []}')
    w(r / "policy" / "adapter_model.safetensors", b"adapter")
    return r


def test_a_folder_holding_another_policy_run_is_refused_before_any_write(finished_policy_run, cli_error):
    train = ["policy", "train", "--config", "policy_tiny", "--output-dir", finished_policy_run]
    cli_error(train + ["train.lr=0.001"], "holds another run: its config differs from this one in train.lr: "
            "0.0001 there, 0.001 now", watch=finished_policy_run)
    # resume=false used to overwrite config.yaml (and the metrics) with only a warning
    cli_error(train + ["resume=false", "seed=7"], "in seed: 0 there, 7 now", watch=finished_policy_run)
    # without resuming, a longer run is another run too (only a resumed run may grow its step count)
    cli_error(train + ["resume=false", "train.steps=5"], "in train.steps: 2 there, 5 now",
            watch=finished_policy_run)
    cli_error(["policy", "train", "--config", "policy_best_of_n", "--output-dir", finished_policy_run],
            "holds another run", watch=finished_policy_run)
    w(finished_policy_run / "config.yaml", "- not\n- a run\n")
    cli_error(train, "not a policy run's", watch=finished_policy_run)


PROMPT_CASES = [  # (case id, file name, content, expected in the one error line)
    ("missing-field", "p.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', "p.jsonl: line 2: missing field 'prompt'"),
    ("empty-prompt", "p.jsonl", '{"prompt": "a"}\n{"prompt": "  "}\n', "line 2: field 'prompt' is empty"),
    ("null-prompt", "p.jsonl", '{"prompt": null}\n', "line 1: field 'prompt' is missing or null"),
    ("number-prompt", "p.jsonl", '{"prompt": 3}\n', "line 1: field 'prompt': expected text"),
    ("messages-prompt", "p.jsonl", '{"prompt": [{"role": "user", "content": "hi"}]}\n', "got a list of messages"),
    ("not-an-object", "p.jsonl", '["a"]\n', "line 1: expected an object with a text field 'prompt'"),
    ("bad-json-line", "p.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"\n', "p.jsonl: line 3: invalid JSON"),
    ("jsonl-as-txt", "p.txt", '{"prompt": "a"}\n{"prompt": ""}\n', "p.txt: line 2: field 'prompt' is empty"),
    ("json-array-null", "p.json", '[{"prompt": "a"}, {"prompt": null}]', "p.json: item 1: field 'prompt' is missing"),
    ("csv-no-column", "p.csv", "text\nhello\n", "p.csv: line 2: missing field 'prompt'"),
    ("latin1", "p.txt", b"caf\xe9\n", "not valid UTF-8"),
    ("only-blank", "p.jsonl", "\n  \n", "holds no prompts"),
    ("no-such-file", None, None, "does not exist"),
]


@pytest.mark.parametrize("case_id, name, content, expected", PROMPT_CASES, ids=[c[0] for c in PROMPT_CASES])
def test_malformed_prompts_through_policy_sample(tmp_path, cli_error, case_id, name, content, expected):
    prompts = w(tmp_path / name, content) if name else tmp_path / "absent.jsonl"
    cli_error(["policy", "sample", "--policy", tmp_path / "no_policy", "--prompts", prompts,
             "--output", tmp_path / "out" / "s.jsonl"], expected, watch=tmp_path)


@pytest.mark.parametrize("name, content, expected", [
    ("bom.jsonl", '\ufeff{"prompt": "a"}\n{"prompt": "b"}\n', ["a", "b"]),  # spreadsheet exports start with a BOM
    ("sep.jsonl", '{"prompt": "a\u2028b\u2029c\u0085d"}\r\n', ["a\u2028b\u2029c\u0085d"]),  # "\n" only splits
    ("bom.txt", "\ufefffirst\r\nsecond\n\n", ["first", "second"]),
    ("p.csv", "prompt,source\n\"hello, world\",x\n", ["hello, world"]),
])
def test_prompts_are_read_by_the_preference_rules(tmp_path, name, content, expected):
    from robust_rlhf.data.prompts import load_prompts_file

    assert load_prompts_file(str(w(tmp_path / name, content))) == expected
