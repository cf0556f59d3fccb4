"""Gold specs (`module:function`, `hf:<folder>`), `data build-task`, and exit code 130 on Ctrl-C.
All fast: the base policy's sampling is replaced by fixed completions, the HF judge is a tiny
randomly initialised classifier."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from robust_rlhf.cli import main
from robust_rlhf.errors import UserError
from robust_rlhf.gold import load_gold


def test_module_function_gold_spec(tmp_path, monkeypatch):
    (tmp_path / "my_judge.py").write_text(
        "def length(prompts, responses):\n    return [float(len(r)) for r in responses]\nNOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_judge", raising=False)
    gold = load_gold("my_judge:length")
    assert gold(["a", "b"], ["xyz", ""]) == [3.0, 0.0]
    with pytest.raises(UserError, match="has no callable 'NOT_CALLABLE'"):
        load_gold("my_judge:NOT_CALLABLE")
    with pytest.raises(UserError, match="cannot import module 'no_such_judge_module'"):
        load_gold("no_such_judge_module:f")
    with pytest.raises(UserError, match="expected 'vader', 'learned', 'learned:<folder>', 'hf:<model>' or 'module:function'"):
        load_gold("vaderr")
    with pytest.raises(UserError, match="'nowhere' is not a folder"):
        load_gold("learned:nowhere")


@pytest.mark.parametrize("num_labels", [1, 3])
def test_hf_classifier_gold_spec(tmp_path, num_labels):
    from transformers import BertConfig, BertForSequenceClassification

    from robust_rlhf.models.hub import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path("minilm-l6"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=num_labels)).eval()
    model.save_pretrained(tmp_path / "judge")
    tok.save_pretrained(tmp_path / "judge")
    gold = load_gold(f"hf:{tmp_path / 'judge'}")
    prompts, responses = ["The film was", "It"], [" great.", " was a long, dull evening"]
    scores = gold(prompts, responses)
    # the score by hand, one text at a time: the logit (1 label) or the log-odds of the last label
    expected = []
    for p, r in zip(prompts, responses):
        with torch.no_grad():
            logits = model(**tok([p + r], return_tensors="pt")).logits[0].double().tolist()
        if num_labels == 1:
            expected.append(logits[0])
        else:
            expected.append(logits[-1] - math.log(sum(math.exp(x) for x in logits[:-1])))
    assert scores == pytest.approx(expected, abs=1e-5)


def test_data_build_task_command(tmp_path, monkeypatch, read_jsonl):
    import robust_rlhf.data.builtin_task as bt
    from robust_rlhf.gold import VaderGold

    fixed = [" wonderful, a delight", " dull and awful", " fine I guess", " terrible acting"]

    def fake_sample(policy, prompts, n, max_new_tokens, temperature, batch_size, seed):
        assert (policy, n, max_new_tokens) == ("smollm2-135m", 4, 20)
        return [fixed[:n] for _ in prompts]

    monkeypatch.setattr(bt, "sample_completions", fake_sample)
    out = tmp_path / "task"
    assert main(["data", "build-task", "--output-dir", str(out), "completions_per_prompt=4",
                 "pairs_per_prompt=3"]) == 0
    vader = VaderGold()
    n_prompts = 0
    for split in ("train", "validation", "test"):
        rows = read_jsonl(out / f"builtin_{split}.jsonl")
        assert rows, split
        for r in rows:  # every label agrees with the gold reward computed here (no label noise)
            g_c, g_r = vader([r["prompt"]], [r["chosen"]])[0], vader([r["prompt"]], [r["rejected"]])[0]
            assert g_c > g_r and r["chosen"] in fixed and r["rejected"] in fixed
        n_prompts += len({r["prompt"] for r in rows})
    summary = json.loads((out / "builtin_task.json").read_text())["summary"]
    assert summary["num_prompts"] == n_prompts
    assert all(summary[s]["pairs"] == 3 * summary[s]["prompts"] for s in ("train", "validation", "test"))


def test_ctrl_c_exits_130(tmp_path, monkeypatch, capsys):
    import robust_rlhf.data.builtin_task as bt

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bt, "build_task", interrupted)
    assert main(["data", "build-task", "--output-dir", str(tmp_path / "t")]) == 130
    assert capsys.readouterr().err.strip() == "robust-rlhf: interrupted"
