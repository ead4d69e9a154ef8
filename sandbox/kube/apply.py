"""Patches (JSON merge, JSON patch, strategic merge) and server-side apply with field ownership.

Server-side apply keeps, per field manager, the set of fields it applied (`managedFields`,
FieldsV1 encoding). Applying again: fields the manager stopped applying are removed unless
another manager owns them, applied fields are merged in, and an apply that changes nothing
writes nothing (same resourceVersion) — what makes the controller's re-install a no-op.

Simplification (documented in docs/SANDBOX_KUBE.md): maps are granular, every list is atomic
(owned and replaced as a whole), whereas Kubernetes merges some lists by key (containers by
name...). Conflicts are reported when another manager owns a field with a different value.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from sandbox.kube.status import ApiError

Path = tuple[str, ...]

# Fields the apiserver owns; never tracked in managedFields (as in Kubernetes).
_IGNORED_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                 "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds",
                 "generateName"}


# ---------------------------------------------------------------- field sets
def leaves(obj: dict[str, Any], reset: tuple[str, ...] = ()) -> set[Path]:
    """The field paths an object sets: map entries recursively, lists and scalars as leaves."""
    out: set[Path] = set()

    def walk(node: Any, path: Path) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, (*path, str(k)))
        else:
            out.add(path)

    for k, v in obj.items():
        if k in ("apiVersion", "kind") or k in reset:
            continue
        if k == "metadata" and isinstance(v, dict):
            for mk, mv in v.items():
                if mk not in _IGNORED_META:
                    walk(mv, ("metadata", mk))
        else:
            walk(v, (k,))
    return out


def encode_fields(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for p in sorted(paths):
        node = root
        for part in p:
            node = node.setdefault("f:" + part, {})
    return root


def decode_fields(fields: dict[str, Any]) -> set[Path]:
    out: set[Path] = set()

    def walk(node: dict[str, Any], path: Path) -> None:
        kids = {k: v for k, v in node.items() if k.startswith("f:")}
        if not kids:
            if path:
                out.add(path)
            return
        for k, v in kids.items():
            walk(v if isinstance(v, dict) else {}, (*path, k[2:]))

    walk(fields or {}, ())
    return out


def _related(a: Path, b: Path) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _conflicts(p: Path, q: Path, live: dict[str, Any], applied: dict[str, Any]) -> bool:
    """Whether applying field `p` conflicts with another manager's field `q`.

    Same field: when the values differ. A map applied over fields in it does not conflict (the
    manager owns the map, not its entries) unless the map is replaced by a non-map, and fields
    applied inside another manager's leaf conflict only if that leaf is not a map.
    """
    if p == q:
        return get_path(live, q) != get_path(applied, q)
    if q[:len(p)] == p:
        return not isinstance(get_path(applied, p), dict)
    if p[:len(q)] == q:
        return not isinstance(get_path(live, q), dict)
    return False


_MISSING = object()


def get_path(obj: Any, path: Path) -> Any:
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return _MISSING
        obj = obj[p]
    return obj


def _remove_path(obj: dict[str, Any], path: Path) -> None:
    chain = [obj]
    node: Any = obj
    for p in path[:-1]:
        node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return
        chain.append(node)
    node.pop(path[-1], None)
    # Prune maps left empty by the removal (never the top-level sections).
    for depth in range(len(path) - 1, 1, -1):
        parent, key = chain[depth - 1], path[depth - 1]
        if isinstance(parent.get(key), dict) and not parent[key]:
            del parent[key]
        else:
            break


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


@dataclass
class Entry:
    manager: str
    operation: str
    api_version: str
    time: str
    paths: set[Path]
    subresource: str = ""

    def encode(self) -> dict[str, Any]:
        d = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
             "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": encode_fields(self.paths)}
        if self.subresource:
            d["subresource"] = self.subresource
        return d


def read_entries(obj: dict[str, Any] | None) -> list[Entry]:
    out = []
    for m in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        out.append(Entry(m.get("manager", ""), m.get("operation", "Update"), m.get("apiVersion", ""),
                         m.get("time", ""), decode_fields(m.get("fieldsV1") or {}), m.get("subresource", "")))
    return out


def write_entries(obj: dict[str, Any], entries: list[Entry]) -> None:
    kept = [e.encode() for e in entries if e.paths or e.operation == "Apply"]
    if kept:
        obj.setdefault("metadata", {})["managedFields"] = kept
    else:
        obj.get("metadata", {}).pop("managedFields", None)


# ---------------------------------------------------------------- server-side apply
def server_side_apply(live: dict[str, Any] | None, applied: dict[str, Any], *, manager: str, force: bool,
                      api_version: str, now: str, reset: tuple[str, ...] = ()) -> dict[str, Any]:
    """The object after `manager` applies `applied` to `live` (None: create). Raises 409 on conflicts."""
    applied = {k: v for k, v in applied.items() if k not in reset}
    new_paths = leaves(applied, reset)
    if live is None:
        obj = copy.deepcopy(applied)
        write_entries(obj, [Entry(manager, "Apply", api_version, now, new_paths)])
        return obj
    obj = copy.deepcopy(live)
    entries = read_entries(live)
    conflicts = []
    for e in entries:
        if e.manager == manager and e.operation == "Apply":
            continue
        for q in list(e.paths):
            for p in new_paths:
                if _conflicts(p, q, live, applied):
                    conflicts.append((e.manager, q))
                    if force:
                        e.paths.discard(q)
                    break
    if conflicts and not force:
        causes = [{"reason": "FieldManagerConflict",
                   "message": f'conflict with "{m}": .{".".join(q)}', "field": "." + ".".join(q)}
                  for m, q in conflicts]
        plural = "" if len(conflicts) == 1 else "s"
        msg = f"Apply failed with {len(conflicts)} conflict{plural}: " + "; ".join(c["message"] for c in causes)
        raise ApiError(409, msg, "Conflict", {"causes": causes})
    mine = next((e for e in entries if e.manager == manager and e.operation == "Apply"), None)
    previous = mine.paths if mine else set()
    others = [e for e in entries if e is not mine]
    for p in sorted(previous - new_paths, key=len, reverse=True):
        if not any(q[:len(p)] == p for e in others for q in e.paths):  # nobody owns it or a field in it
            _remove_path(obj, p)
    _deep_merge(obj, applied)
    if mine is None:
        mine = Entry(manager, "Apply", api_version, now, new_paths)
        entries.append(mine)
    changed_fields = mine.paths != new_paths
    mine.paths = new_paths
    # The manager's timestamp moves only when the apply changed something (content or ownership).
    if changed_fields or strip_meta(obj) != strip_meta(live) or any(
            e.paths != o.paths for e, o in zip(entries, read_entries(live), strict=False)):
        mine.time = now
        mine.api_version = api_version
    write_entries(obj, entries)
    return obj


def record_update(old: dict[str, Any] | None, new: dict[str, Any], *, manager: str, api_version: str,
                  now: str, reset: tuple[str, ...] = ()) -> None:
    """Record a non-apply write (create, update, patch) in `new`'s managedFields, as Kubernetes does."""
    entries = read_entries(old)
    old_leaves = leaves(old, reset) if old else set()
    new_leaves = leaves(new, reset)
    touched = {p for p in new_leaves if old is None or get_path(old, p) != get_path(new, p)}
    gone = old_leaves - new_leaves
    for e in entries:
        e.paths = {q for q in e.paths
                   if not any(_related(q, p) for p in touched) or (e.manager == manager and e.operation == "Update")}
        e.paths = {q for q in e.paths if q not in gone and get_path(new, q) is not _MISSING}
    if touched:
        mine = next((e for e in entries if e.manager == manager and e.operation == "Update"), None)
        if mine is None:
            mine = Entry(manager, "Update", api_version, now, set())
            entries.append(mine)
        mine.paths |= touched
        mine.time = now
    write_entries(new, entries)


def strip_meta(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """`obj` without the fields the server writes itself, to compare contents."""
    if obj is None:
        return None
    o = copy.deepcopy(obj)
    md = o.get("metadata") or {}
    for k in ("resourceVersion", "managedFields", "generation"):
        md.pop(k, None)
    return o


# ---------------------------------------------------------------- patches
def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = json_merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(doc, dict):
            if p not in doc:
                raise ApiError(422, f"the server rejected our request due to an error in our request: "
                                    f"missing path segment {p!r}")
            doc = doc[p]
        elif isinstance(doc, list):
            try:
                doc = doc[int(p)]
            except (ValueError, IndexError):
                raise ApiError(422, f"invalid index {p!r}")
        else:
            raise ApiError(422, f"cannot traverse into {p!r}")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test)."""
    if not isinstance(ops, list):
        raise ApiError(400, "a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, f"invalid JSON patch operation {op!r}")
        kind, parts = op["op"], _pointer(op["path"])
        if kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_walk(doc, src))
            if kind == "move":
                doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
            doc = json_patch(doc, [{"op": "add", "path": op["path"], "value": value}])
            continue
        if kind == "test":
            # A missing member tests equal to null (evanphx/json-patch, which Kubernetes uses): Whereabouts
            # guards each "add" to an IPPool's allocations with {"op": "test", "path": ..., "value": null}.
            if parts and op.get("value") is None:
                parent = _walk(doc, parts[:-1])
                if isinstance(parent, dict) and parts[-1] not in parent:
                    continue
            if _walk(doc, parts) != op.get("value"):
                raise ApiError(422, f"testing value {op['path']} failed")
            continue
        if not parts:
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op.get("value"))
                continue
            raise ApiError(422, "cannot remove the root")
        parent, last = _walk(doc, parts[:-1]), parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if idx > len(parent):
                    raise ApiError(422, f"index {idx} out of range")
                parent.insert(idx, copy.deepcopy(op.get("value")))
            elif isinstance(parent, dict):
                parent[last] = copy.deepcopy(op.get("value"))
            else:
                raise ApiError(422, f"cannot add at {op['path']}")
        elif kind in ("remove", "replace"):
            _walk(parent, [last])  # must exist
            if kind == "remove":
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    parent.pop(last)
            elif isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op.get("value"))
            else:
                parent[last] = copy.deepcopy(op.get("value"))
        else:
            raise ApiError(400, f"unknown JSON patch operation {kind!r}")
    return doc


# Lists of the built-in types used here that Kubernetes merges by key in strategic merge patches.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "env": "name", "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort",
              "imagePullSecrets": "name", "conditions": "type", "tolerations": None,
              "ownerReferences": "uid", "secrets": "name", "addresses": "type"}


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge patch for the maps and lists of the built-in types used here.

    Supports `null` deletion, merge keys (MERGE_KEYS), `$patch: replace|delete`, `$retainKeys`,
    `$setElementOrder/<list>` (order taken from the directive) and `$deleteFromPrimitiveList/<list>`.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    orders = {}
    for k, v in patch.items():
        if k in ("$retainKeys", "$patch"):
            continue
        if k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            if isinstance(out.get(name), list):
                out[name] = [x for x in out[name] if x not in v]
            continue
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list) and MERGE_KEYS.get(k):
            out[k] = _merge_list(out.get(k) if isinstance(out.get(k), list) else [], v, MERGE_KEYS[k])
        else:
            out[k] = strategic_merge(out.get(k), v, k)
    for name, order in orders.items():
        key = MERGE_KEYS.get(name)
        if key and isinstance(out.get(name), list):
            rank = {json_key(o.get(key) if isinstance(o, dict) else o): i for i, o in enumerate(order)}
            out[name].sort(key=lambda x, key=key: rank.get(json_key(x.get(key) if isinstance(x, dict) else x),
                                                            len(rank)))
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def json_key(v: Any) -> str:
    return repr(v)


def _merge_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            out.append(copy.deepcopy(item))
            continue
        idx = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            out[idx] = strategic_merge(out[idx], item)
    return out
