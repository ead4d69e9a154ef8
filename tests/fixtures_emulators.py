"""Fixtures for Google's Firestore and Pub/Sub emulators (a pytest plugin loaded by conftest.py).

- `emulators` (session): both emulators, started once, on first use, stopped at the end. When
  FIRESTORE_EMULATOR_HOST (or PUBSUB_EMULATOR_HOST) is set before the session, that server is
  used instead of starting one: the contract tests then run against any Firestore you point
  them at. Missing Java or emulator packages fail the tests with the exact fix, never skip them.
- `store_settings` (function): `Settings` for project "multus-test" with a collection prefix
  unique to the test, and FIRESTORE_EMULATOR_HOST set for the test, so tests never see each
  other's documents and no reset is needed while the session runs.
- `firestore_client` (function): a `google.cloud.firestore.Client` on that emulator.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.emulators import Emulators
from shared.core.settings import Settings

TEST_PROJECT = "multus-test"


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    emu = Emulators(project=TEST_PROJECT,
                    firestore_host=os.environ.get("FIRESTORE_EMULATOR_HOST") or None,
                    pubsub_host=os.environ.get("PUBSUB_EMULATOR_HOST") or None)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _prefix(node_name: str) -> str:
    """A collection prefix unique to this test, readable in the emulator: t<name-part>_<random>_."""
    stem = re.sub(r"[^A-Za-z0-9]", "", node_name)[:16]
    return f"t{stem}_{uuid.uuid4().hex[:10]}_"


@pytest.fixture
def store_settings(emulators: Emulators, monkeypatch: pytest.MonkeyPatch,
                   request: pytest.FixtureRequest) -> Iterator[Settings]:
    host = emulators.firestore_host
    assert host, "the emulators fixture has no Firestore"
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", TEST_PROJECT)
    yield Settings(project=TEST_PROJECT, collection_prefix=_prefix(request.node.name))
    # Belt and braces: the prefix already isolates tests; the emulator's documented reset endpoint
    # then empties the test project (the end-to-end stack lives in another project, untouched).
    emulators.reset_firestore(project=TEST_PROJECT)


@pytest.fixture
def firestore_client(emulators: Emulators, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from google.cloud import firestore

    host = emulators.firestore_host
    assert host, "the emulators fixture has no Firestore"
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)
    client = firestore.Client(project=TEST_PROJECT)
    try:
        yield client
    finally:
        client.close()
