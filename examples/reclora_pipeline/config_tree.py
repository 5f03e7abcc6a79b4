"""The machinery of a config tree, apart from the settings themselves (``config.py``): how a setting is declared
(:func:`setting`, :func:`section`, :class:`Section`), how values are coerced to their annotated types and checked, how
partial trees are layered (:func:`build`, :func:`merge`, :func:`nested`), how a config file is read
(:func:`read_tree_file`) and how the leaves are listed for the command line, the docs and the tests (:class:`Leaf`).

It knows no setting, no preset and nothing of the rest of the pipeline: ``config.py`` declares the tree with it, and
the command line (``flags.py``) walks the tree with it.
"""

from __future__ import annotations

import copy
import difflib
import enum
import importlib.util
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Sequence, Union


# A config tree is a few tables deep; a deeper file is not a config (and would exhaust the recursion of a parser).
MAX_CONFIG_DEPTH = 16


# -- field declarations -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyFlag:
    """A command-line alias for one key of a mapping setting (``tune.adapter``, ``tune.training``)."""

    flag: str
    type: type
    help: str


def setting(default, help: str, *, choices=None, minimum=None, maximum=None, stages: Sequence[str] = (),
            flag: Optional[str] = None, keys: Optional[Mapping[str, KeyFlag]] = None):
    """A leaf of the tree. ``stages``: the stages whose results depend on it ("plan": it decides which models are
    compared; empty: it changes how a result is computed, never the result). ``choices``: the values it takes (each
    value, for a list). ``minimum`` and ``maximum`` bound a number (or each number of a list), both included."""
    metadata = {"help": help, "choices": None if choices is None else tuple(choices), "minimum": minimum,
                "maximum": maximum, "stages": tuple(stages), "flag": flag, "keys": dict(keys or {})}
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help, "section": True})


@dataclass(frozen=True)
class Section:
    """Base of every node of the tree: values are coerced to their annotated types and checked on construction, and
    an error names the setting's path (``retrieval.k_long``)."""

    path: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for item in fields(self):
            value = getattr(self, item.name)
            where = self.setting_path(item.name)
            if item.metadata.get("section"):
                if not isinstance(value, hints[item.name]):
                    value = build(hints[item.name], value or {}, where)
            else:
                value = coerce(value, hints[item.name], where)
                _check_choices_and_bounds(value, item, where)
            object.__setattr__(self, item.name, value)
        self.check()

    def check(self) -> None:
        """Rules that involve several fields; a subclass raises ``ValueError`` naming the path."""

    @classmethod
    def setting_path(cls, name: str) -> str:
        return f"{cls.path}.{name}" if cls.path else name

    def to_dict(self) -> dict:
        """Plain JSON values (tuples become lists), sections nested."""
        return {item.name: canonical(getattr(self, item.name)) for item in fields(self)}

    def replace(self, **changes) -> "Section":
        return build(type(self), {**self.to_dict(), **changes}, self.path)


def canonical(value):
    """Plain JSON values: sections and mappings as dicts, tuples as lists, sets sorted, paths and enums by value (what
    ``config.json`` holds and what the cache keys hash)."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(key): canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(canonical(item) for item in value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    return value


def _check_choices_and_bounds(value, item, where: str) -> None:
    choices = item.metadata.get("choices")
    if choices is not None and value is not None:
        for one in (value if isinstance(value, tuple) else (value,)):
            if one not in choices:
                raise ValueError(f"{where}: {one!r} is not one of {', '.join(map(str, choices))}")
    minimum, maximum = item.metadata.get("minimum"), item.metadata.get("maximum")
    if value is not None:
        for one in (value if isinstance(value, tuple) else (value,)):
            if minimum is not None and one < minimum:
                raise ValueError(f"{where} must be at least {minimum}, got {one!r}")
            if maximum is not None and one > maximum:
                raise ValueError(f"{where} must be at most {maximum}, got {one!r}")


# -- values -----------------------------------------------------------------------------------------------------------
TRUE_WORDS, FALSE_WORDS, NONE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null", "")


def parse_literal(text: str):
    """A command-line value of a mapping key: JSON when it parses (numbers, true/false/null, lists, quoted strings),
    else the text itself, so ``mixing=weights`` and ``r=4`` both read as meant."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def coerce(value, hint, where: str):
    """``value`` as the annotated type ``hint`` (strings from the command line are parsed); ``ValueError`` names
    ``where`` and what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Union:
        if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
            if type(None) in args:
                return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return coerce(value, option, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # NaN passes every comparison with a bound; inf runs nothing to an end
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            value = parse_literal(text) if text.startswith("[") else [part.strip() for part in text.split(",")
                                                                       if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(coerce(item, arg, f"{where}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if isinstance(value, str):
            value = parse_literal(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping of keyword arguments, got {value!r}")
        return {str(key): canonical(item) for key, item in value.items()}
    return value


def build(cls, data: Mapping, where: str = ""):
    """A section from a (partial) mapping; an unknown key raises ``ValueError`` with the closest known names."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'config'}: expected a table of settings, got {data!r}")
    names = [item.name for item in fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(names)}"
        raise ValueError(f"unknown setting {cls.setting_path(key) if cls.path else key!r}{hint}")
    return cls(**dict(data))


def merge(base: Mapping, over: Mapping) -> dict:
    """``over`` laid onto ``base``: tables (sections, ``tune.adapter``, ``tune.training``) merge key by key, other
    values are replaced."""
    result = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def nested(path: str, value) -> dict:
    """``("a.b.c", v)`` -> ``{"a": {"b": {"c": v}}}``."""
    keys = path.split(".")
    tree = value
    for key in reversed(keys):
        tree = {key: tree}
    return tree



# -- config files -----------------------------------------------------------------------------------------------------
def read_tree_file(path: Union[str, Path]) -> dict:
    """A partial tree from a ``.toml``, ``.json``, ``.yaml`` or ``.yml`` file; every way a file can be malformed
    (syntax, YAML tags, a key given twice, nesting deeper than a config) is a ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise ValueError(f"{path}: a config file is .toml, .json, .yaml or .yml, not {suffix or 'without suffix'}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    parse = {".json": _parse_json, ".toml": _parse_toml}.get(suffix, _parse_yaml)
    if parse is _parse_yaml and importlib.util.find_spec("yaml") is None:
        raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the config as TOML or "
                         "JSON")
    if parse is _parse_toml:
        _toml()  # a missing parser is no syntax error of the file
    try:
        tree = parse(text)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a config (at most {MAX_CONFIG_DEPTH} levels)") from None
    except ValueError as error:
        raise ValueError(f"{path}: not valid {suffix[1:].upper()} ({' '.join(str(error).split())})") from None
    if tree is None and suffix in (".yaml", ".yml"):
        tree = {}
    if not isinstance(tree, Mapping):
        raise ValueError(f"{path}: the top level must be a table of settings, got {type(tree).__name__}")
    if _depth(tree) > MAX_CONFIG_DEPTH:
        raise ValueError(f"{path}: nested too deeply to be a config (at most {MAX_CONFIG_DEPTH} levels)")
    return dict(tree)


def _depth(tree) -> int:
    """How many tables and lists deep ``tree`` is (iteratively, so that any depth is measured)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_CONFIG_DEPTH:
            break
        children = node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (Mapping, list)))
    return deepest


def _parse_json(text: str):
    def table(pairs):
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"the key {repeated[0]!r} is given twice in one table")
        return dict(pairs)

    return json.loads(text, object_pairs_hook=table)


def _parse_yaml(text: str):
    """``yaml.safe_load`` (no tags that build objects) with YAML 1.2 numbers -- ``3e-3`` is a number, as in TOML and
    JSON, not the string YAML 1.1 makes of it -- and a key given twice in one table refused. PyYAML is optional, so
    it is imported when a YAML file is read."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: the base class reports it
                    break
                if repeated:
                    raise yaml.constructor.ConstructorError("while reading a table", node.start_mark,
                                                            f"the key {key!r} is given twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    ConfigLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 -- a SafeLoader subclass: no object tags
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from None


def _parse_toml(text: str):
    return _toml().loads(text)  # TOML itself refuses a key given twice


def _toml():
    """The TOML parser: the standard library's from Python 3.11, the optional tomli on 3.10."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("reading TOML on Python 3.10 needs tomli (pip install tomli); or write the config as "
                             "JSON") from None
    return tomllib



# -- the leaves, for the command line, the docs and the tests ---------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    """One setting: its dotted path, its field and the section class that declares it."""

    path: str
    field: Any
    owner: type
    hint: Any

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def stages(self) -> tuple:
        return self.field.metadata.get("stages", ())

    @property
    def flag(self) -> Optional[str]:
        return self.field.metadata.get("flag")


def leaves_of(cls, prefix: str = "") -> list[Leaf]:
    """Every leaf setting of the section class ``cls``, in declaration order (mapping settings are one leaf each)."""
    hints = typing.get_type_hints(cls)
    out = []
    for item in fields(cls):
        path = f"{prefix}{item.name}"
        if item.metadata.get("section"):
            out.extend(leaves_of(hints[item.name], f"{path}."))
        else:
            out.append(Leaf(path, item, cls, hints[item.name]))
    return out


def section_of(cls, path: str):
    """The section class at a dotted path (``"crm.model"`` -> CrmModelConfig)."""
    for key in filter(None, path.split(".")):
        cls = typing.get_type_hints(cls)[key]
    return cls


def describe_default(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "(empty)"
    if isinstance(value, Mapping):
        return json.dumps(canonical(value))
    return str(value)
