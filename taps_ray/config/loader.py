"""Strict loading of typed configs from YAML and dotted command-line overrides.

Every config is a dataclass; unknown keys are errors that list the valid ones, and values are
type-checked against the annotations, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from taps_ray.errors import TapsError

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, recursively, rejecting unknown keys and bad types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TapsError(f"config section '{where or cls.__name__}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TapsError(
            f"unknown config key '{_join(where, unknown[0])}'; valid keys here: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise TapsError(f"invalid config '{where or cls.__name__}': {err}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain YAML-safe structure of a config (inverse of `from_dict`)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing or malformed file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise TapsError(f"config file '{path}' does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise TapsError(f"config file '{path}' is not valid YAML{at}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TapsError(
            f"config file '{path}' must hold a mapping of sections, not {type(data).__name__}"
        )
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, returning a copy."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TapsError(f"override '{item}' must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TapsError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return out


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + dotted overrides -> validated config of type `cls`."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def save_config(obj: Any, path: str | Path) -> None:
    """Write a config as YAML atomically (temp name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    tmp.replace(path)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except TapsError as err:
                errors.append(str(err))
        raise TapsError(errors[0])
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(map(str, args))
            raise TapsError(f"config key '{where}' must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TapsError(f"config key '{where}' must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise TapsError(f"config key '{where}' must be a mapping, got {value!r}")
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):  # e.g. name -> DataConfig
            return {k: from_dict(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return _coerce_scalar(tp, value, where)


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "3e-5" as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise TapsError(f"config key '{where}' has an unsupported type {tp}")
    raise TapsError(f"config key '{where}' must be {tp.__name__}, got {value!r}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
