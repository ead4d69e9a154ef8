"""Reliability under faults, through the real functions on the sandbox stack (issue 8, "Faults").

Every external call site gets a transient fault (UNAVAILABLE / 503 once, then a delay beyond the
client's timeout) and a permanent one (PERMISSION_DENIED / 403). Faults are armed per cluster:
the sandbox cluster API servers are one per cluster, and Firestore and GKE are reached through
`sandbox.grpc_proxy` whose faults match only requests naming the cluster. So all cases of a
kind run at once, beside a bystander cluster that must end READY untouched.
See docs/RELIABILITY.md for what each fault does and what the user sees.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from sandbox.grpc_proxy import GrpcProxy, method_name
from shared.adapters.kube import Kube
from shared.core.errors import Transient
from shared.core.refs import ClusterRef
from tests.fixtures_stack import direct_store, log_entries, ref_of, start_stack, wait_for, wait_nad, wait_state

pytestmark = pytest.mark.e2e

FS = "google.firestore.v1.Firestore/"
GKE = "google.container.v1.ClusterManager/"
TIMEOUT = 2.5  # MULTUS_PROVISIONER_API_TIMEOUT_SECONDS of this stack
LATE = 4.0  # a delay beyond it
OPTED_IN = {"multus-provisioner": "enabled"}


@pytest.fixture(scope="module")
def fstack(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # The scheduler matters: a burst of failing pushes makes Pub/Sub (and its emulator) slow down the
    # whole subscription, sometimes for longer than these tests wait; reconcile resumes what waits.
    s = start_stack(emulators, tmp_path_factory.mktemp("faults"), "faults_", firestore_proxy=True, gke_proxy=True,
                    reconcile_every=5.0,
                    env={"MULTUS_PROVISIONER_MAX_ATTEMPTS": "5", "MULTUS_PROVISIONER_STALL_SECONDS": "8",
                         "MULTUS_PROVISIONER_API_TIMEOUT_SECONDS": str(TIMEOUT),
                         "MULTUS_PROVISIONER_LEASE_SECONDS": "5",
                         # a verification (two pods, 2x this) must end within 3 leases (settings)
                         "MULTUS_PROVISIONER_VERIFY_TIMEOUT_SECONDS": "5"})
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def fstore(fstack: Any) -> Any:
    return direct_store(fstack)


def name(tag: str) -> str:
    return f"f{tag}-{uuid.uuid4().hex[:6]}"


def create(stack: Any, cluster: str) -> ClusterRef:
    from sandbox.gke.scenario import NodePoolSpec

    stack.gke.create_cluster(cluster, wait=False, labels=OPTED_IN, node_pools=(NodePoolSpec("default-pool"),))
    return ref_of(stack, cluster)


def kube_server(stack: Any, cluster: str) -> Any:
    """The cluster's API server, as soon as GKE has made it (long before the install step)."""
    return wait_for(lambda: stack.kube_servers.get(cluster), 15, f"API server of {cluster}", poll=0.02)


def wait_settled(store: Any, ref: ClusterRef, state: str, timeout: float) -> Any:
    """`state` reached and the lease released (READY is written before the pending NADs' step)."""
    wait_state(store, ref, state, timeout)
    return wait_for(lambda: (lambda r: r if r.lease is None else None)(store.get_cluster(ref)), 15,
                    f"{ref.cluster}'s lease to be released")


def history(store: Any, ref: ClusterRef) -> list[dict[str, Any]]:
    return store.history(ref, page_size=500)[0]


def retries(store: Any, ref: ClusterRef) -> list[dict[str, Any]]:
    return [h for h in history(store, ref) if h.get("outcome") == "retry"]


def bundle_paths() -> list[tuple[str, str]]:
    """(label, URL path) of each of the bundle's objects, as the adapter PATCHes them."""
    from shared.core.multus import load_bundle

    out = []
    for obj in load_bundle().objects:
        md = obj["metadata"]
        out.append((f"{obj['kind']} {md['name']}",
                    Kube._route(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"])))
    assert len(out) == 10
    return out


CRD_LIST = r"^/apis/apiextensions\.k8s\.io/v1/customresourcedefinitions$"


def nad_path(nad: str) -> str:
    return rf"^/apis/k8s\.cni\.cncf\.io/v1/namespaces/default/network-attachment-definitions/{nad}$"


# ------------------------------------------------------------------------------------------------
# The proxy itself, against a tiny echo server (metadata, all four call shapes) and the emulator
# ------------------------------------------------------------------------------------------------

class _Echo(grpc.GenericRpcHandler):
    """Echoes request bytes; the first response carries the request metadata as JSON."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        def md(context: grpc.ServicerContext) -> bytes:
            context.set_trailing_metadata((("x-echo-trailer", "t1"),))
            return json.dumps({k: v for k, v in context.invocation_metadata() if k.startswith("x-")}).encode()

        if details.method.endswith("/Unary"):
            return grpc.unary_unary_rpc_method_handler(lambda req, ctx: md(ctx) + b"|" + req)
        if details.method.endswith("/ServerStream"):
            return grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter([md(ctx), req, req]))
        if details.method.endswith("/ClientStream"):
            return grpc.stream_unary_rpc_method_handler(lambda reqs, ctx: b"+".join(reqs) + b"|" + md(ctx))
        if details.method.endswith("/Bidi"):
            return grpc.stream_stream_rpc_method_handler(lambda reqs, ctx: (r.upper() for r in reqs))
        if details.method.endswith("/Refuse"):
            def refuse(req: bytes, ctx: grpc.ServicerContext) -> bytes:
                ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "upstream says no")
            return grpc.unary_unary_rpc_method_handler(refuse)
        return None


@pytest.fixture
def echo_proxy() -> Iterator[tuple[GrpcProxy, grpc.Channel]]:
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((_Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = GrpcProxy(f"127.0.0.1:{port}")
    channel = grpc.insecure_channel(proxy.start())
    try:
        yield proxy, channel
    finally:
        channel.close()
        proxy.stop()
        server.stop(0).wait(5)


def test_proxy_forwards_every_call_shape_with_metadata_and_status(echo_proxy):
    proxy, ch = echo_proxy
    meta = (("x-trace", "abc"),)
    out, call = ch.unary_unary("/echo.Echo/Unary").with_call(b"hello", metadata=meta, timeout=5)
    assert out == b'{"x-trace": "abc"}|hello'
    assert ("x-echo-trailer", "t1") in tuple(call.trailing_metadata())
    assert list(ch.unary_stream("/echo.Echo/ServerStream")(b"s", metadata=meta, timeout=5)) == \
        [b'{"x-trace": "abc"}', b"s", b"s"]
    assert ch.stream_unary("/echo.Echo/ClientStream")(iter([b"a", b"b"]), metadata=meta, timeout=5) == \
        b'a+b|{"x-trace": "abc"}'
    assert list(ch.stream_stream("/echo.Echo/Bidi")(iter([b"x", b"y"]), timeout=5)) == [b"X", b"Y"]
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/echo.Echo/Refuse")(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and e.value.details() == "upstream says no"
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/echo.Echo/Missing")(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert proxy.count("echo.Echo/Unary") == 1 and proxy.count("/echo.Echo/Bidi") == 1


def test_proxy_faults_fail_delay_hold_and_match_request_bytes(echo_proxy):
    proxy, ch = echo_proxy
    unary = ch.unary_unary("/echo.Echo/Unary")
    proxy.faults.fail("echo.Echo/Unary", "UNAVAILABLE", times=2, contains=(b"cluster-a", b"~install"))
    assert unary(b"cluster-b~install", timeout=5).endswith(b"cluster-b~install")  # not matched
    assert unary(b"cluster-a~precheck", timeout=5).endswith(b"precheck")  # only one needle
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as e:
            unary(b"cluster-a~install", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "injected" in e.value.details()
    assert unary(b"cluster-a~install", timeout=5).endswith(b"install")  # consumed
    assert proxy.faults.pending() == []

    proxy.faults.delay("echo.Echo/Unary", 1.5)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        unary(b"late", timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 1.4
    proxy.faults.delay("echo.Echo/Unary", 0.3)
    started = time.monotonic()
    assert unary(b"slow", timeout=5).endswith(b"slow") and time.monotonic() - started >= 0.3

    hold = proxy.faults.hold("echo.Echo/Unary", contains=b"park")
    with futures.ThreadPoolExecutor(1) as pool:
        parked = pool.submit(unary, b"park me", timeout=10)
        assert hold.reached.wait(5) and not parked.done()
        hold.release()
        assert parked.result(5).endswith(b"park me")

    proxy.faults.fail("echo.Echo/Unary", "ABORTED", after=True)  # forwarded, answer replaced
    with pytest.raises(grpc.RpcError) as e:
        unary(b"lost answer", timeout=5)
    assert e.value.code() == grpc.StatusCode.ABORTED

    for bad in (lambda: proxy.faults.fail("no-slash", "UNAVAILABLE"),
                lambda: proxy.faults.fail("a.B/C", "OK"), lambda: proxy.faults.fail("a.B/C", "NOPE"),
                lambda: proxy.faults.fail("a.B/C", "UNAVAILABLE", times=0),
                lambda: proxy.faults.delay("a.B/C", -1), lambda: proxy.faults.fail("a.B/C", "ABORTED", contains=b"")):
        with pytest.raises(ValueError):
            bad()
    assert method_name("a.B/C") == "/a.B/C"


def test_firestore_through_the_proxy_and_the_store_at_its_edges(emulators, monkeypatch):
    """The real client's calls pass (unary, streams, transactions); the Store caps every call at
    its timeout, and a Commit whose answer was lost is Transient (its fate unknown), never Permanent."""
    from shared.adapters.store import Store
    from shared.core.settings import Settings

    with GrpcProxy(emulators.firestore_host) as proxy:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", proxy.address)
        store = Store(Settings(project="multus-test", collection_prefix=f"px{uuid.uuid4().hex[:8]}_"), timeout=1.0)
        ref = ClusterRef("multus-test", "us-central1", "proxied")
        store.claim(ref, event_id="e1", step="discover", create_state="DISCOVERED", ledger_key="e1")
        store.advance(ref, event_id="e1", step="discover", message="m", ledger_key="e1", release=True)
        assert store.get_cluster(ref).state == "DISCOVERED" and len(history(store, ref)) == 1
        seen = {m.rsplit("/", 1)[-1] for m in proxy.calls}
        assert {"BeginTransaction", "BatchGetDocuments", "Commit", "RunQuery"} <= seen, seen

        proxy.faults.delay(FS + "Commit", 3.0)
        started = time.monotonic()
        with pytest.raises(Transient) as e:
            store.claim(ref, event_id="e2", step="s", ledger_key="e2")
        assert e.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - started < 2.5

        proxy.faults.fail(FS + "Commit", "UNAVAILABLE", after=True)
        with pytest.raises(Transient) as e:  # the library re-sent the Commit: "transaction invalid"
            store.claim(ref, event_id="e3", step="s", ledger_key="e3")
        assert "outcome is unknown" in str(e.value)
        assert store.get_cluster(ref).lease.holder == "e3"  # the first Commit did land

        proxy.faults.fail(FS + "Commit", "PERMISSION_DENIED")
        with pytest.raises(Exception) as e:
            store.record_ledger("e4", event_id="e4", step="s", outcome="ok", cluster=ref)
        assert type(e.value).__name__ == "Permanent" and "PERMISSION_DENIED" in str(e.value)


# ------------------------------------------------------------------------------------------------
# Every call site, through the functions
# ------------------------------------------------------------------------------------------------

def _arm_transient(stack: Any, case: str, cluster: str) -> None:
    """UNAVAILABLE/503 once, then a delay beyond the client's timeout, at this case's call site."""
    c = cluster.encode()
    if case == "firestore-read":
        for arm in ("UNAVAILABLE", "late"):
            if arm == "late":
                stack.firestore_proxy.faults.delay(FS + "BatchGetDocuments", LATE, contains=c)
            else:
                stack.firestore_proxy.faults.fail(FS + "BatchGetDocuments", arm, contains=c)
    elif case == "firestore-commit":
        stack.firestore_proxy.faults.fail(FS + "Commit", "UNAVAILABLE", contains=(c, b"~install"))
        stack.firestore_proxy.faults.delay(FS + "Commit", LATE, contains=(c, b"~install"))
    elif case in ("gke-get", "gke-create"):
        method = GKE + ("GetCluster" if case == "gke-get" else "CreateNodePool")
        stack.gke_proxy.faults.fail(method, "UNAVAILABLE", contains=c)
        stack.gke_proxy.faults.delay(method, LATE, contains=c)
    else:
        verb, path = ("GET", CRD_LIST) if case == "crd-wait" else ("PATCH", "^" + case.split(" ", 1)[1] + "$")
        server = kube_server(stack, cluster)
        server.faults.add(verb, path, 503)
        server.faults.add(verb, path, 0, delay=LATE)


EXPECTED_STEP = {"gke-get": "precheck", "gke-create": "create-node-pool", "crd-wait": "wait-crds",
                 "firestore-commit": "install"}


def create_armed(stack: Any, clusters: dict[str, str], arm: Any) -> dict[str, Any]:
    """Create each case's cluster with its fault armed: proxy faults (Firestore, GKE) before the
    cluster exists, cluster API faults as soon as its API server does (before any install)."""
    for case, cluster in clusters.items():
        if case.startswith(("firestore", "gke")):
            arm(stack, case, cluster)
    refs = {}
    for case, cluster in clusters.items():
        refs[case] = create(stack, cluster)
        if not case.startswith(("firestore", "gke")):
            arm(stack, case, cluster)
    return refs


def test_transient_fault_at_every_call_site_ends_ready_with_the_retries_in_history(fstack, fstore):
    cases = ["firestore-read", "firestore-commit", "gke-get", "gke-create", "crd-wait"]
    cases += [f"apply {path}" for _, path in bundle_paths()]
    clusters = {case: name("t") for case in cases}
    bystander = name("by")
    refs = create_armed(fstack, clusters, _arm_transient)
    by_ref = create(fstack, bystander)
    for case, ref in refs.items():
        rec = wait_settled(fstore, ref, "READY", 90)
        assert rec.data["attempts"] == 0 and rec.lease is None, case
        tries = retries(fstore, ref)
        if case == "firestore-read":
            # The Firestore client library retries reads itself (UNAVAILABLE and DEADLINE_EXCEEDED
            # are in BatchGetDocuments' retry policy): absorbed inside one delivery, no redelivery.
            assert tries == [], tries
            continue
        # UNAVAILABLE at Commit is retried by the library too; the late Commit is not (its fate is
        # unknown). urllib3 (under the kubernetes client) re-sends a GET that timed out, not a PATCH.
        want = 1 if case in ("firestore-commit", "crd-wait") else 2
        assert len(tries) == want, (case, [h["message"] for h in tries])
        step = EXPECTED_STEP.get(case, "wait-crds" if case == "crd-wait" else None)
        if step is None:
            step = "apply-crds" if "customresourcedefinitions" in case else "apply-bundle"
        assert all(h["step"] == step for h in tries), (case, [h["step"] for h in tries])
        text = " ".join(h["message"] for h in tries)
        if case.startswith("gke"):
            assert "UNAVAILABLE" in text.upper() and "DEADLINE" in text.upper(), text
        elif case == "firestore-commit":
            assert "DEADLINE_EXCEEDED" in text, text
        elif case == "crd-wait":
            assert "503" in text, text
            lists = [n for (v, p), n in fstack.kube_server(clusters[case]).stats.snapshot().items()
                     if v == "GET" and p.endswith("/customresourcedefinitions")]
            assert sum(lists) >= 3, lists  # 503, then the late one re-sent by urllib3, then served
        else:
            assert "503" in text and "timed out" in text.lower(), text
        steps = [h["step"] for h in history(fstore, ref) if h.get("outcome") != "retry"]
        assert steps.count("install") == 1, (case, steps)
    wait_settled(fstore, by_ref, "READY", 30)
    assert retries(fstore, by_ref) == []
    assert fstack.firestore_proxy.faults.pending() == [] and fstack.gke_proxy.faults.pending() == []


def _arm_permanent(stack: Any, case: str, cluster: str) -> None:
    c = cluster.encode()
    if case == "firestore-commit":
        stack.firestore_proxy.faults.fail(FS + "Commit", "PERMISSION_DENIED", contains=(c, b"~install"))
    elif case in ("gke-get", "gke-create"):
        method = GKE + ("GetCluster" if case == "gke-get" else "CreateNodePool")
        stack.gke_proxy.faults.fail(method, "PERMISSION_DENIED", contains=c)
    else:
        verb, path = ("GET", CRD_LIST) if case == "crd-wait" else ("PATCH", "^" + case.split(" ", 1)[1] + "$")
        kube_server(stack, cluster).faults.add(verb, path, 403, message="forbidden by the test")


def test_permanent_fault_at_every_call_site_fails_once_acknowledged_and_alone(fstack, fstore):
    cases = ["firestore-commit", "gke-get", "gke-create", "crd-wait"]
    cases += [f"apply {path}" for _, path in bundle_paths()]
    clusters = {case: name("p") for case in cases}
    refs = create_armed(fstack, clusters, _arm_permanent)
    by_ref = create(fstack, name("by"))
    for case, ref in refs.items():
        rec = wait_settled(fstore, ref, "FAILED", 60)
        err = rec.data["lastError"]
        step = EXPECTED_STEP.get(case) or ("apply-crds" if "customresourcedefinitions" in case else "apply-bundle")
        assert err["step"] == step, (case, err)
        assert ("PERMISSION_DENIED" in err["message"] or "403" in err["message"]), err
        assert rec.lease is None
        failed = [h for h in history(fstore, ref) if h.get("outcome") == "failed"]
        assert len(failed) == 1 and retries(fstore, ref) == [], case
    wait_settled(fstore, by_ref, "READY", 30)
    assert retries(fstore, by_ref) == []
    time.sleep(4)  # longer than the emulator's first push retries: a 5xx would have come back by now
    for case, ref in refs.items():
        fn = "on_cluster_event" if case in ("gke-get", "gke-create") else "on_node_pool_event"
        handled = [e for e in log_entries(fstack, fn) if e.get("cluster") == ref.path and e.get("outcome")]
        failed = [e for e in handled if e["outcome"] == "failed"]
        assert len(failed) == 1, (case, handled)
        after = [e for e in handled if e["eventId"] == failed[0]["eventId"]]
        assert len(after) == 1, (case, after)  # acknowledged: that event was never delivered again
        # nothing was retried for it either: no warning "transient failure" for that event
        warnings = [e for e in log_entries(fstack, fn) if e.get("eventId") == failed[0]["eventId"]
                    and "transient" in e.get("message", "")]
        assert warnings == [], warnings


def test_nad_apply_transient_then_applied_permanent_then_failed(fstack, fstore):
    cluster = name("n")
    ref = create(fstack, cluster)
    wait_state(fstore, ref, "READY", 40)
    server = fstack.kube_server(cluster)
    server.faults.add("PATCH", nad_path("flaky"), 503)
    server.faults.add("PATCH", nad_path("flaky"), 0, delay=LATE)
    server.faults.add("PATCH", nad_path("denied"), 403, message="no NADs for you")
    flaky_id = fstack.publish("nad-requests", json.dumps({"cluster": ref.path, "name": "flaky",
                                                          "range": "172.16.1.0/26"}).encode())
    mid = fstack.publish("nad-requests", json.dumps({"cluster": ref.path, "name": "denied",
                                                     "range": "172.16.1.64/26"}).encode())
    doc = wait_nad(fstore, ref, "default", "flaky", "APPLIED", 40)
    assert doc["range"] == "172.16.1.0/26"
    doc = wait_nad(fstore, ref, "default", "denied", "FAILED", 20)
    assert "no NADs for you" in doc["message"] and "403" in doc["lastError"]
    # the log line follows the record: wait for it rather than read once
    flaky = wait_for(lambda: (lambda f: f if len(f) >= 3 else None)(
        [e for e in log_entries(fstack, "on_nad_request") if e.get("eventId") == flaky_id]), 20,
        "the flaky request's three deliveries logged")
    # 503, then the timeout: two redeliveries, visible in the function log (a NAD's transient
    # failure writes no history entry: see docs/RELIABILITY.md), then one success.
    assert [e.get("severity") for e in flaky] == ["WARNING", "WARNING", "INFO"], flaky
    assert "503" in flaky[0]["error"] and "timed out" in flaky[1]["error"].lower(), flaky
    time.sleep(3)
    denied = [e for e in log_entries(fstack, "on_nad_request") if e.get("eventId") == mid]
    assert [e.get("outcome") for e in denied] == ["failed"], denied  # handled once, acknowledged
    kube = server.stats.snapshot()
    assert sum(n for (v, p), n in kube.items() if v == "PATCH" and p.endswith("/flaky")) == 3


# ------------------------------------------------------------------------------------------------
# A process killed between its side effect and its record
# ------------------------------------------------------------------------------------------------

def test_killed_between_side_effect_and_record_redelivery_completes_once(fstack, fstore):
    """Bundle applied (side effect), then the install record's transaction is parked at its read
    and the function's process group is SIGKILLed. Parking the read, not the Commit: a transaction
    killed after its read holds the emulator's document lock (see docs/RELIABILITY.md)."""
    cluster = name("k")
    ref = create(fstack, cluster)
    server = kube_server(fstack, cluster)
    server.faults.add("GET", r"/daemonsets/gke-multinet$", 0, delay=1.0)  # a window after the last PATCH
    wait_for(lambda: sum(n for (v, _), n in server.stats.snapshot().items() if v == "PATCH") >= 10, 60,
             "the bundle to be applied", poll=0.01)
    hold = fstack.firestore_proxy.faults.hold(FS + "BatchGetDocuments", contains=ref.doc_id.encode())
    assert hold.reached.wait(20), "the install step's record never started"
    assert fstore.get_cluster(ref).state == "INSTALLING"  # side effect done, not recorded
    fstack.kill_function("on_node_pool_event")
    assert hold.dropped.wait(10), "the proxy did not see the killed client go"
    fstack.restart_function("on_node_pool_event")
    rec = wait_settled(fstore, ref, "READY", 60)
    assert rec.data["attempts"] == 0
    entries = history(fstore, ref)
    keys = [(h["eventId"], h["step"]) for h in entries]
    assert len(keys) == len(set(keys)), keys
    steps = [h["step"] for h in entries]
    assert steps.count("install") == 1 and steps.count("apply-nads") == 1, steps
    patches = sum(n for (v, _), n in server.stats.snapshot().items() if v == "PATCH")
    assert patches == 20  # the redelivery redid the (idempotent) apply, then recorded it once
