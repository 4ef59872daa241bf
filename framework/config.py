"""Typed, nested dataclass configs: built from dicts or YAML, overridden from the command line.

    cfg = from_dict(CoMeTJob, {"data": {"seq_len": 4096}})
    cfg = apply_overrides(cfg, ["--data.seq_len", "32768", "--launch.use_gpu=true"])

Every error is a `ConfigError` that names the dotted field, the rule it breaks and the fix.

A dataclass that renamed a field lists it in `RENAMED_FIELDS` ({old: new}, a ClassVar); dicts, YAML and
overrides that still use the old name are mapped to the new one here, with a one-line deprecation message on
stderr (e.g. TrainJob's `method` section, now `optim`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
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


def renamed_fields(cls) -> dict:
    """{old name: new name} of the fields dataclass `cls` renamed (its RENAMED_FIELDS ClassVar)."""
    return dict(getattr(cls, "RENAMED_FIELDS", None) or {})


def deprecated(message: str) -> None:
    """One line on stderr (a DeprecationWarning would be hidden by default)."""
    print(f"[longctx] deprecated: {message}", file=sys.stderr, flush=True)


def upgrade_keys(cls, data: dict, prefix: str = "", where: str = "") -> dict:
    """`data` (the fields of dataclass `cls`, nested sections as dicts) with renamed fields, at any depth,
    under their new names; a deprecation line for each. Both names at once is an error."""
    if not dataclasses.is_dataclass(cls) or not isinstance(data, dict):
        return data
    renames, names = renamed_fields(cls), _field_names(cls)
    out = dict(data)
    for old, new in renames.items():
        if old in out and old not in names:
            old_path, new_path = (f"{prefix}.{old}", f"{prefix}.{new}") if prefix else (old, new)
            if new in out:
                raise ConfigError(f"{where or prefix or cls.__name__}: both {old_path!r} and {new_path!r} are set; "
                                  f"{old_path!r} is the old name of {new_path!r}. Fix: keep only {new_path!r}")
            deprecated(f"{where + ': ' if where else ''}config key {old_path!r} is now {new_path!r} "
                       f"(the old name still works for now). Fix: rename {old_path!r} to {new_path!r}")
            out = {(new if k == old else k): v for k, v in out.items()}
    hints = _hints(cls) if any(isinstance(v, dict) for v in out.values()) else {}
    for k, v in out.items():
        if isinstance(v, dict) and k in names:
            out[k] = upgrade_keys(_unwrap_optional(hints[k])[0], v, f"{prefix}.{k}" if prefix else k, where)
    return out


def upgrade_path(cls, dotted: str) -> tuple[str, list[tuple[str, str]]]:
    """The dotted field path with renamed fields (at any depth of `cls`) under their new names, and the
    (old, new) path of each renamed field or section on the way."""
    parts, out, renames, tp = dotted.split("."), [], [], cls
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            out += parts[i:]
            break
        names = _field_names(tp)
        new = renamed_fields(tp).get(part)
        if new and part not in names:
            renames.append((".".join(out + [part]), ".".join(out + [new])))
            part = new
        out.append(part)
        tp = _unwrap_optional(_hints(tp)[part])[0] if part in names else None
    return ".".join(out), renames


def _deprecated_overrides(keys: list[tuple[str, str]], renames: list[tuple[str, str]]) -> None:
    """One line for the overrides `keys` ([(old key, new key)]) that used the renamed `renames`."""
    if keys:
        moved = ", ".join(f"{o!r} is now {n!r}" for o, n in dict.fromkeys(renames))
        deprecated(f"{', '.join('--' + o for o, _ in keys)}: {moved} (the old name still works for now). "
                   f"Fix: use {', '.join('--' + n for _, n in keys)}")


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
    item = (typing.get_args(tp) or (None,))[0] if origin is list else None
    if item in (int, float, str, bool):
        return _coerce_list(path, item, value)
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


def _coerce_list(path: str, item, value: Any) -> list:
    """A list of scalars: a list (YAML), JSON text ('[8192, 16384]') or comma-separated text ('8192,16384')."""
    example = {int: "8192,16384", float: "0,0.5,1", str: "a,b", bool: "true,false"}[item]
    as_json = json.dumps([coerce(path, item, v) for v in example.split(",")])
    fix = f"Fix: e.g. --{path} {example} (or JSON: --{path} '{as_json}'; [] for none)"
    values = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                values = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(f"{path}={value!r}: not valid JSON for a list of {item.__name__}. {fix}") from None
        else:
            values = [v.strip() for v in text.split(",") if v.strip()]
    if isinstance(values, tuple):
        values = list(values)
    if not isinstance(values, list):
        raise ConfigError(f"{path}={value!r}: expected a list of {item.__name__}. {fix}")
    out = []
    for v in values:
        try:
            out.append(coerce(path, item, v))
        except ConfigError:
            raise ConfigError(f"{path}={value!r}: {v!r} is not {'an' if item is int else 'a'} {item.__name__}. "
                             f"{fix}") from None
    return out


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys are errors that list the valid ones."""
    data = upgrade_keys(cls, dict(data or {}), prefix)
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
    if not _done:
        old, (dotted, renames) = dotted, upgrade_path(type(cfg), dotted)
        _deprecated_overrides([(old, dotted)] if renames else [], renames)
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
    """Apply `--a.b VALUE` / `--a.b=VALUE` overrides in order (renamed fields: one deprecation line for all)."""
    pairs, keys, renames = [], [], []
    for key, value in _split_override(tokens):
        new, renamed = upgrade_path(type(cfg), key)
        pairs.append((new, value))
        if renamed:
            keys.append((key, new))
            renames += renamed
    _deprecated_overrides(keys, renames)
    for key, value in pairs:
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
            generic = isinstance(tp, types.GenericAlias)  # list[int]: its item type too
            tname = str(tp) if generic else getattr(tp, "__name__", str(tp).replace("typing.", ""))
            lines.append(f"--{path} {json.dumps(value)}  ({tname})")
    return lines
