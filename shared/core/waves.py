"""Bundle rollouts in waves: the pure parts (wave plan, wave size, the bundle a cluster should run).

A new bundle (images or log level changed in the policy document or by a redeploy) reaches the
fleet in waves: first a canary wave (the clusters labelled `multus-provisioner-wave=canary`, or
the first N tracked clusters when none is), then waves of at most a number or a share of the
fleet. Each cluster of a wave must pass the health gate before the next wave starts; a failed
gate halts the rollout and rolls that cluster back (docs/WORKFLOW.md, "Bundle rollouts").
The rollout itself is the typed `shared.core.records.FleetRollout`; the state words here are
aliases of its `RolloutState` and `WaveClusterState` members.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.core.errors import Problem, Rejected
from shared.core.records import BundleOptions, FleetRollout, RolloutState, Wave, WaveClusterState

WAVE_LABEL = ("multus-provisioner-wave", "canary")

# Rollout states (`rollouts/current.state`): aliases of the `RolloutState` members.
RUNNING, HALTED, COMPLETED, ABORTED = (RolloutState.RUNNING, RolloutState.HALTED, RolloutState.COMPLETED,
                                       RolloutState.ABORTED)
# A cluster's state in the rollout (`rollouts/current.clusters.{id}.state`): `WaveClusterState`'s.
WAITING, UPDATING, PASSED, ROLLED_BACK, SKIPPED = (WaveClusterState.WAITING, WaveClusterState.UPDATING,
                                                   WaveClusterState.PASSED, WaveClusterState.ROLLED_BACK,
                                                   WaveClusterState.SKIPPED)
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
         label: tuple[str, str] = WAVE_LABEL) -> tuple[Wave, ...]:
    """The waves for `clusters` ((id, labels), any order), each a name and its cluster ids.

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
    waves = [Wave("canary", tuple(first))] if first else []
    step = size.of(len(fleet))
    for n, i in enumerate(range(0, len(rest), step), start=1):
        waves.append(Wave(f"wave {n}", tuple(rest[i:i + step])))
    return tuple(waves)


def spec_for(rollout: FleetRollout | None, cluster_id: str) -> BundleOptions | None:
    """The bundle options a cluster should run while `rollout` (rollouts/current) is in force.

    None without a rollout (the policy's bundle applies), or when the bundle it names is empty.
    A finished rollout: its target; an aborted one: the last good bundle; a running or halted
    one: the target for the clusters it has updated (UPDATING, PASSED), the previous bundle for
    all others (not reached yet, rolled back, or new since it started). A rollout without a
    previous bundle holds its target in its place.
    """
    if rollout is None:
        return None
    target = rollout.target
    previous = rollout.previous if rollout.previous.given else target
    if rollout.state == COMPLETED:
        chosen = target
    elif rollout.state == ABORTED:
        chosen = previous
    else:
        entry = rollout.clusters.get(cluster_id)
        chosen = target if entry is not None and entry.state in ON_TARGET else previous
    return chosen if chosen.given else None
