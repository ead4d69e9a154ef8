"""The controller's address arithmetic equals the real Whereabouts'.

For random NAD requests (prefix /22-/30, range_start/range_end, exclude lists that may overlap each
other or the window's edges), the controller renders the NAD; the real Whereabouts (pinned builds
v0.7.0, the seed's, and v0.8.0) then gets CNI ADDs until it refuses, against a sandbox API server
(it keeps its IPPool there). What it handed out, how many, and the first refusal must equal what
`ranges` computes for that NAD (the slice's start, end, excludes and capacity).

Whereabouts' IPAM does not touch the kernel, so this runs the binary on the host (no guest); the
node-local settings (the datastore's kubeconfig) come through `configuration_path`, as its flat
file does on a node. Windows are kept small (at most 8 addresses, 8 random shapes and the fixed
ones per version) so the file runs in about 40 s here.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import os
import random
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.core import ranges
from shared.core.errors import Rejected
from shared.core.nad import parse_request, render_nad
from tests.realnet import CLUSTER, CRDS

SEED = 19
SHAPES = 8
# Shapes that once disagreed, always compared (overlapping and repeated exclude blocks).
FIXED = ({"range": "10.58.0.0/29", "exclude": ["10.58.0.2/31", "10.58.0.3/32"]},
         {"range": "10.57.0.0/26", "range_start": "10.57.0.0", "range_end": "10.57.0.4",
          "exclude": ["10.57.0.5/32", "10.57.0.1/32", "10.57.0.1/32"]})


def _shape(rng: random.Random, index: int) -> dict[str, Any]:
    prefix = rng.randint(22, 30)
    net = ipaddress.ip_network(f"10.{60 + index}.0.0/{prefix}")
    hosts = net.num_addresses
    req: dict[str, Any] = {"cluster": CLUSTER, "name": f"shape-{index}", "namespace": "default", "range": str(net)}
    lo, hi = 0, hosts - 1
    if hosts > 8 or rng.random() < 0.5:  # a window of at most 8 addresses, anywhere in the range
        size = rng.randint(1, min(8, hosts))
        lo = rng.randint(0, hosts - size)
        hi = lo + size - 1
        req["range_start"] = str(net.network_address + lo)
        req["range_end"] = str(net.network_address + hi)
    excludes = []
    for _ in range(rng.randint(0, 3)):
        plen = rng.choice([30, 31, 32, 32])
        plen = max(plen, prefix)
        at = rng.randint(max(0, lo - 2), min(hosts - 1, hi + 2))
        excludes.append(str(ipaddress.ip_network(f"{net.network_address + at}/{plen}", strict=False)))
    if excludes:
        req["exclude"] = excludes
    return req


def _expected(nad: dict[str, Any]) -> tuple[list[str], ranges.Slice]:
    """The controller's view: the slice `ranges` reports and the addresses it stands for, in order."""
    [slice_] = ranges.report("", [nad], [], []).slices
    assert not slice_.problem, slice_.problem
    excluded = [ipaddress.ip_network(x) for x in slice_.exclude]
    start, end = ipaddress.ip_address(slice_.start), ipaddress.ip_address(slice_.end)
    out = []
    ip = start
    while ip <= end:
        if not any(ip in x for x in excluded):
            out.append(str(ip))
        ip += 1
    return out, slice_


def v08_crds(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bundle's CRDs as Whereabouts v0.8.0 ships them (its doc/crds): an allocation and an
    OverlappingRangeIPReservation require `podref` and may carry `ifname`; the reservation's
    `containerid` is no longer required (v0.8.0 does not write it)."""
    out = copy.deepcopy(objects)
    for crd in out:
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        if crd["metadata"]["name"].startswith("overlappingrangeipreservations."):
            schema["properties"]["ifname"] = {"type": "string"}
            schema["required"] = ["podref"]
        elif crd["metadata"]["name"].startswith("ippools."):
            item = schema["properties"]["allocations"]["additionalProperties"]
            item["properties"]["ifname"] = {"type": "string"}
            item["required"] = sorted(set(item.get("required") or []) | {"podref"})
    return out


@contextlib.contextmanager
def whereabouts_api(version: str) -> Iterator[dict[str, Any]]:
    """A sandbox API server with Whereabouts' CRDs (the bundle's; v0.8.0's for that version) and a
    flat file pointing Whereabouts at it."""
    from sandbox.kube import KubeApiServer
    from shared.adapters.kube import Kube
    from shared.core.multus import load_bundle
    from tests.fixtures_kube import make_api_client

    server = KubeApiServer(token=secrets.token_urlsafe(16), nodes=[], crd_delay=0.01, name="wb")
    server.start()
    tmp = tempfile.TemporaryDirectory(prefix="mp-wb-")
    client = make_api_client(server, Path(tmp.name))
    try:
        kube = Kube(client, timeout=30.0)
        crds = [o for o in load_bundle().objects if o["kind"] == "CustomResourceDefinition"]
        kube.apply(v08_crds(crds) if version == "v0.8.0" else crds)
        kube.wait_established(CRDS, timeout=60, poll=0.02)
        kubeconfig = server.kubeconfig()
        kubeconfig["contexts"][0]["context"]["namespace"] = "kube-system"
        (Path(tmp.name) / "kubeconfig").write_text(json.dumps(kubeconfig), encoding="utf-8")
        flat = Path(tmp.name) / "whereabouts.conf"
        flat.write_text(json.dumps({"datastore": "kubernetes",
                                    "kubernetes": {"kubeconfig": str(Path(tmp.name) / "kubeconfig")}}),
                        encoding="utf-8")
        yield {"server": server, "kube": kube, "flat": str(flat), "dir": tmp.name}
    finally:
        client.close()
        server.stop()
        tmp.cleanup()


def _add(binary: Path, conf: dict[str, Any], n: int, cwd: str) -> tuple[str | None, str]:
    """One CNI ADD of the IPAM plugin for pod p{n}: (address or None, refusal message)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": f"{n:064x}", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "net1",
           "CNI_PATH": "/nonexistent",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p{n}"}
    proc = subprocess.run([str(binary)], input=json.dumps(conf), env=env, capture_output=True, text=True,
                          cwd=cwd, timeout=60, check=False)
    out = json.loads(proc.stdout or "{}")
    if proc.returncode == 0:
        return str(out["ips"][0]["address"]).split("/")[0], ""
    return None, str(out.get("msg") or proc.stderr)


@pytest.mark.parametrize("version", ["v0.7.0", "v0.8.0"])
def test_whereabouts_hands_out_what_ranges_computes(version: str) -> None:
    with whereabouts_api(version) as api:
        _compare(api, version)


def _binary(version: str) -> Path:
    import sandbox.gobuild as gobuild
    from sandbox.kube.realcni import WHEREABOUTS_COMPONENTS

    return gobuild.binary(WHEREABOUTS_COMPONENTS[version], "whereabouts")


def _compare(api: dict[str, Any], version: str) -> None:
    binary = _binary(version)
    rng = random.Random(f"{SEED}-{version}")
    offset = 0 if version == "v0.7.0" else 100
    compared = refused_by_controller = 0
    shapes = [{"cluster": CLUSTER, "name": f"fixed-{n}", "namespace": "default", **f} for n, f in enumerate(FIXED)]
    shapes += [_shape(rng, index + offset) for index in range(SHAPES)]
    for index, req in enumerate(shapes):
        try:
            nad = render_nad(parse_request(req))
        except Rejected:
            refused_by_controller += 1
            continue
        expected, slice_ = _expected(nad)
        conf = json.loads(nad["spec"]["config"])
        plugin = conf["plugins"][0]
        plugin["ipam"]["configuration_path"] = api["flat"]
        single = {"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin}
        handed: list[str] = []
        refusal = ""
        for n in range(len(expected) + 1):
            ip, refusal = _add(binary, single, index * 1000 + n, api["dir"])
            if ip is None:
                break
            handed.append(ip)
        shape = json.dumps({k: v for k, v in req.items() if k not in ("cluster", "namespace")})
        assert handed == expected, (f"{version} {shape}: Whereabouts handed out {handed}, ranges expects "
                                    f"{expected}; refusal {refusal!r}")
        assert len(handed) == slice_.capacity, f"{version} {shape}: capacity {slice_.capacity}, real {len(handed)}"
        assert "Could not allocate IP in range" in refusal, f"{version} {shape}: first refusal {refusal!r}"
        compared += 1
    assert compared >= len(shapes) // 2, f"only {compared} shapes compared ({refused_by_controller} refused)"


def test_whereabouts_v08_needs_its_own_crds() -> None:
    """Version skew the bundle must not ship: Whereabouts v0.8.0 against the bundle's v0.7.0 CRDs
    refuses every address (its OverlappingRangeIPReservation has no containerid, which v0.7.0's
    schema requires) and leaks it in the IPPool, so a whereabouts image upgrade must carry the CRDs."""
    with whereabouts_api("v0.7.0") as api:  # the bundle's CRDs, as applied to every cluster
        nad = render_nad(parse_request({"cluster": CLUSTER, "name": "skew", "namespace": "default",
                                        "range": "10.59.0.0/29"}))
        conf = json.loads(nad["spec"]["config"])
        plugin = conf["plugins"][0]
        plugin["ipam"]["configuration_path"] = api["flat"]
        single = {"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin}
        ip, refusal = _add(_binary("v0.8.0"), single, 1, api["dir"])
        assert ip is None and "spec.containerid: Required value" in refusal, refusal
        # ... and the refused ADD still took its address in the IPPool (written before the
        # reservation failed), so v0.7.0 gets the next one.
        [pool] = api["kube"].list_ippools()
        assert {k: a["podref"] for k, a in pool["spec"]["allocations"].items()} == {"1": "default/p1"}
        ip, refusal = _add(_binary("v0.7.0"), single, 2, api["dir"])
        assert ip == "10.59.0.2", refusal
