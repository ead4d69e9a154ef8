"""The identity and data-path ports' contract: every test runs on the in-memory fake
(tests/fakes.py `FakeIdentity`, `FakeDataPath`) and on the real adapter against the sandbox's
server (`IdTokenVerifier` on the certificate server of sandbox/identity.py; `HttpDataPath` on the
probe of sandbox/datapath.py), so the fakes that flow tests use answer as the adapters do."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.core.errors import Rejected, RejectionKind
from shared.core.refs import ClusterRef
from shared.ports import DataPathPort, IdentityPort, PodDataPath, Reach
from tests.fakes import FakeDataPath, FakeIdentity

AUD = "https://multus-provisioner.example/nad-requests"
REF = ClusterRef("multus-sandbox", "us-central1", "blue")
UID = "0b6f1a9e-2c1d-4a51-9a34-7e0f4c1e2b3a"
OTHER_UID = "5d2e7c40-8f3b-4c1a-b6de-0a9b8c7d6e5f"


class Minted:
    """An identity port and a way to get a token it accepts for an email."""

    def __init__(self, port: IdentityPort, mint: Any) -> None:
        self.port, self.mint = port, mint


@pytest.fixture(params=["fake", "sandbox"])
def identity(request: pytest.FixtureRequest) -> Iterator[Minted]:
    if request.param == "fake":
        fake = FakeIdentity()
        yield Minted(fake, fake.mint)
        return
    from sandbox.identity import IdentityServer
    from shared.adapters.idtoken import IdTokenVerifier

    server = IdentityServer()
    try:
        yield Minted(IdTokenVerifier((AUD,), certs_url=f"{server.url}/certs"),
                     lambda email: server.issuer.token(AUD, email))
    finally:
        server.stop()


def test_a_token_names_its_requester_in_lower_case(identity: Minted) -> None:
    who = identity.port.verify(identity.mint("Alice@Example.com"))
    assert who.email == "alice@example.com" and who.subject


@pytest.mark.parametrize("token", [None, "", "not-a-token", "a.b.c"])
def test_anything_else_is_unauthenticated_on_the_token_attribute(identity: Minted, token: str | None) -> None:
    with pytest.raises(Rejected) as e:
        identity.port.verify(token)
    assert e.value.kind == RejectionKind.UNAUTHENTICATED
    assert [p.field for p in e.value.problems] == ["attributes.idToken"]


class Probed:
    """A data-path port and a way to make a pod known to it (what the node's kernel would show)."""

    def __init__(self, port: DataPathPort, add: Any) -> None:
        self.port, self.add = port, add


class _Cni:
    """What the sandbox probe asks of a real CNI (sandbox/kube/realcni): one pod, one address."""

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def pod_info(self, uid: str) -> dict[str, Any] | None:
        return {"netns": f"pod-{uid[:8]}"} if uid in self.known else None

    def addresses(self, uid: str, ifname: str = "net1") -> list[dict[str, Any]]:
        return [{"ifname": ifname, "addr_info": [{"family": "inet", "local": self.known[uid].split("/")[0],
                                                  "prefixlen": int(self.known[uid].split("/")[1]),
                                                  "scope": "global"}]}]

    def ping(self, uid: str, address: str, ifname: str = "net1", count: int = 3) -> dict[str, Any]:
        return {"icmp": True, "arp": True, "detail": "3 received"}


@pytest.fixture(params=["fake", "sandbox"])
def datapath(request: pytest.FixtureRequest) -> Iterator[Probed]:
    if request.param == "fake":
        fake = FakeDataPath()

        def add(uid: str, cidr: str) -> None:
            fake.pods[(REF.path, uid)] = PodDataPath(f"pod-{uid[:8]}", (cidr,))
            fake.reaches[(REF.path, uid, "172.16.1.4")] = Reach(True, True, "3 received")
        yield Probed(fake, add)
        return
    from sandbox.datapath import DataPathProbe
    from shared.adapters.datapath import HttpDataPath

    cni = _Cni()
    probe = DataPathProbe(lambda name: cni if name == REF.cluster else None)
    url = probe.start()
    try:
        yield Probed(HttpDataPath(url, timeout=10), lambda uid, cidr: cni.known.__setitem__(uid, cidr))
    finally:
        probe.stop()


def test_a_known_pod_shows_its_namespace_and_addresses(datapath: Probed) -> None:
    datapath.add(UID, "172.16.1.3/24")
    assert datapath.port.observe(REF, UID, "net1") == PodDataPath(f"pod-{UID[:8]}", ("172.16.1.3/24",))
    assert datapath.port.reach(REF, UID, "172.16.1.4", "net1") == Reach(True, True, "3 received")


def test_what_is_not_known_is_not_checked(datapath: Probed) -> None:
    datapath.add(UID, "172.16.1.3/24")
    assert datapath.port.observe(REF, OTHER_UID, "net1") is None
    other = ClusterRef("multus-sandbox", "us-central1", "green")
    assert datapath.port.observe(other, UID, "net1") is None
    assert datapath.port.reach(other, UID, "172.16.1.4", "net1") is None
