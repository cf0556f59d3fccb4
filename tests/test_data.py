"""Preference-data loading: TRL formats, sources, and errors that name file, line and field."""

import csv
import json

import pytest

from robust_rlhf.data.preferences import load_preferences, load_scoring_inputs
from robust_rlhf.errors import UserError


def test_standard_implicit_and_extra_columns(tmp_path, write_jsonl):
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q", "chosen": " good", "rejected": " bad", "subset": "chat", "score": 3},
        {"chosen": "Q good", "rejected": "Q bad"},
    ])
    pairs = load_preferences(f)
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected, pairs[0].subset) == ("Q", " good", " bad", "chat")
    assert pairs[0].extra == {"score": 3}
    assert (pairs[1].prompt, pairs[1].chosen) == ("", "Q good")


def test_conversational_rendered_by_the_one_rule(tmp_path, write_jsonl):
    """Issue 22: conversational training data is rendered like every scorer renders it (no backbone
    chat template): one user turn is its text, the answer joins it with a space."""
    row = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Review this film."}],
           "chosen": [{"role": "assistant", "content": "Wonderful!"}],
           "rejected": [{"role": "assistant", "content": "Awful."}]}
    (pair,) = load_preferences(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Review this film.", " Wonderful!", " Awful.")


def test_conversational_implicit_prompt_split_at_the_answer(tmp_path, write_jsonl):
    f = write_jsonl(tmp_path / "c.jsonl", [{"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                       "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]}])
    (pair,) = load_preferences(f)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("hi", " yo", " no")


def test_csv_parquet_and_datasets_folder(tmp_path):
    rows = [{"prompt": "P", "chosen": " a", "rejected": " b"}, {"prompt": "Q", "chosen": " c", "rejected": " d"}]
    with (tmp_path / "p.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerows(rows)
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "dsdir"))
    for src in ("p.csv", "p.parquet", "dsdir"):
        pairs = load_preferences(tmp_path / src)
        assert [p.chosen for p in pairs] == [" a", " c"], src


def test_builtin_fixture_loads_with_gold_columns():
    pairs = load_preferences("builtin:train")
    assert len(pairs) > 300
    assert all(p.extra["gold_chosen"] > p.extra["gold_rejected"] for p in pairs)


@pytest.mark.parametrize("content, match", [
    ('{"prompt": "p", "rejected": "r"}\n', r"line 1: missing field 'chosen'"),
    ('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": 5, "rejected": "r"}\n',
     r"line 2: field 'chosen': expected text or a list of messages, got int"),
    ('{"prompt": "p", "chosen": "   ", "rejected": "r"}\n', r"line 1: field 'chosen' is empty"),
    ('{"prompt": "p", "chosen": "c", "rejected": null}\n', r"line 1: field 'rejected' is missing or null"),
    ('{"prompt": "p", "chosen": "c", \n', r"line 1: invalid JSON"),
    ('[1, 2]\n', r"line 1: expected an object"),
    ('{"chosen": [{"role": "user"}], "rejected": "r"}\n', r"line 1: field 'chosen'\[0\]: a message must be an object"),
    ('', r"no preference pairs found"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(UserError, match=match) as e:
        load_preferences(f)
    assert "bad.jsonl" in str(e.value)


def test_unreadable_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_preferences(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(UserError, match="unsupported file type"):
        load_preferences(tmp_path / "x.txt")
    (tmp_path / "latin.jsonl").write_bytes(b'{"chosen": "caf\xe9", "rejected": "x"}\n')
    with pytest.raises(UserError, match="not valid UTF-8"):
        load_preferences(tmp_path / "latin.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="cannot read Parquet"):
        load_preferences(tmp_path / "broken.parquet")


def test_scoring_inputs_validation(tmp_path, write_jsonl):
    f = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "response": "r", "id": 1}, {"prompt": "p"}])
    with pytest.raises(UserError, match="line 2: missing field 'response'"):
        load_scoring_inputs(f)


# ---------------------------------------------------------------- real files read right (issue 12)
def test_byte_order_marks_are_dropped(tmp_path):
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\r\nP,good,bad\r\n")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "P", "chosen": "good", "rejected": "bad"}\n')
    for name in ("bom.csv", "bom.jsonl"):
        (pair,) = load_preferences(tmp_path / name)
        assert (pair.prompt, pair.chosen, pair.rejected) == ("P", " good", " bad"), name  # joined by the rule


def test_csv_quoting_and_line_numbers(tmp_path):
    (tmp_path / "q.csv").write_text('prompt,chosen,rejected\n"P, with comma","a\nsecond line",b\nQ,c,d\nR,e\n')
    with pytest.raises(UserError, match=r"q.csv: line 5: 2 fields but the header has 3"):
        load_preferences(tmp_path / "q.csv")
    (tmp_path / "q.csv").write_text('prompt,chosen,rejected\n"P, with comma","a\nsecond line",b\nQ,c,d\n')
    pairs = load_preferences(tmp_path / "q.csv")
    assert [(p.prompt, p.chosen, p.source.rsplit(": ", 1)[1]) for p in pairs] == [
        ("P, with comma", " a\nsecond line", "line 2"), ("Q", " c", "line 4")]


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085", "\r"])
def test_unicode_line_separators_inside_json_strings(tmp_path, sep):
    f = tmp_path / "u.jsonl"
    rows = [{"prompt": f"a{sep}b", "chosen": " c", "rejected": " d"}, {"prompt": "e", "chosen": " f", "rejected": " g"}]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8", newline="")
    pairs = load_preferences(f)
    assert [p.prompt for p in pairs] == [f"a{sep}b", "e"]
    assert pairs[1].source.endswith("line 2")


def test_mixed_formats_are_errors(tmp_path, write_jsonl):
    conv = [{"role": "assistant", "content": "x"}]
    for rows, match in [
        ([{"chosen": conv, "rejected": "y"}], r"line 1: fields 'chosen' and 'rejected' must have the same format"),
        ([{"prompt": conv, "chosen": "x", "rejected": "y"}], r"line 1: field 'prompt' is a list of messages"),
        ([{"chosen": "x", "rejected": "y"}, {"chosen": conv, "rejected": conv}], r"line 2: this row is conversational"),
    ]:
        with pytest.raises(UserError, match=match):
            load_preferences(write_jsonl(tmp_path / "m.jsonl", rows))


def test_identical_pairs_all_error_some_warn(tmp_path, caplog, write_jsonl):
    with pytest.raises(UserError, match="every pair has chosen == rejected"):
        load_preferences(write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "chosen": " x", "rejected": " x "}] * 2))
    rows = [{"prompt": "p", "chosen": " x", "rejected": " y"}, {"prompt": "p", "chosen": " z", "rejected": " z"}]
    with caplog.at_level("WARNING"):
        assert len(load_preferences(write_jsonl(tmp_path / "b.jsonl", rows))) == 2
    assert "1 of 2 pairs have chosen == rejected (first: " in caplog.text and "line 2" in caplog.text
