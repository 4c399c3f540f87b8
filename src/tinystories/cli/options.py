"""Command-line flags derived from config dataclass fields, so each default is written once.

A command names the fields it exposes (``"sampling.temperature"``); each becomes a flag whose
type, help text and default come from the field's `setting(...)`. What the user gives lands
in one place, and `build_from_args` builds the config with the one precedence of
`tinystories.config.build`: defaults <- --config FILE <- flags <- --set key=value.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

from tinystories.config import build

T = TypeVar("T")
DEST = "cfg:"  # argparse dest prefix of flags that set config fields


def _field(cls: type, path: str) -> tuple[dataclasses.Field[Any], Any]:
    """The dataclass field at dotted `path` of `cls`, and its type."""
    *parents, name = path.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    hints = typing.get_type_hints(cls)
    return next(f for f in dataclasses.fields(cls) if f.name == name), hints[name]


def _default_at(cls: type, path: str) -> Any:
    """The default value at dotted `path` of config `cls` (a nested section's own default counts)."""
    first, *rest = path.split(".")
    f = next(f for f in dataclasses.fields(cls) if f.name == first)
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    for part in rest:
        value = getattr(value, part)
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    if value is None or value == "":
        return "none"
    return str(value)


def add_field(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, path: str, *,
              prefix: str = "", positional: bool = False, repeat: bool = False, short: str | None = None,
              aliases: tuple[str, ...] = (), nargs: str | None = None, default: Any = dataclasses.MISSING,
              metavar: str | None = None) -> None:
    """Add the flag of field `path` of `cls` (e.g. ``sampling.top_p`` -> ``--top-p``)."""
    f, typ = _field(cls, path)
    meta = f.metadata
    shown = _default_at(cls, path) if default is dataclasses.MISSING else default
    text = meta.get("help", "")
    help_text = f"{text} (default: {_show(shown)})" if text else f"(default: {_show(shown)})"
    help_text = help_text.replace("%", "%%")
    dest = DEST + path
    origin = typing.get_origin(typ)
    choices = list(typing.get_args(typ)) if origin is typing.Literal else None
    if positional:
        kwargs: dict[str, Any] = {"help": text.replace("%", "%%"), "metavar": metavar or f.name.upper()}
        if origin is list:
            kwargs["nargs"] = nargs or "+"
        parser.add_argument(dest, **kwargs)
        return
    name = "--" + prefix + (meta.get("flag") or f.name.replace("_", "-"))
    names = [*([short] if short else []), name, *aliases]
    if typ is bool:  # a switch that turns the default around: --x when off by default, --no-x when on
        names = [n if not shown else "--" + prefix + "no-" + n[2 + len(prefix):] for n in names]
        parser.add_argument(*names, dest=dest, action="store_const", const=not shown, default=None,
                            help=(f"turn off: {text}" if shown else text).replace("%", "%%") or None)
    elif origin is list:
        if repeat:
            parser.add_argument(*names, dest=dest, action="append", default=None, help=help_text,
                                metavar=metavar or "TEXT")
        else:
            parser.add_argument(*names, dest=dest, nargs=nargs or "*", default=None, help=help_text,
                                metavar=metavar or "ITEM")
    else:
        # Values stay text here: the config converts and range-checks them, naming the field in errors.
        parser.add_argument(*names, dest=dest, default=None, choices=choices, help=help_text,
                            metavar=None if choices else (metavar or f.name.upper()))


def add_fields(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, paths: list[str],
               prefix: str = "") -> None:
    for path in paths:
        add_field(parser, cls, path, prefix=prefix)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--config FILE and --set KEY=VALUE, which every command has."""
    g = parser.add_argument_group("config")
    g.add_argument("--config", metavar="FILE", help="YAML/JSON file of settings (flags and --set override it)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set sampling.top_k=40 (repeatable; beats flags)")


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user gave on the command line, by dotted path."""
    return {k[len(DEST):]: v for k, v in vars(args).items() if k.startswith(DEST) and v is not None}


def build_from_args(cls: type[T], args: argparse.Namespace, base: dict[str, Any] | None = None) -> T:
    """The command's config: defaults <- `base` <- --config <- flags <- --set."""
    return build(cls, getattr(args, "config", None), flag_values(args), getattr(args, "overrides", []), base)
