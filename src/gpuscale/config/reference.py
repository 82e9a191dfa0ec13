"""The keys of a configuration model, flattened for people: name, type, default and description.

``gpuscale policies show KIND`` prints a kind's table from it, and the configuration reference
(``gpuscale schema KIND --markdown``, ``docs/reference/``) is generated from it, so the reference
cannot drift from the models that validate the files.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python


@dataclass(frozen=True)
class ParamInfo:
    """One key of a model, nested ones with dotted names (``metrics[].target.type``)."""

    name: str
    type: str
    default: str
    description: str
    allowed: str = ""
    """The value's bounds (``> 0``, ``<= 100``, ``at least 1 item``), if the model states any."""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (tuple, list):
        inner = args[0] if args else Any
        return f"list of {_type_name(inner)}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(repr(m.value) for m in annotation)
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _nested_models(annotation: Any) -> list[tuple[type[BaseModel], bool]]:
    """Model classes inside an annotation, with whether they sit in a list."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, False)]
    if origin in (tuple, list) and args:
        return [(m, True) for m, _ in _nested_models(args[0])]
    if origin in (typing.Union, types.UnionType, Annotated):
        out: list[tuple[type[BaseModel], bool]] = []
        for a in args if origin is not Annotated else args[:1]:
            out += _nested_models(a)
        return out
    return []


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _allowed(metadata: list[Any]) -> str:
    """The bounds a field's constraints state, in words a reader of the file uses."""
    parts: list[str] = []
    for m in metadata:
        for attr, sign in _BOUNDS:
            value = getattr(m, attr, None)
            if value is not None:
                parts.append(f"{sign} {value:g}" if isinstance(value, (int, float)) else f"{sign} {value}")
        low = getattr(m, "min_length", None)
        if low:
            parts.append(f"at least {low} item{'s' if low != 1 else ''}")
        high = getattr(m, "max_length", None)
        if high is not None:
            parts.append(f"at most {high} item{'s' if high != 1 else ''}")
    return ", ".join(parts)


def _render_default(value: Any) -> str:
    text = json.dumps(to_jsonable_python(value), separators=(", ", ": "))
    return text if len(text) <= 100 else text[:97] + "..."


def describe_model(cls: type[BaseModel], prefix: str = "", *, kind_field: str = "") -> list[ParamInfo]:
    """Every key of ``cls`` (nested ones with dotted names, ``metrics[].target.type``) with its type,
    default and description; a top-level ``safety`` block comes last. ``kind_field`` describes a
    top-level ``kind`` key that has no description of its own."""
    out: list[ParamInfo] = []
    # The safety block every kind shares comes last, after the kind's own parameters.
    fields = sorted(cls.model_fields.items(), key=lambda item: not prefix and item[0] == "safety")
    for name, info in fields:
        path = f"{prefix}{name}"
        if info.is_required():
            default = "required"
        elif info.default_factory is not None:
            default = _render_default(info.default_factory())  # type: ignore[call-arg]
        elif info.default is PydanticUndefined:
            default = "required"
        else:
            default = _render_default(info.default)
        description = info.description or (kind_field if path == "kind" else "")
        allowed = _allowed(info.metadata)
        out.append(ParamInfo(path, _type_name(info.annotation), default, description, allowed))
        for model, in_list in _nested_models(info.annotation):
            out += describe_model(model, f"{path}[]." if in_list else f"{path}.", kind_field=kind_field)
    return out
