"""Command-line flags generated from the config tree: one flag per setting, named by its path
(``--retrieval.k_long``), the aliases its field declares (``--k-long``, ``--temperature`` for a key of
``tune.adapter``), ``--set PATH=VALUE`` for anything (keys of ``tune.adapter`` and ``tune.training`` included) and
``--config FILE``. Help texts and defaults come from the fields; values are checked when the tree is built, so an
error names the setting.
"""

from __future__ import annotations

import argparse
import difflib
import typing
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from .config import RunConfig, leaves, preset_tree, read_config_file
from .config_tree import Leaf, Section, build, describe_default, merge, nested, parse_literal, section_of


DEST_PREFIX = "config:"


@dataclass(frozen=True)
class Target:
    """Where a flag's value goes: a leaf (``key`` None) or one key of a mapping leaf."""

    path: str
    key: Optional[str] = None
    parse: Any = None  # a mapping key's value type

    def change(self, value) -> tuple[str, Any]:
        if self.key is None:
            return self.path, value
        if isinstance(value, str) and self.parse in (int, float):
            value = self.parse(value)
        return f"{self.path}.{self.key}", value


def _kind(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        hint = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "bool"
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return f"fixed:{len(args)}"
    if origin is tuple:
        return "list"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "mapping"
    return "value"


def _choices_text(leaf: Leaf) -> str:
    choices = leaf.field.metadata.get("choices")
    return f"; one of {', '.join(map(str, choices))}" if choices else ""


def _metavar(leaf: Leaf) -> str:
    kind = _kind(leaf.hint)
    return "A,B,..." if kind == "list" else leaf.path.rsplit(".", 1)[-1].upper()


def add_config_flags(parser: argparse.ArgumentParser, defaults: RunConfig, *, sections: Optional[Sequence[str]] = None,
                     bare: bool = False, rename: Optional[Mapping[str, str]] = None, aliases: bool = True) -> dict:
    """Add a flag for every leaf of the tree (or of ``sections``), with its help and its value in ``defaults``, and the
    aliases the fields declare.

    ``bare``: name flags by the field alone (``--k-long``) instead of the path; ``rename``: path -> flag. Returns
    ``{dest: [Target, ...]}`` for :func:`changes_from_args`."""
    rename = dict(rename or {})
    chosen = [leaf for leaf in leaves()
              if sections is None or any(leaf.path == s or leaf.path.startswith(f"{s}.") for s in sections)]
    alias_targets: dict = {}  # alias flag -> [(Target, help, type, default, group)]
    if aliases:
        for leaf in chosen:
            group = _section_path(leaf)
            if leaf.flag:
                alias_targets.setdefault(leaf.flag, []).append(
                    (Target(leaf.path), leaf.help, None, defaults.get(leaf.path), group))
            for key, key_flag in leaf.field.metadata.get("keys", {}).items():
                alias_targets.setdefault(key_flag.flag, []).append(
                    (Target(leaf.path, key, key_flag.type), key_flag.help, key_flag.type,
                     (defaults.get(leaf.path) or {}).get(key), group))
    # An alias of exactly one setting is another name of that setting's flag; the others are flags of their own.
    own_alias = {entries[0][0].path: flag for flag, entries in alias_targets.items()
                 if len(entries) == 1 and entries[0][0].key is None}
    groups: dict = {}
    targets: dict = {}
    for leaf in chosen:
        kind = _kind(leaf.hint)
        if kind == "mapping":
            continue  # set by --set PATH.KEY=VALUE and by the key aliases
        name = leaf.path.rsplit(".", 1)[-1]
        flags = [rename.get(leaf.path) or (f"--{name.replace('_', '-')}" if bare else f"--{leaf.path}")]
        if leaf.path in own_alias and own_alias[leaf.path] not in flags:
            flags.append(own_alias[leaf.path])
        group = _group_of(groups, parser, _section_path(leaf), chosen, defaults)
        dest = f"{DEST_PREFIX}{leaf.path}"
        text = f"{leaf.help}{_choices_text(leaf)} (default: {describe_default(defaults.get(leaf.path))})"
        if kind == "bool":
            group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        elif kind.startswith("fixed:"):
            group.add_argument(*flags, dest=dest, nargs=int(kind.split(":")[1]), default=argparse.SUPPRESS,
                               metavar=name.upper(), help=text)
        else:
            group.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, metavar=_metavar(leaf), help=text)
        targets[dest] = [Target(leaf.path)]
    for flag, entries in alias_targets.items():
        if len(entries) == 1 and entries[0][0].key is None:
            continue
        _, _, value_type, default, section = entries[0]
        help_text = entries[-1][1]
        group = _group_of(groups, parser, section, chosen, defaults)
        dest = f"{DEST_PREFIX}{flag}"
        paths = ", ".join(target.change(None)[0] for target, *_ in entries)
        shown = describe_default(default) if default is not None or value_type is None else "unset: the library's own"
        text = f"{help_text} (sets {paths}; default: {shown})"
        if value_type is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        else:
            group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, metavar="N" if value_type is int else "X",
                               type=value_type or str, help=text)
        targets[dest] = [target for target, *_ in entries]
    return targets


def _section_path(leaf: Leaf) -> str:
    return leaf.path.rsplit(".", 1)[0] if "." in leaf.path else ""


def _group_of(groups: dict, parser, section: str, chosen: Sequence[Leaf], defaults: RunConfig):
    """The argument group of a section; its description lists the section's mapping settings (set with --set)."""
    if section not in groups:
        cls = section_of(RunConfig, section)
        doc = " ".join((cls.__doc__ or "").split()) if section else None
        for leaf in chosen:
            if _section_path(leaf) == section and _kind(leaf.hint) == "mapping":
                doc += (f"\n  {leaf.path}: {leaf.help}. Set a key with --set {leaf.path}.KEY=VALUE "
                        f"(default: {describe_default(defaults.get(leaf.path))}).")
        groups[section] = parser.add_argument_group(section or "run", doc)
    return groups[section]


def add_file_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config files and overrides")
    group.add_argument("--config", dest="config_files", action="append", default=[], metavar="FILE",
                       help="a config tree (.toml, .json, .yaml): any part of the settings; several are layered in "
                            "order, over the preset")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                       help="set one setting by its path, after every file and flag (e.g. "
                            "--set tune.adapter.mixing=weights --set tune.training.max_grad_norm=0.5); repeatable")


def changes_from_args(args: argparse.Namespace, targets: dict) -> list:
    """(path, value) changes of the flags given on the command line, then of each ``--set``."""
    changes = []
    for dest, destination in targets.items():
        if hasattr(args, dest):
            for target in destination:
                changes.append(target.change(getattr(args, dest)))
    for text in getattr(args, "overrides", []) or []:
        changes.append(parse_set(text))
    return changes


def parse_set(text: str) -> tuple[str, Any]:
    """``PATH=VALUE`` -> (path, value): a setting's value stays text (the tree parses it by its type); a key of a
    mapping setting is parsed as JSON when it can be (numbers, true/false/null, lists)."""
    path, sep, value = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ValueError(f"--set {text!r}: expected PATH=VALUE, e.g. retrieval.k_long=30")
    known = {leaf.path: leaf for leaf in leaves()}
    if path in known:
        return path, value
    for leaf_path, leaf in known.items():
        if path.startswith(f"{leaf_path}.") and _kind(leaf.hint) == "mapping":
            return path, parse_literal(value)
    sections = {leaf_path.rsplit(".", 1)[0] for leaf_path in known if "." in leaf_path}
    if path in sections:
        raise ValueError(f"--set {text!r}: {path} is a section; set one of its settings (e.g. {path}."
                         f"{next(p for p in known if p.startswith(path + '.')).rsplit('.', 1)[-1]}=...)")
    close = difflib.get_close_matches(path, list(known), n=3)
    raise ValueError(f"--set {text!r}: unknown setting {path!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                   else ""))


class ResolvedArgs(NamedTuple):
    config: RunConfig
    out_given: bool  # by a file or a flag
    preset: Optional[str]  # the preset the tree starts from: --preset, else a file's 'preset', else the command's


def resolve_from_args(args: argparse.Namespace, targets: dict, preset: Optional[str]) -> ResolvedArgs:
    """The config of a command line: defaults < preset < ``--config`` files < flags < ``--set``, whether ``out`` was
    given, and which preset was chosen (a file's ``preset`` counts as ``--preset`` does)."""
    tree = RunConfig().to_dict()
    files = [read_config_file(path) for path in args.config_files]
    chosen = preset
    for file_tree in files:
        chosen = file_tree.pop("preset", None) or chosen
    if getattr(args, "preset", None):
        chosen = args.preset
    if chosen and chosen != "none":
        tree = merge(tree, preset_tree(chosen))
    for file_tree in files:
        tree = merge(tree, file_tree)
    changes = changes_from_args(args, targets)
    for path, value in changes:
        tree = merge(tree, nested(path, value))
    out_given = any("out" in file_tree for file_tree in files) or any(path == "out" for path, _ in changes)
    return ResolvedArgs(build(RunConfig, tree), out_given, chosen)


def section_from_args(cls: type[Section], args: argparse.Namespace, targets: dict) -> Section:
    """One section built from flags added with ``sections=[cls.path]``."""
    values: dict = {}
    prefix = f"{cls.path}."
    for path, value in changes_from_args(args, targets):
        if path.startswith(prefix):
            values = merge(values, nested(path[len(prefix):], value))
    return build(cls, values, cls.path)
