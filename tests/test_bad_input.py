"""Table-driven bad input through the CLI: each case gives one clear line on stderr naming what
and where, exit status 2, no traceback, and no partial output. (Server requests have their own
table in test_server.py.)"""

import json
import os
import shutil

import pytest


def _copy_model(src, dest):
    """An editable copy of the model folder `src`: its small files copied, its backbone folder
    linked (read only here; the 90 MB weights and the 0.5 GB of resume checkpoints are not copied)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("backbone", "checkpoints"))
    if (src / "backbone").is_dir():
        os.symlink(src / "backbone", dest / "backbone")
    return dest


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_trained_rm):
    d = tmp_path_factory.mktemp("bad")

    def w(name, text):
        (d / name).write_text(text)
        return d / name

    f = {
        "good_pairs": w("good.jsonl", '{"prompt": "p", "chosen": " good", "rejected": " bad"}\n'),
        "missing_field": w("missing.jsonl", '{"prompt": "p", "chosen": " c"}\n'),
        "wrong_type": w("wrongtype.jsonl", '{"prompt": "p", "chosen": " c", "rejected": " r"}\n{"prompt": "p", "chosen": [1], "rejected": " r"}\n'),
        "empty_text": w("emptytext.jsonl", '{"prompt": "p", "chosen": "", "rejected": " r"}\n'),
        "nan_text": w("nantext.jsonl", '{"prompt": "p", "chosen": NaN, "rejected": " r"}\n'),
        "truncated_json": w("truncated.jsonl", '{"prompt": "p", "chosen": " c", "rejected": " r"}\n{"prompt": "p", "cho'),
        "empty_file": w("empty.jsonl", ""),
        "csv_missing_col": w("nocol.csv", "prompt,chosen\np,c\n"),
        "csv_empty_cell": w("emptycell.csv", "prompt,chosen,rejected\np,,r\n"),
        "bad_prompt_type": w("prompttype.jsonl", '{"prompt": 3, "chosen": " c", "rejected": " r"}\n'),
        "bad_message": w("badmsg.jsonl", '{"chosen": [{"role": "user", "content": 5}], "rejected": " r"}\n'),
        "bad_subset": w("badsubset.jsonl", '{"chosen": " c", "rejected": " r", "subset": [1]}\n'),
        "not_object": w("notobj.jsonl", '"just a string"\n'),
        "score_missing": w("score_missing.jsonl", '{"prompt": "p"}\n'),
        "score_type": w("score_type.jsonl", '{"prompt": "p", "response": 7}\n'),
        "score_empty": w("score_empty.jsonl", '{"prompt": "p", "response": "  "}\n'),
        "bad_yaml": w("bad.yaml", "model: [unclosed\n"),
        "list_yaml": w("list.yaml", "- a\n- b\n"),
        "unknown_yaml": w("unknown.yaml", "modle:\n  num_heads: 3\n"),
        "typed_yaml": w("typed.yaml", "stage1:\n  batch_size: many\n"),
        "txt": w("pairs.txt", "hello"),
        "csv_comma": w("comma.csv", "prompt,chosen,rejected\np,good, really good,bad\n"),
        "mixed_sides": w("mixedsides.jsonl", '{"chosen": [{"role": "assistant", "content": "x"}], "rejected": "y"}\n'),
        "all_same": w("allsame.jsonl", '{"prompt": "p", "chosen": " a", "rejected": " a"}\n' * 2),
        "alias_bomb": w("bomb.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))),
        "long_prompt": w("longprompt.jsonl", '{"prompt": "p", "chosen": " c", "rejected": " r"}\n'
                         + json.dumps({"prompt": "word " * 80, "chosen": " c", "rejected": " r"}) + "\n"),
    }
    (d / "latin1.jsonl").write_bytes(b'{"chosen": "caf\xe9", "rejected": "x"}\n')
    f["latin1"] = d / "latin1.jsonl"
    (d / "broken.parquet").write_bytes(b"PAR1garbage")
    f["broken_parquet"] = d / "broken.parquet"
    (d / "notdataset").mkdir()
    f["plain_dir"] = d / "notdataset"
    # model folders
    f["not_model"] = d / "notdataset"
    no_cfg = d / "model_no_config"
    _copy_model(tiny_trained_rm, no_cfg)
    (no_cfg / "reward_config.json").unlink()
    f["model_no_config"] = no_cfg
    bad_json = d / "model_bad_json"
    _copy_model(tiny_trained_rm, bad_json)
    (bad_json / "reward_config.json").write_text("{not json")
    f["model_bad_json"] = bad_json
    bad_field = d / "model_bad_field"
    _copy_model(tiny_trained_rm, bad_field)
    cfg = json.loads((bad_field / "reward_config.json").read_text())
    cfg["head_type"] = "banana"
    (bad_field / "reward_config.json").write_text(json.dumps(cfg))
    f["model_bad_field"] = bad_field
    trunc = d / "model_truncated_heads"
    _copy_model(tiny_trained_rm, trunc)
    data = (trunc / "heads.safetensors").read_bytes()
    (trunc / "heads.safetensors").write_bytes(data[: len(data) // 2])
    f["model_truncated_heads"] = trunc
    pickle_only = d / "pickle_backbone"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
                                                         "num_attention_heads": 1, "intermediate_size": 8, "vocab_size": 10}))
    (pickle_only / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    f["pickle_backbone"] = pickle_only
    f["model"] = tiny_trained_rm
    return f


def _train(f, *extra):
    return ["rm", "train", "--config", "rm_tiny", *extra]


CASES = [
    # (id, argv builder, expected fragment of the message)
    ("override-unknown-key", lambda f: _train(f, "stage1.nope=1"), "unknown key 'stage1.nope'"),
    ("override-unknown-section", lambda f: _train(f, "optimizer.lr=1"), "unknown key 'optimizer'"),
    ("override-no-equals", lambda f: _train(f, "stage1.lr"), "expected key=value"),
    ("override-wrong-int", lambda f: _train(f, "stage1.batch_size=abc"), "stage1.batch_size: expected an integer"),
    ("override-wrong-bool", lambda f: _train(f, "stage1.lora=maybe"), "stage1.lora: expected true/false"),
    ("override-negative-coef", lambda f: _train(f, "loss.bsr_coef=-0.1"), "bsr_coef must be a finite number >= 0"),
    ("override-nan-lr", lambda f: _train(f, "stage1.lr=.nan"), "stage1.lr must be a finite number"),
    ("override-inf-coef", lambda f: _train(f, "loss.center_coef=.inf"), "center_coef must be a finite number"),
    ("override-bad-literal", lambda f: _train(f, "model.head_type=forest"), "head_type"),
    ("override-zero-heads", lambda f: _train(f, "model.num_heads=0"), "num_heads must be"),
    ("override-zero-batch", lambda f: _train(f, "stage1.batch_size=0"), "batch sizes must be >= 1"),
    ("override-bad-gaussian-loss", lambda f: _train(f, "stage2.gaussian_loss=mse"), "stage2.gaussian_loss"),
    ("config-unknown-preset", lambda f: ["rm", "train", "--config", "no_such_preset"], "no built-in preset"),
    ("config-invalid-yaml", lambda f: ["rm", "train", "--config", str(f["bad_yaml"])], "not valid YAML"),
    ("config-top-level-list", lambda f: ["rm", "train", "--config", str(f["list_yaml"])], "top level must be a mapping"),
    ("config-unknown-key", lambda f: ["rm", "train", "--config", str(f["unknown_yaml"])], "unknown key 'modle'"),
    ("config-wrong-type", lambda f: ["rm", "train", "--config", str(f["typed_yaml"])], "stage1.batch_size: expected an integer"),
    ("backbone-missing-folder", lambda f: _train(f, "model.backbone=./no/such/folder"), "not an embedded name"),
    ("backbone-folder-without-config", lambda f: _train(f, f"model.backbone={f['plain_dir']}"), "has no config.json"),
    ("backbone-pickle-only", lambda f: _train(f, f"model.backbone={f['pickle_backbone']}"), "pickle"),
    ("train-data-missing-file", lambda f: _train(f, "data.train=/no/such.jsonl"), "no such file"),
    ("train-data-missing-field", lambda f: _train(f, f"data.train={f['missing_field']}"), "line 1: missing field 'rejected'"),
    ("train-data-wrong-type", lambda f: _train(f, f"data.train={f['wrong_type']}"), "line 2: field 'chosen'"),
    ("train-data-empty-text", lambda f: _train(f, f"data.train={f['empty_text']}"), "line 1: field 'chosen' is empty"),
    ("train-data-nan", lambda f: _train(f, f"data.train={f['nan_text']}"), "line 1: field 'chosen'"),
    ("train-data-truncated", lambda f: _train(f, f"data.train={f['truncated_json']}"), "line 2: invalid JSON"),
    ("train-data-empty-file", lambda f: _train(f, f"data.train={f['empty_file']}"), "no preference pairs found"),
    ("train-data-non-utf8", lambda f: _train(f, f"data.train={f['latin1']}"), "not valid UTF-8"),
    ("train-data-csv-missing-column", lambda f: _train(f, f"data.train={f['csv_missing_col']}"), "line 2: missing field 'rejected'"),
    ("train-data-csv-empty-cell", lambda f: _train(f, f"data.train={f['csv_empty_cell']}"), "line 2: field 'chosen' is empty"),
    ("train-data-broken-parquet", lambda f: _train(f, f"data.train={f['broken_parquet']}"), "cannot read Parquet"),
    ("train-data-unsupported", lambda f: _train(f, f"data.train={f['txt']}"), "unsupported file type"),
    ("train-data-plain-folder", lambda f: _train(f, f"data.train={f['plain_dir']}"), "not a datasets folder"),
    ("train-data-prompt-type", lambda f: _train(f, f"data.train={f['bad_prompt_type']}"), "field 'prompt'"),
    ("train-data-bad-message", lambda f: _train(f, f"data.train={f['bad_message']}"), "'chosen'[0].content"),
    ("train-data-bad-subset", lambda f: _train(f, f"data.train={f['bad_subset']}"), "field 'subset'"),
    ("train-data-not-object", lambda f: _train(f, f"data.train={f['not_object']}"), "expected an object"),
    ("train-data-prompt-too-long", lambda f: _train(f, f"data.train={f['long_prompt']}"), "line 2: field 'prompt' is"),
    ("eval-prompt-too-long", lambda f: ["rm", "eval", "--model", str(f["model"]), "--data", str(f["long_prompt"])], "line 2: field 'prompt' is"),
    ("train-data-csv-unquoted-comma", lambda f: _train(f, f"data.train={f['csv_comma']}"), "line 2: 4 fields but the header has 3"),
    ("train-data-mixed-formats", lambda f: _train(f, f"data.train={f['mixed_sides']}"), "same format"),
    ("train-data-all-identical", lambda f: _train(f, f"data.train={f['all_same']}"), "every pair has chosen == rejected"),
    ("config-alias-bomb", lambda f: ["rm", "train", "--config", str(f["alias_bomb"])], "expands to more than"),
    ("override-negative-seed", lambda f: _train(f, "seed=-1"), "seed must be >= 0"),
    ("override-bad-device", lambda f: _train(f, "device=tpu9"), "device 'tpu9'"),
    ("override-max-length-past-backbone", lambda f: _train(f, "model.max_length=100000"), "max_position_embeddings"),
    ("train-data-unknown-builtin-split", lambda f: _train(f, "data.train=builtin:dev"), "unknown split"),
    ("eval-not-a-model", lambda f: ["rm", "eval", "--model", str(f["plain_dir"]), "--data", str(f["good_pairs"])], "not a robust-rlhf reward model"),
    ("eval-model-no-config", lambda f: ["rm", "eval", "--model", str(f["model_no_config"]), "--data", str(f["good_pairs"])], "no reward_config.json"),
    ("eval-model-bad-json", lambda f: ["rm", "eval", "--model", str(f["model_bad_json"]), "--data", str(f["good_pairs"])], "invalid JSON"),
    ("eval-model-bad-field", lambda f: ["rm", "eval", "--model", str(f["model_bad_field"]), "--data", str(f["good_pairs"])], "head_type"),
    ("eval-model-truncated-heads", lambda f: ["rm", "eval", "--model", str(f["model_truncated_heads"]), "--data", str(f["good_pairs"])], "cannot load heads"),
    ("eval-bad-data", lambda f: ["rm", "eval", "--model", str(f["model"]), "--data", str(f["missing_field"])], "missing field"),
    ("eval-zero-batch", lambda f: ["rm", "eval", "--model", str(f["model"]), "--data", str(f["good_pairs"]), "--batch-size", "0"], "--batch-size must be >= 1"),
    ("score-missing-response", lambda f: ["rm", "score", "--model", str(f["model"]), "--input", str(f["score_missing"])], "line 1: missing field 'response'"),
    ("score-wrong-type", lambda f: ["rm", "score", "--model", str(f["model"]), "--input", str(f["score_type"])], "field 'response': expected text"),
    ("score-empty-response", lambda f: ["rm", "score", "--model", str(f["model"]), "--input", str(f["score_empty"])], "field 'response' is empty"),
    ("score-empty-file", lambda f: ["rm", "score", "--model", str(f["model"]), "--input", str(f["empty_file"])], "no rows found"),
    ("score-missing-input", lambda f: ["rm", "score", "--model", str(f["model"]), "--input", "/no/such.jsonl"], "no such file"),
]


@pytest.mark.parametrize("case_id, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(files, tmp_path, cli_error, case_id, argv, expected):
    argv = argv(files)
    out = tmp_path / "out"
    if argv[1] in ("train", "eval"):
        argv = argv + ["--output-dir", str(out)]
    else:
        argv = argv + ["--output", str(out)]
    cli_error(argv, expected)
    assert not out.exists(), f"partial output left behind: {list(out.iterdir()) if out.is_dir() else out}"

