"""The whole sandbox stack for end-to-end tests (a pytest plugin loaded by conftest.py).

One stack per test session (emulators shared with the `emulators` fixture); tests isolate
themselves by creating clusters with names of their own rather than by restarting servers.
Helpers deliver events the two ways production does: a raw Pub/Sub push envelope (which
functions-framework converts) and a binary-mode CloudEvent as Eventarc sends it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.gke.realism import Realism
from sandbox.stack import Stack
from shared.core.refs import ClusterRef
from shared.core.settings import Settings
from tests.fakes import nad_doc

E2E_PREFIX = "e2e_"


@pytest.fixture(scope="session")
def stack(emulators: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    # GKE on an ordinary day (sandbox/gke/realism.py): its own operation after every create, three
    # zones per regional pool, the captured audit shapes, one ERROR entry per refusal.
    s = Stack(state_dir=Path(state), emulators=emulators, operation_delay=0.3, crd_delay=0.1,
              rollout_delay=0.2, realism=Realism(), extra_env={"MULTUS_PROVISIONER_COLLECTION_PREFIX": E2E_PREFIX,
                                            "MULTUS_PROVISIONER_MAX_ATTEMPTS": "3",
                                            "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "5"})
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def e2e_store(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Store reading what the functions wrote (same emulator, same prefix)."""
    from shared.adapters.store import Store

    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    return Store(Settings.from_env())


@pytest.fixture
def cluster_name(request: pytest.FixtureRequest) -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


def ref_of(stack: Stack, name: str) -> ClusterRef:
    return ClusterRef(stack.project, "us-central1", name)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             poll: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def wait_state(store: Any, ref: ClusterRef, state: str, timeout: float = 30.0) -> Any:
    def check() -> Any:
        rec = store.get_cluster(ref)
        return rec if rec is not None and rec.state == state else None

    try:
        return wait_for(check, timeout, f"{ref.cluster} to be {state}")
    except AssertionError:
        rec = store.get_cluster(ref)
        raise AssertionError(f"{ref.cluster} is {rec and rec.state}, not {state}; "
                             f"lastError={rec and rec.data.get('lastError')}") from None


def wait_nad(store: Any, ref: ClusterRef, namespace: str, name: str, state: str, timeout: float = 30.0) -> dict:
    def check() -> Any:
        doc = nad_doc(store, ref, namespace, name)
        return doc if doc is not None and doc.get("state") == state else None

    try:
        return wait_for(check, timeout, f"NAD {namespace}/{name} to be {state}")
    except AssertionError:
        doc = nad_doc(store, ref, namespace, name)
        raise AssertionError(f"NAD {namespace}/{name} is {doc and doc.get('state')}, not {state}: "
                             f"{doc and doc.get('message')}") from None


def envelope(payload: bytes, message_id: str, attributes: dict[str, str] | None = None) -> dict[str, Any]:
    return {"message": {"data": base64.b64encode(payload).decode(), "messageId": message_id,
                        "message_id": message_id, "publishTime": datetime.now(UTC).isoformat(),
                        "attributes": dict(attributes or {})},
            "subscription": "projects/multus-sandbox/subscriptions/manual-push"}


def push(url: str, payload: bytes, message_id: str, *, binary: bool = False, timeout: float = 60.0,
         attributes: dict[str, str] | None = None) -> int:
    """Deliver one message to a function; returns the HTTP status (2xx = acknowledged). A NAD
    request carries the requester's token in `attributes` (`stack.requester_attributes()`)."""
    body = envelope(payload, message_id, attributes)
    if binary:  # Eventarc: binary-mode CloudEvent, data = the messagePublished envelope
        headers = {"ce-id": message_id, "ce-specversion": "1.0",
                   "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
                   "ce-source": "//pubsub.googleapis.com/projects/multus-sandbox/topics/manual",
                   "ce-time": datetime.now(UTC).isoformat(), "content-type": "application/json"}
        return requests.post(url, data=json.dumps(body), headers=headers, timeout=timeout).status_code
    return requests.post(url, json=body, timeout=timeout).status_code


# -- helpers for the reliability suites (tests/test_faults.py, tests/test_concurrency.py) --------

def start_stack(emulators: Any, state_dir: Path, prefix: str, *, env: dict[str, str] | None = None,
                **options: Any) -> Stack:
    """A second, started Stack on the session's emulators with its own collection prefix and env.

    The caller stops it. `options` are Stack fields (`firestore_proxy=True`, `gke_proxy=True`...).
    """
    extra = {"MULTUS_PROVISIONER_COLLECTION_PREFIX": prefix, "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "5",
             **(env or {})}
    # Calm by default, on purpose: the reliability suites (tests/test_faults.py, test_concurrency.py)
    # inject a fault at each call site and count every retry and history entry it causes; GKE's own
    # operation after a create would add busy retries of its own. Stories on an ordinary day pass
    # realism=Realism() (tests/test_ordinary_day.py).
    options = {"operation_delay": 0.3, "crd_delay": 0.1, "rollout_delay": 0.2, "realism": Realism.calm(), **options}
    s = Stack(state_dir=state_dir, emulators=emulators, extra_env=extra, **options)
    s.start()
    return s


def direct_store(stack: Stack) -> Any:
    """A Store on the emulator itself (never through a fault proxy), with the stack's prefix."""
    from shared.adapters.store import Store

    prefix = stack.env.get("MULTUS_PROVISIONER_COLLECTION_PREFIX", "")
    return Store(Settings(project=stack.project, collection_prefix=prefix), timeout=30.0)


def log_entries(stack: Stack, fn: str) -> list[dict[str, Any]]:
    """The function's structured log lines (JSON objects), in order."""
    out = []
    for line in stack.function_log(fn).splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
