"""Fixtures for the sandbox GKE API server (pytest plugin, loaded by tests/conftest.py).

- `gke_sandbox`: a started `sandbox.gke.GkeSandbox` on the default scenario (demo-legacy exists;
  demo-eligible is `create_at_start: false`, create it with `gke_sandbox.create_cluster(...)`),
  operations finishing after 0.1 s; audit entries in `gke_sandbox.audit_log`. Stopped afterwards.
  Realistic (`Realism()`): GKE's own operation after each create, three zones per regional pool, the
  captured audit shapes. `calm_gke_sandbox`: the same on `Realism.calm()`, for tests that check
  exact call sequences or node counts of a calm world.
- `gke_settings`: `Settings` for project multus-sandbox with `gke_endpoint` pointing at it.
- `gke`: a `shared.adapters.gke.Gke` against it (closed afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.core.settings import Settings


def _sandbox(realism: object) -> Iterator[object]:
    from sandbox.gke.server import GkeSandbox

    sandbox = GkeSandbox(operation_delay=0.1, realism=realism)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def gke_sandbox() -> Iterator[object]:
    from sandbox.gke.realism import Realism

    yield from _sandbox(Realism())


@pytest.fixture
def calm_gke_sandbox() -> Iterator[object]:
    from sandbox.gke.realism import Realism

    yield from _sandbox(Realism.calm())


@pytest.fixture
def gke_settings(gke_sandbox: object) -> Settings:
    return Settings(project=gke_sandbox.scenario.project, gke_endpoint=gke_sandbox.endpoint)  # type: ignore[attr-defined]


@pytest.fixture
def gke(gke_settings: Settings) -> Iterator[object]:
    from shared.adapters.gke import Gke

    adapter = Gke(gke_settings)
    try:
        yield adapter
    finally:
        adapter.close()
