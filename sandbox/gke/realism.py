"""How much of GKE's ordinary-day behaviour the sandbox shows: all of it, or a calm world.

Real GKE does things nobody asked for (an operation of its own right after a cluster is created),
spreads regional node pools over three zones, and logs audit entries in shapes that differ from
the request's form. A controller must cope with all of it, so the sandbox does it by default;
tests that exercise something else entirely (and the controller paths not yet adapted) can ask
for `Realism.calm()`, which is the sandbox as it behaved before these were modelled.
Each behaviour and its source: docs/SANDBOX_GKE.md, section "An ordinary day".
"""

from __future__ import annotations

from dataclasses import dataclass

# Operation types GKE may run on its own after a cluster is created (container_v1.Operation.Type names).
OWN_OPERATION_TYPES = ("UPGRADE_NODES", "UPDATE_CLUSTER", "UPGRADE_MASTER")


@dataclass(frozen=True)
class Realism:
    """The switches; the default is GKE as it is, `calm()` the world without surprises.

    - `own_operation_seconds`: after CreateCluster completes, GKE runs an operation of its own for
      this long (0 = never); writes meanwhile are refused as "incompatible operation".
    - `own_operation_type`: its type (what ListOperations shows).
    - `regional_zones`: zones a regional cluster's node pools spread over (GKE: 3; calm: 1).
    - `audit_shapes`: audit entries in the captured real shapes (zones/ names, bare `last` entries,
      v1alpha1 types); off: the sandbox's older, uniform shape.
    - `audit_refusals`: a write refused at once logs a single ERROR entry, as GKE does.
    """

    own_operation_seconds: float = 3.0
    own_operation_type: str = "UPGRADE_NODES"
    regional_zones: int = 3
    audit_shapes: bool = True
    audit_refusals: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.own_operation_seconds, bool) or not isinstance(self.own_operation_seconds, int | float) \
                or not 0 <= self.own_operation_seconds <= 3600:
            raise ValueError(f"own_operation_seconds must be in 0..3600, got {self.own_operation_seconds!r}")
        if self.own_operation_type not in OWN_OPERATION_TYPES:
            raise ValueError(f"own_operation_type must be one of {', '.join(OWN_OPERATION_TYPES)}, "
                             f"got {self.own_operation_type!r}")
        if self.regional_zones not in (1, 2, 3):
            raise ValueError(f"regional_zones must be 1, 2 or 3, got {self.regional_zones!r}")

    @classmethod
    def calm(cls) -> Realism:
        """No operation of GKE's own, one zone per regional pool, the sandbox's older audit shape."""
        return cls(own_operation_seconds=0, regional_zones=1, audit_shapes=False, audit_refusals=False)

    @classmethod
    def named(cls, name: str) -> Realism:
        """`"realistic"` (the default) or `"calm"`: the scenario key and CLI flag spell it so."""
        if name == "realistic":
            return cls()
        if name == "calm":
            return cls.calm()
        raise ValueError(f"realism must be 'realistic' or 'calm', got {name!r}")

    @property
    def name(self) -> str:
        return "calm" if self == Realism.calm() else "realistic" if self == Realism() else "custom"
