"""Address awareness during reconcile: how full each NAD's Whereabouts pool is, and stale allocations.

A READY cluster's reconcile reads Whereabouts' IPPool objects (one LIST) and, when some address
is handed out, the pods (one LIST), and compares the use of each NAD's pool with what the
cluster document recorded (`poolUsage`: the highest threshold of `ranges.THRESHOLDS` reached, for
each NAD past one). Passing 80 % or 95 % is a warning in the history once per crossing: the level is stored,
so the next run says nothing until the pool drains below the threshold and fills again.
Allocations whose pod no longer exists are counted (`staleAllocations`); Whereabouts' own
reconciler frees them, so the controller never edits an IPPool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.core import ranges
from shared.ports import ClusterApiPort


@dataclass(frozen=True)
class Usage:
    warnings: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)  # poolUsage, staleAllocations (when changed)
    stale: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.warnings or self.fields)


def check(rec: Any, kube: ClusterApiPort, nads: Sequence[Mapping[str, Any]]) -> Usage:
    """Pool use of the managed NADs `nads` (as listed on the cluster) against the recorded levels."""
    if not nads:
        return Usage()
    pools = kube.list_ippools()
    allocated = any((p.get("spec") or {}).get("allocations") for p in pools)
    pods = kube.list_pod_refs() if allocated else []
    cidr = str((rec.data.get("nodePool") or {}).get("cidr") or "")
    rep = ranges.report(cidr, nads, pools, pods)
    before = dict(rec.data.get("poolUsage") or {})
    levels: dict[str, int] = {}
    warnings = []
    for s in rep.slices:
        if s.problem:
            continue
        key = s.nad.replace("/", "~")  # a Firestore map key without a path separator
        level = ranges.level(s.percent)
        if level:  # only pools past a threshold are kept: a new, empty NAD changes nothing
            levels[key] = level
        if level > int(before.get(key) or 0):
            warnings.append(f"NAD {s.nad}: Whereabouts pool {s.pool} is {s.percent:.0f}% used "
                            f"({s.used} of {s.capacity} addresses, {s.free} free; passed {level}%)")
    stale = sum(s.stale for s in rep.slices if not s.shared_with) + _shared_stale(rep)
    fields: dict[str, Any] = {}
    if levels != {k: int(v) for k, v in before.items() if int(v or 0)}:
        fields["poolUsage"] = levels
    if stale != int(rec.data.get("staleAllocations") or 0):
        fields["staleAllocations"] = stale
    if stale and "staleAllocations" in fields:
        warnings.append(f"{stale} Whereabouts allocation(s) belong to pods that no longer exist "
                        "(Whereabouts' reconciler frees them; the controller does not edit IPPools)")
    return Usage(tuple(warnings), fields, stale)


def _shared_stale(rep: ranges.Report) -> int:
    """Stale allocations of pools used by several NADs, counted once per pool."""
    seen: dict[str, int] = {}
    for s in rep.slices:
        if s.shared_with:
            seen[s.pool] = s.stale
    return sum(seen.values())
