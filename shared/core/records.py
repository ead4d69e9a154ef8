"""The words of the workflow state, as types: cluster states, NAD states, step outcomes.

They are `StrEnum`s, so a member is the very word people read in the Firestore console and in
`status` (`ClusterState.READY == "READY"`, `f"{ClusterState.READY}"` is `READY`) and documents
keep their shape; but a typo in code (`ClusterState.REDAY`) is caught by the type checker, and
a function that takes a `ClusterState` cannot be handed a NAD state. `shared.core.decisions`
keeps its module constants (`decisions.READY`) as aliases of these members.
"""

from __future__ import annotations

from enum import StrEnum


class ClusterState(StrEnum):
    """Where a cluster's workflow is (docs/WORKFLOW.md)."""

    DISCOVERED = "DISCOVERED"  # known; waiting for the cluster to finish provisioning
    IGNORED = "IGNORED"  # not opted in: left alone
    INELIGIBLE = "INELIGIBLE"  # prechecks failed: findings say what to fix
    AWAITING_NODE_POOL = "AWAITING_NODE_POOL"  # eligible; needs a pool with additional networks
    CREATING_NODE_POOL = "CREATING_NODE_POOL"  # the controller asked GKE for one
    INSTALLING = "INSTALLING"  # applying the Multus + Whereabouts bundle
    READY = "READY"  # bundle installed, CRDs Established
    FAILED = "FAILED"  # a permanent error; lastError says why
    DELETED = "DELETED"  # the cluster is gone; nothing is applied to it again


class NadState(StrEnum):
    """Where a NAD record is (docs/FIRESTORE.md `clusters/{id}/nads`)."""

    PENDING = "PENDING"  # the cluster is not READY yet
    APPLYING = "APPLYING"  # claimed by a worker: range reserved, being applied to the cluster
    APPLIED = "APPLIED"
    VERIFIED = "VERIFIED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    DELETED = "DELETED"
    DELETING = "DELETING"  # claimed by a worker that is deleting it from the cluster
    ORPHANED = "ORPHANED"  # found on the cluster with our label and no record; conflicts, so not adopted


class StepOutcome(StrEnum):
    """How a step ended, in its history entry and ledger entry."""

    OK = "ok"
    RETRY = "retry"
    FAILED = "failed"
    REJECTED = "rejected"
    IGNORED = "ignored"
    SKIPPED = "skipped"
    WARNING = "warning"
