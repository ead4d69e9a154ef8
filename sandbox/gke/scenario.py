"""The sandbox GKE world, read from a scenario YAML file and validated before anything starts.

A scenario is the whole simulated project: its VPC subnetworks (with the secondary ranges the
controller resolves to CIDRs), its clusters and their node pools. Validation collects every
problem and names each by the path of the field that holds it (`clusters[1].version: ...`), so a
newcomer editing a scenario sees all mistakes at once instead of fixing them one run at a time.

The format is documented in docs/SANDBOX_GKE.md. This module is pure: it turns YAML into frozen
dataclasses; `sandbox.gke.protos` turns those into GKE API messages.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "scenarios"
DEFAULT_SCENARIO = SCENARIOS_DIR / "default.yaml"

# GCP naming rules (RFC 1035 labels) for projects, networks, subnetworks, ranges, clusters, pools.
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_RESOURCE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_CLUSTER = re.compile(r"^[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_VERSION = re.compile(r"^1\.(?P<minor>[0-9]{1,2})(?:\.(?P<patch>[0-9]{1,3})-gke\.(?P<build>[0-9]{1,10}))?$")
_MACHINE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9-]+$")
# GCP resource labels: lowercase keys (<=63) starting with a letter; values may be empty.
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
# Kubernetes node labels (what NodeConfig.labels become on the nodes).
_K8S_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_K8S_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+$")

CLUSTER_STATUSES = ("PROVISIONING", "RUNNING", "RECONCILING", "STOPPING", "ERROR", "DEGRADED")
# Errors a node pool operation can end with after it was accepted (sandbox.gke.world.POOL_ERRORS).
NODE_POOL_ERRORS = ("GCE_STOCKOUT", "QUOTA_EXCEEDED")
REALISM = ("realistic", "calm")


class ScenarioError(ValueError):
    """A scenario file cannot be used; `problems` lists every `path: message` found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"invalid scenario {source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Subnetwork:
    """A VPC subnetwork the project can use (what ListUsableSubnetworks reports)."""

    network: str
    subnetwork: str
    region: str
    primary_range: str
    secondary_ranges: Mapping[str, str] = field(default_factory=dict)
    project: str = ""  # the project owning it: "" = the scenario's project; another = a Shared VPC host
    network_user: bool = True  # False: the caller may not use its secondary ranges (Shared VPC)


@dataclass(frozen=True)
class NodeNetwork:
    network: str
    subnetwork: str


@dataclass(frozen=True)
class PodNetwork:
    subnetwork: str
    secondary_pod_range: str
    max_pods_per_node: int = 8


@dataclass(frozen=True)
class NodePoolSpec:
    name: str
    node_count: int = 1
    machine_type: str = "e2-standard-4"
    labels: Mapping[str, str] = field(default_factory=dict)
    additional_node_networks: tuple[NodeNetwork, ...] = ()
    additional_pod_networks: tuple[PodNetwork, ...] = ()


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    location: str
    version: str = "1.30"
    autopilot: bool = False
    dataplane_v2: bool = True
    ip_alias: bool = True
    multi_networking: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    status: str = "RUNNING"
    create_at_start: bool = True
    network: str = "default"
    subnetwork: str = "default"
    node_pools: tuple[NodePoolSpec, ...] = ()
    public_endpoint: bool = True  # False: a private endpoint only (an address in 10.x nobody can dial)
    dns_endpoint: bool = False  # the DNS-based endpoint allows external traffic
    authorized_networks: tuple[str, ...] | None = None  # CIDRs allowed to reach the IP endpoints


@dataclass(frozen=True)
class NodePoolFailure:
    """A CreateNodePool operation on `cluster`/`node_pool` that GKE accepts and that then ends in `error`."""

    cluster: str
    node_pool: str
    error: str = "GCE_STOCKOUT"
    times: int = 1


@dataclass(frozen=True)
class Scenario:
    project: str
    location: str = "us-central1"
    principal: str = "sandbox-admin@example.com"
    seed: int = 0
    subnetworks: tuple[Subnetwork, ...] = ()
    clusters: tuple[ClusterSpec, ...] = ()
    source: str = "<scenario>"
    realism: str = "realistic"
    node_pool_failures: tuple[NodePoolFailure, ...] = ()

    def cluster(self, name: str) -> ClusterSpec:
        """The scenario's cluster named `name` (KeyError if there is none)."""
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(f"scenario {self.source} has no cluster {name!r}")

    @property
    def pending_clusters(self) -> tuple[ClusterSpec, ...]:
        """Clusters marked `create_at_start: false`: the demo creates them through CreateCluster."""
        return tuple(c for c in self.clusters if not c.create_at_start)


def full_version(version: str) -> str:
    """`1.30` -> a GKE-style full version (`1.30.5-gke.1014001`); a full version stays as is."""
    m = _VERSION.match(version)
    if m and m["patch"] is None:
        return f"{version}.5-gke.1014001"
    return version


def region_of(location: str) -> str:
    """`us-central1-a` -> `us-central1`; a region is its own region."""
    return location.rsplit("-", 1)[0] if _ZONE.match(location) else location


def valid_location(location: object) -> bool:
    return isinstance(location, str) and bool(_REGION.match(location) or _ZONE.match(location))


def valid_cluster_name(name: object) -> bool:
    return isinstance(name, str) and bool(_CLUSTER.match(name))


def valid_resource_name(name: object) -> bool:
    return isinstance(name, str) and bool(_RESOURCE.match(name))


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file (`ScenarioError` lists every problem)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(str(p), [f"cannot read the file ({e.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ScenarioError(str(p), [f"not valid YAML ({e})"]) from None
    return parse(data, source=str(p))


def parse(data: Any, *, source: str = "<scenario>") -> Scenario:
    """Validate an already-loaded mapping (the YAML document) into a `Scenario`."""
    return _Parser(source).scenario(data)


class _Parser:
    """Collects problems with their field paths while building the dataclasses."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.project = ""

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- typed getters: each reports a problem and returns the default when the value is wrong --
    def keys(self, data: Mapping[str, Any], path: str, allowed: set[str], required: set[str]) -> None:
        for key in sorted(set(map(str, data)) - allowed):
            self.bad(f"{path}.{key}" if path else key, "unknown field")
        for key in sorted(required - set(data)):
            self.bad(f"{path}.{key}" if path else key, "is required")

    def text(self, data: Mapping[str, Any], key: str, path: str, default: str, rx: re.Pattern[str] | None,
             what: str) -> str:
        if key not in data:
            return default
        value = data[key]
        if not isinstance(value, str):
            self.bad(path, f"expected a string ({what}), got {type(value).__name__}")
            return default
        if rx is not None and not rx.match(value):
            self.bad(path, f"{value!r} is not a valid {what}")
            return default
        return value

    def boolean(self, data: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.bad(path, f"expected true or false, got {value!r}")
            return default
        return value

    def integer(self, data: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.bad(path, f"expected an integer in {lo}..{hi}, got {value!r}")
            return default
        return value

    def cidr(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            self.bad(path, f"expected an IPv4 CIDR string, got {type(value).__name__}")
            return "0.0.0.0/0"
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as e:
            self.bad(path, f"{value!r} is not an IPv4 CIDR ({e})")
            return "0.0.0.0/0"
        return str(net)

    def labels(self, data: Mapping[str, Any], key: str, path: str, *, kubernetes: bool) -> dict[str, str]:
        value = data.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.bad(path, f"expected a mapping of label key to value, got {type(value).__name__}")
            return {}
        krx, vrx = (_K8S_LABEL_KEY, _K8S_LABEL_VALUE) if kubernetes else (_LABEL_KEY, _LABEL_VALUE)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not krx.match(k):
                self.bad(f"{path}.{k}", "invalid label key")
            elif not isinstance(v, str) or not vrx.match(v):
                self.bad(f"{path}.{k}", f"invalid label value {v!r} (labels are strings; quote them)")
            else:
                out[k] = v
        return out

    def items(self, data: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Mapping[str, Any]]]:
        value = data.get(key, [])
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(path, f"expected a list, got {type(value).__name__}")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                self.bad(f"{path}[{i}]", f"expected a mapping, got {type(item).__name__}")
            else:
                out.append((f"{path}[{i}]", item))
        return out

    # -- the structure --
    def scenario(self, data: Any) -> Scenario:
        if not isinstance(data, Mapping):
            raise ScenarioError(self.source, ["(top): expected a mapping with project, subnetworks, clusters"])
        self.keys(data, "", {"project", "location", "principal", "seed", "subnetworks", "clusters", "realism",
                             "node_pool_failures"}, {"project"})
        project = self.text(data, "project", "project", "invalid-project", _PROJECT, "project id")
        self.project = project
        location = self.text(data, "location", "location", "us-central1", None, "location")
        if not valid_location(location):
            self.bad("location", f"{location!r} is not a valid region or zone")
        principal = self.text(data, "principal", "principal", "sandbox-admin@example.com", _EMAIL, "email")
        seed = self.integer(data, "seed", "seed", 0, 0, 2**31 - 1)
        subnets = tuple(self.subnetwork(p, d) for p, d in self.items(data, "subnetworks", "subnetworks"))
        realism = self.text(data, "realism", "realism", "realistic", None, "realism")
        if realism not in REALISM:
            self.bad("realism", f"{realism!r} is not one of {', '.join(REALISM)}")
            realism = "realistic"
        seen: dict[tuple[str, str, str], str] = {}
        for i, s in enumerate(subnets):
            key = (s.project or project, s.region, s.subnetwork)
            if key in seen:
                self.bad(f"subnetworks[{i}].subnetwork", f"duplicate of {seen[key]}")
            seen.setdefault(key, f"subnetworks[{i}]")
        clusters = tuple(self.cluster(p, d, location, subnets) for p, d in self.items(data, "clusters", "clusters"))
        names: dict[tuple[str, str], str] = {}
        for i, c in enumerate(clusters):
            key = (c.location, c.name)
            if key in names:
                self.bad(f"clusters[{i}].name", f"duplicate of {names[key]}")
            names.setdefault(key, f"clusters[{i}]")
        failures = tuple(self.failure(p, d, clusters)
                         for p, d in self.items(data, "node_pool_failures", "node_pool_failures"))
        if self.problems:
            raise ScenarioError(self.source, self.problems)
        return Scenario(project=project, location=location, principal=principal, seed=seed,
                        subnetworks=subnets, clusters=clusters, source=self.source, realism=realism,
                        node_pool_failures=failures)

    def failure(self, path: str, d: Mapping[str, Any], clusters: tuple[ClusterSpec, ...]) -> NodePoolFailure:
        self.keys(d, path, {"cluster", "node_pool", "error", "times"}, {"cluster", "node_pool"})
        cluster = self.text(d, "cluster", f"{path}.cluster", "", _CLUSTER, "cluster name")
        if cluster and cluster not in {c.name for c in clusters}:
            self.bad(f"{path}.cluster", f"no cluster {cluster!r} under clusters")
        error = self.text(d, "error", f"{path}.error", "GCE_STOCKOUT", None, "error")
        if error not in NODE_POOL_ERRORS:
            self.bad(f"{path}.error", f"{error!r} is not one of {', '.join(NODE_POOL_ERRORS)}")
        return NodePoolFailure(cluster, self.text(d, "node_pool", f"{path}.node_pool", "", _CLUSTER, "node pool name"),
                               error, self.integer(d, "times", f"{path}.times", 1, 1, 100))

    def subnetwork(self, path: str, d: Mapping[str, Any]) -> Subnetwork:
        self.keys(d, path, {"network", "subnetwork", "region", "primary_range", "secondary_ranges", "project",
                            "network_user"}, {"network", "subnetwork", "region", "primary_range"})
        network = self.text(d, "network", f"{path}.network", "default", _RESOURCE, "network name")
        sub = self.text(d, "subnetwork", f"{path}.subnetwork", "default", _RESOURCE, "subnetwork name")
        region = self.text(d, "region", f"{path}.region", "us-central1", _REGION, "region")
        primary = self.cidr(d.get("primary_range"), f"{path}.primary_range") if "primary_range" in d else ""
        ranges: dict[str, str] = {}
        raw = d.get("secondary_ranges", {}) or {}
        if not isinstance(raw, Mapping):
            self.bad(f"{path}.secondary_ranges", "expected a mapping of range name to CIDR")
            raw = {}
        for name, cidr in raw.items():
            rpath = f"{path}.secondary_ranges.{name}"
            if not isinstance(name, str) or not _RESOURCE.match(name):
                self.bad(rpath, "invalid secondary range name")
                continue
            ranges[name] = self.cidr(cidr, rpath)
        return Subnetwork(network, sub, region, primary, ranges,
                          project=self.text(d, "project", f"{path}.project", "", _PROJECT, "project id"),
                          network_user=self.boolean(d, "network_user", f"{path}.network_user", True))

    def cluster(self, path: str, d: Mapping[str, Any], default_location: str,
                subnets: tuple[Subnetwork, ...]) -> ClusterSpec:
        self.keys(d, path, {"name", "location", "version", "autopilot", "dataplane_v2", "ip_alias",
                            "multi_networking", "labels", "status", "create_at_start", "network",
                            "subnetwork", "node_pools", "public_endpoint", "dns_endpoint",
                            "authorized_networks"}, {"name"})
        name = self.text(d, "name", f"{path}.name", "invalid", _CLUSTER, "cluster name")
        location = self.text(d, "location", f"{path}.location", default_location, None, "location")
        if not valid_location(location):
            self.bad(f"{path}.location", f"{location!r} is not a valid region or zone")
        version = d.get("version", "1.30")
        if isinstance(version, float):  # YAML reads an unquoted 1.30 as the float 1.3
            self.bad(f"{path}.version", f"{version!r} was read as a number; quote it, e.g. \"1.30\"")
            version = "1.30"
        elif not isinstance(version, str) or not _VERSION.match(version):
            self.bad(f"{path}.version", f"{version!r} is not a GKE version like \"1.30\" or \"1.30.5-gke.1014001\"")
            version = "1.30"
        status = self.text(d, "status", f"{path}.status", "RUNNING", None, "status")
        if status not in CLUSTER_STATUSES:
            self.bad(f"{path}.status", f"{status!r} is not one of {', '.join(CLUSTER_STATUSES)}")
            status = "RUNNING"
        autopilot = self.boolean(d, "autopilot", f"{path}.autopilot", False)
        pools = tuple(self.node_pool(p, pd, region_of(location), subnets)
                      for p, pd in self.items(d, "node_pools", f"{path}.node_pools"))
        seen: set[str] = set()
        for i, pool in enumerate(pools):
            if pool.name in seen:
                self.bad(f"{path}.node_pools[{i}].name", f"duplicate node pool {pool.name!r}")
            seen.add(pool.name)
        if autopilot and pools:
            self.bad(f"{path}.node_pools", "an Autopilot cluster's node pools are managed by GKE; list none")
        return ClusterSpec(
            name=name, location=location, version=version, autopilot=autopilot,
            dataplane_v2=self.boolean(d, "dataplane_v2", f"{path}.dataplane_v2", True),
            ip_alias=self.boolean(d, "ip_alias", f"{path}.ip_alias", True),
            multi_networking=self.boolean(d, "multi_networking", f"{path}.multi_networking", True),
            labels=self.labels(d, "labels", f"{path}.labels", kubernetes=False),
            status=status,
            create_at_start=self.boolean(d, "create_at_start", f"{path}.create_at_start", True),
            network=self.text(d, "network", f"{path}.network", "default", _RESOURCE, "network name"),
            subnetwork=self.text(d, "subnetwork", f"{path}.subnetwork", "default", _RESOURCE, "subnetwork name"),
            node_pools=pools,
            public_endpoint=self.boolean(d, "public_endpoint", f"{path}.public_endpoint", True),
            dns_endpoint=self.boolean(d, "dns_endpoint", f"{path}.dns_endpoint", False),
            authorized_networks=self.cidrs(d, "authorized_networks", f"{path}.authorized_networks"),
        )

    def cidrs(self, d: Mapping[str, Any], key: str, path: str) -> tuple[str, ...] | None:
        value = d.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self.bad(path, f"expected a list of IPv4 CIDRs, got {type(value).__name__}")
            return None
        return tuple(self.cidr(v, f"{path}[{i}]") for i, v in enumerate(value))

    def node_pool(self, path: str, d: Mapping[str, Any], region: str,
                  subnets: tuple[Subnetwork, ...]) -> NodePoolSpec:
        self.keys(d, path, {"name", "node_count", "machine_type", "labels", "additional_node_networks",
                            "additional_pod_networks"}, {"name"})
        known = {(s.region, s.subnetwork): s for s in subnets if not s.project or s.project == self.project}
        node_nets = []
        for p, nd in self.items(d, "additional_node_networks", f"{path}.additional_node_networks"):
            self.keys(nd, p, {"network", "subnetwork"}, {"network", "subnetwork"})
            net = NodeNetwork(self.text(nd, "network", f"{p}.network", "", _RESOURCE, "network name"),
                              self.text(nd, "subnetwork", f"{p}.subnetwork", "", _RESOURCE, "subnetwork name"))
            s = known.get((region, net.subnetwork))
            if net.subnetwork and s is None:
                self.bad(f"{p}.subnetwork", f"no subnetwork {net.subnetwork!r} in region {region} under subnetworks")
            elif s is not None and net.network and s.network != net.network:
                self.bad(f"{p}.network", f"subnetwork {s.subnetwork!r} belongs to network {s.network!r}")
            node_nets.append(net)
        pod_nets = []
        for p, pd in self.items(d, "additional_pod_networks", f"{path}.additional_pod_networks"):
            self.keys(pd, p, {"subnetwork", "secondary_pod_range", "max_pods_per_node"},
                      {"subnetwork", "secondary_pod_range"})
            net = PodNetwork(
                self.text(pd, "subnetwork", f"{p}.subnetwork", "", _RESOURCE, "subnetwork name"),
                self.text(pd, "secondary_pod_range", f"{p}.secondary_pod_range", "", _RESOURCE, "range name"),
                self.integer(pd, "max_pods_per_node", f"{p}.max_pods_per_node", 8, 1, 256))
            s = known.get((region, net.subnetwork))
            if net.subnetwork and s is None:
                self.bad(f"{p}.subnetwork", f"no subnetwork {net.subnetwork!r} in region {region} under subnetworks")
            elif s is not None and net.secondary_pod_range and net.secondary_pod_range not in s.secondary_ranges:
                self.bad(f"{p}.secondary_pod_range",
                         f"subnetwork {s.subnetwork!r} has no secondary range {net.secondary_pod_range!r}")
            pod_nets.append(net)
        return NodePoolSpec(
            name=self.text(d, "name", f"{path}.name", "invalid", _CLUSTER, "node pool name"),
            node_count=self.integer(d, "node_count", f"{path}.node_count", 1, 0, 100),
            machine_type=self.text(d, "machine_type", f"{path}.machine_type", "e2-standard-4", _MACHINE,
                                   "machine type"),
            labels=self.labels(d, "labels", f"{path}.labels", kubernetes=True),
            additional_node_networks=tuple(node_nets),
            additional_pod_networks=tuple(pod_nets),
        )
