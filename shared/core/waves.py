"""Bundle rollouts in waves: the pure parts (wave plan, wave size, the states).

A new bundle (images or log level changed in the policy document or by a redeploy) reaches the
fleet in waves: first a canary wave (the clusters labelled `multus-provisioner-wave=canary`, or
the first N tracked clusters when none is), then waves of at most a number or a share of the
fleet. Each cluster of a wave must pass the health gate before the next wave starts; a failed
gate halts the rollout and rolls that cluster back (docs/WORKFLOW.md, "Bundle rollouts").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.core.errors import Problem, Rejected

WAVE_LABEL = ("multus-provisioner-wave", "canary")

# Rollout states (`rollouts/current.state`).
RUNNING, HALTED, COMPLETED, ABORTED = "RUNNING", "HALTED", "COMPLETED", "ABORTED"
# A cluster's state in the rollout (`rollouts/current.clusters.{id}.state`).
WAITING, UPDATING, PASSED, ROLLED_BACK, SKIPPED = "WAITING", "UPDATING", "PASSED", "ROLLED_BACK", "SKIPPED"
ON_TARGET = (UPDATING, PASSED)  # these clusters run the target bundle; the others the previous one

_SIZE = re.compile(r"^([0-9]{1,6})(%?)$")


@dataclass(frozen=True)
class WaveSize:
    """At most `count` clusters per wave, or `percent` % of the fleet (at least one)."""

    count: int | None = None
    percent: int | None = None

    @classmethod
    def parse(cls, text: Any, *, field: str = "waveSize") -> WaveSize:
        """`"10"` (clusters) or `"25%"` (of the fleet); integers are accepted as counts."""
        m = _SIZE.fullmatch(str(text).strip()) if isinstance(text, (str, int)) and not isinstance(text, bool) \
            else None
        if m is None:
            raise Rejected("invalid wave size", [Problem(field, f"expected a number of clusters (10) or a share "
                                                                f"of the fleet (25%), got {text!r:.40}")])
        value = int(m[1])
        if m[2]:
            if not 1 <= value <= 100:
                raise Rejected("invalid wave size", [Problem(field, f"a share must be 1%..100%, got {value}%")])
            return cls(percent=value)
        if value < 1:
            raise Rejected("invalid wave size", [Problem(field, "a wave has at least one cluster")])
        return cls(count=value)

    def of(self, fleet: int) -> int:
        if self.count is not None:
            return self.count
        return max(1, math.floor(fleet * (self.percent or 100) / 100))

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)


def plan(clusters: Iterable[tuple[str, Mapping[str, str]]], *, canary: int, size: WaveSize,
         label: tuple[str, str] = WAVE_LABEL) -> list[dict[str, Any]]:
    """The waves for `clusters` ((id, labels), any order): `[{"name", "clusters": [ids]}]`.

    The canary wave is every cluster carrying `label`, else the first `canary` ids in order;
    the rest follow in id order, `size.of(len(fleet))` at a time. Deterministic: the same fleet
    always gets the same plan.
    """
    fleet = sorted(dict(clusters).items())
    if canary < 0:
        raise Rejected("invalid canary count", [Problem("canary", f"expected 0 or more, got {canary}")])
    labelled = [cid for cid, labels in fleet if (labels or {}).get(label[0]) == label[1]]
    first = labelled or [cid for cid, _ in fleet[:canary]]
    rest = [cid for cid, _ in fleet if cid not in first]
    waves = [{"name": "canary", "clusters": first}] if first else []
    step = size.of(len(fleet))
    for n, i in enumerate(range(0, len(rest), step), start=1):
        waves.append({"name": f"wave {n}", "clusters": rest[i:i + step]})
    return waves


def spec_for(doc: Mapping[str, Any] | None, cluster_id: str) -> dict[str, Any] | None:
    """The bundle options a cluster should run while `doc` (rollouts/current) is in force.

    None without a rollout (the policy's bundle applies). A finished rollout: its target; an
    aborted one: the last good bundle; a running or halted one: the target for the clusters it
    has updated (UPDATING, PASSED), the previous bundle for all others (not reached yet, rolled
    back, or new since it started).
    """
    if not doc:
        return None
    target, previous = doc.get("target"), doc.get("previous") or doc.get("target")
    state = doc.get("state")
    if state == COMPLETED:
        return dict(target or {})
    if state == ABORTED:
        return dict(previous or {})
    entry = (doc.get("clusters") or {}).get(cluster_id) or {}
    return dict((target if entry.get("state") in ON_TARGET else previous) or {})
