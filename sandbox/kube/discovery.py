"""Legacy discovery documents (`/api`, `/api/v1`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`).

kubectl 1.27+ asks for the aggregated form first (`Accept: application/json;g=apidiscovery.k8s.io;
v=v2beta1|v2;as=APIGroupDiscoveryList,application/json`); answering the plain `application/json`
form, as Kubernetes releases before aggregated discovery do, makes it fall back to these
documents (tested with kubectl 1.27 and 1.33).
"""

from __future__ import annotations

from typing import Any

from sandbox.kube.types import BUILTIN_GROUPS, VERBS, ResourceType

SERVER_ADDRESS = [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]


def version_info() -> dict[str, Any]:
    return {"major": "1", "minor": "30", "gitVersion": "v1.30.5-gke.1014001", "gitCommit": "sandbox",
            "gitTreeState": "clean", "buildDate": "2024-10-01T00:00:00Z", "goVersion": "go1.22.6",
            "compiler": "gc", "platform": "linux/amd64"}


def core_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": SERVER_ADDRESS}


def _groups(types: list[ResourceType]) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {g: [] for g in BUILTIN_GROUPS}
    for t in types:
        if t.group and t.version not in order.setdefault(t.group, []):
            order[t.group].append(t.version)
    return {g: v for g, v in order.items() if v}


def _group_doc(name: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def group_list(types: list[ResourceType]) -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_doc(g, v) for g, v in _groups(types).items()]}


def group(types: list[ResourceType], name: str) -> dict[str, Any] | None:
    versions = _groups(types).get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(name, versions)}


def resource_list(types: list[ResourceType], group_name: str, version: str) -> dict[str, Any] | None:
    mine = [t for t in types if t.group == group_name and t.version == version]
    if not mine:
        return None
    resources: list[dict[str, Any]] = []
    for t in mine:
        r: dict[str, Any] = {"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
                             "kind": t.kind, "verbs": list(VERBS)}
        if t.short_names:
            r["shortNames"] = list(t.short_names)
        if t.categories:
            r["categories"] = list(t.categories)
        resources.append(r)
        if t.status_subresource:
            resources.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced,
                              "kind": t.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group_name}/{version}"
            if group_name else version, "resources": resources}


OPENAPI_V2_PROTO = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def openapi_v2(accept: str) -> tuple[bytes | dict[str, Any], dict[str, str], str]:
    """An OpenAPI v2 document with no definitions: kubectl then skips client-side schema validation.

    kubectl 1.27 asks for it as protobuf (gnostic `openapi_v2.Document`); field 1 is `swagger`, so
    `0a 03 "2.0"` is a complete, valid document. Newer kubectl tries `/openapi/v3` first (404 here,
    as on servers before 1.24) and then this one. Validation happens on the server (CR schemas).
    """
    if "protobuf" in accept:
        return b"\x0a\x032.0", {}, OPENAPI_V2_PROTO
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": version_info()["gitVersion"]},
            "paths": {}, "definitions": {}}, {}, "application/json"
