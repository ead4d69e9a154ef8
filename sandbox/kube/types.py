"""The resource types a sandbox API server serves: built-ins and those of Established CRDs.

One table drives routing, discovery and validation, so `kubectl`, the Python client and our
engine all see the same names (plural, kind, short names, categories, scope).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    # Whether metadata.generation is kept (objects with a spec the controllers observe).
    generation: bool = False
    builtin: bool = True
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    list_kind: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def gr(self) -> str:
        """`plural.group` as Kubernetes names a resource in messages ("configmaps", "ippools.whereabouts...")."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _t(group: str, version: str, plural: str, kind: str, namespaced: bool, short: tuple[str, ...] = (),
       cats: tuple[str, ...] = (), status: bool = False, generation: bool = False) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, kind.lower(), short, cats, status, generation)


BUILTINS: tuple[ResourceType, ...] = (
    _t("", "v1", "namespaces", "Namespace", False, ("ns",), status=True),
    _t("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    _t("", "v1", "secrets", "Secret", True),
    _t("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    _t("", "v1", "pods", "Pod", True, ("po",), ("all",), status=True),
    _t("", "v1", "nodes", "Node", False, ("no",), status=True),
    _t("", "v1", "events", "Event", True, ("ev",)),
    _t("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), ("all",), status=True, generation=True),
    _t("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _t("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _t("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _t("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _t("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
       ("crd", "crds"), ("api-extensions",), status=True, generation=True),
    # Whereabouts' kubernetes datastore takes a leader-election Lease named `whereabouts` before
    # each allocation (client-go's resourcelock.LeaseLock); Kubernetes serves it since 1.14.
    _t("coordination.k8s.io", "v1", "leases", "Lease", True),
)

# Group preference order in /apis, as a real server lists them (core first, then built-ins).
BUILTIN_GROUPS = ("apps", "rbac.authorization.k8s.io", "apiextensions.k8s.io", "coordination.k8s.io")


def types_of_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The served versions of an Established CRD, as resource types."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for v in spec.get("versions") or []:
        if not v.get("served", True):
            continue
        schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or None
        subs = v.get("subresources") or {}
        out.append(ResourceType(
            group=spec.get("group", ""), version=v.get("name", ""), plural=names.get("plural", ""),
            kind=names.get("kind", ""), namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular") or names.get("kind", "").lower(),
            short_names=tuple(names.get("shortNames") or ()), categories=tuple(names.get("categories") or ()),
            status_subresource="status" in subs, generation=True, builtin=False, schema=schema,
            list_kind=names.get("listKind") or names.get("kind", "") + "List",
        ))
    return out


def is_established(crd: dict[str, Any]) -> bool:
    for c in (crd.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Established" and c.get("status") == "True":
            return True
    return False
