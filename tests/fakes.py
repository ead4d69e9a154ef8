"""In-memory fakes of the ports, for flow tests that need no emulator.

`FakeStore` implements `shared.ports.StorePort` over plain dicts, with the real store's
semantics: leases, the ledger, history entries with deterministic ids, NAD compare-and-set with
typed changes (`NadRecord`, through the store's own `NAD_FIELDS`), rejections, the rollout
record (`FleetRollout`, through `ROLLOUT_FIELDS`) and its update-time precondition. It is held
honest by `tests/test_store_contract.py`, whose tests run unchanged against this fake and against
`shared.adapters.store.Store` on Google's Firestore emulator; a behaviour the fake gets wrong
fails there, next to the real store passing the same test.

The field rules (names, fields the store owns, identity) and the document ids are the real
store's own helpers, imported, so the two cannot disagree on them.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.adapters.store import (
    DELETE,
    EXCERPT_MAX,
    NAD_BY_NAME,
    _apply,
    _check_fields,
    _check_outcome,
    _decode_token,
    _encode_token,
    history_doc,
    lease_doc,
    lease_of,
    ledger_entry_of,
    ledger_note_doc,
    nad_changes,
    nad_fields_of,
    nad_of,
    nad_view,
    projected,
    record_of,
    rollout_changes,
    rollout_doc,
    rollout_of,
    safe_id,
    workflow_changes,
)
from shared.core.endpoints import Endpoint
from shared.core.errors import Problem, Rejected, RejectionKind, Transient, UnknownCluster
from shared.core.nad import managed, refuse_foreign
from shared.core.names import is_dns_label, is_object_name
from shared.core.observed import PoolFailure
from shared.core.prechecks import ClusterFacts
from shared.core.records import FleetRollout, HistoryEntry, LedgerEntry, LedgerNote, NadRecord, NadState, WorkflowUpdate
from shared.core.refs import ClusterRef
from shared.core.settings import NodePoolTemplate, Settings
from shared.ports import AlreadyHandled, ClusterRecord, Lease, NadVersion


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def _clean(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not DELETE}


class FakeStore:
    """`StorePort` in memory. One lock serialises every call, as Firestore's commit would."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings(project="fake-project")
        self._lock = threading.RLock()
        self.clusters: dict[str, dict[str, Any]] = {}
        self.nads: dict[str, dict[str, dict[str, Any]]] = {}
        self.history_entries: dict[str, dict[str, dict[str, Any]]] = {}
        self.rejections: dict[str | None, dict[str, dict[str, Any]]] = {}
        self.ledger: dict[str, dict[str, Any]] = {}
        self.policy: dict[str, Any] | None = None
        self.rollout: dict[str, Any] | None = None
        self._rollout_version = 0
        self._nad_versions: dict[tuple[str, str], int] = {}
        self._last_at = datetime.fromtimestamp(0, UTC)

    # -- helpers
    def _at(self) -> datetime:
        """A commit time: strictly increasing, as Firestore's server timestamps of later commits are."""
        now = datetime.now(UTC)
        if now <= self._last_at:
            now = self._last_at + timedelta(microseconds=1)
        self._last_at = now
        return now

    @staticmethod
    def _unknown(ref: ClusterRef, event_id: str) -> UnknownCluster:
        return UnknownCluster(f"cluster {ref.path} is not tracked by the controller",
                              [Problem("cluster", "no workflow document; only a creation event starts one")],
                              event_id=event_id, cluster=ref)

    @staticmethod
    def _busy(ref: ClusterRef, lease: Lease) -> Transient:
        return Transient(f"cluster {ref.path} is busy: event {lease.holder} holds step {lease.step!r} "
                         f"until {lease.expires_at.isoformat()}", code="LEASE_HELD", api="firestore")

    @staticmethod
    def _check_ref(ref: ClusterRef) -> None:
        if not isinstance(ref, ClusterRef):
            raise TypeError(f"expected a ClusterRef, got {type(ref).__name__}")

    @staticmethod
    def _check_nad(ref: ClusterRef, namespace: str, name: str) -> None:
        problems = []
        if not is_dns_label(namespace):
            problems.append(Problem("namespace", f"{namespace!r} is not a valid Kubernetes namespace name"))
        if not is_object_name(name):
            problems.append(Problem("name", f"{name!r} is not a valid Kubernetes object name"))
        if problems:
            raise Rejected("invalid NAD reference", problems, cluster=ref)

    def _record(self, ref: ClusterRef, data: Mapping[str, Any]) -> ClusterRecord:
        return record_of(ref, copy.deepcopy(dict(data)))

    def _history(self, ref: ClusterRef, doc_id: str, entry: HistoryEntry) -> None:
        self.history_entries.setdefault(ref.doc_id, {})[doc_id] = {**history_doc(entry), "at": self._at(),
                                                                   "seq": time.time_ns()}

    def _ledger_entry(self, *, event_id: str, step: str, outcome: str, cluster: ClusterRef | None,
                      now: datetime) -> dict[str, Any]:
        return {"eventId": event_id, "cluster": cluster.path if cluster else None, "step": step,
                "outcome": outcome, "at": self._at(),
                "expireAt": now + timedelta(days=self.settings.ledger_ttl_days)}

    @staticmethod
    def _identity(ref: ClusterRef) -> dict[str, Any]:
        return {"project": ref.project, "location": ref.location, "cluster": ref.cluster, "path": ref.path}

    # -- clusters
    def get_cluster(self, ref: ClusterRef) -> ClusterRecord | None:
        self._check_ref(ref)
        with self._lock:
            data = self.clusters.get(ref.doc_id)
            return self._record(ref, data) if data is not None else None

    def get_cluster_and_nad_unless_seen(self, ref: ClusterRef, ledger_key: str, namespace: str,
                                        name: str) -> tuple[ClusterRecord | None, bool, NadVersion]:
        """As the real store: the record, the ledger's answer and the NAD with its version, in one look."""
        self._check_nad(ref, namespace, name)
        with self._lock:
            if ledger_key in self.ledger:
                return None, True, NadVersion(None, None)
            data = self.clusters.get(ref.doc_id)
            rec = self._record(ref, data) if data is not None else None
            key = f"{namespace}~{name}"
            doc = self.nads.get(ref.doc_id, {}).get(key)
            version = (NadVersion(nad_of(namespace, name, nad_view(copy.deepcopy(doc))),
                                  self._nad_versions.get((ref.doc_id, key)))
                       if doc is not None else NadVersion(None, None))
            return rec, False, version

    def get_cluster_unless_seen(self, ref: ClusterRef, ledger_key: str) -> tuple[ClusterRecord | None, bool]:
        with self._lock:
            if ledger_key in self.ledger:
                return None, True
            return self.get_cluster(ref), False

    def claim(self, ref: ClusterRef, *, event_id: str, step: str, ledger_key: str | None = None,
              create_state: str | None = None, create_fields: dict[str, Any] | None = None,
              lease_seconds: int | None = None, holder: str | None = None) -> ClusterRecord:
        self._check_ref(ref)
        identity = self._identity(ref)
        extra = _check_fields(create_fields, identity, "create")
        seconds = self.settings.lease_seconds if lease_seconds is None else lease_seconds
        with self._lock:
            if ledger_key and ledger_key in self.ledger:
                raise AlreadyHandled(ledger_key)
            now = datetime.now(UTC)
            lease = Lease(holder or event_id, step, now + timedelta(seconds=seconds))
            data = self.clusters.get(ref.doc_id)
            if data is None:
                if create_state is None:
                    raise self._unknown(ref, event_id)
                new = {**identity, **extra, "state": create_state, "stateSince": now, "createdAt": now,
                       "updatedAt": now, "lease": lease_doc(lease), "lastError": None, "attempts": 0}
                self.clusters[ref.doc_id] = _clean(new)
                return self._record(ref, self.clusters[ref.doc_id])
            held = lease_of(data.get("lease"))
            if held is not None and held.holder != (holder or event_id) and held.live(now):
                raise self._busy(ref, held)
            self.clusters[ref.doc_id] = _apply(data, {"lease": lease_doc(lease), "updatedAt": now})
            return self._record(ref, self.clusters[ref.doc_id])

    def advance(self, ref: ClusterRef, *, event_id: str, step: str, outcome: str = "ok", message: str = "",
                state: str | None = None, fields: dict[str, Any] | None = None, next_step: str | None = None,
                ledger_key: str | None = None, release: bool = False,
                holder: str | None = None, update: WorkflowUpdate | None = None) -> ClusterRecord:
        _check_outcome(outcome)
        self._check_ref(ref)
        extra = {**_check_fields(fields, self._identity(ref), "advance"), **workflow_changes(update)}
        with self._lock:
            if ledger_key and ledger_key in self.ledger:
                raise AlreadyHandled(ledger_key)
            data = self.clusters.get(ref.doc_id)
            if data is None:
                raise self._unknown(ref, event_id)
            now = datetime.now(UTC)
            held = lease_of(data.get("lease"))
            if held is not None and held.holder != (holder or event_id) and held.live(now):
                raise self._busy(ref, held)
            changes: dict[str, Any] = {**extra, "updatedAt": now}
            before = data.get("state")
            if state is not None and state != before:
                changes["state"] = state
                changes["stateSince"] = now
            if release:
                changes["lease"] = None
            elif next_step is not None:
                changes["lease"] = lease_doc(Lease(holder or event_id, next_step,
                                         now + timedelta(seconds=self.settings.lease_seconds)))
            new = _apply(data, changes)
            self.clusters[ref.doc_id] = new
            self._history(ref, f"{safe_id(event_id)}~{safe_id(step)}", HistoryEntry(
                event_id, step, outcome, message, new.get("state"), previous_state=before))
            if ledger_key:
                self.ledger[ledger_key] = self._ledger_entry(event_id=event_id, step=step, outcome=outcome,
                                                             cluster=ref, now=now)
            return self._record(ref, new)

    def hold(self, ref: ClusterRef, *, holder: str, step: str, seconds: int | None = None) -> None:
        self._check_ref(ref)
        lease_seconds = self.settings.lease_seconds if seconds is None else seconds
        with self._lock:
            data = self.clusters.get(ref.doc_id)
            if data is None:
                raise self._unknown(ref, holder)
            now = datetime.now(UTC)
            held = lease_of(data.get("lease"))
            if held is not None and held.holder != holder and held.live(now):
                raise self._busy(ref, held)
            if lease_seconds <= 0:
                if held is not None and held.holder == holder:
                    self.clusters[ref.doc_id] = _apply(data, {"lease": None})
                return
            lease = Lease(holder, step, now + timedelta(seconds=lease_seconds))
            self.clusters[ref.doc_id] = _apply(data, {"lease": lease_doc(lease)})

    def release(self, ref: ClusterRef, *, event_id: str, step: str, error: str, outcome: str = "retry",
                state: str | None = None, count_attempt: bool = True,
                holder: str | None = None, fields: Mapping[str, Any] | None = None,
                update: WorkflowUpdate | None = None) -> ClusterRecord:
        if outcome not in ("retry", "failed"):
            raise ValueError(f"outcome: expected 'retry' or 'failed', got {outcome!r}")
        self._check_ref(ref)
        with self._lock:
            data = self.clusters.get(ref.doc_id)
            if data is None:
                raise self._unknown(ref, event_id)
            now = datetime.now(UTC)
            attempts = int(data.get("attempts") or 0) + (1 if count_attempt else 0)
            releases = int(data.get("releases") or 0) + 1
            changes: dict[str, Any] = {
                "lastError": {"message": str(error)[:4000], "step": step, "eventId": event_id, "at": now},
                "attempts": attempts, "releases": releases, "updatedAt": now, **dict(fields or {}),
                **workflow_changes(update)}
            held = lease_of(data.get("lease"))
            if held is not None and held.holder == (holder or event_id):
                changes["lease"] = None
            before = data.get("state")
            if state is not None and state != before:
                changes["state"] = state
                changes["stateSince"] = now
            new = _apply(data, changes)
            self.clusters[ref.doc_id] = new
            self._history(ref, f"{safe_id(event_id)}~{safe_id(step)}~{outcome}{releases}", HistoryEntry(
                event_id, step, outcome, error, new.get("state"), previous_state=before, attempt=attempts))
            return self._record(ref, new)

    def list_clusters(self, state: str | None = None, *, limit: int | None = None) -> list[ClusterRecord]:
        with self._lock:
            out = []
            for doc_id, data in sorted(self.clusters.items()):
                if state is not None and data.get("state") != state:
                    continue
                out.append(self._record(ClusterRef.from_doc_id(doc_id), data))
            return out[:limit] if limit is not None else out

    # -- the ledger
    def seen(self, ledger_key: str) -> bool:
        with self._lock:
            return ledger_key in self.ledger

    def get_ledger(self, ledger_key: str) -> LedgerEntry | None:
        with self._lock:
            entry = self.ledger.get(ledger_key)
            return ledger_entry_of(entry) if entry is not None else None

    def record_ledger(self, ledger_key: str, *, event_id: str, step: str, outcome: str,
                      cluster: ClusterRef | None, note: LedgerNote | None = None) -> bool:
        _check_outcome(outcome)
        with self._lock:
            if ledger_key in self.ledger:
                return False
            self.ledger[ledger_key] = {**self._ledger_entry(event_id=event_id, step=step, outcome=outcome,
                                                            cluster=cluster, now=datetime.now(UTC)),
                                       **ledger_note_doc(note)}
            return True

    # -- NADs
    def get_nad(self, ref: ClusterRef, namespace: str, name: str) -> NadRecord | None:
        self._check_nad(ref, namespace, name)
        with self._lock:
            doc = self.nads.get(ref.doc_id, {}).get(f"{namespace}~{name}")
            return nad_of(namespace, name, nad_view(copy.deepcopy(doc))) if doc is not None else None

    def put_nad(self, ref: ClusterRef, namespace: str, name: str, *, event_id: str, step: str,
                change: Callable[[NadRecord], NadRecord], outcome: str = "ok", ledger_key: str | None = None,
                expect_states: tuple[str | None, ...] | None = None,
                expect: Callable[[NadRecord], bool] | None = None, history: bool = True,
                write_ledger: bool = True, ledger_note: LedgerNote | None = None,
                known: NadVersion | None = None) -> bool:
        return self.put_nad_version(
            ref, namespace, name, event_id=event_id, step=step, change=change, outcome=outcome,
            ledger_key=ledger_key, expect_states=expect_states, expect=expect, history=history,
            write_ledger=write_ledger, ledger_note=ledger_note, known=known) is not None

    def put_nad_version(self, ref: ClusterRef, namespace: str, name: str, *, event_id: str, step: str,
                        change: Callable[[NadRecord], NadRecord], outcome: str = "ok",
                        ledger_key: str | None = None, expect_states: tuple[str | None, ...] | None = None,
                        expect: Callable[[NadRecord], bool] | None = None, history: bool = True,
                        write_ledger: bool = True, ledger_note: LedgerNote | None = None,
                        known: NadVersion | None = None) -> NadVersion | None:
        """As the real store. `known` (the version the caller read) needs no check here: every write
        is decided under the lock on the current document, which is what the real store does when
        a write in between failed its precondition."""
        del known
        _check_outcome(outcome)
        self._check_ref(ref)
        self._check_nad(ref, namespace, name)
        identity = {"namespace": namespace, "name": name, "clusterPath": ref.path}
        with self._lock:
            if ledger_key and ledger_key in self.ledger:
                return None
            docs = self.nads.setdefault(ref.doc_id, {})
            key = f"{namespace}~{name}"
            stored = docs.get(key)
            current = (nad_of(namespace, name, nad_view(copy.deepcopy(stored))) if stored is not None
                       else NadRecord(namespace, name))
            before = current.state if stored is not None else None
            if expect_states is not None and before not in expect_states:
                return None
            if expect is not None and not expect(current):
                return None
            after = change(current)
            now = datetime.now(UTC)
            changes: dict[str, Any] = {**nad_changes(current, after), "updatedAt": now}
            if after.state != before:
                changes["stateSince"] = now
            if stored is not None:
                docs[key] = _apply(stored, copy.deepcopy(changes))
            else:
                docs[key] = {**identity, **_clean(copy.deepcopy(changes)), "createdAt": now}
            if history:
                last = after.last_request
                self._history(ref, f"{safe_id(event_id)}~{safe_id(step)}~{namespace}~{name}", HistoryEntry(
                    event_id, step, outcome, after.message, after.state, previous_state=before,
                    nad=f"{namespace}/{name}",
                    requester=last.requester if last is not None and last != current.last_request else None))
            if ledger_key and write_ledger:
                self.ledger[ledger_key] = {**self._ledger_entry(event_id=event_id, step=step, outcome=outcome,
                                                                cluster=ref, now=now), **ledger_note_doc(ledger_note)}
            version = self._nad_versions.get((ref.doc_id, key), 0) + 1
            self._nad_versions[(ref.doc_id, key)] = version
            return NadVersion(nad_of(namespace, name, nad_view(copy.deepcopy(docs[key]))), version)

    def list_nads(self, ref: ClusterRef, state: str | None = None, *,
                  fields: tuple[str, ...] | None = None) -> list[NadRecord]:
        with self._lock:
            out = []
            wanted = nad_fields_of(fields) if fields else None
            for key, doc in self.nads.get(ref.doc_id, {}).items():
                if state is not None and doc.get("state") != state:
                    continue
                data = nad_view(copy.deepcopy(projected(doc, wanted) if wanted else doc))
                namespace, _, name = key.partition("~")
                out.append(nad_of(namespace, name, data))
            return sorted(out, key=lambda r: (r.namespace, r.name))

    # -- history
    def history(self, ref: ClusterRef, *, page_size: int = 50,
                page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise Rejected("invalid page size", [Problem("page_size", f"expected 1..1000, got {page_size!r}")])
        with self._lock:
            entries = sorted(({**e, "id": i} for i, e in self.history_entries.get(ref.doc_id, {}).items()),
                             key=lambda e: (e["at"], e["id"]))
        if page_token:
            at, doc_id = _decode_token(page_token)
            entries = [e for e in entries if (e["at"], e["id"]) > (at, doc_id)]
        page, more = entries[:page_size], len(entries) > page_size
        token = _encode_token(page[-1]["at"], page[-1]["id"]) if more and page else None
        return copy.deepcopy(page), token

    # -- rejections
    def record_rejection(self, *, event_id: str, cluster: ClusterRef | None, reason: str,
                         problems: Sequence[Problem | Mapping[str, Any]], kind: RejectionKind, excerpt: str = "",
                         ledger_key: str | None = None) -> bool:
        items = [_plain(p) for p in problems]
        text = excerpt if isinstance(excerpt, str) else repr(excerpt)
        with self._lock:
            docs = self.rejections.setdefault(cluster.doc_id if cluster else None, {})
            if event_id in docs or (ledger_key and ledger_key in self.ledger):
                return False
            now = datetime.now(UTC)
            docs[event_id] = {"eventId": event_id, "cluster": cluster.path if cluster else None,
                              "reason": str(reason), "kind": str(kind), "problems": items,
                              "excerpt": text[:EXCERPT_MAX], "at": self._at()}
            if cluster is not None:
                summary = str(reason) + (": " + "; ".join(
                    f"{p.get('field')}: {p.get('message')}" if isinstance(p, Mapping) and p.get("field")
                    else str(p.get("message", p)) if isinstance(p, Mapping) else str(p)
                    for p in items) if items else "")
                self._history(cluster, f"{safe_id(event_id)}~rejected", HistoryEntry(
                    event_id, "reject", "rejected", summary, None, kind=str(kind)))
            if ledger_key:
                self.ledger[ledger_key] = self._ledger_entry(event_id=event_id, step="reject", outcome="rejected",
                                                             cluster=cluster, now=now)
            return True

    def list_rejections(self, ref: ClusterRef | None = None, *, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            docs = self.rejections.get(ref.doc_id if ref is not None else None, {})
            out = [{**d, "id": safe_id(i)} for i, d in docs.items()]
        return copy.deepcopy(sorted(out, key=lambda d: d["at"], reverse=True)[:limit])

    # -- policy, rollouts, housekeeping
    def get_policy(self) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self.policy)

    def set_policy(self, doc: Mapping[str, Any] | None) -> None:
        """Tests: what people or Terraform write to `config/policy`."""
        with self._lock:
            self.policy = dict(doc) if doc is not None else None

    def get_rollout(self) -> tuple[FleetRollout | None, Any]:
        with self._lock:
            if self.rollout is None:
                return None, None
            return rollout_of(copy.deepcopy(self.rollout)), self._rollout_version

    def put_rollout(self, rollout: FleetRollout, update_time: Any) -> Any:
        """The record through the store's own table (`rollout_doc`, `rollout_changes`), over the
        version read: create when there was none, else update (fields not in the table stay)."""
        with self._lock:
            current = self._rollout_version if self.rollout is not None else None
            if update_time != current:
                raise Transient("rollouts/current changed while it was being updated; read it again",
                                code="ABORTED", api="firestore")
            if self.rollout is None:
                self.rollout = rollout_doc(rollout)
            else:
                self.rollout = _apply(self.rollout, rollout_changes(rollout))
            self._rollout_version += 1
            return self._rollout_version

    def delete_cluster_tree(self, ref: ClusterRef) -> None:
        with self._lock:
            for table in (self.clusters, self.nads, self.history_entries, self.rejections):
                table.pop(ref.doc_id, None)



class FakeGke:
    """`GkePort` over a dict of `ClusterFacts` (the pure values the port returns; a test may add a
    `container_v1.Cluster`, decoded as the real adapter decodes GKE's answer).

    `errors[method]` is raised by the next call of that method (then forgotten), so a test can make
    GKE answer NOT_FOUND, busy or unavailable once. Held to the real adapter on the sandbox GKE
    server by tests/test_gke_contract.py.
    """

    def __init__(self) -> None:
        self.clusters: dict[str, ClusterFacts] = {}
        self.ranges: dict[tuple[str, str], str] = {}
        self.errors: dict[str, Exception] = {}
        self.calls: list[str] = []
        self.pools_created: list[tuple[str, str]] = []

    def _call(self, method: str) -> None:
        self.calls.append(method)
        err = self.errors.pop(method, None)
        if err is not None:
            raise err

    def add(self, ref: ClusterRef, cluster: Any) -> None:
        """`cluster`: `ClusterFacts`, or a `container_v1.Cluster` decoded by the adapter's decoder."""
        from shared.adapters.gke import decode_cluster

        self.clusters[ref.path] = cluster if isinstance(cluster, ClusterFacts) else decode_cluster(cluster)

    def get_cluster(self, ref: ClusterRef) -> ClusterFacts:
        from shared.core.errors import NotFound

        self._call("get_cluster")
        if ref.path not in self.clusters:
            raise NotFound(f"GKE get cluster {ref.path}: NOT_FOUND", code="NOT_FOUND", api="gke")
        return self.clusters[ref.path]

    def list_clusters(self, project: str, location: str = "-") -> list[ClusterFacts]:
        self._call("list_clusters")
        return [c for path, c in sorted(self.clusters.items()) if path.startswith(f"projects/{project}/")]

    def secondary_range_cidr(self, ref: ClusterRef, subnetwork: str, range_name: str) -> str:
        from shared.core.errors import Permanent

        self._call("secondary_range_cidr")
        cidr = self.ranges.get((subnetwork.rsplit("/", 1)[-1], range_name))
        if cidr is None:
            raise Permanent(f"GKE: subnetwork {subnetwork} has no secondary range {range_name!r}",
                            code="NOT_FOUND", api="gke")
        return cidr

    def _pools(self, ref: ClusterRef) -> set[str]:
        cluster = self.clusters.get(ref.path)
        listed = {p.name for p in cluster.node_pools} if cluster is not None else set()
        return listed | {name for path, name in self.pools_created if path == ref.path}

    def create_node_pool(self, ref: ClusterRef, template: NodePoolTemplate) -> str | None:
        """An operation name; None when the pool exists already (GKE's ALREADY_EXISTS is success)."""
        from shared.core.errors import Permanent

        self._call("create_node_pool")
        problems = template.problems()
        if problems:
            raise Rejected("invalid node pool template", problems)
        cluster = self.get_cluster(ref)
        if template.name in self._pools(ref):
            return None
        if template.network and not cluster.multi_networking:
            raise Permanent(f"GKE create node pool {ref.path}/nodePools/{template.name}: INVALID_ARGUMENT: "
                            "node_pool.network_config: additional networks need a cluster with multi-networking "
                            "enabled.", code="INVALID_ARGUMENT", api="gke")
        self.pools_created.append((ref.path, template.name))
        return f"operation-create-{template.name}"

    def delete_node_pool(self, ref: ClusterRef, name: str) -> str | None:
        """An operation name; None when the pool is gone already."""
        self._call("delete_node_pool")
        if name not in self._pools(ref):
            return None
        self.pools_created = [(p, n) for p, n in self.pools_created if (p, n) != (ref.path, name)]
        cluster = self.clusters.get(ref.path)
        if cluster is not None:
            self.clusters[ref.path] = replace(cluster, node_pools=tuple(p for p in cluster.node_pools
                                                                         if p.name != name))
        return f"operation-delete-{name}"

    def seed(self, scenario_path: Any) -> None:
        """The clusters (created at start) and subnetwork ranges of a sandbox scenario file, so the
        fake starts from the same world as the sandbox GKE server."""
        from google.cloud import container_v1

        from sandbox.gke.scenario import load

        world = load(scenario_path)
        for sub in world.subnetworks:
            for range_name, cidr in sub.secondary_ranges.items():
                self.ranges[(sub.subnetwork, range_name)] = cidr
        for spec in world.clusters:
            if not spec.create_at_start:
                continue
            ref = ClusterRef.of(world.project, spec.location, spec.name)
            self.add(ref, container_v1.Cluster(
                name=spec.name, location=spec.location, status=container_v1.Cluster.Status.RUNNING,
                resource_labels=dict(spec.labels),
                network_config=container_v1.NetworkConfig(enable_multi_networking=spec.multi_networking),
                node_pools=[container_v1.NodePool(name=p.name) for p in spec.node_pools]))

    def operation_failure(self, ref: ClusterRef, operation: str) -> PoolFailure | None:
        self._call("operation_failure")
        return None

    def endpoint(self, cluster: ClusterFacts) -> Endpoint:
        return Endpoint("public-ip", cluster.endpoint or "127.0.0.1", None, "the fake's public endpoint")

    def api_client(self, cluster: ClusterFacts) -> object:
        return None


class FakeKube:
    """`ClusterApiPort` over a dict of objects keyed (apiVersion, kind, namespace, name); every CRD is
    Established at once and the DaemonSet rolled out. Held to the real adapter on the sandbox
    Kubernetes API server by tests/test_kube_contract.py."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.requests = 0
        self._version = 0

    def _key(self, obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
        from shared.core.multus import object_key

        return object_key(obj)

    def _put(self, obj: Mapping[str, Any]) -> Any:
        from shared.adapters.kube import ApplyResult, _content

        if not isinstance(obj, Mapping) or not isinstance(obj.get("apiVersion"), str) \
                or not isinstance(obj.get("kind"), str):
            raise Rejected("invalid Kubernetes object", [Problem("apiVersion", "apiVersion and kind must be strings")])
        self.requests += 1
        key = self._key(obj)
        before = self.objects.get(key)
        stored = copy.deepcopy(dict(obj))
        if before is not None and _content(before) == _content(stored):
            return ApplyResult(key, False, str(before["metadata"]["resourceVersion"]))
        self._version += 1
        stored.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        if stored.get("kind") == "DaemonSet":  # rolled out at once, as `daemonset_rollout` says
            generation = int((before or {}).get("metadata", {}).get("generation") or 0) + 1
            stored["metadata"]["generation"] = generation
            stored["status"] = {"desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberReady": 3,
                                "numberAvailable": 3, "observedGeneration": generation}
        self.objects[key] = stored
        return ApplyResult(key, True, str(self._version))

    def apply(self, objects: Any) -> list[Any]:
        return [self._put(o) for o in objects]

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.requests += 1
        return copy.deepcopy(self.objects.get((api_version, kind, namespace or "", name)))

    def rollout_of(self, ds: Mapping[str, Any]) -> Any:
        from shared.adapters.kube import Kube

        return Kube.rollout_of(ds)

    def wait_established(self, crd_names: Any, *, timeout: float = 60.0, poll: float = 1.0) -> int:
        self.requests += 1
        return 1

    def daemonset_rollout(self, namespace: str, name: str) -> Any:
        from shared.adapters.kube import Rollout

        self.requests += 1
        return Rollout(desired=3, updated=3, ready=3, available=3, observed=True)

    def apply_nad(self, obj: Mapping[str, Any], *, listed: Any = None) -> Any:
        from shared.core.nad import API_VERSION, CLUSTER_ANNOTATION, KIND

        if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
            raise Rejected("not a NetworkAttachmentDefinition",
                           [Problem("kind", f"expected {API_VERSION} {KIND}, got "
                                            f"{obj.get('apiVersion')!r} {obj.get('kind')!r}")])
        md = obj.get("metadata") or {}
        cluster = (md.get("annotations") or {}).get(CLUSTER_ANNOTATION)
        if listed is None:
            self._owned(md.get("namespace") or "default", md.get("name"), cluster)
        else:
            refuse_foreign(listed.live, cluster)
        return self._put(obj)

    def delete_nad(self, namespace: str, name: str, *, cluster: str | None = None) -> bool:
        if self._owned(namespace, name, cluster) is None:
            return False
        self.requests += 1
        return self.objects.pop(("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", namespace, name),
                                None) is not None

    def _owned(self, namespace: str, name: str, cluster: str | None) -> dict[str, Any] | None:
        """The real adapter's ownership check (`nad.foreign_nad`), with its GET."""
        live = self.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", namespace, name)
        refuse_foreign(live, cluster)
        return live

    def list_nads(self) -> list[dict[str, Any]]:
        self.requests += 1
        return [copy.deepcopy(o) for k, o in sorted(self.objects.items()) if k[1] == "NetworkAttachmentDefinition"]

    def list_managed_nads(self) -> list[dict[str, Any]]:
        self.requests += 1
        return [copy.deepcopy(o) for k, o in sorted(self.objects.items()) if k[1] == "NetworkAttachmentDefinition"
                and managed(o)]

    def list_ippools(self) -> list[dict[str, Any]]:
        self.requests += 1
        return []

    def list_pod_refs(self) -> list[str]:
        self.requests += 1
        return []

    def list_pods(self, label_selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
        self.requests += 1
        return []

    def create_pod(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Stored as given: the fake runs no kubelet, so a pod gets no network status."""
        self.requests += 1
        md = obj.get("metadata") or {}
        key = ("v1", "Pod", str(md.get("namespace") or "default"), str(md.get("name") or ""))
        self._version += 1
        stored = copy.deepcopy(dict(obj))
        stored.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("v1", "Pod", namespace, name)

    def delete_pod(self, namespace: str, name: str) -> bool:
        self.requests += 1
        return self.objects.pop(("v1", "Pod", namespace, name), None) is not None

    def pod_network_status(self, namespace: str, name: str) -> list[dict[str, Any]] | None:
        self.requests += 1
        return None

    def pod_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        self.requests += 1
        return []

    # Last: a method named `list` would shadow the builtin in the annotations after it.
    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (in `namespace` when given), one request, as the adapter's LIST."""
        self.requests += 1
        return [copy.deepcopy(o) for k, o in sorted(self.objects.items())
                if k[0] == api_version and k[1] == kind and (namespace is None or k[2] == namespace)]

    def nads(self) -> dict[str, dict[str, Any]]:
        """Tests: the NADs on the cluster by `namespace/name`."""
        return {f"{k[2]}/{k[3]}": o for k, o in self.objects.items() if k[1] == "NetworkAttachmentDefinition"}


class FakePublisher:
    """`PublisherPort` over a dict of topics. Held to the real adapter (`shared.adapters.pubsub.Publisher`)
    on the Pub/Sub emulator by tests/test_pubsub_contract.py: ids one per message, in order; a topic
    that does not exist or data that is not bytes is `Permanent`; messages go out in batches of
    `batch` (`calls` counts them, `published` the messages).

    `topics` holds the topics that exist (a test creates one with `create_topic`) and what was
    published to each; `errors` is raised by the next `publish` (then forgotten)."""

    _TOPIC = re.compile(r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/topics/[A-Za-z][-A-Za-z0-9._~+%]{2,254}$")

    def __init__(self, *, batch: int = 100) -> None:
        self.batch = batch
        self.topics: dict[str, list[bytes]] = {}
        self.errors: list[Exception] = []
        self.published = 0
        self.calls = 0
        self._next_id = 0

    def create_topic(self, topic: str) -> None:
        self.topics.setdefault(topic, [])

    def publish(self, topic: str, messages: Sequence[bytes]) -> list[str]:
        from shared.core.errors import Permanent

        if self.errors:
            raise self.errors.pop(0)
        for data in messages:
            if not isinstance(data, bytes):
                raise Permanent(f"publish to {topic}: TypeError: data must be bytes", code="TypeError", api="pubsub")
        if messages and not self._TOPIC.match(topic):
            raise Permanent(f"publish to {topic}: InvalidArgument: invalid topic name", code="InvalidArgument",
                            api="pubsub")
        if messages and topic not in self.topics:
            raise Permanent(f"publish to {topic}: NotFound: topic not found", code="NotFound", api="pubsub")
        ids: list[str] = []
        for start in range(0, len(messages), self.batch):
            for data in messages[start:start + self.batch]:
                self._next_id += 1
                self.topics[topic].append(data)
                ids.append(str(self._next_id))
            self.calls += 1
        self.published += len(ids)
        return ids

    def close(self) -> None:
        """As the adapter's: nothing to release."""


class FakeIdentity:
    """`IdentityPort` over a table of tokens it minted. Held to the real verifier
    (`shared.adapters.idtoken.IdTokenVerifier`, on the sandbox's certificate server) by
    tests/test_identity_datapath_contract.py: a token it minted names its requester (the email in
    lower case), anything else is `Rejected` of kind UNAUTHENTICATED on `attributes.idToken`."""

    def __init__(self) -> None:
        self.tokens: dict[str, Any] = {}

    def mint(self, email: str) -> str:
        import secrets

        token = f"fake.{secrets.token_urlsafe(16)}.sig"
        self.tokens[token] = email
        return token

    def verify(self, token: str | None) -> Any:
        from shared.adapters.idtoken import unauthenticated
        from shared.core.requesters import Requester

        if not token:
            raise unauthenticated("no ID token")
        email = self.tokens.get(token)
        if email is None:
            raise unauthenticated("the token does not verify")
        return Requester(email=email.lower(), subject=f"sub-{email.lower()}")


class FakeDataPath:
    """`DataPathPort` over tables: `pods[(cluster path, pod uid)]` is what the node's kernel shows,
    `reaches[(cluster path, pod uid, address)]` whether it answered. Held to the real adapter
    (`shared.adapters.datapath.HttpDataPath` on the sandbox's probe) by
    tests/test_identity_datapath_contract.py: what is not known is None ("not checked")."""

    def __init__(self) -> None:
        from shared.ports import PodDataPath, Reach

        self.pods: dict[tuple[str, str], PodDataPath] = {}
        self.reaches: dict[tuple[str, str, str], Reach] = {}

    def observe(self, ref: ClusterRef, pod_uid: str, ifname: str) -> Any:
        return self.pods.get((ref.path, pod_uid))

    def reach(self, ref: ClusterRef, pod_uid: str, address: str, ifname: str) -> Any:
        if (ref.path, pod_uid) not in self.pods:
            return None
        from shared.ports import Reach

        return self.reaches.get((ref.path, pod_uid, address), Reach(False, False, "no answer"))


# --------------------------------------------------------------------------- NAD records in tests

def nad_change(state: str | None = None, fields: Mapping[str, Any] | None = None,
               message: str | None = None) -> Callable[[NadRecord], NadRecord]:
    """Tests: a `put_nad` change written as document fields (camelCase, `DELETE`), decoded by the
    store's own table (`NAD_FIELDS`), so a test can say what a document should hold."""
    def change(cur: NadRecord) -> NadRecord:
        values: dict[str, Any] = {}
        for name, value in (fields or {}).items():
            if name in ("namespace", "name"):
                values[name] = value
                continue
            f = NAD_BY_NAME[name]
            values[f.attr] = None if value is DELETE else f.decode(value)
        if state is not None:
            values["state"] = NadState(state) if state in NadState.__members__.values() else state
        if message is not None:
            values["message"] = message
        return replace(cur, **values)
    return change


def nad_expect(fields: Mapping[str, Any]) -> Callable[[NadRecord], bool]:
    """Tests: a `put_nad` condition written as document fields (a None value: the field is absent)."""
    def expect(cur: NadRecord) -> bool:
        return all(getattr(cur, NAD_BY_NAME[name].attr) == (None if value is None else NAD_BY_NAME[name].decode(value))
                   for name, value in fields.items())
    return expect


def nad_doc(store: Any, ref: ClusterRef, namespace: str, name: str) -> dict[str, Any] | None:
    """Tests: the NAD document as stored (its last request whole), or None."""
    rec = store.get_nad(ref, namespace, name)
    return dict(rec.data) if rec is not None else None


def nad_docs(store: Any, ref: ClusterRef, state: str | None = None) -> list[dict[str, Any]]:
    """Tests: the cluster's NAD documents as stored, by namespace and name."""
    return [{"namespace": r.namespace, "name": r.name, **r.data} for r in store.list_nads(ref, state)]


def rollout_stored(store: Any) -> dict[str, Any] | None:
    """Tests: `rollouts/current` as stored (the raw document the console shows), or None."""
    if isinstance(store, FakeStore):
        return copy.deepcopy(store.rollout)
    snap = store._rollout_doc().get()
    return snap.to_dict() if snap.exists else None
