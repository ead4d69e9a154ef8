"""Which address of a cluster's control plane the controller dials, decided once, from GKE's fields.

GKE offers up to three ways in (docs/SANDBOX_GKE.md "An ordinary day"; the GKE references of
`ControlPlaneEndpointsConfig`, `IPEndpointsConfig`, `DNSEndpointConfig`, `PrivateClusterConfig`):

1. the DNS-based endpoint (`dns_endpoint_config.endpoint`, always present, served only when
   `allow_external_traffic`): IAM-guarded, a publicly trusted certificate, reachable from Cloud
   Functions without any VPC plumbing. Preferred whenever it is enabled.
2. the public IP endpoint (`Cluster.endpoint` when `ip_endpoints_config.enable_public_endpoint`),
   verified with the cluster's own CA.
3. the private IP endpoint only (`endpoint` == `private_endpoint`, a VPC address): reachable only
   through VPC egress (infra var.vpc_connector). Without it the controller says what to enable
   rather than dialling an address it cannot reach.

Pure: the adapter reads the fields, this module decides.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from shared.core.errors import NeedsFix, Transient

DNS, PUBLIC_IP, PRIVATE_IP = "dns", "public-ip", "private-ip"


@dataclass(frozen=True)
class EndpointFields:
    """The endpoint fields of a `container_v1.Cluster`, as plain values."""

    name: str
    endpoint: str = ""
    dns_endpoint: str = ""
    dns_external: bool = False
    ip_config_present: bool = False  # control_plane_endpoints_config.ip_endpoints_config is set
    public_enabled: bool = True
    private_endpoint: str = ""
    authorized_networks: bool = False


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: `host` (and `port`, None = 443) and how the server's certificate is checked."""

    kind: str
    host: str
    port: int | None
    why: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "address": self.address, "why": self.why}


def split_host_port(text: str) -> tuple[str, int | None]:
    """`name:443` / `1.2.3.4` / `[::1]:8443` -> (host, port or None)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port) if port.isdigit() else None
    return text, None


def _private(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_private and not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose(f: EndpointFields, *, vpc_egress: bool) -> Endpoint:
    """The endpoint to dial, or `NeedsFix` saying what to enable when none is reachable."""
    if f.dns_external and f.dns_endpoint:
        host, port = split_host_port(f.dns_endpoint)
        return Endpoint(DNS, host, port, "the DNS-based endpoint allows external traffic")
    if not f.endpoint and not f.private_endpoint:
        raise Transient(f"cluster {f.name!r} has no endpoint yet", code="UNAVAILABLE", api="gke")
    host, port = split_host_port(f.endpoint)
    public = f.public_enabled if f.ip_config_present else not _private(host)
    if f.endpoint and public and not (f.private_endpoint and host == f.private_endpoint):
        why = "the public IP endpoint" + (" (authorized networks are enabled: the controller's egress address "
                                          "must be in them)" if f.authorized_networks else "")
        return Endpoint(PUBLIC_IP, host, port, why)
    private = f.private_endpoint or host
    if vpc_egress and private:
        p_host, p_port = split_host_port(private)
        return Endpoint(PRIVATE_IP, p_host, p_port or port, "the private endpoint, through the functions' VPC egress")
    raise NeedsFix(
        f"cluster {f.name!r} exposes only a private control-plane endpoint ({private or 'none'}) and the "
        "controller has no VPC egress", finding_id="control-plane-unreachable", code="UNAVAILABLE", api="gke",
        fix=(f"enable the DNS-based endpoint (gcloud container clusters update {f.name} --enable-dns-access; "
             "recommended: IAM-guarded, no VPC plumbing), or deploy the controller with VPC egress "
             "(infra var.vpc_connector, a Serverless VPC Access connector in the cluster's VPC); then ask for a "
             "re-check of the cluster"))
