"""The composition root: builds the adapters (lazily) and wires the flows to them.

Entry points (`functions/main.py`, the CLI's `verify`) hold one `Controller` per process. It is
the only module of the deployed library that knows both the adapters and the flows; the flows
see the ports only. Tests pass their own store, GKE adapter or cluster API factory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shared.core import logs
from shared.core.errors import Permanent, Problem, Rejected, RejectionKind, Transient
from shared.core.prechecks import ClusterFacts
from shared.core.refs import ClusterRef
from shared.core.settings import Settings
from shared.flows.cluster import ClusterFlow
from shared.flows.context import Context, Outcome
from shared.flows.fanout import FanoutFlow
from shared.flows.nad import NadFlow
from shared.flows.reconcile import ReconcileFlow
from shared.flows.rejections import record_rejection
from shared.flows.rollout import RolloutFlow
from shared.flows.verify import VerifyFlow
from shared.ports import ClusterApiPort, DataPathPort, GkePort, IdentityPort, PublisherPort, StorePort


class Controller:
    """One per function instance: the flows over one context (settings, ports, caches)."""

    def __init__(self, settings: Settings, *, store: StorePort | None = None, gke: GkePort | None = None,
                 kube_factory: Callable[[ClusterFacts], ClusterApiPort] | None = None,
                 clock: Callable[[], float] = time.monotonic, publisher: PublisherPort | None = None,
                 datapath: DataPathPort | None = None, identity: IdentityPort | None = None) -> None:
        def make_store() -> StorePort:
            if store is not None:
                return store
            from shared.adapters.store import Store

            return Store(settings)  # mypy checks here that the real store satisfies the port

        def make_gke() -> GkePort:
            if gke is not None:
                return gke
            from shared.adapters.gke import Gke

            return Gke(settings, timeout=settings.api_timeout_seconds)

        def make_kube(cluster: ClusterFacts) -> ClusterApiPort:
            if kube_factory is not None:
                return kube_factory(cluster)
            from shared.adapters.kube import Kube

            return Kube(self.ctx.gke.api_client(cluster), timeout=settings.api_timeout_seconds)

        def make_publisher() -> PublisherPort:
            if publisher is not None:
                return publisher
            from shared.adapters.pubsub import Publisher

            return Publisher(batch=settings.fanout_batch, timeout=settings.api_timeout_seconds)

        def make_datapath() -> DataPathPort:
            if datapath is not None:
                return datapath
            from shared.adapters.datapath import HttpDataPath, NoDataPath

            return HttpDataPath(settings.datapath_url) if settings.datapath_url else NoDataPath()

        def make_identity() -> Any:
            if identity is not None:
                return identity
            from shared.adapters.idtoken import IdTokenVerifier

            certs = f"{settings.sandbox_id_url}/certs" if settings.sandbox_id_url else None
            return IdTokenVerifier(settings.requester_audiences, certs_url=certs, timeout=settings.api_timeout_seconds)

        self.settings = settings
        self.ctx = Context(settings, store=make_store, gke=make_gke, kube=make_kube, clock=clock,
                           datapath=make_datapath, identity=make_identity)
        self.verifier = VerifyFlow(self.ctx)
        self.nads = NadFlow(self.ctx, self.verifier)
        self.clusters = ClusterFlow(self.ctx, self.nads)
        self.reconciler = ReconcileFlow(self.ctx, self.clusters, self.nads)
        self.rollouts = RolloutFlow(self.ctx)
        self.fanout = FanoutFlow(self.ctx, self.rollouts, make_publisher)

    @property
    def store(self) -> Any:
        return self.ctx.store

    @property
    def gke(self) -> Any:
        return self.ctx.gke

    def policy(self) -> Any:
        """The policy in force (settings merged with `config/policy`); `ConfigError` names a bad field."""
        return self.ctx.policy()

    # Every handler first validates the operator's configuration (`Context.config`, cached): a bad
    # value is one `ConfigError` naming it, raised before any lease is taken or anything changed.
    def handle_audit(self, ev: Any) -> Outcome:
        self.ctx.config()
        return self.clusters.handle_audit(ev)

    def handle_nad(self, ev: Any) -> Outcome:
        self.ctx.config()
        return self.nads.handle_nad(ev)

    def reconcile(self, ev: Any) -> Outcome:
        """A scoped event reconciles its cluster; the scheduled tick (no scope) fans out one scoped
        event per cluster when a reconcile topic is configured, else sweeps every cluster here."""
        self.ctx.config()
        why = self.ctx.policy().project_problem(ev.scope.project) if ev.scope is not None else None
        if why:
            raise Rejected("reconcile refused", [Problem("cluster", why)], kind=RejectionKind.UNKNOWN_PROJECT,
                           event_id=ev.event_id)
        if ev.scope is None and self.settings.reconcile_topic:
            return self.fanout.tick(ev)
        if ev.scope is None:
            try:
                self.rollouts.tick(ev.event_id)
            except (Transient, Permanent) as e:  # the sweep still runs; the next tick drives the rollout
                logs.warning("reconcile: rollout step failed", eventId=ev.event_id, error=str(e))
        return self.reconciler.run(ev)

    def verify(self, ref: ClusterRef, namespace: str, name: str, event_id: str) -> Outcome:
        return self.verifier.verify(ref, namespace, name, event_id)

    def record_rejection(self, err: Rejected, *, event_id: str, excerpt: str = "") -> Outcome:
        return record_rejection(self.ctx, err, event_id=event_id, excerpt=excerpt)
