"""Dead letters (CONTRACT §1 Bad input): the record unchanged, with `error` and `source` headers."""

from __future__ import annotations

from sinks.outbox import Outbox, deadletter_id

class DeadLetterSink:
    """Queue dead letters in the batch's outbox; remember (topic, reason) for the batch's metrics."""

    def __init__(self, outbox: Outbox, topic: str) -> None:
        self.outbox = outbox
        self.topic = topic  # the topic's base name (streams.topics.DEADLETTER)
        # The batch's dead letters by (input topic, reason), counted with its events.
        self.counted: list[tuple[str, str]] = []

    def put(self, base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
            source: str, error: str, *, exception: str | None = None, identity_key: bytes | None = None) -> None:
        """Queue one dead letter of a record of `base` read at `source` (topic/partition/offset)."""
        headers = [*headers, ("error", error.encode()), ("source", source.encode())]
        if exception is not None:
            headers.append(("exception", exception.encode()))
        self.outbox.put((self.topic, key, value, headers, deadletter_id(source, identity_key)))
        self.counted.append((base, error))
