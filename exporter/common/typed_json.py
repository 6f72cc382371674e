"""Plain dataclasses as JSON, through pydantic: load with type checks, dump, describe.

The report (exporter.report.schema) and the artifact index (exporter.artifacts) are stdlib
dataclasses whose fields carry their meaning as pydantic's ``description``; the loader, the
writer and the generated docs (docs/report_schema.md, docs/report.schema.json) all read the
same classes, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from exporter.errors import EdgepackError

T = TypeVar("T")

# pydantic error types that mean "wrong JSON type" -> the type the one-line message names.
_EXPECTED = {
    "float_type": "float",
    "int_type": "int",
    "string_type": "str",
    "bool_type": "bool",
    "list_type": "a list",
    "dict_type": "an object",
    "dataclass_type": "an object",
}


class TypedJsonError(EdgepackError, ValueError):
    """A JSON value does not have the type its dataclass field declares."""


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field documented by ``text`` (pydantic reads it as the description)."""
    return dataclasses.field(metadata={"description": text}, **kwargs)


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def from_json(cls: type[T], data: Any, where: str = "") -> T:
    """``data`` (parsed JSON) as an instance of the dataclass ``cls``.

    Raises TypedJsonError naming the first field (as a dotted path from ``where``) whose value
    has the wrong type or that is missing. Keys the dataclass does not know are ignored: a
    later edgepack of the same schema version may add fields.
    """
    # Strict JSON validation: a string is not a number and true is not a count, but an object
    # is a dataclass (strict Python validation would demand an instance).
    try:
        return _adapter(cls).validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        raise TypedJsonError(_message(exc.errors()[0], where or cls.__name__)) from None


def _path(where: str, loc: tuple[int | str, ...]) -> str:
    return where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _message(err: dict[str, Any], where: str) -> str:
    """One line: ``report.artifacts[1].latency_ms.p90: expected float, got str``."""
    loc, kind, value = err["loc"], err["type"], err["input"]
    if kind == "missing":
        return f"{_path(where, loc[:-1])}: no {loc[-1]}"
    if kind in _EXPECTED:
        got = "null" if value is None else type(value).__name__
        return f"{_path(where, loc)}: expected {_EXPECTED[kind]}, got {got}"
    return f"{_path(where, loc)}: {err['msg'][0].lower()}{err['msg'][1:]}, got {value!r}"


def to_json(obj: Any) -> Any:
    """A dataclass instance as JSON-ready dicts and lists (every field, nulls included)."""
    return _adapter(type(obj)).dump_python(obj, mode="json")


class _Written(GenerateJsonSchema):
    """The schema of what the writer emits: every field (null where it does not apply), and
    nothing else, though the loader ignores unknown keys."""

    def field_is_required(self, field: Any, total: bool) -> bool:
        return True

    def dataclass_schema(self, schema: Any) -> dict[str, Any]:
        return {**super().dataclass_schema(schema), "additionalProperties": False}


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of what :func:`to_json` writes for ``cls``."""
    return _adapter(cls).json_schema(mode="serialization", schema_generator=_Written)
