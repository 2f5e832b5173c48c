"""Required bindings and primitive JSON types: what the structure model lets through.

The `fhir.resources` models check a resource's shape, but accept any string for a
`code` (`Patient.gender: "xx"`) and coerce primitives (`"active": "yes"` is taken as
true, `"multipleBirthInteger": "2"` as 2). A generic FHIR client then fails to parse
what the hub serves back. This module refuses both:

- an element with a REQUIRED binding in R4 must hold a code of its value set. The
  codes come from `bindings.json`, generated from the HL7 definitions by
  `tools/gen_bindings.py` (resource types the hub supports, and the data types);
  value sets those files cannot expand (BCP 13 mime types) are not checked;
- a primitive must have its JSON type (R4 JSON §2.6.1): boolean a JSON boolean,
  integer, unsignedInt and positiveInt a JSON number without a fraction, decimal a
  JSON number, every other primitive a JSON string.

The element types come from the same models, so the two cannot disagree. Token search
parameters on a bound element use `token_codes` to refuse a code outside the value set.
"""

from __future__ import annotations

import datetime
import decimal
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fhir.resources.R4B import get_fhir_model_class

from hub.fhir.outcome import Issue

GENERATED = Path(__file__).with_name("bindings.json")

JsonKind = Literal["boolean", "integer", "decimal", "string", "object", "resource"]

_PRIMITIVES: Mapping[type, JsonKind] = {
    bool: "boolean",
    int: "integer",
    decimal.Decimal: "decimal",
    float: "decimal",
    str: "string",
    bytes: "string",
    datetime.date: "string",
    datetime.datetime: "string",
    datetime.time: "string",
}
_SIMPLE_PATH = re.compile(r"[A-Z][A-Za-z]*(\.[a-z][A-Za-z]*)+")


@dataclass(frozen=True)
class Binding:
    """The codes a REQUIRED-bound element may hold (`codes` in definition order)."""

    path: str
    value_set: str | None
    codes: tuple[str, ...]

    def allows(self, code: str) -> bool:
        return code in self.codes

    def refusal(self, where: str, code: object) -> str:
        source = f" (required binding to {self.value_set})" if self.value_set else ""
        return (
            f"{where} must be one of the codes {', '.join(self.codes)}{source}, "
            f"not {json.dumps(code, ensure_ascii=False, default=str)[:60]}"
        )


@cache
def _table() -> Mapping[str, Binding]:
    # Loaded on first use, not at import, so the generator can import this module.
    elements = json.loads(GENERATED.read_text(encoding="utf-8"))["elements"]
    return types.MappingProxyType(
        {
            path: Binding(path, entry["valueSet"], tuple(entry["codes"]))
            for path, entry in elements.items()
        }
    )


def binding(path: str) -> Binding | None:
    """The required binding of element `path` (`Patient.gender`, `HumanName.use`), if any."""
    return _table().get(path)


def token_codes(expression: str) -> Binding | None:
    """The binding behind a token search parameter's FHIRPath, when every branch has one.

    Only plain element paths count (`Task.status`, `Subscription.channel.type`); a
    parameter over functions, or over any unbound branch, takes every code.
    """
    found = [binding(branch.strip()) for branch in expression.split("|")]
    if not found or not all(_SIMPLE_PATH.fullmatch(b.strip()) for b in expression.split("|")):
        return None
    if any(item is None for item in found):
        return None
    bound = [item for item in found if item is not None]
    codes = tuple(dict.fromkeys(code for item in bound for code in item.codes))
    value_sets = {item.value_set for item in bound}
    return Binding(expression, value_sets.pop() if len(value_sets) == 1 else None, codes)


@dataclass(frozen=True)
class _Field:
    """One property of a model class: its JSON kind, and for objects the model."""

    kind: JsonKind
    many: bool
    model: str | None = None  # the fhir.resources class name of an object


def class_name(path: str) -> str:
    """`Patient.contact` → `PatientContact`: how fhir.resources names backbone classes."""
    return "".join(part[:1].upper() + part[1:] for part in path.split("."))


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The element type of a field annotation, and whether the field is a list."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return None, many
            annotation = args[0]
        elif origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is list:
            many = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, many


def _field(annotation: Any) -> _Field | None:
    element, many = _unwrap(annotation)
    if element in _PRIMITIVES:
        return _Field(_PRIMITIVES[element], many)
    klass = getattr(element, "_model_klass", None)
    if isinstance(klass, str):
        name = klass.rpartition(".")[2]
        return _Field("resource" if name == "Resource" else "object", many, name)
    return None


@cache
def _fields(model: str) -> Mapping[str, _Field]:
    """The JSON properties of fhir.resources class `model` by name (as in JSON)."""
    fields: dict[str, _Field] = {}
    for name, info in get_fhir_model_class(model).model_fields.items():
        found = None if name == "fhir_comments" else _field(info.annotation)
        if found is not None:
            fields[info.alias or name] = found
    return types.MappingProxyType(fields)


def _is_model(name: object) -> bool:
    try:
        return isinstance(name, str) and get_fhir_model_class(name) is not None
    except (KeyError, ValueError):
        return False


def check_values(resource: Mapping[str, Any]) -> list[Issue]:
    """Every coded value outside its required binding and every mistyped primitive.

    Takes any JSON: what is not shaped as the model expects is left to the model.
    """
    resource_type = resource.get("resourceType")
    if not _is_model(resource_type):
        return []
    return list(_object(resource, str(resource_type), str(resource_type), str(resource_type)))


def _object(value: Mapping[str, Any], model: str, definition: str, where: str) -> Iterator[Issue]:
    fields = _fields(model)
    for name, item in value.items():
        spec = fields.get(name)
        if spec is None or item is None:
            continue  # unknown elements and nulls: the model and the shape check say so
        path = f"{definition}.{name}"
        here = f"{where}.{name}"
        if spec.many:
            if isinstance(item, list):
                for index, member in enumerate(item):
                    if member is not None:
                        yield from _value(member, spec, path, f"{here}[{index}]")
        else:
            yield from _value(item, spec, path, here)


def _value(value: Any, spec: _Field, path: str, where: str) -> Iterator[Issue]:
    if spec.kind == "resource":
        kind = value.get("resourceType") if isinstance(value, dict) else None
        if _is_model(kind):
            yield from _object(value, str(kind), str(kind), where)
        return
    if spec.kind == "object":
        if isinstance(value, dict) and spec.model is not None:
            # A backbone element continues its parent's path; a data type starts its own.
            inner = path if class_name(path) == spec.model else spec.model
            yield from _object(value, spec.model, inner, where)
        return
    if isinstance(value, dict | list):
        return  # an object or array for a primitive: the model's shape check says so
    if not _has_kind(value, spec.kind):
        yield Issue(
            "structure",
            f"{where} must be a JSON {_KIND_NAMES[spec.kind]}, not {_json_name(value)}",
            (where,),
        )
        return
    bound = binding(path)
    if bound is not None and not bound.allows(value):
        yield Issue("code-invalid", bound.refusal(where, value), (where,))


_KIND_NAMES: Mapping[JsonKind, str] = {
    "boolean": "boolean (true or false)",
    "integer": "number without a fraction",
    "decimal": "number",
    "string": "string",
    "object": "object",
    "resource": "object",
}


def _has_kind(value: Any, kind: JsonKind) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "decimal":
        return isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)
    return isinstance(value, str)


def _json_name(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int | float | decimal.Decimal):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {json.dumps(value, ensure_ascii=False)[:60]}"
    return "an array" if isinstance(value, list) else "an object"
