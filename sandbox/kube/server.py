"""HTTPS, Bearer-token auth and routing of one sandbox Kubernetes API server.

`KubeApiServer` is what tests and the sandbox stack start (one per simulated cluster, many per
process): it owns a CA, a store, the simulated cluster and a ThreadingHTTPServer on 127.0.0.1.
Out-of-process users (the CLI, the benchmarks) reach fault injection, request statistics and
node changes at `/sandbox/faults`, `/sandbox/stats` and `/sandbox/nodes` with the same token.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from sandbox.kube import discovery
from sandbox.kube.api import Api
from sandbox.kube.certs import CertAuthority, CertBundle, make_certs, server_context
from sandbox.kube.faults import Faults, Stats
from sandbox.kube.meta import name_problem
from sandbox.kube.scheduler import Scheduler
from sandbox.kube.sim import Sim
from sandbox.kube.status import ApiError, PageNotFound, status_body
from sandbox.kube.store import Store
from sandbox.kube.types import BUILTINS

log = logging.getLogger(__name__)
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")
MAX_BODY = 3 * 1024 * 1024  # Kubernetes' request size limit
_NODE_TYPE = next(t for t in BUILTINS if t.kind == "Node")


def kubeconfig_doc(url: str, ca_pem: bytes, token: str, context: str) -> dict[str, Any]:
    """A kubeconfig for one server and one Bearer token (the simulated and the real server's)."""
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": context,
        "clusters": [{"name": context, "cluster": {
            "server": url, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
    }


def write_private_json(path: str | os.PathLike[str], data: Any) -> str:
    """Write JSON readable by the owner only (0600: a kubeconfig holds a token); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    return path


class KubeApiServer:
    """One cluster's API server. `dns_name` + `dns_authority` add a second listener: the cluster's
    DNS-based endpoint, served with a certificate for that name from the sandbox's public-style CA.
    `ip_access=False` makes the IP listener close every connection at once (a client outside the
    cluster's authorized networks cannot reach it), while the DNS listener still answers."""

    def __init__(self, *, token: str, nodes: int | list[str] = 1, crd_delay: float = 0.2,
                 rollout_delay: float = 0.5, pod_delay: float = 0.2, name: str = "sandbox",
                 dns_name: str | None = None, dns_authority: CertAuthority | None = None,
                 ip_access: bool = True, controller_user: str | None = None) -> None:
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise ValueError("token must be a non-empty string without whitespace")
        # Accepted for the real server's interface and ignored: this server authorizes every request
        # that carries the token; it does not evaluate RBAC (docs/SANDBOX_KUBE.md, "Identity and RBAC").
        self.controller_user = controller_user
        for what, v in (("crd_delay", crd_delay), ("rollout_delay", rollout_delay), ("pod_delay", pod_delay)):
            if not isinstance(v, int | float) or v < 0:
                raise ValueError(f"{what} must be a number >= 0, got {v!r}")
        self.token = token
        self.name = name
        self.faults = Faults()
        self.stats = Stats()
        self.store = Store()
        self.api = Api(self.store)
        self._sched: Scheduler | None = None
        self.sim: Sim | None = None
        self._delays = (crd_delay, rollout_delay, pod_delay)
        self._initial_nodes = ([f"{name}-node-{i + 1}" for i in range(nodes)] if isinstance(nodes, int)
                               else list(nodes))
        self._certs: CertBundle = make_certs(name)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        if (dns_name is None) != (dns_authority is None):
            raise ValueError("dns_name and dns_authority go together")
        self.dns_name = dns_name
        self._dns_certs = dns_authority.issue(dns_name) if dns_authority and dns_name else None
        self.ip_access = ip_access
        self._dns_httpd: _HTTPServer | None = None
        self.dns_endpoint = ""  # "name:port" once started with a DNS listener

    # ------------------------------------------------------------ lifecycle
    @property
    def ca_pem(self) -> bytes:
        return self._certs.ca_pem

    @property
    def endpoint(self) -> str:
        return self.url.removeprefix("https://")

    def start(self, port: int = 0) -> str:
        if self._httpd is not None:
            return self.url
        self._sched = Scheduler(self.name)
        crd, rollout, pod = self._delays
        self.sim = Sim(self.api, self._sched, crd_delay=crd, rollout_delay=rollout, pod_delay=pod)
        self.api.hooks = self.sim
        self.store.open_watch_window()
        httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        httpd.kube = self
        httpd.ssl_context = server_context(self._certs)
        httpd.refuse = not self.ip_access
        self._httpd = httpd
        self.url = f"https://127.0.0.1:{httpd.server_address[1]}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"kube-api-{self.name}", daemon=True)
        self._thread.start()
        if self._dns_certs is not None:
            dns = _HTTPServer(("127.0.0.1", 0), _Handler)
            dns.kube = self
            dns.ssl_context = server_context(self._dns_certs)
            self._dns_httpd = dns
            self.dns_endpoint = f"{self.dns_name}:{dns.server_address[1]}"
            threading.Thread(target=dns.serve_forever, kwargs={"poll_interval": 0.1},
                             name=f"kube-api-dns-{self.name}", daemon=True).start()
        if self._initial_nodes:
            self.add_nodes(self._initial_nodes)
        return self.url

    def use_real_cni(self, whereabouts: str = "v0.7.0") -> Any:
        """Put pods' networks on the real data path (sandbox.kube.realcni): real Multus, IPVLAN and
        Whereabouts in a UML guest whose plugins call this server back. Returns the RealCni."""
        from sandbox.kube.realcni import RealCni

        if self.sim is None:
            raise RuntimeError("start the server before choosing its CNI")
        if self.sim.real_cni is None:
            self.sim.real_cni = RealCni(self, whereabouts=whereabouts).start()
        return self.sim.real_cni

    def stop(self) -> None:
        real = self.sim.real_cni if self.sim is not None else None
        if real is not None:
            self.sim.real_cni = None
            real.stop()
        httpd, self._httpd = self._httpd, None
        dns, self._dns_httpd = self._dns_httpd, None
        if dns is not None:
            dns.shutdown()
            dns.server_close()
            dns.close_connections()
        self.store.close()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sched is not None:
            self._sched.stop()

    def __enter__(self) -> KubeApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ nodes
    def paused(self) -> Any:
        """A context in which no simulated controller acts (CRDs stay un-Established, rollouts and
        pods do not progress); what was due happens when it ends. For tests that must see the
        state before a controller acts, without racing its delay."""
        if self._sched is None:
            raise RuntimeError("the server is not started")
        return self._sched.paused()

    def add_nodes(self, names: Iterable[str], labels: dict[str, str] | None = None) -> list[str]:
        added = []
        for n in names:
            problem = name_problem(n, "subdomain")
            if problem:
                raise ValueError(f"node name: {problem}")
            obj = {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": n, "labels": {"kubernetes.io/hostname": n, "kubernetes.io/os": "linux",
                                      "kubernetes.io/arch": "amd64", **(labels or {})}},
                "spec": {"podCIDR": "10.104.0.0/24"}}
            try:
                self.api.create(_NODE_TYPE, None, obj, {"fieldManager": "kubelet"}, {}, False)
                added.append(n)
            except ApiError as e:
                if e.code != 409:
                    raise ValueError(e.message)
        return added

    def remove_nodes(self, names: Iterable[str]) -> list[str]:
        removed = []
        for n in names:
            try:
                self.api.delete(_NODE_TYPE, None, n, {}, False)
                removed.append(n)
            except ApiError as e:
                if e.code != 404:
                    raise
        return removed

    def node_names(self) -> list[str]:
        return [n["metadata"]["name"] for n in self.store.items("", "nodes")]

    # ------------------------------------------------------------ kubeconfig
    def kubeconfig(self, context: str | None = None) -> dict[str, Any]:
        return kubeconfig_doc(self.url, self.ca_pem, self.token, context or self.name)

    def write_kubeconfig(self, path: str | os.PathLike[str], context: str | None = None) -> str:
        """Write a kubeconfig (0600, it holds the token) for this server; returns the path."""
        if not self.url:
            raise RuntimeError("start the server before writing its kubeconfig")
        return write_private_json(path, self.kubeconfig(context))

    def grant(self, objects: Iterable[Mapping[str, Any]]) -> list[str]:
        """The real server's opt-in step; here a no-op that names what it would grant: this server
        does not evaluate RBAC, so the controller's scoped rights are proven on the real tier only."""
        return [f"{o['kind']} {o['metadata'].get('namespace', '') + '/' if o['metadata'].get('namespace') else ''}"
                f"{o['metadata']['name']}" for o in objects]

    # ------------------------------------------------------------ admin API
    def admin(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        data: Any = {}
        if body:
            try:
                data = json.loads(body)
            except ValueError as e:
                raise ApiError(400, f"invalid JSON: {e}")
        if path == "/sandbox/stats":
            if method == "DELETE":
                self.stats.reset()
            return 200, self.stats.to_json()
        if path == "/sandbox/faults":
            if method == "POST":
                if not isinstance(data, dict):
                    raise ApiError(400, "expected a JSON object {verb, path, status, times, delay}")
                try:
                    self.faults.add(str(data.get("verb", "*")), str(data.get("path", ".*")),
                                    data.get("status", 500), data.get("times", 1), data.get("delay", 0),
                                    str(data.get("message", "")))
                except (ValueError, TypeError, Exception) as e:
                    raise ApiError(400, f"invalid fault: {e}")
            elif method == "DELETE":
                self.faults.clear()
            return 200, {"faults": self.faults.pending()}
        if path == "/sandbox/nodes":
            if method == "POST":
                if not isinstance(data, dict):
                    raise ApiError(400, 'expected {"add": [names], "labels": {...}, "remove": [names]}')
                try:
                    self.add_nodes(data.get("add") or [], data.get("labels") or None)
                    self.remove_nodes(data.get("remove") or [])
                except ValueError as e:
                    raise ApiError(400, str(e))
            return 200, {"nodes": self.node_names()}
        raise ApiError(404, "the server could not find the requested resource")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    kube: KubeApiServer
    ssl_context: ssl.SSLContext
    refuse = False  # True: close every connection at once (the caller is not in the authorized networks)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return not self.refuse

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(sock)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshakes refused by clients that do not trust our CA, and closed connections, are normal.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as Go's net/http (kube-apiserver) sets on every connection: `_send` writes the
    # headers and the body separately, and with Nagle on, the body of a small answer waited for
    # the client's delayed ACK of the headers, 40 ms on Linux, on every request of a kept-alive
    # connection (a NAD apply's PATCH took 45 ms instead of 3: docs/BENCHMARKS.md).
    disable_nagle_algorithm = True
    server_version = "sandbox-kube-apiserver"
    timeout = 120
    server: _HTTPServer

    def setup(self) -> None:
        self.server.track(self.request, True)
        self.request.settimeout(10)
        self.request = self.server.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.request, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
                if len(out) > MAX_BODY:
                    raise ApiError(413, "the request body is too large")
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ApiError(413, "the request body is too large")
        return self.rfile.read(n) if n else b""

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "")
        want = f"Bearer {self.server.kube.token}"
        return hmac.compare_digest(got.encode(), want.encode())

    def _handle(self, method: str) -> None:
        kube = self.server.kube
        raw_path, _, qs = self.path.partition("?")
        path = unquote(raw_path)
        try:
            body = self._read_body()
        except (ApiError, ValueError) as e:
            self.close_connection = True
            self._send(413, status_body(413, str(e)))
            return
        admin = path.startswith("/sandbox/")
        if not admin:
            kube.stats.count(method, path)
        if path not in PUBLIC_PATHS and not self._authorized():
            if "Authorization" not in self.headers:
                # Kubernetes (and GKE) keep anonymous authentication on: a request without
                # credentials is user system:anonymous, whom RBAC forbids everything but health
                # and version (the differential test checks this against the real server).
                self._send(403, status_body(403, f'forbidden: User "system:anonymous" cannot {method.lower()} '
                                                 f'path "{path}"', "Forbidden", {}))
                return
            self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        try:
            if not admin:
                fault = kube.faults.match(method, path)
                if fault is not None:
                    if fault.delay:
                        time.sleep(fault.delay)
                    if fault.status:
                        raise ApiError(fault.status, fault.message or f"injected fault ({fault.status})",
                                       headers={"Retry-After": "1"} if fault.status == 429 else None)
            query = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            if admin:
                code, out = kube.admin(method, path, body)
                self._send(code, out)
            elif path == "/version" and method == "GET":
                self._send(200, discovery.version_info())
            elif path == "/openapi/v2" and method == "GET":
                self._send(200, *discovery.openapi_v2(headers.get("accept", "")))
            elif path in ("/healthz", "/livez", "/readyz") and method == "GET":
                self._send(200, b"ok", content_type="text/plain; charset=utf-8")
            else:
                code, out, extra = kube.api.dispatch(method, path, query, headers, body)
                if isinstance(out, Iterator):
                    self._stream(out)
                else:
                    self._send(code, out, extra)
        except PageNotFound:
            # An unknown API group or version never reaches a resource handler on Kubernetes: its
            # mux answers with Go's plain-text NotFound page, not a Status.
            self._send(404, b"404 page not found\n", content_type="text/plain; charset=utf-8")
        except ApiError as e:
            self._send(e.code, e.body(), e.headers)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except Exception as e:  # a server bug: answer as kube-apiserver would, and log it
            log.exception("sandbox kube: %s %s failed", method, path)
            self._send(500, status_body(500, f"Internal error occurred: {type(e).__name__}: {e}"))

    def _send(self, code: int, body: Any, headers: dict[str, str] | None = None,
              content_type: str | None = None) -> None:
        content_type = content_type or "application/json"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache, private")
            self.send_header("Audit-Id", str(uuid.uuid4()))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True

    def _stream(self, events: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        try:
            self.wfile.flush()
            for ev in events:
                line = json.dumps(ev).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
