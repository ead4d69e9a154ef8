"""The cluster API adapter: server-side apply of the bundle and NADs, waits, reads.

One HTTP request per object applied (PATCH `application/apply-patch+yaml`, field manager
`multus-provisioner`, `force=true`), URLs from a static table of the kinds used (no discovery
round-trips), and every failure mapped once, here, to the controller's error types:

- 400/401/403/404/422 (and other 4xx but 408/409/429) -> `Permanent` with the API's message;
- 409, 429, 5xx, timeouts and connection errors -> `Transient` (Pub/Sub redelivers).

`kubernetes` is imported by the caller that builds the `ApiClient` (the GKE adapter); this
module only uses the client's REST layer, so a cold start that never talks to a cluster pays
nothing for it. `requests` counts the HTTP calls made, for the per-install and per-NAD figures.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from shared.core.errors import NotYet, Permanent, Problem, Rejected, Transient
from shared.core.multus import object_key
from shared.core.observed import ApplyResult, Key, Listed, Rollout

FIELD_MANAGER = "multus-provisioner"
MANAGED_BY = ("app.kubernetes.io/managed-by", "multus-provisioner")
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
NAD_API_VERSION = "k8s.cni.cncf.io/v1"
NAD_KIND = "NetworkAttachmentDefinition"
DEFAULT_TIMEOUT = 30.0

# (apiVersion, kind) -> (URL prefix, plural, namespaced): every kind the controller touches.
ROUTES: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", True),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "Pod"): ("/api/v1", "pods", True),
    ("v1", "Event"): ("/api/v1", "events", True),
    ("v1", "Node"): ("/api/v1", "nodes", False),
    ("apps/v1", "DaemonSet"): ("/apis/apps/v1", "daemonsets", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"):
        ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    (NAD_API_VERSION, NAD_KIND): ("/apis/k8s.cni.cncf.io/v1", "network-attachment-definitions", True),
    ("whereabouts.cni.cncf.io/v1alpha1", "IPPool"): ("/apis/whereabouts.cni.cncf.io/v1alpha1", "ippools", True),
    ("whereabouts.cni.cncf.io/v1alpha1", "OverlappingRangeIPReservation"):
        ("/apis/whereabouts.cni.cncf.io/v1alpha1", "overlappingrangeipreservations", True),
}

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RBAC_NAME = re.compile(r"^[^/%]+$")
_PERMANENT = {400, 401, 403, 404, 405, 406, 413, 415, 422}

class Kube:
    """Talks to one cluster through a ready `kubernetes.client.ApiClient` (host, CA, token)."""

    def __init__(self, api_client: Any, *, timeout: float = DEFAULT_TIMEOUT,
                 field_manager: str = FIELD_MANAGER) -> None:
        self._client = api_client
        self._timeout = timeout
        self.field_manager = field_manager
        self.requests = 0
        self._seen: dict[Key, str] = {}  # key -> content digest of the last apply response

    # ------------------------------------------------------------ URLs and validation
    @staticmethod
    def _route(api_version: str, kind: str, namespace: str | None, name: str | None = None,
               *, field: str = "") -> str:
        route = ROUTES.get((api_version, kind))
        if route is None:
            raise Rejected("unsupported object", [Problem(f"{field}kind", f"no route for {api_version} {kind}; "
                                                                          f"supported: {_supported()}")])
        prefix, plural, namespaced = route
        problems = []
        if name is not None:
            rx = _RBAC_NAME if api_version.startswith("rbac.") else (_LABEL if kind == "Namespace" else _SUBDOMAIN)
            if not isinstance(name, str) or not name or len(name) > 253 or not rx.match(name) or name in (".", ".."):
                problems.append(Problem(f"{field}metadata.name", f"invalid {kind} name {name!r}"))
        if namespaced and (not isinstance(namespace, str) or not _LABEL.match(namespace) or len(namespace) > 63):
            problems.append(Problem(f"{field}metadata.namespace", f"invalid namespace {namespace!r} for {kind}"))
        if problems:
            raise Rejected("invalid Kubernetes object reference", problems)
        path = prefix
        if namespaced:
            path += f"/namespaces/{quote(namespace or '', safe='')}"
        path += f"/{plural}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        return path

    # ------------------------------------------------------------ HTTP
    def _call(self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: Any = None,
              content_type: str = "application/json", allow_404: bool = False,
              ) -> tuple[int, dict[str, Any] | None, Mapping[str, str]]:
        """One HTTP request; returns (status, parsed JSON body, headers); maps failures."""
        cfg = self._client.configuration
        url = cfg.host.rstrip("/") + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": f"{self.field_manager}/kube"}
        headers.update(getattr(self._client, "default_headers", {}) or {})
        for auth in (cfg.auth_settings() or {}).values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            # The REST layer JSON-encodes bodies of JSON content types itself; others go as text.
            data = body if "json" in content_type else json.dumps(body)
        self.requests += 1
        status, text, resp_headers = self._send(method, url, headers, data)
        if allow_404 and status == 404:
            return status, None, resp_headers
        if not 200 <= status <= 299:
            raise _mapped(status, text, method, path)
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            raise Transient(f"{method} {path}: the API answered {status} with a body that is not JSON",
                            code=status, api="kubernetes")
        return status, parsed, resp_headers

    def _send(self, method: str, url: str, headers: dict[str, str], data: Any) -> tuple[int, str, Any]:
        from kubernetes.client.exceptions import ApiException  # lazy: see the module docstring
        from urllib3.exceptions import HTTPError

        try:
            resp = self._client.rest_client.request(method, url, headers=headers, body=data,
                                                    _request_timeout=self._timeout)
        except ApiException as e:  # older clients raise for non-2xx; status 0 = TLS/transport failure
            if not e.status:
                raise Transient(f"{method} {url}: {e.reason}", code="UNAVAILABLE", api="kubernetes")
            body = e.body.decode("utf-8", "replace") if isinstance(e.body, bytes) else (e.body or "")
            return e.status, body, e.headers or {}
        except (HTTPError, OSError) as e:
            raise Transient(f"{method} {url}: {type(e).__name__}: {e}", code="UNAVAILABLE", api="kubernetes")
        raw = resp.data if getattr(resp, "data", None) is not None else resp.read()
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
        return resp.status, text, resp.headers

    # ------------------------------------------------------------ apply
    def _apply_one(self, obj: Mapping[str, Any], index: int | None, *, force: bool = True) -> ApplyResult:
        field = f"objects[{index}]." if index is not None else ""
        if not isinstance(obj, Mapping):
            raise Rejected("invalid Kubernetes object", [Problem(field.rstrip("."), "expected a mapping")])
        md = obj.get("metadata") or {}
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            raise Rejected("invalid Kubernetes object", [Problem(f"{field}apiVersion", "apiVersion and kind "
                                                                                        "must be strings")])
        ns = md.get("namespace") if ROUTES.get((api_version, kind), ("", "", False))[2] else None
        path = self._route(api_version, kind, ns, md.get("name"), field=field)
        key = object_key(obj)
        status, out, headers = self._call(
            "PATCH", path, query={"fieldManager": self.field_manager, "force": "true" if force else "false"},
            body=dict(obj),
            content_type="application/apply-patch+yaml")
        out = out or {}
        rv = str((out.get("metadata") or {}).get("resourceVersion", ""))
        changed = self._changed(key, status, out, headers)
        return ApplyResult(key, changed, rv)

    def _changed(self, key: Key, status: int, out: dict[str, Any], headers: Mapping[str, str]) -> bool:
        """Whether an apply changed the object, decided from its single response.

        Created (201) -> True. Otherwise, if this instance saw the object before, compare its
        content (without resourceVersion, managedFields and status, which controllers move).
        Failing that, our manager's managedFields `time` only moves when an apply changes
        something, so a time within 2 s of the response's `Date` means this apply changed it
        (it also says True for an unchanged object that we changed less than 2 s earlier).
        """
        digest = _content(out)
        before = self._seen.get(key)
        self._seen[key] = digest
        if status == 201:
            return True
        if before is not None:
            return before != digest
        mine = [m for m in (out.get("metadata") or {}).get("managedFields") or []
                if m.get("manager") == self.field_manager and m.get("operation") == "Apply"]
        date = headers.get("Date") or headers.get("date")
        if not mine or not date:
            return True
        try:
            applied = datetime.strptime(mine[0]["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            now = email.utils.parsedate_to_datetime(date)
        except (KeyError, TypeError, ValueError):
            return True
        return abs((now - applied).total_seconds()) <= 2

    def apply(self, objects: Iterable[Mapping[str, Any]]) -> list[ApplyResult]:
        """Server-side apply each object, in order, one PATCH each; stops at the first failure.

        Applying the same objects again changes nothing on the server (same resourceVersions).
        """
        return [self._apply_one(o, i) for i, o in enumerate(objects)]

    # ------------------------------------------------------------ reads and waits
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        path = self._route(api_version, kind, namespace, name)
        _, out, _ = self._call("GET", path, allow_404=True)
        return out

    @staticmethod
    def rollout_of(ds: Mapping[str, Any]) -> Rollout:
        """A DaemonSet object's rollout, as its status reports it (no request)."""
        st = ds.get("status") or {}
        gen = (ds.get("metadata") or {}).get("generation")
        return Rollout(desired=int(st.get("desiredNumberScheduled") or 0),
                       updated=int(st.get("updatedNumberScheduled") or 0),
                       ready=int(st.get("numberReady") or 0), available=int(st.get("numberAvailable") or 0),
                       observed=gen is not None and st.get("observedGeneration") == gen)

    def wait_established(self, crd_names: Iterable[str], *, timeout: float = 60.0, poll: float = 1.0) -> int:
        """Poll (one LIST per poll) until every CRD named is Established; returns the polls made."""
        wanted = sorted(set(crd_names))
        for n in wanted:
            self._route("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, n)
        deadline = time.monotonic() + timeout
        polls = 0
        while True:
            polls += 1
            _, out, _ = self._call("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
            established = {i["metadata"]["name"] for i in (out or {}).get("items") or []
                           if any(c.get("type") == "Established" and c.get("status") == "True"
                                  for c in (i.get("status") or {}).get("conditions") or [])}
            missing = [n for n in wanted if n not in established]
            if not missing:
                return polls
            if time.monotonic() + poll > deadline:
                raise NotYet(f"CRDs not Established after {timeout:g}s: {', '.join(missing)}", api="kubernetes")
            time.sleep(poll)

    def daemonset_rollout(self, namespace: str, name: str) -> Rollout:
        """The DaemonSet's rollout as its status reports it now (one GET, no waiting)."""
        _, ds, _ = self._call("GET", self._route("apps/v1", "DaemonSet", namespace, name))
        return self.rollout_of(ds or {})

    # ------------------------------------------------------------ NADs
    def apply_nad(self, obj: Mapping[str, Any], *, listed: Listed | None = None) -> ApplyResult:
        """Server-side apply one NetworkAttachmentDefinition (a GET, then the PATCH; the PATCH
        alone when `listed` says what a LIST made after the caller's claim found by that name).

        A NAD of that name that is not the controller's (`nad.foreign_nad`) raises `NotOurs` and
        is left untouched; only one the controller owns is applied with `force`. A new one is
        applied without it, so one created by someone else in between is a conflict, not a takeover.
        """
        from shared.core.nad import CLUSTER_ANNOTATION, refuse_foreign

        if obj.get("apiVersion") != NAD_API_VERSION or obj.get("kind") != NAD_KIND:
            raise Rejected("not a NetworkAttachmentDefinition",
                           [Problem("kind", f"expected {NAD_API_VERSION} {NAD_KIND}, got "
                                            f"{obj.get('apiVersion')!r} {obj.get('kind')!r}")])
        md = obj.get("metadata") or {}
        cluster = (md.get("annotations") or {}).get(CLUSTER_ANNOTATION)
        if listed is None:
            live = self._owned(md.get("namespace"), md.get("name"), cluster)
        else:
            live = listed.live
            refuse_foreign(live, cluster)
        return self._apply_one(obj, None, force=live is not None)

    def delete_nad(self, namespace: str, name: str, *, cluster: str | None = None) -> bool:
        """Delete a NAD the controller owns (of `cluster`, when given); False if it did not exist.
        One that is not the controller's raises `NotOurs`. A GET, then a DELETE preconditioned on
        the uid seen, so an object replaced in between is not deleted either."""
        live = self._owned(namespace, name, cluster)
        if live is None:
            return False
        uid = (live.get("metadata") or {}).get("uid")
        status, _, _ = self._call("DELETE", self._route(NAD_API_VERSION, NAD_KIND, namespace, name),
                                  body={"preconditions": {"uid": uid}} if uid else None, allow_404=True)
        return status != 404

    def _owned(self, namespace: Any, name: Any, cluster: str | None) -> dict[str, Any] | None:
        """The NAD on the cluster (None: there is none), after checking it is the controller's."""
        from shared.core.nad import refuse_foreign

        live = self.get(NAD_API_VERSION, NAD_KIND, namespace, name)
        refuse_foreign(live, cluster)
        return live

    def list_nads(self) -> list[dict[str, Any]]:
        """Every NAD on the cluster, in every namespace (one LIST): the managed ones and anyone else's."""
        _, out, _ = self._call("GET", "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions")
        return list((out or {}).get("items") or [])

    def list_managed_nads(self) -> list[dict[str, Any]]:
        """NADs labelled `app.kubernetes.io/managed-by=multus-provisioner`, in every namespace."""
        _, out, _ = self._call("GET", "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions",
                               query={"labelSelector": f"{MANAGED_BY[0]}={MANAGED_BY[1]}"})
        return list((out or {}).get("items") or [])

    # ------------------------------------------------------------ addresses (ranges, reconcile)
    def list_ippools(self) -> list[dict[str, Any]]:
        """Whereabouts' IPPool objects in every namespace (one LIST); [] before its CRD serves."""
        status, out, _ = self._call("GET", "/apis/whereabouts.cni.cncf.io/v1alpha1/ippools", allow_404=True)
        return [] if status == 404 else list((out or {}).get("items") or [])

    def list_pod_refs(self) -> list[str]:
        """`namespace/name` of every pod (one LIST), to tell stale Whereabouts allocations apart."""
        _, out, _ = self._call("GET", "/api/v1/pods")
        return [f"{(p.get('metadata') or {}).get('namespace', '')}/{(p.get('metadata') or {}).get('name', '')}"
                for p in (out or {}).get("items") or []]

    # ------------------------------------------------------------ pods (verification)
    def create_pod(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        md = obj.get("metadata") or {}
        ns = md.get("namespace") or "default"
        path = self._route("v1", "Pod", ns, None)
        self._route("v1", "Pod", ns, md.get("name"))  # validates the name
        _, out, _ = self._call("POST", path, body={**obj, "metadata": {**md, "namespace": ns}})
        return out or {}

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("v1", "Pod", namespace, name)

    def delete_pod(self, namespace: str, name: str) -> bool:
        status, _, _ = self._call("DELETE", self._route("v1", "Pod", namespace, name), allow_404=True)
        return status != 404

    def list_pods(self, label_selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Pods matching `label_selector` (one LIST), in one namespace (a DaemonSet's pods) or in
        every namespace (reconcile's sweep of leftover verify pods)."""
        path = self._route("v1", "Pod", namespace, None) if namespace else "/api/v1/pods"
        _, out, _ = self._call("GET", path, query={"labelSelector": label_selector})
        return list((out or {}).get("items") or [])

    def pod_network_status(self, namespace: str, name: str) -> list[dict[str, Any]] | None:
        """The pod's parsed `k8s.v1.cni.cncf.io/network-status`; None while absent (or no pod)."""
        pod = self.get_pod(namespace, name)
        text = (((pod or {}).get("metadata") or {}).get("annotations") or {}).get(NETWORK_STATUS)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError as e:
            raise Permanent(f"pod {namespace}/{name}: {NETWORK_STATUS} is not JSON: {e}", api="kubernetes")
        if not isinstance(value, list):
            raise Permanent(f"pod {namespace}/{name}: {NETWORK_STATUS} is not a list", api="kubernetes")
        return value

    def pod_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Events about the pod, oldest first (why a pod is Pending: FailedCreatePodSandBox...)."""
        path = self._route("v1", "Event", namespace, None)
        self._route("v1", "Pod", namespace, name)
        _, out, _ = self._call("GET", path, query={
            "fieldSelector": f"involvedObject.kind=Pod,involvedObject.name={name}"})
        items = list((out or {}).get("items") or [])
        return sorted(items, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "",
                                            (e.get("metadata") or {}).get("name", "")))

    # Last in the class: a method named `list` would shadow the builtin in the annotations after it.
    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (in `namespace` for namespaced kinds), one LIST request."""
        path = self._route(api_version, kind, namespace, None)
        _, out, _ = self._call("GET", path)
        return list((out or {}).get("items") or [])


def _content(obj: Mapping[str, Any]) -> str:
    """A stable text of what an object says, without what the server and controllers write."""
    md = {k: v for k, v in (obj.get("metadata") or {}).items()
          if k not in ("resourceVersion", "managedFields", "generation")}
    rest = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    return json.dumps([md, rest], sort_keys=True)


def _supported() -> str:
    return ", ".join(sorted(f"{k}" for _, k in ROUTES))


def _mapped(status: int, text: str, method: str, path: str) -> Exception:
    message, reason = "", ""
    try:
        body = json.loads(text) if text else {}
        if isinstance(body, dict):
            message, reason = str(body.get("message") or ""), str(body.get("reason") or "")
    except ValueError:
        pass
    message = message or (text or "").strip()[:500] or f"HTTP {status}"
    full = f"{message} ({method} {path}: {status}{' ' + reason if reason else ''})"
    if status == 403:
        full += _forbidden_hint(message, path)
    if status in _PERMANENT or (400 <= status < 500 and status not in (408, 409, 410, 429)):
        return Permanent(full, code=status, api="kubernetes")
    return Transient(full, code=status, api="kubernetes")


def _forbidden_hint(message: str, path: str) -> str:
    """What a 403 means for this controller: its in-cluster rights are the RBAC an operator applies
    at opt-in (shared/rbac/controller.yaml), so a refusal names the verb that is missing there."""
    if "attempting to grant RBAC permissions not currently held" in message:
        verb = "bind" if "/clusterrolebindings/" in path or "/rolebindings/" in path else "escalate"
        name = path.rstrip("/").rsplit("/", 1)[-1]
        what = "the ClusterRole it binds" if verb == "bind" else f"clusterroles/{name}"
        return (f"; the controller's RBAC lacks `{verb}` on {what} "
                "(apply `multus-provisioner render-rbac` at opt-in, docs/DEPLOY.md)")
    return ("; the controller's RBAC in this cluster does not allow it "
            "(`multus-provisioner render-rbac`, docs/DEPLOY.md)")
