"""What every flow shares: the settings, the ports, the policy and the bundle in force.

A `Context` is built once per function instance by the composition root (`shared.app`), which
hands it factories for the adapters so that an instance pays only for the SDKs its events need
(cold start). The flows read `ctx.store`, `ctx.gke` and `ctx.kube_for(...)` through the ports
of `shared.ports`; nothing here imports an adapter.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from shared.core.policy import Policy
from shared.core.prechecks import ClusterFacts
from shared.core.records import BundleOptions, FleetRollout
from shared.core.refs import ClusterRef
from shared.core.settings import PREFIX, ConfigError, Settings
from shared.ports import ClusterApiPort, DataPathPort, GkePort, IdentityPort, StorePort

KUBE_CACHE_SECONDS = 300.0
POLICY_CACHE_SECONDS = 60.0
ROLLOUT_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Outcome:
    """What a handler did, for the function's log line and for tests."""

    status: str  # done | duplicate | ignored | rejected | failed | pending | waiting | superseded
    message: str
    cluster: str | None = None
    state: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Cursor:
    """Where a drive currently is (`phase`: resolve-range, endpoint, apply-crds, ...), so an error
    is recorded against the phase that raised it. Distinct from the `step` a history entry is
    recorded under and from the lease's step (`next_step`, `hold`), which the store owns.

    `holder` names this delivery of the event in the lease: two concurrent deliveries of one
    event (Pub/Sub is at least once) must not both run the steps, so each has its own holder and
    the second gets a `Transient` "busy" answer; it is redelivered later and finds the ledger.
    """

    phase: str
    holder: str = field(default_factory=lambda: secrets.token_hex(6))
    facts_digest: str | None = None  # of the cluster as this drive read it (recorded with any outcome)


class Context:
    """Settings, lazily built ports, and the caches a warm function instance keeps."""

    def __init__(self, settings: Settings, *, store: Callable[[], StorePort], gke: Callable[[], GkePort],
                 kube: Callable[[ClusterFacts], ClusterApiPort], clock: Callable[[], float] = time.monotonic,
                 datapath: Callable[[], DataPathPort] | None = None,
                 identity: Callable[[], IdentityPort] | None = None) -> None:
        self.settings = settings
        self._make_identity = identity
        self._identity: IdentityPort | None = None
        self._make_store, self._make_gke, self._make_kube = store, gke, kube
        self._make_datapath = datapath
        self._datapath: DataPathPort | None = None
        self._store: StorePort | None = None
        self._gke: GkePort | None = None
        self._kube_cache: dict[str, tuple[float, ClusterApiPort]] = {}
        self._policy: tuple[float, Policy] | None = None
        self._rollout: tuple[float, FleetRollout | None] | None = None
        self.clock = clock

    @property
    def store(self) -> StorePort:
        if self._store is None:
            self._store = self._make_store()
        return self._store

    @property
    def gke(self) -> GkePort:
        if self._gke is None:
            self._gke = self._make_gke()
        return self._gke

    @property
    def datapath(self) -> DataPathPort | None:
        """The node side of pods' networks, or None when nothing can look there (deployed)."""
        if self._datapath is None and self._make_datapath is not None:
            self._datapath = self._make_datapath()
        return self._datapath

    @property
    def identity(self) -> IdentityPort | None:
        """The ID token verifier, or None when requester verification is off (settings)."""
        if self._identity is None and self._make_identity is not None and self.settings.requester_auth:
            self._identity = self._make_identity()
        return self._identity

    def kube_for(self, ref: ClusterRef, cluster: ClusterFacts | None = None) -> ClusterApiPort:
        """A cluster API engine for `ref`, cached per process for a few minutes.

        A warm function instance handling many NAD requests for one cluster then makes one
        cluster API request per NAD, not a GKE call plus credentials each time.
        """
        now = self.clock()
        hit = self._kube_cache.get(ref.doc_id)
        if hit and hit[0] > now and cluster is None:
            return hit[1]
        if cluster is None:
            cluster = self.gke.get_cluster(ref)
        kube = self._make_kube(cluster)
        self._kube_cache[ref.doc_id] = (now + KUBE_CACHE_SECONDS, kube)
        return kube

    def forget_cluster(self, ref: ClusterRef) -> None:
        """Drop the cached engine of a cluster that is gone (or re-created under its name)."""
        self._kube_cache.pop(ref.doc_id, None)

    def policy(self, *, fresh: bool = False) -> Policy:
        """Settings merged with the Firestore `config/policy` document (re-read every minute, or
        now with `fresh`: the rollout tick must see a new bundle at once)."""
        now = self.clock()
        if self._policy and self._policy[0] > now and not fresh:
            return self._policy[1]
        policy = Policy.from_settings(self.settings)
        if self.settings.policy_document:
            policy = policy.merged(self.store.get_policy())
        self._policy = (now + POLICY_CACHE_SECONDS, policy)
        return policy

    def bundle(self, ref: ClusterRef | None = None) -> Any:
        """The bundle a cluster should run: the policy's (its images and log level), unless a
        rollout (`rollouts/current`) holds `ref` on the previous bundle (docs/WORKFLOW.md)."""
        spec = self.policy().bundle_spec()
        if ref is not None:
            from shared.core.waves import spec_for

            # Read afresh: a cluster rolled back a moment ago must not get the target again.
            spec = spec_for(self.rollout(fresh=True), ref.doc_id) or spec
        from shared.core.errors import Rejected

        # a rollout document is a Firestore write too: its images are checked like the policy's
        for name, image in (("multusImage", spec.multus_image), ("whereaboutsImage", spec.whereabouts_image)):
            foreign = image and self.policy().image_problem(image)
            if foreign:
                raise ConfigError(f"bundle {name}: {foreign}")

        try:
            return bundle_of(spec, allow_unpinned=self.settings.allow_unpinned_images)
        except Rejected as e:  # the operator's options, named by their variables
            raise ConfigError("; ".join(f"{PREFIX}{p.field.upper()}: {p.message}" for p in e.problems)
                              or e.message) from None

    def rollout(self, *, fresh: bool = False) -> FleetRollout | None:
        """`rollouts/current` (None without one), cached a few seconds per instance."""
        now = self.clock()
        if self._rollout and self._rollout[0] > now and not fresh:
            return self._rollout[1]
        rollout, _ = self.store.get_rollout()
        self._rollout = (now + ROLLOUT_CACHE_SECONDS, rollout)
        return rollout

    def remember_rollout(self, rollout: FleetRollout) -> None:
        self._rollout = (self.clock() + ROLLOUT_CACHE_SECONDS, rollout)

    def config(self) -> Policy:
        """The operator's whole configuration, validated in one place before an event is handled:
        settings (at start-up), the policy document, the template, the default NADs, the bundle
        options. `ConfigError` names the variable or field; nothing has been claimed or changed yet.
        """
        from shared.core.errors import Rejected
        from shared.core.nad import parse_request

        policy = self.policy()
        self.bundle()
        source = "config/policy defaultNads" if self.settings.policy_document else f"{PREFIX}DEFAULT_NADS"
        problems = []
        for i, raw in enumerate(policy.default_nads):
            try:
                parse_request({**raw, "cluster": "projects/p-check/locations/us-central1/clusters/c-check"})
            except Rejected as e:
                problems += [f"{source}[{i}].{p.field}: {p.message}" if p.field else f"{source}[{i}]: {p.message}"
                             for p in e.problems] or [f"{source}[{i}]: {e.message}"]
        if problems:
            raise ConfigError("; ".join(problems))
        return policy


@lru_cache(maxsize=16)
def _bundle(multus: str | None, whereabouts: str | None, level: str | None, allow_unpinned: bool) -> Any:
    from shared.core.multus import load_bundle

    return load_bundle(multus_image=multus, whereabouts_image=whereabouts, allow_unpinned=allow_unpinned,
                       log_level=level)


def bundle_of(spec: BundleOptions, *, allow_unpinned: bool) -> Any:
    """The bundle of recorded options (images and log level; None: the deployment's default)."""
    return _bundle(spec.multus_image, spec.whereabouts_image, spec.log_level, allow_unpinned)


def cluster_fields(ref: ClusterRef) -> dict[str, Any]:
    """The identity fields of a new cluster document."""
    return {"project": ref.project, "location": ref.location, "cluster": ref.cluster, "path": ref.path}
