"""Can this GKE cluster take Multus + IPVLAN + Whereabouts? Pure checks with the fix for each gap.

The procedure (PROCEDURE.md steps 2-3) needs a Standard cluster at 1.28 or later with Dataplane
V2, IP aliases and multi-networking, plus a node pool with an additional node network and an
additional pod network. The checks read the cluster as the GKE API returns it, in either form the
controller meets: a `container_v1.Cluster` / `NodePool` proto (from the client library) or the
REST JSON that `gcloud container clusters describe --format=json` prints (camelCase; snake_case
keys are accepted too). Protos are converted to that JSON shape once with protobuf's own
`json_format`, so one code path reads both and nothing here imports the GKE client.

Every check yields a `Finding` with a stable `id` that other code keys on, and a `fix`: the gcloud
flag or command that closes the gap. A cluster that fails only `node-pool-networks` is not
ineligible: it waits for (or gets) a node pool; `blocking()` tells the two apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.core.endpoints import EndpointFields
from shared.core.errors import Problem, Rejected

MIN_VERSION = (1, 28, 0)
ADVANCED_DATAPATH = "ADVANCED_DATAPATH"

# Stable finding ids (the workflow, Firestore documents and the CLI key on them).
VERSION = "version"
AUTOPILOT = "autopilot"
DATAPLANE_V2 = "dataplane-v2"
IP_ALIAS = "ip-alias"
MULTI_NETWORKING = "multi-networking"
NODE_POOL_NETWORKS = "node-pool-networks"
RANGE_CAPACITY = "range-capacity"
CLUSTER_CHECKS = (VERSION, AUTOPILOT, DATAPLANE_V2, IP_ALIAS, MULTI_NETWORKING)

ERROR = "error"
WARNING = "warning"

# GKE versions: 1.30.5-gke.1014001, 1.28.0-gke.1, also plain 1.29 / 1.29.3.
_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})(?:\.(\d{1,6}))?(?:-[0-9A-Za-z][0-9A-Za-z.-]{0,63})?$")
_DIGITS = re.compile(r"^[0-9]{1,9}$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")


@dataclass(frozen=True)
class Finding:
    """One reason the cluster is not ready for Multus, and how to fix it."""

    id: str
    severity: str  # "error" | "warning"
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "severity": self.severity, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class PodNetwork:
    """An additional pod network of a node pool: where the pods' second addresses come from."""

    subnetwork: str
    secondary_pod_range: str
    max_pods_per_node: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"subnetwork": self.subnetwork, "secondary_pod_range": self.secondary_pod_range,
                "max_pods_per_node": self.max_pods_per_node}


@dataclass(frozen=True)
class PoolNetworks:
    """The networking facts of one node pool that decide whether Multus pods can run on it."""

    name: str
    node_networks: tuple[tuple[str, str], ...] = ()  # (network, subnetwork)
    pod_networks: tuple[PodNetwork, ...] = ()
    status: str = ""
    # Per zone, as GKE counts them (initialNodeCount, autoscaling.maxNodeCount), and the pool's
    # zones: only the range-capacity check reads them (not in to_dict() nor in comparisons).
    node_count: int = field(default=0, compare=False)
    max_node_count: int = field(default=0, compare=False)
    locations: tuple[str, ...] = field(default=(), compare=False)

    @property
    def suitable(self) -> bool:
        """At least one additional node network (the `eth1` master) and one additional pod network."""
        return bool(self.node_networks) and bool(self.pod_networks)

    def interface_of(self, subnetwork: str) -> str:
        """The node's NIC on `subnetwork`: GKE gives a node `eth0` on the primary network and `eth1`,
        `eth2`, ... on its pool's additional node networks, in their order (docs/WORKFLOW.md,
        `nodePool.interface`). IPVLAN's `master` must be that NIC: a node has no other link on the network."""
        want = subnetwork.rsplit("/", 1)[-1]
        for i, (_, sub) in enumerate(self.node_networks):
            if sub.rsplit("/", 1)[-1] == want:
                return f"eth{i + 1}"
        return "eth1"

    @classmethod
    def of(cls, pool: Any, *, field: str = "nodePool") -> PoolNetworks:
        """From a `container_v1.NodePool`, its REST JSON, or a `PoolNetworks` (returned as is)."""
        if isinstance(pool, PoolNetworks):
            return pool
        r = _Reader()
        facts = _pool_from(r, _as_json(pool, field), field)
        r.raise_if_any("invalid node pool")
        return facts

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status,
                "node_networks": [{"network": n, "subnetwork": s} for n, s in self.node_networks],
                "pod_networks": [p.to_dict() for p in self.pod_networks]}


@dataclass(frozen=True)
class ClusterFacts:
    """What the prechecks and the workflow need to know about a cluster, in one plain value.

    `labels` is the cluster's `resourceLabels` (a plain dict, so instances are not hashable).
    """

    name: str
    location: str
    version: str
    status: str
    labels: dict[str, str] = field(default_factory=dict)
    autopilot: bool = False
    dataplane_v2: bool = False
    ip_alias: bool = False
    multi_networking: bool = False
    endpoint: str = ""
    node_pools: tuple[PoolNetworks, ...] = ()
    # This incarnation's identity (`id`, new on every re-creation; `createTime`) and how its control
    # plane is reached (the endpoint fields and the base64 CA certificate, both public): read by the
    # workflow and the GKE adapter, never by the prechecks, so left out of `to_dict`, the digest and
    # comparisons.
    cluster_id: str = field(default="", compare=False)
    create_time: str = field(default="", compare=False)
    endpoints: EndpointFields | None = field(default=None, compare=False)
    ca_certificate: str = field(default="", compare=False, repr=False)

    @classmethod
    def of(cls, cluster: Any) -> ClusterFacts:
        """From a `container_v1.Cluster`, its REST JSON, or a `ClusterFacts` (returned as is).

        Raises `Rejected` naming every field whose type is wrong (e.g. `nodePools[0].name`).
        """
        if isinstance(cluster, ClusterFacts):
            return cluster
        r = _Reader()
        d = _as_json(cluster, "cluster")
        net = r.obj(d, "networkConfig", "cluster")
        pools = [_pool_from(r, p, f"cluster.nodePools[{i}]")
                 for i, p in enumerate(r.items(d, "nodePools", "cluster"))]
        # A cluster still being created may not report its current version yet.
        version = (r.text(d, "currentMasterVersion", "cluster")
                   or r.text(d, "initialClusterVersion", "cluster"))
        ip_policy = r.obj(d, "ipAllocationPolicy", "cluster")
        facts = cls(
            name=r.text(d, "name", "cluster"),
            location=r.text(d, "location", "cluster") or r.text(d, "zone", "cluster"),
            version=version,
            status=_status(r.text(d, "status", "cluster")),
            labels=r.labels(d, "resourceLabels", "cluster"),
            autopilot=r.flag(r.obj(d, "autopilot", "cluster"), "enabled", "cluster.autopilot"),
            dataplane_v2=r.text(net, "datapathProvider", "cluster.networkConfig") == ADVANCED_DATAPATH,
            ip_alias=r.flag(ip_policy, "useIpAliases", "cluster.ipAllocationPolicy"),
            multi_networking=r.flag(net, "enableMultiNetworking", "cluster.networkConfig"),
            endpoint=r.text(d, "endpoint", "cluster"),
            node_pools=tuple(pools),
            cluster_id=r.text(d, "id", "cluster"),
            create_time=r.text(d, "createTime", "cluster"),
        )
        r.raise_if_any("invalid cluster")
        return facts

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for Firestore documents and CLI output."""
        return {"name": self.name, "location": self.location, "version": self.version,
                "status": self.status, "labels": dict(self.labels), "autopilot": self.autopilot,
                "dataplane_v2": self.dataplane_v2, "ip_alias": self.ip_alias,
                "multi_networking": self.multi_networking, "endpoint": self.endpoint,
                "node_pools": [p.to_dict() for p in self.node_pools]}


def facts_digest(facts: ClusterFacts) -> str:
    """A short digest of what opt-in and the prechecks read (labels, version, networking, pools).

    Recorded with every decision, so the scheduled reconcile can tell from one ListClusters whether
    an IGNORED or INELIGIBLE cluster changed since (status and endpoint are left out: they move on
    their own and change no decision).
    """
    import hashlib
    import json

    data = facts.to_dict()
    data.pop("status", None)
    data.pop("endpoint", None)
    data["node_pools"] = sorted((p for p in data["node_pools"]), key=lambda p: str(p.get("name")))
    for pool in data["node_pools"]:
        pool.pop("status", None)
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_gke_version(text: object) -> tuple[int, int, int] | None:
    """`1.30.5-gke.1014001` -> (1, 30, 5); `1.29` -> (1, 29, 0); anything else (`latest`, "") -> None."""
    if not isinstance(text, str):
        return None
    m = _VERSION.fullmatch(text.strip())
    if not m:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)


def check_cluster(cluster: Any) -> list[Finding]:
    """Cluster-level findings (everything except the node pools), in a fixed order."""
    c = ClusterFacts.of(cluster)
    where = _where(c)
    name = c.name or "CLUSTER_NAME"
    create = (f"gcloud container clusters create {name} {where} --cluster-version=1.28 or later "
              "--enable-dataplane-v2 --enable-ip-alias --enable-multi-networking")
    upgrade = (f"--cluster-version=1.28 or later: gcloud container clusters upgrade {name} {where} "
               "--master --cluster-version=VERSION")
    out: list[Finding] = []
    parsed = parse_gke_version(c.version)
    if parsed is None:
        out.append(Finding(VERSION, ERROR,
                           f"GKE version {c.version!r} cannot be parsed; Multus needs 1.28 or later",
                           upgrade))
    elif parsed < MIN_VERSION:
        out.append(Finding(VERSION, ERROR,
                           f"GKE version {c.version} is older than 1.28 "
                           "(multi-networking needs 1.28 or later)", upgrade))
    if c.autopilot:
        out.append(Finding(AUTOPILOT, ERROR,
                           "the cluster is Autopilot; Multus needs node access (a privileged DaemonSet that "
                           "installs CNI binaries), which only GKE Standard allows",
                           f"create a Standard cluster; Autopilot cannot be converted: {create}"))
    if not c.dataplane_v2:
        out.append(Finding(DATAPLANE_V2, ERROR,
                           "GKE Dataplane V2 is not enabled (networkConfig.datapathProvider is not "
                           "ADVANCED_DATAPATH)",
                           f"--enable-dataplane-v2 (chosen when the cluster is created): {create}"))
    if not c.ip_alias:
        out.append(Finding(IP_ALIAS, ERROR,
                           "the cluster is not VPC-native (ipAllocationPolicy.useIpAliases is false)",
                           f"--enable-ip-alias (chosen when the cluster is created): {create}"))
    if not c.multi_networking:
        out.append(Finding(MULTI_NETWORKING, ERROR,
                           "multi-networking is not enabled (networkConfig.enableMultiNetworking is false)",
                           f"--enable-multi-networking: gcloud container clusters update {name} {where} "
                           "--enable-multi-networking"))
    return out


def check_node_pools(pools: Iterable[Any], *, cluster: Any = None) -> list[Finding]:
    """A `node-pool-networks` finding unless some pool has an extra node network and pod network.

    `cluster` (optional: facts, proto or JSON) only fills its name and location into the fix.
    """
    facts = [PoolNetworks.of(p, field=f"nodePools[{i}]") for i, p in enumerate(_iterable(pools, "nodePools"))]
    if suitable_pools(facts):
        return []
    c = ClusterFacts.of(cluster) if cluster is not None else None
    partial = [p.name for p in facts if p.node_networks or p.pod_networks]
    detail = (f"; {', '.join(partial)} has only one of the two" if partial else "")
    name = c.name if c and c.name else "CLUSTER_NAME"
    return [Finding(
        NODE_POOL_NETWORKS, ERROR,
        f"no node pool has both an additional node network and an additional pod network "
        f"({len(facts)} node pool(s) checked{detail})",
        f"gcloud container node-pools create NODEPOOL_NAME --cluster {name} {_where(c)} "
        "--additional-node-network network=VPC_NAME,subnetwork=SUBNET_NAME "
        "--additional-pod-network subnetwork=SUBNET_NAME,pod-ipv4-range=SECONDARY_RANGE_NAME,"
        "max-pods-per-node=8",
    )]


def precheck(cluster: Any, node_pools: Iterable[Any] | None = None) -> list[Finding]:
    """All findings: the cluster's, then the node pools' (the cluster's own when `node_pools` is None)."""
    c = ClusterFacts.of(cluster)
    pools = c.node_pools if node_pools is None else node_pools
    return check_cluster(c) + check_node_pools(pools, cluster=c)


def suitable_pools(pools: Iterable[Any]) -> list[PoolNetworks]:
    """The pools with an additional node network and an additional pod network, in input order.

    A pool in ERROR (its creation failed: no nodes) or being deleted (STOPPING) is not one to install on.
    """
    facts = [PoolNetworks.of(p, field=f"nodePools[{i}]") for i, p in enumerate(_iterable(pools, "nodePools"))]
    return [p for p in facts if p.suitable and p.status not in ("ERROR", "STOPPING")]


def eligible(findings: Iterable[Finding]) -> bool:
    """No error findings at all: Multus can be installed now."""
    return not any(f.severity == ERROR for f in findings)


def blocking(findings: Iterable[Finding]) -> list[Finding]:
    """The errors that make a cluster INELIGIBLE (a missing node pool only makes it wait)."""
    return [f for f in findings if f.severity == ERROR and f.id != NODE_POOL_NETWORKS]


# --- address capacity of the additional pod network ----------------------------------------------

DEFAULT_MAX_PODS_PER_NODE = 110
# (at most this many Pods per node, prefix length of the node's range): GKE's table, cited below.
PER_NODE_RANGE = ((8, 28), (16, 27), (32, 26), (64, 25), (110, 24), (256, 23))


def per_node_prefix(max_pods_per_node: int) -> int:
    """The prefix length of the range GKE assigns each node for `max_pods_per_node` Pods.

    GKE "Configure maximum Pods per node" (cloud.google.com/kubernetes-engine/docs/how-to/
    flexible-pod-cidr): each node gets a block with at least twice as many addresses as its
    maximum Pods — 8 -> /28, 9-16 -> /27, 17-32 -> /26, 33-64 -> /25, 65-110 -> /24 (and
    111-256 -> /23 where GKE allows more than 110). The same sizing applies to an additional pod
    network's secondary range (its max-pods-per-node). The table, not a formula: 111-128 would
    fit a /24 at "twice", but GKE gives them a /23.
    """
    if not 1 <= max_pods_per_node <= 256:
        raise Rejected("invalid max pods per node", [Problem("maxPodsPerNode",
                                                             f"expected 1..256, got {max_pods_per_node}")])
    return next(prefix for most, prefix in PER_NODE_RANGE if max_pods_per_node <= most)


def check_range_capacity(pool: Any, cidr: str, *, cluster: Any = None) -> list[Finding]:
    """A `range-capacity` finding when `cidr` (the pool's additional pod range) cannot hold its nodes.

    The nodes counted are the pool's maximum: `autoscaling.maxNodeCount` when autoscaling is on,
    else `initialNodeCount`; both are per zone, so a regional pool counts them in each of its
    `locations` (GKE API NodePool reference). The finding is a warning, not a block: the pool
    exists, but GKE cannot give the nodes beyond the range's capacity an additional pod range,
    so they are never created.
    """
    import ipaddress

    p = PoolNetworks.of(pool)
    if not p.pod_networks:
        return []
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except (TypeError, ValueError) as e:
        raise Rejected("invalid secondary range", [Problem("cidr", f"{cidr!r} is not a CIDR: {e}")]) from None
    max_pods = p.pod_networks[0].max_pods_per_node or DEFAULT_MAX_PODS_PER_NODE
    prefix = per_node_prefix(max_pods)
    zones = max(1, len(p.locations))
    per_zone = max(p.node_count, p.max_node_count)
    nodes = per_zone * zones
    capacity = 0 if prefix < net.prefixlen else 2 ** (prefix - net.prefixlen)
    if nodes <= capacity:
        return []
    c = ClusterFacts.of(cluster) if cluster is not None else None
    needed = prefix - (nodes - 1).bit_length()  # the smallest range with `nodes` per-node blocks
    zone_text = f" ({per_zone} per zone x {zones} zones)" if zones > 1 else ""
    return [Finding(
        RANGE_CAPACITY, WARNING,
        f"the additional pod range {p.pod_networks[0].secondary_pod_range} ({net}) of node pool {p.name} holds "
        f"{capacity} node(s) at max-pods-per-node {max_pods} (a /{prefix} per node), but the pool can have "
        f"{nodes} node(s){zone_text}; nodes beyond {capacity} get no address range",
        f"use a secondary range of /{needed} or larger (gcloud compute networks subnets update "
        f"{p.pod_networks[0].subnetwork or 'SUBNET_NAME'} --add-secondary-ranges=RANGE_NAME=CIDR/{needed}) for a "
        f"new node pool, lower max-pods-per-node, or cap the pool at {capacity} node(s): gcloud container "
        f"clusters resize {c.name if c and c.name else 'CLUSTER_NAME'} --node-pool {p.name} {_where(c)} "
        f"--num-nodes {max(0, capacity // zones)}",
    )]


# --- reading protos and REST JSON ----------------------------------------------------------------

def _where(c: ClusterFacts | None) -> str:
    """The gcloud location flag: `--zone` for a zonal cluster, `--region` for a regional one."""
    if c is None or not c.location:
        return "--location LOCATION"
    return f"--zone {c.location}" if _ZONE.fullmatch(c.location) else f"--region {c.location}"


def _iterable(value: Any, field: str) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise Rejected("invalid node pools", [Problem(field, f"expected a list, got {type(value).__name__}")])
    return list(value)


def _as_json(obj: Any, field: str) -> Mapping[str, Any]:
    """The REST JSON form of a proto-plus message, a raw protobuf message, or a mapping."""
    if isinstance(obj, Mapping):
        return obj
    pb = getattr(obj, "_pb", None)  # proto-plus wrapper (container_v1.Cluster, NodePool)
    if pb is None and hasattr(obj, "DESCRIPTOR") and hasattr(obj, "SerializeToString"):
        pb = obj  # a raw protobuf message
    if pb is not None:
        from google.protobuf import json_format

        as_dict: dict[str, Any] = json_format.MessageToDict(pb)
        return as_dict
    raise Rejected(f"invalid {field}", [Problem(field, f"expected a JSON object or a container_v1 message, "
                                                       f"got {type(obj).__name__}")])


def _pool_from(r: _Reader, pool: Any, path: str) -> PoolNetworks:
    if not isinstance(pool, Mapping):
        pool = _as_json(pool, path)
    net = r.obj(pool, "networkConfig", path)
    npath = f"{path}.networkConfig"
    nodes = []
    for i, n in enumerate(r.items(net, "additionalNodeNetworkConfigs", npath)):
        p = f"{npath}.additionalNodeNetworkConfigs[{i}]"
        if r.check_obj(n, p):
            nodes.append((r.text(n, "network", p), r.text(n, "subnetwork", p)))
    pods = []
    for i, n in enumerate(r.items(net, "additionalPodNetworkConfigs", npath)):
        p = f"{npath}.additionalPodNetworkConfigs[{i}]"
        if r.check_obj(n, p):
            pods.append(PodNetwork(r.text(n, "subnetwork", p), r.text(n, "secondaryPodRange", p),
                                   r.max_pods(n, p)))
    scaling = r.obj(pool, "autoscaling", path)
    return PoolNetworks(name=r.text(pool, "name", path), node_networks=tuple(nodes),
                        pod_networks=tuple(pods), status=_status(r.text(pool, "status", path)),
                        node_count=r.count(pool, "initialNodeCount", path),
                        max_node_count=(r.count(scaling, "maxNodeCount", f"{path}.autoscaling")
                                        if r.flag(scaling, "enabled", f"{path}.autoscaling") else 0),
                        locations=tuple(x for x in r.items(pool, "locations", path) if isinstance(x, str)))


def _status(value: str) -> str:
    """The enum's zero value means "not reported": the same as a missing field."""
    return "" if value == "STATUS_UNSPECIFIED" else value


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


class _Reader:
    """Typed lookups in REST JSON that collect, rather than raise, one problem per bad field."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def raise_if_any(self, reason: str) -> None:
        if self.problems:
            raise Rejected(reason, self.problems)

    def _get(self, d: Mapping[str, Any], key: str) -> Any:
        value = d.get(key)
        return d.get(_snake(key)) if value is None else value

    def _bad(self, path: str, key: str, expected: str, value: Any) -> None:
        self.problems.append(Problem(f"{path}.{key}", f"expected {expected}, got {type(value).__name__}"))

    def check_obj(self, value: Any, path: str) -> bool:
        if isinstance(value, Mapping):
            return True
        self.problems.append(Problem(path, f"expected an object, got {type(value).__name__}"))
        return False

    def obj(self, d: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = self._get(d, key)
        if value is None or isinstance(value, Mapping):
            return value or {}
        self._bad(path, key, "an object", value)
        return {}

    def items(self, d: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = self._get(d, key)
        if value is None or isinstance(value, list):
            return value or []
        self._bad(path, key, "a list", value)
        return []

    def text(self, d: Mapping[str, Any], key: str, path: str) -> str:
        value = self._get(d, key)
        if value is None or isinstance(value, str):
            return value or ""
        self._bad(path, key, "a string", value)
        return ""

    def flag(self, d: Mapping[str, Any], key: str, path: str) -> bool:
        value = self._get(d, key)
        if value is None or isinstance(value, bool):
            return bool(value)
        self._bad(path, key, "true or false", value)
        return False

    def labels(self, d: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
        value = self.obj(d, key, path)
        bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
        for k in bad:
            self.problems.append(Problem(f"{path}.{key}.{k}", "label keys and values must be strings"))
        return {k: v for k, v in value.items() if k not in bad}

    def count(self, d: Mapping[str, Any], key: str, path: str) -> int:
        """A node count: int32 in the proto, a number in REST JSON (0 when absent)."""
        value = self._get(d, key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not _DIGITS.fullmatch(f"{value}"):
            self.problems.append(Problem(f"{path}.{key}", f"expected a whole number, got {value!r:.40}"))
            return 0
        return int(value)

    def max_pods(self, d: Mapping[str, Any], path: str) -> int | None:
        """`maxPodsPerNode` is `{"maxPodsPerNode": "8"}` in REST (int64 as a string); accept 8 too."""
        value = self._get(d, "maxPodsPerNode")
        if isinstance(value, Mapping):
            value = self._get(value, "maxPodsPerNode")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not _DIGITS.fullmatch(f"{value}"):
            self.problems.append(Problem(f"{path}.maxPodsPerNode",
                                         f"expected a whole number, got {value!r:.40}"))
            return None
        return int(value)
