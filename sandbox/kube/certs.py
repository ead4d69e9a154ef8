"""Private CAs and server certificates for the sandbox API servers.

Each simulated cluster gets its own CA, as a GKE cluster does, so a client configured with
another cluster's CA fails TLS verification exactly as it would against Google. EC P-256 keys
keep generation in the milliseconds (dozens of servers start per test run).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class CertBundle:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_certs(common_name: str = "sandbox") -> CertBundle:
    """Return a fresh CA of its own and a server certificate for 127.0.0.1 / localhost signed by it."""
    ca = CertAuthority(f"{common_name}-ca")
    return ca.issue("localhost", ip_addresses=("127.0.0.1",), extra_dns=("kubernetes.default.svc",),
                    subject="kube-apiserver")


class CertAuthority:
    """A sandbox-wide CA that stands in for the public roots: it signs the DNS-based endpoints' certificates.

    GKE serves a cluster's DNS-based endpoint (`gke-....gke.goog`) with a publicly trusted
    certificate, not with the cluster CA; clients trust it through their ordinary root store. The
    sandbox cannot use real roots, so it issues those certificates from this one CA and offers its
    PEM as a bundle file (`MULTUS_PROVISIONER_SANDBOX_CA_BUNDLE` in the stack's env file).
    """

    def __init__(self, common_name: str = "Sandbox Public Roots") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = dt.datetime.now(dt.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "multus-provisioner sandbox"),
                                x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, dns_name: str, *, ip_addresses: tuple[str, ...] = (), extra_dns: tuple[str, ...] = (),
              subject: str | None = None) -> CertBundle:
        """A server certificate for `dns_name` (and, only when asked, more names or IP addresses).

        A DNS-based endpoint's certificate names its host and nothing else: no IP, no localhost."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (subject or dns_name)[:64])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
                + [x509.DNSName(name) for name in (dns_name, *extra_dns)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        return CertBundle(ca_pem=self.ca_pem, cert_pem=cert.public_bytes(pem),
                          key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))


def server_context(bundle: CertBundle):
    """An `ssl.SSLContext` serving `bundle`'s certificate (TLS 1.2+, HTTP/1.1 only via ALPN)."""
    import os
    import ssl
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain only reads files: write them to a private temp dir and remove it at once.
    with tempfile.TemporaryDirectory(prefix="sandbox-kube-") as d:
        cert_path, key_path = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        with open(cert_path, "wb") as f:
            f.write(bundle.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
