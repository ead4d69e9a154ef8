"""Hypothesis fuzzing that tests/test_nad.py and tests/test_events.py do not already do.

Fixed budget, derandomized, no deadline: the same examples run in CI every time (a few seconds).

- The renderer: for any valid request (and for requests whose range is resolved from the node
  pool's secondary range), `render_config` is JSON that re-parses, validates against
  `shared/schemas/ipvlan-conflist.v1.json`, and `render_nad` validates against the NAD CRD's
  own schema; the request itself validates against `nad-request.v1.json`.
- The validator and the published request schema agree on the `cluster` field for any path
  built from plausible and implausible segments (a node pool path was once accepted by the
  validator while the schema refused it).
- The envelope decoder with arbitrary message ids, attributes and base64-ish data: decoded or
  `Rejected` with a known kind, never another exception.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.core import events, nad
from shared.core.errors import Rejected
from shared.core.nad import parse_request, render_config, render_nad, validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "shared" / "schemas"
CLUSTER = "projects/my-project/locations/us-central1/clusters/multus-demo"
BUDGET = settings(max_examples=200, derandomize=True, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CONFLIST = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "ipvlan-conflist.v1.json").read_text()))
REQUEST = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "nad-request.v1.json").read_text()))


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "shared" / "manifests" / "12-crd-network-attachment-definitions.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


CRD = jsonschema.Draft7Validator(_crd_schema())

labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
masters = st.from_regex(r"\A[A-Za-z0-9_.-]{1,15}\Z").filter(lambda m: m not in (".", ".."))


def _network(draw: st.DrawFn, v6: bool) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    bits = 128 if v6 else 32
    prefix = draw(st.integers(48 if v6 else 8, 126 if v6 else 30))
    base = draw(st.integers(0, 2**bits - 1)) >> (bits - prefix) << (bits - prefix)
    return ipaddress.ip_network((base, prefix))


@st.composite
def requests(draw: st.DrawFn, *, with_range: bool = True) -> tuple[dict[str, Any], Any]:
    """(request object, the network its addresses come from)."""
    net = _network(draw, draw(st.booleans()))
    hosts = st.integers(0, net.num_addresses - 1).map(lambda i: str(net.network_address + i))
    obj: dict[str, Any] = {"cluster": CLUSTER, "name": draw(labels)}
    if with_range:
        obj["range"] = str(net)
    optional = {
        "version": st.just(1), "namespace": labels, "master": masters, "mode": st.sampled_from(nad.MODES),
        "gateway": hosts, "mtu": st.integers(nad.MTU_MIN, nad.MTU_MAX), "action": st.just("apply"),
        "request_id": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,40}\Z"), "verify": st.booleans(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            obj[key] = draw(strategy)
    if draw(st.booleans()):
        a, b = sorted([draw(hosts), draw(hosts)], key=ipaddress.ip_address)
        obj["range_start"], obj["range_end"] = a, b
    if draw(st.booleans()):
        sub = draw(st.integers(net.prefixlen, min(net.max_prefixlen, net.prefixlen + 6)))
        subnets = list(net.subnets(new_prefix=sub))[:8]
        obj["exclude"] = [str(s) for s in draw(st.lists(st.sampled_from(subnets), min_size=1, max_size=4,
                                                       unique=True))]
    return obj, net


def _check_rendered(r: Any, range_cidr: str | None = None) -> dict[str, Any]:
    text = render_config(r, range_cidr)
    config = json.loads(text)
    CONFLIST.validate(config)
    assert text == json.dumps(config, sort_keys=True, separators=(",", ":"))  # canonical bytes
    obj = render_nad(r, range_cidr)
    CRD.validate(obj)
    assert obj["spec"]["config"] == text
    assert yaml.safe_load(yaml.safe_dump(obj)) == obj
    return config


@BUDGET
@given(requests())
def test_any_valid_request_renders_a_conflist_that_validates(drawn: tuple[dict[str, Any], Any]) -> None:
    obj, net = drawn
    assert validate(obj) == [], validate(obj)
    REQUEST.validate(obj)
    r = parse_request(json.dumps(obj))
    config = _check_rendered(r)
    ipam = config["plugins"][0]["ipam"]
    assert ipaddress.ip_network(ipam["range"]) == net
    for key in ("range_start", "range_end", "gateway"):
        if key in ipam:
            assert ipaddress.ip_address(ipam[key]) in net
    assert parse_request(r.to_dict()) == r  # what is stored re-validates to the same request


@BUDGET
@given(requests(with_range=False))
def test_range_resolved_from_the_node_pool_renders_and_validates(drawn: tuple[dict[str, Any], Any]) -> None:
    obj, net = drawn
    try:
        r = parse_request(obj)
    except Rejected as e:  # without a range, start/end/exclude/gateway cannot be placed: named, not crashed
        assert {p.field for p in e.problems} <= {"range_start", "range_end", "exclude", "gateway"} | {
            f"exclude[{i}]" for i in range(8)}, e.message
        return
    try:
        config = _check_rendered(r, str(net))
    except Rejected as e:  # a start/end/gateway/exclude outside the pool's range is refused at render time
        assert e.problems, e.message
        return
    assert config["plugins"][0]["ipam"]["range"] == str(net)


segments = st.one_of(
    st.sampled_from(["my-project", "us-central1", "us-central1-a", "multus-demo", "c", "", "..", "A", "x y",
                     "a/b", "c\n", "projects", "clusters", "nodePools", "p1", "\u0441luster", "-x", "x" * 41]),
    st.text(alphabet="abcXYZ019-_./: \n", max_size=12),
)


@BUDGET
@given(st.lists(segments, min_size=1, max_size=8),
       st.sampled_from(["", "//container.googleapis.com/"]), st.booleans())
def test_validator_and_request_schema_agree_on_cluster(parts: list[str], prefix: str, shaped: bool) -> None:
    """The schema's pattern is looser than the validator about segment spelling (project id rules
    are not in it), so: whatever the validator accepts the schema accepts, and whatever the
    schema's shape refuses the validator refuses."""
    if shaped:
        head = ["projects", parts[0], "locations", parts[1 % len(parts)], "clusters", parts[2 % len(parts)]]
        parts = head + (["nodePools", parts[-1]] if len(parts) > 3 else [])
    text = prefix + "/".join(parts)
    obj = {"cluster": text, "name": "n", "range": "10.0.0.0/24"}
    validator_ok = not any(p.field == "cluster" for p in validate(obj))
    schema_ok = REQUEST.is_valid(obj)
    if validator_ok:
        assert schema_ok, text


def test_node_pool_path_is_not_a_cluster() -> None:
    obj = {"cluster": CLUSTER + "/nodePools/multus-pool", "name": "n", "range": "10.0.0.0/24"}
    assert not REQUEST.is_valid(obj)
    assert [p.field for p in validate(obj)] == ["cluster"]


message_ids = st.one_of(st.text(max_size=20), st.integers(), st.none(), st.just("m" * 257))
b64ish = st.one_of(st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()),
                   st.text(alphabet="ABCabc012+/=-_ \n!", max_size=40), st.integers(), st.none())
attributes = st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers()),
                                                  max_size=3), st.lists(st.text(max_size=3), max_size=2))


@BUDGET
@given(ce_id=message_ids, mid=message_ids, data=b64ish, attrs=attributes, as_text=st.booleans())
def test_envelope_decoder_only_rejects(ce_id: Any, mid: Any, data: Any, attrs: Any, as_text: bool) -> None:
    message: dict[str, Any] = {"data": data}
    if mid is not None:
        message["messageId"] = mid
    if attrs is not None:
        message["attributes"] = attrs
    envelope: Any = {"message": message, "subscription": "s"}
    ce = {"id": ce_id, "data": json.dumps(envelope) if as_text else envelope}
    try:
        msg = events.message_from_cloudevent(ce)
    except Rejected as e:
        assert e.kind in events.KINDS and not e.reason.startswith("undecodable event"), e.message
        return
    assert isinstance(msg.data, bytes) and 0 < len(msg.message_id) <= 256
    assert msg.data == base64.b64decode(data or "")
