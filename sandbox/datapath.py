"""The sandbox's data-path probe: the node side of a pod's network, for `verify`.

A real kubelet does not tell the API what the kernel gave a pod; neither does GKE, so a deployed
controller reports the data path of a verification as not checked (`shared/adapters/datapath.py`).
In the real tier (`--kube real`) the pods' namespaces live in the sandbox's UML guests
(`sandbox/kube/realcni.py`), so the stack can look: this small HTTP server on 127.0.0.1 answers
the controller's `HttpDataPath` (the functions and the CLI find it through
`MULTUS_PROVISIONER_DATAPATH_URL` in the stack's environment).

- `POST /v1/observe {"cluster": PATH, "pod": UID, "ifname": "net1"}` -> the pod's network namespace
  and the interface's addresses from `ip -j addr` inside it.
- `POST /v1/reach {"cluster", "pod", "address", "ifname"}` -> ICMP echo and ARP from inside the
  pod's namespace over that interface.

Every input is checked before it reaches a command (an argv list, never a shell): the cluster must be
one of the stack's, the pod a UID the real path set up, the interface a Linux interface name, the
address an IP literal. A cluster on the simulated CNI answers `{"checked": false, "why": ...}`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_IFNAME = re.compile(r"^[a-z][a-z0-9]{0,14}$")
_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class BadProbeRequest(ValueError):
    """A request the probe refuses, with the field it names."""


class DataPathProbe:
    """Answers from the real CNI path of each cluster; `cni_of(name)` gives a cluster's `RealCni`
    (None: that cluster runs the simulated CNI, or is not the stack's)."""

    def __init__(self, cni_of: Callable[[str], Any]) -> None:
        self.cni_of = cni_of
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
                    if not isinstance(body, dict):
                        raise BadProbeRequest("body: expected a JSON object")
                    status, out = 200, probe.answer(self.path, body)
                except (BadProbeRequest, json.JSONDecodeError) as e:
                    status, out = 400, {"error": str(e)}
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # quiet: the verify output says what happened
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="datapath-probe", daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path not in ("/v1/observe", "/v1/reach"):
            raise BadProbeRequest(f"{path}: unknown; expected /v1/observe or /v1/reach")
        from shared.core.errors import Rejected
        from shared.core.refs import ClusterRef

        try:  # the controller's own parser of cluster names: one rule for what a cluster name is
            ref = ClusterRef.parse(body.get("cluster"))
        except Rejected:
            raise BadProbeRequest("cluster: expected projects/P/locations/L/clusters/C") from None
        uid, ifname = str(body.get("pod") or ""), str(body.get("ifname") or "net1")
        if not _UID.match(uid):
            raise BadProbeRequest("pod: expected the pod's UID")
        if not _IFNAME.match(ifname):
            raise BadProbeRequest("ifname: expected a Linux interface name")
        cni = self.cni_of(ref.cluster)
        if cni is None:
            return {"checked": False, "why": "this cluster runs the simulated CNI: no kernel data path"}
        info = cni.pod_info(uid)
        if info is None:
            return {"checked": False, "why": "no such pod on the real data path"}
        if path == "/v1/observe":
            addresses = [f"{a['local']}/{a['prefixlen']}" for link in cni.addresses(uid, ifname)
                         for a in link.get("addr_info") or [] if a.get("family") in ("inet", "inet6")
                         and a.get("scope") != "link"]
            return {"checked": True, "netns": info.get("netns", ""), "addresses": addresses}
        try:
            address = str(ipaddress.ip_address(str(body.get("address") or "")))
        except ValueError:
            raise BadProbeRequest("address: expected an IP address") from None
        reach = cni.ping(uid, address, ifname)
        detail = reach.get("detail")
        return {"checked": True, "icmp": bool(reach.get("icmp")), "arp": bool(reach.get("arp")),
                "detail": " ".join(detail) if isinstance(detail, list) else str(detail or "")}
