"""Configs from TOML files and flags: one definition of every setting, its default and its help.

Each component has one frozen config dataclass with a comment on every field (DESIGN.md). This
module builds an argparse parser from such a dataclass (nested dataclasses included), reading each
flag's type from the annotation and its help from the field's comment, with no default repeated:
flags default to "not given". ``build`` then starts from the dataclass's defaults, applies the TOML
table, then the flags that were given. A flag is the field's name in kebab case (``max_batch`` is
``--max-batch``); a nested field whose name is taken elsewhere in the tree carries its path
(``api.port`` is ``--api-port``). Old flag names live on as aliases.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (Jetson images): the backport
    import tomli as tomllib  # type: ignore[no-redef]

T = TypeVar("T")
DEST = "cfg."  # argparse dests of config fields: cfg.<dotted path>
_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(?P<tail>.*))?$")
_COMMENT = re.compile(r"^\s+#\s?(?P<text>.*)$")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One settable field: its dotted path, type and help."""

    path: str
    kind: Any
    help: str


def field_help(cls: type) -> dict[str, str]:
    """Each field's comment: the one after it on its line, else the lines just above it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        comment = _COMMENT.match(line)
        if comment:
            above.append(comment.group("text").strip())
            continue
        found = _FIELD.match(line)
        if found and not line.strip().startswith(("def ", "return", "@")):
            tail = found.group("tail")
            out.setdefault(found.group(1), (tail or " ".join(above)).strip())
        above = []
    return out


def _is_config(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def leaves(cls: type, prefix: str = "") -> list[Leaf]:
    """Every settable field of ``cls``, nested dataclasses flattened into dotted paths."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    out: list[Leaf] = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        kind = hints[f.name]
        path = f"{prefix}{f.name}"
        if _is_config(kind):
            out.extend(leaves(kind, f"{path}."))
        else:
            out.append(Leaf(path, kind, helps.get(f.name, "")))
    return out


def flag_names(all_leaves: list[Leaf]) -> dict[str, str]:
    """Each leaf's flag: its name, or its dashed path where the name is not unique."""
    names: dict[str, int] = {}
    for leaf in all_leaves:
        names[leaf.path.rsplit(".", 1)[-1]] = names.get(leaf.path.rsplit(".", 1)[-1], 0) + 1
    out = {}
    for leaf in all_leaves:
        name = leaf.path.rsplit(".", 1)[-1]
        chosen = name if names[name] == 1 or "." not in leaf.path else leaf.path
        out[leaf.path] = "--" + chosen.replace(".", "-").replace("_", "-")
    return out


def _pair(text: str) -> tuple[str, str]:
    left, sep, right = text.partition("=")
    if not sep or not left or not right:
        raise argparse.ArgumentTypeError(f"expected A=B, got {text!r}")
    return left, right


def _argument(kind: Any) -> dict[str, Any] | None:
    """argparse keywords for a field type; None for a type flags cannot set."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _argument(inner[0]) if len(inner) == 1 else None
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind in (int, float, str):
        return {"type": kind}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        metavar = "|".join(str(v.value) for v in kind)
        return {"type": kind, "choices": list(kind), "metavar": metavar}
    if origin is tuple and args and args[-1] is Ellipsis:
        item = args[0]
        if typing.get_origin(item) is tuple:
            return {"action": "append", "type": _pair, "metavar": "A=B"}
        if item in (int, float, str):
            return {"action": "append", "type": item}
    return None


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    aliases: Mapping[str, tuple[str, ...]] = {},
    skip: tuple[str, ...] = (),
) -> list[Leaf]:
    """Add a flag for every settable field of ``cls`` (``aliases``: extra flags by path)."""
    all_leaves = [leaf for leaf in leaves(cls) if leaf.path not in skip]
    flags = flag_names(all_leaves)
    for leaf in all_leaves:
        keywords = _argument(leaf.kind)
        if keywords is None:
            continue  # set it in the TOML file
        names = [flags[leaf.path], *aliases.get(leaf.path, ())]
        if "action" not in keywords or keywords["action"] == "append":
            keywords.setdefault("metavar", leaf.path.rsplit(".", 1)[-1].upper())
        parser.add_argument(
            *names, dest=DEST + leaf.path, default=argparse.SUPPRESS, help=leaf.help, **keywords
        )
    return all_leaves


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; FileNotFoundError or ValueError naming the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{p}: not valid TOML: {exc}") from None


def _coerce(kind: Any, value: Any, where: str) -> Any:
    """A TOML value as the field's type (lists become tuples, strings enums)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(str(v.value) for v in kind)
            raise ValueError(f"{where}: {value!r} is not one of {allowed}") from None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and not (
        isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    ):
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def build(cls: type[T], table: Mapping[str, Any] | None = None, args: Any = None) -> T:
    """``cls`` from its defaults, then ``table`` (TOML), then the flags given in ``args``."""
    flags = {
        k.removeprefix(DEST): v
        for k, v in vars(args or argparse.Namespace()).items()
        if k.startswith(DEST)
    }
    return _build(cls, dict(table or {}), flags, "")


def _build(cls: type[T], table: dict[str, Any], flags: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ValueError(f"unknown setting {prefix}{unknown[0]} (known: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name in fields:
        path, kind = f"{prefix}{name}", hints[name]
        if _is_config(kind):
            sub = table.get(name, {})
            if not isinstance(sub, dict):
                raise ValueError(f"{path}: expected a table")
            nested = {k: v for k, v in flags.items() if k.startswith(f"{path}.")}
            if sub or nested:
                values[name] = _build(kind, sub, flags, f"{path}.")
            continue
        if name in table:
            values[name] = _coerce(kind, table[name], path)
        if path in flags:
            value = flags[path]
            values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def config_parser(
    prog: str,
    cls: type,
    description: str = "",
    aliases: Mapping[str, tuple[str, ...]] = {},
    skip: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """A parser with ``--config FILE`` and a flag for every field of ``cls``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_file_arg(parser)
    add_config_args(parser, cls, aliases, skip)
    return parser


def add_config_file_arg(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: settings from TOML, which flags override."""
    parser.add_argument("--config", default="", help="TOML file of settings; flags override it")


def from_args(cls: type[T], args: Any, section: str = "") -> T:
    """``cls`` from ``args.config`` (its ``section`` table, or the whole file) and the flags."""
    table: dict[str, Any] = {}
    if getattr(args, "config", ""):
        data = load_toml(args.config)
        table = data.get(section, {}) if section else data
        if not isinstance(table, dict):
            raise ValueError(f"{args.config}: [{section}] must be a table")
    return build(cls, table, args)
