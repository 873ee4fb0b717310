"""Decide a batch's tasks at its commit: one subscriber's in order, subscribers side by side."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import date

from aiokafka.errors import KafkaError as AIOKafkaError
from confluent_kafka import KafkaException
from redis.exceptions import RedisError

from rules.day import Decide
from rules.tasks import Task
from sinks.redis_store import Stopped
from streams.runtime.ports import QueuedTasks, TaskHandler

log = logging.getLogger(__name__)

# Errors of Redis or the broker (or the stop): a batch they fail is read again, never dead-lettered.
OUTAGES: tuple[type[BaseException], ...] = (Stopped, OSError, TimeoutError, RedisError, KafkaException, AIOKafkaError)
# Subscribers whose tasks are decided at the same time (each task waits on Redis and the broker).
TASK_CONCURRENCY = 64


class TaskRunner:
    """The batch's tasks to decide, with the 08:00s of the capacity queues its event time passed."""

    def __init__(self, handler: TaskHandler, failed: Callable[[Task, Exception], None]) -> None:
        self.handler = handler
        self.failed = failed  # dead-letters a task that cannot be decided (not an outage)
        self.due: list[Decide] = []
        # The 08:00s passed: (position in `due` when passed, partition, day).
        self.mornings_due: list[tuple[int, int, date]] = []
        # Partitions past an 08:00 whose release waits for other partitions: asked again at each commit.
        self.unreleased: dict[int, date] = {}
        # Whether the owned partitions that hold records were named to the queue since the load:
        # a release waits for each of them to pass its 08:00.
        self.registered = False
        # The 30-day ARPU (fen) of each call-centre task when it was decided: its rank in the queue.
        self.arpu: dict[str, int] = {}

    def reset(self) -> None:
        """Forget everything after a load: the next pass re-delivers what a crash may have left."""
        self.due.clear()
        self.mornings_due.clear()
        self.unreleased.clear()
        self.registered = False
        self.arpu.clear()

    def passed(self, partition: int, day: date) -> None:
        """Note that `partition`'s event time passed `day`'s 08:00, among the tasks decided so far."""
        self.mornings_due.append((len(self.due), partition, day))

    async def run(self, with_records: Callable[[], set[int]]) -> None:
        """Decide, publish and record the batch's tasks: one subscriber's in order, subscribers side by side.

        Each task waits on Redis and on the broker's acknowledgement of its message; a day close
        that decides thousands of tasks one after the other spent minutes waiting. A subscriber's
        tasks stay in order, since each one's contact is the next one's cooldown. With a call-centre
        capacity, the 08:00s the batch passed come between the tasks decided before and after them;
        `with_records` names the owned partitions that hold records (a release waits for them).
        """
        due, self.due = self.due, []
        mornings, self.mornings_due = self.mornings_due, []
        handler = self.handler
        if not isinstance(handler, QueuedTasks) or not (mornings or self.unreleased):
            await self._decide_all(due)  # the backtest's in-memory handler has no queue
            self.arpu.clear()
            return
        if not self.registered:
            # Before any arrival: a partition read after the others must not be released without.
            await handler.register(with_records())
            self.registered = True
        # The tasks decided before each 08:00 passed, then its release, then the tasks after it.
        start = 0
        for at, p, day in mornings:
            await self._decide_all(due[start:at])
            start = at
            await self._morning(handler, p, day, arrived=False)
        await self._decide_all(due[start:])
        for p, day in list(self.unreleased.items()):
            await self._morning(handler, p, day, arrived=True)
        self.arpu.clear()

    async def _morning(self, handler: QueuedTasks, p: int, day: date, *, arrived: bool) -> None:
        """Pass `day`'s 08:00 for partition `p` (sinks.tasks.TaskSink.morning); remember it while
        its release waits for the other partitions."""
        try:
            released = await handler.morning(p, day, arrived=arrived)
        except OUTAGES:
            raise  # the batch fails and is read again; arrivals, releases and deliveries are idempotent
        except Exception:
            # Not an outage: what is left in the outbox is delivered at the next 08:00 passed.
            log.exception("the capacity release of %s for partition %d failed", day.isoformat(), p)
            released = True
        if released:
            if self.unreleased.get(p) == day:
                del self.unreleased[p]
        else:
            self.unreleased[p] = day

    async def _decide_all(self, due: list[Decide]) -> None:
        """Decide `due`: one subscriber's tasks in order, subscribers side by side."""
        if not due:
            return
        handler = self.handler
        by_subscriber: dict[str, list[Decide]] = {}
        for item in due:
            by_subscriber.setdefault(item.task.msisdn, []).append(item)
        limit = asyncio.Semaphore(TASK_CONCURRENCY)

        async def run(items: list[Decide]) -> None:
            async with limit:
                for item in items:
                    try:
                        await handler.handle(item.task, port_out_open=item.port_out_open,
                                             trigger_kafka_ts_ms=item.trigger_ts_ms)
                    except OUTAGES:
                        raise  # the batch fails and is read again: nothing is decided unchecked
                    except Exception as exc:
                        # Not an outage: a task that cannot be decided goes to the dead letters on
                        # its own, and the batch goes on (it would fail the same way every time).
                        self.failed(item.task, exc)

        async with asyncio.TaskGroup() as group:
            for items in by_subscriber.values():
                group.create_task(run(items))
