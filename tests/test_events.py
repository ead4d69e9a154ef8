"""Event decoding: envelopes (Eventarc and functions-framework shapes), audit LogEntries, NAD
requests, reconcile nudges; and the contract that nothing but `Rejected` escapes a decoder."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.core import events
from shared.core.errors import Rejected
from shared.core.events import (
    AuditEvent,
    NadRequestEvent,
    PubSubMessage,
    ReconcileEvent,
    decode_audit,
    decode_nad_request,
    decode_reconcile,
    message_from_cloudevent,
)
from shared.core.refs import ClusterRef

AUDIT = Path(__file__).resolve().parent / "samples" / "audit"
REQUESTS = Path(__file__).resolve().parent / "samples" / "requests"
EXPECTED = json.loads((AUDIT / "EXPECTED.json").read_text())
SAMPLE_NAMES = sorted(k for k in EXPECTED if not k.startswith("_"))
CE_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


def envelope(payload: bytes | str | dict | None, *, message_id: str | None = "1234567890",
             subscription: bool = True, attributes: dict | None = None, snake: bool = False) -> dict[str, Any]:
    """The data of a messagePublished CloudEvent, as Eventarc (with subscription) or
    functions-framework's push conversion (without) delivers it."""
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    message: dict[str, Any] = {"publishTime": "2026-11-30T10:06:01.5Z"}
    if payload is not None:
        message["data"] = base64.b64encode(payload).decode()
    if message_id is not None:
        message["message_id" if snake else "messageId"] = message_id
    if attributes is not None:
        message["attributes"] = attributes
    data: dict[str, Any] = {"message": message}
    if subscription:
        data["subscription"] = "projects/my-project/subscriptions/eventarc-us-central1-audit-sub-123"
    return data


def cloudevent(payload: Any, *, ce_id: str = "ce-1", **kw: Any) -> CloudEvent:
    return CloudEvent({"type": CE_TYPE, "source": "//pubsub.googleapis.com/projects/my-project/topics/t",
                       "id": ce_id}, envelope(payload, **kw))


def sample(name: str) -> dict[str, Any]:
    return json.loads((AUDIT / name).read_text())


def rejected(fn: Any, arg: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        fn(arg)
    return info.value


# --------------------------------------------------------------------------------------------
# Envelope
# --------------------------------------------------------------------------------------------

def test_envelope_eventarc_and_push_shapes() -> None:
    a = message_from_cloudevent(cloudevent(b"hello", attributes={"k": "v"}))
    assert a == PubSubMessage(message_id="1234567890", data=b"hello", attributes={"k": "v"},
                              publish_time="2026-11-30T10:06:01.5Z",
                              subscription="projects/my-project/subscriptions/eventarc-us-central1-audit-sub-123")
    b = message_from_cloudevent({"id": "ce-9", "data": envelope(b"hello", subscription=False)})
    assert (b.message_id, b.data, b.subscription, b.attributes) == ("1234567890", b"hello", None, {})
    c = message_from_cloudevent({"id": "x", "data": envelope(b"x", snake=True)})
    assert c.message_id == "1234567890"


def test_event_id_falls_back_to_the_cloudevent_id() -> None:
    assert message_from_cloudevent(cloudevent(b"x", message_id=None, ce_id="ce-42")).message_id == "ce-42"
    e = rejected(message_from_cloudevent, {"data": envelope(b"x", message_id=None)})
    assert e.kind == "envelope" and "messageId" in e.message


def test_message_without_data_is_empty() -> None:
    assert message_from_cloudevent({"id": "1", "data": envelope(None)}).data == b""


def test_cloudevent_data_as_json_bytes() -> None:
    m = message_from_cloudevent({"id": "1", "data": json.dumps(envelope(b"abc")).encode()})
    assert m.data == b"abc"


@pytest.mark.parametrize("ce, kind, field", [
    ({"id": "1"}, "envelope", "data"),
    ({"id": "1", "data": []}, "envelope", "data"),
    ({"id": "1", "data": {"msg": {}}}, "envelope", "data.message"),
    ({"id": "1", "data": {"message": "x"}}, "envelope", "data.message"),
    ({"id": "1", "data": {"message": {"messageId": "1", "data": 5}}}, "envelope", "data.message.data"),
    ({"id": "1", "data": {"message": {"messageId": "1", "data": "not base64!"}}}, "encoding", "data.message.data"),
    ({"id": "1", "data": {"message": {"messageId": "1", "data": "aGVsbG8"}}}, "encoding", "data.message.data"),
    # characters outside the alphabet are refused, not skipped (b64decode's default skips them)
    ({"id": "1", "data": {"message": {"messageId": "1", "data": "aGVs!bG8="}}}, "encoding", "data.message.data"),
    ({"id": "1", "data": {"message": {"messageId": "1", "attributes": {"a": 1}}}}, "envelope",
     "data.message.attributes"),
    ({"id": "1", "data": {"message": {"messageId": "1", "attributes": []}}}, "envelope",
     "data.message.attributes"),
    ({"id": "1", "data": b"\xff"}, "envelope", ""),
    ({"id": "1", "data": {"message": {"messageId": "x" * 300}}}, "envelope", "data.message.messageId"),
])
def test_broken_envelopes(ce: dict, kind: str, field: str) -> None:
    e = rejected(message_from_cloudevent, ce)
    assert e.kind == kind
    assert [p.field for p in e.problems] == [field]


def test_safety_net_turns_the_unforeseen_into_rejected() -> None:
    class Weird:
        @property
        def data(self) -> Any:
            raise RuntimeError("boom")

    e = rejected(message_from_cloudevent, Weird())
    assert e.kind == "invalid" and "RuntimeError" in e.reason


def test_not_a_cloudevent_at_all() -> None:
    e = rejected(message_from_cloudevent, 42)
    assert e.kind == "envelope"


# --------------------------------------------------------------------------------------------
# Audit entries: the samples
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_audit_samples(name: str) -> None:
    expected = EXPECTED[name]
    ce = cloudevent(sample(name), message_id=f"msg-{name}")
    if "rejected" in expected:
        e = rejected(decode_audit, ce)
        assert e.kind == expected["rejected"] and e.event_id == f"msg-{name}"
        return
    ev = decode_audit(ce)
    assert isinstance(ev, AuditEvent)
    got = {"action": ev.action, "cluster": ev.cluster.path, "node_pool": ev.node_pool, "first": ev.first,
           "last": ev.last, "operation_id": ev.operation_id, "method": ev.method, "status_code": ev.status_code,
           "timestamp": ev.timestamp, "principal": ev.principal}
    assert got == expected
    assert ev.event_id == f"msg-{name}"
    assert ev.failed == (expected["status_code"] is not None)


def test_zones_and_locations_forms_give_one_ref() -> None:
    zonal = decode_audit(cloudevent(sample("nodepool_create_first.json")))
    assert zonal.cluster == ClusterRef("my-project", "us-central1-a", "zonal-demo")
    entry = sample("nodepool_create_first.json")
    entry["protoPayload"]["resourceName"] = entry["protoPayload"]["resourceName"].replace("/zones/", "/locations/")
    assert decode_audit(cloudevent(entry)).cluster == zonal.cluster
    del entry["resource"]  # resourceName alone is enough
    only_name = decode_audit(cloudevent(entry))
    assert (only_name.cluster, only_name.node_pool) == (zonal.cluster, "multus-pool")
    entry = sample("nodepool_create_first.json")
    del entry["protoPayload"]["resourceName"]  # labels alone are enough
    assert decode_audit(cloudevent(entry)).cluster == zonal.cluster


def test_pool_name_from_the_request_when_nothing_else_has_it() -> None:
    entry = sample("nodepool_create_first.json")
    del entry["resource"]["labels"]["nodepool_name"]
    entry["protoPayload"]["resourceName"] = "projects/my-project/zones/us-central1-a/clusters/zonal-demo"
    assert decode_audit(cloudevent(entry)).node_pool == "multus-pool"
    del entry["protoPayload"]["request"]
    e = rejected(decode_audit, cloudevent(entry))
    assert e.kind == "invalid" and "node pool" in e.message
    assert e.cluster == ClusterRef("my-project", "us-central1-a", "zonal-demo")


def test_cluster_event_has_no_node_pool() -> None:
    assert decode_audit(cloudevent(sample("cluster_create_first.json"))).node_pool is None


def test_operation_flags() -> None:
    entry = sample("cluster_create_first.json")
    entry["operation"] = {"id": "op-1", "producer": "container.googleapis.com"}  # neither flag: single entry
    ev = decode_audit(cloudevent(entry))
    assert (ev.first, ev.last, ev.operation_id) == (True, True, "op-1")
    entry["operation"] = {"id": "op-1", "first": True, "last": True}
    ev = decode_audit(cloudevent(entry))
    assert (ev.first, ev.last) == (True, True)
    for bad in ({"first": "yes"}, "op", {"id": 7}):
        entry["operation"] = bad
        assert rejected(decode_audit, cloudevent(entry)).problems[0].field.startswith("operation")


def test_status_codes() -> None:
    entry = sample("cluster_create_last.json")
    entry["protoPayload"]["status"] = {"code": 0}
    assert decode_audit(cloudevent(entry)).status_code is None
    entry["protoPayload"]["status"] = {"code": 13, "message": "internal"}
    assert decode_audit(cloudevent(entry)).status_code == 13
    entry["protoPayload"]["status"] = {"code": "13"}
    assert rejected(decode_audit, cloudevent(entry)).problems[0].field == "protoPayload.status.code"


@pytest.mark.parametrize("mutate, kind, field", [
    (lambda e: e["protoPayload"].update(serviceName="compute.googleapis.com"), "other-service",
     "protoPayload.serviceName"),
    (lambda e: e["protoPayload"].pop("serviceName"), "other-service", "protoPayload.serviceName"),
    (lambda e: e["protoPayload"].update(methodName="google.container.v1.ClusterManager.SetMaintenancePolicy"),
     "other-method", "protoPayload.methodName"),
    (lambda e: e["protoPayload"].update(methodName="google.container.v2.ClusterManager.CreateCluster"),
     "other-method", "protoPayload.methodName"),
    (lambda e: e["protoPayload"].update(methodName="io.k8s.core.v1.pods.create"), "other-method",
     "protoPayload.methodName"),
    (lambda e: e["protoPayload"].update({"@type": "type.googleapis.com/google.cloud.audit.Other"}), "not-audit",
     "protoPayload.@type"),
    (lambda e: e.pop("protoPayload"), "not-audit", "protoPayload"),
    (lambda e: e["resource"].update(type="gce_instance"), "invalid", "resource.type"),
    (lambda e: e["resource"]["labels"].update(cluster_name="Other_Cluster"), "invalid", "resource.labels"),
    (lambda e: e["resource"]["labels"].update(cluster_name="other-cluster"), "invalid",
     "protoPayload.resourceName"),
    (lambda e: e["resource"]["labels"].update(project_id="my-project\n"), "invalid", "resource.labels"),
    (lambda e: e["protoPayload"].update(resourceName="projects/my-project/locations/us-central1/clusters/x\n"),
     "invalid", "protoPayload.resourceName"),
    (lambda e: e["protoPayload"].update(resourceName="clusters/multus-demo"), "invalid",
     "protoPayload.resourceName"),
    (lambda e: (e.pop("resource"), e["protoPayload"].pop("resourceName")), "invalid", "resource.labels"),
    (lambda e: e.update(resource="gke_cluster"), "invalid", "resource"),
])
def test_audit_rejections(mutate: Any, kind: str, field: str) -> None:
    entry = sample("cluster_create_first.json")
    mutate(entry)
    e = rejected(decode_audit, cloudevent(entry, message_id="m-7"))
    assert e.kind == kind, e.message
    assert [p.field for p in e.problems] == [field], e.message
    assert e.event_id == "m-7"


def test_node_pool_label_and_name_must_agree() -> None:
    entry = sample("nodepool_create_last.json")
    entry["resource"]["labels"]["nodepool_name"] = "another-pool"
    e = rejected(decode_audit, cloudevent(entry))
    assert e.kind == "invalid" and "another-pool" in e.message


@pytest.mark.parametrize("payload, kind", [
    (b"\xff\xfe\x00", "encoding"),
    (b"not json", "json"),
    (b'{"protoPayload": {}, "protoPayload": {}}', "json"),
    (b"[1, 2]", "not-audit"),
    (b'"text"', "not-audit"),
    (b"", "json"),
])
def test_audit_payload_errors(payload: bytes, kind: str) -> None:
    e = rejected(decode_audit, cloudevent(payload, message_id="m-1"))
    assert e.kind == kind and e.event_id == "m-1"


def test_audit_payload_size_cap() -> None:
    entry = sample("cluster_create_first.json")
    entry["protoPayload"]["padding"] = "x" * events.MAX_MESSAGE_BYTES
    assert rejected(decode_audit, cloudevent(entry)).kind == "envelope"


# --------------------------------------------------------------------------------------------
# NAD requests and reconcile
# --------------------------------------------------------------------------------------------

def test_decode_nad_request() -> None:
    ev = decode_nad_request(cloudevent((REQUESTS / "full.json").read_bytes(), message_id="n-1"))
    assert isinstance(ev, NadRequestEvent) and ev.event_id == "n-1"
    assert ev.request.key == "team-a~data-plane" and ev.request.verify is True


def test_decode_nad_request_rejection_carries_event_and_cluster() -> None:
    e = rejected(decode_nad_request, cloudevent((REQUESTS / "invalid_many.json").read_bytes(), message_id="n-2"))
    assert e.event_id == "n-2"
    assert e.cluster == ClusterRef("my-project", "us-central1", "multus-demo")
    assert {"name", "mode", "range"} <= {p.field for p in e.problems}
    e = rejected(decode_nad_request, cloudevent((REQUESTS / "invalid_seed_unquoted_range.txt").read_bytes(),
                                                message_id="n-3"))
    assert (e.event_id, e.kind, e.problems[0].field) == ("n-3", "json", "range")
    assert e.cluster == ClusterRef("my-project", "us-central1", "multus-demo")
    e = rejected(decode_nad_request, cloudevent(b"\x80", message_id="n-4"))
    assert (e.event_id, e.kind) == ("n-4", "encoding")


@pytest.mark.parametrize("payload, scope", [
    (None, None), (b"", None), (b"  \n", None), (b"{}", None), (b'{"cluster": null}', None),
    (b'{"cluster": "projects/my-project/zones/us-central1-a/clusters/c1"}',
     ClusterRef("my-project", "us-central1-a", "c1")),
])
def test_decode_reconcile(payload: bytes | None, scope: ClusterRef | None) -> None:
    ev = decode_reconcile(cloudevent(payload, message_id="r-1"))
    assert ev == ReconcileEvent("r-1", scope)


@pytest.mark.parametrize("payload, field", [
    (b'{"cluster": "nope"}', "cluster"),
    (b'{"cluster": "projects/my-project/zones/us-central1-a/clusters/c1\\n"}', "cluster"),
    (b'{"clusters": []}', "clusters"),
    (b"[]", ""),
])
def test_decode_reconcile_rejections(payload: bytes, field: str) -> None:
    e = rejected(decode_reconcile, cloudevent(payload, message_id="r-2"))
    assert e.event_id == "r-2" and [p.field for p in e.problems] == [field]


# --------------------------------------------------------------------------------------------
# Nothing but Rejected escapes (hypothesis, fixed budget, derandomized)
# --------------------------------------------------------------------------------------------

DECODERS = [decode_audit, decode_nad_request, decode_reconcile]
FAST = settings(max_examples=120, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def _precise(e: Rejected) -> None:
    """A rejection must come from an explicit check, not from the safety net that turns an
    unforeseen exception into Rejected (which would hide a decoder bug)."""
    assert e.kind in events.KINDS, e.kind
    assert not e.reason.startswith("undecodable event"), repr(e.__cause__)


def _decodes_or_rejects(ce: Any) -> None:
    for decode in DECODERS:
        try:
            decode(ce)
        except Rejected as e:
            _precise(e)


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _decodes_or_rejects(cloudevent(data))


@FAST
@given(json_values)
def test_arbitrary_json_payloads(value: Any) -> None:
    _decodes_or_rejects(cloudevent(json.dumps(value)))


@FAST
@given(json_values)
def test_arbitrary_cloudevent_data(value: Any) -> None:
    _decodes_or_rejects({"id": "x", "data": value})
    _decodes_or_rejects({"id": "x", "data": {"message": value}})


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


VALID = [sample(n) for n in SAMPLE_NAMES if "rejected" not in EXPECTED[n]]


@settings(max_examples=250, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mutated_valid_entries(data: st.DataObject) -> None:
    """Replace or delete one node anywhere in a valid entry: decoded or Rejected, nothing else."""
    entry = copy.deepcopy(data.draw(st.sampled_from(VALID)))
    path = data.draw(st.sampled_from(_paths(entry)[1:]))
    parent = entry
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values)
    try:
        ev = decode_audit(cloudevent(entry))
    except Rejected as e:
        _precise(e)
        return
    assert ev.action in events.ACTIONS.values() and isinstance(ev.cluster, ClusterRef)
    assert ev.first or ev.last


# --------------------------------------------------------------------------------------------
# Audit entries as GKE writes them (the realistic sandbox reshapes them to the khi captures)
# --------------------------------------------------------------------------------------------

def test_entries_in_the_captured_shapes_decode_and_a_refusal_ends_no_operation() -> None:
    """GoogleCloudPlatform/khi test/logs/gke_audit/ shapes (docs/SANDBOX_GKE.md "An ordinary day"):
    zonal clusters logged in the zones/ form, bare `last` entries (no authenticationInfo, request or
    response; metadata.operationType), v1alpha1 request types, and a request refused at once as
    one ERROR entry without `operation`, which ends nothing the controller waits for."""
    import dataclasses

    from google.cloud import container_v1 as c

    from sandbox.gke.protos import cluster_message, node_pool_message
    from sandbox.gke.realism import Realism
    from sandbox.gke.scenario import NodePoolSpec
    from sandbox.gke.server import GkeSandbox

    sandbox = GkeSandbox(realism=dataclasses.replace(Realism(), own_operation_seconds=600), operation_delay=0.05)
    sandbox.start()
    try:
        zone = "us-central1-a"
        spec = sandbox.cluster_spec("zonal-one", location=zone, labels={"multus-provisioner": "enabled"},
                                    node_pools=(NodePoolSpec("default-pool"),))
        parent = f"projects/{sandbox.scenario.project}/locations/{zone}"
        op = sandbox.world.create_cluster(c.CreateClusterRequest(parent=parent, cluster=cluster_message(spec)))
        assert sandbox.world.wait_operation(op.name, 10)
        with pytest.raises(Exception, match="incompatible operation"):  # GKE's own operation runs now
            sandbox.world.create_node_pool(c.CreateNodePoolRequest(
                parent=f"{parent}/clusters/zonal-one", node_pool=node_pool_message(NodePoolSpec("multus-pool"))))
        entries = [e for e in sandbox.audit_log if "zonal-one" in json.dumps(e)]
    finally:
        sandbox.stop()
    decoded = [decode_audit(cloudevent(e, message_id=f"m{i}")) for i, e in enumerate(entries)]
    first, last, refused = decoded
    ref = ClusterRef(sandbox.scenario.project, zone, "zonal-one")
    assert entries[1]["protoPayload"]["resourceName"].startswith(f"projects/{ref.project}/zones/{zone}/")
    assert "request" not in entries[1]["protoPayload"] and "authenticationInfo" not in entries[1]["protoPayload"]
    assert entries[1]["protoPayload"]["metadata"]["operationType"]
    assert entries[0]["protoPayload"]["request"]["@type"].endswith("v1alpha1.CreateClusterRequest")
    assert (first.action, first.first, first.last, first.cluster) == ("cluster.created", True, False, ref)
    assert first.principal and first.status_code is None and not first.refused
    assert (last.action, last.first, last.last, last.cluster, last.principal) == ("cluster.created", False, True,
                                                                                   ref, None)
    assert last.operation_id == first.operation_id and not last.failed
    assert "operation" not in entries[2] and entries[2]["severity"] == "ERROR"
    assert (refused.action, refused.node_pool, refused.cluster) == ("node_pool.created", "multus-pool", ref)
    assert refused.refused and refused.status_code == 9 and "incompatible operation" in refused.status_message
