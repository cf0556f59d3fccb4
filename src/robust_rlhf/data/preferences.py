"""Preference data in TRL's formats -> a list of `PreferencePair`.

Supported layouts (TRL's dataset formats, https://huggingface.co/docs/trl/dataset_formats):
* standard:         {"prompt": str, "chosen": str, "rejected": str}
* implicit prompt:  {"chosen": str, "rejected": str}            (prompt = "")
* conversational:   {"prompt": [messages], "chosen": [messages], "rejected": [messages]} or
                    implicit-prompt conversational ({"chosen": [...], "rejected": [...]}), where a
                    message is {"role": ..., "content": ...}. Rendered to text by the one rule
                    every scorer uses (`robust_rlhf.data.text.render_pair`: system messages
                    dropped, one user turn = its text, else "role: content" lines); plain-text
                    responses get the same joining space where the join needs one.
An optional `subset` column gives per-subset scores; any other columns are kept in `extra`.

Sources: .jsonl/.json, .csv, .parquet files, a `datasets.save_to_disk` folder, or a hub id
(`hf:org/name[:split]`). Every bad row raises `UserError` naming file, line/row and field --
nothing is silently dropped. Lone surrogates, NUL bytes and fields made only of invisible
characters are refused (`robust_rlhf.data.text.check_text`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from robust_rlhf.data.text import ROLES, check_text, join_pair, render_pair, render_prompt
from robust_rlhf.errors import UserError

log = logging.getLogger(__name__)


FIXTURE_DIR = Path(__file__).parent / "fixtures"
"""The built-in task's shipped splits (``builtin:<split>``; `robust_rlhf.data.builtin_task` builds them)."""
SPLITS = ("train", "validation", "test")


def builtin_split_path(split: str) -> Path:
    """The fixture file of ``builtin:<split>``."""
    if split not in SPLITS:
        raise UserError(f"builtin:{split}: unknown split; use one of {', '.join(SPLITS)}")
    return FIXTURE_DIR / f"builtin_{split}.jsonl"


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    subset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False)
    """Where the pair came from ("file: line N"), for error messages."""


def _read_text(path: Path) -> str:
    """UTF-8 text of `path`, a byte-order mark (spreadsheet exports) dropped; a file too large
    for this machine's memory is refused first (`check_fits_in_memory`)."""
    from robust_rlhf.utils import check_fits_in_memory, check_regular_file

    check_regular_file(path)
    check_fits_in_memory(path)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def _json_loads(text: str, path: Path, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: {where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise UserError(f"{path}: {where}: invalid JSON (nested too deeply)") from None


def _iter_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (location, row) with a human location like 'line 7' or 'row 3'."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        text = _read_text(path)
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise UserError(f"{path}: invalid JSON (nested too deeply)") from None
            for i, row in enumerate(rows):
                yield f"item {i}", row
            return
        # JSON Lines are separated by "\n" only: U+2028/U+2029/U+0085 (which str.splitlines
        # also splits on) are ordinary characters inside JSON strings.
        from robust_rlhf.utils import max_line_bytes

        cap = max_line_bytes()
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            if len(line) > cap // 4 and len(line.encode("utf-8", "surrogatepass")) > cap:
                _refuse_long_line(path, lineno, len(line.encode("utf-8", "surrogatepass")), cap)
            yield f"line {lineno}", _json_loads(line, path, f"line {lineno}")
    elif suffix == ".csv":
        text = _read_text(path)
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader, None)
            if header is None:
                return
            if len(set(header)) != len(header) or any(not h.strip() for h in header):
                raise UserError(f"{path}: line 1: the header must name each column once, got {header}")
            start = reader.line_num + 1
            for row in reader:
                line = start
                start = reader.line_num + 1
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise UserError(
                        f"{path}: line {line}: {len(row)} fields but the header has {len(header)} "
                        "(an unquoted comma? quote fields that contain commas)")
                yield f"line {line}", dict(zip(header, row))
        except csv.Error as e:
            raise UserError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        from robust_rlhf.utils import check_fits_in_memory, check_regular_file

        check_regular_file(path)
        check_fits_in_memory(path)
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise UserError(f"{path}: cannot read Parquet ({str(e).splitlines()[0]})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"row {i}", row
    else:
        raise UserError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv, .parquet or a datasets folder)")


def _iter_dataset(ds, name: str) -> Iterator[tuple[str, dict]]:
    for i, row in enumerate(ds):
        yield f"{name} row {i}", row


def iter_source(source: str | Path) -> tuple[str, Iterator[tuple[str, dict]]]:
    """(display name, row iterator) for a file, a datasets folder or `hf:org/name[:split]`."""
    s = str(source)
    if s.startswith("hf:"):
        import datasets

        spec = s[3:]
        name, _, split = spec.partition(":")
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:
            raise UserError(f"{s}: cannot load dataset from the hub ({str(e).splitlines()[0]})") from None
        return s, _iter_dataset(ds, s)
    path = Path(s)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise UserError(f"{path}: not a datasets folder ({str(e).splitlines()[0]})") from None
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        return str(path), _iter_dataset(ds, str(path))
    if not os.access(path, os.R_OK):  # not open(): opening a FIFO would block (the reader refuses one)
        raise UserError(f"{path}: cannot read (permission denied)")
    return str(path), _iter_rows(path)


def _check_messages(value: list, where: str, name: str) -> None:
    for j, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or not ("content" in m or "tool_calls" in m):
            raise UserError(f"{where}: field {name!r}[{j}]: a message must be an object with 'role' and 'content'")
        if not isinstance(m["content"] if "content" in m else None, (str, list, type(None))):
            raise UserError(f"{where}: field {name!r}[{j}].content: expected text, got {type(m['content']).__name__}")


def _text_field(value: Any, where: str, name: str, allow_empty: bool = False) -> str:
    """A text field (or messages rendered as a prompt), checked: `UserError` naming ``where``/``name``."""
    if isinstance(value, list):
        _check_messages(value, where, name)
        try:
            text = render_prompt(value)
        except UserError as e:
            raise UserError(f"{where}: field {name!r}: {e}") from None
    elif isinstance(value, str):
        text = value
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        raise UserError(f"{where}: field {name!r} is missing or null")
    else:
        raise UserError(f"{where}: field {name!r}: expected text or a list of messages, got {type(value).__name__}")
    check_text(text, f"{where}: field {name!r}", require_visible=not allow_empty)
    return text


def _split_completion(messages: list) -> tuple[list, list]:
    """(prompt messages, completion messages) of an implicit-prompt conversation: the completion
    is the trailing run of assistant / tool messages."""
    k = len(messages)
    while k > 0 and isinstance(messages[k - 1], dict) and messages[k - 1].get("role") in ROLES[1:]:
        k -= 1
    return messages[:k], messages[k:]


def _render(prompt: Any, response: Any, where: str, name: str) -> tuple[str, str]:
    try:
        return render_pair(prompt, response)
    except UserError as e:
        raise UserError(f"{where}: field {name!r}: {e}") from None


def parse_pair(row: Any, where: str) -> PreferencePair:
    """Validate one row of any supported layout into a `PreferencePair` (texts as the reward model reads them)."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with 'chosen' and 'rejected', got {type(row).__name__}")
    for name in ("chosen", "rejected"):
        if name not in row:
            raise UserError(f"{where}: missing field {name!r} (have: {', '.join(sorted(map(str, row))) or 'nothing'})")
    prompt_raw = row.get("prompt")
    conversational = isinstance(row["chosen"], list)
    for name in ("prompt", "chosen", "rejected"):
        if isinstance(row.get(name), list):
            _check_messages(row[name], where, name)
    if isinstance(row["rejected"], list) != conversational:
        # One side as messages, the other as plain text: the rendering alone would tell them apart.
        raise UserError(f"{where}: fields 'chosen' and 'rejected' must have the same format (both text or both "
                        f"lists of messages), got {type(row['chosen']).__name__} and {type(row['rejected']).__name__}")
    if isinstance(prompt_raw, list) and not conversational:
        raise UserError(f"{where}: field 'prompt' is a list of messages but 'chosen'/'rejected' are text; "
                        "use one format for all three")
    if conversational:
        if isinstance(prompt_raw, list) or prompt_raw is None:
            pm_c, comp_c = (prompt_raw, row["chosen"]) if prompt_raw is not None else _split_completion(row["chosen"])
            pm_r, comp_r = (prompt_raw, row["rejected"]) if prompt_raw is not None else _split_completion(row["rejected"])
        else:
            raise UserError(f"{where}: field 'prompt' is text but 'chosen'/'rejected' are lists of messages; "
                            "use one format for all three")
        p_c, chosen = _render(pm_c, comp_c, where, "chosen")
        p_r, rejected = _render(pm_r, comp_r, where, "rejected")
        prompt = p_c
        if p_c != p_r:  # different conversations before the answers: score each as a whole
            prompt, chosen, rejected = "", p_c + chosen, p_r + rejected
        check_text(prompt, f"{where}: field 'prompt'")
        check_text(chosen, f"{where}: field 'chosen'", require_visible=True)
        check_text(rejected, f"{where}: field 'rejected'", require_visible=True)
    else:
        prompt = "" if prompt_raw is None else _text_field(prompt_raw, where, "prompt", allow_empty=True)
        chosen = join_pair(prompt, _text_field(row["chosen"], where, "chosen"))
        rejected = join_pair(prompt, _text_field(row["rejected"], where, "rejected"))
    subset = row.get("subset")
    if subset is not None and not isinstance(subset, (str, int)):
        raise UserError(f"{where}: field 'subset': expected text, got {type(subset).__name__}")
    extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "subset")}
    return PreferencePair(prompt, chosen, rejected, None if subset is None else str(subset), extra, source=where)


def load_preferences(source: str | Path, limit: int | None = None) -> list[PreferencePair]:
    """Load and validate every row of `source`. Raises `UserError` on the first bad row."""
    if str(source) == "builtin" or str(source).startswith("builtin:"):
        split = str(source).partition(":")[2] or "train"
        source = builtin_split_path(split)
    name, rows = iter_source(source)
    pairs = []
    first_format: tuple[str, str] | None = None
    for where, row in rows:
        pair = parse_pair(row, f"{name}: {where}")
        fmt = "conversational (lists of messages)" if isinstance(row["chosen"], list) else "plain text"
        if first_format is None:
            first_format = (fmt, where)
        elif fmt != first_format[0]:
            raise UserError(f"{name}: {where}: this row is {fmt} but {first_format[1]} is {first_format[0]}; "
                            "use one format for the whole dataset")
        pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise UserError(f"{name}: no preference pairs found (empty file?)")
    check_degenerate_pairs(pairs, name)
    return pairs


def check_degenerate_pairs(pairs: Sequence[PreferencePair], name: str) -> int:
    """Pairs whose chosen and rejected texts are identical carry no preference. All of them: an
    error (accuracy on such data is meaningless); some: a warning with the first location.
    Returns the number of identical pairs."""
    same = [p for p in pairs if p.chosen.strip() == p.rejected.strip()]
    if same and len(same) == len(pairs):
        raise UserError(f"{name}: every pair has chosen == rejected ({len(pairs)} pairs); the data carries no "
                        "preference (wrong columns?)")
    if same:
        log.warning("%s: %d of %d pairs have chosen == rejected (first: %s); they carry no preference",
                    name, len(same), len(pairs), same[0].source or "?")
    return len(same)


def check_prompt_lengths(pairs: Sequence[PreferencePair], tokenizer, max_length: int) -> None:
    """A prompt that fills `max_length` on its own leaves no room for the response: chosen and
    rejected would score identically after truncation. That is an error, not a silent drop."""
    prompts = sorted({p.prompt for p in pairs if p.prompt})
    if not prompts:
        return
    lengths = dict(zip(prompts, (len(ids) for ids in tokenizer(prompts, truncation=False)["input_ids"])))
    for p in pairs:
        if p.prompt and lengths[p.prompt] >= max_length:
            raise UserError(
                f"{p.source or 'data'}: field 'prompt' is {lengths[p.prompt]} tokens, not shorter than "
                f"max_length={max_length}; the responses would be truncated away (raise model.max_length or shorten it)")


def _refuse_long_line(path: Path, lineno: int, size: int, cap: int) -> None:
    raise UserError(f"{path}: line {lineno} is {size:,} bytes, over the limit of {cap:,} bytes per line "
                    "(a corrupt file, or one huge text?); fix that line, or raise the limit with "
                    "--max-line-bytes / ROBUST_RLHF_MAX_LINE_BYTES")


def iter_jsonl_lines(path: str | Path, max_line_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of every non-blank line of a JSON Lines file, streamed: memory
    stays at one line, at most `max_line_bytes` (default `utils.max_line_bytes()`); a longer
    line is refused with its number and size, without reading it into memory."""
    from robust_rlhf.utils import check_line_cap, check_regular_file, max_line_bytes as default_cap

    path = Path(path)
    cap = default_cap() if max_line_bytes is None else check_line_cap(max_line_bytes)
    check_regular_file(path)  # the lowest reader of a streamed file: the one check of it
    try:
        f = path.open("rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        lineno = 0
        while True:
            try:
                raw = f.readline(cap + 1)
            except OSError as e:
                raise UserError(f"{path}: cannot read ({e.strerror})") from None
            if not raw:
                return
            lineno += 1
            if len(raw) > cap and not (len(raw) == cap + 1 and raw.endswith(b"\n")):
                size = len(raw)
                while not raw.endswith(b"\n"):  # measure the rest of the line in bounded pieces
                    raw = f.readline(1 << 20)
                    if not raw:
                        break
                    size += len(raw)
                _refuse_long_line(path, lineno, size - (1 if raw.endswith(b"\n") else 0), cap)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark (spreadsheet exports)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: line {lineno}: not valid UTF-8 (byte {e.start} of the line)") from None
            if not line.strip():
                continue
            yield lineno, _json_loads(line, path, f"line {lineno}")


def iter_scoring_inputs(path: str | Path, max_line_bytes: int | None = None) -> Iterator[dict]:
    """Validated rows for `rm score`: objects with fields `prompt` and `response` (text or chat
    messages; the rendered texts checked, `robust_rlhf.data.text`). A JSON
    Lines file is streamed (`iter_jsonl_lines`: bounded memory, over-long lines refused); other
    layouts are read whole (a file too large for memory is refused first). An empty input is a
    `UserError` (raised after the last row)."""
    p = Path(str(path))
    if p.suffix.lower() == ".jsonl" and p.is_file():
        name, rows = str(p), ((f"line {n}", row) for n, row in iter_jsonl_lines(p, max_line_bytes))
    else:
        name, rows = iter_source(path)
    count = 0
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{name}: {where}: expected an object with 'prompt' and 'response'")
        for f in ("prompt", "response"):
            if f not in row:
                raise UserError(f"{name}: {where}: missing field {f!r}")
            if not isinstance(row[f], (str, list)):
                raise UserError(f"{name}: {where}: field {f!r}: expected text or chat messages, got "
                                f"{type(row[f]).__name__}")
        p, r = _render(row["prompt"], row["response"], f"{name}: {where}", "response")
        check_text(p, f"{name}: {where}: field 'prompt'")
        check_text(r, f"{name}: {where}: field 'response'", require_visible=True)
        count += 1
        yield row
    if not count:
        raise UserError(f"{name}: no rows found (empty file?)")


def load_scoring_inputs(path: str | Path) -> list[dict]:
    """Rows for `rm score`: objects with fields `prompt` and `response`, each text or chat messages
    (a completion list for `response`), returned as they are; the texts the reward model will read
    (`robust_rlhf.data.text.render_pair`) are checked here (all in memory; `iter_scoring_inputs`
    streams them)."""
    return list(iter_scoring_inputs(path))


def save_preferences_jsonl(path: str | Path, pairs: Sequence[PreferencePair]) -> None:
    from robust_rlhf.utils import atomic_write_jsonl

    rows = []
    for p in pairs:
        row = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
        if p.subset is not None:
            row["subset"] = p.subset
        row.update(p.extra)
        rows.append(row)
    atomic_write_jsonl(path, rows)
