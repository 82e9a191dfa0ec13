"""Reading YAML and validating it into frozen pydantic models, with errors that point at the key.

Every user-facing file goes through :func:`load_yaml` and :func:`validate`, so every bad input ends
in a :class:`~gpuscale._core.errors.ConfigError` naming the file, the key path, the value and what
is allowed.

The YAML reader is PyYAML's safe loader with three refusals of its own: a key repeated in one
mapping (PyYAML keeps the last one silently), a document nested deeper than :data:`MAX_DEPTH`
levels (deeper ones exhaust Python's stack), and aliases that repeat more than
:data:`MAX_ALIAS_VALUES` values in all (a few hundred bytes of nested aliases can stand for billions
of values).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from gpuscale._core.errors import MISSING, SHOWN_CHARS, ConfigError, ConfigErrors, shown

M = TypeVar("M")

MAX_DEPTH = 64
"""The deepest nesting of lists and mappings a gpuscale YAML file may have."""

MAX_ALIAS_VALUES = 10_000
"""How many values the aliases (``*name``) of one YAML file may repeat in all, nested ones counted."""

MAX_REPORTED_ERRORS = 20
"""The most problems one message lists; the rest are counted (a list of 10,000 bad items would
otherwise make a message of 10,000 lines)."""


def is_file(path: Any) -> bool:
    """``path.is_file()``, false where the name cannot be a file at all (longer than the system
    allows, a NUL byte): a name the user typed decides between a file and a built-in name."""
    try:
        return bool(path.is_file())
    except (OSError, ValueError):
        return False


def exists(path: Any) -> bool:
    """``path.exists()`` (a file, a folder, a device...), false where the name cannot exist at all
    (see :func:`is_file`)."""
    try:
        return bool(path.exists())
    except (OSError, ValueError):
        return False


class StrictModel(BaseModel):
    """Base for every config model: frozen, unknown keys rejected, defaults validated too."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def also_accepts(short: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` for a model or field whose before-validator also takes a short form
    (a plain number for a mapping): the generated JSON Schema accepts ``short`` beside the full form,
    so an editor does not flag a file the loader reads."""

    def widen(schema: dict[str, Any]) -> None:
        full = {k: v for k, v in schema.items() if k not in ("title", "description")}
        for k in full:
            del schema[k]
        schema["anyOf"] = [short, full]

    return widen


MAX_YAML_BYTES = 16 * 2**20
"""The largest YAML file gpuscale reads (a config file is a few kB; reading past this would also read
a device such as /dev/zero or a pipe that never ends)."""


def read_text(path: str | Path, encoding: str = "utf-8", *, limit: int = MAX_YAML_BYTES) -> str:
    """A text file's contents; a missing, unreadable or too large file (over ``limit`` bytes; a
    device or pipe is read at most that far) becomes a ConfigError naming it."""
    p = Path(path)
    too_large = f"is larger than {limit / 2**20:g} MiB, the most gpuscale reads from such a file"
    try:
        # Non-blocking open: a named pipe nobody writes would otherwise block here for ever; once
        # open, a pipe is read blocking (a writer sends its text; with none, it reads as empty).
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ConfigError(str(p), None, MISSING, "is a folder; expected a file")
            if st.st_size > limit:
                raise ConfigError(str(p), None, MISSING, too_large)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        with open(fd, encoding=encoding) as f:  # it owns fd from here
            text = f.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(str(p), None, MISSING, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(p), None, MISSING, f"cannot be read as UTF-8 text ({exc.__class__.__name__})"
        ) from None
    if len(text) > limit:
        raise ConfigError(str(p), None, MISSING, too_large)
    return text


def load_yaml(path: str | Path) -> Any:
    """Parse one YAML document; a missing file or a syntax error becomes a ConfigError."""
    return parse_yaml(read_text(path), str(Path(path)))


class _Refused(yaml.YAMLError):
    """A YAML document gpuscale refuses to read, located (line, key)."""

    def __init__(self, mark: Any, key: str | None, allowed: str) -> None:
        super().__init__(allowed)
        self.line: int | None = int(mark.line) + 1 if mark is not None else None
        self.key = key
        self.allowed = allowed


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys, deep nesting and alias expansion past the limits."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):  # type: ignore[no-untyped-call]
            event = self.peek_event()  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _Refused(
                    event.start_mark,
                    None,
                    f"alias *{event.anchor} refers to the list or mapping that holds it; "
                    "an alias may only repeat a complete value",
                )
            self._alias_values += size
            if self._alias_values > MAX_ALIAS_VALUES:
                raise _Refused(
                    event.start_mark,
                    None,
                    f"aliases (*name) expand to more than {MAX_ALIAS_VALUES:,} values (the limit); "
                    "write the values out or repeat fewer of them",
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                None,
                f"nested deeper than {MAX_DEPTH} levels (the limit)",
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes.get(id(child), 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        self._sizes[id(node)] = size
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # unhashable: the constructor reports it
            if first is not key_node:
                raise _Refused(
                    key_node.start_mark,
                    str(key),
                    f"duplicate key (first set on line {first.start_mark.line + 1}); "
                    "a key may appear only once in a mapping",
                )
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)  # type: ignore[no-untyped-call]
        except (ValueError, OverflowError) as exc:  # e.g. a date 2023-02-30, an integer of 5,000 digits
            raise _Refused(node.start_mark, None, f"{shown(node.value, 40)} cannot be read ({exc})") from None


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document of ``source``; anything wrong becomes a ConfigError naming the line."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here, before any parsing
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(source, exc.key, MISSING, exc.allowed, line=exc.line) from None
    except yaml.YAMLError as exc:
        line = None
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line = int(mark.line) + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, None, MISSING, f"is not valid YAML ({problem})", line=line) from None
    except (ValueError, OverflowError, RecursionError) as exc:
        raise ConfigError(
            source, None, MISSING, f"cannot be read as YAML ({exc.__class__.__name__})"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()  # type: ignore[no-untyped-call]


def _key_path(loc: tuple[int | str, ...], prefix: str) -> str:
    parts: list[str] = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]"
            else:
                parts.append(f"[{item}]")
        else:  # a key the user wrote may be of any length: cut like a value (the message stays bounded)
            key = str(item)
            parts.append(key if len(key) <= SHOWN_CHARS else key[: SHOWN_CHARS - 3] + "...")
    return ".".join(parts)


def _is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in ("nan", "+nan", "-nan", ".nan")


def _allowed(err: Mapping[str, Any], keys: list[str] | None = None) -> str:
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", "invalid value"))
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        if keys:
            return f"unknown key; allowed: {', '.join(keys)}"
        return "unknown key (check the spelling)"
    if kind == "union_tag_invalid":
        expected = ctx.get("expected_tags", "")
        return f"unknown kind; allowed: {expected}"
    if kind == "union_tag_not_found":
        return f"a 'kind' key is required ({ctx.get('discriminator', 'kind')})"
    if _is_nan(err.get("input")):
        rule = msg.removeprefix("Input should be ").removeprefix("input should be ")
        return "not a number (NaN)" + ("" if "finite" in rule else f"; expected a number {rule}")
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg[0].lower() + msg[1:] if msg else "invalid value"


_WRAPPERS = ("function-after", "function-before", "function-wrap", "default", "nullable", "model")


def _keys_at(schema: Mapping[str, Any], loc: tuple[int | str, ...], defs: dict[str, Any]) -> list[str] | None:
    """The keys a mapping at ``loc`` (a pydantic error location) of ``schema`` (a core schema) allows,
    when the schema says so; None otherwise."""
    for _ in range(1000):  # unwrap (bounded: definitions may refer to each other)
        if "ref" in schema and schema.get("type") != "definition-ref":
            defs.setdefault(str(schema["ref"]), schema)
        kind = schema.get("type")
        if kind == "definitions":
            for d in schema.get("definitions", ()):
                defs[str(d["ref"])] = d
            schema = schema["schema"]
        elif kind == "definition-ref":
            target = defs.get(str(schema.get("schema_ref")))
            if target is None:
                return None
            schema = target
        elif kind in _WRAPPERS and isinstance(schema.get("schema"), Mapping):
            schema = schema["schema"]
        elif kind == "json-or-python":
            schema = schema["python_schema"]
        else:
            break
    kind = schema.get("type")
    if not loc:
        if kind in ("model-fields", "typed-dict"):
            fields: Mapping[str, Any] = schema.get("fields", {})
            return [
                str(f.get("validation_alias")) if isinstance(f.get("validation_alias"), str) else name
                for name, f in fields.items()
            ]
        return None
    head, rest = loc[0], loc[1:]
    if kind in ("model-fields", "typed-dict"):
        field = schema.get("fields", {}).get(head)
        return None if field is None else _keys_at(field["schema"], rest, defs)
    if kind == "tagged-union":
        choice = schema.get("choices", {}).get(head)
        return None if choice is None else _keys_at(choice, rest, defs)
    if kind == "union":
        choices = [c if isinstance(c, tuple) else (c, None) for c in schema.get("choices", ())]
        for choice, label in choices:
            if label == head or _model_name(choice, defs) == head:
                return _keys_at(choice, rest, defs)
        for choice, _ in choices:  # a label we cannot match: the first choice that knows the place
            found = _keys_at(choice, rest if isinstance(head, str) and "[" in head else loc, defs)
            if found is not None:
                return found
        return None
    if kind in ("list", "set", "frozenset", "generator") and isinstance(head, int):
        return _keys_at(schema["items_schema"], rest, defs) if "items_schema" in schema else None
    if kind == "tuple" and isinstance(head, int):
        items = schema.get("items_schema") or []
        return _keys_at(items[min(head, len(items) - 1)], rest, defs) if items else None
    if kind == "dict" and "values_schema" in schema:
        return _keys_at(schema["values_schema"], rest, defs)
    return None


def _model_name(schema: Mapping[str, Any], defs: dict[str, Any]) -> str | None:
    for _ in range(100):
        if schema.get("type") == "definition-ref":
            schema = defs.get(str(schema.get("schema_ref")), {})
        elif schema.get("type") == "model":
            return getattr(schema.get("cls"), "__name__", None)
        elif schema.get("type") in _WRAPPERS and isinstance(schema.get("schema"), Mapping):
            schema = schema["schema"]
        else:
            return None
    return None


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # Discriminated unions insert the tag into the location ("workload.poisson.rate_rps"); pydantic's
    # function validators add "function-after[...]" entries. Neither is a key the user wrote.
    return tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x.startswith("function-"))))


def validation_errors(
    exc: ValidationError,
    source: str,
    prefix: str = "",
    data: Any = None,
    schema: Mapping[str, Any] | None = None,
) -> ConfigErrors:
    """One located ConfigError per problem pydantic found; with the model's core ``schema``, an unknown
    key's message lists the allowed ones."""
    errors: list[ConfigError] = []
    found = _one_union_branch(exc.errors(include_url=False), data, schema)
    for err in found[:MAX_REPORTED_ERRORS]:
        loc = tuple(err.get("loc", ()))
        keys = None
        if err.get("type") == "extra_forbidden" and schema is not None:
            try:
                keys = _keys_at(schema, loc[:-1], {})
            except (KeyError, TypeError, IndexError, RecursionError):
                keys = None
        cleaned = _clean_loc(loc)
        tags = _union_tags(loc, cleaned, data)
        key = _key_path(tags, prefix)
        value: object = MISSING if err.get("type") == "missing" else err.get("input", MISSING)
        if isinstance(value, Mapping) and err.get("type") not in ("missing",):
            value = MISSING if err.get("type") in ("extra_forbidden",) else value
        errors.append(ConfigError(source, key or None, value, _allowed(err, keys)))
    if len(found) > len(errors):
        more = len(found) - len(errors)
        errors.append(
            ConfigError(
                source, None, MISSING, f"and {more:,} more problems (the first {len(errors)} are listed)"
            )
        )
    return ConfigErrors(errors)


_SCALARS = {"float": "a number", "int": "an integer", "str": "a string", "bool": "true or false"}


def _branch_at(loc: tuple[int | str, ...], data: Any, kind: str) -> tuple[int, Any] | None:
    """Where a smart (untagged) union's member label sits in ``loc`` -- the first entry that is not a
    key, index or discriminator tag of ``data`` -- with the value the user wrote there."""
    node = data
    for i, item in enumerate(loc):
        if isinstance(item, str) and ("[" in item or item.startswith("function-")):
            if item.split("[")[0] in _SCALARS or item.startswith(("list[", "tuple[", "dict[")):
                return i, node
            continue
        if isinstance(node, Mapping):
            if item in node:
                node = node[item]
                continue
            if isinstance(item, str) and node.get("kind") == item:
                continue
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            node = node[item]
            continue
        # Not a key of the value: a union member's label -- a model's class name (keys are
        # snake_case) or a scalar type -- or else a key that is missing or a validator named.
        label = (
            isinstance(item, str)
            and (item in _SCALARS or item[:1].isupper())
            and (i < len(loc) - 1 or kind not in ("missing", "extra_forbidden"))
        )
        return (i, node) if label else None
    return None


def _one_union_branch(errors: list[Any], data: Any, schema: Mapping[str, Any] | None) -> list[Any]:
    """A value that fits no member of a union (``float | Uniform | LogNormal``) makes pydantic report
    every member's complaint. Keep the member the user evidently meant -- the mapping whose keys the
    value uses, or the scalar member for a scalar -- or, when none fits, one error listing the forms
    allowed."""
    groups: dict[tuple[int | str, ...], dict[str, list[Any]]] = {}
    order: list[Any] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        at = _branch_at(loc, data, str(err.get("type", "")))
        if at is None or at[0] >= len(loc) or not isinstance(loc[at[0]], str):
            order.append(err)
            continue
        i, _ = at
        head, label = loc[:i], str(loc[i])
        if head not in groups:
            groups[head] = {}
            order.append(head)
        groups[head].setdefault(label, []).append({**err, "loc": head + loc[i + 1 :]})
    out: list[Any] = []
    for item in order:
        if not isinstance(item, tuple):
            out.append(item)
            continue
        branches = groups[item]
        if len(branches) == 1:
            out += next(iter(branches.values()))
            continue
        value = _value_at(data, item)
        scalar = {b: e for b, e in branches.items() if b.split("[")[0] in _SCALARS}
        if isinstance(value, Mapping):
            fits = {
                b: e
                for b, e in branches.items()
                if b not in scalar
                and not any(x.get("type") == "extra_forbidden" and len(x["loc"]) == len(item) + 1 for x in e)
            }
        else:
            fits = scalar if not isinstance(value, list) else {}
        if len(fits) == 1:
            out += next(iter(fits.values()))
            continue
        forms = [_SCALARS[b.split("[")[0]] for b in scalar] + [
            _form(e, len(item), _member_keys(schema, (*item, b)))
            for b, e in branches.items()
            if b not in scalar
        ]
        out.append({"type": "union", "loc": item, "input": value, "msg": "allowed: " + ", or ".join(forms)})
    return out


def _member_keys(schema: Mapping[str, Any] | None, loc: tuple[int | str, ...]) -> list[str] | None:
    if schema is None:
        return None
    try:
        return _keys_at(schema, loc, {})
    except (KeyError, TypeError, IndexError, RecursionError):
        return None


def _form(errors: list[Any], depth: int, keys: list[str] | None) -> str:
    """A mapping member's shape: the keys it requires (from its complaints), else the keys it has."""
    required = [
        str(e["loc"][depth]) for e in errors if e.get("type") == "missing" and len(e["loc"]) == depth + 1
    ]
    shown = required or keys or []
    return "{" + ", ".join(f"{k}: ..." for k in shown) + "}" if shown else "a mapping"


def _value_at(data: Any, loc: tuple[int | str, ...]) -> Any:
    node = data
    for item in loc:
        inside = (isinstance(node, Mapping) and item in node) or (
            isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node)
        )
        if inside:
            node = node[item]
        elif not (isinstance(node, Mapping) and node.get("kind") == item):
            return MISSING
    return node


def _union_tags(
    loc: tuple[int | str, ...], cleaned: tuple[int | str, ...], data: Any
) -> tuple[int | str, ...]:
    """Drop discriminator tags that pydantic adds to locations (e.g. 'poisson' in workload.poisson.rate)."""
    out: list[int | str] = []
    node = data
    for item in cleaned:
        if isinstance(node, Mapping):
            if item in node:
                out.append(item)
                node = node[item]
                continue
            if isinstance(item, str) and node.get("kind") == item:
                continue  # the tag of a discriminated union
            out.append(item)
            node = None
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            out.append(item)
            node = node[item]
        else:
            out.append(item)
            node = None
    return tuple(out)


def validate(model: type[M] | TypeAdapter[M], data: Any, source: str, prefix: str = "") -> M:
    """Validate ``data`` into ``model``; any problem becomes a ConfigErrors naming every bad key."""
    adapter: TypeAdapter[M] = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
    if data is None:
        raise ConfigError(source, prefix or None, MISSING, "is empty; expected a mapping of settings")
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise validation_errors(exc, source, prefix, data, adapter.core_schema) from None
