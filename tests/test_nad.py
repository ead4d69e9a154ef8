"""NAD requests: every validation rule, rendering, schemas, range helpers, properties.

Each rule has at least one case that passes only while the rule exists: a value just inside
the limit is accepted and one just outside is rejected with a problem naming the field.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.core import nad
from shared.core.errors import Rejected
from shared.core.nad import NadRequest, parse_request, render_config, render_nad, validate
from shared.core.refs import ClusterRef

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "samples" / "requests"
CLUSTER = "projects/my-project/locations/us-central1/clusters/multus-demo"
REF = ClusterRef("my-project", "us-central1", "multus-demo")


def req(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"cluster": CLUSTER, "name": "data-plane", "range": "172.16.1.0/24"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def problems_of(obj: Any) -> dict[str, str]:
    """{field: message} of the Rejected that parse_request raises (fails if it does not)."""
    with pytest.raises(Rejected) as info:
        parse_request(obj)
    return {p.field: p.message for p in info.value.problems}


def assert_only(obj: Any, field: str, *words: str) -> None:
    found = problems_of(obj)
    assert list(found) == [field], found
    for word in words:
        assert word in found[field], found


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["name", "namespace"])
@pytest.mark.parametrize("value", ["Data", "data_plane", "-data", "data-", "a" * 64, "", "dáta", "a.b", 7, None])
def test_dns1123_labels_rejected(field: str, value: Any) -> None:
    if value is None and field == "namespace":
        assert parse_request(req(namespace=None)).namespace == "default"
        return
    assert_only(req(**{field: value}), field, "label" if value is not None else "required")


@pytest.mark.parametrize("value", ["a", "a" * 63, "team-a", "0ab", "a-0"])
def test_dns1123_labels_accepted(value: str) -> None:
    r = parse_request(req(name=value, namespace=value))
    assert (r.name, r.namespace, r.key) == (value, value, f"{value}~{value}")


def test_name_and_cluster_are_required_and_namespace_defaults() -> None:
    found = problems_of({"range": "10.0.0.0/24"})
    assert set(found) == {"cluster", "name"}
    r = parse_request({"cluster": CLUSTER, "name": "n"})
    assert (r.namespace, r.master, r.mode, r.action, r.range, r.verify) == ("default", "eth1", "l2", "apply",
                                                                             None, False)


# --------------------------------------------------------------------------------------------
# master, mode, action, request_id, verify, version, mtu
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["eth1", "e" * 15, "eth1.100", "bond0_1", "ens4-v"])
def test_master_accepted(value: str) -> None:
    assert parse_request(req(master=value)).master == value


@pytest.mark.parametrize("value", ["e" * 16, "", ".", "..", "eth 1", "eth1;id", "eth/1", "eth1\n", 1])
def test_master_rejected(value: Any) -> None:
    assert_only(req(master=value), "master", "interface")


@pytest.mark.parametrize("mode", ["l2", "l3", "l3s"])
def test_modes_accepted(mode: str) -> None:
    assert json.loads(render_config(parse_request(req(mode=mode))))["plugins"][0]["mode"] == mode


@pytest.mark.parametrize("mode", ["L2", "l4", "bridge", "", 2])
def test_modes_rejected(mode: Any) -> None:
    assert_only(req(mode=mode), "mode", "l2, l3, l3s")


@pytest.mark.parametrize("action", ["apply", "delete"])
def test_actions_accepted(action: str) -> None:
    assert parse_request(req(action=action)).action == action


@pytest.mark.parametrize("action", ["remove", "APPLY", "", None])
def test_actions_rejected(action: Any) -> None:
    if action is None:  # null means "absent": the default
        assert parse_request(req(action=None)).action == "apply"
        return
    assert_only(req(action=action), "action", "apply, delete")


@pytest.mark.parametrize("value", ["3f6c1e0a-9b2d-4c55-8e71-0d9a7b3c2e10", "a", "ticket:42.b_c", "A" * 128])
def test_request_id_accepted(value: str) -> None:
    assert parse_request(req(request_id=value)).request_id == value


@pytest.mark.parametrize("value", ["", "A" * 129, "has space", "-lead", "q\"uote", "a\nb", 42])
def test_request_id_rejected(value: Any) -> None:
    assert_only(req(request_id=value), "request_id")


def test_verify_is_a_boolean() -> None:
    assert parse_request(req(verify=True)).verify is True
    assert parse_request(req(verify=False)).verify is False
    for bad in ("yes", 1, "true"):
        assert_only(req(verify=bad), "verify", "true or false")


def test_version_only_1() -> None:
    assert parse_request(req(version=1)).name == "data-plane"
    for bad in (2, 0, "1", True, 1.0):
        assert_only(req(version=bad), "version", "version 1")


@pytest.mark.parametrize("mtu", [68, 1460, 8896])
def test_mtu_accepted(mtu: int) -> None:
    r = parse_request(req(mtu=mtu))
    assert json.loads(render_config(r))["plugins"][0]["mtu"] == mtu


@pytest.mark.parametrize("mtu", [67, 8897, 0, -1, "1500", 1500.0, True])
def test_mtu_rejected(mtu: Any) -> None:
    assert_only(req(mtu=mtu), "mtu", "68..8896")


def test_unknown_fields_are_named() -> None:
    found = problems_of(req(colour="blue", Name="x"))
    assert set(found) == {"colour", "Name"}
    assert all(m == "unknown field" for m in found.values())


# --------------------------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------------------------

def test_cluster_forms_normalise_to_one_ref() -> None:
    zonal = parse_request(req(cluster="projects/my-project/zones/us-central1-a/clusters/c1"))
    assert zonal.cluster == ClusterRef("my-project", "us-central1-a", "c1")
    assert zonal.to_dict()["cluster"] == "projects/my-project/locations/us-central1-a/clusters/c1"
    assert parse_request(req()).cluster == REF


@pytest.mark.parametrize("value", ["my-cluster", "projects/p/locations/us-central1/clusters/c", 12,
                                   "projects/my-project/locations/us-central1/clusters/C_1"])
def test_cluster_rejected(value: Any) -> None:
    with pytest.raises(Rejected) as info:
        parse_request(req(cluster=value))
    assert [p.field for p in info.value.problems] == ["cluster"]
    assert info.value.cluster is None


def test_rejection_carries_the_cluster_when_it_parsed() -> None:
    with pytest.raises(Rejected) as info:
        parse_request(req(name="BAD"))
    assert info.value.cluster == REF
    # even when the JSON itself is broken, the cluster it named is recovered for the record
    with pytest.raises(Rejected) as info:
        parse_request((SAMPLES / "invalid_seed_unquoted_range.txt").read_bytes())
    assert info.value.cluster == REF


# --------------------------------------------------------------------------------------------
# CIDRs and addresses
# --------------------------------------------------------------------------------------------

def test_range_host_bits_suggest_the_network() -> None:
    assert_only(req(range="172.16.1.5/24"), "range", "host bits", "did you mean 172.16.1.0/24")
    assert_only(req(range="fd00::5/64"), "range", "did you mean fd00::/64")


@pytest.mark.parametrize("value", ["172.16.1.0", "172.16.1.0/33", "172.016.1.0/24", " 172.16.1.0/24",
                                   "172.16.1.0/24\n", "10.0.0.0/8,10.1.0.0/16", "fd00::/129", 17216, ["10.0.0.0/8"]])
def test_range_malformed(value: Any) -> None:
    assert_only(req(range=value), "range")


def test_range_name_instead_of_cidr_is_explained() -> None:
    assert_only(req(range="SECONDARY_RANGE_NAME"), "range", "range *name*", "CIDR")


def test_seed_example_unquoted_range_is_rejected_about_range() -> None:
    """The seed's NAD example pastes `"range": SECONDARY_RANGE_NAME` unquoted."""
    found = problems_of((SAMPLES / "invalid_seed_unquoted_range.txt").read_bytes())
    assert list(found) == ["range"]
    assert "SECONDARY_RANGE_NAME" in found["range"] and "CIDR" in found["range"]
    # and the seed's conflist exactly as printed in the how-to
    seed = (ROOT.parent / "shared" / "seed" / "000_6a61b6a51d9975db.txt")
    if seed.exists():
        text = seed.read_text()
        start = text.index("config: '{") + len("config: '")
        config = text[start:text.index("}'", start) + 1]
        assert '"range": SECONDARY_RANGE_NAME' in config
        assert list(problems_of(config)) == ["range"]


@pytest.mark.parametrize("value", ["10.0.0.0/30", "172.16.1.0/24", "10.0.0.0/8", "fd00:10::/64", "fd00::/126"])
def test_range_accepted(value: str) -> None:
    assert parse_request(req(range=value)).range == value


@pytest.mark.parametrize("value", ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127", "fd00::1/128"])
def test_range_too_small(value: str) -> None:
    assert_only(req(range=value), "range", "too small")


def test_ipv6_is_canonicalised() -> None:
    r = parse_request(req(range="FD00:0010:0000::/64", gateway="FD00:10::1"))
    assert (r.range, r.gateway) == ("fd00:10::/64", "fd00:10::1")


def test_range_start_end_order_and_containment() -> None:
    ok = parse_request(req(range_start="172.16.1.10", range_end="172.16.1.10"))
    assert ok.range_start == ok.range_end == "172.16.1.10"
    assert_only(req(range_start="172.16.1.20", range_end="172.16.1.10"), "range_end", "must not be after")
    assert_only(req(range_start="172.16.2.1"), "range_start", "not inside range 172.16.1.0/24")
    assert_only(req(range_end="172.16.0.255"), "range_end", "not inside")
    assert_only(req(range_start="fd00::1"), "range_start", "not inside")
    assert_only(req(range_start="172.16.1.300"), "range_start", "not a valid IP")
    assert_only(req(range_end="172.16.1.0/24"), "range_end", "IP address")


def test_exclude_rules() -> None:
    ok = parse_request(req(exclude=["172.16.1.0/28", "172.16.1.255/32"]))
    assert ok.exclude == ("172.16.1.0/28", "172.16.1.255/32")
    assert_only(req(exclude=["172.16.2.0/28"]), "exclude[0]", "not inside")
    assert_only(req(exclude=["172.16.1.0/28", "172.16.1.5/28"]), "exclude[1]", "did you mean 172.16.1.0/28")
    assert_only(req(exclude="172.16.1.0/28"), "exclude", "list")
    assert_only(req(exclude=["172.16.1.0/32"] * 65), "exclude", "at most 64")
    assert parse_request(req(exclude=["172.16.1.0/32"] * 64)).exclude[63] == "172.16.1.0/32"
    assert_only(req(exclude=[None]), "exclude[0]")


def test_gateway_inside_range() -> None:
    assert parse_request(req(gateway="172.16.1.1")).gateway == "172.16.1.1"
    assert_only(req(gateway="172.16.2.1"), "gateway", "not inside")
    assert_only(req(gateway="fd00::1"), "gateway", "not inside")


def test_addresses_are_checked_even_without_a_range() -> None:
    r = parse_request(req(range=None, range_start="10.0.0.5", gateway="10.0.0.1"))
    assert r.range is None
    assert_only(req(range=None, gateway="ten"), "gateway")


def test_every_problem_is_collected() -> None:
    found = problems_of((SAMPLES / "invalid_many.json").read_bytes())
    assert set(found) == {"colour", "name", "namespace", "master", "mode", "range", "mtu"}


# --------------------------------------------------------------------------------------------
# Raw input: size, encoding, JSON strictness
# --------------------------------------------------------------------------------------------

def test_size_limit_checked_before_parsing() -> None:
    body = json.dumps(req())
    at_limit = body + " " * (nad.MAX_REQUEST_BYTES - len(body))
    assert parse_request(at_limit.encode()).name == "data-plane"
    with pytest.raises(Rejected) as info:
        parse_request((at_limit + " ").encode())
    assert info.value.kind == "too-large" and "65537 bytes" in info.value.message
    # garbage over the limit: the size is reported, not a JSON error (nothing was parsed)
    with pytest.raises(Rejected) as info:
        parse_request(b"{" * (nad.MAX_REQUEST_BYTES + 1))
    assert info.value.kind == "too-large"
    with pytest.raises(Rejected) as info:
        parse_request({**req(), "name": "x" * nad.MAX_REQUEST_BYTES})
    assert info.value.kind == "too-large"


@pytest.mark.parametrize("raw, kind, field", [
    (b'{"cluster": "' + CLUSTER.encode() + b'", "name": "n", "mtu": NaN}', "json", "mtu"),
    (b'{"cluster": "' + CLUSTER.encode() + b'", "name": "n", "mtu": Infinity}', "json", "mtu"),
    (b'{"name": "a", "name": "b"}', "json", "name"),
    (b"\xff\xfe{}", "encoding", ""),
    (b"", "json", ""),
    (b"[" * 50000, "json", ""),
    (b'{"name": "n",}', "json", ""),
])
def test_strict_json(raw: bytes, kind: str, field: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_request(raw)
    assert info.value.kind == kind
    assert [p.field for p in info.value.problems] == [field]


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"1", b"null", b"true"])
def test_non_object_rejected(raw: bytes) -> None:
    assert problems_of(raw) == {"": problems_of(raw)[""]}
    assert "expected a JSON object" in problems_of(raw)[""]


def test_str_bytes_and_mapping_agree() -> None:
    obj = json.loads((SAMPLES / "full.json").read_text())
    a = parse_request(json.dumps(obj))
    assert a == parse_request(json.dumps(obj).encode()) == parse_request(obj)


def test_parse_request_rejects_other_types() -> None:
    with pytest.raises(Rejected):
        parse_request(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The dataclass
# --------------------------------------------------------------------------------------------

def test_round_trip_through_to_dict() -> None:
    for path in SAMPLES.glob("*.json"):
        if path.name.startswith("invalid"):
            continue
        r = parse_request(path.read_bytes())
        d = r.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert parse_request(d) == r
        assert validate(d) == []


def test_direct_construction_is_validated() -> None:
    with pytest.raises(Rejected) as info:
        NadRequest(cluster=REF, name="Bad_Name", master="eth1;reboot")
    assert {p.field for p in info.value.problems} == {"name", "master"}
    with pytest.raises(Rejected):
        NadRequest(cluster="projects/x", name="ok")  # type: ignore[arg-type]
    assert NadRequest(cluster=REF, name="ok", exclude=["10.0.0.0/30"], range="10.0.0.0/24").exclude == \
        ("10.0.0.0/30",)


def test_with_range() -> None:
    r = parse_request(req(range=None, gateway="172.16.1.1", exclude=["172.16.1.0/30"]))
    resolved = r.with_range("172.16.0.0/16")
    assert resolved.range == "172.16.0.0/16" and r.range is None
    with pytest.raises(Rejected) as info:
        r.with_range("10.0.0.0/24")
    assert {p.field for p in info.value.problems} == {"gateway", "exclude[0]"}
    with pytest.raises(Rejected) as info:
        r.with_range("172.16.1.1/24")
    assert [p.field for p in info.value.problems] == ["range"]


def test_validate_is_pure_and_total() -> None:
    assert validate(req()) == []
    assert [p.field for p in validate([])] == [""]  # type: ignore[arg-type]
    obj = req(name="X")
    before = json.dumps(obj, sort_keys=True)
    validate(obj)
    assert json.dumps(obj, sort_keys=True) == before


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

FULL_CONFIG = (
    '{"cniVersion":"0.3.1","name":"data-plane","plugins":[{"ipam":{"exclude":["172.16.1.0/28",'
    '"172.16.1.240/28"],"gateway":"172.16.1.1","range":"172.16.1.0/24","range_end":"172.16.1.200",'
    '"range_start":"172.16.1.10","type":"whereabouts"},"master":"eth1","mode":"l2","mtu":1460,"type":"ipvlan"}]}'
)


def test_render_full_request_exactly() -> None:
    r = parse_request((SAMPLES / "full.json").read_bytes())
    obj = render_nad(r)
    assert obj == {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": "data-plane",
            "namespace": "team-a",
            "labels": {"app.kubernetes.io/managed-by": "multus-provisioner"},
            "annotations": {
                "multus-provisioner.io/cluster": "projects/my-project/locations/us-central1-a/clusters/zonal-demo",
                "multus-provisioner.io/request-id": "3f6c1e0a-9b2d-4c55-8e71-0d9a7b3c2e10",
            },
        },
        "spec": {"config": FULL_CONFIG},
    }
    assert nad.MANAGED_BY == ("app.kubernetes.io/managed-by", "multus-provisioner")


def test_render_minimal_has_only_what_was_asked() -> None:
    r = parse_request(req())
    obj = render_nad(r)
    assert nad.REQUEST_ID_ANNOTATION not in obj["metadata"]["annotations"]
    config = json.loads(obj["spec"]["config"])
    assert config == {"cniVersion": "0.3.1", "name": "data-plane", "plugins": [
        {"type": "ipvlan", "master": "eth1", "mode": "l2",
         "ipam": {"type": "whereabouts", "range": "172.16.1.0/24"}}]}


def test_render_needs_a_range() -> None:
    r = parse_request(req(range=None))
    with pytest.raises(Rejected) as info:
        render_nad(r)
    assert [p.field for p in info.value.problems] == ["range"]
    assert info.value.cluster == REF
    resolved = json.loads(render_config(r, "10.20.0.0/16"))
    assert resolved["plugins"][0]["ipam"]["range"] == "10.20.0.0/16"
    with pytest.raises(Rejected):
        render_config(r, "10.20.0.1/16")
    # an explicit range in the request wins over the resolved one
    assert json.loads(render_config(parse_request(req()), "10.20.0.0/16"))["plugins"][0]["ipam"]["range"] == \
        "172.16.1.0/24"


def test_render_is_deterministic() -> None:
    obj = json.loads((SAMPLES / "full.json").read_text())
    shuffled = dict(reversed(list(obj.items())))
    a, b = render_nad(parse_request(obj)), render_nad(parse_request(json.dumps(shuffled)))
    assert a == b and a["spec"]["config"] == FULL_CONFIG
    assert json.dumps(a, sort_keys=True) == json.dumps(render_nad(parse_request(obj)), sort_keys=True)


def _nad_crd_schema() -> dict[str, Any]:
    """The NAD CRD's openAPIV3Schema, from the bundle's manifest (copied from the seed)."""
    crd = yaml.safe_load((ROOT / "shared" / "manifests" / "12-crd-network-attachment-definitions.yaml").read_text())
    assert crd["metadata"]["name"] == "network-attachment-definitions.k8s.cni.cncf.io"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _schema(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "shared" / "schemas" / name).read_text())


RENDERABLE = ["full.json", "ipv6.json"]


@pytest.mark.parametrize("sample", RENDERABLE)
def test_rendered_object_validates_against_crd_schema(sample: str) -> None:
    schema = _nad_crd_schema()
    obj = render_nad(parse_request((SAMPLES / sample).read_bytes()))
    jsonschema.validate(obj, schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema does check: config must be a string
        jsonschema.validate({**obj, "spec": {"config": json.loads(obj["spec"]["config"])}}, schema)


@pytest.mark.parametrize("sample", RENDERABLE)
def test_rendered_config_validates_against_conflist_schema(sample: str) -> None:
    schema = _schema("ipvlan-conflist.v1.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    config = json.loads(render_nad(parse_request((SAMPLES / sample).read_bytes()))["spec"]["config"])
    jsonschema.Draft202012Validator(schema).validate(config)
    broken = json.loads(json.dumps(config))
    broken["plugins"][0]["ipam"]["range"] = "SECONDARY_RANGE_NAME"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)


def test_request_schema_agrees_with_the_validator() -> None:
    schema = _schema("nad-request.v1.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    assert set(schema["properties"]) == set(nad.FIELDS)
    assert set(schema["required"]) == {"cluster", "name"}
    for path in SAMPLES.glob("*.json"):
        obj = json.loads(path.read_text())
        schema_ok = v.is_valid(obj)
        assert schema_ok == (validate(obj) == []), path.name
    for bad in (req(mode="l4"), req(colour=1), req(mtu=9000), req(master="e" * 16), req(name="A")):
        assert not v.is_valid(bad) and validate(bad)


# --------------------------------------------------------------------------------------------
# Range helpers
# --------------------------------------------------------------------------------------------

def test_parse_network() -> None:
    assert nad.parse_network("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert isinstance(nad.parse_network("fd00::/64"), ipaddress.IPv6Network)
    with pytest.raises(Rejected) as info:
        nad.parse_network("10.0.0.1/8", field="exclude[0]")
    assert info.value.problems[0].field == "exclude[0]" and "10.0.0.0/8" in info.value.message


def test_range_within() -> None:
    assert nad.range_within("172.16.1.0/24", "172.16.0.0/16")
    assert nad.range_within("172.16.0.0/16", "172.16.0.0/16")
    assert not nad.range_within("172.16.0.0/16", "172.16.1.0/24")
    assert not nad.range_within("10.0.0.0/24", "172.16.0.0/16")
    assert not nad.range_within("fd00::/64", "0.0.0.0/0")
    with pytest.raises(Rejected):
        nad.range_within("172.16.1.1/24", "172.16.0.0/16")


def test_ranges_overlap() -> None:
    assert nad.ranges_overlap("172.16.1.0/24", "172.16.0.0/16")
    assert nad.ranges_overlap("172.16.1.0/26", "172.16.1.0/27")
    assert not nad.ranges_overlap("172.16.1.0/26", "172.16.1.64/26")
    assert not nad.ranges_overlap("fd00::/48", "0.0.0.0/0")
    assert nad.ranges_overlap("fd00::/48", "fd00:0:0:1::/64")
    with pytest.raises(Rejected):
        nad.ranges_overlap("172.16.1.1/24", "172.16.0.0/16")


def test_config_range_reads_nads_back() -> None:
    r = parse_request((SAMPLES / "full.json").read_bytes())
    assert nad.config_range(render_nad(r)) == ("eth1", "172.16.1.0/24")
    single = {"spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": "ipvlan", "master": "eth2",
                                             "ipam": {"type": "whereabouts", "range": "10.1.0.0/24"}})}}
    assert nad.config_range(single) == ("eth2", "10.1.0.0/24")
    ranges = {"spec": {"config": json.dumps({"plugins": [{"type": "macvlan", "ipam": {
        "type": "whereabouts", "ipRanges": [{"range": "10.2.0.0/24"}]}}]})}}
    assert nad.config_range(ranges) == ("", "10.2.0.0/24")
    for broken in ({}, {"spec": {}}, {"spec": {"config": "{not json"}}, {"spec": {"config": "[]"}},
                   {"spec": {"config": json.dumps({"plugins": [{"type": "bridge", "ipam": {"type": "dhcp"}}]})}}):
        assert nad.config_range(broken) is None


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
masters = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}\Z")


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        prefix = draw(st.integers(8, 28))
        net = ipaddress.ip_network((draw(st.integers(0, 2**32 - 1)) >> (32 - prefix) << (32 - prefix), prefix))
    else:
        prefix = draw(st.integers(48, 120))
        net = ipaddress.ip_network((draw(st.integers(0, 2**128 - 1)) >> (128 - prefix) << (128 - prefix), prefix))
    hosts = st.integers(0, net.num_addresses - 1).map(lambda i: net.network_address + i)
    obj: dict[str, Any] = {"cluster": CLUSTER, "name": draw(labels), "range": str(net)}
    if draw(st.booleans()):
        obj["namespace"] = draw(labels)
    if draw(st.booleans()):
        obj["master"] = draw(masters.filter(lambda m: m not in (".", "..")))
    if draw(st.booleans()):
        obj["mode"] = draw(st.sampled_from(nad.MODES))
    if draw(st.booleans()):
        a, b = sorted([draw(hosts), draw(hosts)])
        obj["range_start"], obj["range_end"] = str(a), str(b)
    if draw(st.booleans()):
        obj["gateway"] = str(draw(hosts))
    if draw(st.booleans()):
        sub = draw(st.integers(net.prefixlen, net.max_prefixlen))
        obj["exclude"] = [str(next(net.subnets(new_prefix=sub)))]
    if draw(st.booleans()):
        obj["mtu"] = draw(st.integers(nad.MTU_MIN, nad.MTU_MAX))
    return obj


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_requests())
def test_property_config_parses_back_with_the_same_values(obj: dict[str, Any]) -> None:
    r = parse_request(json.dumps(obj))
    rendered = render_nad(r)
    config = json.loads(rendered["spec"]["config"])
    plugin = config["plugins"][0]
    assert config["name"] == obj["name"] == rendered["metadata"]["name"]
    assert plugin["master"] == obj.get("master", "eth1")
    assert plugin["mode"] == obj.get("mode", "l2")
    assert plugin.get("mtu") == obj.get("mtu")
    ipam = plugin["ipam"]
    for key in ("range", "range_start", "range_end", "gateway"):
        assert ipam.get(key) == obj.get(key)
    assert ipam.get("exclude") == obj.get("exclude")
    assert rendered["spec"]["config"] == render_config(parse_request(r.to_dict()))


INJECTIONS = [
    'a", "type": "bridge', "eth1\nmode: l3", "x\r\n---\nkind: Secret", "$(reboot)", "`id`", "eth1; rm -rf /",
    "{{ .Values }}", "a'b", "\\u0022", "\u202e", "a\x00b", "'; DROP TABLE nads; --", "- item", "key: value",
]
STRING_FIELDS = ["name", "namespace", "master", "mode", "range", "range_start", "range_end", "gateway",
                 "action", "request_id"]


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("evil", INJECTIONS)
def test_injection_strings_are_rejected_by_field(field: str, evil: str) -> None:
    found = problems_of(req(**{field: evil}))
    assert field in found


@settings(max_examples=200, derandomize=True, deadline=None)
@given(field=st.sampled_from([*STRING_FIELDS, "exclude"]), text=st.text(max_size=40))
def test_property_any_string_is_rejected_or_inert(field: str, text: str) -> None:
    """Whatever string a field holds, it is either rejected (naming the field) or comes out of
    the renderer as exactly that JSON string value, and the YAML of the object reads back equal."""
    value: Any = [text] if field == "exclude" else text
    try:
        r = parse_request(req(**{field: value}))
    except Rejected as e:
        assert any(p.field.startswith(field) for p in e.problems), e.message
        return
    obj = render_nad(r)
    assert yaml.safe_load(yaml.safe_dump(obj)) == obj
    config = json.loads(obj["spec"]["config"])
    rendered = {**config["plugins"][0], **config["plugins"][0]["ipam"], "name": config["name"],
                "namespace": obj["metadata"]["namespace"], "action": r.action, "request_id": r.request_id}
    expected = r.to_dict()[field]
    got = rendered["exclude" if field == "exclude" else field]
    assert got == expected
    assert json.loads(json.dumps(got)) == expected


def test_canonical_forms_are_what_renders() -> None:
    r = parse_request(req(range="172.16.1.0/24", range_start="172.16.1.9"))
    assert isinstance(r, NadRequest) and r.range_start == "172.16.1.9"


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_samples_decode_as_their_names_say(path: Path) -> None:
    if path.name.startswith("invalid"):
        with pytest.raises(Rejected):
            parse_request(path.read_bytes())
    else:
        assert parse_request(path.read_bytes()).cluster.project == "my-project"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(field=st.sampled_from([*nad.FIELDS, "other"]), value=json_values)
def test_property_any_value_in_any_field_is_valid_or_rejected_by_field(field: str, value: Any) -> None:
    obj = req(**{field: value})
    problems = validate(obj)
    try:
        r = parse_request(obj)
    except Rejected as e:
        assert e.problems and {p.field for p in e.problems} == {p.field for p in problems}
        assert all(p.field.startswith(field) or p.field in ("range_end",) for p in e.problems), e.message
        return
    assert problems == []
    assert parse_request(r.to_dict()) == r


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.binary(max_size=200))
def test_property_arbitrary_bytes_only_reject(data: bytes) -> None:
    try:
        parse_request(data)
    except Rejected as e:
        assert e.kind in ("json", "encoding", "invalid", "too-large")
