"""The simulated GKE project: clusters, node pools and long-running operations, thread-safe.

This is the behaviour of the GKE API without the wire: each public method takes a request
message of `google.cloud.container_v1` and returns the response message, or raises `ApiError`
with GKE's status code. `sandbox.gke.server` only puts it on gRPC.

What it imitates, because the controller depends on it:
- resource names in both forms (`name=projects/P/locations/L/...` and the deprecated
  project_id/zone/cluster_id fields); malformed ones are INVALID_ARGUMENT, missing NOT_FOUND,
  duplicates ALREADY_EXISTS, another project PERMISSION_DENIED, a write while an operation runs
  on the cluster FAILED_PRECONDITION;
- writes are long-running: the Operation is RUNNING, then DONE after `operation_delay`, with
  the cluster / pool moving PROVISIONING -> RUNNING (or STOPPING -> gone);
- every write logs its audit entries (`operation.first` on accept, `.last` when done);
- hooks let the stack give each cluster a real (sandbox) Kubernetes API server and nodes;
- an ordinary day (`Realism`, on unless `Realism.calm()`): GKE's own operation after a create,
  regional pools over three zones, audit entries in the captured shapes, refusals audited; and
  always: upgrades and label changes (RECONCILING), node pool operations that fail after they
  were accepted, Shared VPC subnetworks, private and DNS-based control plane endpoints.
Hooks and sinks are always called without the world's lock held, so they may call back in.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import random
import re
import secrets
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.gke import audit
from sandbox.gke.certs import self_signed_ca_pem
from sandbox.gke.protos import cluster_message, pool_locations
from sandbox.gke.realism import Realism
from sandbox.gke.scenario import (
    NODE_POOL_ERRORS,
    Scenario,
    ScenarioError,
    Subnetwork,
    full_version,
    region_of,
    valid_cluster_name,
    valid_location,
)

log = logging.getLogger(__name__)

PLACEHOLDER_ENDPOINT = "127.0.0.1:1"  # nothing listens on port 1: clearly "no API server wired"
API_ROOT = "https://container.googleapis.com/v1"

_CLUSTER_NAME = re.compile(r"^projects/([^/]+)/(locations|zones)/([^/]+)/clusters/([^/]+)$")
_POOL_NAME = re.compile(r"^projects/([^/]+)/(locations|zones)/([^/]+)/clusters/([^/]+)/nodePools/([^/]+)$")
_PARENT = re.compile(r"^projects/([^/]+)/(locations|zones)/([^/]+)$")
_OPERATION_NAME = re.compile(r"^projects/([^/]+)/(locations|zones)/([^/]+)/operations/([^/]+)$")
_SUBNET_PATH = re.compile(r"^(?:https://www\.googleapis\.com/compute/v1/)?projects/([^/]+)/regions/([^/]+)"
                          r"/subnetworks/([^/]+)$")
_NETWORK_PATH = re.compile(r"^(?:https://www\.googleapis\.com/compute/v1/)?projects/([^/]+)/global"
                           r"/networks/([^/]+)$")
_NODE_SUFFIX = string.ascii_lowercase + string.digits
_VERSION_ARG = re.compile(r"^(latest|-|1\.[0-9]{1,2}(\.[0-9]+(-gke\.[0-9]+)?)?)$")
ERROR_DOMAIN = "container.googleapis.com"
INCOMPATIBLE_OPERATION = "CLUSTER_ALREADY_HAS_OPERATION"
# google.rpc.Code numbers the audit log and Operation.error carry.
RPC_CODES = {"INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7,
             "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNIMPLEMENTED": 12}


class ApiError(Exception):
    """A GKE API error: `code` is the gRPC status name (`NOT_FOUND`), `message` GKE-style text.

    `reason` (with `domain`) is the `google.rpc.ErrorInfo` GKE attaches to some errors, e.g.
    CLUSTER_ALREADY_HAS_OPERATION; the server sends it in the gRPC status details.
    """

    def __init__(self, code: str, message: str, *, reason: str | None = None, domain: str = ERROR_DOMAIN) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        super().__init__(f"{code}: {message}")


class OperationFailed(Exception):
    """Raised by an operation's `finish` when GKE accepted the request but the work failed."""

    def __init__(self, code: str, message: str, condition: str = "UNKNOWN") -> None:
        self.code = code  # gRPC status name for Operation.error
        self.message = message
        self.condition = condition  # container_v1.StatusCondition.Code name
        super().__init__(message)


def pool_error_message(error: str, key: Any, pool: Any, nodes: int, zone: str) -> tuple[str, str, str]:
    """(gRPC code, GKE's message, StatusCondition code) for a node pool that failed after acceptance.

    The texts follow what GKE reports (docs/SANDBOX_GKE.md, "Node pools that fail"): the managed
    instance group did not get its instances, with Compute Engine's error for the first one.
    """
    instance = f"gke-{key.cluster[:14].rstrip('-')}-{pool.name[:13].rstrip('-')}-{'0' * 8}-0000"
    head = (f"Google Compute Engine: Not all instances running in IGM after 61.212321581s. Expected {nodes}, "
            f"running 0, transitioning {nodes}. Current errors: ")
    if error == "GCE_STOCKOUT":
        return ("RESOURCE_EXHAUSTED",
                head + f"[GCE_STOCKOUT]: Instance '{instance}' creation failed: The zone "
                f"'projects/{key.project}/zones/{zone}' does not have enough resources available to fulfill "
                "the request.  Try a different zone, or try again later.", "GCE_STOCKOUT")
    if error == "QUOTA_EXCEEDED":
        return ("RESOURCE_EXHAUSTED",
                head + f"[QUOTA_EXCEEDED]: Instance '{instance}' creation failed: Quota 'CPUS' exceeded.  "
                f"Limit: 24.0 in region {region_of(zone)}.", "GCE_QUOTA_EXCEEDED")
    raise ValueError(f"unknown node pool error {error!r}; expected one of {', '.join(NODE_POOL_ERRORS)}")


def label_fingerprint(labels: Any) -> str:
    """GKE's label fingerprint: 8 hex digits that change whenever the set of labels changes."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(dict(labels).items()))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True, order=True)
class ClusterKey:
    """A cluster's identity, with the same attribute names as `shared.core.refs.ClusterRef`.

    The sandbox imports nothing from the controller; hooks receive this duck-compatible value.
    """

    project: str
    location: str
    cluster: str

    @property
    def path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/clusters/{self.cluster}"

    @property
    def doc_id(self) -> str:
        return f"{self.project}~{self.location}~{self.cluster}"

    def __str__(self) -> str:
        return self.path


OnCluster = Callable[[Any], tuple[str, bytes | str]]
OnNodePool = Callable[[ClusterKey, Any, list[str]], None]
OnClusterDeleted = Callable[[ClusterKey, Any], None]
AuditSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Hooks:
    on_cluster: OnCluster | None = None
    on_node_pool: OnNodePool | None = None
    on_node_pool_deleted: OnNodePool | None = None
    on_cluster_deleted: OnClusterDeleted | None = None
    audit_sink: AuditSink | None = None


@dataclass
class _Op:
    """A long-running operation and what its closing audit entry needs (None: GKE's own, not audited)."""

    message: Any  # container_v1.Operation
    key: ClusterKey
    audit: dict[str, Any] | None
    finish: Callable[[], None]
    timer: threading.Timer | None = None
    after: Callable[[], None] | None = None  # run under the lock as it ends (GKE's own next operation)
    completing: bool = False


@dataclass
class _ClusterState:
    cluster: Any  # container_v1.Cluster without node_pools
    pools: dict[str, Any] = field(default_factory=dict)  # name -> container_v1.NodePool
    nodes: dict[str, list[str]] = field(default_factory=dict)  # pool name -> node names


def _copy(message: Any) -> Any:
    """A deep copy of a proto-plus message (callers must never share the world's objects)."""
    return type(message).deserialize(type(message).serialize(message))


def _json(message: Any) -> dict[str, Any]:
    """A message as the JSON the audit log carries (camelCase, enum names, `@type`)."""
    body = type(message).to_dict(message, preserving_proto_field_name=False, use_integers_for_enums=False,
                                 always_print_fields_with_no_presence=False)
    pb_name = type(message).pb(message).DESCRIPTOR.full_name
    return {"@type": f"type.googleapis.com/{pb_name}", **body}


def _instance_groups(key: ClusterKey, pool: Any, nodes: list[str]) -> list[str]:
    """One managed instance group per zone of the pool, named after its nodes (as GKE links them)."""
    per_zone = pool.initial_node_count
    if not per_zone or len(nodes) < per_zone * len(pool.locations):
        return []
    return [f"https://www.googleapis.com/compute/v1/projects/{key.project}/zones/{z}/instanceGroupManagers/"
            f"{nodes[i * per_zone].rsplit('-', 1)[0]}-grp" for i, z in enumerate(pool.locations)]


def _minor(version: str) -> int:
    """`1.30.5-gke.1014001` -> 30 (versions compare by minor: GKE upgrades one minor at a time)."""
    m = re.match(r"^1\.([0-9]{1,2})", version)
    return int(m.group(1)) if m else 0


class World:
    def __init__(self, scenario: Scenario, *, hooks: Hooks | None = None, operation_delay: float = 0.5,
                 start_all: bool = False, realism: Realism | None = None) -> None:
        if not 0 <= operation_delay <= 3600:
            raise ValueError(f"operation_delay must be in 0..3600 seconds, got {operation_delay!r}")
        self.scenario = scenario
        self.project = scenario.project
        # GKE writes project numbers in some links; a stable one derived from the id stands in.
        self.project_number = str(int(hashlib.sha256(self.project.encode()).hexdigest()[:10], 16))[:12]
        self.realism = realism if realism is not None else Realism.named(scenario.realism)
        self.hooks = hooks or Hooks()
        self.operation_delay = operation_delay
        self.audit_log: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._rng = random.Random(scenario.seed)
        self._clusters: dict[tuple[str, str], _ClusterState] = {}
        self._ops: dict[str, _Op] = {}
        self._running: dict[tuple[str, str], str] = {}  # cluster -> running operation id
        self._closed = False
        self._emitting = 0
        self._subnets = {(s.project or self.project, s.region, s.subnetwork): s for s in scenario.subnetworks}
        self._pool_failures: dict[tuple[str, str], list[str]] = {}
        for f in scenario.node_pool_failures:
            self._pool_failures.setdefault((f.cluster, f.node_pool), []).extend([f.error] * f.times)
        for i, spec in enumerate(scenario.clusters):
            if spec.create_at_start or start_all:
                try:
                    self._load_cluster(spec)
                except ApiError as e:
                    raise ScenarioError(scenario.source, [f"clusters[{i}]: {e.message}"]) from None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Cancel pending operations; nothing completes (or calls a hook) after this returns."""
        with self._lock:
            self._closed = True
            timers = [op.timer for op in self._ops.values() if op.timer is not None]
        for t in timers:
            t.cancel()
        for t in timers:
            if t.is_alive():
                t.join(timeout=5)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no operation runs and every closing audit entry is emitted (True), or `timeout` (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._running and not self._emitting, timeout)

    # ------------------------------------------------------------------ names
    def _check_project(self, project: str, permission: str, resource: str) -> None:
        if project != self.project:
            raise ApiError("PERMISSION_DENIED", f"Required {permission!r} permission for {resource!r}.")

    def _cluster_key(self, name: str, project_id: str, zone: str, cluster_id: str,
                     permission: str) -> tuple[ClusterKey, bool]:
        """(key, zones_form) from `name` or the deprecated fields."""
        if name:
            m = _CLUSTER_NAME.match(name)
            if not m:
                raise ApiError("INVALID_ARGUMENT", f"Invalid cluster name {name[:200]!r}: expected "
                                                   "projects/*/locations/*/clusters/*.")
            project, form, location, cluster = m.groups()
            zones = form == "zones"
        elif project_id or zone or cluster_id:
            missing = [f for f, v in (("project_id", project_id), ("zone", zone), ("cluster_id", cluster_id))
                       if not v]
            if missing:
                raise ApiError("INVALID_ARGUMENT", f"Required field(s) {', '.join(missing)} missing.")
            project, location, cluster, zones = project_id, zone, cluster_id, True
        else:
            raise ApiError("INVALID_ARGUMENT", "Required field 'name' is missing.")
        if not valid_location(location):
            raise ApiError("INVALID_ARGUMENT", f"Location {location[:100]!r} is not a valid region or zone.")
        if not valid_cluster_name(cluster):
            raise ApiError("INVALID_ARGUMENT", f"Invalid cluster name {cluster[:100]!r}.")
        key = ClusterKey(project, location, cluster)
        self._check_project(project, permission, key.path)
        return key, zones

    def _parent(self, parent: str, project_id: str, zone: str, permission: str) -> tuple[str, str]:
        """(project, location or '-') of a list call's parent."""
        if parent:
            m = _PARENT.match(parent)
            if not m:
                raise ApiError("INVALID_ARGUMENT", f"Invalid parent {parent[:200]!r}: expected "
                                                   "projects/*/locations/*.")
            project, _, location = m.groups()
        elif project_id and zone:
            project, location = project_id, zone
        else:
            raise ApiError("INVALID_ARGUMENT", "Required field 'parent' is missing.")
        if location != "-" and not valid_location(location):
            raise ApiError("INVALID_ARGUMENT", f"Location {location[:100]!r} is not a valid region or zone.")
        self._check_project(project, permission, f"projects/{project}/locations/{location}")
        return project, location

    def edit_cluster(self, location: str, name: str, edit: Any) -> None:
        """Change a cluster in place, as an out-of-band update would (UpdateCluster, the console).

        `edit` receives the stored `container_v1.Cluster` (without node pools) under the world's
        lock. No audit entry is emitted: the controller's sink does not select UpdateCluster.
        """
        with self._lock:
            state = self._clusters.get((location, name))
            if state is None:
                raise KeyError(f"no cluster {name!r} in {location!r}")
            edit(state.cluster)
            self._changed.notify_all()

    def _state(self, key: ClusterKey) -> _ClusterState:
        state = self._clusters.get((key.location, key.cluster))
        if state is None:
            raise ApiError("NOT_FOUND", f"Not found: {key.path}.")
        return state

    @staticmethod
    def _pool_path(key: ClusterKey, pool: str) -> str:
        return f"{key.path}/nodePools/{pool}"

    # ------------------------------------------------------------------ rendering
    def _render(self, state: _ClusterState) -> Any:
        out = _copy(state.cluster)
        out.node_pools = [_copy(p) for p in state.pools.values()]
        out.current_node_count = sum(len(v) for v in state.nodes.values())
        return out

    def _subnet(self, ref: str, region: str) -> Subnetwork | None:
        """A subnetwork by short name (the cluster's project) or path (any project: Shared VPC hosts)."""
        m = _SUBNET_PATH.match(ref)
        if m:
            project, sub_region, name = m.groups()
            return self._subnets.get((project, sub_region, name))
        return self._subnets.get((self.project, region, ref))

    def _check_pool(self, cluster: Any, pool: Any, path: str) -> None:
        """GKE's validation of a node pool in a create request (INVALID_ARGUMENT naming the field)."""
        if not valid_cluster_name(pool.name):
            raise ApiError("INVALID_ARGUMENT", f"{path}.name: invalid node pool name {pool.name[:100]!r}.")
        if pool.initial_node_count < 0 or pool.initial_node_count > 1000:
            raise ApiError("INVALID_ARGUMENT", f"{path}.initial_node_count must be in 0..1000.")
        net = pool.network_config
        extra = list(net.additional_node_network_configs), list(net.additional_pod_network_configs)
        if (extra[0] or extra[1]) and not cluster.network_config.enable_multi_networking:
            raise ApiError("INVALID_ARGUMENT", f"{path}.network_config: additional networks need a cluster "
                                               "with multi-networking enabled.")
        if extra[1] and not extra[0]:
            raise ApiError("INVALID_ARGUMENT", f"{path}.network_config.additional_pod_network_configs need "
                                               "an additional node network on the same subnetwork.")
        region = region_of(cluster.location)
        node_subnets = set()
        for i, n in enumerate(extra[0]):
            where = f"{path}.network_config.additional_node_network_configs[{i}]"
            s = self._subnet(n.subnetwork, region)
            if s is None:
                raise ApiError("INVALID_ARGUMENT", f"{where}.subnetwork: subnetwork {n.subnetwork[:200]!r} "
                                                   f"not found in region {region}.")
            m = _NETWORK_PATH.match(n.network)
            network = m.group(2) if m else n.network
            if network != s.network or (m and m.group(1) != (s.project or self.project)):
                raise ApiError("INVALID_ARGUMENT", f"{where}.network: subnetwork {s.subnetwork!r} belongs to "
                                                   f"network {s.network!r}, not {n.network[:200]!r}.")
            node_subnets.add((s.project, s.region, s.subnetwork))
        for i, p in enumerate(extra[1]):
            where = f"{path}.network_config.additional_pod_network_configs[{i}]"
            s = self._subnet(p.subnetwork, region)
            if s is None or (s.project, s.region, s.subnetwork) not in node_subnets:
                raise ApiError("INVALID_ARGUMENT", f"{where}.subnetwork: {p.subnetwork[:200]!r} is not the "
                                                   "subnetwork of an additional node network.")
            if p.secondary_pod_range not in s.secondary_ranges:
                raise ApiError("INVALID_ARGUMENT", f"{where}.secondary_pod_range: subnetwork {s.subnetwork!r} "
                                                   f"has no secondary range {p.secondary_pod_range[:100]!r}.")
            mp = p.max_pods_per_node.max_pods_per_node
            if mp and not 1 <= mp <= 256:
                raise ApiError("INVALID_ARGUMENT", f"{where}.max_pods_per_node must be in 1..256.")

    def _new_pool(self, key: ClusterKey, cluster: Any, pool: Any, status: Any) -> Any:
        out = _copy(pool)
        out.self_link = f"{API_ROOT}/{self._pool_path(key, pool.name)}"
        out.version = cluster.current_node_version
        out.locations = list(pool.locations) or pool_locations(key.location, self.realism.regional_zones)
        out.status = status
        if not out.config.machine_type:
            out.config.machine_type = "e2-medium"
        if not out.config.disk_size_gb:
            out.config.disk_size_gb = 100
        if not out.config.image_type:
            out.config.image_type = "COS_CONTAINERD"
        return out

    def _node_names(self, key: ClusterKey, pool: Any) -> list[str]:
        """GKE-style node names: gke-{cluster}-{pool}-{8 hex per zone}-{4 chars per node}."""
        prefix = f"gke-{key.cluster[:14].rstrip('-')}-{pool.name[:13].rstrip('-')}"
        names = []
        with self._lock:
            for _zone in pool.locations:
                group = "".join(self._rng.choice("0123456789abcdef") for _ in range(8))
                for _ in range(pool.initial_node_count):
                    suffix = "".join(self._rng.choice(_NODE_SUFFIX) for _ in range(4))
                    names.append(f"{prefix}-{group}-{suffix}")
        return names

    def _new_cluster(self, key: ClusterKey, desired: Any, status: Any) -> Any:
        from google.cloud import container_v1 as c

        out = _copy(desired)
        out.node_pools = []
        version = full_version(desired.initial_cluster_version or "1.30")
        region = region_of(key.location)
        network = desired.network or "default"
        subnetwork = desired.subnetwork or "default"
        out.name = key.cluster
        out.location = key.location
        out.zone = key.location
        out.self_link = f"{API_ROOT}/{key.path}"
        out.id = secrets.token_hex(16)
        out.initial_cluster_version = version
        out.current_master_version = version
        out.current_node_version = version
        out.create_time = audit.rfc3339()
        out.status = status
        out.endpoint = ""
        out.master_auth = c.MasterAuth()
        out.network = network
        out.subnetwork = subnetwork
        out.network_config.network = f"projects/{key.project}/global/networks/{network}"
        out.network_config.subnetwork = f"projects/{key.project}/regions/{region}/subnetworks/{subnetwork}"
        out.locations = pool_locations(key.location, self.realism.regional_zones)
        out.label_fingerprint = label_fingerprint(out.resource_labels)
        self._endpoint_config(key, out)
        return out

    def _endpoint_config(self, key: ClusterKey, out: Any) -> None:
        """The output-only endpoint fields: a private address in 10.x, the DNS name, authorized networks.

        The private address is what GKE gives the control plane inside the VPC; the sandbox never
        listens on it and nothing may dial it (it is not loopback). The DNS endpoint name is always
        present, as GKE documents; it is served only when it allows external traffic.
        """
        cpe = out.control_plane_endpoints_config
        private = ipaddress.IPv4Address("10.128.0.0") + (int(out.id[:6], 16) % (1 << 16)) * 16 + 2
        if "enable_public_endpoint" not in cpe.ip_endpoints_config:
            cpe.ip_endpoints_config.enable_public_endpoint = not out.private_cluster_config.enable_private_endpoint
        cpe.ip_endpoints_config.enabled = True
        cpe.ip_endpoints_config.private_endpoint = str(private)
        out.private_cluster_config.private_endpoint = str(private)
        if out.master_authorized_networks_config.enabled and not cpe.ip_endpoints_config.authorized_networks_config:
            cpe.ip_endpoints_config.authorized_networks_config = out.master_authorized_networks_config
        cpe.dns_endpoint_config.endpoint = f"gke-{out.id}-{self.project_number}.{region_of(key.location)}.gke.goog"

    def _connect(self, cluster: Any) -> None:
        """Give the cluster its API endpoint and CA, from the hook or a placeholder.

        The hook answers `(endpoint, ca_pem)` or `(endpoint, ca_pem, dns_endpoint)`; the DNS endpoint
        ("name:port", served with a certificate of the sandbox's public-style CA) is published only
        when the cluster's DNS endpoint allows external traffic. A cluster without a public endpoint
        publishes its private 10.x address as `endpoint`, as GKE does.
        """
        dns = None
        if self.hooks.on_cluster is not None:
            answer = self.hooks.on_cluster(_copy(cluster))
            endpoint, ca = answer[0], answer[1]
            dns = answer[2] if len(answer) > 2 else None
            ca_pem = ca.encode() if isinstance(ca, str) else bytes(ca)
        else:
            endpoint, ca_pem = PLACEHOLDER_ENDPOINT, self_signed_ca_pem(f"sandbox-{cluster.name}-ca")
        ip = cluster.control_plane_endpoints_config.ip_endpoints_config
        if ip.enable_public_endpoint:
            cluster.endpoint = endpoint
            ip.public_endpoint = endpoint.rsplit(":", 1)[0]
            cluster.private_cluster_config.public_endpoint = ip.public_endpoint
        else:
            cluster.endpoint = ip.private_endpoint
        dns_config = cluster.control_plane_endpoints_config.dns_endpoint_config
        if dns and dns_config.allow_external_traffic:
            dns_config.endpoint = dns
        cluster.master_auth.cluster_ca_certificate = base64.b64encode(ca_pem).decode()

    def _pool_ready(self, key: ClusterKey, pool: Any) -> list[str]:
        nodes = self._node_names(key, pool)
        if self.hooks.on_node_pool is not None:
            self.hooks.on_node_pool(key, _copy(pool), list(nodes))
        return nodes

    def _load_cluster(self, spec: Any) -> None:
        """Create a scenario cluster directly, as if it had existed before the sandbox started."""
        from google.cloud import container_v1 as c

        key = ClusterKey(self.project, spec.location, spec.name)
        desired = cluster_message(spec)
        cluster = self._new_cluster(key, desired, c.Cluster.Status[spec.status])
        state = _ClusterState(cluster)
        for i, pool in enumerate(desired.node_pools):
            self._check_pool(cluster, pool, f"node_pools[{i}]")
            state.pools[pool.name] = self._new_pool(key, cluster, pool, c.NodePool.Status.RUNNING)
        self._connect(cluster)
        for name, pool in state.pools.items():
            state.nodes[name] = self._pool_ready(key, pool)
            pool.instance_group_urls = _instance_groups(key, pool, state.nodes[name])
        with self._lock:
            self._clusters[(key.location, key.cluster)] = state

    # ------------------------------------------------------------------ operations
    def _start(self, key: ClusterKey, op_type: Any, target: str, audit_ctx: dict[str, Any] | None,
               request: Any, finish: Callable[[], None]) -> tuple[Any, dict[str, Any] | None]:
        """Register a RUNNING operation on `key` (lock held by the caller), to finish later.

        `audit_ctx` None: an operation of GKE's own, which writes no Admin Activity entry.
        """
        from google.cloud import container_v1 as c

        op_id = f"operation-{int(dt.datetime.now(dt.UTC).timestamp() * 1000)}-{secrets.token_hex(4)}"
        pool_op = op_type in (c.Operation.Type.CREATE_NODE_POOL, c.Operation.Type.DELETE_NODE_POOL)
        # GKE answers node pool writes with a PENDING operation (captured audit responses).
        status = c.Operation.Status.PENDING if pool_op and self.realism.audit_shapes else c.Operation.Status.RUNNING
        message = c.Operation(
            name=op_id, zone=key.location, location=key.location, operation_type=op_type, status=status,
            self_link=f"{API_ROOT}/projects/{key.project}/locations/{key.location}/operations/{op_id}",
            target_link=f"{API_ROOT}/{target}", start_time=audit.rfc3339())
        ctx = {**audit_ctx, "operation_id": op_id, "operation_type": op_type.name} if audit_ctx else None
        self._ops[op_id] = _Op(message, key, ctx, finish)
        self._running[(key.location, key.cluster)] = op_id
        first = None
        if ctx is not None:
            first = self._entry(self._ops[op_id], first=True, request=self._request_json(request),
                                response=self._operation_json(message))
        return _copy(message), first

    def _request_json(self, request: Any) -> dict[str, Any]:
        body = _json(request)
        if self.realism.audit_shapes:  # GKE logs its internal v1alpha1 types, whatever version was called
            body["@type"] = body["@type"].replace(".container.v1.", ".container.v1alpha1.")
        return body

    def _operation_json(self, message: Any) -> dict[str, Any]:
        body = _json(message)
        if not self.realism.audit_shapes:
            return body
        body["@type"] = body["@type"].replace(".container.v1.", ".container.v1alpha1.")
        for link in ("selfLink", "targetLink"):  # v1alpha1 links with the project number and zones/
            if link in body:
                body[link] = re.sub(r"/v1/projects/[^/]+/locations/", f"/v1alpha1/projects/{self.project_number}/"
                                    "zones/", body[link])
        for noise in ("zone", "location", "progress"):
            body.pop(noise, None)
        return body

    def _busy(self, key: ClusterKey) -> None:
        """GKE refuses a write while another operation runs on the cluster (issue 1363 of CAPG)."""
        running = self._running.get((key.location, key.cluster))
        if running is not None:
            raise ApiError("FAILED_PRECONDITION", f"Cluster is running incompatible operation {running}.",
                           reason=INCOMPATIBLE_OPERATION)

    def _launch(self, op_id: str, first: dict[str, Any] | None, delay: float | None = None) -> None:
        """Emit the first audit entry, then schedule completion (so `last` never precedes `first`)."""
        if first is not None:
            self._emit(first)
        timer = threading.Timer(self.operation_delay if delay is None else delay, self._complete, args=(op_id,))
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._ops[op_id].timer = timer
            timer.start()

    def complete_operation(self, op_id: str, timeout: float = 10.0) -> Any:
        """Finish a running operation now, instead of at its timer (tests drive the world's clock so).

        Returns the Operation once DONE (also if it was already done or finishing on its own).
        """
        with self._lock:
            op = self._ops.get(op_id)
            if op is None:
                raise KeyError(f"no operation {op_id!r}")
            timer = op.timer
        if timer is not None:
            timer.cancel()
        self._complete(op_id)
        from google.cloud import container_v1 as c

        with self._changed:
            self._changed.wait_for(lambda: op.message.status == c.Operation.Status.DONE, timeout)
            return _copy(op.message)

    def wait_operation(self, op_id: str, timeout: float = 10.0) -> bool:
        """Wait until operation `op_id` is DONE and its closing audit entry emitted (True), or `timeout`."""
        from google.cloud import container_v1 as c

        with self._changed:
            op = self._ops.get(op_id)
            if op is None:
                raise KeyError(f"no operation {op_id!r}")
            return self._changed.wait_for(
                lambda: op.message.status == c.Operation.Status.DONE and not self._emitting, timeout)

    def running_operation(self, location: str, cluster: str) -> Any | None:
        """The operation running on a cluster now (None if none): GKE's own one included."""
        with self._lock:
            op_id = self._running.get((location, cluster))
            return _copy(self._ops[op_id].message) if op_id else None

    def _complete(self, op_id: str) -> None:
        from google.cloud import container_v1 as c

        with self._lock:
            if self._closed:
                return
            op = self._ops[op_id]
            if op.completing:
                return
            op.completing = True
        error: OperationFailed | None = None
        try:
            op.finish()
        except OperationFailed as e:  # GKE accepted the work, then it failed (stockout, quota)
            error = e
        except Exception as e:  # a hook failed: the operation fails, as a GKE operation can
            log.exception("sandbox GKE operation %s failed", op_id)
            error = OperationFailed("INTERNAL", str(e) or type(e).__name__)
        last = None
        with self._changed:
            if self._closed:
                return
            op.message.status = c.Operation.Status.DONE
            op.message.end_time = audit.rfc3339()
            op.message.progress = c.OperationProgress(status=c.Operation.Status.DONE)
            status = None
            if error is not None:
                code = RPC_CODES.get(error.code, 13)
                status = {"code": code, "message": error.message}
                op.message.status_message = error.message
                op.message.error = {"code": code, "message": error.message}
                condition = c.StatusCondition(code=c.StatusCondition.Code[error.condition], message=error.message,
                                              canonical_code=code)
                if op.message.operation_type == c.Operation.Type.CREATE_NODE_POOL:
                    op.message.nodepool_conditions = [condition]
                else:
                    op.message.cluster_conditions = [condition]
            self._running.pop((op.key.location, op.key.cluster), None)
            if op.audit is not None:
                self._emitting += 1  # idle only once the closing entry has reached the sink
                last = self._entry(op, first=False, status=status)
            if op.after is not None and error is None:
                op.after()
            self._changed.notify_all()
        if last is None:
            return
        try:
            self._emit(last)
        finally:
            with self._changed:
                self._emitting -= 1
                self._changed.notify_all()

    def _entry(self, op: _Op | None, *, first: bool, ctx: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        ctx = ctx if ctx is not None else op.audit  # type: ignore[union-attr]
        return audit.log_entry(project=self.project, principal=self.scenario.principal, first=first,
                               shape="gke" if self.realism.audit_shapes else "sandbox", **ctx, **kw)

    def _emit(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if self._closed:
                return
            self.audit_log.append(entry)
        if self.hooks.audit_sink is not None:
            try:
                self.hooks.audit_sink(entry)
            except Exception:
                log.exception("audit sink failed")

    def _audit_ctx(self, key: ClusterKey, method: str, zones: bool, permission: str,
                   pool: str | None = None) -> dict[str, Any]:
        """Where an entry is logged. GKE names a zonal cluster `zones/Z` whatever form the request used
        (captured entries); the calm world mirrors the request's form."""
        if self.realism.audit_shapes:
            zones = region_of(key.location) != key.location
        base = (f"projects/{key.project}/zones/{key.location}/clusters/{key.cluster}" if zones else key.path)
        labels = {"project_id": key.project, "location": key.location, "cluster_name": key.cluster}
        if pool is not None:
            labels["nodepool_name"] = pool
        return {"method": method, "permission": permission, "resource_labels": labels, "location": key.location,
                "cluster_resource": base,
                "resource_name": f"{base}/nodePools/{pool}" if pool is not None else base}

    def _refused(self, ctx: dict[str, Any], request: Any, error: ApiError) -> None:
        """A write refused at once: GKE logs one entry, without `operation`, severity ERROR."""
        if not self.realism.audit_refusals:
            return
        entry = self._entry(None, first=True, ctx={**ctx, "operation_id": None}, request=self._request_json(request),
                            response=({"@type": "type.googleapis.com/google.container.v1alpha1.Operation"}
                                      if self.realism.audit_shapes else None),
                            status={"code": RPC_CODES.get(error.code, 2), "message": error.message})
        self._emit(entry)

    def _audited(self, ctx: dict[str, Any], request: Any, body: Callable[[], tuple[Any, dict[str, Any] | None]],
                 delay: float | None = None) -> Any:
        """Run a write's body (which starts an operation under the lock); log a refusal; launch it."""
        try:
            op, first = body()
        except ApiError as e:
            self._refused(ctx, request, e)
            raise
        self._launch(op.name, first, delay)
        return op

    # ------------------------------------------------------------------ the API
    def get_cluster(self, req: Any) -> Any:
        key, _ = self._cluster_key(req.name, req.project_id, req.zone, req.cluster_id, "container.clusters.get")
        with self._lock:
            return self._render(self._state(key))

    def list_clusters(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        _, location = self._parent(req.parent, req.project_id, req.zone, "container.clusters.list")
        with self._lock:
            items = [self._render(s) for (loc, _), s in sorted(self._clusters.items())
                     if location in ("-", loc)]
        return c.ListClustersResponse(clusters=items)

    def create_cluster(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        desired = req.cluster
        parent = req.parent or (f"projects/{req.project_id}/zones/{req.zone}" if req.project_id else "")
        _, location = self._parent(parent, "", "", "container.clusters.create")
        if location == "-":
            raise ApiError("INVALID_ARGUMENT", "parent: a location is required to create a cluster.")
        if not valid_cluster_name(desired.name):
            raise ApiError("INVALID_ARGUMENT", f"cluster.name: invalid cluster name {desired.name[:100]!r}.")
        key = ClusterKey(self.project, location, desired.name)
        zones = "/zones/" in parent
        ctx = self._audit_ctx(key, "CreateCluster", zones, "container.clusters.create")

        def body() -> tuple[Any, dict[str, Any] | None]:
            if desired.initial_cluster_version and not re.match(r"^1\.[0-9]{1,2}(\.[0-9]+-gke\.[0-9]+)?$",
                                                                desired.initial_cluster_version):
                raise ApiError("INVALID_ARGUMENT", "No valid versions with the prefix "
                                                   f"\"{desired.initial_cluster_version[:50]}\" found.")
            autopilot = desired.autopilot.enabled
            if autopilot and desired.node_pools:
                raise ApiError("INVALID_ARGUMENT", "cluster.node_pools: Autopilot clusters manage their node pools.")
            pools = list(desired.node_pools)
            if not autopilot and not pools:
                if desired.initial_node_count <= 0:
                    raise ApiError("INVALID_ARGUMENT", "Cluster.initial_node_count must be greater than zero.")
                pools = [c.NodePool(name="default-pool", initial_node_count=desired.initial_node_count,
                                    config=desired.node_config)]
            with self._lock:
                if (location, key.cluster) in self._clusters:
                    raise ApiError("ALREADY_EXISTS", f"Already exists: {key.path}.")
                cluster = self._new_cluster(key, desired, c.Cluster.Status.PROVISIONING)
                state = _ClusterState(cluster)
                for i, pool in enumerate(pools):
                    self._check_pool(cluster, pool, f"cluster.node_pools[{i}]")
                    state.pools[pool.name] = self._new_pool(key, cluster, pool, c.NodePool.Status.PROVISIONING)
                self._clusters[(location, key.cluster)] = state

                def finish() -> None:
                    with self._lock:
                        snapshot = _copy(state.cluster)
                        pool_list = [_copy(p) for p in state.pools.values()]
                    self._connect(snapshot)
                    nodes = {p.name: self._pool_ready(key, p) for p in pool_list}
                    with self._lock:
                        state.cluster.endpoint = snapshot.endpoint
                        state.cluster.master_auth = snapshot.master_auth
                        state.cluster.control_plane_endpoints_config = snapshot.control_plane_endpoints_config
                        state.cluster.private_cluster_config = snapshot.private_cluster_config
                        state.cluster.status = c.Cluster.Status.RUNNING
                        for name, pool in state.pools.items():
                            pool.status = c.NodePool.Status.RUNNING
                            state.nodes[name] = nodes.get(name, [])
                            pool.instance_group_urls = _instance_groups(key, pool, state.nodes[name])

                op, first = self._start(key, c.Operation.Type.CREATE_CLUSTER, key.path, ctx, req, finish)
                if self.realism.own_operation_seconds:
                    self._ops[op.name].after = lambda: self._start_own(key, state)
                return op, first

        return self._audited(ctx, req, body)

    def _start_own(self, key: ClusterKey, state: _ClusterState) -> None:
        """GKE's own operation right after a create (lock held, as the create ends; no audit entry).

        Seen on real clusters: soon after a new cluster is RUNNING, GKE updates its node pools on its
        own; writes meanwhile fail as "incompatible operation" (kubernetes-sigs/cluster-api-provider-gcp
        issue 1363). The cluster and the pool are RECONCILING until it is done.
        """
        from google.cloud import container_v1 as c

        if self._closed or (key.location, key.cluster) not in self._clusters:
            return
        op_type = c.Operation.Type[self.realism.own_operation_type]
        pool = next(iter(state.pools.values()), None)
        target = self._pool_path(key, pool.name) if pool is not None and op_type.name == "UPGRADE_NODES" \
            else key.path
        previous = state.cluster.status
        state.cluster.status = c.Cluster.Status.RECONCILING
        if pool is not None and op_type.name == "UPGRADE_NODES":
            pool.status = c.NodePool.Status.RECONCILING

        def finish() -> None:
            with self._lock:
                if state.cluster.status == c.Cluster.Status.RECONCILING:
                    state.cluster.status = previous
                if pool is not None and pool.status == c.NodePool.Status.RECONCILING:
                    pool.status = c.NodePool.Status.RUNNING

        op, _ = self._start(key, op_type, target, None, None, finish)
        timer = threading.Timer(self.realism.own_operation_seconds, self._complete, args=(op.name,))
        timer.daemon = True
        self._ops[op.name].timer = timer
        timer.start()

    def delete_cluster(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        key, zones = self._cluster_key(req.name, req.project_id, req.zone, req.cluster_id,
                                       "container.clusters.delete")
        ctx = self._audit_ctx(key, "DeleteCluster", zones, "container.clusters.delete")

        def body() -> tuple[Any, dict[str, Any] | None]:
            with self._lock:
                state = self._state(key)
                self._busy(key)
                state.cluster.status = c.Cluster.Status.STOPPING

                def finish() -> None:
                    with self._lock:
                        if self._clusters.get((key.location, key.cluster)) is state:
                            self._clusters.pop((key.location, key.cluster), None)
                        gone = self._render(state)
                    if self.hooks.on_cluster_deleted is not None:
                        self.hooks.on_cluster_deleted(key, gone)

                return self._start(key, c.Operation.Type.DELETE_CLUSTER, key.path, ctx, req, finish)

        return self._audited(ctx, req, body)

    def list_node_pools(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        key, _ = self._cluster_key(req.parent, req.project_id, req.zone, req.cluster_id,
                                   "container.clusters.get")
        with self._lock:
            state = self._state(key)
            return c.ListNodePoolsResponse(node_pools=[_copy(p) for p in state.pools.values()])

    def _pool_key(self, req: Any, permission: str) -> tuple[ClusterKey, str, bool]:
        if req.name:
            m = _POOL_NAME.match(req.name)
            if not m:
                raise ApiError("INVALID_ARGUMENT", f"Invalid node pool name {req.name[:200]!r}: expected "
                                                   "projects/*/locations/*/clusters/*/nodePools/*.")
            project, form, location, cluster, pool = m.groups()
            key, _ = self._cluster_key(f"projects/{project}/{form}/{location}/clusters/{cluster}", "", "", "",
                                       permission)
            zones = form == "zones"
        else:
            key, zones = self._cluster_key("", req.project_id, req.zone, req.cluster_id, permission)
            pool = req.node_pool_id
            if not pool:
                raise ApiError("INVALID_ARGUMENT", "Required field node_pool_id missing.")
        if not valid_cluster_name(pool):
            raise ApiError("INVALID_ARGUMENT", f"Invalid node pool name {pool[:100]!r}.")
        return key, pool, zones

    def get_node_pool(self, req: Any) -> Any:
        key, pool, _ = self._pool_key(req, "container.clusters.get")
        with self._lock:
            state = self._state(key)
            if pool not in state.pools:
                raise ApiError("NOT_FOUND", f"Not found: {self._pool_path(key, pool)}.")
            return _copy(state.pools[pool])

    def create_node_pool(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        key, zones = self._cluster_key(req.parent, req.project_id, req.zone, req.cluster_id,
                                       "container.clusters.update")
        pool_in = req.node_pool
        ctx = self._audit_ctx(key, "CreateNodePool", zones, "container.clusters.update",
                              pool_in.name if valid_cluster_name(pool_in.name) else None)

        def body() -> tuple[Any, dict[str, Any] | None]:
            with self._lock:
                state = self._state(key)
                if state.cluster.autopilot.enabled:
                    raise ApiError("FAILED_PRECONDITION", "Autopilot clusters do not support node pool management.")
                self._check_pool(state.cluster, pool_in, "node_pool")
                if pool_in.name in state.pools:
                    raise ApiError("ALREADY_EXISTS", f"Already exists: {self._pool_path(key, pool_in.name)}.")
                self._busy(key)
                if state.cluster.status != c.Cluster.Status.RUNNING:
                    raise ApiError("FAILED_PRECONDITION", f"Cluster {key.cluster} is not running "
                                                          f"(status {state.cluster.status.name}).")
                pool = self._new_pool(key, state.cluster, pool_in, c.NodePool.Status.PROVISIONING)
                state.pools[pool.name] = pool
                armed = self._pool_failures.get((key.cluster, pool.name))
                failure = armed.pop(0) if armed else None

                def finish() -> None:
                    with self._lock:
                        snapshot = _copy(pool)
                    if failure is not None:  # accepted, then Compute Engine could not make the instances
                        code, message, condition = pool_error_message(
                            failure, key, snapshot, snapshot.initial_node_count * len(snapshot.locations),
                            snapshot.locations[0])
                        with self._lock:
                            pool.status = c.NodePool.Status.ERROR
                            pool.status_message = message
                            state.nodes[pool.name] = []
                        raise OperationFailed(code, message, condition)
                    nodes = self._pool_ready(key, snapshot)
                    with self._lock:
                        pool.status = c.NodePool.Status.RUNNING
                        pool.instance_group_urls = _instance_groups(key, snapshot, nodes)
                        state.nodes[pool.name] = nodes

                return self._start(key, c.Operation.Type.CREATE_NODE_POOL, self._pool_path(key, pool.name), ctx,
                                   req, finish)

        return self._audited(ctx, req, body)

    def fail_node_pool(self, cluster: str, node_pool: str, error: str = "GCE_STOCKOUT", times: int = 1) -> None:
        """Make the next `times` CreateNodePool operations of `cluster`/`node_pool` end in `error`.

        GKE accepts the request; the operation then ends DONE with `error` and `status_message`, the
        pool is ERROR, and the `last` audit entry carries the status (see `pool_error_message`).
        """
        if error not in NODE_POOL_ERRORS:
            raise ValueError(f"unknown node pool error {error!r}; expected one of {', '.join(NODE_POOL_ERRORS)}")
        if not valid_cluster_name(cluster) or not valid_cluster_name(node_pool):
            raise ValueError(f"invalid cluster or node pool name {cluster!r}/{node_pool!r}")
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= 100:
            raise ValueError(f"times must be an integer in 1..100, got {times!r}")
        with self._lock:
            self._pool_failures.setdefault((cluster, node_pool), []).extend([error] * times)

    def pending_pool_failures(self) -> dict[str, list[str]]:
        with self._lock:
            return {f"{c}/{p}": list(v) for (c, p), v in sorted(self._pool_failures.items()) if v}

    def delete_node_pool(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        key, name, zones = self._pool_key(req, "container.clusters.update")
        ctx = self._audit_ctx(key, "DeleteNodePool", zones, "container.clusters.update", name)

        def body() -> tuple[Any, dict[str, Any] | None]:
            with self._lock:
                state = self._state(key)
                if name not in state.pools:
                    raise ApiError("NOT_FOUND", f"Not found: {self._pool_path(key, name)}.")
                self._busy(key)
                state.pools[name].status = c.NodePool.Status.STOPPING

                def finish() -> None:
                    with self._lock:
                        pool = state.pools.pop(name, None)
                        nodes = state.nodes.pop(name, [])
                    if pool is not None and self.hooks.on_node_pool_deleted is not None:
                        self.hooks.on_node_pool_deleted(key, _copy(pool), list(nodes))

                return self._start(key, c.Operation.Type.DELETE_NODE_POOL, self._pool_path(key, name), ctx, req,
                                   finish)

        return self._audited(ctx, req, body)

    # -- upgrades and labels: the cluster is RECONCILING while they run -------------------------------
    def _reconcile(self, key: ClusterKey, zones: bool, method: str, req: Any, op_type: str,
                   change: Callable[[_ClusterState], Callable[[], None]], target: str | None = None) -> Any:
        """Start an update: `change` validates (lock held, may raise ApiError) and returns what to apply
        when the operation ends. The cluster is RECONCILING meanwhile, as GKE reports during upgrades."""
        from google.cloud import container_v1 as c

        ctx = self._audit_ctx(key, method, zones, "container.clusters.update")

        def body() -> tuple[Any, dict[str, Any] | None]:
            with self._lock:
                state = self._state(key)
                self._busy(key)
                if state.cluster.status != c.Cluster.Status.RUNNING:
                    raise ApiError("FAILED_PRECONDITION", f"Cluster {key.cluster} is not running "
                                                          f"(status {state.cluster.status.name}).")
                apply = change(state)
                state.cluster.status = c.Cluster.Status.RECONCILING

                def finish() -> None:
                    with self._lock:
                        apply()
                        if state.cluster.status == c.Cluster.Status.RECONCILING:
                            state.cluster.status = c.Cluster.Status.RUNNING

                return self._start(key, c.Operation.Type[op_type], target or key.path, ctx, req, finish)

        return self._audited(ctx, req, body)

    def _version(self, requested: str, field_name: str, current: str, limit: str | None = None) -> str:
        """A requested version (`latest`, `-`, `1.31`, `1.31.2-gke.100`) -> the full version it means."""
        if not _VERSION_ARG.match(requested or ""):
            raise ApiError("INVALID_ARGUMENT", f"{field_name}: version {requested[:50]!r} is not supported; "
                                               "expected 'latest', '-' or a version such as 1.31.")
        if requested in ("latest", "-"):
            return limit or current
        version = full_version(requested) if requested.count(".") == 1 else requested
        if not re.match(r"^1\.[0-9]{1,2}\.[0-9]+-gke\.[0-9]+$", version):
            version = f"{requested}-gke.100"
        if _minor(version) < _minor(current):
            raise ApiError("INVALID_ARGUMENT", f"{field_name}: downgrading from {current} to {version} "
                                               "is not supported.")
        if limit is not None and _minor(version) > _minor(limit):
            raise ApiError("INVALID_ARGUMENT", f"{field_name}: node version {version} cannot be newer than the "
                                               f"control plane version {limit}.")
        return version

    def update_master(self, req: Any) -> Any:
        key, zones = self._cluster_key(req.name, req.project_id, req.zone, req.cluster_id,
                                       "container.clusters.update")

        def change(state: _ClusterState) -> Callable[[], None]:
            version = self._version(req.master_version, "master_version", state.cluster.current_master_version)

            def apply() -> None:
                state.cluster.current_master_version = version
            return apply

        return self._reconcile(key, zones, "UpdateMaster", req, "UPGRADE_MASTER", change)

    def update_cluster(self, req: Any) -> Any:
        """UpdateCluster with `desired_master_version` or `desired_node_version` (one per request, as GKE)."""
        key, zones = self._cluster_key(req.name, req.project_id, req.zone, req.cluster_id,
                                       "container.clusters.update")
        update = req.update
        given = [f.name for f, _ in type(update).pb(update).ListFields()]
        supported = {"desired_master_version", "desired_node_version", "desired_node_pool_id"}
        unsupported = sorted(set(given) - supported)
        if unsupported:
            raise ApiError("UNIMPLEMENTED", f"update.{unsupported[0]}: the sandbox's UpdateCluster supports only "
                                            "desired_master_version and desired_node_version (+ desired_node_pool_id).")
        if update.desired_master_version and update.desired_node_version:
            raise ApiError("INVALID_ARGUMENT", "update: desired_master_version and desired_node_version cannot be "
                                               "changed in one request.")
        if update.desired_master_version:
            def master(state: _ClusterState) -> Callable[[], None]:
                version = self._version(update.desired_master_version, "update.desired_master_version",
                                        state.cluster.current_master_version)

                def apply() -> None:
                    state.cluster.current_master_version = version
                return apply

            return self._reconcile(key, zones, "UpdateCluster", req, "UPGRADE_MASTER", master)
        if not update.desired_node_version:
            raise ApiError("INVALID_ARGUMENT", "update: at least one desired_* field must be specified.")
        pool_id = update.desired_node_pool_id
        with self._lock:
            pools = list(self._state(key).pools)
        if not pool_id:
            if len(pools) != 1:
                raise ApiError("INVALID_ARGUMENT", "update.desired_node_pool_id is required when the cluster has "
                                                   f"{len(pools)} node pools.")
            pool_id = pools[0]
        if pool_id not in pools:
            raise ApiError("NOT_FOUND", f"Not found: {self._pool_path(key, pool_id)}.")

        def nodes(state: _ClusterState) -> Callable[[], None]:
            from google.cloud import container_v1 as c

            pool = state.pools[pool_id]
            version = self._version(update.desired_node_version, "update.desired_node_version", pool.version,
                                    limit=state.cluster.current_master_version)
            pool.status = c.NodePool.Status.RECONCILING

            def apply() -> None:
                pool.version = version
                pool.status = c.NodePool.Status.RUNNING
                state.cluster.current_node_version = min((p.version for p in state.pools.values()), key=_minor)
            return apply

        return self._reconcile(key, zones, "UpdateCluster", req, "UPGRADE_NODES", nodes,
                               target=self._pool_path(key, pool_id))

    def set_labels(self, req: Any) -> Any:
        """SetLabels replaces the labels; the fingerprint must be the current one (GKE's optimistic lock)."""
        key, zones = self._cluster_key(req.name, req.project_id, req.zone, req.cluster_id,
                                       "container.clusters.update")
        labels = dict(req.resource_labels)
        for k, v in labels.items():
            if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", k) or not re.match(r"^[a-z0-9_-]{0,63}$", v):
                raise ApiError("INVALID_ARGUMENT", f"resource_labels: invalid label {k[:63]!r}={v[:63]!r}.")

        def change(state: _ClusterState) -> Callable[[], None]:
            expected = state.cluster.label_fingerprint
            if req.label_fingerprint != expected:
                raise ApiError("FAILED_PRECONDITION", "Labels could not be set due to fingerprint mismatch; try "
                                                      "again with the proper fingerprint: incorrect fingerprint "
                                                      f"supplied was \"{req.label_fingerprint[:16]}\", the "
                                                      f"expected one is \"{expected}\".")
            # The new labels and fingerprint are visible at once; the operation is the propagation.
            state.cluster.resource_labels = labels
            state.cluster.label_fingerprint = label_fingerprint(labels)
            return lambda: None

        return self._reconcile(key, zones, "SetLabels", req, "UPDATE_CLUSTER", change)

    def get_operation(self, req: Any) -> Any:
        if req.name:
            m = _OPERATION_NAME.match(req.name)
            if not m:
                raise ApiError("INVALID_ARGUMENT", f"Invalid operation name {req.name[:200]!r}: expected "
                                                   "projects/*/locations/*/operations/*.")
            project, _, location, op_id = m.groups()
        elif req.project_id and req.zone and req.operation_id:
            project, location, op_id = req.project_id, req.zone, req.operation_id
        else:
            raise ApiError("INVALID_ARGUMENT", "Required field 'name' is missing.")
        path = f"projects/{project}/locations/{location}/operations/{op_id}"
        self._check_project(project, "container.operations.get", path)
        with self._lock:
            op = self._ops.get(op_id)
            if op is None or op.key.location != location:
                raise ApiError("NOT_FOUND", f"Not found: {path}.")
            return _copy(op.message)

    def list_operations(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        _, location = self._parent(req.parent, req.project_id, req.zone, "container.operations.list")
        with self._lock:
            ops = [_copy(o.message) for o in self._ops.values() if location in ("-", o.key.location)]
        return c.ListOperationsResponse(operations=ops)

    def list_usable_subnetworks(self, req: Any) -> Any:
        """The subnetworks the caller may use, of one project: the parent's, or `networkProjectId=HOST`'s.

        As the method's reference says, `filter` supports only equality on networkProjectId and the
        list defaults to the parent project. A Shared VPC subnetwork whose secondary ranges the
        caller may not use is listed without them and with a `status_message` saying why.
        """
        from google.cloud import container_v1 as c

        m = re.match(r"^projects/([^/]+)$", req.parent or "")
        if not m:
            raise ApiError("INVALID_ARGUMENT", f"Invalid parent {req.parent[:200]!r}: expected projects/*.")
        self._check_project(m.group(1), "container.clusters.list", req.parent)
        owner = self.project
        if req.filter:
            f = re.match(r"^\s*networkProjectId\s*=\s*\"?([a-z][a-z0-9-]{4,28}[a-z0-9])\"?\s*$", req.filter)
            if not f:
                raise ApiError("INVALID_ARGUMENT", f"Invalid filter {req.filter[:200]!r}: only "
                                                   "networkProjectId=[PROJECTID] is supported.")
            owner = f.group(1)
        size = req.page_size if 0 < req.page_size <= 500 else 500
        try:
            start = int(req.page_token or 0)
        except ValueError:
            raise ApiError("INVALID_ARGUMENT", f"Invalid page_token {req.page_token[:50]!r}.") from None
        subnets = [s for s in self.subnetworks() if (s.project or self.project) == owner]
        page = subnets[start:start + size]
        items = []
        for s in page:
            path = f"projects/{owner}/regions/{s.region}/subnetworks/{s.subnetwork}"
            usable = c.UsableSubnetwork(subnetwork=path, network=f"projects/{owner}/global/networks/{s.network}",
                                        ip_cidr_range=s.primary_range)
            if s.network_user:
                usable.secondary_ip_ranges = [c.UsableSubnetworkSecondaryRange(
                    range_name=n, ip_cidr_range=r, status=c.UsableSubnetworkSecondaryRange.Status.UNUSED)
                    for n, r in s.secondary_ranges.items()]
            else:
                usable.status_message = (
                    f"Insufficient permission to list the secondary ranges of {path}: the caller needs "
                    f"compute.subnetworks.get on project {owner} (roles/compute.networkUser).")
            items.append(usable)
        token = str(start + size) if start + size < len(subnets) else ""
        return c.ListUsableSubnetworksResponse(subnetworks=items, next_page_token=token)

    # ------------------------------------------------------------------ the VPC (shared with Compute)
    def subnetworks(self) -> list[Subnetwork]:
        """The subnetworks the world knows (the scenario's, a Shared VPC host's included, then those Compute
        created), in creation order."""
        with self._lock:
            return list(self._subnets.values())

    def add_subnetwork(self, subnet: Subnetwork) -> None:
        """A subnetwork created through Compute: from now on ListUsableSubnetworks and node pools see it."""
        with self._lock:
            key = (subnet.project or self.project, subnet.region, subnet.subnetwork)
            if key in self._subnets:
                raise ApiError("ALREADY_EXISTS", f"The resource 'projects/{key[0]}/regions/{subnet.region}"
                                                 f"/subnetworks/{subnet.subnetwork}' already exists")
            self._subnets[key] = subnet
            self._changed.notify_all()

    def subnetwork_users(self, region: str, name: str) -> list[str]:
        """Node pools whose additional networks use this subnetwork (Compute refuses to delete it)."""
        with self._lock:
            users: list[str] = []
            target = self._subnets.get((self.project, region, name))
            if target is None:
                return users
            for (location, cluster), state in sorted(self._clusters.items()):
                if region_of(location) != region:
                    continue
                for pool in state.pools.values():
                    net = pool.network_config
                    refs = [n.subnetwork for n in net.additional_node_network_configs]
                    refs += [p.subnetwork for p in net.additional_pod_network_configs]
                    if any(self._subnet(r, region) is target for r in refs):
                        users.append(f"projects/{self.project}/locations/{location}/clusters/{cluster}"
                                     f"/nodePools/{pool.name}")
            return users

    def remove_subnetwork(self, region: str, name: str) -> Subnetwork:
        """Forget a subnetwork Compute deleted (KeyError if there is none)."""
        with self._lock:
            subnet = self._subnets.pop((self.project, region, name))
            self._changed.notify_all()
            return subnet

    # ------------------------------------------------------------------ for tests and the stack
    def cluster_nodes(self, location: str, cluster: str) -> dict[str, list[str]]:
        """Node names per pool of a cluster (empty if it does not exist)."""
        with self._lock:
            state = self._clusters.get((location, cluster))
            return {k: list(v) for k, v in state.nodes.items()} if state else {}
