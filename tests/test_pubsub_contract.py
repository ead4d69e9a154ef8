"""The Pub/Sub port's contract: every test runs on `FakePublisher` (tests/fakes.py) and on the real
adapter (`shared.adapters.pubsub.Publisher`) against Google's Pub/Sub emulator, parametrised, so
the fake the fan-out's flow tests use publishes as the adapter does: one id per message in
order, every message delivered once with its bytes, batches of `batch`, and the same error
types for a missing topic, a malformed topic name and data that is not bytes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from shared.core.errors import Permanent
from shared.ports import PublisherPort
from tests.fakes import FakePublisher
from tests.fixtures_emulators import TEST_PROJECT


@dataclass
class Side:
    """A publisher under test, how to make a topic for it, and how to read what reached a topic."""

    port: PublisherPort
    topic: Callable[[], str]  # a new topic (and, on the emulator, a subscription to read it)
    received: Callable[[str, int], list[bytes]]  # the data that reached a topic, waiting for `expected`


@pytest.fixture(params=["fake", pytest.param("emulator", marks=pytest.mark.emulator)])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "fake":
        fake = FakePublisher(batch=100)

        def fake_topic() -> str:
            name = f"projects/{TEST_PROJECT}/topics/contract-{uuid.uuid4().hex[:8]}"
            fake.create_topic(name)
            return name

        yield Side(fake, fake_topic, lambda topic, expected: list(fake.topics[topic]))
        return
    yield from _emulator_side(request)


def _emulator_side(request: pytest.FixtureRequest) -> Iterator[Side]:
    from google.cloud import pubsub_v1

    from shared.adapters.pubsub import Publisher

    emulators = request.getfixturevalue("emulators")
    monkeypatch = request.getfixturevalue("monkeypatch")
    assert emulators.pubsub_host, "the emulators fixture has no Pub/Sub"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulators.pubsub_host)
    admin, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    made: list[tuple[str, str]] = []

    def topic() -> str:
        name = f"contract-{uuid.uuid4().hex[:8]}"
        topic_path = f"projects/{TEST_PROJECT}/topics/{name}"
        sub_path = f"projects/{TEST_PROJECT}/subscriptions/{name}"
        admin.create_topic(name=topic_path)
        subscriber.create_subscription(name=sub_path, topic=topic_path, ack_deadline_seconds=60)
        made.append((topic_path, sub_path))
        return topic_path

    def received(topic_path: str, expected: int) -> list[bytes]:
        sub_path = dict(made)[topic_path]
        got: dict[str, bytes] = {}
        # Pull until `expected` distinct messages arrived (waits for a state, bounded by the calls).
        for _ in range(200):
            if len(got) >= expected:
                break
            resp = subscriber.pull(subscription=sub_path, max_messages=100, timeout=10)
            if resp.received_messages:
                subscriber.acknowledge(subscription=sub_path, ack_ids=[m.ack_id for m in resp.received_messages])
            for m in resp.received_messages:
                got[m.message.message_id] = m.message.data
        return [data for _, data in sorted(got.items(), key=lambda kv: int(kv[0]))]

    publisher = Publisher(batch=100, timeout=30)
    try:
        yield Side(publisher, topic, received)  # type: ignore[arg-type]
    finally:
        publisher.close()
        for topic_path, sub_path in made:
            subscriber.delete_subscription(subscription=sub_path)
            admin.delete_topic(topic=topic_path)
        subscriber.close()
        admin.stop()


def test_one_id_per_message_in_order_and_every_message_delivered(side: Side) -> None:
    topic = side.topic()
    messages = [f'{{"cluster": "c{i}"}}'.encode() for i in range(5)]
    ids = side.port.publish(topic, messages)
    assert len(ids) == 5 and len(set(ids)) == 5 and all(isinstance(i, str) and i for i in ids)
    assert sorted(side.received(topic, 5)) == sorted(messages)


def test_nothing_to_publish_is_no_call(side: Side) -> None:
    assert side.port.publish(side.topic(), []) == []
    assert side.port.calls == 0 and side.port.published == 0  # type: ignore[attr-defined]


def test_messages_go_out_in_batches(side: Side) -> None:
    topic = side.topic()
    messages = [str(i).encode() for i in range(250)]
    ids = side.port.publish(topic, messages)
    assert len(set(ids)) == 250
    assert side.port.calls == 3 and side.port.published == 250  # type: ignore[attr-defined]
    assert sorted(side.received(topic, 250)) == sorted(messages)


def test_a_missing_topic_is_permanent(side: Side) -> None:
    with pytest.raises(Permanent) as info:
        side.port.publish(f"projects/{TEST_PROJECT}/topics/never-created-{uuid.uuid4().hex[:6]}", [b"x"])
    assert info.value.api == "pubsub" and info.value.code == "NotFound"


def test_data_that_is_not_bytes_is_permanent(side: Side) -> None:
    with pytest.raises(Permanent) as info:
        side.port.publish(side.topic(), ["text, not bytes"])  # type: ignore[list-item]
    assert info.value.code == "TypeError"


def test_a_malformed_topic_name_is_permanent(side: Side) -> None:
    with pytest.raises(Permanent) as info:
        side.port.publish("topics/no-project", [b"x"])
    assert info.value.api == "pubsub" and info.value.code == "InvalidArgument"
