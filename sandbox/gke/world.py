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
- hooks let the stack give each cluster a real (sandbox) Kubernetes API server and nodes.
Hooks and sinks are always called without the world's lock held, so they may call back in.
"""

from __future__ import annotations

import base64
import datetime as dt
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
from sandbox.gke.scenario import (
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


class ApiError(Exception):
    """A GKE API error: `code` is the gRPC status name (`NOT_FOUND`), `message` GKE-style text."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, order=True)
class ClusterKey:
    """A cluster's identity, with the same attribute names as `shared.refs.ClusterRef`.

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
    """A long-running operation and what its closing audit entry needs."""

    message: Any  # container_v1.Operation
    key: ClusterKey
    audit: dict[str, Any]
    finish: Callable[[], None]
    timer: threading.Timer | None = None


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


class World:
    def __init__(self, scenario: Scenario, *, hooks: Hooks | None = None, operation_delay: float = 0.5,
                 start_all: bool = False) -> None:
        if not 0 <= operation_delay <= 3600:
            raise ValueError(f"operation_delay must be in 0..3600 seconds, got {operation_delay!r}")
        self.scenario = scenario
        self.project = scenario.project
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
        self._subnets = {(s.region, s.subnetwork): s for s in scenario.subnetworks}
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
        m = _SUBNET_PATH.match(ref)
        if m:
            project, sub_region, name = m.groups()
            return self._subnets.get((sub_region, name)) if project == self.project else None
        return self._subnets.get((region, ref))

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
            if network != s.network:
                raise ApiError("INVALID_ARGUMENT", f"{where}.network: subnetwork {s.subnetwork!r} belongs to "
                                                   f"network {s.network!r}, not {n.network[:200]!r}.")
            node_subnets.add((s.region, s.subnetwork))
        for i, p in enumerate(extra[1]):
            where = f"{path}.network_config.additional_pod_network_configs[{i}]"
            s = self._subnet(p.subnetwork, region)
            if s is None or (s.region, s.subnetwork) not in node_subnets:
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
        out.locations = list(pool.locations) or pool_locations(key.location)
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
        out.locations = pool_locations(key.location)
        out.label_fingerprint = secrets.token_hex(4)
        return out

    def _connect(self, cluster: Any) -> None:
        """Give the cluster its API endpoint and CA, from the hook or a placeholder."""
        if self.hooks.on_cluster is not None:
            endpoint, ca = self.hooks.on_cluster(_copy(cluster))
            ca_pem = ca.encode() if isinstance(ca, str) else bytes(ca)
        else:
            endpoint, ca_pem = PLACEHOLDER_ENDPOINT, self_signed_ca_pem(f"sandbox-{cluster.name}-ca")
        cluster.endpoint = endpoint
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
        with self._lock:
            self._clusters[(key.location, key.cluster)] = state

    # ------------------------------------------------------------------ operations
    def _start(self, key: ClusterKey, op_type: Any, target: str, audit_ctx: dict[str, Any],
               request: Any, finish: Callable[[], None]) -> tuple[Any, dict[str, Any]]:
        """Register a RUNNING operation on `key` (lock held by the caller), to finish later."""
        from google.cloud import container_v1 as c

        op_id = f"operation-{int(dt.datetime.now(dt.UTC).timestamp() * 1000)}-{secrets.token_hex(4)}"
        message = c.Operation(
            name=op_id, zone=key.location, location=key.location, operation_type=op_type,
            status=c.Operation.Status.RUNNING,
            self_link=f"{API_ROOT}/projects/{key.project}/locations/{key.location}/operations/{op_id}",
            target_link=f"{API_ROOT}/{target}", start_time=audit.rfc3339())
        self._ops[op_id] = _Op(message, key, {**audit_ctx, "operation_id": op_id}, finish)
        self._running[(key.location, key.cluster)] = op_id
        first = self._entry(self._ops[op_id], first=True, request=_json(request), response=_json(message))
        return _copy(message), first

    def _busy(self, key: ClusterKey) -> None:
        running = self._running.get((key.location, key.cluster))
        if running is not None:
            raise ApiError("FAILED_PRECONDITION", f"Cluster is running incompatible operation {running}.")

    def _launch(self, op_id: str, first: dict[str, Any]) -> None:
        """Emit the first audit entry, then schedule completion (so `last` never precedes `first`)."""
        self._emit(first)
        timer = threading.Timer(self.operation_delay, self._complete, args=(op_id,))
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._ops[op_id].timer = timer
            timer.start()

    def _complete(self, op_id: str) -> None:
        from google.cloud import container_v1 as c

        with self._lock:
            if self._closed:
                return
            op = self._ops[op_id]
        error = None
        try:
            op.finish()
        except Exception as e:  # a hook failed: the operation fails, as a GKE operation can
            log.exception("sandbox GKE operation %s failed", op_id)
            error = str(e) or type(e).__name__
        with self._changed:
            if self._closed:
                return
            op.message.status = c.Operation.Status.DONE
            op.message.end_time = audit.rfc3339()
            op.message.progress = c.OperationProgress(status=c.Operation.Status.DONE)
            if error:
                op.message.status_message = error
                op.message.error = {"code": 13, "message": error}
            self._running.pop((op.key.location, op.key.cluster), None)
            self._emitting += 1  # idle only once the closing entry has reached the sink
            last = self._entry(op, first=False, status={"code": 13, "message": error} if error else None)
        try:
            self._emit(last)
        finally:
            with self._changed:
                self._emitting -= 1
                self._changed.notify_all()

    def _entry(self, op: _Op, *, first: bool, **kw: Any) -> dict[str, Any]:
        return audit.log_entry(project=self.project, principal=self.scenario.principal, first=first,
                               location=op.key.location, **op.audit, **kw)

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
        base = (f"projects/{key.project}/zones/{key.location}/clusters/{key.cluster}" if zones else key.path)
        labels = {"project_id": key.project, "location": key.location, "cluster_name": key.cluster}
        if pool is not None:
            labels["nodepool_name"] = pool
        return {"method": method, "permission": permission, "resource_labels": labels,
                "resource_name": f"{base}/nodePools/{pool}" if pool is not None else base}

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
        if desired.initial_cluster_version and not re.match(r"^1\.[0-9]{1,2}(\.[0-9]+-gke\.[0-9]+)?$",
                                                            desired.initial_cluster_version):
            raise ApiError("INVALID_ARGUMENT", "cluster.initial_cluster_version: unsupported version "
                                               f"{desired.initial_cluster_version[:50]!r}.")
        autopilot = desired.autopilot.enabled
        if autopilot and desired.node_pools:
            raise ApiError("INVALID_ARGUMENT", "cluster.node_pools: Autopilot clusters manage their node pools.")
        pools = list(desired.node_pools)
        if not autopilot and not pools:
            if desired.initial_node_count <= 0:
                raise ApiError("INVALID_ARGUMENT", "Cluster.initial_node_count must be greater than zero.")
            pools = [c.NodePool(name="default-pool", initial_node_count=desired.initial_node_count,
                                config=desired.node_config)]
        key = ClusterKey(self.project, location, desired.name)
        zones = "/zones/" in parent
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
                    state.cluster.status = c.Cluster.Status.RUNNING
                    for name, pool in state.pools.items():
                        pool.status = c.NodePool.Status.RUNNING
                        state.nodes[name] = nodes.get(name, [])

            op, first = self._start(key, c.Operation.Type.CREATE_CLUSTER, key.path,
                                    self._audit_ctx(key, "CreateCluster", zones, "container.clusters.create"),
                                    req, finish)
        self._launch(op.name, first)
        return op

    def delete_cluster(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        key, zones = self._cluster_key(req.name, req.project_id, req.zone, req.cluster_id,
                                       "container.clusters.delete")
        with self._lock:
            state = self._state(key)
            self._busy(key)
            state.cluster.status = c.Cluster.Status.STOPPING

            def finish() -> None:
                with self._lock:
                    self._clusters.pop((key.location, key.cluster), None)
                    gone = self._render(state)
                if self.hooks.on_cluster_deleted is not None:
                    self.hooks.on_cluster_deleted(key, gone)

            op, first = self._start(key, c.Operation.Type.DELETE_CLUSTER, key.path,
                                    self._audit_ctx(key, "DeleteCluster", zones, "container.clusters.delete"),
                                    req, finish)
        self._launch(op.name, first)
        return op

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

            def finish() -> None:
                with self._lock:
                    snapshot = _copy(pool)
                nodes = self._pool_ready(key, snapshot)
                with self._lock:
                    pool.status = c.NodePool.Status.RUNNING
                    pool.instance_group_urls = [
                        f"https://www.googleapis.com/compute/v1/projects/{key.project}/zones/{z}/"
                        f"instanceGroupManagers/{n.rsplit('-', 1)[0]}-grp"
                        for z, n in zip(snapshot.locations, nodes, strict=False)]
                    state.nodes[pool.name] = nodes

            op, first = self._start(key, c.Operation.Type.CREATE_NODE_POOL, self._pool_path(key, pool.name),
                                    self._audit_ctx(key, "CreateNodePool", zones, "container.clusters.update",
                                                    pool.name), req, finish)
        self._launch(op.name, first)
        return op

    def delete_node_pool(self, req: Any) -> Any:
        from google.cloud import container_v1 as c

        key, name, zones = self._pool_key(req, "container.clusters.update")
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

            op, first = self._start(key, c.Operation.Type.DELETE_NODE_POOL, self._pool_path(key, name),
                                    self._audit_ctx(key, "DeleteNodePool", zones, "container.clusters.update",
                                                    name), req, finish)
        self._launch(op.name, first)
        return op

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
        from google.cloud import container_v1 as c

        m = re.match(r"^projects/([^/]+)$", req.parent or "")
        if not m:
            raise ApiError("INVALID_ARGUMENT", f"Invalid parent {req.parent[:200]!r}: expected projects/*.")
        self._check_project(m.group(1), "container.clusters.list", req.parent)
        size = req.page_size if 0 < req.page_size <= 500 else 500
        try:
            start = int(req.page_token or 0)
        except ValueError:
            raise ApiError("INVALID_ARGUMENT", f"Invalid page_token {req.page_token[:50]!r}.") from None
        subnets = self.subnetworks()
        page = subnets[start:start + size]
        items = [c.UsableSubnetwork(
            subnetwork=f"projects/{self.project}/regions/{s.region}/subnetworks/{s.subnetwork}",
            network=f"projects/{self.project}/global/networks/{s.network}",
            ip_cidr_range=s.primary_range,
            secondary_ip_ranges=[c.UsableSubnetworkSecondaryRange(
                range_name=n, ip_cidr_range=r, status=c.UsableSubnetworkSecondaryRange.Status.UNUSED)
                for n, r in s.secondary_ranges.items()]) for s in page]
        token = str(start + size) if start + size < len(subnets) else ""
        return c.ListUsableSubnetworksResponse(subnetworks=items, next_page_token=token)

    # ------------------------------------------------------------------ the VPC (shared with Compute)
    def subnetworks(self) -> list[Subnetwork]:
        """The project's subnetworks (the scenario's, then those Compute created), in creation order."""
        with self._lock:
            return list(self._subnets.values())

    def add_subnetwork(self, subnet: Subnetwork) -> None:
        """A subnetwork created through Compute: from now on ListUsableSubnetworks and node pools see it."""
        with self._lock:
            if (subnet.region, subnet.subnetwork) in self._subnets:
                raise ApiError("ALREADY_EXISTS", f"The resource 'projects/{self.project}/regions/{subnet.region}"
                                                 f"/subnetworks/{subnet.subnetwork}' already exists")
            self._subnets[(subnet.region, subnet.subnetwork)] = subnet
            self._changed.notify_all()

    def subnetwork_users(self, region: str, name: str) -> list[str]:
        """Node pools whose additional networks use this subnetwork (Compute refuses to delete it)."""
        with self._lock:
            users: list[str] = []
            target = self._subnets.get((region, name))
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
            subnet = self._subnets.pop((region, name))
            self._changed.notify_all()
            return subnet

    # ------------------------------------------------------------------ for tests and the stack
    def cluster_nodes(self, location: str, cluster: str) -> dict[str, list[str]]:
        """Node names per pool of a cluster (empty if it does not exist)."""
        with self._lock:
            state = self._clusters.get((location, cluster))
            return {k: list(v) for k, v in state.nodes.items()} if state else {}
