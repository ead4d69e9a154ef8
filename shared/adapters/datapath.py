"""The data-path adapters: what a node's kernel says about a pod's `net1`, and whether it reaches a peer.

The Kubernetes API shows what Multus *reported* (the `network-status` annotation); only the node
knows what the kernel *has*. A deployed controller has no way into a GKE node's namespaces, so it
uses `NoDataPath` and `verify` reports the data path as not checked. The sandbox runs the real
Multus, IPVLAN and Whereabouts in Linux namespaces (`--kube real`) and serves a probe over HTTP on
loopback (`sandbox/datapath.py`); `HttpDataPath` asks it. The URL comes from the settings, which
accept `http://127.0.0.1:PORT` only.

The body is JSON both ways (stdlib `json`, no shell anywhere); `urllib` is imported on first use.
"""

from __future__ import annotations

import json
from typing import Any

from shared.core.errors import Transient
from shared.core.refs import ClusterRef
from shared.ports import PodDataPath, Reach


class NoDataPath:
    """A deployed controller: nothing to ask, every answer is "not checked"."""

    def observe(self, ref: ClusterRef, pod_uid: str, ifname: str) -> PodDataPath | None:
        return None

    def reach(self, ref: ClusterRef, pod_uid: str, address: str, ifname: str) -> Reach | None:
        return None


class HttpDataPath:
    """The sandbox's probe (`sandbox/datapath.py`) at `url`."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def observe(self, ref: ClusterRef, pod_uid: str, ifname: str) -> PodDataPath | None:
        body = self._call("observe", {"cluster": ref.path, "pod": pod_uid, "ifname": ifname})
        if not body.get("checked"):
            return None
        return PodDataPath(str(body.get("netns") or ""), tuple(str(a) for a in body.get("addresses") or ()))

    def reach(self, ref: ClusterRef, pod_uid: str, address: str, ifname: str) -> Reach | None:
        body = self._call("reach", {"cluster": ref.path, "pod": pod_uid, "address": address, "ifname": ifname})
        if not body.get("checked"):
            return None
        return Reach(bool(body.get("icmp")), bool(body.get("arp")), str(body.get("detail") or ""))

    def _call(self, op: str, payload: dict[str, str]) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.url}/v1/{op}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace")
            raise Transient(f"data-path probe {op}: HTTP {e.code}: {detail}") from None
        except (OSError, ValueError) as e:
            raise Transient(f"data-path probe {op} at {self.url}: {e}") from None
        if not isinstance(body, dict):
            raise Transient(f"data-path probe {op}: expected a JSON object")
        return body
