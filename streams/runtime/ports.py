"""The seams of the runtime: what the processor needs of the reader, the group and the task sink,
and what the reader needs of the processor. Neither side imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from faust.types import TP

from rules.tasks import Task

if TYPE_CHECKING:
    from streams.runtime.store import Store

# The generation a state preloaded before the first assignment is loaded for: none of the group's
# (streams.runtime.reader `preload`).
PRELOADED: Final = -(1 << 31)

Headers = Sequence[tuple[str, bytes]] | None


class InputRecord(Protocol):
    """One input record as the processor reads it (streams.runtime.reader.Record)."""

    @property
    def tp(self) -> TP: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> float | None: ...  # seconds
    @property
    def headers(self) -> Headers: ...


class Source(Protocol):
    """Where the records come from (streams.runtime.reader.Reader; the backtest's history)."""

    @property
    def consuming(self) -> bool: ...
    @property
    def caught_up(self) -> bool: ...
    @property
    def broker_ok(self) -> bool: ...

    def end(self, tp: TP) -> int | None:
        """How far the source knows `tp` to go (a caught-up topic must not be taken for one)."""

    def at_end(self, tp: TP, offset: int) -> bool:
        """Say whether `tp` is read to its end once the records before `offset` are taken."""

    def start(self, tp: TP) -> int:
        """The first offset of `tp` that exists."""

    async def seek(self, tp: TP, offset: int) -> None:
        """Read `tp` again from `offset`."""

    def reading(self, tp: TP) -> str:
        """What the source knows of how far `tp` was read, for the log."""


class Group(Protocol):
    """The consumer group's view of this worker: which partitions it owns now."""

    @property
    def generation(self) -> int | None: ...
    @property
    def rebalancing(self) -> bool: ...

    def owned(self) -> set[int]:
        """The partitions assigned to this worker."""


class Membership(Group, Protocol):
    """What the reader also needs of the group: who this worker and the other members are."""

    @property
    def me(self) -> str: ...
    @property
    def member(self) -> bool:
        """Whether this worker still holds its membership (False once the group dropped it)."""

    def members(self) -> set[str]:
        """The canonical URLs of the group's members in the current assignment."""


class TaskHandler(Protocol):
    """The decision and delivery side of tasks (sinks.tasks.TaskSink; the backtest's MemoryTasks)."""

    @property
    def degraded(self) -> bool: ...

    async def handle(self, task: Task, *, port_out_open: bool, trigger_kafka_ts_ms: int | None) -> object:
        """Decide `task` under the contact policy and deliver it if issued."""


@runtime_checkable
class QueuedTasks(TaskHandler, Protocol):
    """A task handler with the call-centre capacity queues (sinks.tasks.TaskSink)."""

    async def register(self, partitions: set[int]) -> None:
        """Name the partitions a release waits for."""

    async def morning(self, partition: int, day: date, *, arrived: bool) -> bool:
        """Pass `day`'s 08:00 for `partition`; say whether the release is done."""


class Batches(Protocol):
    """What the reader drives (streams.runtime.processor.Processor)."""

    published: set[str]

    @property
    def output_ends(self) -> dict[str, int]: ...

    def keepable(self) -> set[int]:
        """The loaded partitions whose state in memory is all written and acknowledged."""

    def prebuild(self, owned: set[int], data: dict[int, dict[bytes, bytes]],
                 ahead: dict[int, dict[bytes, dict[str, int]]]) -> Store | None:
        """Load partitions `owned` into a store apart (in a thread); None when a plain load must see to them."""

    def load(self, owned: set[int], data: dict[int, dict[bytes, bytes]], generation: int | None, *,
             started: float | None = None, last_write: int = 0, kept: set[int] | frozenset[int] = frozenset(),
             ahead: dict[int, dict[bytes, dict[str, int]]] | None = None, store: Store | None = None) -> None:
        """Replace the state with what the changelog holds for partitions `owned`, except `kept`
        (`ahead`: the subscribers read ahead of their partition's clock), or with `store` (`prebuild`'s)."""

    def output_starts(self) -> dict[str, int]:
        """Per output partition, where the outputs of the loaded state may start."""

    def next_offsets(self, partitions: set[int]) -> dict[TP, int]:
        """Per input partition of `partitions`, the next offset the state needs."""

    def unstarted(self, p: int) -> list[TP]:
        """The input partitions of `p` whose first record the watermark waits for."""

    def crowded(self) -> set[TP]:
        """The input partitions to pause until their partitions' parked records shrink."""

    async def process(self, records: Sequence[InputRecord], *, ended: set[int] | None = None) -> None:
        """Handle one batch of records."""

    async def idle(self, *, ended: set[int] | None = None) -> None:
        """Between batches with no record."""

    async def tick(self, now_ms: int) -> None:
        """Close days by the wall clock on idle, live partitions."""

    async def write_state(self, *, wait: bool = True) -> bool:
        """Write the state touched since the last write."""

    async def flushed(self) -> None:
        """Return once the broker has every state written so far."""
