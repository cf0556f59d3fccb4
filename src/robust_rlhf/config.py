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
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from robust_rlhf.errors import UserError

PRESET_DIR = Path(__file__).parent / "configs"
T = TypeVar("T")


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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


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
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
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
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(
            f"config: unknown key {prefix + unknown[0]!r}; valid keys{(' under ' + where) if where else ''}: "
            f"{', '.join(sorted(fields))}"
        )
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
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise UserError(f"config {key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"config {key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config {key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
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
