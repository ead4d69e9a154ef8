"""Validate and prune custom resources against a CRD's structural `openAPIV3Schema`.

The subset Kubernetes applies that the bundle's and NAD's schemas use: `type` (object, array,
string, integer, number, boolean), `properties`, `required`, `additionalProperties` (schema or
bool), `items`, `enum`, `nullable`, `minimum`/`maximum`, `minLength`/`maxLength`, `pattern`,
`x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string`. Unknown fields are pruned
(returned so the server can warn, or refuse under `fieldValidation=Strict`); `metadata` is only
checked by the generic object-meta rules.
"""

from __future__ import annotations

import re
from typing import Any

Cause = tuple[str, str, str]  # (field, reason, message) as in a Status' details.causes

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _type_ok(want: str, v: Any) -> bool:
    if want == "integer":
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    if want == "number":
        return isinstance(v, int | float) and not isinstance(v, bool)
    t = _TYPES.get(want)
    return t is None or isinstance(v, t)


def validate(obj: dict[str, Any], schema: dict[str, Any] | None) -> tuple[list[Cause], list[str]]:
    """Check `obj` (pruned in place) against `schema`; return (causes, pruned field paths)."""
    causes: list[Cause] = []
    pruned: list[str] = []
    if not schema:
        return causes, pruned
    props = schema.get("properties") or {}
    for k in list(obj):
        if k in ("apiVersion", "kind", "metadata"):
            continue
        if k in props:
            _check(obj[k], props[k], k, causes, pruned, obj, k)
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            pruned.append(k)
            del obj[k]
    for r in schema.get("required") or []:
        if r not in obj:
            causes.append((r, "FieldValueRequired", f"{r}: Required value"))
    return causes, pruned


def _check(v: Any, s: dict[str, Any], path: str, causes: list[Cause], pruned: list[str],
           parent: Any, key: Any) -> None:
    if v is None:
        if s.get("nullable"):
            return
        # Kubernetes drops nulls of non-nullable fields before validation.
        if isinstance(parent, dict):
            del parent[key]
            return
    want = s.get("type")
    if s.get("x-kubernetes-int-or-string"):
        if not (isinstance(v, str) or _type_ok("integer", v)):
            causes.append((path, "FieldValueInvalid",
                           f'{path}: Invalid value: "{_type_name(v)}": {path} in body must be of type '
                           f'integer or string: "{_type_name(v)}"'))
        return
    if want and not _type_ok(want, v):
        causes.append((path, "FieldValueTypeInvalid",
                       f'{path}: Invalid value: "{_type_name(v)}": {path} in body must be of type {want}: '
                       f'"{_type_name(v)}"'))
        return
    if "enum" in s and v not in s["enum"]:
        allowed = ", ".join(f'"{e}"' if isinstance(e, str) else str(e) for e in s["enum"])
        causes.append((path, "FieldValueNotSupported",
                       f"{path}: Unsupported value: {v!r}: supported values: {allowed}"))
    if isinstance(v, str):
        if "maxLength" in s and len(v) > s["maxLength"]:
            causes.append((path, "FieldValueTooLong",
                           f"{path}: Too long: may not be longer than {s['maxLength']}"))
        if "minLength" in s and len(v) < s["minLength"]:
            causes.append((path, "FieldValueInvalid",
                           f"{path}: Invalid value: {v!r}: {path} in body should be at least "
                           f"{s['minLength']} chars long"))
        if "pattern" in s and not re.search(s["pattern"], v):
            causes.append((path, "FieldValueInvalid",
                           f"{path}: Invalid value: {v!r}: {path} in body should match '{s['pattern']}'"))
    if _type_ok("number", v):
        if "minimum" in s and v < s["minimum"]:
            causes.append((path, "FieldValueInvalid",
                           f"{path}: Invalid value: {v}: {path} in body should be greater than or equal "
                           f"to {s['minimum']}"))
        if "maximum" in s and v > s["maximum"]:
            causes.append((path, "FieldValueInvalid",
                           f"{path}: Invalid value: {v}: {path} in body should be less than or equal "
                           f"to {s['maximum']}"))
    if isinstance(v, dict):
        props = s.get("properties")
        addl = s.get("additionalProperties")
        preserve = s.get("x-kubernetes-preserve-unknown-fields")
        for k in list(v):
            sub = f"{path}.{k}"
            if props and k in props:
                _check(v[k], props[k], sub, causes, pruned, v, k)
            elif isinstance(addl, dict):
                _check(v[k], addl, sub, causes, pruned, v, k)
            elif addl is True or preserve or (props is None and addl is None and not want):
                continue
            elif addl is False and not preserve:
                causes.append((sub, "FieldValueForbidden", f"{sub}: Forbidden: additional property not allowed"))
            else:
                pruned.append(sub)
                del v[k]
        for r in s.get("required") or []:
            if r not in v:
                causes.append((f"{path}.{r}", "FieldValueRequired", f"{path}.{r}: Required value"))
    elif isinstance(v, list) and isinstance(s.get("items"), dict):
        for i, item in enumerate(v):
            _check(item, s["items"], f"{path}[{i}]", causes, pruned, v, i)
