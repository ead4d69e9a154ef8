"""Object-meta rules and selectors shared by the sandbox API server's verbs."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sandbox.kube.status import ApiError

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def name_problem(name: Any, style: str) -> str | None:
    """Why `name` is not a valid object name under `style` (subdomain|label|path), or None."""
    if not isinstance(name, str) or not name:
        return "Required value: name or generateName is required"
    if style == "path":
        if name in (".", "..") or "/" in name or "%" in name:
            return f'Invalid value: "{name}": may not contain \'/\' or \'%\' and may not be \'.\' or \'..\''
        return None
    if style == "label":
        if len(name) > 63 or not _LABEL.match(name):
            return (f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case '
                    "alphanumeric characters or '-', and must start and end with an alphanumeric character "
                    "(e.g. 'my-name',  or '123-abc', regex used for validation is "
                    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
        return None
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        return (f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    return None


def label_problems(labels: Any, field: str = "metadata.labels") -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    if labels is None:
        return out
    if not isinstance(labels, dict):
        return [(field, "FieldValueTypeInvalid", f"{field}: Invalid value: must be a map of strings")]
    for k, v in labels.items():
        prefix, _, name = k.rpartition("/")
        if (not name or len(name) > 63 or not _QUALIFIED.match(name)
                or (prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)))):
            out.append((field, "FieldValueInvalid", f'{field}: Invalid value: "{k}": name part must consist of '
                                                    "alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            out.append((field, "FieldValueInvalid",
                        f"{field}: Invalid value: {v!r}: a valid label must be an empty string or consist of "
                        "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                        "alphanumeric character"))
    return out


# ---------------------------------------------------------------- selectors
def parse_label_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` -> [(key, op, values)]."""
    reqs = []
    for part in _split_selector(text):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)$", part)
        if m:
            reqs.append((m[1], m[2], tuple(v.strip() for v in m[3].split(",") if v.strip())))
            continue
        m = re.match(r"^([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)$", part)
        if m:
            reqs.append((m[1], "!=" if m[2] == "!=" else "=", (m[3],)))
            continue
        m = re.match(r"^(!?)([A-Za-z0-9_./-]+)$", part)
        if m:
            reqs.append((m[2], "!" if m[1] else "exists", ()))
            continue
        raise ApiError(400, f'unable to parse requirement: found \'{part}\', expected a valid label selector')
    return reqs


def _split_selector(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def labels_match(labels: dict[str, str], reqs: list[tuple[str, str, tuple[str, ...]]]) -> bool:
    for key, op, values in reqs:
        has = key in labels
        v = labels.get(key)
        if (op == "=" and v != values[0]) or (op == "!=" and has and v == values[0]) or (
                op == "in" and v not in values) or (op == "notin" and has and v in values) or (
                op == "exists" and not has) or (op == "!" and has):
            return False
    return True


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """`metadata.name=x,involvedObject.name!=y` -> [(path, equal, value)]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)$", part)
        if not m:
            raise ApiError(400, f"invalid selector: '{text}'; can't understand '{part}'")
        out.append((m[1], m[2] != "!=", m[3]))
    return out


def fields_match(obj: dict[str, Any], reqs: list[tuple[str, bool, str]]) -> bool:
    for path, equal, value in reqs:
        node: Any = obj
        for p in path.split("."):
            node = node.get(p) if isinstance(node, dict) else None
        actual = "" if node is None else str(node)
        if (actual == value) != equal:
            return False
    return True
