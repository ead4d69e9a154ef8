"""The simulated CNI's pure parts: the pod's networks annotation, NAD configs and Whereabouts IPAM.

Messages imitate Multus v4 and Whereabouts v0.7, so a pending pod's Event reads as on GKE.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from dataclasses import dataclass
from typing import Any

NETWORKS = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


class CniError(Exception):
    """Why the sandbox could not be created (becomes a FailedCreatePodSandBox Event)."""


@dataclass(frozen=True)
class Selection:
    namespace: str
    name: str
    interface: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_networks(text: str, pod_namespace: str) -> list[Selection]:
    """`ns/nad[@if],nad2` or the JSON list form `[{"name":..., "namespace":..., "interface":...}]`."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError as e:
            raise CniError(f"parsePodNetworkAnnotation: failed to parse pod Network Attachment Selection "
                           f"Annotation JSON format: {e}")
        out = []
        for it in items:
            if not isinstance(it, dict) or not isinstance(it.get("name"), str) or not it["name"]:
                raise CniError("parsePodNetworkAnnotation: network selection element has no name")
            out.append(Selection(str(it.get("namespace") or pod_namespace), it["name"], it.get("interface")))
        return out
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        iface = None
        if "@" in item:
            item, iface = item.split("@", 1)
        ns, _, name = item.rpartition("/")
        if "/" in ns or not name:
            raise CniError(f"parsePodNetworkAnnotation: invalid network selection element {item!r}")
        out.append(Selection(ns or pod_namespace, name, iface or None))
    return out


@dataclass(frozen=True)
class IpamRange:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    start: Any
    end: Any
    exclude: tuple[Any, ...]
    network_name: str

    @property
    def pool(self) -> str:
        return f"{self.network_name}/{self.network}" if self.network_name else str(self.network)


def parse_ipam(config_text: Any, ref: str) -> IpamRange:
    """The Whereabouts range of a NAD's `spec.config` (a conflist or a single plugin config)."""
    if not isinstance(config_text, str) or not config_text.strip():
        raise CniError(f"GetNetworkDelegates: failed getting the delegate: net-attach-def {ref} has no config")
    try:
        conf = json.loads(config_text)
    except ValueError as e:
        raise CniError(f"GetNetworkDelegates: failed getting the delegate: getKubernetesDelegate: cannot get "
                       f"delegate from {ref}: invalid config: {e}")
    plugins = conf.get("plugins") if isinstance(conf, dict) else None
    candidates = plugins if isinstance(plugins, list) else [conf]
    ipam = next((p.get("ipam") for p in candidates if isinstance(p, dict) and isinstance(p.get("ipam"), dict)),
                None)
    if ipam is None or ipam.get("type") != "whereabouts":
        raise CniError(f"error adding container to network {ref!r}: the sandbox simulates only the whereabouts "
                       f"IPAM plugin (got {ipam.get('type') if ipam else None!r})")
    rng = ipam.get("range")
    if not rng and isinstance(ipam.get("ipRanges"), list) and ipam["ipRanges"]:
        rng = (ipam["ipRanges"][0] or {}).get("range")
        ipam = {**ipam, **(ipam["ipRanges"][0] or {})}
    if not isinstance(rng, str) or not rng:
        raise CniError(f"error adding container to network {ref!r}: error at storage engine: invalid range "
                       f"in ipam config: {rng!r}")
    try:
        start_text = None
        if "-" in rng:  # whereabouts' "a.b.c.d-e.f.g.h/nn" shorthand
            start_text, rest = rng.split("-", 1)
            net = ipaddress.ip_network(rng.split("-")[0].split("/")[0] + "/" + rest.split("/")[1], strict=False)
            end = ipaddress.ip_address(rest.split("/")[0])
        else:
            net = ipaddress.ip_network(rng, strict=False)
            end = None
        start = ipaddress.ip_address(ipam.get("range_start") or start_text) if (
            ipam.get("range_start") or start_text) else None
        if ipam.get("range_end"):
            end = ipaddress.ip_address(ipam["range_end"])
        exclude = tuple(ipaddress.ip_network(x, strict=False) for x in ipam.get("exclude") or [])
    except (ValueError, TypeError, IndexError) as e:
        raise CniError(f"error adding container to network {ref!r}: invalid range configuration: {e}")
    first = net.network_address + 1 if net.num_addresses > 2 else net.network_address
    last = net.broadcast_address - 1 if net.num_addresses > 2 else net.broadcast_address
    start = max(start, first) if start else first
    end = min(end, last) if end else last
    return IpamRange(net, start, end, exclude, str(ipam.get("network_name") or ""))


class Ipam:
    """Cluster-wide allocations, one pool per range (as Whereabouts keeps one IPPool per range)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, dict[Any, str]] = {}

    def allocate(self, r: IpamRange, owner: str, ref: str) -> Any:
        with self._lock:
            used = self._pools.setdefault(r.pool, {})
            ip = r.start
            while ip <= r.end:
                if ip not in used and not any(ip in x for x in r.exclude):
                    used[ip] = owner
                    return ip
                ip += 1
        excl = ", ".join(str(x) for x in r.exclude)
        raise CniError(f"error adding container to network \"{ref.split('/')[-1]}\": error at storage engine: "
                       f"Could not allocate IP in range: ip: {r.start} / - {r.end} / range: {r.network} / "
                       f"excludeRanges: [{excl}]")

    def release(self, owner: str) -> int:
        n = 0
        with self._lock:
            for used in self._pools.values():
                for ip in [ip for ip, o in used.items() if o == owner]:
                    del used[ip]
                    n += 1
        return n

    def allocated(self, pool: str) -> dict[Any, str]:
        with self._lock:
            return dict(self._pools.get(pool, {}))
