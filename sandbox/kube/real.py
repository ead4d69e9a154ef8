"""A real Kubernetes control plane per sandbox cluster: kube-apiserver, controller-manager,
scheduler and kwok, built from pinned sources (`realworld/`, `sandbox.gobuild`), on 127.0.0.1.

`RealKubeApiServer` has the interface of the simulated `KubeApiServer` that it stands beside
(`start`, `stop`, `url`, `endpoint`, `ca_pem`, `write_kubeconfig`, `add_nodes`, `remove_nodes`,
`node_names`, `stats`, the DNS-endpoint and `ip_access` options), so the stack, the tests and the
CLI use either through one path. What only a simulation can do (fault injection, pausing the
simulated controllers) is refused with a clear error, never faked.

What runs, per cluster (docs/SANDBOX_KUBE.md, "The real tier"):
- kube-apiserver v1.33.13 with its default admission chain (NamespaceLifecycle, ServiceAccount,
  Priority, ...), RBAC authorization, a static token file (the sandbox's Bearer token is a user in
  `system:masters`, as a GKE project owner's Google token is cluster-admin), service-account
  signing keys, and an audit log from which `stats` counts the clients' requests;
- kube-controller-manager (DaemonSet, garbage collector, namespace, service-account controllers…);
- kube-scheduler (the DaemonSet controller leaves binding to it, kubernetes PR 63223);
- kwok, the nodes' stand-in kubelet: Node objects we create carry the node pool's labels; kwok
  marks them Ready and moves bound pods to Running. Our stage file keeps pods whose image is
  tagged `-broken` in ImagePullBackOff, as the simulated server does.
One etcd (v3.5.21) per process is shared by every cluster, each under its own key prefix
(`--etcd-prefix`): an etcd per cluster would double the memory of a fleet for nothing the
controller can see.

Crash safety: every process group is recorded in a run directory under `$TMPDIR/multus-provisioner-real/`
named after the owning Python process; `sweep()` (called at every start) kills the groups and
removes the directories of owners that are gone.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.gobuild import BuildError, bin_dir
from sandbox.kube.certs import CertAuthority, make_certs
from sandbox.kube.faults import Stats
from sandbox.kube.meta import name_problem
from sandbox.kube.reaper import alive
from sandbox.kube.server import kubeconfig_doc, write_private_json

START_TIMEOUT = 240.0  # a cold kube-apiserver on a loaded 2-core machine takes tens of seconds
KUBE_VERSION = "v1.33.13"
# Users of the control plane's own components: their requests are not the clients' and are not
# counted in `stats` (the simulated server has no such components and counts clients only).
INTERNAL_USERS = ("sandbox:controller-manager", "sandbox:scheduler", "sandbox:kwok", "sandbox:admin")
_VERB_METHOD = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT",
                "patch": "PATCH", "delete": "DELETE", "deletecollection": "DELETE"}

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "None", "users": ["system:apiserver", *INTERNAL_USERS[:-1]]},
        {"level": "Metadata"},
    ],
}

# kwok's pod lifecycle: Ready, ImagePullBackOff for images tagged -broken, removal on delete.
KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")


class RealTierError(RuntimeError):
    """The real control plane cannot run here; the message says why and what to do."""


# ------------------------------------------------------------------ process bookkeeping
def _run_root() -> Path:
    return Path(tempfile.gettempdir()) / "multus-provisioner-real"


def sweep() -> list[str]:
    """Kill the process groups and remove the run directories of owners that no longer exist.

    A test process killed hard (SIGKILL, a CI timeout) cannot stop its control planes; the next
    start on the machine finds them here. A group is killed only when its leader's command line
    still names the run directory, so a recycled pid is never touched."""
    removed: list[str] = []
    root = _run_root()
    if not root.is_dir():
        return removed
    for run in root.iterdir():
        owner = run.name.split("-", 1)[0]
        if not owner.isdigit() or alive(int(owner)):
            continue
        for pidfile in run.glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(run).encode() in cmdline:
                    os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(run, ignore_errors=True)
        removed.append(run.name)
    return removed


class _Process:
    """One component in its own process group, its output in a log file, its pid recorded."""

    def __init__(self, name: str, argv: Sequence[str], run_dir: Path) -> None:
        self.name = name
        self.log_path = run_dir / f"{name}.log"
        self._pidfile = run_dir / f"{name}.pid"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=run_dir)
        finally:
            log.close()
        self._pidfile.write_text(str(self.proc.pid))

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RealTierError(f"{self.name} exited with code {code}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(OSError):
            self._pidfile.unlink()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, ready: Any, procs: Iterable[_Process], timeout: float = START_TIMEOUT) -> None:
    """Wait for `ready()` to be true; a component that exits meanwhile ends the wait with its log."""
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            p.check()
        with contextlib.suppress(OSError, http.client.HTTPException, ssl.SSLError):
            if ready():
                return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
            raise RealTierError(f"{what} not ready after {timeout:.0f} s\n{tails}")
        time.sleep(0.2)


def _binaries(component: str) -> Path:
    try:
        return bin_dir(component)
    except BuildError as err:
        raise RealTierError(str(err)) from err


# ------------------------------------------------------------------ etcd, shared per process
class Etcd:
    """One etcd for every real cluster of this process, each cluster under its own key prefix."""

    _lock = threading.Lock()
    _shared: Etcd | None = None
    _users = 0

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.client_url = ""
        self._proc: _Process | None = None

    @classmethod
    def acquire(cls) -> Etcd:
        with cls._lock:
            if cls._shared is None:
                etcd = cls(_new_run_dir("etcd"))
                try:
                    etcd.start()
                except BaseException:
                    etcd.stop()
                    raise
                cls._shared = etcd
            cls._users += 1
            return cls._shared

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users <= 0 and cls._shared is not None:
                cls._shared.stop()
                cls._shared, cls._users = None, 0

    def start(self) -> None:
        etcd = _binaries("etcd") / "etcd"
        client, peer = _free_port(), _free_port()
        self.client_url = f"http://127.0.0.1:{client}"
        self._proc = _Process("etcd", [
            str(etcd), "--name", "sandbox", "--data-dir", str(self.run_dir / "data"),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"sandbox=http://127.0.0.1:{peer}",
            # A throwaway store: fsync buys nothing and costs most of etcd's latency here.
            "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 1024**3),
            "--log-level", "warn"], self.run_dir)

        def healthy() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", client, timeout=2)
            try:
                conn.request("GET", "/health")
                return conn.getresponse().status == 200
            finally:
                conn.close()

        _wait("etcd", healthy, [self._proc])

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _new_run_dir(label: str) -> Path:
    from sandbox.kube.reaper import ensure_reaper

    sweep()
    ensure_reaper()  # if this process dies without stopping us, the reaper removes what it left
    root = _run_root()
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{label}-", dir=root))
    path.chmod(0o700)
    return path


class _Unsupported:
    """In place of the simulated server's fault injection: a real API server fails for real only."""

    def add(self, *_: Any, **__: Any) -> None:
        raise RealTierError("fault injection is a feature of the simulated API server (--kube sim); "
                            "the real kube-apiserver tier fails only for real")

    def clear(self) -> None:
        return None

    def pending(self) -> list[dict[str, Any]]:
        return []


class _AuditStats(Stats):
    """The clients' requests, counted from kube-apiserver's own audit log (level Metadata).

    The log is read up to a sentinel request sent just before, so every request that completed
    before the read is in the count; `reset` remembers the position instead of truncating."""

    def __init__(self, server: RealKubeApiServer) -> None:
        super().__init__()
        self._server = server
        self._offset = 0

    def _refresh(self) -> None:
        server = self._server
        if not server.url:
            return
        marker = secrets.token_hex(8)
        server.admin_request("GET", f"/api/v1/namespaces/default?sandboxStatsSentinel={marker}", expect=(200, 404))
        deadline = time.monotonic() + 30
        while True:
            text = server.audit_log.read_text(errors="replace") if server.audit_log.exists() else ""
            if marker in text[self._offset:]:
                break
            if time.monotonic() > deadline:
                raise RealTierError("the audit log did not record the stats sentinel within 30 s")
            time.sleep(0.05)
        chunk, self._offset = text[self._offset:], len(text)
        for line in chunk.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("stage") != "ResponseComplete":
                    continue
                if event.get("user", {}).get("username") in INTERNAL_USERS:
                    continue
                method = _VERB_METHOD.get(str(event.get("verb", "")), str(event.get("verb", "")).upper())
                self.count(method, str(event.get("requestURI", "")).split("?", 1)[0])

    def snapshot(self) -> dict[tuple[str, str], int]:
        self._refresh()
        return super().snapshot()

    @property
    def total(self) -> int:
        return sum(self.snapshot().values())

    def reset(self) -> None:
        self._refresh()
        super().reset()


class _CoreReader:
    """What the CNI data path reads of the cluster by store key (nodes, ConfigMaps): core/v1 objects,
    read over the API, so `RealCni` works on this server as on the simulated one."""

    def __init__(self, server: RealKubeApiServer) -> None:
        self._server = server

    def get(self, key: tuple[str, str, str, str]) -> dict[str, Any] | None:
        group, plural, namespace, name = key
        if group:
            raise ValueError(f"only core/v1 objects are read by key here, not {group}/{plural}")
        path = f"/api/v1/namespaces/{namespace}/{plural}/{name}" if namespace else f"/api/v1/{plural}/{name}"
        found = self._server.admin_request("GET", path, expect=(200, 404))
        return found if found and found.get("kind") != "Status" else None


class PodNetworks:
    """The kubelet's part in pod networking on the real tier: kwok stands in for the rest of it.

    A pod bound to a node that asks for networks (`k8s.v1.cni.cncf.io/networks`) gets a CNI ADD
    through the real Multus on that node (`sandbox.kube.realcni`); Multus writes its
    `network-status`, and only then does kwok's stage make it Ready (a kubelet starts containers
    after the sandbox's network exists). A failed ADD is an Event `FailedCreatePodSandBox` and is
    tried again, as the kubelet retries sandbox creation. A pod that goes gets its CNI DEL, which
    frees its Whereabouts address."""

    RETRY_SECONDS = 3.0

    def __init__(self, server: RealKubeApiServer, cni: Any) -> None:
        self.server = server
        self.cni = cni
        self._added: dict[str, dict[str, Any]] = {}
        self._busy: set[str] = set()
        self._failed: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"pod-networks-{server.name}", daemon=True)

    def start(self) -> PodNetworks:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            try:
                pods = self.server.admin_request("GET", "/api/v1/pods", expect=(200,)).get("items") or []
            except (RealTierError, OSError, ValueError, http.client.HTTPException):
                continue
            self._step(pods)

    def _step(self, pods: list[dict[str, Any]]) -> None:
        present: set[str] = set()
        for pod in pods:
            md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
            uid = str(md.get("uid", ""))
            present.add(uid)
            with self._lock:
                added, busy = uid in self._added, uid in self._busy
                failed_at = self._failed.get(uid)
            if md.get("deletionTimestamp"):
                if added:
                    self._spawn(uid, self._delete, uid)
                continue
            annotations = md.get("annotations") or {}
            if (added or busy or not spec.get("nodeName") or spec.get("hostNetwork")
                    or _NETWORKS not in annotations or _NETWORK_STATUS in annotations):
                continue
            if failed_at is not None and time.monotonic() - failed_at < self.RETRY_SECONDS:
                continue
            self._spawn(uid, self._add, pod)
        with self._lock:
            gone = [uid for uid in self._added if uid not in present and uid not in self._busy]
        for uid in gone:
            self._spawn(uid, self._delete, uid)

    def _spawn(self, uid: str, fn: Any, arg: Any) -> None:
        with self._lock:
            if uid in self._busy:
                return
            self._busy.add(uid)
        threading.Thread(target=self._run, args=(uid, fn, arg), daemon=True, name=f"cni-{uid[:8]}").start()

    def _run(self, uid: str, fn: Any, arg: Any) -> None:
        try:
            fn(arg)
        finally:
            with self._lock:
                self._busy.discard(uid)

    def _add(self, pod: dict[str, Any]) -> None:
        from sandbox.kube.cni import CniError
        from sandbox.kube.uml import GuestError

        md = pod["metadata"]
        try:
            self.cni.add(pod, pod["spec"]["nodeName"])
        except (CniError, GuestError, OSError) as err:
            with self._lock:
                self._failed[md["uid"]] = time.monotonic()
            self._event(pod, "FailedCreatePodSandBox",
                        f'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for '
                        f'sandbox "{md["uid"].replace("-", "")}": plugin type="multus" name="multus-cni-network" '
                        f"failed (add): {err}")
            return
        with self._lock:
            self._added[md["uid"]] = pod
            self._failed.pop(md["uid"], None)

    def _delete(self, uid: str) -> None:
        with self._lock:
            pod = self._added.pop(uid, None)
        if pod is not None:
            self.cni.delete(pod)

    def _event(self, pod: dict[str, Any], reason: str, message: str) -> None:
        md = pod["metadata"]
        with contextlib.suppress(RealTierError, OSError, http.client.HTTPException):
            self.server.admin_request("POST", f"/api/v1/namespaces/{md['namespace']}/events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
                "involvedObject": {"kind": "Pod", "namespace": md["namespace"], "name": md["name"],
                                   "uid": md["uid"], "apiVersion": "v1"},
                "reason": reason, "message": message[:1024], "type": "Warning",
                "source": {"component": "kubelet", "host": pod["spec"].get("nodeName", "")},
                "count": 1}, expect=(201,))


_NETWORKS = "k8s.v1.cni.cncf.io/networks"
_RBAC_PLURALS = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings", "Role": "roles",
                 "RoleBinding": "rolebindings"}
_NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


class RealKubeApiServer:
    """A real control plane behind the simulated server's interface (see the module docstring).

    `crd_delay`, `rollout_delay` and `pod_delay` are accepted and ignored: the real controllers
    take the time they take."""

    kind = "real"

    def __init__(self, *, token: str, nodes: int | list[str] = 1, name: str = "sandbox",
                 dns_name: str | None = None, dns_authority: CertAuthority | None = None,
                 ip_access: bool = True, crd_delay: float = 0.0, rollout_delay: float = 0.0,
                 pod_delay: float = 0.0, controller_user: str | None = None) -> None:
        del crd_delay, rollout_delay, pod_delay
        if not isinstance(token, str) or not token or any(c.isspace() or c in ',"' for c in token):
            raise ValueError("token must be a non-empty string without whitespace, commas or quotes")
        if controller_user is not None and (not controller_user or controller_user.startswith("system:")
                                            or any(c.isspace() or c in ',"' for c in controller_user)):
            raise ValueError("controller_user must be a plain user name (no whitespace, commas, quotes or system:)")
        if (dns_name is None) != (dns_authority is None):
            raise ValueError("dns_name and dns_authority go together")
        self.token = token
        # None: `token` is a user in system:masters (a project owner's Google token on GKE). A name:
        # `token` authenticates as that user with no group, so it holds only what `grant` gives it,
        # and the kubeconfig carries a second token, the operator's (system:masters).
        self.controller_user = controller_user
        self._operator_token = secrets.token_urlsafe(24)
        self.name = name
        self.faults = _Unsupported()
        self.stats: Stats = _AuditStats(self)
        self._initial_nodes = ([f"{name}-node-{i + 1}" for i in range(nodes)] if isinstance(nodes, int)
                               else list(nodes))
        self._certs = make_certs(name)
        self.dns_name = dns_name
        self._dns_certs = dns_authority.issue(dns_name) if dns_authority and dns_name else None
        self.ip_access = ip_access
        self.url = ""
        self.dns_endpoint = ""
        self._admin_token = secrets.token_urlsafe(24)
        self._procs: list[_Process] = []
        self._etcd: Etcd | None = None
        self._run: Path | None = None
        self._refuser: socket.socket | None = None
        self._api_port = 0
        self.started_seconds = 0.0
        self.store = _CoreReader(self)  # what the CNI data path reads by key (sandbox.kube.realcni)
        self.real_cni: Any = None
        self._pod_networks: PodNetworks | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def ca_pem(self) -> bytes:
        return self._certs.ca_pem

    @property
    def endpoint(self) -> str:
        return self.url.removeprefix("https://")

    @property
    def audit_log(self) -> Path:
        assert self._run is not None
        return self._run / "audit.log"

    def start(self, port: int = 0) -> str:
        if self.url:
            return self.url
        started = time.monotonic()
        try:
            self._start(port)
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - started
        return self.url

    def _start(self, port: int) -> None:
        kube = _binaries("kube")
        kwok = _binaries("kwok") / "kwok"
        self._etcd = Etcd.acquire()
        run = self._run = _new_run_dir(f"kube-{self.name}"[:40])
        files = self._write_files(run)
        self._api_port = port or _free_port()
        argv = [
            str(kube / "kube-apiserver"),
            "--etcd-servers", self._etcd.client_url, "--etcd-prefix", f"/registry-{run.name}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self._api_port),
            "--tls-cert-file", str(files["tls.crt"]), "--tls-private-key-file", str(files["tls.key"]),
            "--token-auth-file", str(files["tokens.csv"]),
            "--authorization-mode", "RBAC",
            "--allow-privileged=true",  # the Multus DaemonSet is privileged, as on GKE
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(files["sa.pub"]),
            "--service-account-signing-key-file", str(files["sa.key"]),
            "--audit-policy-file", str(files["audit-policy.json"]), "--audit-log-path", str(run / "audit.log"),
            "--audit-log-mode", "blocking", "--audit-log-maxsize", "0",
            "--enable-priority-and-fairness=false",
            "--profiling=false", "-v", "1",
        ]
        if self._dns_certs is not None:
            argv += ["--tls-sni-cert-key", f"{files['dns.crt']},{files['dns.key']}:{self.dns_name}"]
        api = _Process("kube-apiserver", argv, run)
        self._procs.append(api)
        _wait("kube-apiserver", lambda: self._get_status("/readyz") == 200, [api])
        self._write_component_kubeconfigs(run)
        self._procs.append(_Process("kube-controller-manager", [
            str(kube / "kube-controller-manager"), "--kubeconfig", str(run / "controller-manager.kubeconfig"),
            "--bind-address", "127.0.0.1", "--secure-port", "0", "--leader-elect=false",
            "--service-account-private-key-file", str(files["sa.key"]), "--root-ca-file", str(files["ca.crt"]),
            "--use-service-account-credentials=false", "--cluster-name", self.name,
            "--concurrent-daemonset-syncs", "2", "--profiling=false", "-v", "1"], run))
        self._procs.append(_Process("kube-scheduler", [
            str(kube / "kube-scheduler"), "--kubeconfig", str(run / "scheduler.kubeconfig"),
            "--bind-address", "127.0.0.1", "--secure-port", "0", "--leader-elect=false",
            "--profiling=false", "-v", "1"], run))
        self._procs.append(_Process("kwok", [
            str(kwok), "--kubeconfig", str(run / "kwok.kubeconfig"), "--manage-all-nodes=true",
            "--config", str(files["kwok-stages.yaml"]), "--node-ip", "10.0.1.2", "--cidr", "10.104.0.0/14",
            # Heartbeats as a kubelet sends them, through node Leases: without them the node
            # lifecycle controller marks every node NotReady after its grace period (40-50 s) and
            # turns the pods on it unready.
            "--node-lease-duration-seconds", "40",
            "--server-address", f"127.0.0.1:{_free_port()}", "-v", "WARN"], run))
        if self.ip_access:
            self.url = f"https://127.0.0.1:{self._api_port}"
        else:
            # A client outside the authorized networks cannot reach the IP endpoint: GKE hands out
            # an address whose connections close at once, as the simulated server's IP listener does.
            self._refuser = _start_refuser()
            self.url = f"https://127.0.0.1:{self._refuser.getsockname()[1]}"
        if self.dns_name:
            self.dns_endpoint = f"{self.dns_name}:{self._api_port}"
        # The ServiceAccount admission plugin refuses pods until the namespace's `default`
        # account exists; the controller-manager creates it. Wait for it, as kubeadm's users do.
        _wait("the default service account", lambda: self._get_status(
            "/api/v1/namespaces/default/serviceaccounts/default", admin=True) == 200, self._procs)
        if self._initial_nodes:
            self.add_nodes(self._initial_nodes)

    def use_real_cni(self, whereabouts: str = "v0.7.0") -> Any:
        """Pods' networks on the real data path: real Multus, IPVLAN and Whereabouts in a UML guest
        (sandbox.kube.realcni) whose plugins call this API server; returns the RealCni."""
        from sandbox.kube.realcni import RealCni

        if not self.url:
            raise RuntimeError("start the server before choosing its CNI")
        if self.real_cni is None:
            self.real_cni = RealCni(self, whereabouts=whereabouts).start()
            self._pod_networks = PodNetworks(self, self.real_cni).start()
        return self.real_cni

    def stop(self) -> None:
        if self._pod_networks is not None:
            self._pod_networks.stop()
            self._pod_networks = None
        if self.real_cni is not None:
            with contextlib.suppress(Exception):
                self.real_cni.stop()
            self.real_cni = None
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self._procs.clear()
        if self._refuser is not None:
            with contextlib.suppress(OSError):
                self._refuser.close()
            self._refuser = None
        if self._etcd is not None:
            self._etcd = None
            Etcd.release()
        if self._run is not None:
            shutil.rmtree(self._run, ignore_errors=True)
        self.url = ""

    def __enter__(self) -> RealKubeApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def paused(self) -> Any:
        raise RealTierError("pausing the controllers is a feature of the simulated API server (--kube sim)")

    def memory_bytes(self) -> dict[str, int]:
        """Resident memory of each of this cluster's processes (etcd, shared, is not included)."""
        out: dict[str, int] = {}
        for p in self._procs:
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{p.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[p.name] = int(line.split()[1]) * 1024
        return out

    # ------------------------------------------------------------ files
    def _write_files(self, run: Path) -> dict[str, Path]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        files: dict[str, bytes] = {
            "ca.crt": self._certs.ca_pem,
            "tls.crt": self._certs.cert_pem + self._certs.ca_pem,
            "tls.key": self._certs.key_pem,
            "sa.key": sa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()),
            "sa.pub": sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo),
            "audit-policy.json": json.dumps(AUDIT_POLICY).encode(),
            "kwok-stages.yaml": KWOK_STAGES.read_bytes(),
        }
        self._component_tokens = {user: secrets.token_urlsafe(24) for user in INTERNAL_USERS}
        self._component_tokens["sandbox:admin"] = self._admin_token
        if self.controller_user is None:
            lines = [f'{self.token},multus-provisioner-sandbox,sandbox-user,"system:masters"']
        else:
            lines = [f"{self.token},{self.controller_user},{self.controller_user}",
                     f'{self._operator_token},sandbox-operator,sandbox-operator,"system:masters"']
        lines += [f'{tok},{user},{user},"system:masters"' for user, tok in self._component_tokens.items()]
        files["tokens.csv"] = ("\n".join(lines) + "\n").encode()
        if self._dns_certs is not None:
            files["dns.crt"] = self._dns_certs.cert_pem + self._dns_certs.ca_pem
            files["dns.key"] = self._dns_certs.key_pem
        out: dict[str, Path] = {}
        for name, data in files.items():
            path = run / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            out[name] = path
        return out

    def _write_component_kubeconfigs(self, run: Path) -> None:
        for user, short in (("sandbox:controller-manager", "controller-manager"), ("sandbox:scheduler", "scheduler"),
                            ("sandbox:kwok", "kwok")):
            write_private_json(run / f"{short}.kubeconfig", kubeconfig_doc(
                f"https://127.0.0.1:{self._api_port}", self.ca_pem, self._component_tokens[user], short))

    def kubeconfig(self, context: str | None = None) -> dict[str, Any]:
        """The people's kubeconfig: the shared token, or the operator's when the controller is scoped."""
        token = self.token if self.controller_user is None else self._operator_token
        return kubeconfig_doc(self.url, self.ca_pem, token, context or self.name)

    def grant(self, objects: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create RBAC objects as the operator does at opt-in (`kubectl apply` of `render-rbac`);
        returns their `Kind ns/name`. A namespace a RoleBinding names is created when missing."""
        done: list[str] = []
        for obj in objects:
            kind, md = obj["kind"], obj["metadata"]
            plural = _RBAC_PLURALS.get(kind)
            if plural is None:
                raise ValueError(f"grant takes RBAC objects (ClusterRole, ClusterRoleBinding, Role, RoleBinding), "
                                 f"not {kind}")
            ns = md.get("namespace")
            if ns:
                self.admin_request("POST", "/api/v1/namespaces", {
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, expect=(201, 409))
            base = "/apis/rbac.authorization.k8s.io/v1" + (f"/namespaces/{ns}" if ns else "") + f"/{plural}"
            self.admin_request("POST", base, dict(obj), expect=(201,))
            done.append(f"{kind} {ns + '/' if ns else ''}{md['name']}")
        return done

    def write_kubeconfig(self, path: str | os.PathLike[str], context: str | None = None) -> str:
        """Write a kubeconfig (0600, it holds the token) for this server; returns the path."""
        if not self.url:
            raise RuntimeError("start the server before writing its kubeconfig")
        return write_private_json(path, self.kubeconfig(context))

    # ------------------------------------------------------------ the admin client
    def _connection(self) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        return http.client.HTTPSConnection("127.0.0.1", self._api_port, context=ctx, timeout=30)

    def _get_status(self, path: str, admin: bool = False) -> int:
        conn = self._connection()
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self._admin_token}"} if admin else {})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def admin_request(self, method: str, path: str, body: Any = None, *,
                      content_type: str = "application/json", expect: Iterable[int] = (200, 201)) -> Any:
        """One request as the sandbox's own admin user (not counted in `stats`)."""
        conn = self._connection()
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {self._admin_token}", "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        if response.status not in tuple(expect):
            raise RealTierError(f"{method} {path}: HTTP {response.status}: {raw[:300]!r}")
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------ nodes
    def add_nodes(self, names: Iterable[str], labels: dict[str, str] | None = None) -> list[str]:
        """Node objects as a kubelet registers them; kwok makes them Ready."""
        added = []
        for n in names:
            problem = name_problem(n, "subdomain")
            if problem:
                raise ValueError(f"node name: {problem}")
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": n, "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": n, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "type": "kwok", **(labels or {})}},
                "spec": {"podCIDR": "10.104.0.0/24"}}
            result = self.admin_request("POST", "/api/v1/nodes", node, expect=(201, 409))
            if result and result.get("kind") == "Node":
                added.append(n)
        return added

    def remove_nodes(self, names: Iterable[str]) -> list[str]:
        removed = []
        for n in names:
            result = self.admin_request("DELETE", f"/api/v1/nodes/{n}", expect=(200, 404))
            if result and result.get("kind") != "Status":
                removed.append(n)
        return removed

    def node_names(self) -> list[str]:
        listing = self.admin_request("GET", "/api/v1/nodes", expect=(200,))
        return [item["metadata"]["name"] for item in listing.get("items", [])]


def _start_refuser() -> socket.socket:
    """A listener on 127.0.0.1 that accepts and closes every connection at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=loop, name="kube-refuser", daemon=True).start()
    return sock


@contextlib.contextmanager
def real_server(**kw: Any) -> Iterator[RealKubeApiServer]:
    server = RealKubeApiServer(**kw)
    server.start()
    try:
        yield server
    finally:
        server.stop()
