"""Issue 24, who may ask: verified requesters, the authorization policy, NADs the controller does
not own, forged deletes, unmanaged projects, bounded fan-out, a terminal-safe CLI.

Pure rules first (shared/core/requesters.py, policy, nad.foreign_nad), then the ID token verifier
against the sandbox's identity server (sandbox/identity.py, on 127.0.0.1), then the flows on the
fakes (tests/fakes.py) with that verifier. The end-to-end story through the sandbox stack is
tests/test_e2e.py::test_an_unsigned_request_is_refused_and_recorded_a_signed_one_applied.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.idtoken import IdTokenVerifier
from shared.app import Controller
from shared.core import decisions as d
from shared.core.errors import NotOurs, Rejected
from shared.core.events import AuditEvent, NadRequestEvent, PubSubMessage, decode_nad_request
from shared.core.nad import CLUSTER_ANNOTATION, MANAGED_BY, foreign_nad, parse_request
from shared.core.policy import Policy
from shared.core.requesters import (
    Grant,
    Requester,
    authorize,
    claims_problems,
    namespace_quota_problem,
    parse_grants,
    quota_problems,
    token_attributes,
    token_from_attributes,
)
from shared.core.settings import ConfigError, Settings
from tests.fakes import FakeGke, FakeKube, FakeStore, nad_doc, nad_docs
from tests.test_flows_on_fakes import REF, eligible_cluster

ALICE = "alice@example.com"
AUD = "multus-provisioner"


def req(**fields: Any) -> Any:
    return parse_request({"cluster": REF.path, "name": "net-a", "namespace": "apps", **fields})


# --------------------------------------------------------------------------- pure rules

def test_without_grants_any_verified_identity_is_allowed_within_the_default_quota() -> None:
    problems, grant = authorize(Policy.from_settings(Settings()).requesters, Requester(ALICE), req())
    assert problems == [] and grant.prefix_limit(4) == 24 and grant.prefix_limit(6) == 64


def test_grants_map_identities_to_projects_clusters_and_namespaces() -> None:
    grants = parse_grants([{"emails": ["*@example.com"], "projects": [REF.project], "clusters": ["multus-*"],
                            "namespaces": ["apps", "team-*"], "largestPrefix": {"ipv4": 26},
                            "maxNadsPerNamespace": 2}], src="requesters")
    assert authorize(grants, Requester(ALICE), req())[0] == []
    assert authorize(grants, Requester(ALICE), req(namespace="team-blue"))[0] == []
    [outside] = authorize(grants, Requester(ALICE), req(namespace="web"))[0]
    assert outside.field == "namespace" and "web" in outside.message and ALICE in outside.message
    other = req(cluster=f"projects/{REF.project}/locations/us-central1/clusters/billing")
    assert authorize(grants, Requester(ALICE), other)[0][0].field == "cluster"
    assert authorize(grants, Requester("mallory@evil.test"), req())[0][0].field == "requester"
    _, grant = authorize(grants, Requester(ALICE), req())
    assert grant.prefix_limit(4) == 26 and grant.max_nads_per_namespace == 2
    for bad in ([{"emails": []}], [{"emails": ["x"]}], [{"emails": ["*"], "namespaces": ["Bad_NS"]}],
                [{"emails": ["*"], "largestPrefix": {"ipv4": 40}}], [{"emails": ["*"], "who": 1}], {}):
        with pytest.raises(ValueError):
            parse_grants(bad, src="requesters")
    with pytest.raises(ConfigError, match="requesters"):
        Policy.from_settings(Settings()).merged({"requesters": [{"emails": []}]})


def test_the_address_quota_bounds_a_nad_and_a_request_without_range() -> None:
    grant = Grant(emails=("*",))
    assert quota_problems(grant, requested="172.16.1.0/24", cidr="172.16.1.0/24") == []
    [big] = quota_problems(grant, requested="172.16.0.0/16", cidr="172.16.0.0/16")
    assert big.field == "range" and "/24" in big.message
    # without a range: the pool's range only when it fits the quota, never a whole large pool silently
    assert quota_problems(grant, requested=None, cidr="172.16.1.0/24") == []
    [whole] = quota_problems(grant, requested=None, cidr="10.0.0.0/14")
    assert whole.field == "range" and "no range given" in whole.message and "10.0.0.0/14" in whole.message
    per_ns = Grant(emails=("*",), max_nads_per_namespace=1)
    others = [{"namespace": "apps", "name": "x", "state": d.NAD_APPLIED}]
    assert "quota 1 per namespace" in str(namespace_quota_problem(per_ns, others, "apps", d.NAD_COUNTED))
    assert namespace_quota_problem(per_ns, others, "web", d.NAD_COUNTED) is None


def test_system_namespaces_are_protected_by_default_and_projects_are_an_allowlist() -> None:
    policy = Policy.from_settings(Settings(project="proj-one", restrict_projects=True, denied_namespaces=()))
    for ns in ("kube-system", "kube-public", "kube-node-lease", "gke-managed-system", "gmp-system", "istio-system"):
        assert "protected" in str(policy.namespace_problem(ns)), ns
    assert policy.namespace_problem("apps") is None
    assert policy.project_problem("proj-one") is None
    assert "not managed" in str(policy.project_problem("invented-proj"))
    assert policy.merged({"managedProjects": ["team-b"]}).project_problem("team-b") is None
    assert Policy.from_settings(Settings(project="proj-one")).project_problem("any") is None  # not restricted


def test_the_token_travels_in_chunks_under_the_attribute_size_limit() -> None:
    token = "a" * 2500
    attrs = token_attributes(token)
    assert set(attrs) == {"idToken", "idToken.1", "idToken.2"} and all(len(v) <= 1000 for v in attrs.values())
    assert token_from_attributes(attrs) == token and token_from_attributes({}) is None
    msg = PubSubMessage("m1", b'{"cluster": "%s", "name": "n"}' % REF.path.encode(), attrs)
    ev = decode_nad_request(msg)
    assert ev.token == token and token not in repr(ev)


def test_claims_must_name_our_audience_a_trusted_issuer_and_a_verified_email() -> None:
    good = {"iss": "https://accounts.google.com", "aud": AUD, "exp": time.time() + 60, "email": ALICE}
    now = time.time()
    assert claims_problems(good, audiences=(AUD,), issuers=("https://accounts.google.com",), now=now) == []
    for change, word in (({"aud": "other"}, "audience"), ({"iss": "https://evil"}, "issuer"),
                         ({"exp": now - 1}, "expired"), ({"email": None}, "no email"),
                         ({"email_verified": False}, "not verified")):
        problems = claims_problems({**good, **change}, audiences=(AUD,), issuers=("https://accounts.google.com",),
                                   now=now)
        assert problems and word in problems[0].message and problems[0].field == "attributes.idToken", change


def test_a_nad_without_the_label_and_annotation_is_not_ours() -> None:
    ours = {"metadata": {"namespace": "apps", "name": "n", "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
                         "annotations": {CLUSTER_ANNOTATION: REF.path}}}
    assert foreign_nad(ours, REF.path) is None and foreign_nad(ours, None) is None
    hand = {"metadata": {"namespace": "apps", "name": "n", "managedFields": [{"manager": "kubectl-client-side-apply"}]}}
    owner, why = foreign_nad(hand, REF.path) or ("", "")
    assert owner == "kubectl-client-side-apply" and "left untouched" in why and "label" in why
    no_note = {"metadata": {"namespace": "apps", "name": "n", "labels": {MANAGED_BY[0]: MANAGED_BY[1]}}}
    assert "annotation" in (foreign_nad(no_note, REF.path) or ("", ""))[1]
    other = {"metadata": {**ours["metadata"], "annotations": {CLUSTER_ANNOTATION: "projects/x/locations/l/clusters/c"}}}
    assert "another cluster" in (foreign_nad(other, REF.path) or ("", ""))[1]


# --------------------------------------------------------------------------- the verifier

@pytest.fixture(scope="module")
def identity() -> Iterator[Any]:
    from sandbox.identity import IdentityServer

    server = IdentityServer()
    try:
        yield server
    finally:
        server.stop()


def test_the_verifier_accepts_a_signed_token_and_refuses_every_forgery(identity: Any) -> None:
    from sandbox.identity import Issuer

    v = IdTokenVerifier((AUD,), certs_url=f"{identity.url}/certs")
    issuer = identity.issuer
    assert v.verify(issuer.token(AUD, ALICE)) == Requester(ALICE, v.verify(issuer.token(AUD, ALICE)).subject)
    stranger = Issuer()
    same_kid = Issuer()
    same_kid.kid = issuer.kid
    header, payload, _ = issuer.token(AUD, ALICE).split(".")
    forged = {
        "missing": None,
        "garbage": "not-a-token",
        "unsigned": f"{header}.{payload}.",
        "alg none": "eyJhbGciOiJub25lIn0." + payload + ".",
        "expired": issuer.token(AUD, ALICE, now=time.time() - 7200),
        "wrong audience": issuer.token("someone-else", ALICE),
        "wrong issuer": issuer.token(AUD, ALICE, issuer="https://evil.example"),
        "unknown key": stranger.token(AUD, ALICE),
        "wrongly signed": same_kid.token(AUD, ALICE),
        "no email": issuer.token(AUD, None),  # type: ignore[arg-type]
    }
    for what, token in forged.items():
        with pytest.raises(Rejected) as e:
            v.verify(token)
        assert e.value.kind == "unauthenticated" and e.value.problems[0].field == "attributes.idToken", what
        assert (token or "xx")[:20] not in e.value.message or what in ("missing", "garbage"), what  # no token echoed


def test_a_token_verified_once_is_not_trusted_past_its_expiry_or_its_key() -> None:
    """The verifier keeps a token whose signature verified (the same bytes need no second RSA
    check), but every use checks its claims against the clock again, and a token signed by a key
    the issuer no longer publishes is refused although it verified before."""
    from sandbox.identity import IdentityServer, Issuer

    server = IdentityServer(Issuer())
    try:
        now = [time.time()]
        v = IdTokenVerifier((AUD,), certs_url=f"{server.url}/certs", clock=lambda: now[0])
        token = server.issuer.token(AUD, ALICE, lifetime=3600)
        assert v.verify(token).email == ALICE and v.verify(token).email == ALICE  # the second from the cache
        server.issuer = Issuer()  # the issuer rotates its key away
        now[0] += 400  # the cached certificates are stale (max-age 300): fetched again, without the old key
        with pytest.raises(Rejected) as e:
            v.verify(token)
        assert "does not publish" in e.value.problems[0].message
        fresh = server.issuer.token(AUD, ALICE, lifetime=3600)
        assert v.verify(fresh).email == ALICE and v.verify(fresh).email == ALICE
        now[0] += 3600  # past its expiry (the certificates fetched again, the same key)
        with pytest.raises(Rejected) as e:
            v.verify(fresh)
        assert "expired" in e.value.problems[0].message
    finally:
        server.stop()


# --------------------------------------------------------------------------- the flows on fakes

class World:
    """A READY cluster on the fakes, with requester verification on (the sandbox's keys)."""

    def __init__(self, identity: Any, **settings: Any) -> None:
        self.settings = Settings(project=REF.project, policy_document=True, requester_auth=True,
                                 restrict_projects=True, **settings)
        self.store, self.gke, self.kube = FakeStore(self.settings), FakeGke(), FakeKube()
        self.gke.ranges[("multus-subnet", "multus-pods")] = "172.16.1.0/24"
        self.issuer = identity.issuer
        verifier = IdTokenVerifier((AUD,), certs_url=f"{identity.url}/certs")
        self.wf = Controller(self.settings, store=self.store, gke=self.gke, kube_factory=lambda c: self.kube,
                             identity=verifier)
        self.n = 0
        self.gke.add(REF, eligible_cluster())
        self.wf.handle_audit(AuditEvent(event_id="created", action="cluster.created", cluster=REF, node_pool=None,
                                        first=True, last=True, operation_id="op-1",
                                        method="google.container.v1.ClusterManager.CreateCluster"))
        assert self.store.get_cluster(REF).state == d.READY  # type: ignore[union-attr]

    def policy(self, **doc: Any) -> None:
        self.store.policy = doc
        self.wf.ctx._policy = None

    def send(self, email: str | None = ALICE, *, token: str | None = None, **fields: Any) -> Any:
        """Handle one request as the function does: a refusal raised before the flow is recorded."""
        self.n += 1
        event_id = f"nad-{self.n}"
        body = {"cluster": REF.path, "name": "net-a", "namespace": "apps", **fields}
        if token is None and email is not None:
            token = self.issuer.token(AUD, email)
        try:
            return self.wf.handle_nad(NadRequestEvent(event_id, parse_request(body), token))
        except Rejected as e:
            return self.wf.record_rejection(e, event_id=e.event_id or event_id)

    def nad(self, name: str = "net-a", namespace: str = "apps") -> dict[str, Any]:
        return nad_doc(self.store, REF, namespace, name) or {}


@pytest.fixture
def world(identity: Any) -> World:
    return World(identity)


def test_an_unsigned_or_forged_request_is_refused_recorded_and_touches_nothing(world: World) -> None:
    assert world.send(range="172.16.1.0/26").status == "done"
    before = world.nad()
    for token in ("", "forged.token.here", world.issuer.token("someone-else", ALICE)):
        out = world.send(None, token=token or None, range="172.16.1.0/28")
        assert out.status == "rejected" and "not authenticated" in out.message
    rejections = world.store.list_rejections(REF)
    assert len(rejections) == 3 and {r["kind"] for r in rejections} == {"unauthenticated"}
    assert all(p["field"] == "attributes.idToken" for r in rejections for p in r["problems"])
    assert world.nad() == before  # the applied NAD's record is not even marked
    assert world.kube.nads()["apps/net-a"]["spec"]["config"] == before["config"]


def test_who_asked_is_in_the_record_and_the_history_never_the_token(world: World) -> None:
    token = world.issuer.token(AUD, ALICE)
    assert world.send(None, token=token, range="172.16.1.0/26").status == "done"
    doc = world.nad()
    assert doc["lastRequest"]["requester"] == ALICE and doc["applied"]["requester"] == ALICE
    entries = [h for h in world.store.history(REF, page_size=100)[0] if h.get("nad") == "apps/net-a"]
    assert entries and entries[-1]["requester"] == ALICE
    assert token not in repr(world.store.nads) and token not in repr(world.store.history_entries)


def test_an_authorised_identity_outside_its_namespaces_is_refused(world: World) -> None:
    world.policy(requesters=[{"emails": [ALICE], "namespaces": ["apps"]}])
    assert world.send(namespace="apps", range="172.16.1.0/26").status == "done"
    out = world.send(namespace="web", range="172.16.1.64/26")
    assert out.status == "rejected"
    doc = world.nad(namespace="web")
    assert doc["state"] == d.NAD_REJECTED and any(r.startswith("namespace:") and ALICE in r for r in doc["reasons"])
    assert world.send("bob@example.com", namespace="apps", name="net-b", range="172.16.1.64/26").status == "rejected"
    assert "not granted" in " ".join(world.nad("net-b")["reasons"])
    assert sorted(world.kube.nads()) == ["apps/net-a"]


def test_quota_largest_prefix_and_nads_per_namespace(world: World) -> None:
    world.policy(requesters=[{"emails": ["*"], "largestPrefix": {"ipv4": 27}, "maxNadsPerNamespace": 1}])
    assert world.send(range="172.16.1.0/26").status == "rejected"
    assert "larger than the /27" in " ".join(world.nad()["reasons"])
    assert world.send().status == "rejected"  # no range: the pool's /24 does not fit a /27
    assert "no range given" in " ".join(world.nad()["reasons"])
    assert world.send(range="172.16.1.0/27").status == "done"
    assert world.send(name="net-b", range="172.16.1.32/27").status == "rejected"
    assert "quota 1 per namespace" in " ".join(world.nad("net-b")["reasons"])


def test_a_kube_system_delete_is_refused_and_the_nad_stays(world: World) -> None:
    nad = parse_request({"cluster": REF.path, "name": "sys-net", "namespace": "kube-system", "range": "172.16.1.0/28"})
    from shared.core.nad import render_nad

    world.kube.apply_nad(render_nad(nad))  # ours, but in a protected namespace
    out = world.send(namespace="kube-system", name="sys-net", action="delete")
    assert out.status == "rejected"
    assert "protected" in " ".join(world.nad("sys-net", "kube-system")["reasons"])
    assert "kube-system/sys-net" in world.kube.nads()


def test_a_nad_without_the_label_is_never_taken_over_nor_deleted(world: World) -> None:
    foreign = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"namespace": "apps", "name": "theirs", "labels": {MANAGED_BY[0]: "helm"}},
               "spec": {"config": "{}"}}
    world.kube._put(foreign)
    out = world.send(name="theirs", range="172.16.1.0/26")
    assert out.status == "rejected" and "belongs to 'helm'" in out.message
    assert world.nad("theirs")["state"] == d.NAD_REJECTED
    assert world.kube.nads()["apps/theirs"]["spec"]["config"] == "{}"
    assert world.send(name="theirs", action="delete").status == "rejected"
    assert "apps/theirs" in world.kube.nads()
    with pytest.raises(NotOurs):
        world.kube.delete_nad("apps", "theirs")


def test_an_unknown_project_is_refused_at_top_level_without_a_record(world: World) -> None:
    other = "projects/invented-proj/locations/us-central1/clusters/c1"
    out = world.send(cluster=other)
    assert out.status == "rejected" and "not managed" in out.message
    [rej] = world.store.list_rejections(None)
    assert rej["kind"] == "unknown-project" and rej["problems"][0]["field"] == "cluster" and rej["cluster"] is None
    from shared.core.refs import ClusterRef

    ref = ClusterRef.parse(other)
    assert nad_docs(world.store, ref) == [] and world.store.get_cluster(ref) is None
    with pytest.raises(Rejected, match="not managed"):
        world.wf.handle_audit(AuditEvent(event_id="a9", action="cluster.created", cluster=ref, node_pool=None,
                                         first=True, last=True, operation_id=None,
                                         method="google.container.v1.ClusterManager.CreateCluster"))


def test_a_forged_delete_cluster_entry_does_not_close_the_workflow(world: World) -> None:
    def delete(event_id: str) -> Any:
        return world.wf.handle_audit(AuditEvent(event_id=event_id, action="cluster.deleted", cluster=REF,
                                                node_pool=None, first=True, last=True, operation_id="op-9",
                                                method="google.container.v1.ClusterManager.DeleteCluster"))

    out = delete("forged")
    assert out.status == "ignored" and "GKE still has the cluster" in out.message
    assert world.store.get_cluster(REF).state == d.READY  # type: ignore[union-attr]
    assert "get_cluster" in world.gke.calls
    del world.gke.clusters[REF.path]  # really gone
    assert delete("real").state == d.DELETED


def test_a_reconcile_tick_fans_out_a_bounded_window_that_moves() -> None:
    from shared.flows.fanout import bounded

    items = list(range(10))
    first, dropped = bounded(items, 4, "tick-1")
    assert len(first) == 4 and dropped == 6
    windows = {tuple(bounded(items, 4, f"tick-{i}")[0]) for i in range(20)}
    assert len(windows) > 1 and set().union(*windows) == set(items)
    assert bounded(items, 20, "t") == (items, 0)


def test_the_cli_shows_escape_sequences_instead_of_running_them(capsys: pytest.CaptureFixture[str]) -> None:
    from multus_cli.online import _nad_line, _say
    from shared.adapters.store import nad_of

    _say(_nad_line(nad_of("apps", "x\x1b[2J", {"state": "REJECTED",
                                               "reasons": ["range: \x1b]0;pwned\x07 \u202eevil"]})))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "\\u202e" in out


def test_reconcile_leaves_a_foreign_object_that_took_a_recorded_name_alone(world: World) -> None:
    from shared.flows.nad_repair import plan_nads, repair_nads

    assert world.send(range="172.16.1.0/26").status == "done"
    key = ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "apps", "net-a")
    world.kube.objects[key] = {"apiVersion": key[0], "kind": key[1], "spec": {"config": "{}"},
                               "metadata": {"namespace": "apps", "name": "net-a", "resourceVersion": "99"}}
    plan = plan_nads(world.wf.policy(), REF, world.store.list_nads(REF), [world.kube.objects[key]])
    assert [f.kind for f in plan] == ["reapply"]  # the record says ours should be there
    assert repair_nads(world.wf.ctx, REF, world.kube, "rec-1", plan) == []  # but it is left alone
    assert world.kube.objects[key]["spec"]["config"] == "{}"  # not taken over
