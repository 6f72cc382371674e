"""Dataclasses as JSON: load with type checks, describe as JSON Schema and as Markdown tables.

The report (exporter.report.schema) and the artifact index (exporter.artifacts) are plain
dataclasses whose fields carry their meaning in ``metadata["doc"]``; this module walks their
type hints, so the file, its loader, docs/report_schema.md and docs/report.schema.json cannot
drift apart. Supported types: bool, int, float, str, Any, Literal[...], list[T],
dict[str, T], T | None and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class TypedJsonError(ValueError):
    """A JSON value does not have the type its dataclass field declares."""


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field documented by ``text`` (the docs are generated from it)."""
    return dataclasses.field(metadata={"doc": text}, **kwargs)


def _optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only T | None unions are supported, not {tp}")
        return args[0], True
    return tp, False


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


# --- loading -------------------------------------------------------------------------------


def from_json(cls: type[T], data: Any, where: str = "") -> T:
    """``data`` (parsed JSON) as an instance of the dataclass ``cls``.

    Raises TypedJsonError naming the first field (as a dotted path from ``where``) whose value
    has the wrong type or that is missing. Keys the dataclass does not know are ignored: a
    later edgepack of the same schema version may add fields.
    """
    return _load(cls, data, where or cls.__name__)


def _type_name(tp: Any) -> str:
    return describe_type(tp)


def _load(tp: Any, value: Any, where: str) -> Any:
    tp, nullable = _optional(tp)
    if value is None:
        if nullable or tp is Any:
            return None
        raise TypedJsonError(f"{where}: null where {_type_name(tp)} is required")
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise TypedJsonError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypedJsonError(f"{where}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _load(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif not _has_default(f):
                raise TypedJsonError(f"{where}: no {f.name}")
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise TypedJsonError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_load(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypedJsonError(f"{where}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {str(k): _load(item, v, f"{where}.{k}") for k, v in value.items()}
    # bool is an int in Python, but not in a report: true is not a count. An int stays an int
    # where a float is declared (a byte budget is whole), so a file reloads to the same JSON.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str) and isinstance(value, tp):
        return value
    raise TypedJsonError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__}")


def to_json(obj: Any) -> Any:
    """A dataclass instance as JSON-ready dicts and lists (every field, nulls included)."""
    return dataclasses.asdict(obj)


# --- describing ----------------------------------------------------------------------------


def describe_type(tp: Any) -> str:
    """The type as docs/report_schema.md writes it: int, list[Layer], object of str, ... | null."""
    tp, nullable = _optional(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        text = "any"
    elif origin is Literal:
        text = " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    elif dataclasses.is_dataclass(tp):
        text = tp.__name__
    elif origin is list:
        text = f"list[{describe_type(typing.get_args(tp)[0])}]"
    elif origin is dict:
        text = f"object of {describe_type(typing.get_args(tp)[1])}"
    else:
        text = {bool: "bool", int: "int", float: "float", str: "str"}[tp]
    return f"{text} \\| null" if nullable else text


def json_schema(root: type, title: str, description: str = "") -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the dataclass ``root``: every field required (the
    writer always writes them, null where they do not apply), no field beyond them."""
    defs: dict[str, Any] = {}

    def schema_of(tp: Any) -> dict[str, Any]:
        tp, nullable = _optional(tp)
        origin = typing.get_origin(tp)
        if tp is Any:
            return {}
        if origin is Literal:
            out: dict[str, Any] = {"enum": list(typing.get_args(tp))}
        elif dataclasses.is_dataclass(tp):
            if tp.__name__ not in defs:
                defs[tp.__name__] = {}  # placeholder: a recursive type refers to itself
                defs[tp.__name__] = object_schema(tp)
            out = {"$ref": f"#/$defs/{tp.__name__}"}
        elif origin is list:
            out = {"type": "array", "items": schema_of(typing.get_args(tp)[0])}
        elif origin is dict:
            out = {"type": "object", "additionalProperties": schema_of(typing.get_args(tp)[1])}
        else:
            out = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]}
        if nullable:
            if "enum" in out:
                out = {"enum": [*out["enum"], None]}
            elif "type" in out:
                out = {**out, "type": [out["type"], "null"]}
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out

    def object_schema(cls: type) -> dict[str, Any]:
        hints = _hints(cls)
        props = {}
        for f in dataclasses.fields(cls):
            prop = schema_of(hints[f.name])
            text = f.metadata.get("doc")
            if text:
                # A $ref may not carry siblings in older drafts: wrap it.
                prop = {"allOf": [prop], "description": text} if "$ref" in prop else prop
                prop.setdefault("description", text)
            props[f.name] = prop
        out: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "required": [f.name for f in dataclasses.fields(cls)],
            "additionalProperties": False,
        }
        if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):
            out["description"] = " ".join(cls.__doc__.split())
        return out

    body = object_schema(root)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        **({"description": description} if description else {}),
        **{k: v for k, v in body.items() if k != "description"},
        "$defs": dict(sorted(defs.items())),
    }


def markdown_sections(root: type) -> list[tuple[type, list[tuple[str, str, str]]]]:
    """(dataclass, rows of (field, type, meaning)) for ``root`` and every dataclass it nests,
    in the order they are first met."""
    seen: list[type] = []

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            for inner in _dataclasses_in(hints[f.name]):
                visit(inner)

    visit(root)
    out = []
    for cls in seen:
        hints = _hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            nested = _dataclasses_in(tp)
            meaning = f.metadata.get("doc", "")
            if nested:
                meaning += (
                    f" ({', '.join(f'[{c.__name__}](#{c.__name__.lower()})' for c in nested)})"
                )
            rows.append((f.name, describe_type(tp), meaning))
        out.append((cls, rows))
    return out


def _dataclasses_in(tp: Any) -> list[type]:
    tp, _ = _optional(tp)
    if dataclasses.is_dataclass(tp):
        return [tp]
    if typing.get_origin(tp) in (list, dict):
        return _dataclasses_in(typing.get_args(tp)[-1])
    return []
