"""The scheduled tick fans reconcile out on Pub/Sub: one scoped message per cluster.

One invocation walking every cluster does not scale (about half a second per READY cluster:
1,000 clusters take longer than a function's timeout, and a sweep that times out is replayed
whole). The tick instead does what only it can do cheaply — read the tracked clusters (one
query), list the clusters of the project and of every managed project (one GKE call each), drive
the bundle rollout one step — and publishes `{"cluster": PATH, "sweep": TICK}` for every cluster
that has work (READY ones for their drift check, stalled workflows, opted-in clusters nobody
tracks yet), in batches. Each message is then reconciled by its own invocation under its own
ledger key (`shared.flows.reconcile`, unchanged), so the sweep runs as wide as Pub/Sub and the
function's max instances allow. `sweep` marks the message as part of a tick: it never re-checks
INELIGIBLE / FAILED / IGNORED clusters (that is the user's scoped reconcile).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from shared.core import decisions, logs, prechecks
from shared.core.errors import Permanent, Rejected, Transient
from shared.core.prechecks import ClusterFacts
from shared.core.refs import ClusterRef
from shared.flows.context import Context, Outcome
from shared.flows.rollout import RolloutFlow
from shared.ports import ClusterRecord, PublisherPort

T = TypeVar("T")


class FanoutFlow:
    def __init__(self, ctx: Context, rollouts: RolloutFlow, publisher: Callable[[], PublisherPort]) -> None:
        self.ctx = ctx
        self.rollouts = rollouts
        self._make_publisher = publisher
        self._publisher: PublisherPort | None = None

    @property
    def publisher(self) -> PublisherPort:
        if self._publisher is None:
            self._publisher = self._make_publisher()
        return self._publisher

    def topic(self) -> str:
        topic = self.ctx.settings.reconcile_topic or ""
        return topic if topic.startswith("projects/") else f"projects/{self.ctx.settings.project}/topics/{topic}"

    def tick(self, ev: Any) -> Outcome:
        """List the fleet, drive the rollout a step, publish one scoped reconcile per cluster."""
        store, settings = self.ctx.store, self.ctx.settings
        if store.seen(ev.event_id):
            return Outcome("duplicate", "reconcile tick already fanned out")
        policy = self.ctx.policy(fresh=True)
        records = store.list_clusters()
        tracked = {r.ref.doc_id: r for r in records}
        labels: dict[str, dict[str, str]] = {}
        untracked: list[ClusterRef] = []
        rechecks: list[ClusterRef] = []  # decided clusters whose facts changed, or created again
        errors: list[str] = []
        projects = list(dict.fromkeys(p for p in (settings.project, *policy.managed_projects) if p))
        for project in projects:
            try:
                listed = self.ctx.gke.list_clusters(project)
            except (Transient, Permanent) as e:
                errors.append(f"list clusters of {project}: {e}")
                continue
            for facts in listed:
                ref = ClusterRef(project, facts.location, facts.name)
                labels[ref.doc_id] = dict(facts.labels)
                if ref.doc_id not in tracked:
                    if policy.opted_in(labels[ref.doc_id]):
                        untracked.append(ref)
                elif needs_recheck(tracked[ref.doc_id], facts):
                    rechecks.append(ref)
        try:
            rollout = self.rollouts.tick(ev.event_id, labels)
        except (Transient, Permanent, Rejected) as e:
            rollout = f"rollout step failed: {e}"
            errors.append(rollout)
        now = time.time()
        targets = [r.ref for r in records if wants_reconcile(r, now, settings.stall_seconds)] + untracked
        messages = [json.dumps({"cluster": ref.path, "sweep": ev.event_id}, sort_keys=True,
                               separators=(",", ":")).encode() for ref in targets]
        # A re-check is a scoped reconcile without `sweep`: it drives the decided cluster again.
        messages += [json.dumps({"cluster": ref.path}, sort_keys=True, separators=(",", ":")).encode()
                     for ref in rechecks]
        messages, dropped = bounded(messages, settings.reconcile_fanout_limit, ev.event_id)
        if dropped:
            errors.append(f"{dropped} scoped reconcile(s) left for a later tick (limit "
                          f"{settings.reconcile_fanout_limit} per tick)")
        self.publisher.publish(self.topic(), messages)  # Transient: the tick is redelivered whole
        store.record_ledger(ev.event_id, event_id=ev.event_id, step="reconcile-fanout", outcome="ok", cluster=None)
        message = (f"reconcile tick: {len(records)} tracked, {len(untracked)} to adopt, {len(rechecks)} to "
                   f"re-check in {len(projects)} "
                   f"project(s); published {len(messages)} scoped reconcile(s); {rollout}")
        if errors:
            logs.warning("reconcile tick could not list everything", eventId=ev.event_id, error=errors[:10])
        return Outcome("done", message, None, None, {"published": len(messages), "rollout": rollout,
                                                     "errors": errors})


def bounded(items: list[T], limit: int, event_id: str) -> tuple[list[T], int]:
    """At most `limit` of `items` (and how many were left out). An empty reconcile message is
    anyone-with-publish's way to make the controller touch the whole fleet, so one tick does a
    bounded amount of work; the window starts at a place the tick's id picks, so successive ticks
    cover a fleet larger than the limit instead of always the same first clusters."""
    if len(items) <= limit:
        return items, 0
    import hashlib

    start = int(hashlib.sha256(event_id.encode()).hexdigest()[:8], 16) % len(items)
    rotated = items[start:] + items[:start]
    return rotated[:limit], len(items) - limit


def needs_recheck(rec: ClusterRecord, facts: ClusterFacts) -> bool:
    """A tracked cluster the tick should drive again: IGNORED / INELIGIBLE whose labels or facts
    changed since they were decided (an audit entry lost), or one GKE shows created again under
    its name (a DELETED workflow, or another cluster id than recorded)."""
    from shared.flows.cluster import new_incarnation

    decided = rec.state in (decisions.IGNORED, decisions.INELIGIBLE)
    if decided and prechecks.facts_digest(facts) != rec.workflow.facts_digest:
        return True
    return rec.state not in decisions.RESUMABLE and new_incarnation(rec, facts)


def wants_reconcile(rec: Any, now: float, stall_seconds: int) -> bool:
    """Whether a tracked cluster has work for a sweep: READY (drift check) or a stalled workflow."""
    if rec.state == decisions.READY:
        return True
    if rec.state not in decisions.RESUMABLE:
        return False  # INELIGIBLE / FAILED / IGNORED wait for the user's re-check; DELETED is closed
    updated = rec.updated_at
    return updated is None or now - updated.timestamp() >= stall_seconds
