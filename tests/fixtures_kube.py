"""Fixtures for the sandbox Kubernetes API server (pytest plugin, loaded by tests/conftest.py).

- `kube_server`: a started `sandbox.kube.KubeApiServer` (2 nodes, short delays), stopped after.
- `kube_api_client`: a `kubernetes.client.ApiClient` for it (TLS verified with its CA, token).
- `kube`: a `shared.adapters.kube.Kube` on that client.
- `make_api_client(server, tmp_path, ca_pem=None, token=None)`: helper for clients with other
  credentials (another CA, no token).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def make_api_client(server: Any, directory: Path, *, ca_pem: bytes | None = None,
                    token: str | None = None, retries: int = 0) -> Any:
    import kubernetes.client

    ca = directory / f"ca-{secrets.token_hex(4)}.pem"
    ca.write_bytes(server.ca_pem if ca_pem is None else ca_pem)
    cfg = kubernetes.client.Configuration()
    cfg.host = server.url
    cfg.ssl_ca_cert = str(ca)
    cfg.verify_ssl = True
    cfg.retries = retries
    if token != "":
        cfg.api_key = {"authorization": token or server.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
    return kubernetes.client.ApiClient(cfg)


@pytest.fixture
def kube_server() -> Iterator[Any]:
    from sandbox.kube import KubeApiServer

    server = KubeApiServer(token=secrets.token_urlsafe(16), nodes=2, crd_delay=0.1, rollout_delay=0.3,
                           pod_delay=0.05, name="test")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kube_api_client(kube_server: Any, tmp_path: Path) -> Iterator[Any]:
    client = make_api_client(kube_server, tmp_path)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def kube(kube_api_client: Any) -> Any:
    from shared.adapters.kube import Kube

    return Kube(kube_api_client, timeout=10.0)
