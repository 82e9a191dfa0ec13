"""Reading YAML and validating it into frozen pydantic models, with errors that point at the key.

Every user-facing file goes through :func:`load_yaml` and :func:`validate`, so every bad input ends
in a :class:`~gpuscale._core.errors.ConfigError` naming the file, the key path, the value and what
is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from gpuscale._core.errors import MISSING, ConfigError, ConfigErrors

M = TypeVar("M")


class StrictModel(BaseModel):
    """Base for every config model: frozen, unknown keys rejected, defaults validated too."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """A text file's contents; a missing or unreadable file becomes a ConfigError naming it."""
    p = Path(path)
    try:
        return p.read_text(encoding=encoding)
    except FileNotFoundError:
        raise ConfigError(str(p), None, MISSING, "file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(p), None, MISSING, f"cannot be read as UTF-8 text ({exc.__class__.__name__})"
        ) from None


def load_yaml(path: str | Path) -> Any:
    """Parse one YAML document; a missing file or a syntax error becomes a ConfigError."""
    return parse_yaml(read_text(path), str(Path(path)))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = None
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line = int(mark.line) + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, None, MISSING, f"is not valid YAML ({problem})", line=line) from None


def _key_path(loc: tuple[int | str, ...], prefix: str) -> str:
    parts: list[str] = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]"
            else:
                parts.append(f"[{item}]")
        else:
            parts.append(str(item))
    return ".".join(parts)


def _allowed(err: Mapping[str, Any]) -> str:
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", "invalid value"))
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the documentation for the allowed keys)"
    if kind == "union_tag_invalid":
        expected = ctx.get("expected_tags", "")
        return f"unknown kind; allowed: {expected}"
    if kind == "union_tag_not_found":
        return f"a 'kind' key is required ({ctx.get('discriminator', 'kind')})"
    return msg[0].lower() + msg[1:] if msg else "invalid value"


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # Discriminated unions insert the tag into the location ("workload.poisson.rate_rps"); pydantic's
    # function validators add "function-after[...]" entries. Neither is a key the user wrote.
    return tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x.startswith("function-"))))


def validation_errors(exc: ValidationError, source: str, prefix: str = "", data: Any = None) -> ConfigErrors:
    errors: list[ConfigError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        cleaned = _clean_loc(loc)
        tags = _union_tags(loc, cleaned, data)
        key = _key_path(tags, prefix)
        value: object = MISSING if err.get("type") == "missing" else err.get("input", MISSING)
        if isinstance(value, Mapping) and err.get("type") not in ("missing",):
            value = MISSING if err.get("type") in ("extra_forbidden",) else value
        errors.append(ConfigError(source, key or None, value, _allowed(err)))
    return ConfigErrors(errors)


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
        raise validation_errors(exc, source, prefix, data) from None
