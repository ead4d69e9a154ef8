"""The offline stack: a simulated GCP project on loopback, with the real functions.

Started pieces, all on 127.0.0.1 and free ports:
- Google's Firestore and Pub/Sub emulators (`sandbox.emulators`);
- one sandbox Kubernetes API server per simulated cluster (`sandbox.kube`), HTTPS with its own
  CA and a Bearer token, whose endpoint and CA the GKE sandbox hands out as GKE does;
- the sandbox GKE ClusterManager gRPC server (`sandbox.gke`) seeded from a scenario file; its
  audit entries are published to the cluster / node pool topics as a Logging sink would;
- the four functions, each in its own `functions-framework` process, each fed by a Pub/Sub
  **push** subscription on its topic, as in production.

The controller code cannot tell this from Google: it only sees environment variables
(`FIRESTORE_EMULATOR_HOST`, `MULTUS_PROVISIONER_GKE_ENDPOINT`, ...), written to an env file so
that the CLI (`--sandbox ENV_FILE`), kubectl and tests can reach the same stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from multus_cli.envfile import write_env_file

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "default.yaml"

# topic name -> (entry point, what it carries)
TOPICS: dict[str, tuple[str, str]] = {
    "cluster-events": ("on_cluster_event", "CreateCluster / DeleteCluster audit entries"),
    "node-pool-events": ("on_node_pool_event", "CreateNodePool / DeleteNodePool audit entries"),
    "nad-requests": ("on_nad_request", "NAD requests (JSON) from users"),
    "reconcile": ("reconcile", "scheduled reconcile ticks"),
}
FUNCTIONS = tuple(fn for fn, _ in TOPICS.values())
# What the Logging sinks in infra/logging.tf select (tests/sink_filter.py checks them): only these
# methods reach the topics (tests/test_infra.py checks that this set and the filters agree).
SINK_METHODS = frozenset(f"google.container.{v}.ClusterManager.{m}" for v in ("v1", "v1beta1")
                         for m in ("CreateCluster", "DeleteCluster", "CreateNodePool", "DeleteNodePool",
                                   "SetLabels", "UpdateCluster", "UpdateMaster"))


KUBE_KINDS = ("sim", "real")


def kube_server_class(kind: str) -> Any:
    """The API server class for `--kube sim|real`: both have one interface (docs/SANDBOX_KUBE.md)."""
    if kind == "real":
        from sandbox.kube.real import RealKubeApiServer

        return RealKubeApiServer
    from sandbox.kube import KubeApiServer

    return KubeApiServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class Stack:
    """Start with `start()`, stop with `stop()` (also a context manager)."""

    scenario: Path = DEFAULT_SCENARIO
    state_dir: Path = field(default_factory=lambda: REPO / ".sandbox")
    project: str = "multus-sandbox"
    operation_delay: float = 1.0
    crd_delay: float = 0.3
    rollout_delay: float = 1.0
    extra_env: dict[str, str] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda _msg: None
    emulators: Any = None  # an already running sandbox.emulators.Emulators to reuse
    # Put a fault-injecting gRPC proxy (sandbox.grpc_proxy) between the functions and Firestore /
    # the GKE sandbox; tests arm it through `stack.firestore_proxy.faults` / `stack.gke_proxy.faults`.
    firestore_proxy: Any = False
    gke_proxy: Any = False
    datapath: Any = field(default=None, init=False)  # the data-path probe, in the real tier (sandbox/datapath.py)
    # False: no functions, topics or push subscriptions; audit entries are held (`take_audit`) for
    # in-process workflow tests that call the workflow themselves.
    with_functions: bool = True
    # The push subscriptions' ack deadline: how long Pub/Sub waits on a push before it counts as
    # failed and is redelivered. Short, so that a push to a killed function comes back quickly.
    ack_deadline_seconds: int = 15
    # GKE's ordinary-day behaviours (sandbox.gke.realism.Realism): None = the scenario's `realism`
    # (realistic unless it says calm); `Realism.calm()` for tests the controller cannot pass yet.
    realism: Any = None
    # Cloud Scheduler's stand-in: publish `{}` to the reconcile topic every so many seconds (None:
    # never). Pub/Sub slows pushes to a whole subscription after a burst of errors (the emulator
    # too), so, as in production, reconcile is what resumes a workflow whose redelivery is late.
    reconcile_every: float | None = None
    # 0: one Kubernetes API server per cluster (the default). N > 0: the clusters share N servers,
    # assigned in turn (benchmarks with 1,000 clusters): each cluster still has its own endpoint
    # entry in GKE and its own kubeconfig, but the objects, nodes and pods of one server are seen
    # by every cluster on it, and a shared server keeps the nodes of the first cluster put on it.
    kube_server_pool: int = 0
    # Which Kubernetes API each cluster gets: "sim", the fast simulated server (sandbox.kube), or
    # "real", a real kube-apiserver, controller-manager, scheduler and kwok built from pinned
    # sources (sandbox.kube.real; docs/SANDBOX_KUBE.md "The real tier").
    kube: str = "sim"
    # Verified requesters (docs/NAD_REQUESTS.md "Who may ask"): the functions require an ID token on every NAD request,
    # signed by the stack's identity server (sandbox/identity.py, MULTUS_PROVISIONER_SANDBOX_ID_URL).
    # None: required when the stack runs the functions; off for an in-process stack
    # (with_functions=False), whose tests call the workflow by hand and are not about requesters.
    requester_auth: bool | None = None
    # The controller's identity in the clusters. False: its token is cluster-admin (system:masters),
    # as a project owner's Google token is on GKE. True: it is the user `shared.core.rbac.SANDBOX_USER`
    # holding only the RBAC `multus-provisioner render-rbac` prints (granted by the stack at cluster
    # creation, as an operator does at opt-in), and the kubeconfig files carry a second token, the
    # operator's. A callable (user -> RBAC objects) grants those objects instead (a test removing a
    # verb). Only the real tier evaluates RBAC; the simulated server ignores it (docs/SANDBOX_KUBE.md).
    controller_rbac: Any = False

    def __post_init__(self) -> None:
        if self.kube not in KUBE_KINDS:
            raise ValueError(f"kube must be one of {', '.join(KUBE_KINDS)}, got {self.kube!r}")
        if self.kube == "real" and self.kube_server_pool:
            raise ValueError("kube_server_pool shares simulated servers between clusters; with kube='real' "
                             "every cluster has its own control plane")
        self.scenario = Path(self.scenario)
        self.state_dir = Path(self.state_dir)
        self._own_emulators = self.emulators is None
        # Stacks sharing one Pub/Sub emulator (tests) must not share topics or subscriptions: a
        # second stack would re-point the first one's push subscriptions at its own functions.
        self.name_prefix = "multus" if self._own_emulators else f"multus-{secrets.token_hex(3)}"
        self.gke: Any = None
        self.kube_servers: dict[str, Any] = {}
        self.function_urls: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._publisher: Any = None
        self._lock = threading.Lock()
        self.token = secrets.token_urlsafe(32)
        self.env: dict[str, str] = {}
        self.audit_published = 0
        self.held_audit: list[dict[str, Any]] | None = None
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._ports: dict[str, int] = {}
        self._fn_env: dict[str, str] = {}
        self.public_ca: Any = None  # sandbox.kube.certs.CertAuthority for the DNS-based endpoints
        self.gcloud_config: Path | None = None  # the gcloud configuration directory, once started
        self._shared: list[Any] = []  # kube_server_pool mode: the shared servers, in turn
        self._shared_turn = -1
        self.identity: Any = None  # sandbox.identity.IdentityServer, once started

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> dict[str, str]:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> dict[str, str]:
        from sandbox.emulators import Emulators

        (self.state_dir / "kubeconfig").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        token_file = self.state_dir / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.token)
        scenario = yaml.safe_load(self.scenario.read_text())
        self.project = scenario.get("project", self.project) if isinstance(scenario, dict) else self.project
        if self.emulators is None:
            self.progress("starting Google's Firestore and Pub/Sub emulators")
            self.emulators = Emulators(project=self.project)
            self.emulators.start()
        emu_env = self.emulators.env()
        os.environ.update({k: v for k, v in emu_env.items() if k.endswith("EMULATOR_HOST")})
        self.env = {
            "FIRESTORE_EMULATOR_HOST": emu_env["FIRESTORE_EMULATOR_HOST"],
            "PUBSUB_EMULATOR_HOST": emu_env["PUBSUB_EMULATOR_HOST"],
            "GOOGLE_CLOUD_PROJECT": self.project,
            "MULTUS_PROVISIONER_PROJECT": self.project,
            "MULTUS_PROVISIONER_ACCESS_TOKEN_FILE": str(token_file),
            "MULTUS_PROVISIONER_KUBECONFIG_DIR": str(self.state_dir / "kubeconfig"),
            "MULTUS_PROVISIONER_CRD_POLL_SECONDS": "0.1",
            "MULTUS_PROVISIONER_STALL_SECONDS": "5",
            "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "15",
        }
        if self.firestore_proxy:
            from sandbox.grpc_proxy import GrpcProxy

            self.firestore_proxy = GrpcProxy(emu_env["FIRESTORE_EMULATOR_HOST"])
            self.env["FIRESTORE_EMULATOR_HOST"] = self.firestore_proxy.start()
        from sandbox.identity import IdentityServer

        self.identity = IdentityServer()
        self.env["MULTUS_PROVISIONER_SANDBOX_ID_URL"] = self.identity.url
        auth = self.with_functions if self.requester_auth is None else self.requester_auth
        if not auth:
            self.env["MULTUS_PROVISIONER_REQUESTER_AUTH"] = "off"
        template = _template_from_scenario(scenario)
        if template:
            self.env["MULTUS_PROVISIONER_NODE_POOL_TEMPLATE"] = json.dumps(template, sort_keys=True)
        self.env.update(self.extra_env)

        self.progress("starting the sandbox GKE API and one Kubernetes API server per cluster")
        from sandbox.gke import GkeSandbox, load_scenario
        from sandbox.kube.certs import CertAuthority

        # DNS-based endpoints are served with certificates of this CA, trusted like public roots.
        self.public_ca = CertAuthority()
        bundle = self.state_dir / "public-ca.pem"
        bundle.write_bytes(self.public_ca.ca_pem)
        self.env["MULTUS_PROVISIONER_SANDBOX_CA_BUNDLE"] = str(bundle)
        # Names under gke.goog are never looked up in DNS here: connect to this address, verify the name.
        self.env["MULTUS_PROVISIONER_SANDBOX_DNS_ADDRESS"] = "127.0.0.1"
        self.gke = GkeSandbox(load_scenario(self.scenario), on_cluster=self._on_cluster,
                              on_node_pool=self._on_node_pool, on_cluster_deleted=self._on_cluster_deleted,
                              audit_sink=self._publish_audit, operation_delay=self.operation_delay,
                              realism=self.realism, token=self.token)
        gke_endpoint = self.gke.start(port=0, admin_port=0, rest_port=0)
        self.env["MULTUS_PROVISIONER_GKE_ADMIN"] = self.gke.admin_url
        self.env["MULTUS_PROVISIONER_SANDBOX_REALISM"] = self.gke.world.realism.name
        if self.gke_proxy:
            from sandbox.grpc_proxy import GrpcProxy

            self.gke_proxy = GrpcProxy(gke_endpoint)
            gke_endpoint = self.gke_proxy.start()
        self.env["MULTUS_PROVISIONER_GKE_ENDPOINT"] = gke_endpoint

        if self.kube == "real":  # verify's look at the kernel side of pods (sandbox/datapath.py)
            from sandbox.datapath import DataPathProbe

            self.datapath = DataPathProbe(self._real_cni_of)
            self.env["MULTUS_PROVISIONER_DATAPATH_URL"] = self.datapath.start()
            # A UML guest on a busy machine takes far longer than a GKE node to set a pod's network
            # up (each Multus and Whereabouts call starts a Go binary in the guest; docs/SANDBOX_KUBE.md).
            self.env.setdefault("MULTUS_PROVISIONER_VERIFY_TIMEOUT_SECONDS", "120")
        if self.with_functions:
            self.progress("creating Pub/Sub topics and starting the functions")
            # The functions know their topics (the reconcile tick fans out on its own topic), as
            # infra/functions.tf sets them.
            for short in TOPICS:
                self.env.setdefault(f"MULTUS_PROVISIONER_TOPIC_{short.upper().replace('-', '_')}",
                                    self.topic_path(short))
            self._start_functions()
            self._create_topics()
            if self.reconcile_every:
                self._scheduler = threading.Thread(target=self._schedule, name="reconcile-scheduler", daemon=True)
                self._scheduler.start()
        else:
            self.hold_audit()
        # gcloud's configuration is for the people and tests typing commands, not for the
        # functions (already started): they must never pick up a gcloud configuration.
        self.gcloud_config = write_gcloud_config(
            self.state_dir / "gcloud", rest_url=self.gke.rest_url, token_file=token_file,
            project=self.project, location=self.gke.scenario.location)
        self.env["CLOUDSDK_CONFIG"] = str(self.gcloud_config.resolve())
        self.write_env_file(self.state_dir / "env")
        return self.env

    def _schedule(self) -> None:
        while not self._stopping.wait(self.reconcile_every or 60.0):
            with contextlib.suppress(Exception):  # a tick lost while stopping is harmless
                self.publish("reconcile", b"{}")

    def _real_cni_of(self, cluster: str) -> Any:
        """The real CNI path of a cluster's pods (None: simulated CNI, or no such cluster)."""
        with self._lock:
            server = self.kube_servers.get(cluster)
        return getattr(server, "real_cni", None)

    def stop(self) -> None:
        self._stopping.set()
        if self.datapath is not None:
            self.datapath.stop()
            self.datapath = None
        for name, proc in list(self._procs.items()):
            _stop_group(proc)
            self._procs.pop(name, None)
        if self.gke is not None:
            with contextlib.suppress(Exception):
                self.gke.stop()
            self.gke = None
        for server in {id(x): x for x in self.kube_servers.values()}.values():  # shared ones once
            with contextlib.suppress(Exception):
                server.stop()
        self.kube_servers.clear()
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                self._publisher.stop()
            self._publisher = None
        for proxy in (self.firestore_proxy, self.gke_proxy):
            if proxy and hasattr(proxy, "stop"):
                with contextlib.suppress(Exception):
                    proxy.stop()
        if self.identity is not None:
            with contextlib.suppress(Exception):
                self.identity.stop()
            self.identity = None
        if self._own_emulators and self.emulators is not None:
            self.emulators.stop()
            self.emulators = None

    # -- env file ------------------------------------------------------------------------------
    def write_env_file(self, path: str | os.PathLike[str]) -> Path:
        return write_env_file(path, self.env, header="multus-provisioner sandbox: written by "
                                                     "`multus-provisioner sandbox`; KEY=VALUE, no shell")

    # -- clusters: one Kubernetes API server each -------------------------------------------
    def _on_cluster(self, cluster: Any) -> tuple[str, bytes, str | None]:
        """A Kubernetes API server for the cluster: its IP endpoint, CA and, if enabled, DNS endpoint.

        The IP listener refuses connections when the cluster has no public endpoint or when its
        authorized networks do not include loopback (where the controller calls from).
        """
        import ipaddress

        nodes: list[str] = []
        labels: dict[str, dict[str, str]] = {}
        for pool in cluster.node_pools:
            for i in range(max(1, int(pool.initial_node_count or 1))):
                name = f"gke-{cluster.name}-{pool.name}-{secrets.token_hex(4)}-{i:04d}"[:63]
                nodes.append(name)
                labels[name] = {"cloud.google.com/gke-nodepool": pool.name}
        cpe = cluster.control_plane_endpoints_config
        dns_name = (cpe.dns_endpoint_config.endpoint.rsplit(":", 1)[0]
                    if cpe.dns_endpoint_config.allow_external_traffic and cpe.dns_endpoint_config.endpoint else None)
        authorized = cluster.master_authorized_networks_config
        ip_access = bool(cpe.ip_endpoints_config.enable_public_endpoint or "ip_endpoints_config" not in cpe)
        if ip_access and authorized.enabled:
            loopback = ipaddress.ip_address("127.0.0.1")
            ip_access = any(loopback in ipaddress.ip_network(b.cidr_block, strict=False)
                            for b in authorized.cidr_blocks)
        if self.kube_server_pool > 0:
            return self._on_shared_cluster(cluster, nodes, labels, ip_access)
        user = self._controller_user()
        server = kube_server_class(self.kube)(
            token=self.token, nodes=[], crd_delay=self.crd_delay, rollout_delay=self.rollout_delay,
            name=cluster.name, dns_name=dns_name, dns_authority=self.public_ca if dns_name else None,
            ip_access=ip_access, controller_user=user)
        if self.kube == "real":
            self.progress(f"starting a real Kubernetes control plane and data path for {cluster.name}")
        server.start(port=0)
        if user is not None:  # the operator's opt-in step: the controller's RBAC, before it connects
            try:
                server.grant(self._controller_rbac_objects(user))
            except BaseException:
                server.stop()
                raise
        if self.kube == "real":  # real Multus, IPVLAN and Whereabouts for its pods (sandbox/kube/realcni.py)
            try:
                server.use_real_cni()
            except BaseException:
                server.stop()
                raise
        for name in nodes:
            server.add_nodes([name], labels=labels[name])
        with self._lock:
            old = self.kube_servers.pop(cluster.name, None)
            self.kube_servers[cluster.name] = server
        if old is not None:
            old.stop()
        server.write_kubeconfig(self.state_dir / "kubeconfig" / f"{cluster.name}.yaml", context=cluster.name)
        return server.endpoint, server.ca_pem, server.dns_endpoint or None

    def _controller_user(self) -> str | None:
        from shared.core.rbac import SANDBOX_USER

        return SANDBOX_USER if self.controller_rbac else None

    def _controller_rbac_objects(self, user: str) -> list[dict[str, Any]]:
        """What the operator applies at opt-in: `render-rbac` for the namespaces the policy lets
        receive NADs (the settings' allowed namespaces, or `default`)."""
        from shared.core.rbac import controller_rbac

        if callable(self.controller_rbac):
            return list(self.controller_rbac(user))
        allowed = [n.strip() for n in self.env.get("MULTUS_PROVISIONER_ALLOWED_NAMESPACES", "").split(",") if n.strip()]
        return controller_rbac(user, allowed or ["default"])

    def _on_shared_cluster(self, cluster: Any, nodes: list[str], labels: dict[str, dict[str, str]],
                           ip_access: bool) -> tuple[str, bytes, str | None]:
        """`kube_server_pool` mode: put the cluster on one of N shared servers (IP endpoint only)."""
        from sandbox.kube import KubeApiServer

        with self._lock:
            self._shared_turn += 1
            shared = self._shared
            index = self._shared_turn % self.kube_server_pool
            fresh = index >= len(shared)
            if fresh:
                server = KubeApiServer(token=self.token, nodes=[], crd_delay=self.crd_delay,
                                       rollout_delay=self.rollout_delay, name=f"shared-{index}", ip_access=ip_access)
                server.start(port=0)
                shared.append(server)
            server = shared[index]
            self.kube_servers[cluster.name] = server
        if fresh:
            for name in nodes:
                server.add_nodes([name], labels=labels[name])
        server.write_kubeconfig(self.state_dir / "kubeconfig" / f"{cluster.name}.yaml", context=cluster.name)
        return server.endpoint, server.ca_pem, None

    def _on_node_pool(self, cluster_ref: Any, pool: Any, node_names: list[str]) -> None:
        name = getattr(cluster_ref, "cluster", None) or str(cluster_ref).rsplit("/", 1)[-1]
        server = self.kube_servers.get(name)
        if server is not None and not self.kube_server_pool:  # a shared server keeps its first nodes
            server.add_nodes(list(node_names), labels={"cloud.google.com/gke-nodepool": pool.name})

    def _on_cluster_deleted(self, cluster_ref: Any, *_: Any) -> None:
        name = getattr(cluster_ref, "cluster", None) or str(cluster_ref).rsplit("/", 1)[-1]
        with self._lock:
            server = self.kube_servers.pop(name, None)
            still_used = server is not None and any(x is server for x in self.kube_servers.values())
        if server is not None and not still_used:
            server.stop()

    def kube_server(self, cluster: str) -> Any:
        return self.kube_servers[cluster]

    # -- Pub/Sub: topics, push subscriptions, the Logging-sink stand-in ------------------------
    def topic_path(self, short: str) -> str:
        return f"projects/{self.project}/topics/{self.name_prefix}-{short}"

    def _create_topics(self) -> None:
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        try:
            for short, (fn, _) in TOPICS.items():
                topic = self.topic_path(short)
                dead = topic + "-dead-letter"
                for t in (topic, dead):
                    with contextlib.suppress(Exception):  # AlreadyExists when reusing emulators
                        publisher.create_topic(name=t)
                sub = f"projects/{self.project}/subscriptions/{self.name_prefix}-{short}-push"
                with contextlib.suppress(Exception):
                    subscriber.delete_subscription(subscription=sub)
                subscriber.create_subscription(request={
                    "name": sub, "topic": topic,
                    "push_config": {"push_endpoint": self.function_urls[fn]},
                    "ack_deadline_seconds": self.ack_deadline_seconds,
                    "dead_letter_policy": {"dead_letter_topic": dead, "max_delivery_attempts": 5},
                    "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 10}},
                })
                dsub = f"projects/{self.project}/subscriptions/{self.name_prefix}-{short}-dead-letter"
                with contextlib.suppress(Exception):
                    subscriber.create_subscription(request={"name": dsub, "topic": dead})
                self.env[f"MULTUS_PROVISIONER_TOPIC_{short.upper().replace('-', '_')}"] = topic
        finally:
            subscriber.close()
        self._publisher = _Publisher(publisher)

    def publish(self, short: str, payload: bytes, *, signed: bool = True, **attributes: str) -> str:
        """Publish to one of the stack's topics; returns the message id. A NAD request is signed
        by the sandbox user (as `multus-provisioner request-nad` does) unless `signed` is False or
        the attributes carry a token already."""
        if self._publisher is None:
            raise RuntimeError("the stack is not started")
        if short == "nad-requests" and signed and "idToken" not in attributes:
            attributes = {**attributes, **self.requester_attributes()}
        return self._publisher.publish(self.topic_path(short), payload, attributes)

    def requester_attributes(self, email: str | None = None, **claims: Any) -> dict[str, str]:
        """The message attributes of a NAD request signed for `email` (default: the sandbox user);
        `claims` override the token's (tests forge expired or foreign-audience tokens with them)."""
        from sandbox.identity import SANDBOX_USER
        from shared.core.requesters import token_attributes
        from shared.core.settings import Settings

        audience = claims.pop("aud", None) or Settings.from_env(self.env).requester_audiences[0]
        return token_attributes(self.identity.issuer.token(audience, email or SANDBOX_USER, **claims))

    def _publish_audit(self, entry: dict[str, Any]) -> None:
        if entry.get("protoPayload", {}).get("methodName") not in SINK_METHODS:
            return  # the Logging sink's filter drops it, as in production
        with self._lock:
            if self.held_audit is not None:
                self.held_audit.append(entry)
                return
        self._route_audit(entry)

    def _route_audit(self, entry: dict[str, Any]) -> str:
        method = entry.get("protoPayload", {}).get("methodName", "")
        short = "node-pool-events" if "NodePool" in method else "cluster-events"
        message_id = self.publish(short, json.dumps(entry).encode())
        self.audit_published += 1
        return message_id

    @staticmethod
    def audit_topic(entry: dict[str, Any]) -> str:
        """The entry point a Logging sink would route this audit entry to."""
        method = entry.get("protoPayload", {}).get("methodName", "")
        return "on_node_pool_event" if "NodePool" in method else "on_cluster_event"

    def hold_audit(self) -> None:
        """Keep audit entries instead of publishing them (tests deliver them by hand)."""
        with self._lock:
            if self.held_audit is None:
                self.held_audit = []

    def take_audit(self, *, release: bool = False) -> list[dict[str, Any]]:
        """The entries held so far; with `release`, later entries are published again."""
        with self._lock:
            held, self.held_audit = list(self.held_audit or []), (None if release else [])
        return held

    # -- functions under functions-framework ------------------------------------------------------
    def _start_functions(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MULTUS_PROVISIONER_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("THREADS", "8")
        self._fn_env = env
        ports = {}
        for fn in FUNCTIONS:
            port = free_port()
            ports[fn] = (port, self._spawn(fn, port))
        for fn, (port, log) in ports.items():
            wait_port(port, 30, f"function {fn}", self._procs[fn], log)
            url = f"http://127.0.0.1:{port}/"
            self.function_urls[fn] = url
            self.env[f"MULTUS_PROVISIONER_URL_{fn.upper()}"] = url

    def _spawn(self, fn: str, port: int) -> Path:
        log = self.state_dir / "logs" / f"{fn}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "functions_framework", "--target", fn, "--signature-type",
                 "cloudevent", "--source", str(REPO / "functions" / "main.py"), "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=str(REPO), env=self._fn_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[fn] = proc
        self._ports[fn] = port
        return log

    def kill_function(self, fn: str) -> None:
        """SIGKILL the function's whole process group (a crash: no cleanup, no answer sent)."""
        proc = self._procs[fn]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def restart_function(self, fn: str, timeout: float = 30.0) -> None:
        """Start `fn` again on its port (after `kill_function`, or stopping it gracefully first)."""
        proc = self._procs[fn]
        if proc.poll() is None:
            _stop_group(proc)
        port = self._ports[fn]
        deadline = time.monotonic() + timeout
        while True:  # the killed server's socket may linger for a moment
            try:
                with socket.socket() as probe:  # as the server binds: TIME_WAIT does not count
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {port} of {fn} is still taken after {timeout:.0f}s") from None
                time.sleep(0.1)
        log = self._spawn(fn, port)
        wait_port(port, timeout, f"function {fn}", self._procs[fn], log)

    def function_log(self, fn: str) -> str:
        path = self.state_dir / "logs" / f"{fn}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class _Publisher:
    """A small wrapper so the stack publishes synchronously (ordering of the demo's story)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        return self.client.publish(topic, data, **attributes).result(timeout=30)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop()


def write_gcloud_config(directory: str | os.PathLike[str], *, rest_url: str, token_file: str | os.PathLike[str],
                        project: str, location: str) -> Path:
    """A gcloud configuration directory (for `CLOUDSDK_CONFIG`) that sends gcloud to the sandbox.

    What each property does is in docs/SANDBOX_GKE.md ("gcloud against the sandbox"): the three
    endpoint overrides are every API the how-to's commands call; `auth/access_token_file` makes
    gcloud (and gke-gcloud-auth-plugin, for kubectl) send the sandbox's token without a Google
    login; `core/check_gce_metadata false` and `component_manager/disable_update_check` keep
    gcloud from reaching for anything but loopback. The zone default is the `-c` zone of the
    scenario's region, the how-to's example (us-central1-c), unless the scenario names a zone.
    """
    from sandbox.gke.scenario import region_of

    if not rest_url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the sandbox REST endpoint must be on loopback, got {rest_url!r}")
    base = rest_url.rstrip("/") + "/"
    region = region_of(location)
    zone = location if location != region else f"{region}-c"
    root = Path(directory)
    (root / "configurations").mkdir(parents=True, exist_ok=True)
    sections = {
        "core": {"project": project, "disable_usage_reporting": "True", "check_gce_metadata": "False",
                 "disable_prompts": "True"},
        "auth": {"access_token_file": str(Path(token_file).resolve())},
        "compute": {"region": region, "zone": zone},
        "component_manager": {"disable_update_check": "True"},
        "survey": {"disable_prompts": "True"},
        "api_endpoint_overrides": {"container": base, "compute": f"{base}compute/v1/", "serviceusage": base},
    }
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in props.items()) + "\n"
                   for name, props in sections.items())
    (root / "configurations" / "config_sandbox").write_text(text)
    (root / "active_config").write_text("sandbox")  # gcloud reads the name verbatim: no newline
    return root


def _template_from_scenario(scenario: Any) -> dict[str, Any] | None:
    """The node pool template the sandbox's policy uses: the scenario's first secondary range.

    A scenario without any secondary range gives no template: the how-to's story, where the user
    creates the node pool (docs/TUTORIAL.md, sandbox/scenarios/tutorial.yaml).
    """
    if not isinstance(scenario, dict):
        return None
    for sub in scenario.get("subnetworks") or []:
        if not isinstance(sub, dict):
            continue
        ranges = sub.get("secondary_ranges") or {}
        if isinstance(ranges, dict) and ranges:
            name = sorted(ranges)[0]
        elif isinstance(ranges, list) and ranges and isinstance(ranges[0], dict):
            name = ranges[0].get("name") or ranges[0].get("range_name")
        else:
            continue
        return {"name": "multus-pool", "network": sub.get("network"),
                "subnetwork": sub.get("subnetwork") or sub.get("name"),
                "secondary_pod_range": name, "max_pods_per_node": 8, "machine_type": "e2-standard-4",
                "node_count": 2}
    return None


def _stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)
