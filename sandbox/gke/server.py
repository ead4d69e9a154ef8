"""The sandbox GKE API: `google.container.v1.ClusterManager` over gRPC on loopback.

No GKE emulator exists, so the project serves one: the unmodified `ClusterManagerClient`
(given an insecure channel to this server) cannot tell it from GKE for the methods the
controller uses. Requests and responses are the client library's own proto-plus types, plugged
into grpc's generic handlers through their `serialize` / `deserialize` functions.

`GkeSandbox` bundles the world (`sandbox.gke.world`), fault injection (`.faults`), call counts
(`.calls`) and an optional admin HTTP endpoint for out-of-process control (docs/SANDBOX_GKE.md).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc

from sandbox.gke.faults import METHODS, Faults
from sandbox.gke.protos import cluster_message
from sandbox.gke.realism import Realism
from sandbox.gke.scenario import DEFAULT_SCENARIO, ClusterSpec, Scenario, load
from sandbox.gke.world import ApiError, AuditSink, Hooks, OnCluster, OnClusterDeleted, OnNodePool, World

log = logging.getLogger(__name__)

SERVICE = "google.container.v1.ClusterManager"

# RPC name -> (World method, request type name, response type name) in google.cloud.container_v1.
_RPCS = {
    "GetCluster": ("get_cluster", "GetClusterRequest", "Cluster"),
    "ListClusters": ("list_clusters", "ListClustersRequest", "ListClustersResponse"),
    "CreateCluster": ("create_cluster", "CreateClusterRequest", "Operation"),
    "DeleteCluster": ("delete_cluster", "DeleteClusterRequest", "Operation"),
    "ListNodePools": ("list_node_pools", "ListNodePoolsRequest", "ListNodePoolsResponse"),
    "GetNodePool": ("get_node_pool", "GetNodePoolRequest", "NodePool"),
    "CreateNodePool": ("create_node_pool", "CreateNodePoolRequest", "Operation"),
    "DeleteNodePool": ("delete_node_pool", "DeleteNodePoolRequest", "Operation"),
    "GetOperation": ("get_operation", "GetOperationRequest", "Operation"),
    "ListOperations": ("list_operations", "ListOperationsRequest", "ListOperationsResponse"),
    "ListUsableSubnetworks": ("list_usable_subnetworks", "ListUsableSubnetworksRequest",
                              "ListUsableSubnetworksResponse"),
    "UpdateCluster": ("update_cluster", "UpdateClusterRequest", "Operation"),
    "UpdateMaster": ("update_master", "UpdateMasterRequest", "Operation"),
    "SetLabels": ("set_labels", "SetLabelsRequest", "Operation"),
}
assert set(_RPCS) == set(METHODS)


class GkeSandbox:
    """A simulated GKE project served on 127.0.0.1; see the module docstring.

    `scenario` is a `Scenario`, a path to a scenario YAML, or None for the default scenario.
    `start_all=True` also creates the clusters marked `create_at_start: false`.
    `realism`: GKE's ordinary-day behaviours (default: the scenario's `realism`, itself "realistic"
    unless set); `Realism.calm()` for a world without surprises.
    """

    def __init__(
        self,
        scenario: Scenario | str | Path | None = None,
        *,
        on_cluster: OnCluster | None = None,
        on_node_pool: OnNodePool | None = None,
        on_node_pool_deleted: OnNodePool | None = None,
        on_cluster_deleted: OnClusterDeleted | None = None,
        audit_sink: AuditSink | None = None,
        operation_delay: float = 0.5,
        start_all: bool = False,
        realism: Realism | None = None,
        token: str | None = None,
    ) -> None:
        if not isinstance(scenario, Scenario):
            scenario = load(scenario if scenario is not None else DEFAULT_SCENARIO)
        self.scenario = scenario
        self.faults = Faults()
        self.calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        hooks = Hooks(on_cluster, on_node_pool, on_node_pool_deleted, on_cluster_deleted, audit_sink)
        self.world = World(scenario, hooks=hooks, operation_delay=operation_delay, start_all=start_all,
                           realism=realism)
        self.endpoint: str | None = None
        self.admin_url: str | None = None
        self._server: grpc.Server | None = None
        self._admin: ThreadingHTTPServer | None = None
        # The REST surface (sandbox.gke.rest): gcloud and the REST client. `token`, when given, is
        # the Bearer token it requires, as the sandbox Kubernetes API servers do.
        self.token = token
        self.rest_url: str | None = None
        self.rest: Any = None  # sandbox.gke.rest.RestApp once started
        self._rest_server: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0, *, admin_port: int | None = None, rest_port: int | None = None) -> str:
        """Serve on 127.0.0.1:`port` (0 = a free port); returns "127.0.0.1:N".

        `admin_port` (0 = free) also starts the admin HTTP endpoint (`self.admin_url`);
        `rest_port` (0 = free) the REST surface, GKE + Compute + Service Usage (`self.rest_url`).
        """
        from google.cloud import container_v1

        if self._server is not None:
            raise RuntimeError("the sandbox GKE server is already started")
        handlers = {}
        for rpc, (attr, req_name, resp_name) in _RPCS.items():
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                self._handler(rpc, getattr(self.world, attr)),
                request_deserializer=getattr(container_v1, req_name).deserialize,
                response_serializer=getattr(container_v1, resp_name).serialize)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="sandbox-gke"))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        bound = server.add_insecure_port(f"127.0.0.1:{int(port)}")
        if not bound:
            raise OSError(f"cannot bind 127.0.0.1:{port}")
        server.start()
        self._server = server
        self.endpoint = f"127.0.0.1:{bound}"
        if admin_port is not None:
            self._start_admin(admin_port)
        if rest_port is not None:
            self._start_rest(rest_port)
        return self.endpoint

    def stop(self, grace: float = 0.5) -> None:
        """Stop serving, cancel pending operations and the admin endpoint (idempotent)."""
        self.world.close()
        if self._rest_server is not None:
            self._rest_server.stop()
            self._rest_server = None
        if self._admin is not None:
            self._admin.shutdown()
            self._admin.server_close()
            self._admin = None
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> GkeSandbox:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests and the stack
    @property
    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit entry emitted so far, in order (also sent to the audit sink)."""
        return list(self.world.audit_log)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return self.world.wait_idle(timeout)

    def cluster_spec(self, name: str, **overrides: Any) -> ClusterSpec:
        """The scenario's spec for `name` (or a new one in the scenario's location), with overrides."""
        try:
            spec = self.scenario.cluster(name)
        except KeyError:
            spec = ClusterSpec(name=name, location=self.scenario.location)
        return dataclasses.replace(spec, **overrides) if overrides else spec

    def create_cluster(self, name: str, *, wait: bool = True, timeout: float = 10.0, **overrides: Any) -> Any:
        """Create a cluster through the same path as the CreateCluster RPC (audit entries included).

        The cluster comes from the scenario (typically one marked `create_at_start: false`) or is
        new, with ClusterSpec fields overridden by keyword (`version="1.27"`, `labels={...}`).
        Returns the Operation; with `wait`, returns once it is DONE (GKE's own operation that may follow
        it in a realistic world is not waited for: see `world.running_operation`).
        """
        from google.cloud import container_v1

        spec = self.cluster_spec(name, **overrides)
        request = container_v1.CreateClusterRequest(
            parent=f"projects/{self.scenario.project}/locations/{spec.location}",
            cluster=cluster_message(spec))
        try:
            op = self.world.create_cluster(request)
        except ApiError as e:
            raise RuntimeError(f"create_cluster({name!r}): {e}") from None
        if wait and not self.world.wait_operation(op.name, timeout):  # GKE's own next operation may run on
            raise TimeoutError(f"create_cluster({name!r}) did not finish within {timeout} s")
        return op

    # ------------------------------------------------------------------ REST
    def _start_rest(self, port: int) -> None:
        from sandbox.gke.compute import Compute
        from sandbox.gke.rest import RestApp, RestServer

        self.rest = RestApp(self, Compute(self.world))
        self._rest_server = RestServer(self.rest)
        self.rest_url = self._rest_server.start(port)

    def record_call(self, rpc: str) -> None:
        """Count one call of `rpc` (either surface) in `self.calls`."""
        with self._calls_lock:
            self.calls[rpc] += 1

    # ------------------------------------------------------------------ gRPC plumbing
    def _handler(self, rpc: str, fn: Any) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with self._calls_lock:
                self.calls[rpc] += 1
            self.faults.apply(rpc, context)
            try:
                return fn(request)
            except ApiError as e:
                if e.reason:  # GKE's ErrorInfo, in grpc-status-details-bin as google.rpc.Status
                    context.abort_with_status(_rich_status(e))
                context.abort(grpc.StatusCode[e.code], e.message)
            except Exception as e:  # a sandbox bug: say so rather than hang the client
                log.exception("sandbox GKE %s failed", rpc)
                context.abort(grpc.StatusCode.INTERNAL, f"sandbox error in {rpc}: {e}")
        return call

    # ------------------------------------------------------------------ admin HTTP
    def _start_admin(self, port: int) -> None:
        sandbox = self

        class Admin(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("admin: " + fmt, *args)

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 <= length <= 1 << 20:
                    raise ValueError("body too large")
                return json.loads(self.rfile.read(length) or b"{}")

            def do_GET(self) -> None:
                routes = {
                    "/healthz": lambda: {"ok": True, "endpoint": sandbox.endpoint},
                    "/faults": sandbox.faults.pending,
                    "/calls": lambda: dict(sandbox.calls),
                    "/audit": lambda: sandbox.audit_log,
                    "/realism": lambda: {"name": sandbox.world.realism.name,
                                         **dataclasses.asdict(sandbox.world.realism)},
                    "/node-pool-failures": sandbox.world.pending_pool_failures,
                }
                route = routes.get(self.path)
                if route is None:
                    self._reply(404, {"error": f"no route GET {self.path}"})
                else:
                    self._reply(200, route())

            def do_DELETE(self) -> None:
                if self.path != "/faults":
                    self._reply(404, {"error": f"no route DELETE {self.path}"})
                    return
                sandbox.faults.clear()
                self._reply(200, {"cleared": True})

            def do_POST(self) -> None:
                try:
                    body = self._body()
                    if not isinstance(body, dict):
                        raise ValueError("expected a JSON object")
                    if self.path == "/faults":
                        self._reply(200, sandbox._admin_fault(body))
                    elif self.path == "/clusters":
                        name = body.get("name")
                        if not isinstance(name, str):
                            raise ValueError("name: expected a cluster name")
                        op = sandbox.create_cluster(name, wait=bool(body.get("wait", False)))
                        self._reply(200, {"operation": op.name})
                    elif self.path == "/node-pool-failures":
                        self._reply(200, sandbox._admin_pool_failure(body))
                    elif self.path == "/operations/complete":
                        op = body.get("operation")
                        if not isinstance(op, str):
                            raise ValueError("operation: expected an operation name (operation-...)")
                        done = sandbox.world.complete_operation(op)
                        self._reply(200, {"operation": done.name, "status": done.status.name})
                    else:
                        self._reply(404, {"error": f"no route POST {self.path}"})
                except (ValueError, TypeError, KeyError, RuntimeError, TimeoutError) as e:
                    self._reply(400, {"error": str(e)})

        server = ThreadingHTTPServer(("127.0.0.1", int(port)), Admin)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="sandbox-gke-admin", daemon=True).start()
        self._admin = server
        self.admin_url = f"http://127.0.0.1:{server.server_address[1]}"

    def _admin_pool_failure(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"cluster", "node_pool", "error", "times"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        cluster, pool = body.get("cluster"), body.get("node_pool")
        if not isinstance(cluster, str) or not isinstance(pool, str):
            raise ValueError("cluster and node_pool: expected names")
        self.world.fail_node_pool(cluster, pool, str(body.get("error", "GCE_STOCKOUT")), body.get("times", 1))
        return {"pending": self.world.pending_pool_failures()}

    def _admin_fault(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"method", "code", "delay", "times", "message"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        method = body.get("method")
        if not isinstance(method, str):
            raise ValueError("method: expected an RPC name such as GetCluster")
        times = body.get("times", 1)
        if ("code" in body) == ("delay" in body):
            raise ValueError("give exactly one of code (to fail) or delay (seconds)")
        if "code" in body:
            self.faults.fail(method, body["code"], times=times, message=str(body.get("message", "")))
        else:
            self.faults.delay(method, body["delay"], times=times)
        return {"pending": self.faults.pending()}


def _rich_status(error: ApiError) -> grpc.Status:
    """The gRPC status GKE sends: code, message, and details [ErrorInfo, RequestInfo] (captured in CAPG 1363)."""
    import secrets

    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    details = []
    for detail in (error_details_pb2.ErrorInfo(reason=error.reason, domain=error.domain),
                   error_details_pb2.RequestInfo(request_id=f"0x{secrets.token_hex(8)}")):
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    return rpc_status.to_status(status_pb2.Status(code=grpc.StatusCode[error.code].value[0], message=error.message,
                                                  details=details))
