"""Typed experiment configuration: nested dataclasses <- YAML, with `_base_` inheritance and dotted overrides.

A config file is YAML. It may name ONE parent with ``_base_: relative/or/absolute/path.yaml``; the child is
deep-merged over the parent (mappings merge key by key, anything else replaces; a mapping that holds
``_delete_: true`` replaces the parent's mapping instead of merging into it, as in mmcv: e.g.
``lr_mult: {_delete_: true, captioner.x: 2.0}`` drops the parent's prefixes). Overrides from the command line
are ``dotted.key=value`` strings applied last::

    cfg = load_config("configs/x.yaml", ["optim.lr=2e-4", "data.batch_size=2"])

Everything is validated against the dataclass schema: an unknown key, a missing required key or a value of the
wrong type raises :class:`ConfigError` with ONE line that names the key path, where the value came from, and what
was expected (the valid keys, the valid choices, the expected type).

Supported field types: ``int``, ``float`` (an int is widened; NaN and infinities are refused: ``null`` is how a
config says "none"), ``bool``, ``str``, ``Literal[...]``, ``X | None``, ``list[T]``, ``tuple[T, ...]``,
``tuple[T1, T2]``, ``dict[str, T]``, nested dataclasses, and unions of dataclasses discriminated by a field that
every member annotates with a one-value ``Literal`` (e.g. ``kind: Literal["ctab"]``).

PyYAML reads ``2e-4`` (no dot) as a string; a ``float`` field accepts such a string when it parses as a number.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, get_args, get_origin

import yaml

from bevbridge.atomic import atomic_write_text

__all__ = [
    "ConfigError",
    "load_config",
    "load_yaml_tree",
    "from_dict",
    "to_dict",
    "save_config",
    "dump_config",
]

T = TypeVar("T")
BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


class ConfigError(ValueError):
    """A config problem, described in one line that names the key path and what was expected."""


class _CliValue(str):
    """A raw override string: parsed according to the target field's type, not by YAML rules."""


# ----------------------------------------------------------------------------------------------- YAML + inheritance
def load_yaml_tree(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Read a YAML config and its `_base_` chain into one merged mapping.

    Returns ``(tree, provenance)``; ``provenance`` maps each dotted key path to the file that set it last.
    """
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"{path}: `_base_` inheritance cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        tree: dict = {}
        prov: dict[str, str] = {}
    else:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: `_base_` must name one parent file (a string), got {base!r}")
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        tree, prov = load_yaml_tree(base_path, (*_seen, path))
    _merge_into(tree, data, prov, str(path), "")
    return tree, prov


def _merge_into(dst: dict, src: Mapping, prov: dict[str, str], source: str, prefix: str) -> None:
    for key, value in src.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: key {key!r} under '{prefix or '<root>'}' must be a string")
        if key == BASE_KEY:
            raise ConfigError(f"{source}: `_base_` is only allowed at the top level (found under '{prefix}')")
        kp = f"{prefix}{key}"
        replace = isinstance(value, Mapping) and DELETE_KEY in value
        if replace:
            if value[DELETE_KEY] is not True:
                raise ConfigError(f"{source}: '{kp}.{DELETE_KEY}' must be true (it replaces the parent's '{kp}' "
                                  f"instead of merging into it), got {value[DELETE_KEY]!r}")
            value = {k: v for k, v in value.items() if k != DELETE_KEY}
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict) and not replace:
            _merge_into(dst[key], value, prov, source, kp + ".")
        else:
            dst[key] = _copy_tree(value)
            for k in [k for k in prov if k.startswith(kp + ".")]:
                del prov[k]
        prov[kp] = source


def _copy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):  # a `_delete_` below a replaced or new mapping has nothing to replace
        return {k: _copy_tree(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def apply_override(tree: dict, prov: dict[str, str], override: str) -> None:
    """Apply one ``dotted.key=value`` override to a raw tree, in place."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r}: expected dotted.key=value (e.g. optim.lr=2e-4)")
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            parent = ".".join(parts[: i + 1])
            raise ConfigError(f"override {override!r}: '{parent}' is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = _CliValue(raw.strip())
    for k in [k for k in prov if k.startswith(key + ".")]:
        del prov[k]
    prov[key] = f"override {override!r}"


# ---------------------------------------------------------------------------------------------- schema validation
def from_dict(cls: type[T], data: Any, path: str = "", prov: Mapping[str, str] | None = None) -> T:
    """Build the dataclass ``cls`` from a plain mapping, validating every key and type."""
    return _convert(cls, data, path, prov or {})


def _where(path: str, prov: Mapping[str, str]) -> str:
    p = path
    while p:
        if p in prov:
            return f" (from {prov[p]})"
        p = p[:p.rindex("[")] if p.endswith("]") else p.rpartition(".")[0]  # list items: their list's source
    return ""


def _fail(path: str, prov: Mapping[str, str], msg: str) -> typing.NoReturn:
    raise ConfigError(f"config key '{path or '<root>'}'{_where(path, prov)}: {msg}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def _convert(tp: Any, value: Any, path: str, prov: Mapping[str, str]) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(tp, value, path, prov)
    if _is_union(tp):
        return _convert_union(tp, value, path, prov)
    origin = get_origin(tp)
    if origin is Literal:
        return _convert_literal(tp, value, path, prov)
    if origin in (list, tuple, Sequence):
        return _convert_sequence(tp, value, path, prov)
    if origin in (dict, Mapping):
        return _convert_mapping(tp, value, path, prov)
    if tp is Any:
        return value
    if tp in (int, float, str, bool):
        return _convert_scalar(tp, value, path, prov)
    raise TypeError(f"config schema: unsupported field type {tp!r} at '{path}'")


def _convert_dataclass(cls: type, value: Any, path: str, prov: Mapping[str, str]) -> Any:
    if isinstance(value, _CliValue):
        value = _yaml_value(value, path, prov)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        _fail(path, prov, f"expected a section ({cls.__name__}) with keys {_field_list(cls)}, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in value if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        _fail(_join(path, key), prov, f"unknown key{hint}; valid keys under '{path or '<root>'}': {_field_list(cls)}")
    kwargs = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], sub, prov)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(sub, prov, f"is required ({_type_name(hints[name])}) but was not set")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        if isinstance(e, ConfigError):
            raise
        msg = str(e)
        key, _, rest = msg.partition(" ")  # "data.image_size must be ...": name that key (and where it was set)
        prefix = f"{path}." if path else ""
        if rest and key.startswith(prefix) and key[len(prefix):].split(".")[0] in fields:
            _fail(key, prov, rest)
        _fail(path, prov, msg)


def _field_list(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls) if f.init)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _discriminator(members: Sequence[type]) -> str | None:
    """The field name that every dataclass member annotates with a one-value Literal, if any."""
    common = None
    for m in members:
        hints = typing.get_type_hints(m)
        names = {n for n, t in hints.items() if get_origin(t) is Literal and len(get_args(t)) == 1}
        common = names if common is None else common & names
    return sorted(common)[0] if common else None


def _convert_union(tp: Any, value: Any, path: str, prov: Mapping[str, str]) -> Any:
    args = get_args(tp)
    non_none = [a for a in args if a is not type(None)]
    if type(None) in args and (value is None or (isinstance(value, _CliValue) and value.lower() in ("null", "none"))):
        return None
    if len(non_none) == 1:
        return _convert(non_none[0], value, path, prov)
    if all(dataclasses.is_dataclass(a) for a in non_none):
        key = _discriminator(non_none)
        if key is None:
            raise TypeError(f"config schema: union at '{path}' needs a one-value Literal discriminator field")
        if isinstance(value, _CliValue):
            value = _yaml_value(value, path, prov)
        choices = {get_args(typing.get_type_hints(m)[key])[0]: m for m in non_none}
        if not isinstance(value, Mapping) or key not in value:
            _fail(_join(path, key), prov, f"is required to choose the section type; choices: {_choices(choices)}")
        tag = value[key]
        if tag not in choices:
            _fail(_join(path, key), prov, f"invalid choice {tag!r}; choices: {_choices(choices)}")
        return _convert(choices[tag], value, path, prov)
    errors = []
    for a in non_none:  # a union of scalars: first member that accepts the value
        try:
            return _convert(a, value, path, prov)
        except ConfigError as e:
            errors.append(_type_name(a))
    _fail(path, prov, f"expected one of {', '.join(errors)}, got {value!r}")


def _choices(values: Any) -> str:
    return ", ".join(repr(v) for v in values)


def _convert_literal(tp: Any, value: Any, path: str, prov: Mapping[str, str]) -> Any:
    choices = get_args(tp)
    for c in choices:
        if (str(c) == value) if isinstance(value, _CliValue) else (type(c) is type(value) and c == value):
            return c
    _fail(path, prov, f"invalid choice {value!r}; choices: {_choices(choices)}")


def _convert_sequence(tp: Any, value: Any, path: str, prov: Mapping[str, str]) -> Any:
    if isinstance(value, _CliValue):
        value = _yaml_value(value, path, prov)
    if not isinstance(value, (list, tuple)):
        _fail(path, prov, f"expected a list ({_type_name(tp)}), got {value!r}")
    args = get_args(tp)
    origin = get_origin(tp)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            _fail(path, prov, f"expected {len(args)} values ({_type_name(tp)}), got {len(value)}: {list(value)!r}")
        return tuple(_convert(a, v, f"{path}[{i}]", prov) for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    out = [_convert(item, v, f"{path}[{i}]", prov) for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


def _convert_mapping(tp: Any, value: Any, path: str, prov: Mapping[str, str]) -> Any:
    if isinstance(value, _CliValue):
        value = _yaml_value(value, path, prov)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        _fail(path, prov, f"expected a mapping ({_type_name(tp)}), got {value!r}")
    kt, vt = get_args(tp) or (Any, Any)
    return {_convert(kt, k, path, prov): _convert(vt, v, _join(path, k), prov) for k, v in value.items()}


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert_scalar(tp: type, value: Any, path: str, prov: Mapping[str, str]) -> Any:
    out = _scalar(tp, value, path, prov)
    if tp is float and not math.isfinite(out):  # nan/inf pass every `x > 0` check and poison training later
        _fail(path, prov, f"expected a finite float, got {out!r}")
    return out


def _scalar(tp: type, value: Any, path: str, prov: Mapping[str, str]) -> Any:
    if isinstance(value, _CliValue):
        text = str(value)
        try:
            if tp is bool:
                if text.lower() in _TRUE | _FALSE:
                    return text.lower() in _TRUE
                raise ValueError
            if tp is int:
                return int(text)
            if tp is float:
                return float(text)
            return text
        except ValueError:
            _fail(path, prov, f"expected {tp.__name__}, got {text!r}")
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # PyYAML reads `2e-4` as a string
        except ValueError:
            pass
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    hint = " (quote it in YAML to make it a string)" if tp is str and value is not None else ""
    _fail(path, prov, f"expected {tp.__name__}, got {value!r} ({type(value).__name__}){hint}")


def _yaml_value(raw: _CliValue, path: str, prov: Mapping[str, str]) -> Any:
    try:
        return yaml.safe_load(str(raw))
    except yaml.YAMLError:
        _fail(path, prov, f"cannot parse {str(raw)!r} as YAML")


# ----------------------------------------------------------------------------------------------- public entry points
def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), schema: type[T] | None = None) -> T:
    """Load ``path`` (following `_base_`), apply ``overrides`` and validate against ``schema``.

    ``schema`` defaults to :class:`bevbridge.config.schema.ExperimentConfig`.
    """
    if schema is None:
        from bevbridge.config.schema import ExperimentConfig

        schema = ExperimentConfig  # type: ignore[assignment]
    tree, prov = load_yaml_tree(path)
    for ov in overrides:
        apply_override(tree, prov, ov)
    return from_dict(schema, tree, "", prov)  # type: ignore[arg-type]


def to_dict(cfg: Any) -> Any:
    """A plain (YAML-safe) mapping of a config dataclass: tuples become lists."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML text; loading it back gives an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=120)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (a kill leaves the old file or the new one, never half)."""
    return atomic_write_text(path, dump_config(cfg))
