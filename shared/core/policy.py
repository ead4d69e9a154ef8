"""The operator's policy: settings from the environment, optionally overridden by Firestore.

Why two sources: the environment is set at deploy time (Terraform), while a platform team
often wants to change the node pool template or the allowed namespaces without a redeploy.
A `config/policy` document, when present, overrides the fields it names; unknown or invalid
fields there are reported (as a `ConfigError`) rather than silently ignored. Its images must come
from the seed's registry or one configured at deploy time (`allowed_registries`): the document
cannot widen that list, so a Firestore write cannot ship a foreign image as a privileged DaemonSet
(docs/SECURITY.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from shared.core.records import BundleOptions
from shared.core.requesters import DEFAULT_GRANTS, PROTECTED_NAMESPACES, Grant, parse_grants, protected_problem
from shared.core.settings import ConfigError, NodePoolTemplate, Settings


@dataclass(frozen=True)
class Policy:
    opt_in_label: tuple[str, str]
    node_pool_template: NodePoolTemplate | None
    default_nads: tuple[Mapping[str, Any], ...]
    allowed_namespaces: tuple[str, ...]
    denied_namespaces: tuple[str, ...]
    max_nads_per_cluster: int
    # The bundle (a change starts a rollout: docs/WORKFLOW.md "Bundle rollouts").
    multus_image: str | None = None
    whereabouts_image: str | None = None
    multus_log_level: str | None = None
    allow_unpinned_images: bool = False
    rollout_canary: int = 1
    rollout_wave_size: str = "25%"
    managed_projects: tuple[str, ...] = ()
    prune_orphans: bool = False  # reconcile may delete conflicting managed NADs that have no record
    # Who may ask for what (shared/core/requesters.py): `requesters` in config/policy; the
    # namespaces no request may touch (`protectedNamespaces`); the projects requests and events
    # may name (the deployment's project and the managed ones) when `restrict_projects`.
    requesters: tuple[Grant, ...] = DEFAULT_GRANTS
    protected_namespaces: tuple[str, ...] = PROTECTED_NAMESPACES
    project: str = ""
    restrict_projects: bool = False
    # Registries the images may come from besides the seed's (deploy-time settings only: the
    # Firestore document cannot name one, see `merged`).
    allowed_registries: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The deployment's policy; `ConfigError` when its images are outside the registry allowlist."""
        from shared.core.multus import registry_problem
        from shared.core.settings import PREFIX

        for name, image in (("MULTUS_IMAGE", settings.multus_image), ("WHEREABOUTS_IMAGE", settings.whereabouts_image)):
            why = registry_problem(image, settings.allowed_registries) if image else None
            if why:
                raise ConfigError(f"{PREFIX}{name}: {why}")
        return cls(
            opt_in_label=settings.opt_in_label,
            node_pool_template=settings.node_pool_template,
            default_nads=settings.default_nads,
            allowed_namespaces=settings.allowed_namespaces,
            denied_namespaces=settings.denied_namespaces,
            max_nads_per_cluster=settings.max_nads_per_cluster,
            multus_image=settings.multus_image,
            whereabouts_image=settings.whereabouts_image,
            multus_log_level=settings.multus_log_level,
            allow_unpinned_images=settings.allow_unpinned_images,
            rollout_canary=settings.rollout_canary,
            rollout_wave_size=settings.rollout_wave_size,
            managed_projects=settings.managed_projects,
            prune_orphans=settings.prune_orphans,
            project=settings.project,
            restrict_projects=settings.restrict_projects,
            allowed_registries=settings.allowed_registries,
        )

    def image_problem(self, image: str) -> str | None:
        """Why the bundle may not run `image` (the registry allowlist), or None."""
        from shared.core.multus import registry_problem

        return registry_problem(image, self.allowed_registries)

    def bundle_spec(self) -> BundleOptions:
        """The bundle options in force (a rollout records them as its target, with the version built)."""
        return BundleOptions(multus_image=self.multus_image, whereabouts_image=self.whereabouts_image,
                             log_level=self.multus_log_level)

    def merged(self, doc: Mapping[str, Any] | None) -> Policy:
        """This policy with the fields of a Firestore `config/policy` document laid over it."""
        if not doc:
            return self
        src = "Firestore config/policy"
        known = {"optInLabel", "nodePoolTemplate", "defaultNads", "allowedNamespaces",
                 "deniedNamespaces", "maxNadsPerCluster", "pruneOrphans", "updatedAt", "updatedBy", "description",
                 "multusImage", "whereaboutsImage", "multusLogLevel", "rolloutCanary", "rolloutWaveSize",
                 "managedProjects", "requesters", "protectedNamespaces"}
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
                names = doc[field] or []
                if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
                    raise ConfigError(f"{src}.{field}: expected a list of namespace names")
                change: dict[str, Any] = {attr: tuple(names)}
                out = replace(out, **change)
        if "maxNadsPerCluster" in doc:
            value = doc["maxNadsPerCluster"]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise ConfigError(f"{src}.maxNadsPerCluster: expected an integer in 1..1000")
            out = replace(out, max_nads_per_cluster=value)
        if "pruneOrphans" in doc:
            if not isinstance(doc["pruneOrphans"], bool):
                raise ConfigError(f"{src}.pruneOrphans: expected true or false, got {doc['pruneOrphans']!r}")
            out = replace(out, prune_orphans=doc["pruneOrphans"])
        if "requesters" in doc:
            try:
                grants = parse_grants(doc["requesters"], src=f"{src}.requesters")
            except ValueError as e:
                raise ConfigError(str(e)) from None
            out = replace(out, requesters=grants)
        if "protectedNamespaces" in doc:
            names = doc["protectedNamespaces"]
            if not isinstance(names, list) or not all(isinstance(x, str) and x for x in names):
                raise ConfigError(f"{src}.protectedNamespaces: expected a list of namespace names or prefix* patterns")
            out = replace(out, protected_namespaces=tuple(names))
        return _merge_fleet(out, doc, src)

    def opted_in(self, labels: Mapping[str, str]) -> bool:
        key, value = self.opt_in_label
        return labels.get(key) == value

    def namespace_problem(self, namespace: str) -> str | None:
        """Why a namespace may not receive (or lose) NADs, or None when it may."""
        protected = protected_problem(namespace, self.protected_namespaces)
        if protected:
            return protected
        if namespace in self.denied_namespaces:
            return f"namespace {namespace!r} is denied by policy (denied: {', '.join(self.denied_namespaces)})"
        if self.allowed_namespaces and namespace not in self.allowed_namespaces:
            return (f"namespace {namespace!r} is not in the policy's allowed namespaces "
                    f"({', '.join(self.allowed_namespaces)})")
        return None

    def known_projects(self) -> tuple[str, ...]:
        """The projects whose clusters the controller manages: the deployment's and the managed ones."""
        return tuple(dict.fromkeys(p for p in (self.project, *self.managed_projects) if p))

    def project_problem(self, project: str) -> str | None:
        """Why requests and events naming `project` are refused (None: it is managed). Checked before
        anything is recorded under a cluster, so invented clusters leave no PENDING record behind."""
        known = self.known_projects()
        if not self.restrict_projects or not known or project in known:
            return None
        return f"project {project!r} is not managed by this controller (managed: {', '.join(known)})"


def _merge_fleet(out: Policy, doc: Mapping[str, Any], src: str) -> Policy:
    """The bundle and fleet fields: images and log level (checked as the bundle checks them),
    the rollout's canary count and wave size, the managed projects."""
    from shared.core.errors import Rejected
    from shared.core.multus import check_image, check_log_level
    from shared.core.refs import valid_project_id
    from shared.core.waves import WaveSize

    for field, attr in (("multusImage", "multus_image"), ("whereaboutsImage", "whereabouts_image")):
        if field in doc:
            value = doc[field]
            if value is not None:
                problems = check_image(value, field=field, allow_unpinned=out.allow_unpinned_images)
                if problems:
                    raise ConfigError(f"{src}.{field}: " + "; ".join(p.message for p in problems))
                foreign = out.image_problem(value)
                if foreign:  # refused before any rollout: every handler validates the policy first
                    raise ConfigError(f"{src}.{field}: {foreign}")
            out = replace(out, **{attr: value})
    if "multusLogLevel" in doc:
        value = doc["multusLogLevel"]
        if value is not None:
            level, problems = check_log_level(value, field="multusLogLevel")
            if problems:
                raise ConfigError(f"{src}.multusLogLevel: {problems[0].message}")
            value = level
        out = replace(out, multus_log_level=value)
    if "rolloutCanary" in doc:
        value = doc["rolloutCanary"]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000:
            raise ConfigError(f"{src}.rolloutCanary: expected an integer in 0..1000")
        out = replace(out, rollout_canary=value)
    if "rolloutWaveSize" in doc:
        try:
            WaveSize.parse(doc["rolloutWaveSize"], field="rolloutWaveSize")
        except Rejected as e:
            raise ConfigError(f"{src}.rolloutWaveSize: {e.problems[0].message}") from None
        out = replace(out, rollout_wave_size=str(doc["rolloutWaveSize"]))
    if "managedProjects" in doc:
        value = doc["managedProjects"] or []
        if not isinstance(value, list) or not all(valid_project_id(x) for x in value):
            raise ConfigError(f"{src}.managedProjects: expected a list of project ids")
        out = replace(out, managed_projects=tuple(value))
    return out
