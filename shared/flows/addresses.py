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
from dataclasses import dataclass, replace
from typing import Any

from shared.core import ranges
from shared.core.observed import nested
from shared.core.records import ClusterWorkflow
from shared.ports import ClusterApiPort, ClusterRecord


@dataclass(frozen=True)
class Usage:
    warnings: tuple[str, ...] = ()
    pool_usage: dict[str, int] | None = None  # the levels, when they changed
    stale_allocations: int | None = None  # the count, when it changed
    stale: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.warnings or self.pool_usage is not None or self.stale_allocations is not None)

    def recorded(self, workflow: ClusterWorkflow) -> ClusterWorkflow:
        """`workflow` with what changed recorded."""
        if self.pool_usage is not None:
            workflow = replace(workflow, pool_usage=self.pool_usage)
        if self.stale_allocations is not None:
            workflow = replace(workflow, stale_allocations=self.stale_allocations)
        return workflow


def check(rec: ClusterRecord, kube: ClusterApiPort, nads: Sequence[Mapping[str, Any]]) -> Usage:
    """Pool use of the managed NADs `nads` (as listed on the cluster) against the recorded levels."""
    if not nads:
        return Usage()
    pools = kube.list_ippools()
    allocated = any(nested(p, "spec", "allocations") for p in pools)
    pods = kube.list_pod_refs() if allocated else []
    cidr = rec.workflow.node_pool.cidr if rec.workflow.node_pool else ""
    rep = ranges.report(cidr, nads, pools, pods)
    before = dict(rec.workflow.pool_usage or {})
    levels: dict[str, int] = {}
    warnings = []
    for s in rep.slices:
        if s.problem:
            continue
        key = s.nad.replace("/", "~")  # a Firestore map key without a path separator
        level = ranges.level(s.percent)
        if level:  # only pools past a threshold are kept: a new, empty NAD changes nothing
            levels[key] = level
        if level > _count(before.get(key)):
            warnings.append(f"NAD {s.nad}: Whereabouts pool {s.pool} is {s.percent:.0f}% used "
                            f"({s.used} of {s.capacity} addresses, {s.free} free; passed {level}%)")
    stale = sum(s.stale for s in rep.slices if not s.shared_with) + _shared_stale(rep)
    pool_usage = levels if levels != {k: _count(v) for k, v in before.items() if _count(v)} else None
    stale_allocations = stale if stale != (rec.workflow.stale_allocations or 0) else None
    if stale and stale_allocations is not None:
        warnings.append(f"{stale} Whereabouts allocation(s) belong to pods that no longer exist "
                        "(Whereabouts' reconciler frees them; the controller does not edit IPPools)")
    return Usage(tuple(warnings), pool_usage, stale_allocations, stale)


def _count(value: object) -> int:
    """A recorded level (a number in the document; anything else counts as none)."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _shared_stale(rep: ranges.Report) -> int:
    """Stale allocations of pools used by several NADs, counted once per pool."""
    seen: dict[str, int] = {}
    for s in rep.slices:
        if s.shared_with:
            seen[s.pool] = s.stale
    return sum(seen.values())
