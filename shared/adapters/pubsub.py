"""The Pub/Sub publisher adapter: the reconcile fan-out's messages, published in batches.

`google.cloud.pubsub_v1` is imported on first use (cold start: only the tick publishes). The
client batches by itself (up to `max_messages` per Publish RPC); `publish` waits for every
message id so a tick that returns has really handed each cluster's message to Pub/Sub. Errors
map to the controller's types: retryable gRPC codes and timeouts -> `Transient`, the rest ->
`Permanent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.core.errors import Permanent, Transient

_RETRYABLE = ("DeadlineExceeded", "ServiceUnavailable", "TooManyRequests", "InternalServerError", "Aborted",
              "ResourceExhausted", "TimeoutError", "Unknown")


class Publisher:
    def __init__(self, *, batch: int = 100, timeout: float = 60.0) -> None:
        self.batch = batch
        self.timeout = timeout
        self._client: Any = None
        self.published = 0
        self.calls = 0

    def _publisher(self) -> Any:
        if self._client is None:
            import google.cloud.pubsub_v1 as pubsub_v1

            self._client = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(max_messages=self.batch, max_latency=0.05))
        return self._client

    def publish(self, topic: str, messages: Sequence[bytes]) -> list[str]:
        """Publish every message to `topic`; returns their message ids, in order."""
        client = self._publisher()
        ids: list[str] = []
        try:
            for start in range(0, len(messages), self.batch):
                chunk = messages[start:start + self.batch]
                futures = [client.publish(topic, data) for data in chunk]
                ids += [f.result(timeout=self.timeout) for f in futures]
                self.calls += 1
        except Exception as e:  # google.api_core exceptions, futures' TimeoutError
            name = type(e).__name__
            if name in _RETRYABLE:
                raise Transient(f"publish to {topic}: {name}: {e}", code=name, api="pubsub") from None
            raise Permanent(f"publish to {topic}: {name}: {e}", code=name, api="pubsub") from None
        self.published += len(ids)
        return ids

    def close(self) -> None:
        if self._client is not None:
            self._client.stop()
            self._client = None
