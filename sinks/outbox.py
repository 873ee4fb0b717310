"""The batch's light changes and dead letters on their way to the broker, sent once.

Processing a record does no I/O: its outputs wait here and are enqueued at the batch's commit
(streams.runtime.checkpoint), which then waits for the broker's acknowledgements before the
state may be written. After a crash the records since the last state write are processed
again; what they produced before the crash was read back from the output topics at recovery
(streams.runtime.outputs) as identities (`published`), and is not sent twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# (topic base, key, value, headers, identity)
Output = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]], str]
# (topic base, key, value, headers) -> enqueued; returns the future of the broker's acknowledgement.
Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[Awaitable[object]]]


def light_id(msisdn: str, at: str | None, light: str) -> str:
    """Identify a light-change message (the same change processed again has the same identity)."""
    return f"L|{msisdn}|{at}|{light}"


def deadletter_id(source: str, key: bytes | None = None) -> str:
    """Identify a dead letter by the record it came from: `topic/partition/offset`, or for an
    unreadable state record (whose offset the load does not keep) `topic/partition` and its key."""
    return f"D|{source}" if key is None else f"D|{source}|{key.hex()}"


def task_identity(task_id: str) -> str:
    """Identify a task message by its task_id (its `ce_id` header)."""
    return f"T|{task_id}"


class Outbox:
    """Outputs queued by the batch; enqueued at its commit, except those already on their topics."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.queued: list[Output] = []
        # Identities of the outputs found on the output topics at recovery, past the offsets the
        # loaded state recorded: re-processing does not send them again.
        self.published: set[str] = set()
        self.acks: list[Awaitable[object]] = []

    def put(self, output: Output) -> None:
        """Queue one output for the batch's commit."""
        self.queued.append(output)

    async def enqueue(self) -> None:
        """Enqueue the queued outputs, except those found published at recovery (triggered by the
        checkpoint at the batch's commit; it waits for `acks` before the state is written)."""
        out, self.queued = self.queued, []
        published = self.published
        for base, key, value, headers, identity in out:
            if identity in published:
                published.discard(identity)
                continue
            self.acks.append(await self.send(base, key, value, headers))

    def clear(self) -> None:
        """Forget what the batch queued (it failed and is read again)."""
        self.queued.clear()
