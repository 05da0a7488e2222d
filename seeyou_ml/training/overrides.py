"""Typed dataclass configs from plain data (as read from YAML), and `--key value` overrides resolved against them.

The engine knows no config by name; everything it does follows from the dataclasses it is given:

- A field typed as a dataclass is a section; its keys are that dataclass's fields.
- A field whose metadata has `item` (a dataclass) holds a list or a mapping of that dataclass (the stages of a run,
  its loss terms by name): list entries are addressed by index, mapping entries by any key (a new key adds an entry).
- A field typed as a plain `dict` is free-form: any key below it may be set.
- Every value is coerced to its field's declared type, so `3e-5` is a float even though YAML 1.1 reads it as a string.
- A field's metadata may bound its values, checked when the config is read and reported with the field's dotted
  path: `ge`, `gt`, `le`, `lt` (numbers), `choices` (allowed values) and `min_items` (lists). For a list, the bounds
  and choices apply to every element. None (an unset optional field) is never checked.
- An error raised by a section's own `__post_init__` is reported with the section's dotted path.

Overrides name a field by its dotted path from the root (`--optim.lr 1e-4`, `--stages.0.steps 200`) or, when the name
is unique, starting from the field or section of that name (`--lr 1e-4`, `--corpus_kwargs.num_images 40`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

BOOLEAN_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True,
                 "0": False}


class RecipeLoader(yaml.SafeLoader):
    """YAML loader whose booleans are `true`/`false` only (YAML 1.2): `no`, `off`, `yes`, `on` stay strings."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    RecipeLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"))
    )


def load_yaml(text: Any) -> Any:
    """Parses config YAML (a file, its text or one override value) with [`RecipeLoader`]."""
    return yaml.load(text, Loader=RecipeLoader)


def merge_config_data(base: dict, changes: dict) -> dict:
    """`changes` laid over `base`: mappings merge key by key; anything else (a value, a list, null) replaces."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config_data(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_layered_yaml(path: Union[str, Path], base_key: str = "base") -> dict:
    """Reads a config file that may build on another: a top-level `base: other.yaml` (relative to the file's folder)
    reads that file first, the same way, and lays this file's keys over it with [`merge_config_data`].

    Returns:
        The merged mapping, without `base_key` (empty for an empty file).

    Raises:
        ValueError: if a file holds no mapping, names a base that is missing, or the bases form a cycle.
    """
    chain: list[Path] = []
    path = Path(path)
    layers = []
    while True:
        resolved = path.resolve()
        if resolved in chain:
            cycle = " -> ".join(p.name for p in [*chain, resolved])
            raise ValueError(f"{path} is its own base ({cycle}); point `{base_key}:` at a file that does not lead back.")
        chain.append(resolved)
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f)
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{path} holds a {type(data).__name__}; a config file is a YAML mapping of sections.")
        data = dict(data or {})
        base = data.pop(base_key, None)
        layers.append(data)
        if base is None:
            break
        following = path.parent / str(base)
        if not following.is_file():
            raise ValueError(f"{path} names `{base_key}: {base}`, but {following} is not a file; give a path relative "
                             f"to {path.parent}.")
        path = following
    merged: dict = {}
    for layer in reversed(layers):
        merged = merge_config_data(merged, layer)
    return merged


def build_config(cls: type, data: Optional[dict], where: str = "") -> Any:
    """Instantiates dataclass `cls` from nested plain data, coercing every value to its field's type.

    Args:
        cls: the dataclass to build.
        data: its fields as plain data (nested mappings for sections); None builds the defaults.
        where: the dotted path of `data` in the whole config, used in error messages.

    Raises:
        ValueError: naming the offending key on unknown fields or values of the wrong type.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"Recipe section {where or 'root'} must be a mapping, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        where_ = f" in section {where!r}" if where else ""
        close = {u: difflib.get_close_matches(str(u), list(fields), n=1) for u in unknown}
        hints = "; ".join(f"{u!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for u, c in close.items())
        raise ValueError(f"Unknown recipe key(s){where_}: {hints}. Known keys: {', '.join(fields)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        dotted = f"{where}.{name}" if where else name
        item = fields[name].metadata.get("item")
        if item is not None and isinstance(value, list):
            kwargs[name] = [build_config(item, v, f"{dotted}.{i}") for i, v in enumerate(value)]
        elif item is not None and isinstance(value, dict):
            kwargs[name] = {k: build_config(item, v, f"{dotted}.{k}") for k, v in value.items() if v is not None}
        else:
            kwargs[name] = coerce_value(value, hints[name], dotted)
        check_bounds(kwargs[name], fields[name].metadata, dotted)
    try:
        return cls(**kwargs)
    except ValueError as error:
        if not where:
            raise
        raise ValueError(f"Recipe section {where}: {error}") from None


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def check_bounds(value: Any, metadata: Any, where: str) -> None:
    """Checks `value` against the bounds in a field's `metadata` (see the module docstring).

    Raises:
        ValueError: naming the field `where`, its value and the bound it breaks.
    """
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    if "min_items" in metadata and isinstance(value, list) and len(value) < metadata["min_items"]:
        raise ValueError(f"Recipe field {where} has {len(value)} entries; give at least {metadata['min_items']}.")
    choices = metadata.get("choices")
    for element in values:
        if choices is not None and element not in choices:
            raise ValueError(f"Recipe field {where}={value!r} is not allowed; use "
                             f"{'any' if isinstance(value, list) else 'one'} of {', '.join(map(str, choices))}.")
        for key, (symbol, holds) in _BOUNDS.items():
            if key in metadata and isinstance(element, (int, float)) and not holds(element, metadata[key]):
                which = f" (entry {values.index(element)})" if isinstance(value, list) else ""
                raise ValueError(f"Recipe field {where}={value!r}{which} must be {symbol} {metadata[key]}; set it "
                                 f"to a value {symbol} {metadata[key]}.")


def coerce_value(value: Any, hint: Any, where: str) -> Any:
    """Converts `value` to the type `hint` (a dataclass, a scalar type, Optional[...], list or dict).

    Raises:
        ValueError: naming the field `where` and the type it needs.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        hint = next(a for a in args if a is not type(None))
        return coerce_value(value, hint, where)
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in BOOLEAN_WORDS:
                return BOOLEAN_WORDS[value.lower()]
            if isinstance(value, bool):
                return value
            raise ValueError
        if hint in (int, float):
            if isinstance(value, bool):
                raise ValueError
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(float(value)) if hint is int else float(value)
        if hint is str:
            if isinstance(value, bool):
                raise ValueError(f"Recipe field {where}={value!r} is a boolean where a string is expected; write the "
                                 f"word in quotes (e.g. {where}: 'no').")
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError
            return str(value)
        if hint is list or origin is list:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return list(value)
        if hint is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError) as error:
        if str(error).startswith("Recipe field"):
            raise
        name = getattr(hint, "__name__", str(hint))
        raise ValueError(f"Recipe field {where}={value!r} is not a valid {name}.") from None
    return value


def apply_overrides(cls: type, data: dict, args: list[str]) -> Any:
    """Applies `--key value` pairs to `data` (the plain data of a `cls`) and builds the result.

    Args:
        cls: the root dataclass.
        data: the current config as nested plain data (e.g. `dataclasses.asdict` of a `cls`); modified in place.
        args: `["--a.b", "1", "--c=2", ...]`; values are parsed as YAML, then coerced to their field's type.

    Raises:
        ValueError: on malformed pairs, keys that name no field (with the closest names), ambiguous bare keys.
    """
    for key, value in parse_pairs(args):
        path = resolve_key(cls, key, data)
        _set_path(data, path, load_yaml(value) if value is not None else None)
    return build_config(cls, data)


def parse_pairs(args: list[str]) -> list[tuple[str, Optional[str]]]:
    """Splits `["--a", "1", "--b=2"]` into `[("a", "1"), ("b", "2")]` (dashes in keys become underscores)."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"Unexpected argument {arg!r}: overrides are `--key value` or `--key=value` pairs.")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            raise ValueError(f"Override --{key} has no value; write `--{key} VALUE`.")
        pairs.append((key.replace("-", "_"), value))
    return pairs


def resolve_key(cls: type, key: str, data: dict) -> tuple:
    """The path of `key` in a `cls` config: its dotted form from the root, else with its first part the unique field
    or section of that name (`--lr`, `--corpus_kwargs.num_images`).

    Raises:
        ValueError: when the key names no field (with the closest names) or several (with their dotted forms).
    """
    parts = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    if _is_path(cls, data, parts):
        return parts
    nodes = _node_paths(cls, data)
    matches = [p + parts[1:] for p in nodes if p[-1] == parts[0] and _is_path(cls, data, p + parts[1:])]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = ", ".join("--" + ".".join(map(str, m)) for m in matches)
        raise ValueError(f"Override --{key} is ambiguous; write one of: {options}.")
    names = sorted({".".join(map(str, p)) for p in nodes})
    close = difflib.get_close_matches(key, names, n=3) or difflib.get_close_matches(
        key, [n.split(".")[-1] for n in names], n=3
    )
    hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
    raise ValueError(f"Override --{key} names no recipe field.{hint}")


# ---- walking a dataclass schema alongside its data ----------------------------------------------------------------


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _is_free_mapping(hint: Any) -> bool:
    hint = _strip_optional(hint)
    return hint is dict or typing.get_origin(hint) is dict


def _children(hint: Any, item: Optional[type], node: Any) -> list[tuple[Any, Any, Optional[type], Any]]:
    """The addressable children of a schema node as `(key, hint, item, data)`: the fields of a dataclass, or the
    present entries of a list or mapping of `item`s. Free-form mappings and scalars have none."""
    if item is not None:
        entries = enumerate(node) if isinstance(node, list) else (node.items() if isinstance(node, dict) else ())
        return [(key, item, None, value) for key, value in entries]
    hint = _strip_optional(hint)
    if not dataclasses.is_dataclass(hint):
        return []
    hints = typing.get_type_hints(hint)
    return [(f.name, hints[f.name], f.metadata.get("item"), node.get(f.name) if isinstance(node, dict) else None)
            for f in dataclasses.fields(hint)]


def _is_path(cls: type, data: dict, parts: tuple) -> bool:
    """Whether `parts` addresses a field from the root of a `cls` config with plain data `data` (any path into a
    free-form mapping counts, and a new key of a mapping of `item`s)."""
    hint, item, node = cls, None, data
    for part in parts:
        if item is None and _is_free_mapping(hint):
            return True
        if item is not None and not isinstance(node, list):
            # A mapping of items: a new key adds an entry.
            hint, item, node = item, None, (node or {}).get(part)
            continue
        children = {key: (h, i, n) for key, h, i, n in _children(hint, item, node)}
        if part not in children:
            return False
        hint, item, node = children[part]
    return True


def _node_paths(cls: type, data: dict) -> list[tuple]:
    """The paths of every field and section of a `cls` config with plain data `data` (entries of lists and mappings
    of items included, keys of free-form mappings not)."""
    paths: list[tuple] = []

    def visit(hint: Any, item: Optional[type], node: Any, prefix: tuple) -> None:
        for key, child_hint, child_item, child in _children(hint, item, node):
            paths.append(prefix + (key,))
            visit(child_hint, child_item, child, prefix + (key,))

    visit(cls, None, data, ())
    return paths


def _set_path(data: Any, path: tuple, value: Any) -> None:
    node = data
    for part in path[:-1]:
        if isinstance(node, dict) and node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


__all__ = [
    "BOOLEAN_WORDS",
    "RecipeLoader",
    "apply_overrides",
    "build_config",
    "check_bounds",
    "coerce_value",
    "load_layered_yaml",
    "load_yaml",
    "merge_config_data",
    "parse_pairs",
    "resolve_key",
]
