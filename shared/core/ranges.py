"""How full is each NAD's Whereabouts pool? Pure arithmetic over what a cluster reports.

Inputs are the objects as the cluster API returns them: the managed NADs (their `spec.config`
names the Whereabouts range, `range_start`/`range_end` and `exclude`), Whereabouts' `IPPool`
objects (`whereabouts.cni.cncf.io/v1alpha1`: `spec.range` and `spec.allocations`, keyed by the
offset from the range's first address, each with the owning pod's `podref`), and the pods that
exist. Whereabouts keeps one IPPool per range (per `network_name`), so NADs sharing a range share
a pool; the report says so rather than counting the addresses twice.

Nothing here edits anything: Whereabouts' own reconciler frees stale allocations; the controller
reports and counts them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

THRESHOLDS = (80, 95)  # percent used: reconcile warns once per crossing of each

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Allocation:
    ip: str
    podref: str
    container_id: str
    stale: bool  # its pod no longer exists


@dataclass(frozen=True)
class Slice:
    """One NAD's part of the secondary range and what Whereabouts handed out from it."""

    nad: str  # namespace/name
    range: str
    start: str
    end: str
    exclude: tuple[str, ...]
    capacity: int  # addresses Whereabouts can hand out (start..end, minus excluded)
    pool: str  # the IPPool's name
    allocations: tuple[Allocation, ...] = ()
    shared_with: tuple[str, ...] = ()  # other NADs on the same pool
    problem: str = ""  # why the config could not be read, if it could not

    @property
    def used(self) -> int:
        return len(self.allocations)

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)

    @property
    def stale(self) -> int:
        return sum(1 for a in self.allocations if a.stale)

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.capacity if self.capacity else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"nad": self.nad, "range": self.range, "start": self.start, "end": self.end,
                "exclude": list(self.exclude), "capacity": self.capacity, "used": self.used, "free": self.free,
                "percent": round(self.percent, 1), "stale": self.stale, "pool": self.pool,
                "sharedWith": list(self.shared_with), "problem": self.problem,
                "allocations": [{"ip": a.ip, "podref": a.podref, "id": a.container_id, "stale": a.stale}
                                for a in self.allocations]}


@dataclass(frozen=True)
class Report:
    secondary_range: str
    slices: tuple[Slice, ...]
    overlaps: tuple[str, ...] = ()
    outside: tuple[str, ...] = ()  # slices not inside the secondary range
    unclaimed_pools: tuple[str, ...] = field(default_factory=tuple)  # IPPools no managed NAD uses

    def to_dict(self) -> dict[str, Any]:
        return {"secondaryRange": self.secondary_range, "slices": [s.to_dict() for s in self.slices],
                "overlaps": list(self.overlaps), "outside": list(self.outside),
                "unclaimedPools": list(self.unclaimed_pools)}


@dataclass(frozen=True)
class _Ipam:
    network: Network
    start: Any
    end: Any
    exclude: tuple[Network, ...]
    network_name: str


def whereabouts_ipam(nad: Mapping[str, Any]) -> _Ipam | str:
    """The Whereabouts settings of a NAD's `spec.config`, or why they cannot be read."""
    try:
        conf = json.loads(((nad.get("spec") or {}).get("config")) or "")
    except (TypeError, ValueError, RecursionError) as e:
        return f"spec.config is not JSON: {e}"
    plugins = conf.get("plugins") if isinstance(conf, dict) and "plugins" in conf else [conf]
    ipam = next((p["ipam"] for p in plugins or [] if isinstance(p, dict) and isinstance(p.get("ipam"), dict)),
                None)
    if ipam is None or ipam.get("type") != "whereabouts":
        return "no whereabouts IPAM in spec.config"
    if not ipam.get("range") and isinstance(ipam.get("ipRanges"), list) and ipam["ipRanges"]:
        ipam = {**ipam, **(ipam["ipRanges"][0] if isinstance(ipam["ipRanges"][0], dict) else {})}
    try:
        text = str(ipam.get("range") or "")
        start_text = end_text = None
        if "-" in text:  # Whereabouts' "a.b.c.d-e.f.g.h/nn" form
            start_text, rest = text.split("-", 1)
            end_text, prefix = rest.split("/", 1)
            text = f"{start_text}/{prefix}"
        net = ipaddress.ip_network(text, strict=False)
        first = net.network_address + 1 if net.num_addresses > 2 else net.network_address
        last = net.broadcast_address - 1 if net.num_addresses > 2 else net.broadcast_address
        start_at = ipam.get("range_start") or start_text
        end_at = ipam.get("range_end") or end_text
        start = ipaddress.ip_address(start_at) if start_at else first
        end = ipaddress.ip_address(end_at) if end_at else last
        exclude = tuple(ipaddress.ip_network(x, strict=False) for x in ipam.get("exclude") or [])
    except (TypeError, ValueError, AttributeError) as e:
        return f"invalid whereabouts range: {e}"
    return _Ipam(net, max(start, first), min(end, last), exclude, str(ipam.get("network_name") or ""))


def pool_name(ipam: _Ipam) -> str:
    """Whereabouts' IPPool name for a range: `/` and `:` as `-`, after the network_name if any."""
    text = str(ipam.network)
    if text.split("/")[0].endswith(":"):
        text = text.replace("/", "0/", 1)
    text = text.replace(":", "-").replace("/", "-")
    return f"{ipam.network_name}-{text}" if ipam.network_name else text


def _capacity(ipam: _Ipam) -> int:
    if ipam.end < ipam.start:
        return 0
    total = int(ipam.end) - int(ipam.start) + 1
    # Excluded blocks may overlap or repeat; each address counts once (as Whereabouts skips it once).
    cut = sorted((max(int(x.network_address), int(ipam.start)), min(int(x.broadcast_address), int(ipam.end)))
                 for x in ipam.exclude if x.version == ipam.network.version)
    covered, reach = 0, int(ipam.start) - 1
    for lo, hi in cut:
        lo = max(lo, reach + 1)
        if hi >= lo:
            covered += hi - lo + 1
            reach = hi
    return max(0, total - covered)


def report(secondary_range: str, nads: Iterable[Mapping[str, Any]], ippools: Iterable[Mapping[str, Any]],
           pods: Iterable[str]) -> Report:
    """The address report of one cluster: each NAD's slice, its pool's use, overlaps, stale ones.

    `pods` are the `namespace/name` of the pods that exist (stale = an allocation's podref is not
    among them).
    """
    live = set(pods)
    pools = {(p.get("metadata") or {}).get("name", ""): p for p in ippools}
    secondary = ipaddress.ip_network(secondary_range, strict=False) if secondary_range else None
    parsed: list[tuple[str, _Ipam | str]] = []
    for nad in sorted(nads, key=lambda n: ((n.get("metadata") or {}).get("namespace", ""),
                                           (n.get("metadata") or {}).get("name", ""))):
        md = nad.get("metadata") or {}
        parsed.append((f"{md.get('namespace', '')}/{md.get('name', '')}", whereabouts_ipam(nad)))
    by_pool: dict[str, list[str]] = {}
    for ref, ipam in parsed:
        if not isinstance(ipam, str):
            by_pool.setdefault(pool_name(ipam), []).append(ref)
    slices, outside = [], []
    for ref, ipam in parsed:
        if isinstance(ipam, str):
            slices.append(Slice(ref, "", "", "", (), 0, "", problem=ipam))
            continue
        name = pool_name(ipam)
        spec = (pools.get(name) or {}).get("spec") or {}
        allocs = _entries(ipam.network, spec, live)
        slices.append(Slice(ref, str(ipam.network), str(ipam.start), str(ipam.end),
                            tuple(str(x) for x in ipam.exclude), _capacity(ipam), name, tuple(allocs),
                            tuple(r for r in by_pool[name] if r != ref)))
        if secondary is not None and (ipam.network.version != secondary.version
                                      or not ipam.network.subnet_of(secondary)):  # type: ignore[arg-type]
            outside.append(f"{ref} {ipam.network} is not inside the secondary range {secondary}")
    overlaps = []
    good = [(r, i) for r, i in parsed if not isinstance(i, str)]
    for n, (ref_a, a) in enumerate(good):
        for ref_b, b in good[n + 1:]:
            if a.network.version != b.network.version:
                continue
            lo, hi = max(a.start, b.start), min(a.end, b.end)
            if lo <= hi:
                how = "share one Whereabouts pool" if pool_name(a) == pool_name(b) else "overlap"
                overlaps.append(f"{ref_a} ({a.start}-{a.end}) and {ref_b} ({b.start}-{b.end}) {how}: {lo}-{hi}")
    unclaimed = sorted(set(pools) - set(by_pool))
    return Report(secondary_range or "", tuple(slices), tuple(overlaps), tuple(outside), tuple(unclaimed))


def _entries(network: Network, spec: Mapping[str, Any], live: set[str] | None) -> list[Allocation]:
    """An IPPool's allocations, each addressed from its offset in `network` (stale: its pod is not
    in `live`; None: not known)."""
    out = []
    for offset, a in sorted((spec.get("allocations") or {}).items(), key=lambda kv: _int(kv[0])):
        if _int(offset) < 0 or not isinstance(a, Mapping):
            continue
        podref = str(a.get("podref") or "")
        out.append(Allocation(str(network.network_address + _int(offset)), podref, str(a.get("id") or ""),
                              live is not None and podref not in live))
    return out


def allocations(ippools: Iterable[Mapping[str, Any]]) -> list[tuple[str, Allocation]]:
    """Every allocation of every IPPool with its pool's name, addressed from the pool's own
    `spec.range` (what `verify` matches a pod's `podref` against). A pool whose range cannot be
    read is skipped: its allocations cannot be addressed."""
    out: list[tuple[str, Allocation]] = []
    for pool in ippools:
        spec = pool.get("spec") or {}
        try:
            network = ipaddress.ip_network(str(spec.get("range") or ""), strict=False)
        except ValueError:
            continue
        name = str((pool.get("metadata") or {}).get("name") or "")
        out.extend((name, a) for a in _entries(network, spec, None))
    return out


def level(percent: float) -> int:
    """The highest threshold `percent` reaches (0 for none); compare with the recorded one."""
    return max((t for t in THRESHOLDS if percent >= t), default=0)


def _int(text: Any) -> int:
    try:
        return int(str(text), 10)
    except ValueError:
        return -1
