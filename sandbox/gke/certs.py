"""A throwaway certificate authority for clusters that no Kubernetes sandbox serves.

Every GKE cluster publishes a CA certificate; the controller writes it to a file and verifies the
cluster API with it. When no `on_cluster` hook supplies the CA of a real (sandbox) API server, the
cluster still gets a well-formed one, so code that parses it behaves as it would against GKE.
EC P-256 keeps generation in the millisecond range (RSA-2048 costs ~100 ms per cluster).
"""

from __future__ import annotations

import datetime as dt


def self_signed_ca_pem(common_name: str) -> bytes:
    """A PEM-encoded self-signed CA certificate (the private key is discarded)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
