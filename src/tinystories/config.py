"""Typed configs: frozen dataclasses built one way, validated once, where they are built.

Every command's settings are a (possibly nested) frozen dataclass deriving from `Config`.
Each field is declared once with `setting(default, help, ge=..., le=...)`: its type, its
default, its help text (the CLI derives its flags from it) and its allowed range. Building a
config, from code or from the command line, always checks every field's type and range, so
a wrong value is a one-line error naming the field, never a crash deep inside a run.

One precedence for every command (`build`):

    dataclass defaults  <-  --config FILE (YAML/JSON)  <-  flags  <-  --set key=value

Unknown keys are errors that name the key and list the valid ones, so a typo never silently
falls back to a default. This module imports nothing heavy (no torch): `--help` stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from tinystories.errors import FieldError, TinyStoriesError

T = TypeVar("T")
C = TypeVar("C", bound="Config")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, finite: bool = True, flag: str | None = None) -> Any:
    """A config field: default (or `factory` for mutable ones), help text and allowed range.

    `ge`/`gt`/`le`/`lt` bound numbers (and the length of lists); `finite=False` lets a float
    be inf. `flag` names the command-line flag when it differs from the field's name.
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "finite": finite, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(typ))
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(typ))
    if typ is type(None):
        return "null"
    return getattr(typ, "__name__", str(typ))


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """`value` as type `typ`, converting what text formats carry (YAML, flags, JSON), or an error."""
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None  # (a flag can only say "none")
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except TinyStoriesError:
                continue
        raise FieldError(f"{where}: expected {_type_name(typ)}, got {value!r}", where)
    if origin is typing.Literal:
        allowed = typing.get_args(typ)
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
            # YAML 1.1 (files, --set) reads on/off/yes/no/true/false as booleans: `compile: on` meant "on"
            words = ("on", "yes", "true") if value else ("off", "no", "false")
            value = next((w for w in words if w in allowed), value)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise FieldError(f"{where}: {value!r} is not one of {list(allowed)}", where)
        return value
    if isinstance(typ, type) and dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise FieldError(f"{where}: expected a mapping of {typ.__name__} fields, got {value!r}", where)
        return from_dict(typ, value, where)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(typ) or (Any,)
        if isinstance(value, str):  # one text is a list of one; "1,2" is a list of numbers
            value = [value] if inner is str else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise FieldError(f"{where}: expected a list, got {value!r}", where)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(typ) or (Any, Any)
        if not isinstance(value, dict):
            raise FieldError(f"{where}: expected a mapping, got {value!r}", where)
        return {_coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise FieldError(f"{where}: expected true or false, got {value!r}", where)
    if typ is int:
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value.lower() for c in ".e") else int(value)
            except ValueError:
                raise FieldError(f"{where}: expected an integer, got {value!r}", where) from None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(f"{where}: expected an integer, got {value!r}", where)
        return value
    if typ is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise FieldError(f"{where}: expected a number, got {value!r}", where) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(f"{where}: expected a number, got {value!r}", where)
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise FieldError(f"{where}: expected a string, got {value!r}", where)
        return value
    return value


def _check_range(value: Any, meta: dict[str, Any], where: str) -> None:
    if isinstance(value, float) and meta.get("finite", True) and not math.isfinite(value):
        raise FieldError(f"{where}: must be a finite number, got {value}", where)
    size = len(value) if isinstance(value, (list, dict)) else None
    number = size if size is not None else value
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        return
    what = "length" if size is not None else "value"
    for key, ok, text in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                          ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        bound = meta.get(key)
        if bound is not None and not ok(number, bound):
            raise FieldError(f"{where}: {what} must be {text} {bound:g}, got {number:g}", where)


class Config:
    """Base of every config dataclass: checks each field's type and range on construction.

    Subclasses are `@dataclass(frozen=True)`; a subclass may add cross-field rules in
    `check()` (raise TinyStoriesError), and may fill derived defaults in `resolve(data)`
    before the dict is turned into fields (e.g. a model preset under explicit fields).
    """

    where: ClassVar[str] = ""  # used in messages; defaults to the class name

    def __post_init__(self) -> None:
        where = type(self).where or type(self).__name__
        for f, typ in _fields_and_types(type(self)):
            value = getattr(self, f.name)
            fixed = _coerce(value, typ, f"{where}.{f.name}")
            _check_range(fixed, dict(f.metadata), f"{where}.{f.name}")
            if fixed is not value:
                object.__setattr__(self, f.name, fixed)  # e.g. an int given for a float field
        self.check()

    def check(self) -> None:
        """Cross-field rules; raise TinyStoriesError with a message saying how to fix it."""

    @classmethod
    def resolve(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fill derived defaults in the raw dict (after all sources are merged)."""
        return data


_FIELDS: dict[type, list[tuple[dataclasses.Field[Any], Any]]] = {}


def _fields_and_types(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """(field, resolved type) of a dataclass, computed once per class (configs are built often)."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = [(f, hints[f.name]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return _FIELDS[cls]


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys with a helpful message."""
    if not isinstance(data, dict):
        raise TinyStoriesError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    if isinstance(cls, type) and issubclass(cls, Config):
        data = cls.resolve(dict(data))
    fields = {f.name: (f, typ) for f, typ in _fields_and_types(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TinyStoriesError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {k: _coerce(_over_default(fields[k][0], v), fields[k][1], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without a value
        raise TinyStoriesError(f"{where}: {exc}") from exc
    except ValueError as exc:  # a dataclass's own __post_init__ check
        raise TinyStoriesError(f"{where}: {exc}") from exc


def _over_default(f: dataclasses.Field[Any], value: Any) -> Any:
    """A partial mapping for a nested section, laid over that section's own default.

    (The judge's section defaults to gpt-4o at temperature 0; `--set judge.timeout_s=30` must
    keep those, not fall back to the class defaults of the client config.)
    """
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default) or isinstance(default, type):
        return value
    return _deep_merge(dataclasses.asdict(default), value)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def read_structured(path: str | Path, what: str, text: str | None = None, fmt: str | None = None) -> Any:
    """The data of a YAML or JSON file (JSON by a ``.json`` suffix, else YAML, unless `fmt`
    says), or one TinyStoriesError worded the same for every file the project reads:
    ``cannot read {what} {path}: {reason}``, with the line and column of a syntax error.

    One helper, so a user who mistypes a config, a prompt list, a vocabulary or a model's
    config.json gets the same shape of answer. `text`: the file's content when the caller has
    already decoded it (with its own policy for bad bytes)."""
    path = Path(path)
    fmt = fmt or ("json" if path.suffix == ".json" else "yaml")

    def fail(reason: str) -> TinyStoriesError:
        return TinyStoriesError(f"cannot read {what} {path}: {reason}")

    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
        return json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("it is a folder, not a file") from None
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise fail(f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise fail(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise fail(f"not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML: {' '.join(str(exc).split())}") from None


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TinyStoriesError(f"config file not found: {path}")
    data = read_structured(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TinyStoriesError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def set_path(data: dict[str, Any], key: str, value: Any, what: str) -> None:
    """data[a][b] = value for key "a.b", making sections as needed."""
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise TinyStoriesError(f"{what}: {p} is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML scalars) to a nested dict."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise TinyStoriesError(f"--set {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_path(data, key, value, f"--set {item!r}")
    return data


def build(cls: type[T], path: str | Path | None = None, flags: dict[str, Any] | None = None,
          overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> T:
    """The one way to build a config: defaults <- `base` <- file <- `flags` ("a.b" keys) <- overrides."""
    data = _deep_merge(copy.deepcopy(base or {}), load_file(path) if path else {})  # file sections merge into base
    for key, value in (flags or {}).items():
        set_path(data, key, value, f"flag for {key}")
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, where=getattr(cls, "where", "") or cls.__name__)
