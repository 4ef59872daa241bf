"""Typed, nested dataclass configs: built from dicts or YAML, overridden from the command line.

    cfg = from_dict(JobConfig, {"data": {"seq_len": 4096}})
    cfg = apply_overrides(cfg, ["--data.seq_len", "32768", "--launch.use_gpu=true"])

Every error is a `ConfigError` that names the dotted field, the rule it breaks and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Sequence


class ConfigError(ValueError):
    """A config value or override breaks a rule; the message names the field, the rule and a fix."""


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def coerce(path: str, tp, value: Any) -> Any:
    """Convert `value` (often a command-line string) to the annotated type `tp`."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or value is None:
            return None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=path)
        raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}. "
                          f"Fix: set its fields one by one, e.g. --{path}.<field> VALUE")
    origin = typing.get_origin(tp) or tp
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if origin in (dict, list, tuple):
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, origin if origin is not tuple else (list, tuple)):
                raise ValueError
            return origin(value) if origin is tuple else value
        if origin is typing.Literal:
            if value not in typing.get_args(tp):
                raise ValueError
            return value
    except (ValueError, TypeError, json.JSONDecodeError):
        name = getattr(tp, "__name__", str(tp))
        example = {"bool": "true", "int": "8", "float": "0.001", "str": "text", "dict": '{"key": 1}',
                   "list": "[1, 2]"}.get(name, "")
        raise ConfigError(f"{path}={value!r}: expected {name}. Fix: pass a valid {name}"
                          + (f", e.g. --{path} {example}" if example else "")) from None
    return value


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys are errors that list the valid ones."""
    data = dict(data or {})
    names = _field_names(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = prefix or cls.__name__
        raise ConfigError(f"{where}: unknown field(s) {unknown}. Valid fields: {names}. "
                          "Fix: check the spelling (fields use underscores)")
    hints = _hints(cls)
    kwargs = {k: coerce(f"{prefix}.{k}" if prefix else k, hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a section's own validation (e.g. CoMeTConfigError)
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _split_override(tokens: Sequence[str]) -> list[tuple[str, str]]:
    pairs, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) <= 2:
            raise ConfigError(f"unexpected argument {tok!r}. Fix: overrides look like --section.field VALUE "
                              "or --section.field=VALUE")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens):
            value = tokens[i + 1]
            i += 2
        else:
            raise ConfigError(f"--{key} needs a value. Fix: --{key} VALUE")
        pairs.append((key, value))
    return pairs


def set_path(cfg, dotted: str, value: Any, _done: str = ""):
    """Return a copy of `cfg` with the dotted field set (value coerced to the field's type)."""
    head, _, rest = dotted.partition(".")
    names = _field_names(type(cfg))
    if head not in names:
        raise ConfigError(f"unknown config field {_done + dotted!r}: {type(cfg).__name__} has {names}. "
                          "Fix: run the recipe with --help-config to list every field")
    hints = _hints(type(cfg))
    if rest:
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            if isinstance(child, dict):
                return _replace(cfg, head, {**child, rest: value})
            raise ConfigError(f"{dotted!r}: {head} is not a section. Fix: use --{head} VALUE")
        return _replace(cfg, head, set_path(child, rest, value, f"{_done}{head}."))
    return _replace(cfg, head, coerce(_done + dotted, hints[head], value))


def _replace(cfg, name: str, value):
    try:
        return dataclasses.replace(cfg, **{name: value})
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def apply_overrides(cfg, tokens: Sequence[str]):
    """Apply `--a.b VALUE` / `--a.b=VALUE` overrides in order."""
    for key, value in _split_override(tokens):
        cfg = set_path(cfg, key, value)
    return cfg


def describe(cfg, prefix: str = "") -> list[str]:
    """One `--dotted.field value  (type)` line per leaf field, for --help-config."""
    lines = []
    hints = _hints(type(cfg))
    for name in _field_names(type(cfg)):
        value = getattr(cfg, name)
        path = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(value):
            lines += describe(value, path)
        else:
            tp = hints[name]
            tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
            lines.append(f"--{path} {json.dumps(value)}  ({tname})")
    return lines
