"""Recipe configs: one dataclass per recipe, loaded from YAML presets with `key=value` overrides.

    cfg = load_config(RewardTrainConfig, "rm_ensemble_minilm", ["train.lr=1e-4", "ensemble.num_heads=5"])

* A config source is a YAML file path or the name of a built-in preset in
  `robust_rlhf/configs/<name>.yaml` (`list_presets()`).
* Overrides use dotted keys into nested dataclasses; values are parsed as YAML scalars
  (`1e-4`, `true`, `null`, `[1, 2]`).
* An unknown key is an error that lists the valid keys (unlike exec-based configs that accept
  typos silently); a value of the wrong type is an error naming the key.
* `config_to_dict` gives the resolved config, which recipes save next to every output.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from robust_rlhf.errors import UserError

PRESET_DIR = Path(__file__).parent / "configs"
T = TypeVar("T")
MAX_CONFIG_INT = 2**32 - 1
"""No integer setting (steps, sizes, seeds) is meaningfully larger; bigger ones are typos or bombs."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_config_source(source: str | Path) -> dict:
    """Read a YAML file or a built-in preset name into a dict."""
    path = Path(source)
    if not path.exists() and (PRESET_DIR / f"{source}.yaml").exists():
        path = PRESET_DIR / f"{source}.yaml"
    if not path.exists():
        raise UserError(
            f"config {str(source)!r}: no such file and no built-in preset of that name "
            f"(presets: {', '.join(list_presets())})"
        )
    if path.is_dir():
        raise UserError(f"config {str(source)!r} is a folder, not a YAML file")
    from robust_rlhf.utils import check_regular_file

    check_regular_file(path, "config")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise UserError(f"{path}: {path.stat().st_size} bytes is too large for a config (limit {MAX_YAML_BYTES})")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    data = safe_yaml_load(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000
"""A config expands to at most this many values: refuses alias bombs ("billion laughs") quickly."""
MAX_YAML_DEPTH = 100


def safe_yaml_load(text: str, where: str) -> Any:
    """`yaml.safe_load` that refuses resource bombs before building anything: alias expansion past
    `MAX_YAML_NODES` values and nesting deeper than `MAX_YAML_DEPTH`. Errors name `where` and the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        ctx = getattr(e, "context_mark", None)
        if ctx is not None and mark is not None and ctx.line != mark.line:
            problem += f" ({getattr(e, 'context', None) or 'opened'} at line {ctx.line + 1})"
        raise UserError(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise UserError(f"{where}: not valid YAML: nested too deeply") from None
    if node is None:
        return None
    sizes: dict[int, int] = {}
    stack = [(node, 0, False)]
    while stack:  # iterative post-order: expanded size of each node, counted once per node
        n, depth, done = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise UserError(f"{where}: line {n.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels")
        if id(n) in sizes:
            continue
        if isinstance(n, yaml.MappingNode) and not done:
            _check_mapping_keys(n, where)
        children = ([c for kv in n.value for c in kv] if isinstance(n, yaml.MappingNode)
                    else list(n.value) if isinstance(n, yaml.SequenceNode) else [])
        if done or not children:
            sizes[id(n)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(n)] > MAX_YAML_NODES:
                raise UserError(f"{where}: line {n.start_mark.line + 1}: expands to more than {MAX_YAML_NODES} values "
                                "(YAML aliases nested too much?)")
            continue
        stack.append((n, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML: {str(e).splitlines()[0]}") from None


def _check_mapping_keys(node: "yaml.MappingNode", where: str) -> None:
    """A config mapping's keys are plain scalars, each given once: a repeated key would silently
    keep only its last value (the first one is a typo or a merge gone wrong)."""
    seen: dict[str, int] = {}
    for key, _ in node.value:
        line = key.start_mark.line + 1
        if not isinstance(key, yaml.ScalarNode):
            raise UserError(f"{where}: line {line}: a key must be a plain name, not a list or mapping")
        if key.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *alias` merges are not keys of their own
        if key.value in seen:
            raise UserError(f"{where}: line {line}: duplicate key {key.value!r} (first given at line "
                            f"{seen[key.value]}); give each key once")
        seen[key.value] = line


def parse_overrides(overrides: Sequence[str]) -> dict:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}"""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"override {item!r}: empty key")
        try:
            value = safe_yaml_load(raw, f"override {key!r}") if raw.strip() else ""
        except UserError as e:
            if "not valid YAML" in str(e):
                value = raw  # not YAML: the text itself (e.g. a path with a colon)
            else:
                raise
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {p!r} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def build_dataclass(cls: type[T], data: dict, where: str = "") -> T:
    """Construct dataclass `cls` from a (nested) dict, rejecting unknown keys and bad types."""
    if not isinstance(data, dict):
        raise UserError(f"config {where or 'root'}: expected a mapping, got {type(data).__name__}")
    for old, new in getattr(cls, "renamed_keys", {}).items():
        *parents, leaf = old.split(".")
        node = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            raise UserError(f"config: unknown key {old!r}; use {new}")
    prefix = f"{where}." if where else ""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    valid = f"valid keys{(' under ' + where) if where else ''}: {', '.join(sorted(fields))}"
    for k in data:
        if not isinstance(k, str):
            raise UserError(f"config: key {prefix}{k!r} is a {type(k).__name__}, not a name; {valid}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"config: unknown key {prefix + unknown[0]!r}; {valid}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"config {where or 'root'}: {e}") from None
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value if value is not None else {}, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"config {key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"config {key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config {key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config {key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            number = None
            if isinstance(value, str):
                try:
                    number = float(value)  # "1e-3" and "inf" alike: the finiteness check below sees both
                except ValueError:
                    pass
            if number is None:
                raise UserError(f"config {key}: expected a number, got {value!r}")
            value = number
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"config {key} must be a finite number, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if not (isinstance(value, float) and value.is_integer()):
                raise UserError(f"config {key}: expected an integer, got {value!r}")
            value = int(value)  # 1e3 -> 1000, then the same range checks as any integer
        if abs(value) > MAX_CONFIG_INT:
            raise UserError(f"config {key}: {value} is absurdly large (limit {MAX_CONFIG_INT})")
        if key.rsplit(".", 1)[-1] == "seed" and value < 0:
            raise UserError(f"config {key}: a seed must be >= 0, got {value}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config {key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"config {key}: expected a string, got {value!r}")
        return str(value)
    return value


def load_config(cls: type[T], source: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, updated by the YAML `source` (file or preset), then by overrides."""
    data = read_config_source(source) if source is not None else {}
    data = _merge(data, parse_overrides(overrides))
    return build_dataclass(cls, data)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def saved_run_config(output_dir: str | Path, kind: str) -> dict | None:
    """The ``config.yaml`` a run left in ``output_dir`` as a dict, or None when there is none.

    A file that cannot be read or parsed, or is not a mapping, is refused (`UserError`) with a
    line naming ``kind`` (e.g. "a reward-model run's"): the folder holds something else."""
    path = Path(output_dir) / "config.yaml"
    if not path.exists():
        return None
    try:
        saved = safe_yaml_load(path.read_text(encoding="utf-8"), str(path))
    except (UserError, OSError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise UserError(f"--output-dir {str(output_dir)!r} holds a config.yaml that is not {kind}; "
                        "choose another --output-dir")
    return saved


def first_difference(now: object, there: object, where: str = "") -> str | None:
    """The first (in sorted key order) dotted key where config `now` differs from the saved
    config `there`, as ``"key: <there> there, <now> now"``; None when they are equal."""
    if isinstance(now, dict) and isinstance(there, dict):
        for k in sorted(set(now) | set(there), key=str):
            d = first_difference(now.get(k, "<absent>"), there.get(k, "<absent>"), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    if isinstance(now, (list, tuple)) and isinstance(there, (list, tuple)):
        now, there = list(now), list(there)
    return None if now == there else f"{where}: {there!r} there, {now!r} now"
