"""The Compute Engine subset the how-to types: VPC networks, subnetworks and their operations.

`gcloud compute networks create` and `gcloud compute networks subnets create` must work offline,
and what they create must be what GKE then sees: the subnetworks live in the `World`
(`World.add_subnetwork`), so `ListUsableSubnetworks` lists them and node pool validation
accepts their secondary ranges. Networks, and the Compute-only fields of a subnetwork (id,
creation time, gateway), are kept here.

Served under `/compute/v1/` of the REST port (`sandbox.gke.rest`), in Compute's JSON (the field
names of compute_v1_messages.py in the Cloud SDK and https://cloud.google.com/compute/docs/reference/rest/v1):
networks insert/get/list/delete, subnetworks insert/get/list/delete/aggregatedList, global and
regional operations get/wait. Writes are operations that stay RUNNING for the world's
`operation_delay` (gcloud waits with `operations.wait`); the resource is visible at once.
Errors use Compute's v1 shape (`error.errors[].reason`), which gcloud prints.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from sandbox.gke.rest import HttpError, Request
from sandbox.gke.scenario import Subnetwork, valid_resource_name
from sandbox.gke.world import ApiError, World

_NAME_RX = "(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
# A reference to a network: a name, a partial path or a full URL on any host.
_NETWORK_REF = re.compile(r"^(?:(?:.*/)?projects/([^/]+)/)?global/networks/([^/]+)$")
WAIT_LIMIT = 120.0  # operations.wait returns after at most 2 minutes, DONE or not (Compute's documented limit)


def compute_error(status: int, reason: str, message: str) -> HttpError:
    """Compute's v1 error shape: gcloud prints `error.errors[].message`."""
    return HttpError(status, {"error": {"code": status, "message": message,
                                        "errors": [{"message": message, "domain": "global", "reason": reason}]}})


def _now() -> str:
    """Compute's timestamps: RFC 3339 with milliseconds and a numeric offset."""
    return dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=-7))).isoformat(timespec="milliseconds")


def _id() -> str:
    return str(secrets.randbelow(9 * 10**18) + 10**18)  # uint64, rendered as a string


@dataclass
class _Operation:
    body: dict[str, Any]
    done_at: float  # time.monotonic() when it reports DONE

    def render(self) -> dict[str, Any]:
        out = dict(self.body)
        if time.monotonic() >= self.done_at:
            out.update(status="DONE", progress=100, endTime=out.get("endTime") or _now())
            self.body["endTime"] = out["endTime"]
        return out


@dataclass
class Compute:
    """Compute Engine's networks API for one simulated project, sharing the World's subnetworks."""

    world: World
    project_number: str = "123456789012"
    principal: str = ""
    _networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    _subnet_meta: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _ops: dict[str, _Operation] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.principal = self.principal or self.world.scenario.principal
        for s in self.world.subnetworks():  # the scenario's VPCs existed before the sandbox started
            self._networks.setdefault(s.network, self._network_body(s.network, auto=False))

    @property
    def project(self) -> str:
        return self.world.project

    # ------------------------------------------------------------------ routing
    def handle(self, req: Request, path: str) -> tuple[int, dict[str, Any]]:
        """`path` is what follows `/compute/v1/`; returns (HTTP status, JSON body)."""
        base = f"http://{req.headers.get('host', '127.0.0.1')}/compute/v1/"
        parts = [unquote(p) for p in path.split("/")]
        if len(parts) < 2 or parts[0] != "projects":
            raise compute_error(404, "notFound", f"The requested URL /compute/v1/{path[:200]} was not found.")
        project, rest = parts[1], parts[2:]
        if project not in (self.project, self.project_number):
            raise compute_error(403, "forbidden", f"Required 'compute.networks.list' permission for "
                                                  f"'projects/{project[:100]}'")
        verb = req.verb
        try:
            match rest:
                case ["global", "networks"] if verb == "GET":
                    return 200, self._list("compute#networkList", base, "global/networks", self._network_items(base))
                case ["global", "networks"] if verb == "POST":
                    return 200, self.insert_network(base, _object(req))
                case ["global", "networks", name] if verb == "GET":
                    return 200, self.get_network(base, name)
                case ["global", "networks", name] if verb == "DELETE":
                    return 200, self.delete_network(base, name)
                case ["regions", region, "subnetworks"] if verb == "GET":
                    _region(region)
                    items = [self._subnet_body(base, s) for s in self.world.subnetworks() if s.region == region]
                    return 200, self._list("compute#subnetworkList", base, f"regions/{region}/subnetworks", items)
                case ["regions", region, "subnetworks"] if verb == "POST":
                    return 200, self.insert_subnetwork(base, _region(region), _object(req))
                case ["regions", region, "subnetworks", name] if verb == "GET":
                    return 200, self.get_subnetwork(base, _region(region), name)
                case ["regions", region, "subnetworks", name] if verb == "DELETE":
                    return 200, self.delete_subnetwork(base, _region(region), name)
                case ["aggregated", "subnetworks"] if verb == "GET":
                    return 200, self.aggregated_subnetworks(base)
                case ["global", "operations", op] if verb == "GET":
                    return 200, self._operation(op, None, wait=False)
                case ["global", "operations", op, "wait"] if verb == "POST":
                    return 200, self._operation(op, None, wait=True)
                case ["regions", region, "operations", op] if verb == "GET":
                    return 200, self._operation(op, _region(region), wait=False)
                case ["regions", region, "operations", op, "wait"] if verb == "POST":
                    return 200, self._operation(op, _region(region), wait=True)
        except ApiError as e:  # the World's refusal of a subnetwork
            raise compute_error(409 if e.code == "ALREADY_EXISTS" else 400,
                                "alreadyExists" if e.code == "ALREADY_EXISTS" else "invalid", e.message) from None
        raise compute_error(404, "notFound", f"The sandbox does not serve {verb} /compute/v1/{path[:200]} "
                                             "(docs/SANDBOX_GKE.md lists what it serves).")

    # ------------------------------------------------------------------ bodies
    def _link(self, base: str, tail: str) -> str:
        return f"{base}projects/{self.project}/{tail}"

    def _network_body(self, name: str, *, auto: bool, routing: str = "REGIONAL", mtu: int = 1460,
                      description: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "compute#network", "id": _id(), "creationTimestamp": _now(), "name": name,
                                "autoCreateSubnetworks": auto, "routingConfig": {"routingMode": routing},
                                "mtu": mtu, "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL"}
        if description:
            body["description"] = description
        return body

    def _network_items(self, base: str) -> list[dict[str, Any]]:
        with self._lock:
            names = sorted(self._networks)
        return [self.get_network(base, n) for n in names]

    def _subnet_body(self, base: str, s: Subnetwork) -> dict[str, Any]:
        with self._lock:
            meta = self._subnet_meta.setdefault((s.region, s.subnetwork), {
                "id": _id(), "creationTimestamp": _now(), "privateIpGoogleAccess": False})
        net = ipaddress.IPv4Network(s.primary_range)
        body = {"kind": "compute#subnetwork", "id": meta["id"], "creationTimestamp": meta["creationTimestamp"],
                "name": s.subnetwork, "network": self._link(base, f"global/networks/{s.network}"),
                "ipCidrRange": s.primary_range, "gatewayAddress": str(net.network_address + 1),
                "region": self._link(base, f"regions/{s.region}"),
                "selfLink": self._link(base, f"regions/{s.region}/subnetworks/{s.subnetwork}"),
                "privateIpGoogleAccess": meta["privateIpGoogleAccess"], "fingerprint": meta["id"][-8:] + "=",
                "purpose": "PRIVATE", "stackType": "IPV4_ONLY"}
        if s.secondary_ranges:
            body["secondaryIpRanges"] = [{"rangeName": n, "ipCidrRange": r} for n, r in s.secondary_ranges.items()]
        if meta.get("description"):
            body["description"] = meta["description"]
        return body

    def _list(self, kind: str, base: str, tail: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": kind, "id": f"projects/{self.project}/{tail}",
                               "selfLink": self._link(base, tail)}
        if items:
            out["items"] = items
        return out

    # ------------------------------------------------------------------ networks
    def insert_network(self, base: str, body: dict[str, Any]) -> dict[str, Any]:
        _fields(body, {"name", "description", "autoCreateSubnetworks", "routingConfig", "mtu",
                       "networkFirewallPolicyEnforcementOrder", "kind"}, "resource")
        name = _name(body.get("name"), "resource.name")
        auto = body.get("autoCreateSubnetworks")
        if auto is None:
            raise compute_error(400, "invalid", "Invalid value for field 'resource.autoCreateSubnetworks': ''. "
                                                "Legacy networks are not served by the sandbox; give "
                                                "--subnet-mode=custom.")
        if auto is not False:
            raise compute_error(400, "invalid", "Invalid value for field 'resource.autoCreateSubnetworks': 'true'. "
                                                "The sandbox serves custom-mode networks only "
                                                "(--subnet-mode=custom).")
        routing = (body.get("routingConfig") or {}).get("routingMode", "REGIONAL")
        if routing not in ("REGIONAL", "GLOBAL"):
            raise compute_error(400, "invalid", f"Invalid value for field 'resource.routingConfig.routingMode': "
                                                f"'{str(routing)[:40]}'.")
        mtu = body.get("mtu", 1460)
        if not isinstance(mtu, int) or isinstance(mtu, bool) or not 1300 <= mtu <= 8896:
            raise compute_error(400, "invalid", f"Invalid value for field 'resource.mtu': '{mtu}'. "
                                                "Must be in 1300..8896.")
        with self._lock:
            if name in self._networks:
                raise compute_error(409, "alreadyExists",
                                    f"The resource 'projects/{self.project}/global/networks/{name}' already exists")
            net = self._network_body(name, auto=False, routing=routing, mtu=mtu,
                                     description=str(body.get("description") or ""))
            self._networks[name] = net
        return self._start("insert", base, f"global/networks/{name}", net["id"], None)

    def get_network(self, base: str, name: str) -> dict[str, Any]:
        with self._lock:
            net = self._networks.get(name)
            if net is None:
                raise compute_error(404, "notFound", f"The resource 'projects/{self.project}/global/networks/"
                                                     f"{name[:100]}' was not found")
            out = dict(net)
        out["selfLink"] = self._link(base, f"global/networks/{name}")
        out["selfLinkWithId"] = self._link(base, f"global/networks/{out['id']}")
        subnets = [self._link(base, f"regions/{s.region}/subnetworks/{s.subnetwork}")
                   for s in self.world.subnetworks() if s.network == name]
        if subnets:
            out["subnetworks"] = subnets
        return out

    def delete_network(self, base: str, name: str) -> dict[str, Any]:
        with self._lock:
            net = self.get_network(base, name)
            users = [s for s in self.world.subnetworks() if s.network == name]
            if users:
                s = users[0]
                raise compute_error(400, "resourceInUseByAnotherResource",
                                    f"The network resource 'projects/{self.project}/global/networks/{name}' is "
                                    f"already being used by 'projects/{self.project}/regions/{s.region}"
                                    f"/subnetworks/{s.subnetwork}'")
            del self._networks[name]
        return self._start("delete", base, f"global/networks/{name}", net["id"], None)

    # ------------------------------------------------------------------ subnetworks
    def insert_subnetwork(self, base: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        _fields(body, {"name", "description", "network", "ipCidrRange", "secondaryIpRanges",
                       "privateIpGoogleAccess", "region", "stackType", "purpose", "kind"}, "resource")
        name = _name(body.get("name"), "resource.name")
        for key, served in (("stackType", "IPV4_ONLY"), ("purpose", "PRIVATE")):
            if body.get(key, served) != served:
                raise compute_error(400, "invalid", f"Invalid value for field 'resource.{key}': "
                                                    f"'{str(body[key])[:40]}'. The sandbox serves {served} "
                                                    "subnetworks only.")
        ref = body.get("network")
        if not isinstance(ref, str) or not ref:
            raise compute_error(400, "required", "Required field 'resource.network' not specified")
        m = _NETWORK_REF.match(ref)
        network = m.group(2) if m else ref
        if (m and m.group(1) not in (None, self.project)) or not valid_resource_name(network):
            raise compute_error(400, "invalid", f"Invalid value for field 'resource.network': '{ref[:200]}'. "
                                                "The referenced network resource cannot be found.")
        primary = _cidr(body.get("ipCidrRange"), "resource.ipCidrRange")
        ranges: dict[str, str] = {}
        raw = body.get("secondaryIpRanges") or []
        if not isinstance(raw, list):
            raise compute_error(400, "invalid", "Invalid value for field 'resource.secondaryIpRanges': "
                                                "expected a list.")
        for i, r in enumerate(raw):
            where = f"resource.secondaryIpRanges[{i}]"
            if not isinstance(r, dict):
                raise compute_error(400, "invalid", f"Invalid value for field '{where}': expected an object.")
            _fields(r, {"rangeName", "ipCidrRange"}, where)
            rname = _name(r.get("rangeName"), f"{where}.rangeName")
            if rname in ranges:
                raise compute_error(400, "invalid", f"Invalid value for field '{where}.rangeName': '{rname}'. "
                                                    "Secondary range names must be unique in a subnetwork.")
            ranges[rname] = _cidr(r.get("ipCidrRange"), f"{where}.ipCidrRange")
        with self._lock:
            if network not in self._networks:
                raise compute_error(400, "invalid", f"Invalid value for field 'resource.network': '{ref[:200]}'. "
                                                    "The referenced network resource cannot be found.")
            mine = [("resource.ipCidrRange", primary)] + [(f"secondary range {n!r}", c) for n, c in ranges.items()]
            for i, (what, cidr) in enumerate(mine):
                for _other_what, other in mine[:i]:
                    if ipaddress.IPv4Network(cidr).overlaps(ipaddress.IPv4Network(other)):
                        raise compute_error(400, "invalid", f"Invalid IPCidrRange: {cidr} of {what} overlaps "
                                                            f"{other} of the same subnetwork.")
            for s in self.world.subnetworks():
                if s.network != network:
                    continue
                for other in (s.primary_range, *s.secondary_ranges.values()):
                    for _what, cidr in mine:
                        if ipaddress.IPv4Network(cidr).overlaps(ipaddress.IPv4Network(other)):
                            raise compute_error(400, "invalid", f"Invalid IPCidrRange: {cidr} conflicts with "
                                                                f"existing subnetwork '{s.subnetwork}' in region "
                                                                f"'{s.region}'.")
            subnet = Subnetwork(network=network, subnetwork=name, region=region, primary_range=primary,
                                secondary_ranges=ranges)
            self.world.add_subnetwork(subnet)  # ALREADY_EXISTS -> 409 in handle()
            meta = {"id": _id(), "creationTimestamp": _now(),
                    "privateIpGoogleAccess": bool(body.get("privateIpGoogleAccess", False)),
                    "description": str(body.get("description") or "")}
            self._subnet_meta[(region, name)] = meta
        return self._start("insert", base, f"regions/{region}/subnetworks/{name}", meta["id"], region)

    def _find_subnet(self, region: str, name: str) -> Subnetwork:
        for s in self.world.subnetworks():
            if (s.region, s.subnetwork) == (region, name):
                return s
        raise compute_error(404, "notFound", f"The resource 'projects/{self.project}/regions/{region}/subnetworks/"
                                             f"{name[:100]}' was not found")

    def get_subnetwork(self, base: str, region: str, name: str) -> dict[str, Any]:
        return self._subnet_body(base, self._find_subnet(region, name))

    def delete_subnetwork(self, base: str, region: str, name: str) -> dict[str, Any]:
        with self._lock:
            body = self._subnet_body(base, self._find_subnet(region, name))
            users = self.world.subnetwork_users(region, name)
            if users:
                raise compute_error(400, "resourceInUseByAnotherResource",
                                    f"The subnetwork resource 'projects/{self.project}/regions/{region}/subnetworks/"
                                    f"{name}' is already being used by '{users[0]}'")
            self.world.remove_subnetwork(region, name)
            self._subnet_meta.pop((region, name), None)
        return self._start("delete", base, f"regions/{region}/subnetworks/{name}", body["id"], region)

    def aggregated_subnetworks(self, base: str) -> dict[str, Any]:
        by_region: dict[str, list[dict[str, Any]]] = {}
        for s in self.world.subnetworks():
            by_region.setdefault(s.region, []).append(self._subnet_body(base, s))
        return {"kind": "compute#subnetworkAggregatedList", "id": f"projects/{self.project}/aggregated/subnetworks",
                "selfLink": self._link(base, "aggregated/subnetworks"),
                "items": {f"regions/{r}": {"subnetworks": items} for r, items in sorted(by_region.items())}}

    # ------------------------------------------------------------------ operations
    def _start(self, kind: str, base: str, target: str, target_id: str, region: str | None) -> dict[str, Any]:
        stamp = int(time.time() * 1000)
        name = f"operation-{stamp}-{secrets.token_hex(6)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        scope = f"regions/{region}/operations" if region else "global/operations"
        body: dict[str, Any] = {
            "kind": "compute#operation", "id": _id(), "name": name, "operationType": kind,
            "targetLink": self._link(base, target), "targetId": target_id, "status": "RUNNING",
            "user": self.principal, "progress": 0, "insertTime": _now(), "startTime": _now(),
            "selfLink": self._link(base, f"{scope}/{name}")}
        if region:
            body["region"] = self._link(base, f"regions/{region}")
        op = _Operation(body, time.monotonic() + self.world.operation_delay)
        with self._lock:
            self._ops[name] = op
        return op.render()

    def _operation(self, name: str, region: str | None, *, wait: bool) -> dict[str, Any]:
        with self._lock:
            op = self._ops.get(name)
        scope = f"regions/{region}" if region else "global"
        if op is None or (op.body.get("region", "").rsplit("/", 1)[-1] or None) != region:
            raise compute_error(404, "notFound", f"The resource 'projects/{self.project}/{scope}/operations/"
                                                 f"{name[:100]}' was not found")
        if wait:
            time.sleep(max(0.0, min(op.done_at - time.monotonic(), WAIT_LIMIT)))
        return op.render()


# ---------------------------------------------------------------------- input checks
def _object(req: Request) -> dict[str, Any]:
    body = req.json()
    if not isinstance(body, dict):
        raise compute_error(400, "parseError", "Invalid JSON payload received: expected an object.")
    return body


def _fields(body: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise compute_error(400, "invalid", f"Invalid JSON payload received. Unknown name \"{unknown[0][:60]}\" at "
                                            f"'{where}': the sandbox does not serve this field.")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not valid_resource_name(value):
        raise compute_error(400, "invalid", f"Invalid value for field '{where}': '{str(value)[:100]}'. "
                                            f"Must be a match of regex '{_NAME_RX}'")
    return value


def _cidr(value: Any, where: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except (TypeError, ValueError):
        raise compute_error(400, "invalid", f"Invalid value for field '{where}': '{str(value)[:60]}'. "
                                            f"Invalid IPCidrRange: {str(value)[:60]}.") from None


def _region(region: str) -> str:
    if not _REGION.match(region):
        raise compute_error(400, "invalid", f"Invalid value for field 'region': '{region[:60]}'. Unknown region.")
    return region
