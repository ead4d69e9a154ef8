"""The verbs of the sandbox API server, independent of HTTP.

`Api.dispatch(method, path, query, headers, body)` returns `(status, body, headers)` where body
is a dict (JSON) or an iterator of dicts (a watch stream). Failures raise `ApiError`, which the
HTTP layer turns into a `Status`. The simulation (`sim.Sim`) hooks into writes to move CRDs,
DaemonSets and pods along as the Kubernetes controllers would.
"""

from __future__ import annotations

import copy
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sandbox.kube import apply as ssa
from sandbox.kube import discovery, protobuf
from sandbox.kube.meta import (
    fields_match,
    label_problems,
    labels_match,
    name_problem,
    now,
    parse_field_selector,
    parse_label_selector,
)
from sandbox.kube.schema import validate
from sandbox.kube.status import ApiError, PageNotFound, already_exists, conflict, invalid, not_found, status_body
from sandbox.kube.store import Key, Store
from sandbox.kube.types import BUILTINS, ResourceType, is_established, types_of_crd

NOT_FOUND_MSG = "the server could not find the requested resource"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+json": "apply",  # not a Kubernetes type; accepted for convenience
}


class Hooks:
    """What the simulation may do around writes (the default does nothing)."""

    def prepare(self, rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """Adjust `new` before it is stored (e.g. initial status)."""

    def written(self, rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """React after a write (new None: deleted)."""


def parse_body(body: bytes, content_type: str = "") -> Any:
    if not body:
        raise ApiError(400, "the request body is empty")
    try:
        return json.loads(body)
    except ValueError:
        pass
    try:
        import yaml

        return yaml.safe_load(body.decode("utf-8"))
    except Exception as e:  # yaml raises many types
        raise ApiError(400, f"error decoding request body: {e}")


class Api:
    def __init__(self, store: Store, hooks: Hooks | None = None) -> None:
        self.store = store
        self.hooks = hooks or Hooks()
        self._types_lock = threading.Lock()
        self._crd_types: list[ResourceType] = []
        t = now()
        for ns in INITIAL_NAMESPACES:
            self.store.put(("", "namespaces", "", ns), {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": str(uuid.uuid4()), "creationTimestamp": t,
                             "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})

    # ------------------------------------------------------------ types
    def types(self) -> list[ResourceType]:
        with self._types_lock:
            return list(BUILTINS) + list(self._crd_types)

    def refresh_crd_types(self) -> None:
        """Recompute the resource types served by Established CRDs (after any CRD write)."""
        out: list[ResourceType] = []
        for crd in self.store.items("apiextensions.k8s.io", "customresourcedefinitions"):
            if is_established(crd) and not (crd.get("metadata") or {}).get("deletionTimestamp"):
                out.extend(types_of_crd(crd))
        with self._types_lock:
            self._crd_types = out

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        for t in self.types():
            if t.group == group and t.version == version and t.plural == plural:
                return t
        return None

    def find_kind(self, api_version: str, kind: str) -> ResourceType | None:
        for t in self.types():
            if t.api_version == api_version and t.kind == kind:
                return t
        return None

    # ------------------------------------------------------------ dispatch
    def dispatch(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                 body: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            raise ApiError(404, NOT_FOUND_MSG)
        if parts[0] == "api":
            if len(parts) == 1:
                return 200, discovery.core_versions(), {}
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                return 200, discovery.group_list(self.types()), {}
            if len(parts) == 2:
                g = discovery.group(self.types(), parts[1])
                if g is None:
                    raise ApiError(404, NOT_FOUND_MSG)
                return 200, g, {}
            group, version, rest = parts[1], parts[2], parts[3:]
        rl = discovery.resource_list(self.types(), group, version)
        if rl is None:  # /api/vX answers a Status; an unknown /apis group Go's plain NotFound page
            raise PageNotFound() if parts[0] == "apis" else ApiError(404, NOT_FOUND_MSG)
        if not rest:
            return 200, rl, {}
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            inner = self.find(group, version, rest[2])
            if inner is not None and inner.namespaced:
                ns, rest = rest[1], rest[2:]
        rt = self.find(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise ApiError(404, NOT_FOUND_MSG)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and (sub != "status" or not rt.status_subresource):
            raise ApiError(404, NOT_FOUND_MSG)
        if not rt.namespaced and ns is not None:
            raise ApiError(404, NOT_FOUND_MSG)
        if rt.namespaced and ns is None and name is not None:
            raise ApiError(404, NOT_FOUND_MSG)
        dry = query.get("dryRun") == "All"
        if method == "GET":
            if name is not None:
                return 200, self.get(rt, ns, name), {}
            if query.get("watch") in ("1", "true", "True"):
                return 200, self.watch(rt, ns, query), {}
            return 200, self.list(rt, ns, query), {}
        if method == "POST" and name is None:
            return self.create(rt, ns, parse_body(body), query, headers, dry)
        if method == "PUT" and name is not None:
            if body.startswith(protobuf.MAGIC):
                return self.update(rt, ns, name, self._protobuf_status(rt, ns, name, body, sub), query, headers,
                                   dry, sub)
            return self.update(rt, ns, name, parse_body(body), query, headers, dry, sub)
        if method == "PATCH" and name is not None:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            return self.patch(rt, ns, name, ctype, body, query, headers, dry, sub)
        if method == "DELETE":
            opts = parse_body(body) if body else {}
            if name is None:
                return 200, self.delete_collection(rt, ns, query, dry), {}
            gone = self.delete(rt, ns, name, opts if isinstance(opts, dict) else {}, dry)
            if rt.kind in ("Pod", "Namespace"):  # graceful or finalized deletion: the object, as it goes
                return 200, gone, {}
            # Deleted at once: Kubernetes answers with a Status, not the object (checked against
            # the real server by tests/test_kube_differential.py).
            return 200, status_body(200, "", None, {"name": name, "group": rt.group, "kind": rt.plural,
                                                    "uid": gone["metadata"].get("uid", "")}), {}
        raise ApiError(405, f"the server does not allow this method on the requested resource ({method})")

    # ------------------------------------------------------------ helpers
    @staticmethod
    def key(rt: ResourceType, ns: str | None, name: str) -> Key:
        return (rt.group, rt.plural, ns or "", name)

    @staticmethod
    def out(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        return obj

    def _manager(self, query: dict[str, str], headers: dict[str, str]) -> str:
        m = query.get("fieldManager")
        if m:
            return m
        ua = headers.get("user-agent", "unknown")
        return ua.split("/")[0] or "unknown"

    def _check_kind(self, rt: ResourceType, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ApiError(400, "the body of the request must be a JSON or YAML object")
        av, kind = obj.get("apiVersion"), obj.get("kind")
        if av is not None and av != rt.api_version:
            raise ApiError(400, f"the API version in the data ({av}) does not match the expected API version "
                                f"({rt.api_version})")
        if kind is not None and kind != rt.kind and not rt.builtin:
            # A custom resource's kind is checked by its validation, as a field error.
            raise invalid(str(kind), rt.group, str((obj.get("metadata") or {}).get("name", "")),
                          [("kind", "FieldValueInvalid", f'Invalid value: "{kind}": must be {rt.kind}')])
        if kind is not None and kind != rt.kind:
            raise ApiError(400, f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        if obj.get("metadata") is not None and not isinstance(obj["metadata"], dict):
            raise ApiError(400, "metadata must be an object")
        return self.out(rt, copy.deepcopy(obj))

    def _check_namespace(self, rt: ResourceType, ns: str | None, obj: dict[str, Any]) -> None:
        md = obj.setdefault("metadata", {})
        if rt.namespaced:
            given = md.get("namespace")
            if given not in (None, "", ns):
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent on "
                                    "the request")
            md["namespace"] = ns
            if self.store.get(("", "namespaces", "", ns or "")) is None:
                raise not_found("namespaces", ns or "", "", "namespaces")
        else:
            md.pop("namespace", None)

    def _validate(self, rt: ResourceType, obj: dict[str, Any], query: dict[str, str]) -> list[str]:
        """422 with every problem found; returns warnings (pruned unknown fields)."""
        md = obj.get("metadata") or {}
        name = md.get("name", "")
        style = "label" if rt.kind == "Namespace" else ("path" if rt.group == "rbac.authorization.k8s.io"
                                                        else "subdomain")
        causes: list[tuple[str, str, str]] = []
        p = name_problem(name, style)
        if p:
            causes.append(("metadata.name", "FieldValueInvalid" if name else "FieldValueRequired",
                           f"metadata.name: {p}"))
        causes += label_problems(md.get("labels"))
        ann = md.get("annotations")
        if ann is not None and (not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values())):
            causes.append(("metadata.annotations", "FieldValueTypeInvalid",
                           "metadata.annotations: Invalid value: must be a map of strings"))
        pruned: list[str] = []
        if rt.builtin:
            causes += _builtin_problems(rt, obj)
            known = _BUILTIN_TOP_LEVEL.get(rt.kind)
            if known is not None:  # unknown top-level fields only: nested ones are not checked here
                pruned = sorted(k for k in obj if k not in known and k not in ("apiVersion", "kind", "metadata"))
                for k in pruned:
                    del obj[k]
        else:
            c, pruned = validate(obj, rt.schema)
            causes += c
        if causes:
            raise invalid(rt.kind, rt.group, name or "", causes)
        if pruned and query.get("fieldValidation") == "Strict":
            raise ApiError(400, f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict '
                                f"decoding error: " + ", ".join(f'unknown field "{f}"' for f in pruned))
        return [f'unknown field "{f}"' for f in pruned]

    # ------------------------------------------------------------ verbs
    def get(self, rt: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(self.key(rt, ns, name))
        if obj is None:
            raise not_found(rt.gr, name, rt.group, rt.plural)
        return self.out(rt, obj)

    def _selected(self, rt: ResourceType, ns: str | None, query: dict[str, str]):
        lsel = parse_label_selector(query.get("labelSelector", ""))
        fsel = parse_field_selector(query.get("fieldSelector", ""))

        def ok(obj: dict[str, Any]) -> bool:
            md = obj.get("metadata") or {}
            return labels_match(md.get("labels") or {}, lsel) and fields_match(obj, fsel)
        return ok

    def list(self, rt: ResourceType, ns: str | None, query: dict[str, str]) -> dict[str, Any]:
        ok = self._selected(rt, ns, query)
        with self.store.lock:
            rv = self.store.resource_version
            items = [self.out(rt, o) for o in self.store.items(rt.group, rt.plural, ns) if ok(o)]
        return {"kind": rt.list_kind or rt.kind + "List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    def watch(self, rt: ResourceType, ns: str | None, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        ok = self._selected(rt, ns, query)
        try:
            timeout = float(query.get("timeoutSeconds") or 60)
        except ValueError:
            raise ApiError(400, "timeoutSeconds must be a number")
        deadline = time.monotonic() + min(max(timeout, 0.0), 600.0)
        rv_text = query.get("resourceVersion", "")
        try:
            start = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError:
            raise ApiError(400, f"invalid resourceVersion {rv_text!r}")
        if start is not None and start < self.store.oldest_watchable():
            def expired() -> Iterator[dict[str, Any]]:
                yield {"type": "ERROR", "object": status_body(
                    410, f"too old resource version: {start} ({self.store.oldest_watchable()})", "Expired")}
            return expired()
        store = self.store

        def stream() -> Iterator[dict[str, Any]]:
            nonlocal start
            if start is None:
                with store.lock:
                    start = store.resource_version
                    initial = [o for o in store.items(rt.group, rt.plural, ns) if ok(o)]
                for o in initial:
                    yield {"type": "ADDED", "object": self.out(rt, o)}
            while time.monotonic() < deadline and not store.closed:
                for e in store.events_after(start):
                    start = e.rv
                    if e.key[0] != rt.group or e.key[1] != rt.plural or (ns is not None and e.key[2] != ns):
                        continue
                    if ok(e.obj):
                        yield {"type": e.type, "object": self.out(rt, copy.deepcopy(e.obj))}
                store.wait_for_change(start, min(1.0, max(0.0, deadline - time.monotonic())))
        return stream()

    def create(self, rt: ResourceType, ns: str | None, body: Any, query: dict[str, str],
               headers: dict[str, str], dry: bool) -> tuple[int, dict[str, Any], dict[str, str]]:
        obj = self._check_kind(rt, body)
        md = obj.setdefault("metadata", {})
        if not md.get("name") and md.get("generateName"):
            md["name"] = md["generateName"] + "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789")
                                                      for _ in range(5))
        self._check_namespace(rt, ns, obj)
        warnings = self._validate(rt, obj, query)
        with self.store.lock:
            key = self.key(rt, ns, md["name"])
            if self.store.get(key) is not None:
                raise already_exists(rt.gr, md["name"], rt.group, rt.plural)
            self._init_meta(rt, obj)
            ssa.record_update(None, obj, manager=self._manager(query, headers), api_version=rt.api_version,
                              now=now(), reset=("status",) if rt.status_subresource else ())
            stored = self._commit(rt, key, None, obj, dry)
        return 201, stored, _warn(warnings)

    def _init_meta(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        md = obj["metadata"]
        for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "managedFields",
                  "generation", "selfLink"):
            md.pop(k, None)
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = now()
        if rt.generation:
            md["generation"] = 1
        if rt.status_subresource:
            obj.pop("status", None)

    def _commit(self, rt: ResourceType, key: Key, old: dict[str, Any] | None, new: dict[str, Any],
                dry: bool) -> dict[str, Any]:
        self.hooks.prepare(rt, old, new)
        if dry:
            new.setdefault("metadata", {})["resourceVersion"] = (old or {}).get("metadata", {}).get(
                "resourceVersion", "")
            return self.out(rt, new)
        stored = self.store.put(key, new)
        if rt.kind == "CustomResourceDefinition":
            self.refresh_crd_types()
        self.hooks.written(rt, old, stored)
        return self.out(rt, stored)

    def _finish_update(self, rt: ResourceType, ns: str | None, old: dict[str, Any], new: dict[str, Any],
                       query: dict[str, str], dry: bool, sub: str | None) -> tuple[int, dict[str, Any], list[str]]:
        """Shared tail of update/patch/apply on an existing object: keep server fields, validate, write."""
        omd, nmd = old["metadata"], new.setdefault("metadata", {})
        if nmd.get("name") != omd["name"]:
            raise ApiError(400, f'the name of the object ({nmd.get("name")}) does not match the name on the URL '
                                f'({omd["name"]})')
        self._check_namespace(rt, ns, new)
        rv = nmd.get("resourceVersion")
        if rv not in (None, "") and rv != omd.get("resourceVersion"):
            raise conflict(rt.gr, omd["name"], rt.group, rt.plural,
                           "the object has been modified; please apply your changes to the latest version and "
                           "try again")
        for k in ("uid", "creationTimestamp", "deletionTimestamp"):
            if k in omd:
                nmd[k] = omd[k]
            else:
                nmd.pop(k, None)
        if sub == "status":
            status = new.get("status")
            sent = new.get("metadata") or {}
            new = copy.deepcopy(old)
            if rt.kind == "Pod":
                # A pod's status update keeps the labels and annotations it carries (Kubernetes'
                # pkg/registry/core/pod/strategy.go, podStatusStrategy.PrepareForUpdate resets only
                # the spec and ownerReferences): Multus writes network-status this way (UpdateStatus).
                for k in ("labels", "annotations"):
                    if sent.get(k) is not None:
                        new["metadata"][k] = sent[k]
                    else:
                        new["metadata"].pop(k, None)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif rt.status_subresource:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        warnings = self._validate(rt, new, query)
        if rt.generation:
            nmd["generation"] = omd.get("generation", 1)
            if _spec(new) != _spec(old):
                nmd["generation"] = omd.get("generation", 1) + 1
        else:
            nmd.pop("generation", None)
        nmd["resourceVersion"] = omd.get("resourceVersion")
        if new == old:
            return 200, self.out(rt, new), warnings  # a no-op writes nothing: resourceVersion unchanged
        return 200, self._commit(rt, self.key(rt, ns, omd["name"]), old, new, dry), warnings

    def _protobuf_status(self, rt: ResourceType, ns: str | None, name: str, body: bytes,
                         sub: str | None) -> dict[str, Any]:
        """A protobuf pods/status update (Multus'): its metadata, with the stored status kept."""
        if rt.kind != "Pod" or sub != "status":
            raise ApiError(415, "the sandbox server decodes protobuf only for pods/status updates; send JSON")
        try:
            obj = protobuf.decode_pod_metadata(body)
        except (protobuf.DecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"error decoding request body: {e}")
        with self.store.lock:
            old = self.store.get(self.key(rt, ns, name))
            if old is not None and "status" in old:
                obj["status"] = copy.deepcopy(old["status"])
        return obj

    def update(self, rt: ResourceType, ns: str | None, name: str, body: Any, query: dict[str, str],
               headers: dict[str, str], dry: bool, sub: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        new = self._check_kind(rt, body)
        with self.store.lock:
            old = self.store.get(self.key(rt, ns, name))
            if old is None:
                raise not_found(rt.gr, name, rt.group, rt.plural)
            ssa.record_update(old, new, manager=self._manager(query, headers), api_version=rt.api_version,
                              now=now(), reset=("status",) if rt.status_subresource and sub != "status" else ())
            code, out, warnings = self._finish_update(rt, ns, old, new, query, dry, sub)
        return code, out, _warn(warnings)

    def patch(self, rt: ResourceType, ns: str | None, name: str, ctype: str, body: bytes, query: dict[str, str],
              headers: dict[str, str], dry: bool, sub: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        kind = _PATCH_TYPES.get(ctype)
        if kind is None or (kind == "strategic" and not rt.builtin):
            raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: "
                                "application/json-patch+json, application/merge-patch+json, "
                                "application/apply-patch+yaml"
                                + (", application/strategic-merge-patch+json" if rt.builtin else ""))
        patch = parse_body(body)
        key = self.key(rt, ns, name)
        with self.store.lock:
            old = self.store.get(key)
            if kind == "apply":
                return self._apply(rt, ns, name, old, patch, query, dry, sub)
            if old is None:
                raise not_found(rt.gr, name, rt.group, rt.plural)
            if kind == "json":
                new = ssa.json_patch(old, patch)
            elif kind == "merge":
                new = ssa.json_merge_patch(old, patch)
            else:
                new = ssa.strategic_merge(old, patch)
            if not isinstance(new, dict):
                raise ApiError(422, "the patch must result in an object")
            new = self._check_kind(rt, new)
            ssa.record_update(old, new, manager=self._manager(query, headers), api_version=rt.api_version,
                              now=now(), reset=("status",) if rt.status_subresource and sub != "status" else ())
            code, out, warnings = self._finish_update(rt, ns, old, new, query, dry, sub)
        return code, out, _warn(warnings)

    def _apply(self, rt: ResourceType, ns: str | None, name: str, old: dict[str, Any] | None, patch: Any,
               query: dict[str, str], dry: bool, sub: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        manager = query.get("fieldManager", "")
        if not manager:
            raise invalid("PatchOptions", "meta.k8s.io", "", [(
                "fieldManager", "FieldValueRequired", "fieldManager: Required value: is required for apply patch")])
        if not isinstance(patch, dict) or not patch.get("apiVersion") or not patch.get("kind"):
            raise ApiError(400, "apiVersion and kind must be set in an apply patch")
        applied = self._check_kind(rt, patch)
        amd = applied.setdefault("metadata", {})
        if amd.get("name") not in (None, name):
            raise ApiError(400, f'the name of the object ({amd.get("name")}) does not match the name on the URL '
                                f"({name})")
        amd["name"] = name
        force = query.get("force") in ("true", "1", "True")
        reset = ("status",) if rt.status_subresource and sub != "status" else ()
        new = ssa.server_side_apply(old, applied, manager=manager, force=force, api_version=rt.api_version,
                                    now=now(), reset=reset)
        if old is None:
            self._check_namespace(rt, ns, new)
            warnings = self._validate(rt, new, query)
            managed = new["metadata"].get("managedFields")
            self._init_meta(rt, new)
            if managed is not None:
                new["metadata"]["managedFields"] = managed
            return 201, self._commit(rt, self.key(rt, ns, name), None, new, dry), _warn(warnings)
        code, out, warnings = self._finish_update(rt, ns, old, new, query, dry, sub)
        return code, out, _warn(warnings)

    def delete(self, rt: ResourceType, ns: str | None, name: str, opts: dict[str, Any], dry: bool) -> dict[str, Any]:
        key = self.key(rt, ns, name)
        with self.store.lock:
            old = self.store.get(key)
            if old is None:
                raise not_found(rt.gr, name, rt.group, rt.plural)
            pre = opts.get("preconditions") or {}
            md = old["metadata"]
            if pre.get("uid") and pre["uid"] != md.get("uid"):
                raise conflict(rt.gr, name, rt.group, rt.plural,
                               f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                               f"{md.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != md.get("resourceVersion"):
                raise conflict(rt.gr, name, rt.group, rt.plural,
                               f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                               f"ResourceVersion in object meta: {md.get('resourceVersion')}")
            if dry:
                return self.out(rt, old)
            gone = self.store.delete(key) or old
            if rt.kind == "CustomResourceDefinition":
                self.refresh_crd_types()
                spec = old.get("spec") or {}
                plural = (spec.get("names") or {}).get("plural", "")
                for o in self.store.items(spec.get("group", ""), plural):
                    m = o["metadata"]
                    self.store.delete((spec.get("group", ""), plural, m.get("namespace", ""), m["name"]))
            if rt.kind == "Namespace":
                for k in [k for t in self.types() if t.namespaced
                          for k in self._keys(t.group, t.plural, name)]:
                    self.store.delete(k)
            self.hooks.written(rt, old, None)
        return self.out(rt, gone)

    def _keys(self, group: str, plural: str, ns: str) -> list[Key]:
        return [(group, plural, ns, o["metadata"]["name"]) for o in self.store.items(group, plural, ns)]

    def delete_collection(self, rt: ResourceType, ns: str | None, query: dict[str, str], dry: bool) -> dict[str, Any]:
        listed = self.list(rt, ns, query)
        for o in listed["items"]:
            md = o["metadata"]
            self.delete(rt, md.get("namespace"), md["name"], {}, dry)
        return listed


def _warn(warnings: list[str]) -> dict[str, str]:
    return {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else {}


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# The top-level fields of the built-in kinds the sandbox serves (Kubernetes API reference, v1.33).
_BUILTIN_TOP_LEVEL: dict[str, frozenset[str]] = {
    "ConfigMap": frozenset({"data", "binaryData", "immutable"}),
    "Secret": frozenset({"data", "stringData", "type", "immutable"}),
    "ServiceAccount": frozenset({"secrets", "imagePullSecrets", "automountServiceAccountToken"}),
    "Namespace": frozenset({"spec", "status"}),
    "Pod": frozenset({"spec", "status"}),
    "Node": frozenset({"spec", "status"}),
    "DaemonSet": frozenset({"spec", "status"}),
    "CustomResourceDefinition": frozenset({"spec", "status"}),
    "ClusterRole": frozenset({"rules", "aggregationRule"}),
    "Role": frozenset({"rules"}),
    "ClusterRoleBinding": frozenset({"subjects", "roleRef"}),
    "RoleBinding": frozenset({"subjects", "roleRef"}),
}


def _builtin_problems(rt: ResourceType, obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The checks of Kubernetes' own validation that matter for the objects used here."""
    out: list[tuple[str, str, str]] = []
    kind = rt.kind
    if kind == "ConfigMap":
        for k, v in (obj.get("data") or {}).items():
            if not isinstance(v, str):
                out.append((f"data[{k}]", "FieldValueTypeInvalid", f"data[{k}]: Invalid value: must be a string"))
    elif kind == "DaemonSet":
        spec = obj.get("spec") or {}
        sel = ((spec.get("selector") or {}).get("matchLabels")) or {}
        labels = (((spec.get("template") or {}).get("metadata") or {}).get("labels")) or {}
        if not spec.get("selector"):
            out.append(("spec.selector", "FieldValueRequired", "spec.selector: Required value"))
        elif any(labels.get(k) != v for k, v in sel.items()):
            out.append(("spec.template.metadata.labels", "FieldValueInvalid",
                        f"spec.template.metadata.labels: Invalid value: {json.dumps(labels)}: `selector` does not "
                        "match template `labels`"))
        out += _pod_spec_problems(((spec.get("template") or {}).get("spec")) or {}, "spec.template.spec")
    elif kind == "Pod":
        out += _pod_spec_problems(obj.get("spec") or {}, "spec")
    elif kind == "CustomResourceDefinition":
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        group, plural = spec.get("group"), names.get("plural")
        if not group:
            out.append(("spec.group", "FieldValueRequired", "spec.group: Required value"))
        if not plural:
            out.append(("spec.names.plural", "FieldValueRequired", "spec.names.plural: Required value"))
        if not names.get("kind"):
            out.append(("spec.names.kind", "FieldValueRequired", "spec.names.kind: Required value"))
        if group and plural and obj["metadata"].get("name") != f"{plural}.{group}":
            out.append(("metadata.name", "FieldValueInvalid",
                        f'metadata.name: Invalid value: "{obj["metadata"].get("name")}": must be spec.names.plural+'
                        '"."+spec.group'))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            out.append(("spec.scope", "FieldValueNotSupported",
                        f'spec.scope: Unsupported value: "{spec.get("scope")}": supported values: "Cluster", '
                        '"Namespaced"'))
        versions = spec.get("versions") or []
        if not versions:
            out.append(("spec.versions", "FieldValueRequired", "spec.versions: Required value"))
        elif sum(1 for v in versions if v.get("storage")) != 1:
            out.append(("spec.versions", "FieldValueInvalid",
                        "spec.versions: Invalid value: must have exactly one version marked as storage version"))
    return out


def _pod_spec_problems(spec: dict[str, Any], field: str) -> list[tuple[str, str, str]]:
    out = []
    containers = spec.get("containers")
    if not containers:
        out.append((f"{field}.containers", "FieldValueRequired", f"{field}.containers: Required value"))
    for i, c in enumerate(containers or []):
        for req in ("name", "image"):
            if not isinstance(c, dict) or not c.get(req):
                out.append((f"{field}.containers[{i}].{req}", "FieldValueRequired",
                            f"{field}.containers[{i}].{req}: Required value"))
    return out
