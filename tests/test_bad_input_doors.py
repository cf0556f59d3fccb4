"""Issue 22, "Nothing lost through any door": each class of bad input it found, fed a NEW instance
(not the issue's example), ends cleanly -- one line, exit 2 (or HTTP 400/403), nothing written or
changed -- and one conversation gets one reward through every client."""

from __future__ import annotations

import json
import os
import logging
from pathlib import Path

import pytest

from robust_rlhf.aggregate import AggregatorConfig
from robust_rlhf.errors import UserError
from robust_rlhf.integrations.protocol import ServerConfig
from robust_rlhf.integrations.server import BackgroundServer, RewardService, create_app
from robust_rlhf.reward.output import RewardOutput

from test_server import fake_score, http

K = 3


def fake_server(**config):
    service = RewardService(fake_score, K, AggregatorConfig("mean"), info={"model": "fake"})
    return BackgroundServer(create_app(service, ServerConfig(**config)))


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# ------------------------------------------------------------------ overrides: validated before any write
def _finished_experiment(folder: Path) -> Path:
    """A folder that looks like a finished experiment: its config record and results."""
    write(folder / "config.yaml", "name: earlier run\nseeds: [0]\n")
    write(folder / "results.json", '{"methods": {}, "reference": {}, "reward_models": {}}')
    (folder / "units").mkdir()
    return folder


@pytest.mark.parametrize("override, expected", [
    ("device=cuda:99", "cuda:99"),                                     # a device this machine lacks
    ("prompts.limit=3", "at least 5 prompts"),                          # refused by the plan, not the loader
    ("methods=[{name: ppo-mean, type: ppo, reward_model: ens, aggregator: {name: brme_nominal}}]",
     "gaussian"),                                                       # aggregator vs the reward model
])
def test_experiment_bad_override_leaves_finished_and_fresh_folders_unchanged(tmp_path, cli_error, override, expected):
    done = _finished_experiment(tmp_path / "done")
    cli_error(["experiment", "run", "--config", "experiment_tiny", "--output-dir", done, override], expected,
            watch=done)
    fresh = tmp_path / "fresh"
    cli_error(["experiment", "run", "--config", "experiment_tiny", "--output-dir", fresh, override], expected,
            watch=tmp_path)
    assert not fresh.exists()


@pytest.mark.parametrize("override, expected", [
    ("reward.model={tmp}/not_a_model", "reward_config.json"),
    ("data.prompts={tmp}/missing_prompts.jsonl", "does not exist"),
    ("device=cuda:99", "cuda:99"),
    ("model.name=acme-labs/policy-7b", "acme-labs/policy-7b"),
])
def test_policy_bad_override_writes_nothing(tmp_path, cli_error, override, expected):
    (tmp_path / "not_a_model").mkdir()
    cli_error(["policy", "train", "--config", "policy_tiny", "--output-dir", tmp_path / "run",
             override.format(tmp=tmp_path)], expected, watch=tmp_path)
    assert not (tmp_path / "run").exists()


def test_rm_train_bad_device_writes_nothing(tmp_path, cli_error):
    cli_error(["rm", "train", "--config", "rm_tiny", "--output-dir", tmp_path / "rm", "device=cuda:42"],
            "cuda:42", watch=tmp_path)


def test_backstop_restores_config_record_when_nothing_else_was_written(tmp_path):
    from robust_rlhf.cli.guard import unchanged_on_refusal

    folder = write(tmp_path / "run" / "config.yaml", "a: 1\n").parent
    with pytest.raises(UserError):
        with unchanged_on_refusal(folder):
            (folder / "config.yaml").write_text("a: 2\n")
            (folder / "sub").mkdir()
            raise UserError("late refusal")
    assert (folder / "config.yaml").read_text() == "a: 1\n" and not (folder / "sub").exists()
    with pytest.raises(UserError):  # a run that did work keeps what it wrote
        with unchanged_on_refusal(folder):
            (folder / "config.yaml").write_text("a: 3\n")
            (folder / "metrics.jsonl").write_text("{}\n")
            raise UserError("late refusal")
    assert (folder / "config.yaml").read_text() == "a: 3\n"


# ------------------------------------------------------------------ text readers
@pytest.mark.parametrize("name, content, expected", [
    ("s.jsonl", '{"prompt": "p", "chosen": " fine \\udfff", "rejected": " bad"}\n', "line 1: field 'chosen': not valid Unicode"),
    ("n.csv", b"prompt,chosen,rejected\nP,good,\"b\x00ad\"\n", "line 2"),
    ("z.jsonl", '{"prompt": "p", "chosen": " ok", "rejected": " ok"}\n'
                '{"prompt": "p", "chosen": "\\u200c\\u2063", "rejected": " bad"}\n', "line 2: field 'chosen'"),
    ("r.jsonl", '{"prompt": [{"role": "narrator", "content": "once"}], "chosen": [{"role": "assistant", '
                '"content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}\n', "role 'narrator'"),
])
def test_preference_readers_refuse_surrogates_nul_invisible_and_unknown_roles(tmp_path, cli_error, name, content, expected):
    data = write(tmp_path / name, content)
    cli_error(["rm", "train", "--config", "rm_tiny", "--output-dir", tmp_path / "o", f"data.train={data}"],
            expected, watch=tmp_path)


def test_scoring_and_prompt_files_refuse_bad_text(tmp_path, capsys):
    from robust_rlhf.data.preferences import load_scoring_inputs
    from robust_rlhf.data.prompts import load_prompts_file

    f = write(tmp_path / "in.jsonl", '{"prompt": "p", "response": " ok"}\n{"prompt": "p", "response": "\\u2060\\ufeff"}\n')
    with pytest.raises(UserError, match=r"in.jsonl: line 2: field 'response' is empty \(nothing but whitespace / invisible"):
        load_scoring_inputs(f)
    f = write(tmp_path / "in2.jsonl", '{"prompt": "p\\ud83d", "response": " ok"}\n')
    with pytest.raises(UserError, match=r"line 1: field 'prompt': not valid Unicode"):
        load_scoring_inputs(f)
    f = write(tmp_path / "prompts.txt", "The film was\nThe plot\x00 was\n")
    with pytest.raises(UserError, match=r"prompts.txt: line 2: field 'prompt': contains a NUL"):
        load_prompts_file(str(f))


def test_server_trl_and_verl_refuse_bad_text_and_unknown_roles(monkeypatch):
    from robust_rlhf.integrations import verl_reward
    from robust_rlhf.integrations.trl import EnsembleRewardFunc

    with fake_server() as srv:
        for body, field in [({"prompts": ["a"], "responses": ["\u200b\u00ad"]}, "responses"),
                            ({"prompts": ["a\x00b"], "responses": [" x"]}, "prompts")]:
            status, reply, _ = http(srv.url + "/score", body)
            assert status == 400 and f"field '{field}' item 0" in reply["error"], reply
        status, reply, _ = http(srv.url + "/openrlhf", {"query": ["<|im_start|>critic\nhm<|im_end|>\n"
                                                                  "<|im_start|>assistant\nok<|im_end|>"]})
        assert status == 400 and "role 'critic'" in reply["error"]
        monkeypatch.setenv("ROBUST_RLHF_URL", srv.url)
        with pytest.raises(UserError, match="role 'judge'"):
            verl_reward.compute_score("d", "ok", None, {"prompt": [{"role": "judge", "content": "q"}]})
    f = EnsembleRewardFunc(lambda p, r: RewardOutput(fake_score(p, r).per_head))
    with pytest.raises(UserError, match="role 'observer'"):
        f([[{"role": "observer", "content": "q"}]], [[{"role": "assistant", "content": "a"}]])
    with pytest.raises(UserError, match="completion 0: not valid Unicode"):
        f(["q"], ["a\udc00"])


# ------------------------------------------------------------------ numbers: flags and results
def test_simulate_refuses_overflowing_inputs_and_nonfinite_results(tmp_path, cli_error):
    r = write(tmp_path / "r.txt", "3e200\n-2e200\n1e200\n4e200\n")
    cli_error(["simulate", "bandit", "--r-star", r, "--trials", "5", "--out", tmp_path / "o"],
            "non-finite value", watch=tmp_path)  # |r*|^2 overflows
    cli_error(["simulate", "scoring", "--delta", "1e300", "--trials", "5", "--out", tmp_path / "o"],
            "magnitude", watch=tmp_path)


@pytest.mark.parametrize("argv, expected", [
    (["--max-body-mb", "1e309"], "--max-body-mb"),
    (["--max-body-mb", "nan"], "--max-body-mb"),
    (["--max-wait-ms", "inf"], "--max-wait-ms"),
    (["--lam", "inf", "--aggregator", "uwo"], "lam must be finite"),
    (["--device", "cuda:77"], "cuda:77"),
    (["--allow-client", "10.0.0.0/33"], "--allow-client"),
    (["--token", "two words"], "printable ASCII"),
])
def test_serve_flags_checked_before_loading(tmp_path, cli_error, argv, expected):
    cli_error(["serve", "--model", tmp_path / "no-model", "--port", "0", *argv], expected, watch=tmp_path)


# ------------------------------------------------------------------ folders and saved models
def test_experiment_report_on_a_folder_of_another_kind(tmp_path, cli_error):
    folder = write(tmp_path / "eval" / "results.json", '{"accuracy": 0.7, "num_pairs": 10}').parent
    cli_error(["experiment", "report", "--output-dir", folder], "not an experiment's results", watch=tmp_path)


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory, minilm_rm_factory):
    import torch

    torch.manual_seed(0)
    model = minilm_rm_factory(num_heads=K, max_length=64)
    folder = tmp_path_factory.mktemp("rm") / "model"
    model.save_pretrained(folder)
    return folder


def _edited_copy(saved_rm: Path, dest: Path, edit) -> Path:
    import shutil

    shutil.copytree(saved_rm, dest)
    cfg = json.loads((dest / "reward_config.json").read_text())
    edit(cfg)
    (dest / "reward_config.json").write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c.__setitem__("head_stats", {"mean": {"a": 1}, "std": [1, 1, 1]}), "field 'head_stats.mean'"),
    (lambda c: c.__setitem__("head_stats", {"mean": [0, 0, 0], "std": [1, 0, 1]}), "every std must be > 0"),
    (lambda c: c.__setitem__("head_stats", {"mean": [0, 0], "std": [1, 1]}), "2 values but the model has 3"),
    (lambda c: c.__setitem__("num_heads", 5), "num_heads=5 in reward_config.json"),
])
def test_saved_model_edits_named_with_file_and_folder(saved_rm, tmp_path, cli_error, edit, expected):
    model = _edited_copy(saved_rm, tmp_path / "m", edit)
    inp = write(tmp_path / "in.jsonl", '{"prompt": "p", "response": " r"}\n')
    line = cli_error(["rm", "score", "--model", model, "--input", inp, "--output", tmp_path / "out.jsonl"],
                   expected, watch=tmp_path)
    assert str(model) in line


# ------------------------------------------------------------------ requests, tokens, hub
def test_duplicate_json_keys_are_400():
    with fake_server() as srv:
        for path, raw in [("/score", b'{"prompts": ["a"], "responses": [" b"], "responses": [" c"]}'),
                          ("/openrlhf", b'{"query": ["ab"], "prompts": [{"x": 1, "x": 2}]}')]:
            status, reply, _ = http(srv.url + path, raw)
            assert status == 400 and "duplicate key" in reply["error"], reply


def test_client_refuses_an_empty_token_from_either_source(monkeypatch):
    from robust_rlhf.integrations.client import RewardClient

    with pytest.raises(UserError, match="token is empty"):
        RewardClient("http://127.0.0.1:9", token="  ")
    monkeypatch.setenv("ROBUST_RLHF_TOKEN", "")
    with pytest.raises(UserError, match="token is empty"):
        RewardClient("http://127.0.0.1:9")


def test_hub_looking_model_fails_at_once_unless_the_hub_is_enabled(tmp_path, cli_error, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("ROBUST_RLHF_HUB", raising=False)
    monkeypatch.chdir(tmp_path)
    import socket

    connects = []
    real_connect = socket.socket.connect

    def counting_connect(sock, address):
        connects.append(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    cli_error(["rm", "train", "--config", "rm_tiny", "--output-dir", tmp_path / "o", "model.backbone=zeta-org/enc-small"],
             "ROBUST_RLHF_HUB=1", watch=tmp_path)
    assert connects == []  # refused before any network attempt, so no retries


# ------------------------------------------------------------------ OpenRLHF: cut prompts, allow-list
def test_prompt_cut_by_the_client_is_counted_reported_and_warned_once(caplog):
    prompt = "A long preamble that OpenRLHF will cut from the left. The question: was the film good?"
    with fake_server() as srv, caplog.at_level(logging.WARNING, logger="robust_rlhf.integrations.server"):
        for _ in range(2):
            status, reply, _ = http(srv.url + "/openrlhf", {"query": [prompt[30:] + " Yes.", prompt + " No."],
                                                            "prompts": [prompt, prompt]})
            assert status == 200 and reply["extra_logs"]["prompt_cut"] == [1.0, 0.0]
        health = http(srv.url + "/health")[1]
    assert health["stats"]["prompts_cut"] == 2
    assert sum("cut a prompt" in r.getMessage() for r in caplog.records) == 1


def test_allow_client_list_on_loopback():
    with fake_server(allow_clients=("10.0.0.0/8",)) as srv:
        status, reply, _ = http(srv.url + "/score", {"prompts": ["a"], "responses": [" b"]})
        assert status == 403 and "127.0.0.1" in reply["error"] and "--allow-client" in reply["error"]
    with fake_server(allow_clients=("10.0.0.0/8", "127.0.0.1")) as srv:
        assert http(srv.url + "/score", {"prompts": ["a"], "responses": [" b"]})[0] == 200
        assert http(srv.url + "/health")[1]["allow_clients"] == ["10.0.0.0/8", "127.0.0.1"]
    with fake_server(allow_clients=("127.0.0.0/30",), token="t0k") as srv:  # both: address AND token
        assert http(srv.url + "/score", {"prompts": ["a"], "responses": [" b"]})[0] == 401
        assert http(srv.url + "/score?token=t0k", {"prompts": ["a"], "responses": [" b"]})[0] == 200


# ------------------------------------------------------------------ one conversation, one reward, every client
SYSTEM = {"role": "system", "content": "You are a film critic."}
TOOL_CALL = {"role": "assistant", "content": None,
             "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": '{"title": "Heat"}'}}]}
# (prompt, completion, the text the reward model must read -- written by hand)
CASES = [
    ("Review the film", "Wonderful, a joy.", ("Review the film", " Wonderful, a joy.")),       # ends in a letter
    ("Rate it from 1 to 10", "Nine.", ("Rate it from 1 to 10", " Nine.")),                      # a digit
    ("Honestly,", "it dragged.", ("Honestly,", " it dragged.")),                                # punctuation
    ("Was it good?\n", "Yes, mostly.", ("Was it good?\n", "Yes, mostly.")),                      # a newline
    ("The plot was", ", sadly, thin.", ("The plot was", ", sadly, thin.")),                      # attaching punctuation
    ([SYSTEM, {"role": "user", "content": "Review the film"}], [{"role": "assistant", "content": "Wonderful, a joy."}],
     ("Review the film", " Wonderful, a joy.")),                                                # system dropped
    ([{"role": "user", "content": "Name a film"}, {"role": "assistant", "content": "Heat"},
      {"role": "user", "content": "Why?"}], [{"role": "assistant", "content": "Its tension."}],
     ("user: Name a film\nassistant: Heat\nuser: Why?\nassistant: ", "Its tension.")),           # multi-turn
    ([{"role": "user", "content": "Find Heat"}], [TOOL_CALL],
     ("Find Heat", ' call lookup({"title": "Heat"})')),                                         # tool call, no content
    ([{"role": "user", "content": "Two lines"}], [{"role": "assistant", "content": "One."},
                                                  {"role": "assistant", "content": "Two."}],
     ("Two lines", " One.\nTwo.")),                                                             # completion list
]


def _text(x) -> str:
    """A case's prompt/completion as the plain string a string-only client is given."""
    if isinstance(x, str):
        return x
    from robust_rlhf.integrations.trl import message_text

    return message_text(x)


def test_one_conversation_one_reward_through_every_client(saved_rm, tmp_path, monkeypatch, capsys):
    import torch

    from robust_rlhf.cli import main
    from robust_rlhf.integrations import verl_reward
    from robust_rlhf.integrations.server import load_service
    from robust_rlhf.integrations.trl import reward_func_from_model
    from robust_rlhf.models.hub import load_tokenizer
    from robust_rlhf.reward.model import RewardModel

    model = RewardModel.from_pretrained(saved_rm)
    expected = model.score([t[0] for _, _, t in CASES], [t[1] for _, _, t in CASES]).mean.tolist()
    # the rule matters: the glued text of the first case scores differently ...
    glued = model.score([""], ["Review the filmWonderful, a joy."]).mean.item()
    assert glued != pytest.approx(expected[0], abs=1e-6)
    # ... and the reward model itself applies it to a (prompt, response) pair given glued
    assert model.score(["Review the film"], ["Wonderful, a joy."]).mean.item() == pytest.approx(expected[0], abs=1e-6)
    got: dict[str, list[float]] = {}

    trl_fn = reward_func_from_model(str(saved_rm))
    got["trl"] = trl_fn([p for p, _, _ in CASES], [c for _, c, _ in CASES])

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p, "response": c}) + "\n" for p, c, _ in CASES))
    assert main(["rm", "score", "--model", str(saved_rm), "--input", str(inp), "--output", str(tmp_path / "o.jsonl")]) == 0
    got["rm score"] = [json.loads(x)["reward"] for x in (tmp_path / "o.jsonl").read_text().splitlines()]

    smol = load_tokenizer("smollm2-135m")
    with BackgroundServer(create_app(load_service(str(saved_rm), AggregatorConfig("mean"), device="cpu"))) as srv:
        status, reply, _ = http(srv.url + "/score", {"prompts": [_text(p) for p, _, _ in CASES],
                                                     "responses": [_text(c) for _, c, _ in CASES]})
        assert status == 200
        got["/score"] = reply["rewards"]
        # OpenRLHF: the policy's chat template, response + EOS decoded with special tokens
        idx = [i for i, (p, c, _) in enumerate(CASES) if not (isinstance(c, list) and (len(c) > 1 or c[0]["content"] is None))]
        templ = [smol.apply_chat_template(p if isinstance(p, list) else [{"role": "user", "content": p}],
                                          tokenize=False, add_generation_prompt=True) for p, _, _ in CASES]
        queries = [templ[i] + _text(CASES[i][1]) + "<|im_end|>" for i in idx]
        status, reply, _ = http(srv.url + "/openrlhf", {"query": queries, "prompts": [templ[i] for i in idx]})
        assert status == 200
        got["/openrlhf (templated)"] = dict(zip(idx, reply["rewards"]))
        plain = [i for i in idx if isinstance(CASES[i][0], str)]
        status, reply, _ = http(srv.url + "/openrlhf", {"query": [CASES[i][0] + CASES[i][1] for i in plain],
                                                        "prompts": [CASES[i][0] for i in plain]})
        got["/openrlhf (plain)"] = dict(zip(plain, reply["rewards"]))
        monkeypatch.setenv("ROBUST_RLHF_URL", srv.url)
        got["verl"] = {i: verl_reward.compute_score("ds", _text(c), None, {"prompt": p})
                       for i, (p, c, _) in enumerate(CASES)}
    for client, values in got.items():
        pairs = values.items() if isinstance(values, dict) else enumerate(values)
        for i, v in pairs:
            assert v == pytest.approx(expected[i], abs=1e-5), (client, i, CASES[i][2])
    assert len(got["/openrlhf (templated)"]) >= 7 and torch.isfinite(torch.tensor(expected)).all()


def test_verl_function_imports_nothing_outside_the_standard_library():
    """docs/serving.md: `pip install --no-deps robust-rlhf` is enough in verl's environment."""
    import subprocess
    import sys

    code = ("import sys, robust_rlhf.integrations.verl_reward as v; "
            "bad = [m for m in ('torch', 'numpy', 'transformers', 'aiohttp', 'yaml', 'datasets') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("command, override", [
    (["policy", "train", "--config", "policy_tiny"], "train.lr=-Infinity"),   # a string that float() reads as inf
    (["policy", "train", "--config", "policy_tiny"], "sampling.temperature=1e999"),
    (["rm", "train", "--config", "rm_tiny"], "stage1.lr=NaN"),
])
def test_config_numbers_must_be_finite_even_when_written_as_text(tmp_path, cli_error, command, override):
    cli_error([*command, "--output-dir", tmp_path / "o", override], "must be a finite number", watch=tmp_path)


# ------------------------------------------------------------------ config files: keys and integers
@pytest.mark.parametrize("text, expected", [
    ("seed: 1\nseed: 2\n", "line 2: duplicate key 'seed' (first given at line 1)"),
    ("stage1:\n  lr: 0.1\n  batch_size: 4\n  lr: 0.2\n", "line 4: duplicate key 'lr' (first given at line 2)"),
    ("1: a\nseed: 3\n", "key 1 is a int, not a name"),
    ("stage1:\n  7: x\n", "key stage1.7 is a int"),
    ("? [a, b]\n: 1\n", "a key must be a plain name"),
])
def test_config_keys_named_once_and_as_names(tmp_path, cli_error, text, expected):
    cfg = write(tmp_path / "c.yaml", text)
    cli_error(["rm", "train", "--config", cfg, "--output-dir", tmp_path / "o"], expected, watch=tmp_path)


def test_yaml_merge_keys_are_not_duplicates():
    from robust_rlhf.config import safe_yaml_load

    assert safe_yaml_load("base: &b {lr: 1}\nstage1:\n  <<: *b\n  batch_size: 2\n", "c") == {
        "base": {"lr": 1}, "stage1": {"lr": 1, "batch_size": 2}}


@pytest.mark.parametrize("override, expected", [
    ("seed=-1.0", "seed must be >= 0"),            # a float that is an integer: the same range checks
    ("seed=5.0e+9", "absurdly large"),
    ("stage1.max_steps=1.0e+300", "absurdly large"),
])
def test_integers_written_as_floats_get_the_integer_checks(tmp_path, cli_error, override, expected):
    cli_error(["rm", "train", "--config", "rm_tiny", "--output-dir", tmp_path / "o", override], expected,
              watch=tmp_path)


# ------------------------------------------------------------------ inputs that are not files on disk
@pytest.fixture
def fifo(tmp_path):
    def make(name: str) -> Path:
        p = tmp_path / "in" / name
        p.parent.mkdir(exist_ok=True)
        os.mkfifo(p)  # no writer: opening it would block for ever
        return p
    return make


def test_fifos_and_devices_as_inputs_are_refused_without_blocking(tmp_path, cli_error, fifo):
    out = tmp_path / "out"
    cli_error(["rm", "train", "--config", fifo("c.yaml"), "--output-dir", out], "is a named pipe (FIFO)",
              watch=tmp_path)
    cli_error(["rm", "train", "--config", "rm_tiny", "--output-dir", out, f"data.train={fifo('t.jsonl')}"],
              "is a named pipe (FIFO)", watch=tmp_path)
    cli_error(["rm", "score", "--model", tmp_path / "m", "--input", fifo("s.jsonl"), "--output", out / "s.jsonl"],
              "is a named pipe (FIFO)", watch=tmp_path)
    cli_error(["policy", "sample", "--policy", tmp_path / "p", "--prompts", fifo("p.txt"), "--output",
               out / "p.jsonl"], "is a named pipe (FIFO)", watch=tmp_path)
    os.symlink("/dev/zero", tmp_path / "in" / "zero.jsonl")  # endless: never read to its end
    cli_error(["rm", "score", "--model", tmp_path / "m", "--input", tmp_path / "in" / "zero.jsonl",
               "--output", out / "z.jsonl"], "is a character device", watch=tmp_path)



def test_rm_eval_reads_its_pairs_before_loading_the_model(tmp_path, cli_error, monkeypatch):
    from robust_rlhf.reward.model import RewardModel

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the pairs were read")

    monkeypatch.setattr(RewardModel, "from_pretrained", no_load)
    bad = write(tmp_path / "d.jsonl", '{"prompt": "p", "chosen": " c"}\n')
    cli_error(["rm", "eval", "--model", tmp_path / "m", "--data", bad, "--output-dir", tmp_path / "o"],
              "line 1: missing field 'rejected'", watch=tmp_path)


@pytest.mark.parametrize("command", [
    ["rm", "train", "--config", "rm_tiny", "data.train={bad}"],
    ["policy", "train", "--config", "policy_tiny", "data.prompts={bad}"],
])
def test_a_refusal_found_by_the_recipe_is_the_only_line_on_stderr(tmp_path, command):
    """In a real process (logging as the CLI sets it up, not pytest's capture): a bad data file the recipe
    finds after the threads are set gives exactly one stderr line and exit 2 -- no INFO line before it."""
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": " c"}\n' if command[0] == "rm" else '{"text": 3}\n')
    args = [a.format(bad=bad) for a in command] + ["--output-dir", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "robust_rlhf.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "bad.jsonl" in lines[0] and not (tmp_path / "out").exists()
