"""One way to name a GKE cluster, whatever form an event or a user used.

GKE resource names come as `projects/P/locations/L/clusters/C` or the older
`projects/P/zones/Z/clusters/C`; audit logs give labels instead. Every form becomes one
`ClusterRef`, whose `doc_id` (`P~L~C`) keys the cluster's Firestore document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.core.errors import Problem, Rejected

# GCP project ids: 6-30 chars, lowercase letters, digits, hyphens; may carry a domain prefix
# ("example.com:proj"). Locations: regions/zones. Cluster names: lowercase, digits, hyphens, <= 40.
_PROJECT = re.compile(r"^(?:[a-z][a-z0-9.-]{0,62}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_LOCATION = re.compile(r"^[a-z]+-[a-z]+[0-9]+(?:-[a-z])?$")
_CLUSTER = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_NODE_POOL = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_PATH = re.compile(
    r"^(?://container\.googleapis\.com/)?projects/(?P<p>[^/]+)/(?:locations|zones)/(?P<l>[^/]+)"
    r"/clusters/(?P<c>[^/]+)(?:/nodePools/(?P<np>[^/]+))?$"
)


@dataclass(frozen=True, order=True)
class ClusterRef:
    project: str
    location: str
    cluster: str

    @property
    def path(self) -> str:
        """The canonical GKE resource name (`locations/` form)."""
        return f"projects/{self.project}/locations/{self.location}/clusters/{self.cluster}"

    @property
    def doc_id(self) -> str:
        return f"{self.project}~{self.location}~{self.cluster}"

    def __str__(self) -> str:
        return self.path

    @classmethod
    def of(cls, project: str, location: str, cluster: str, *, field: str = "cluster") -> ClusterRef:
        problems = check_parts(project, location, cluster, field=field)
        if problems:
            raise Rejected("invalid cluster reference", problems)
        return cls(project, location, cluster)

    @classmethod
    def parse(cls, text: object, *, field: str = "cluster") -> ClusterRef:
        """Parse a resource name (`locations/` or `zones/` form, with or without `//container...`)."""
        ref, _ = parse_resource_name(text, field=field)
        return ref

    @classmethod
    def from_doc_id(cls, doc_id: str) -> ClusterRef:
        parts = doc_id.split("~")
        if len(parts) != 3:
            raise Rejected("invalid cluster document id", [Problem("cluster", repr(doc_id))])
        return cls.of(*parts)


def check_parts(project: object, location: object, cluster: object, *, field: str = "cluster") -> list[Problem]:
    problems = []
    for what, value, rx in (("project", project, _PROJECT), ("location", location, _LOCATION),
                            ("cluster name", cluster, _CLUSTER)):
        if not isinstance(value, str) or not rx.fullmatch(value):
            problems.append(Problem(field, f"invalid {what} {value!r}"))
    return problems


def parse_resource_name(text: object, *, field: str = "cluster") -> tuple[ClusterRef, str | None]:
    """Parse a cluster or node pool resource name into (ClusterRef, node pool name or None)."""
    if not isinstance(text, str):
        raise Rejected("invalid cluster reference",
                       [Problem(field, f"expected a string like projects/P/locations/L/clusters/C, "
                                       f"got {type(text).__name__}")])
    m = _PATH.fullmatch(text)
    if not m:
        raise Rejected("invalid cluster reference",
                       [Problem(field, f"expected projects/P/locations/L/clusters/C (or zones/Z), got {text[:200]!r}")])
    ref = ClusterRef.of(m["p"], m["l"], m["c"], field=field)
    np = m["np"]
    if np is not None and not _NODE_POOL.fullmatch(np):
        raise Rejected("invalid node pool name", [Problem(field, f"invalid node pool name {np!r}")])
    return ref, np


def valid_node_pool_name(name: object) -> bool:
    return isinstance(name, str) and bool(_NODE_POOL.fullmatch(name))


def valid_project_id(text: object) -> bool:
    """A GCP project id (the rule every ClusterRef's project follows)."""
    return isinstance(text, str) and bool(_PROJECT.fullmatch(text))
