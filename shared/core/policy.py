"""The operator's policy: settings from the environment, optionally overridden by Firestore.

Why two sources: the environment is set at deploy time (Terraform), while a platform team
often wants to change the node pool template or the allowed namespaces without a redeploy.
A `config/policy` document, when present, overrides the fields it names; unknown or invalid
fields there are reported (as a `ConfigError`) rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from shared.core.settings import ConfigError, NodePoolTemplate, Settings


@dataclass(frozen=True)
class Policy:
    opt_in_label: tuple[str, str]
    node_pool_template: NodePoolTemplate | None
    default_nads: tuple[Mapping[str, Any], ...]
    allowed_namespaces: tuple[str, ...]
    denied_namespaces: tuple[str, ...]
    max_nads_per_cluster: int
    prune_orphans: bool = False  # reconcile may delete conflicting managed NADs that have no record

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            opt_in_label=settings.opt_in_label,
            node_pool_template=settings.node_pool_template,
            default_nads=settings.default_nads,
            allowed_namespaces=settings.allowed_namespaces,
            denied_namespaces=settings.denied_namespaces,
            max_nads_per_cluster=settings.max_nads_per_cluster,
            prune_orphans=settings.prune_orphans,
        )

    def merged(self, doc: Mapping[str, Any] | None) -> Policy:
        """This policy with the fields of a Firestore `config/policy` document laid over it."""
        if not doc:
            return self
        src = "Firestore config/policy"
        known = {"optInLabel", "nodePoolTemplate", "defaultNads", "allowedNamespaces",
                 "deniedNamespaces", "maxNadsPerCluster", "pruneOrphans", "updatedAt", "updatedBy", "description"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"{src}: unknown field(s) {', '.join(unknown)}")
        out = self
        if "optInLabel" in doc:
            key, sep, value = str(doc["optInLabel"]).partition("=")
            if not sep or not key:
                raise ConfigError(f"{src}.optInLabel: expected key=value")
            out = replace(out, opt_in_label=(key, value))
        if "nodePoolTemplate" in doc:
            tpl = doc["nodePoolTemplate"]
            out = replace(out, node_pool_template=None if tpl is None else
                          NodePoolTemplate.from_mapping(tpl, source=f"{src}.nodePoolTemplate"))
        if "defaultNads" in doc:
            nads = doc["defaultNads"] or []
            if not isinstance(nads, list) or not all(isinstance(x, Mapping) for x in nads):
                raise ConfigError(f"{src}.defaultNads: expected a list of NAD request objects")
            out = replace(out, default_nads=tuple(dict(x) for x in nads))
        for field, attr in (("allowedNamespaces", "allowed_namespaces"), ("deniedNamespaces", "denied_namespaces")):
            if field in doc:
                value = doc[field] or []
                if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                    raise ConfigError(f"{src}.{field}: expected a list of namespace names")
                out = replace(out, **{attr: tuple(value)})
        if "maxNadsPerCluster" in doc:
            value = doc["maxNadsPerCluster"]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise ConfigError(f"{src}.maxNadsPerCluster: expected an integer in 1..1000")
            out = replace(out, max_nads_per_cluster=value)
        if "pruneOrphans" in doc:
            if not isinstance(doc["pruneOrphans"], bool):
                raise ConfigError(f"{src}.pruneOrphans: expected true or false, got {doc['pruneOrphans']!r}")
            out = replace(out, prune_orphans=doc["pruneOrphans"])
        return out

    def opted_in(self, labels: Mapping[str, str]) -> bool:
        key, value = self.opt_in_label
        return labels.get(key) == value

    def namespace_problem(self, namespace: str) -> str | None:
        """Why a namespace may not receive NADs, or None when it may."""
        if namespace in self.denied_namespaces:
            return f"namespace {namespace!r} is denied by policy (denied: {', '.join(self.denied_namespaces)})"
        if self.allowed_namespaces and namespace not in self.allowed_namespaces:
            return (f"namespace {namespace!r} is not in the policy's allowed namespaces "
                    f"({', '.join(self.allowed_namespaces)})")
        return None
