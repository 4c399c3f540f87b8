"""Typed configs: dataclasses read from YAML/JSON files, with `key=value` overrides.

Every config is a (possibly nested) dataclass. Unknown keys are errors that name the
key and list the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tinystories.errors import TinyStoriesError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ) and isinstance(value, dict):
        return from_dict(typ, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if origin is typing.Literal:
        allowed = typing.get_args(typ)
        if value not in allowed:
            raise TinyStoriesError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(typ) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return [_coerce(v, inner, where) for v in value]
    if typ is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise TinyStoriesError(f"{where}: expected true/false, got {value!r}")
    if typ in (int, float, str) and value is not None:
        try:
            if typ is int and isinstance(value, str):
                return int(float(value)) if "e" in value.lower() else int(value)
            return typ(value)
        except ValueError as exc:
            raise TinyStoriesError(f"{where}: expected {typ.__name__}, got {value!r}") from exc
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys with a helpful message."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise TinyStoriesError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a dataclass's own validation (__post_init__)
        raise TinyStoriesError(f"{where}: {exc}") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise TinyStoriesError(f"config file not found: {path}")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise TinyStoriesError(f"{path}: not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TinyStoriesError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML scalars) to a nested dict."""
    data = json.loads(json.dumps(data))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise TinyStoriesError(f"override {item!r} must look like key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TinyStoriesError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    data = load_file(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, where=str(path) if path else "config")
