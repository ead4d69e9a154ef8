"""NAD requests: validate a request, render its NetworkAttachmentDefinition, check ranges.

A request is user input that ends up on a cluster, so every field is checked here, every
problem is collected (not just the first) and named by its field, and the CNI config is
built as data and encoded with `json.dumps` -- never by pasting text, which is how the seed's
own example ended up with an unquoted `"range": SECONDARY_RANGE_NAME`. The rules are listed in
`docs/NAD_REQUESTS.md` and the JSON Schema `shared/schemas/nad-request.v1.json`.

Pure module: standard library only, cheap to import on a cold start.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.core.errors import NotOurs, Problem, Rejected, RejectionKind
from shared.core.names import is_dns_label
from shared.core.refs import ClusterRef, parse_resource_name

MAX_REQUEST_BYTES = 64 * 1024
MANAGED_BY = ("app.kubernetes.io/managed-by", "multus-provisioner")
REQUEST_ID_ANNOTATION = "multus-provisioner.io/request-id"
CLUSTER_ANNOTATION = "multus-provisioner.io/cluster"
API_VERSION = "k8s.cni.cncf.io/v1"
KIND = "NetworkAttachmentDefinition"
CNI_VERSION = "0.3.1"
VERSION = 1

MODES = ("l2", "l3", "l3s")
ACTIONS = ("apply", "delete")
MTU_MIN, MTU_MAX = 68, 8896  # 8896: the largest MTU a GCP VPC network allows
MAX_EXCLUDES = 64
FIELDS = ("version", "cluster", "name", "namespace", "master", "mode", "range", "range_start",
          "range_end", "exclude", "gateway", "mtu", "action", "request_id", "verify")

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# Idempotency keys: UUIDs, ULIDs, "ticket-123", "team:req.7"... nothing that needs escaping.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_CIDR_SHAPE = re.compile(r"^[0-9A-Fa-f.:]+/[0-9]{1,3}$")
_ADDR_SHAPE = re.compile(r"^[0-9A-Fa-f.:]+$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# --------------------------------------------------------------------------------------------
# Strict JSON
# --------------------------------------------------------------------------------------------

class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_KEY_BEFORE = re.compile(r'"((?:[^"\\]|\\.){1,64})"\s*:\s*$')


def _field_at(text: str, pos: int) -> str:
    """The key whose value starts at `pos`, if the error is in a value; "" otherwise."""
    m = _KEY_BEFORE.search(text[max(0, pos - 80):pos])
    return m.group(1) if m else ""


def load_json(raw: bytes | str, *, max_bytes: int = MAX_REQUEST_BYTES, what: str = "request") -> Any:
    """Decode JSON strictly: size first, UTF-8, no NaN/Infinity, no duplicate keys.

    Raises `Rejected` (kind "too-large", "encoding" or "json") whose problem names the field
    when the error sits in a value, e.g. `range` for the seed's unquoted SECONDARY_RANGE_NAME.
    """
    size = len(raw) if isinstance(raw, bytes | bytearray) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise Rejected(f"invalid {what}", [Problem("", f"{size} bytes is over the {max_bytes}-byte limit")],
                       kind=RejectionKind.TOO_LARGE)
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejected(f"invalid {what}", [Problem("", f"not UTF-8 (byte {e.start})")],
                           kind=RejectionKind.ENCODING) from None
    else:
        text = raw
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as e:
        raise Rejected(f"invalid {what}", [Problem(e.key, "duplicate key")], kind=RejectionKind.JSON) from None
    except json.JSONDecodeError as e:
        key = _field_at(text, e.pos)
        msg = f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        token = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[e.pos:e.pos + 64])
        if key and token:
            msg += f" (bare word {token.group(0)!r}: values must be quoted JSON strings"
            if key == "range":
                msg += '; range takes a CIDR such as "172.16.1.0/24", not a secondary range name'
            msg += ")"
        raise Rejected(f"invalid {what}", [Problem(key, msg)], kind=RejectionKind.JSON) from None
    except ValueError as e:  # NaN / Infinity, or a number too long for int()
        raise Rejected(f"invalid {what}", [Problem(_field_hint(text, str(e)), f"not valid JSON: {e}")],
                       kind=RejectionKind.JSON) from None
    except RecursionError:
        raise Rejected(f"invalid {what}", [Problem("", "not valid JSON: nested too deeply")],
                       kind=RejectionKind.JSON) from None


def _field_hint(text: str, _message: str) -> str:
    for const in ("NaN", "-Infinity", "Infinity"):
        idx = text.find(const)
        if idx >= 0:
            return _field_at(text, idx)
    return ""


# --------------------------------------------------------------------------------------------
# Addresses and networks
# --------------------------------------------------------------------------------------------

def parse_network(text: object, *, field: str = "range") -> Network:
    """A CIDR, strictly: host bits must be zero (`172.16.1.5/24` -> "did you mean 172.16.1.0/24").

    Raises `Rejected` with one problem naming `field`.
    """
    problem = _network_problem(text, field)
    if problem:
        raise Rejected("invalid network", [problem])
    return ipaddress.ip_network(text)  # type: ignore[arg-type]


def _network_problem(text: object, field: str) -> Problem | None:
    if not isinstance(text, str):
        return Problem(field, f"expected a CIDR string like \"172.16.1.0/24\", got {_type(text)}")
    if not _CIDR_SHAPE.fullmatch(text):
        hint = ""
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", text):
            hint = " (that looks like a secondary range *name*; give its CIDR, or omit range to use " \
                   "the node pool's secondary pod range)"
        return Problem(field, f"expected a CIDR like \"172.16.1.0/24\" or \"fd00:10::/64\", got "
                              f"{_show(text)}{hint}")
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return Problem(field, f"{_show(text)} is not a valid CIDR ({e})")
        return Problem(field, f"{_show(text)} has host bits set; did you mean {loose}?")
    return None


def _parse_address(text: object, field: str) -> tuple[Address | None, Problem | None]:
    if not isinstance(text, str):
        return None, Problem(field, f"expected an IP address string, got {_type(text)}")
    if not _ADDR_SHAPE.fullmatch(text):
        return None, Problem(field, f"expected an IP address like \"172.16.1.10\", got {_show(text)}")
    try:
        return ipaddress.ip_address(text), None
    except ValueError:
        return None, Problem(field, f"{_show(text)} is not a valid IP address")


def _lenient_network(text: object) -> Network | None:
    """A range as found on a cluster (maybe written by hand): `a.b.c.d/n`, host bits allowed,
    or Whereabouts' `start-end/n` shorthand. None when it cannot be read."""
    if not isinstance(text, str):
        return None
    if "-" in text and "/" in text:
        start, _, rest = text.partition("-")
        text = start + "/" + rest.rsplit("/", 1)[1]
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def range_within(inner: str | Network, outer: str | Network) -> bool:
    """Is `inner` a subnet of (or equal to) `outer`? Different IP families are never within."""
    a = inner if isinstance(inner, ipaddress.IPv4Network | ipaddress.IPv6Network) \
        else parse_network(inner, field="range")
    b = outer if isinstance(outer, ipaddress.IPv4Network | ipaddress.IPv6Network) \
        else parse_network(outer, field="range")
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]


def ranges_overlap(x: str | Network, y: str | Network) -> bool:
    """Do two ranges share an address? Two NADs on one master whose Whereabouts ranges overlap
    would hand out the same addresses on one L2 segment. Different IP families never overlap."""
    a = x if isinstance(x, ipaddress.IPv4Network | ipaddress.IPv6Network) else _range_network(x)
    b = y if isinstance(y, ipaddress.IPv4Network | ipaddress.IPv6Network) else _range_network(y)
    return a.version == b.version and a.overlaps(b)


@functools.lru_cache(maxsize=4096)
def _range_network(text: str) -> Network:
    """`parse_network` of a stored range, kept: a request is compared with every other NAD of its
    master (a cluster's few distinct ranges, parsed once per process instead of once per pair;
    measured 1.3 ms a request at 60 NADs on one master). A bad range raises, and is not kept."""
    return parse_network(text, field="range")


# --------------------------------------------------------------------------------------------
# The request
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NadRequest:
    """One validated request. Constructing it directly validates too (the workflow builds some
    from policy), so no unchecked string can reach a cluster."""

    cluster: ClusterRef
    name: str
    namespace: str = "default"
    master: str = "eth1"
    mode: str = "l2"
    range: str | None = None
    range_start: str | None = None
    range_end: str | None = None
    exclude: tuple[str, ...] = field(default_factory=tuple)
    gateway: str | None = None
    mtu: int | None = None
    action: str = "apply"
    request_id: str | None = None
    verify: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.exclude, list):
            object.__setattr__(self, "exclude", tuple(self.exclude))
        if not isinstance(self.cluster, ClusterRef):
            raise Rejected("invalid NAD request", [Problem("cluster", "expected a ClusterRef")])
        problems = validate(self.to_dict())
        if problems:
            raise Rejected("invalid NAD request", problems, cluster=self.cluster)

    @property
    def key(self) -> str:
        """The Firestore document id under the cluster: `{namespace}~{name}`."""
        return f"{self.namespace}~{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (Firestore, Pub/Sub); `parse_request(req.to_dict()) == req`."""
        out: dict[str, Any] = {
            "version": VERSION,
            "cluster": self.cluster.path,
            "name": self.name,
            "namespace": self.namespace,
            "master": self.master,
            "mode": self.mode,
            "action": self.action,
            "verify": self.verify,
        }
        for name in ("range", "range_start", "range_end", "gateway", "mtu", "request_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.exclude:
            out["exclude"] = list(self.exclude)
        return out

    def with_range(self, cidr: str) -> NadRequest:
        """This request with its range resolved (e.g. the node pool's secondary pod range).

        Raises `Rejected` if the CIDR is bad or the request's start/end/exclude/gateway fall
        outside it.
        """
        return replace(self, range=str(parse_network(cidr, field="range")))


def _canonical_cidr(text: str) -> str:
    return str(ipaddress.ip_network(text))


def _canonical_ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def validate(obj: Mapping[str, Any]) -> list[Problem]:
    """Every problem with a request object, each named by its field. Pure; [] means valid."""
    if not isinstance(obj, Mapping):
        return [Problem("", f"expected a JSON object, got {_type(obj)}")]
    problems: list[Problem] = []
    add = problems.append
    for key in obj:
        if key not in FIELDS:
            add(Problem(str(key)[:100], "unknown field"))

    def opt(name: str) -> Any:
        return obj.get(name)

    version = opt("version")
    if version is not None and (type(version) is not int or version != VERSION):
        add(Problem("version", f"unsupported version {_show(version)}; this controller reads version 1"))

    cluster = obj.get("cluster")
    if cluster is None:
        add(Problem("cluster", "required (projects/P/locations/L/clusters/C)"))
    else:
        problems.extend(_cluster_problems(cluster))

    name = obj.get("name")
    if name is None:
        add(Problem("name", "required (a DNS-1123 label, e.g. \"my-nad\")"))
    else:
        _check_label(name, "name", add)
    if opt("namespace") is not None:
        _check_label(obj["namespace"], "namespace", add)

    master = opt("master")
    if master is not None and (not isinstance(master, str) or not _IFNAME.fullmatch(master)
                               or master in (".", "..")):
        add(Problem("master", "expected a Linux interface name (1-15 of A-Z a-z 0-9 _ . -), "
                              f"got {_show(master)}"))
    mode = opt("mode")
    if mode is not None and mode not in MODES:
        add(Problem("mode", f"expected one of {', '.join(MODES)}, got {_show(mode)}"))
    action = opt("action")
    if action is not None and action not in ACTIONS:
        add(Problem("action", f"expected one of {', '.join(ACTIONS)}, got {_show(action)}"))
    request_id = opt("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id)):
        add(Problem("request_id", f"expected 1-128 of A-Z a-z 0-9 . _ : - (starting alphanumeric), "
                                  f"got {_show(request_id)}"))
    verify = opt("verify")
    if verify is not None and not isinstance(verify, bool):
        add(Problem("verify", f"expected true or false, got {_show(verify)}"))
    mtu = opt("mtu")
    if mtu is not None and (type(mtu) is not int or not MTU_MIN <= mtu <= MTU_MAX):
        add(Problem("mtu", f"expected an integer in {MTU_MIN}..{MTU_MAX}, got {_show(mtu)}"))

    problems.extend(_range_problems(obj))
    return problems


def plain(text: object) -> bool:
    """A string with no whitespace or control characters. `ClusterRef.parse` anchors with `$`,
    which also matches before a trailing newline, so names are screened here first."""
    return isinstance(text, str) and text.isprintable() and not any(c.isspace() for c in text)


def parse_cluster(text: object, *, field: str = "cluster") -> ClusterRef:
    """`ClusterRef.parse`, refusing whitespace and control characters anywhere."""
    if isinstance(text, str) and not plain(text):
        raise Rejected("invalid cluster reference",
                       [Problem(field, f"whitespace or control characters in {text[:200]!r}")])
    ref, node_pool = parse_resource_name(text, field=field)
    if node_pool is not None:  # the schema and docs name a cluster; a pool path is not silently cut
        raise Rejected("invalid cluster reference",
                       [Problem(field, "expected projects/P/locations/L/clusters/C, got a node pool: "
                                       f"{str(text)[:200]!r}")])
    return ref


def _cluster_problems(cluster: object) -> list[Problem]:
    try:
        parse_cluster(cluster, field="cluster")
    except Rejected as e:
        return list(e.problems) or [Problem("cluster", e.reason)]
    return []


def _check_label(value: object, field: str, add: Any) -> None:
    if not is_dns_label(value):
        add(Problem(field, "expected a DNS-1123 label (lowercase letters, digits and '-', at most 63, "
                           f"starting and ending with a letter or digit), got {_show(value)}"))


def _range_problems(obj: Mapping[str, Any]) -> list[Problem]:
    """CIDR syntax of range/exclude, address syntax of start/end/gateway, and containment."""
    problems: list[Problem] = []
    net: Network | None = None
    if obj.get("range") is not None:
        p = _network_problem(obj["range"], "range")
        if p:
            problems.append(p)
        else:
            net = ipaddress.ip_network(obj["range"])
            usable = net.num_addresses
            if (net.version == 4 and usable < 4) or (net.version == 6 and usable < 4):
                problems.append(Problem("range", f"{net} is too small for pod addresses "
                                                 f"(use /30 or wider for IPv4, /126 or wider for IPv6)"))
    addrs: dict[str, Address] = {}
    for name in ("range_start", "range_end", "gateway"):
        if obj.get(name) is not None:
            addr, p = _parse_address(obj[name], name)
            if p:
                problems.append(p)
            elif addr is not None:
                addrs[name] = addr
    excludes: list[tuple[str, Network]] = []
    raw_ex = obj.get("exclude")
    if raw_ex is not None:
        if not isinstance(raw_ex, list | tuple):
            problems.append(Problem("exclude", f"expected a list of CIDRs, got {_type(raw_ex)}"))
        elif len(raw_ex) > MAX_EXCLUDES:
            problems.append(Problem("exclude", f"at most {MAX_EXCLUDES} entries, got {len(raw_ex)}"))
        else:
            for i, item in enumerate(raw_ex):
                p = _network_problem(item, f"exclude[{i}]")
                if p:
                    problems.append(p)
                else:
                    excludes.append((f"exclude[{i}]", ipaddress.ip_network(item)))
    start, end = addrs.get("range_start"), addrs.get("range_end")
    if start is not None and end is not None and (start.version != end.version or int(start) > int(end)):
        problems.append(Problem("range_end", f"range_start {start} must not be after range_end {end}"))
    if net is not None:
        problems.extend(_containment(net, addrs, excludes))
    return problems


def _containment(net: Network, addrs: Mapping[str, Address],
                 excludes: Iterable[tuple[str, Network]]) -> list[Problem]:
    problems = []
    for name, addr in addrs.items():
        if addr.version != net.version or addr not in net:
            problems.append(Problem(name, f"{addr} is not inside range {net}"))
    for name, ex in excludes:
        if ex.version != net.version or not ex.subnet_of(net):  # type: ignore[arg-type]
            problems.append(Problem(name, f"{ex} is not inside range {net}"))
    return problems


def parse_request(raw: bytes | str | Mapping[str, Any]) -> NadRequest:
    """Bytes, text or an already decoded object -> a valid `NadRequest`, or `Rejected` listing
    every problem (with `cluster` set when the cluster field could be read)."""
    if isinstance(raw, Mapping):
        try:
            size = len(json.dumps(raw, default=str).encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError, RecursionError):
            size = 0
        if size > MAX_REQUEST_BYTES:
            raise Rejected("invalid NAD request",
                           [Problem("", f"{size} bytes is over the {MAX_REQUEST_BYTES}-byte limit")],
                           kind=RejectionKind.TOO_LARGE)
        obj: Any = raw
    elif isinstance(raw, bytes | bytearray | str):
        try:
            obj = load_json(raw, what="NAD request")
        except Rejected as e:
            e.cluster = _cluster_in_text(raw)
            raise
    else:
        raise Rejected("invalid NAD request", [Problem("", f"expected JSON bytes, text or an object, "
                                                           f"got {_type(raw)}")])
    if not isinstance(obj, Mapping):
        raise Rejected("invalid NAD request", [Problem("", f"expected a JSON object, got {_type(obj)}")])
    cluster: ClusterRef | None = None
    try:
        cluster = parse_cluster(obj.get("cluster"), field="cluster")
    except Rejected:
        pass
    problems = validate(obj)
    if problems:
        # Name and namespace travel with the rejection (when they are strings) so that it can be
        # recorded on the NAD's own document, where `status` shows it; the recorder re-checks them.
        context = {k: obj[k] for k in ("name", "namespace") if isinstance(obj.get(k), str)}
        raise Rejected("invalid NAD request", problems, cluster=cluster, context=context)
    assert cluster is not None
    exclude = obj.get("exclude") or ()
    return NadRequest(
        cluster=cluster,
        name=obj["name"],
        namespace=obj.get("namespace") or "default",
        master=obj.get("master") or "eth1",
        mode=obj.get("mode") or "l2",
        range=_canonical_cidr(obj["range"]) if obj.get("range") is not None else None,
        range_start=_canonical_ip(obj["range_start"]) if obj.get("range_start") is not None else None,
        range_end=_canonical_ip(obj["range_end"]) if obj.get("range_end") is not None else None,
        exclude=tuple(_canonical_cidr(x) for x in exclude),
        gateway=_canonical_ip(obj["gateway"]) if obj.get("gateway") is not None else None,
        mtu=obj.get("mtu"),
        action=obj.get("action") or "apply",
        request_id=obj.get("request_id"),
        verify=bool(obj.get("verify", False)),
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_CLUSTER_IN_TEXT = re.compile(r'"cluster"\s*:\s*"([^"\\]{1,300})"')


def _cluster_in_text(raw: bytes | bytearray | str) -> ClusterRef | None:
    """Best effort for JSON that does not parse: the rejection is still recorded under the
    cluster the request named, where its author will look."""
    if len(raw) > MAX_REQUEST_BYTES:
        return None
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")
    m = _CLUSTER_IN_TEXT.search(text)
    if not m:
        return None
    try:
        return parse_cluster(m.group(1))
    except Rejected:
        return None


def _resolved(req: NadRequest, range_cidr: str | None) -> NadRequest:
    if req.range is not None:
        return req
    if range_cidr is None:
        raise Rejected("cannot render NAD", [Problem("range", "no range in the request and none resolved "
                                                              "from the node pool; give a CIDR")],
                       cluster=req.cluster)
    return req.with_range(range_cidr)


def conflist(req: NadRequest, range_cidr: str | None = None) -> dict[str, Any]:
    """The CNI conflist as data (what `render_config` encodes)."""
    req = _resolved(req, range_cidr)
    ipam: dict[str, Any] = {"type": "whereabouts", "range": req.range}
    if req.range_start is not None:
        ipam["range_start"] = req.range_start
    if req.range_end is not None:
        ipam["range_end"] = req.range_end
    if req.exclude:
        ipam["exclude"] = list(req.exclude)
    if req.gateway is not None:
        ipam["gateway"] = req.gateway
    plugin: dict[str, Any] = {"type": "ipvlan", "master": req.master, "mode": req.mode, "ipam": ipam}
    if req.mtu is not None:
        plugin["mtu"] = req.mtu
    return {"cniVersion": CNI_VERSION, "name": req.name, "plugins": [plugin]}


def render_config(req: NadRequest, range_cidr: str | None = None) -> str:
    """`spec.config`: the conflist, JSON-encoded with sorted keys and fixed separators so the
    same request always yields the same bytes (server-side apply sees no spurious change)."""
    return json.dumps(conflist(req, range_cidr), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def render_nad(req: NadRequest, range_cidr: str | None = None) -> dict[str, Any]:
    """The NetworkAttachmentDefinition object for `req` (raises `Rejected` without a range)."""
    return nad_object(req.cluster.path, req.namespace, req.name, render_config(req, range_cidr), req.request_id)


def config_digest(config: str) -> str:
    """The digest a record keeps of a rendered `spec.config` (to compare without reading it)."""
    return "sha256:" + hashlib.sha256(config.encode()).hexdigest()


def request_digest(req: NadRequest) -> str:
    """The digest of a request's canonical form: what an idempotency key (`request_id`) stands for."""
    return config_digest(json.dumps(req.to_dict(), sort_keys=True, separators=(",", ":")))


def nad_object(cluster_path: str, namespace: str, name: str, config: str,
               request_id: str | None = None) -> dict[str, Any]:
    """The managed NAD object around a rendered `spec.config` (what `render_nad` returns, and
    what reconcile re-applies from a record's config, byte for byte)."""
    annotations = {CLUSTER_ANNOTATION: cluster_path}
    if request_id is not None:
        annotations[REQUEST_ID_ANNOTATION] = request_id
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
            "annotations": annotations,
        },
        "spec": {"config": config},
    }


def managed(live: Mapping[str, Any]) -> bool:
    """Whether a NAD on a cluster carries the controller's managed-by label: what the label-selected
    LIST (`list_managed_nads`) returns, decided here for a LIST of every NAD."""
    return _mapping(_mapping(live.get("metadata")).get("labels")).get(MANAGED_BY[0]) == MANAGED_BY[1]


def foreign_nad(live: Mapping[str, Any], cluster_path: str | None) -> tuple[str, str] | None:
    """(owner, why) when a NAD found on a cluster is not the controller's to change or delete:
    it lacks the managed-by label or the cluster annotation, or names another cluster. None: ours.

    The one rule behind "never take over or delete what someone else made": server-side apply
    with `force` would otherwise silently take its fields, and a delete would remove it."""
    md = _mapping(live.get("metadata"))
    labels, notes = _mapping(md.get("labels")), _mapping(md.get("annotations"))
    marked = managed(live)
    said = notes.get(CLUSTER_ANNOTATION)
    if marked and isinstance(said, str) and (cluster_path is None or said == cluster_path):
        return None
    managers = [str(m.get("manager")) for m in md.get("managedFields") or [] if isinstance(m, Mapping)
                and m.get("manager") and m.get("manager") != "multus-provisioner"]
    owner = str(labels.get(MANAGED_BY[0]) or (managers[0] if managers else "") or "unknown")[:100]
    if not marked:
        why = f"it has no {MANAGED_BY[0]}={MANAGED_BY[1]} label"
    elif not isinstance(said, str):
        why = f"it has no {CLUSTER_ANNOTATION} annotation"
    else:
        why = f"its {CLUSTER_ANNOTATION} annotation names another cluster ({said[:200]})"
    name = f"{md.get('namespace') or 'default'}/{md.get('name')}"
    return owner, (f"NAD {name} on the cluster belongs to {owner!r}, not to the controller ({why}); "
                   "it is left untouched: choose another name, or have its owner delete it")



def refuse_foreign(live: Mapping[str, Any] | None, cluster_path: str | None) -> None:
    """`NotOurs` naming the owner when `live` (a NAD found on the cluster, None: there is none) is
    not the controller's: what every apply and delete checks first, by a GET or in a LIST."""
    foreign = foreign_nad(live, cluster_path) if live is not None else None
    if foreign is not None:
        raise NotOurs(foreign[1], owner=foreign[0])

def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def config_range(nad_obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(master, range) of a NAD found on a cluster, read from its `spec.config`; None when the
    config is not JSON or has no Whereabouts range. Accepts conflists and single configs, and
    Whereabouts' `ipRanges` form. Master is "" when the plugin names none."""
    try:
        config = json.loads(nad_obj["spec"]["config"])
    except (KeyError, TypeError, ValueError, RecursionError):
        return None
    if not isinstance(config, dict):
        return None
    plugins = config.get("plugins") if "plugins" in config else [config]
    if not isinstance(plugins, list):
        return None
    for plugin in plugins:
        if not isinstance(plugin, dict) or not isinstance(plugin.get("ipam"), dict):
            continue
        ipam = plugin["ipam"]
        rng = ipam.get("range")
        if rng is None and isinstance(ipam.get("ipRanges"), list) and ipam["ipRanges"] \
                and isinstance(ipam["ipRanges"][0], dict):
            rng = ipam["ipRanges"][0].get("range")
        if isinstance(rng, str):
            master = plugin.get("master")
            return (master if isinstance(master, str) else "", rng)
    return None


# --------------------------------------------------------------------------------------------

def _type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


_PLUGIN_KEYS = {"type", "master", "mode", "ipam", "mtu"}
_IPAM_KEYS = {"type", "range", "range_start", "range_end", "exclude", "gateway"}


def request_of_config(cluster_path: str, namespace: str, name: str, config: object) -> NadRequest:
    """The request whose rendering `config` is, validated as the request path validates a request.

    Why: reconcile re-applies a record's stored `config` when the cluster lost or changed the NAD.
    That text is a Firestore field; re-applying it unchecked would let whoever can write the record
    ship any CNI configuration. So a stored config is re-applied only when it is exactly what
    `render_config` produces for a request that `parse_request` (the request path) accepts: one
    rule, one place. Raises `Rejected` naming what is wrong.
    """
    def refuse(message: str) -> Rejected:
        return Rejected("stored NAD config refused", [Problem("config", message)])

    try:
        conf = json.loads(config) if isinstance(config, str) else None
    except ValueError:
        conf = None
    if not isinstance(conf, dict) or set(conf) != {"cniVersion", "name", "plugins"}:
        raise refuse("not a conflist of the controller's shape (cniVersion, name, plugins)")
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or len(plugins) != 1 or not isinstance(plugins[0], dict):
        raise refuse("expected exactly one plugin")
    plugin = plugins[0]
    ipam = plugin.get("ipam")
    if (set(plugin) - _PLUGIN_KEYS or plugin.get("type") != "ipvlan" or not isinstance(ipam, dict)
            or set(ipam) - _IPAM_KEYS or ipam.get("type") != "whereabouts"):
        raise refuse("expected one ipvlan plugin with whereabouts IPAM and only the fields the controller writes")
    if conf.get("name") != name:
        raise refuse(f"its name {str(conf.get('name'))[:80]!r} is not the NAD's name {name!r}")
    raw: dict[str, Any] = {"cluster": cluster_path, "namespace": namespace, "name": name,
                           "master": plugin.get("master"), "mode": plugin.get("mode"), "range": ipam.get("range")}
    for key in ("range_start", "range_end", "exclude", "gateway"):
        if key in ipam:
            raw[key] = ipam[key]
    if "mtu" in plugin:
        raw["mtu"] = plugin["mtu"]
    req = parse_request(raw)  # the request path's validation, every field
    if render_config(req) != config:
        raise refuse("it is not byte for byte what the controller renders for its own fields")
    return req
