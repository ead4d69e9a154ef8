"""The GKE API adapter: clusters, node pools, usable subnetworks, and cluster API credentials.

The one place the controller talks to GKE. Everything that can go wrong is decided here, once:
client-library exceptions become `Permanent` (retrying cannot help: the cluster is missing, the
request is invalid, we lack permission) or `Transient` (Pub/Sub should redeliver: GKE is busy,
slow or unreachable). Calls carry a fixed timeout and no hidden client-side retries, because the
function's own retry (Pub/Sub redelivery with backoff) is the one retry policy of the system and
a call must not outlive the function's deadline.

Heavy SDKs (`google.cloud.container_v1`, `grpc`, `kubernetes`, `google.auth`) are imported inside
the methods that need them, so a cold start pays for them only when an event needs GKE.

`MULTUS_PROVISIONER_GKE_ENDPOINT=host:port` points the client at another ClusterManager server
over plain gRPC with no credentials (the sandbox, a test double); without it the ordinary client
with Application Default Credentials is used.
"""

from __future__ import annotations

import base64
import binascii
import collections
import ipaddress
import os
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from shared.core import endpoints, logs
from shared.core.endpoints import Endpoint
from shared.core.errors import (
    Busy,
    NeedsFix,
    NotFound,
    Permanent,
    Problem,
    ProvisionerError,
    Rejected,
    Transient,
)
from shared.core.names import SUBNET_PATH, compute_ref
from shared.core.observed import PoolFailure
from shared.core.prechecks import ClusterFacts
from shared.core.refs import ClusterRef, check_parts, valid_node_pool_name
from shared.core.settings import NodePoolTemplate, Settings

if TYPE_CHECKING:
    import kubernetes.client
    from google.cloud import container_v1

API = "gke"
T = TypeVar("T")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT_TIMEOUT = 30.0

# gRPC codes a retry will not fix; every other error of the API (UNAVAILABLE, DEADLINE_EXCEEDED,
# RESOURCE_EXHAUSTED, INTERNAL, ABORTED, UNKNOWN, CANCELLED...) and transport failures are transient.
PERMANENT_CODES = frozenset({"NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED",
                             "UNAUTHENTICATED", "ALREADY_EXISTS", "OUT_OF_RANGE", "UNIMPLEMENTED"})

_OPERATION = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_]{0,127}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$")
_TOKEN = re.compile(r"^[\x21-\x7e]{1,8192}$")  # printable ASCII, no spaces: safe in an HTTP header


# ---------------------------------------------------------------------------------------------
# Error mapping
# ---------------------------------------------------------------------------------------------

# What GKE answers when a write meets another operation on the cluster (docs/SANDBOX_GKE.md "An
# ordinary day": CAPG issue 1363 for the message and ErrorInfo; terraform-provider-google issues 3650
# and 10366 for the older "Please wait and try again" wording). It passes when the operation ends.
BUSY_REASONS = frozenset({"CLUSTER_ALREADY_HAS_OPERATION"})
_BUSY_TEXT = re.compile(r"incompatible operation|please wait and try again|is currently (?:upgrading|"
                        r"creating|deleting|updating)", re.IGNORECASE)
_OPERATION_IN_TEXT = re.compile(r"\b(operation-[A-Za-z0-9-]{1,120})")


def _reason(exc: Any) -> str | None:
    """The ErrorInfo reason of a GAPIC error (api_core >= 2.x exposes `.reason` from its details)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    for detail in getattr(exc, "details", None) or ():
        value = getattr(detail, "reason", None)
        if isinstance(value, str) and value:
            return value
    return None


def map_error(exc: BaseException, what: str) -> ProvisionerError | None:
    """A client-library (or auth, or transport) exception -> Permanent, Transient or Busy, with GKE's message.

    Decided by what GKE means, not by the code alone: a FAILED_PRECONDITION that says another
    operation is running is `Busy` (it passes), any other is `Permanent`. An exception that is
    none of the API's, auth's or the transport's is a bug: None, and the caller lets it surface.
    """
    import grpc
    from google.api_core import exceptions as gexc

    if isinstance(exc, ProvisionerError):
        return exc
    if isinstance(exc, gexc.GoogleAPICallError):
        status = exc.grpc_status_code
        code = status.name if status is not None else str(exc.code)
        text = f"GKE {what}: {code}: {exc.message}"
        if code == "FAILED_PRECONDITION" and (_reason(exc) in BUSY_REASONS or _BUSY_TEXT.search(exc.message or "")):
            m = _OPERATION_IN_TEXT.search(exc.message or "")
            return Busy(text, api=API, operation=m.group(1) if m else None)
        if isinstance(exc, gexc.NotFound) or code in ("NOT_FOUND", "404"):
            return NotFound(text, code="NOT_FOUND", api=API)
        return (Permanent if code in PERMANENT_CODES else Transient)(text, code=code, api=API)
    if isinstance(exc, gexc.RetryError):
        return Transient(f"GKE {what}: gave up: {exc.message}", code="DEADLINE_EXCEEDED", api=API)
    auth = _auth_error(exc, what)
    if auth is not None:
        return auth
    if isinstance(exc, grpc.RpcError | OSError | TimeoutError | gexc.GoogleAPIError):
        # The call did not complete (a channel error outside the GAPIC wrapper, a socket error).
        return Transient(f"GKE {what}: {type(exc).__name__}: {exc}", code="UNAVAILABLE", api=API)
    return None


def raise_mapped(exc: BaseException, what: str) -> NoReturn:
    """Raise the mapped error from `exc`, or `exc` itself when it is a bug (not an API's answer)."""
    mapped = map_error(exc, what)
    if mapped is None:
        raise exc
    raise mapped from exc


def _auth_error(exc: BaseException, what: str) -> ProvisionerError | None:
    from google.auth import exceptions as aexc

    if isinstance(exc, aexc.TransportError):
        return Transient(f"{what}: cannot reach the token service: {exc}", code="UNAVAILABLE", api="auth")
    if isinstance(exc, aexc.RefreshError):
        cls = Transient if getattr(exc, "retryable", False) else Permanent
        return cls(f"{what}: cannot refresh Google credentials: {exc}", code="UNAUTHENTICATED", api="auth")
    if isinstance(exc, aexc.DefaultCredentialsError):
        return Permanent(f"{what}: no Google credentials: {exc}", code="UNAUTHENTICATED", api="auth")
    if isinstance(exc, aexc.GoogleAuthError):
        return Permanent(f"{what}: Google credentials error: {exc}", code="UNAUTHENTICATED", api="auth")
    return None


# ---------------------------------------------------------------------------------------------
# Failed operations
# ---------------------------------------------------------------------------------------------

# GKE's words for "not now, maybe later" in a failed node pool operation: NodePool StatusCondition
# codes GCE_STOCKOUT / GCE_QUOTA_EXCEEDED, and the bracketed Compute Engine error in status_message
# (docs/SANDBOX_GKE.md "An ordinary day": terraform-provider-google PR 10121, tranquilitybase-io/tb-gcp
# issue 589, cal-itp/data-infra issue 1519, kubeflow/pipelines issue 673).
TRANSIENT_CONDITIONS = frozenset({"GCE_STOCKOUT", "GCE_QUOTA_EXCEEDED"})
_TRANSIENT_TEXT = re.compile(r"\[(GCE_STOCKOUT|QUOTA_EXCEEDED|ZONE_RESOURCE_POOL_EXHAUSTED[A-Z_]*)\]")
FIXES = {
    "GCE_STOCKOUT": "the zone has no capacity for the machine type now; GKE may have it later, or use another "
                    "machine_type (or zones) in the node pool template",
    "GCE_QUOTA_EXCEEDED": "raise the quota GKE names (IAM & Admin > Quotas) or lower node_count / the machine "
                          "type in the node pool template",
}


def operation_failure(op: Any) -> PoolFailure | None:
    """A container_v1.Operation -> its failure, or None (running, or done without error)."""
    if op.status.name != "DONE":
        return None
    code = int(getattr(op.error, "code", 0) or 0)
    message = (getattr(op.error, "message", "") or op.status_message or "").strip()
    if not code and not op.status_message:
        return None
    conditions = [c.code.name for c in getattr(op, "nodepool_conditions", ())] + \
                 [c.code.name for c in getattr(op, "cluster_conditions", ())]
    found = _TRANSIENT_TEXT.search(op.status_message or message)
    reason = next((c for c in conditions if c in TRANSIENT_CONDITIONS), None)
    if reason is None and found:
        reason = "GCE_STOCKOUT" if found.group(1) != "QUOTA_EXCEEDED" else "GCE_QUOTA_EXCEEDED"
    if reason is not None:
        return PoolFailure(message or op.status_message, True, reason, FIXES[reason])
    name = conditions[0] if conditions else f"code {code}"
    return PoolFailure(message or f"operation {op.name} failed", False, name,
                       "fix what GKE's message says, delete the failed pool, then ask for a re-check "
                       "(a reconcile scoped to the cluster)")


# ---------------------------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------------------------

class FileToken:
    """A static access token read from a file (like gcloud's `auth/access_token_file`).

    For the sandbox and for operators who mint tokens elsewhere. The file is re-read when it
    changes (its mtime), so a rotated token reaches long-lived clients through `refresh`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.token: str = ""
        self._mtime: int | None = None
        self.refresh()

    def _stat(self) -> int | None:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None

    @property
    def valid(self) -> bool:
        return bool(self.token) and self._stat() == self._mtime

    @property
    def expired(self) -> bool:
        return not self.valid

    def refresh(self, request: object = None) -> None:
        var = "MULTUS_PROVISIONER_ACCESS_TOKEN_FILE"
        try:
            with open(self.path, encoding="utf-8") as f:
                mtime = os.fstat(f.fileno()).st_mtime_ns
                token = f.read(16384).strip()
        except OSError as e:
            raise Permanent(f"{var}: cannot read {self.path!r} ({e.strerror})", code="UNAUTHENTICATED",
                            api="auth") from None
        if not _TOKEN.match(token):
            raise Permanent(f"{var}: {self.path!r} does not hold one access token (printable, no spaces)",
                            code="UNAUTHENTICATED", api="auth")
        self.token, self._mtime = token, mtime


def credentials(settings: Settings) -> Any:
    """Credentials with a current `.token` for the cluster API (and the GKE API in production).

    `settings.access_token_file` set -> a `FileToken`; otherwise Application Default Credentials
    with the cloud-platform scope, refreshed once here so `.token` is usable immediately.
    """
    if settings.access_token_file:
        return FileToken(settings.access_token_file)
    import google.auth
    import google.auth.transport.requests

    try:
        creds, _ = google.auth.default(scopes=list(SCOPES))
        creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except Exception as e:
        raise_mapped(e, "credentials")
    return creds


def fresh_token(creds: Any, lock: threading.Lock | None = None) -> str:
    """The credentials' token, refreshed first when missing or about to expire.

    `google.auth` credentials report `valid` False a few minutes before expiry, so a token
    handed out here lives long enough for the request that carries it.
    """
    with lock or threading.Lock():
        if not getattr(creds, "valid", False) or not creds.token:
            try:
                import google.auth.transport.requests

                creds.refresh(google.auth.transport.requests.Request())
            except ProvisionerError:
                raise
            except Exception as e:
                raise_mapped(e, "credentials")
        token = creds.token
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise Permanent("credentials: the access token is empty or malformed", code="UNAUTHENTICATED", api="auth")
    return token


# ---------------------------------------------------------------------------------------------
# Validation of what we send
# ---------------------------------------------------------------------------------------------

def _endpoint(cluster: ClusterFacts) -> str:
    """The cluster's `host[:port]` for https://, checked: it reaches a URL and a TLS hostname check."""
    endpoint = cluster.endpoint
    if not endpoint:
        raise Transient(f"cluster {cluster.name!r} has no endpoint yet (status {cluster.status or 'unknown'})",
                        code="UNAVAILABLE", api=API)
    host, sep, port = endpoint.rpartition(":") if endpoint.count(":") == 1 else (endpoint, "", "")
    ok_port = not sep or (port.isdigit() and 1 <= int(port) <= 65535)
    try:
        ipaddress.ip_address(host.strip("[]"))
        ok_host = True
    except ValueError:
        ok_host = bool(_HOSTNAME.match(host))
    if not (ok_host and ok_port):
        raise Permanent(f"cluster {cluster.name!r}: malformed endpoint {endpoint[:100]!r}",
                        code="INVALID_ARGUMENT", api=API)
    return endpoint


def _checked(address: str, cluster: ClusterFacts) -> str:
    host, _port = endpoints.split_host_port(address)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise Permanent(f"cluster {cluster.name!r}: malformed private endpoint {address[:100]!r}",
                        code="INVALID_ARGUMENT", api=API) from None
    return address


def endpoint_fields(cluster: container_v1.Cluster) -> endpoints.EndpointFields:
    """The endpoint fields of a container_v1.Cluster as plain values (absent fields: defaults)."""
    cpe = cluster.control_plane_endpoints_config
    ip = cpe.ip_endpoints_config
    dns = cpe.dns_endpoint_config
    present = "ip_endpoints_config" in cpe
    authorized = bool(cluster.master_authorized_networks_config.enabled
                      or (present and ip.authorized_networks_config.enabled))
    return endpoints.EndpointFields(
        name=cluster.name, endpoint=cluster.endpoint, dns_endpoint=dns.endpoint,
        dns_external=bool(dns.allow_external_traffic), ip_config_present=present,
        public_enabled=bool(ip.enable_public_endpoint) if present else True,
        private_endpoint=ip.private_endpoint or cluster.private_cluster_config.private_endpoint,
        authorized_networks=authorized)


def decode_cluster(cluster: container_v1.Cluster) -> ClusterFacts:
    """GKE's `Cluster` message as the pure `ClusterFacts` the flows read: decoded here, once, so no
    protobuf crosses the port. Raises `Rejected` naming every field of the wrong type."""
    facts = ClusterFacts.of(cluster)
    return replace(facts, cluster_id=str(cluster.id), create_time=str(cluster.create_time),
                   endpoints=endpoint_fields(cluster),
                   ca_certificate=str(cluster.master_auth.cluster_ca_certificate))


def _ca_pem(cluster: ClusterFacts) -> str:
    """The cluster's CA as PEM text (GKE reports it base64-encoded); `Permanent` when it is not one."""
    raw = cluster.ca_certificate
    try:
        pem = base64.b64decode(raw, validate=True).decode("ascii")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        pem = ""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise Permanent(f"cluster {cluster.name!r}: master_auth.cluster_ca_certificate is not a base64 PEM "
                        "certificate", code="INVALID_ARGUMENT", api=API)
    return pem


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------

def make_client(settings: Settings) -> container_v1.ClusterManagerClient:
    """The ClusterManagerClient the settings ask for (sandbox endpoint, token file, or ADC)."""
    from google.cloud import container_v1

    if settings.gke_endpoint:
        import grpc
        from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

        host, sep, port = settings.gke_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
            raise Permanent(f"MULTUS_PROVISIONER_GKE_ENDPOINT={settings.gke_endpoint!r}: expected host:port",
                            code="INVALID_ARGUMENT", api=API)
        channel = grpc.insecure_channel(settings.gke_endpoint)
        return container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
    try:
        if settings.access_token_file:
            from google.oauth2.credentials import Credentials

            token = FileToken(settings.access_token_file).token
            return container_v1.ClusterManagerClient(
                credentials=Credentials(token))  # type: ignore[no-untyped-call]  # google-auth is untyped here
        return container_v1.ClusterManagerClient()
    except ProvisionerError:
        raise
    except Exception as e:
        raise_mapped(e, "client")


class Gke:
    """GKE reads and writes for one function invocation (or one long-lived process).

    `client` is used as is when given (a ClusterManagerClient); otherwise one is built from the
    settings on first use. `calls` counts calls by method, for benchmarks and tests.
    """

    def __init__(self, settings: Settings, client: Any = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.settings = settings
        self.timeout = timeout
        self.calls: collections.Counter[str] = collections.Counter()
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()
        self._creds: Any = None
        self._creds_lock = threading.Lock()

    @property
    def client(self) -> container_v1.ClusterManagerClient:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.settings)
            client: container_v1.ClusterManagerClient = self._client
            return client

    def close(self) -> None:
        """Close the channel if this adapter created the client."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.transport.close()

    def _call(self, method: str, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        self.calls[method] += 1
        try:
            return fn(**kwargs, retry=None, timeout=self.timeout)
        except Exception as e:
            raise_mapped(e, what)

    # -- reads --
    def get_cluster(self, ref: ClusterRef) -> ClusterFacts:
        """The cluster as the flows read it (`decode_cluster`); `Rejected` if GKE's answer cannot be read."""
        cluster: container_v1.Cluster = self._call("get_cluster", f"get cluster {ref.path}", self.client.get_cluster,
                                                   name=ref.path)
        return decode_cluster(cluster)

    def list_clusters(self, project: str, location: str = "-") -> list[ClusterFacts]:
        """Every cluster of the project (`location` "-" = all locations), for reconcile sweeps.

        A listed cluster whose fields cannot be read is left out (logged): one odd cluster must not
        hide the others from the sweep."""
        problems = check_parts(project, "us-central1" if location == "-" else location, "x", field="parent")
        if problems:
            raise Rejected("invalid cluster list parent", problems)
        parent = f"projects/{project}/locations/{location}"
        resp = self._call("list_clusters", f"list clusters of {parent}", self.client.list_clusters, parent=parent)
        listed: list[ClusterFacts] = []
        for cluster in resp.clusters:
            try:
                listed.append(decode_cluster(cluster))
            except Rejected as e:
                logs.warning("a listed cluster cannot be read; left out", error=f"{parent}: {e.message}")
        return listed

    def list_node_pools(self, ref: ClusterRef) -> list[container_v1.NodePool]:
        resp = self._call("list_node_pools", f"list node pools of {ref.path}", self.client.list_node_pools,
                          parent=ref.path)
        return list(resp.node_pools)

    def get_node_pool(self, ref: ClusterRef, name: str) -> container_v1.NodePool:
        if not valid_node_pool_name(name):
            raise Rejected("invalid node pool name", [Problem("node_pool", f"invalid node pool name {name!r}")])
        path = f"{ref.path}/nodePools/{name}"
        pool: container_v1.NodePool = self._call("get_node_pool", f"get node pool {path}", self.client.get_node_pool,
                                                 name=path)
        return pool

    def get_operation(self, project: str, location: str, operation: str) -> container_v1.Operation:
        problems = check_parts(project, location, "operation", field="operation")
        if not isinstance(operation, str) or not _OPERATION.match(operation):
            problems.append(Problem("operation", f"invalid operation id {operation!r}"))
        if problems:
            raise Rejected("invalid operation reference", problems)
        name = f"projects/{project}/locations/{location}/operations/{operation}"
        op: container_v1.Operation = self._call("get_operation", f"get operation {name}", self.client.get_operation,
                                                name=name)
        return op

    def secondary_range_cidr(self, ref: ClusterRef, subnetwork: str, range_name: str) -> str:
        """The CIDR of `range_name` in `subnetwork` (a name, or a projects/P/regions/R/... path).

        A short name may exist in several regions: the cluster's region wins. A path in another
        project is a Shared VPC host's subnetwork: ListUsableSubnetworks lists those only with
        `filter=networkProjectId=HOST`; one the caller may not use comes back without ranges and
        with a `statusMessage` (the method's REST reference), which becomes a `NeedsFix` naming
        the roles to grant on the host project.
        """
        if not isinstance(subnetwork, str) or not isinstance(range_name, str):
            raise Rejected("invalid secondary range reference",
                           [Problem("subnetwork", "subnetwork and range name must be strings")])
        wanted = compute_ref(subnetwork)
        full = SUBNET_PATH.match(wanted)
        region = ref.location if ref.location.count("-") == 1 else ref.location.rsplit("-", 1)[0]
        host = full["p"] if full and full["p"] != ref.project else None
        request = {"parent": f"projects/{ref.project}"}
        if host:
            request["filter"] = f"networkProjectId={host}"
        what = f"list usable subnetworks of projects/{ref.project}" + (f" in host project {host}" if host else "")
        self.calls["list_usable_subnetworks"] += 1
        found: list[tuple[bool, str, dict[str, str]]] = []  # (in cluster region, path, ranges)
        hidden: list[tuple[str, str]] = []  # (path, statusMessage): listed, but not usable by us
        try:
            pager = self.client.list_usable_subnetworks(request=request, retry=None, timeout=self.timeout)
            for usable in pager:
                path = compute_ref(usable.subnetwork)
                m = SUBNET_PATH.match(path)
                if m is None:
                    continue
                if (path == wanted) if full else (m["s"] == wanted):
                    ranges = {r.range_name: r.ip_cidr_range for r in usable.secondary_ip_ranges}
                    if not ranges and usable.status_message:
                        hidden.append((path, usable.status_message))
                    found.append((m["r"] == region, path, ranges))
        except ProvisionerError:
            raise
        except Exception as e:
            raise_mapped(e, what)
        if hidden and not any(r for _, _, r in found):
            path, status = hidden[0]
            owner = SUBNET_PATH.match(path)["p"]  # type: ignore[index]
            raise NeedsFix(
                f"the secondary ranges of {path} cannot be read: GKE says {status!r}",
                finding_id="shared-vpc-permission", code="PERMISSION_DENIED", api=API,
                fix=(f"on the host project {owner}, grant the controller's service account roles/compute.networkUser "
                     f"(on the subnetwork or the project), and the cluster project's GKE service agent "
                     f"(service-PROJECT_NUMBER@container-engine-robot.iam.gserviceaccount.com) "
                     f"roles/container.hostServiceAgentUser and roles/compute.networkUser, as GKE's Shared VPC "
                     f"guide says; then ask for a re-check of the cluster"))
        if not found:
            raise Permanent(f"subnetwork {subnetwork!r} is not usable in project {ref.project} "
                            f"(looking for secondary range {range_name!r})", code="NOT_FOUND", api=API)
        found.sort(key=lambda f: not f[0])  # the cluster's region first
        for _, _path, ranges in found:
            if range_name in ranges:
                return ranges[range_name]
        raise Permanent(f"subnetwork {found[0][1]!r} has no secondary range {range_name!r} "
                        f"(it has: {', '.join(sorted(found[0][2])) or 'none'})", code="NOT_FOUND", api=API)

    # -- writes --
    def node_pool_message(self, template: NodePoolTemplate) -> container_v1.NodePool:
        """The NodePool of a CreateNodePool request for `template` (Rejected naming bad fields)."""
        from google.cloud import container_v1

        problems = template.problems()
        if problems:
            raise Rejected("invalid node pool template", problems)
        return container_v1.NodePool(
            name=template.name,
            initial_node_count=template.node_count,
            config=container_v1.NodeConfig(machine_type=template.machine_type, labels=dict(template.labels)),
            network_config=container_v1.NodeNetworkConfig(
                additional_node_network_configs=[container_v1.AdditionalNodeNetworkConfig(
                    network=compute_ref(template.network), subnetwork=compute_ref(template.subnetwork))],
                additional_pod_network_configs=[container_v1.AdditionalPodNetworkConfig(
                    subnetwork=compute_ref(template.subnetwork),
                    secondary_pod_range=template.secondary_pod_range,
                    max_pods_per_node=container_v1.MaxPodsConstraint(max_pods_per_node=template.max_pods_per_node))],
            ),
        )

    def create_node_pool(self, ref: ClusterRef, template: NodePoolTemplate) -> str | None:
        """Start creating the pool; returns the operation name, or None if it already exists.

        ALREADY_EXISTS is success for the workflow: a redelivered event must not fail a step
        whose effect is already there.
        """
        pool = self.node_pool_message(template)
        what = f"create node pool {ref.path}/nodePools/{template.name}"
        try:
            op = self._call("create_node_pool", what, self.client.create_node_pool, parent=ref.path,
                            node_pool=pool)
        except Permanent as e:
            if e.code == "ALREADY_EXISTS":
                return None
            raise
        return str(op.name)

    def delete_node_pool(self, ref: ClusterRef, name: str) -> str | None:
        """Start deleting a pool; returns the operation name, or None when it is gone already."""
        if not valid_node_pool_name(name):
            raise Rejected("invalid node pool name", [Problem("node_pool", f"invalid node pool name {name!r}")])
        path = f"{ref.path}/nodePools/{name}"
        try:
            op = self._call("delete_node_pool", f"delete node pool {path}", self.client.delete_node_pool, name=path)
        except NotFound:
            return None
        return str(op.name)

    def operation_failure(self, ref: ClusterRef, operation: str) -> PoolFailure | None:
        """How a finished operation failed (GKE's message, whether GKE says it passes), or None
        while it runs or when it succeeded."""
        op = self.get_operation(ref.project, ref.location, operation)
        return operation_failure(op)

    # -- the cluster API --
    def _credentials(self) -> Any:
        with self._creds_lock:
            if self._creds is None:
                self._creds = credentials(self.settings)
            return self._creds

    def endpoint(self, cluster: ClusterFacts) -> Endpoint:
        """How to reach the cluster's control plane (shared/core/endpoints.py decides; NeedsFix if no way)."""
        fields = cluster.endpoints or endpoints.EndpointFields(name=cluster.name, endpoint=cluster.endpoint)
        return endpoints.choose(fields, vpc_egress=self.settings.vpc_egress)

    def api_client(self, cluster: ClusterFacts) -> kubernetes.client.ApiClient:
        """A kubernetes ApiClient for the cluster, Bearer token, TLS always verified.

        The DNS-based endpoint (when enabled) presents a publicly trusted certificate for its name:
        verified with the system roots, or `dns_endpoint_ca_file`; `dns_endpoint_address` connects to
        that address with the name as SNI and verified hostname (the sandbox). The IP endpoints are
        verified with the cluster's own CA, written to a private temp file (the client needs a
        path) removed when the ApiClient is garbage-collected. The token is checked before every
        request through `refresh_api_key_hook` and refreshed when about to expire.
        """
        import kubernetes.client

        chosen = self.endpoint(cluster)
        creds = self._credentials()
        lock = threading.Lock()
        token = fresh_token(creds, lock)
        cfg = kubernetes.client.Configuration()
        if chosen.kind == endpoints.DNS:
            if not _HOSTNAME.match(chosen.host):
                raise Permanent(f"cluster {cluster.name!r}: malformed DNS endpoint {chosen.host[:100]!r}",
                                code="INVALID_ARGUMENT", api=API)
            port = f":{chosen.port}" if chosen.port else ""
            connect = self.settings.dns_endpoint_address
            cfg.host = f"https://{connect if connect else chosen.host}{port}"
            if connect:
                cfg.tls_server_name = chosen.host
            cfg.ssl_ca_cert = self.settings.dns_endpoint_ca_file or None
        else:
            endpoint = _endpoint(cluster) if chosen.kind == endpoints.PUBLIC_IP else _checked(chosen.address, cluster)
            cfg.host = f"https://{endpoint}"
            # The CA stays in memory (urllib3's `ca_cert_data`): a file per client was left in /tmp
            # by every process that ended without running its finalizers (a killed worker).
            cfg.ca_cert_data = _ca_pem(cluster)
        cfg.verify_ssl = True
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}

        def refresh(config: Any) -> None:
            config.api_key["authorization"] = fresh_token(creds, lock)

        cfg.refresh_api_key_hook = refresh  # type: ignore[assignment]  # the client declares the hook None
        return kubernetes.client.ApiClient(cfg)
