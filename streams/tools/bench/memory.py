"""Step 10 of `churnlight bench` (issue 15): the resident memory a subscriber costs a worker at 1M subscribers.

No broker, no 1M-event run: a sample of the bench's base (its workload at the default density, ten
usage events a subscriber over ~30 days, and a profile each) goes through the worker's processor
in-process; its states are serialised; then N subscribers with those states (cycled under N
distinct msisdns, plus the partitions' clock records) are handed to a worker's store as the
recovery hands it the changelog (`Store.load`: every record decoded, checked and indexed). The
figure is the process's VmRSS once loaded (the records read let go) less before the records were
built, per subscriber: states, keys, indexes and the decoded cache together; and again once as
many other subscribers as the cache holds were read (each decoded state then holds its bytes too).

It runs in a child process (`python -m streams.tools.bench.memory`), so that nothing of the
bench's own is resident, and prints one JSON object.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import Any, Final

import click
import orjson
from faust.types import TP

from rules.ruleset import load_rule_set
from sinks.deadletters import DeadLetterSink
from sinks.outbox import Outbox
from streams import collector
from streams.metrics import Metrics
from streams.runtime.reader import Record
from streams.runtime.store import META_PREFIX, Store, clock_key, encode_clock, partition_of
from streams.settings import Settings
from streams.tools.bench.workload import START_DAYS_AGO, Workload, records
from streams.topics import DEADLETTER

SUBSCRIBERS: Final = 1_000_000
SAMPLE: Final = 20_000  # subscribers run through the processor for their states
EVENTS_PER_SUBSCRIBER: Final = 10  # the bench's default density (1M events, 100k subscribers)


def rss_bytes() -> int:
    """The process's resident set (VmRSS), bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _done(*_: Any) -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def sample_states(settings: Settings, subscribers: int) -> tuple[list[bytes], dict[bytes, bytes]]:
    """Run a base of `subscribers` of the bench's workload through the processor; return their
    serialised states and the partitions' clock records."""
    from streams.tools.backtest import history_processor

    rules = load_rule_set(settings.rules)
    today = datetime.now(settings.zone).date()
    workload = Workload(subscribers * EVENTS_PER_SUBSCRIBER, subscribers, settings.zone,
                        today - timedelta(days=START_DAYS_AGO))
    processor = history_processor(settings, Metrics(), rules, _done)

    async def drive() -> None:
        offsets: dict[TP, int] = {}
        batch: list[Record] = []
        for base, key, value in records(workload):
            tp = TP(base, partition_of(key, settings.partitions))
            offset = offsets.get(tp, 0)
            offsets[tp] = offset + 1
            batch.append(Record(tp, offset, key, value, None, None))
            if len(batch) >= settings.batch_max:
                await processor.process(batch)
                batch = []
        if batch:
            await processor.process(batch)

    asyncio.run(drive())
    store = processor.store
    values = [value for key in list(store.states) if (value := store.states.encoded(key)) is not None]
    clocks = {clock_key(p): encode_clock(clock) for p, clock in store.clocks.items()}
    return values, clocks


def measure(settings: Settings, subscribers: int, sample: int) -> dict[str, Any]:
    """Load `subscribers` states like a worker's recovery; return the resident bytes they cost."""
    collector.tune()
    values, clocks = sample_states(settings, min(sample, subscribers))
    gc.collect()
    before = rss_bytes()
    # Per partition, as a changelog read gives them.
    data: dict[int, dict[bytes, bytes]] = {p: {} for p in range(settings.partitions)}
    for key, value in clocks.items():
        data[int(key[len(META_PREFIX):])][key] = value
    width = len(str(subscribers - 1))
    for i in range(subscribers):
        key = b"199" + str(i).zfill(max(8, width)).encode()
        # A fresh bytes object each, as a changelog read gives.
        data[partition_of(key, settings.partitions)][key] = bytes(bytearray(values[i % len(values)]))
    store = Store(settings.partitions, settings.hot_states)
    dead = DeadLetterSink(Outbox(_done), DEADLETTER)
    started = time.monotonic()
    store.load(set(range(settings.partitions)), data, "changelog", dead)
    load_s = time.monotonic() - started
    del data
    collector.settle()
    after = rss_bytes()
    # Then as many others as the cache holds are read (an event each, say): the cache turns over,
    # those it let go are serialised, and those it holds keep their bytes too (the worst case).
    cold = store.states.cold
    for key in [key for key in cold if not key.startswith(b"~")][:settings.hot_states]:
        store.states.get(key)
    collector.settle()
    cycled = rss_bytes()
    sizes = [len(v) for v in values]
    return {
        "subscribers": subscribers, "partitions": settings.partitions, "hot_states": settings.hot_states,
        "decoded": len(store.states.hot), "sample": len(values),
        "state_bytes_median": statistics.median(sizes), "state_bytes_mean": round(statistics.fmean(sizes), 1),
        "watched": sum(len(keys) for keys in store.watched.values()),
        "rss_before_bytes": before, "rss_after_bytes": after,
        "rss_per_subscriber_bytes": round((after - before) / subscribers, 1),
        "rss_cycled_bytes": cycled, "rss_per_subscriber_cycled_bytes": round((cycled - before) / subscribers, 1),
        "load_s": round(load_s, 2),
        "source": "VmRSS after Store.load of N subscribers (sampled states of the bench's workload) less before",
    }


def step_memory(settings: Settings, subscribers: int, *, sample: int = SAMPLE) -> dict[str, Any]:
    """Measure in a child process (nothing else resident); return its figures."""
    done = subprocess.run(
        [sys.executable, "-c", "from streams.tools.bench.memory import main; main()", "--subscribers", str(subscribers),
         "--sample", str(sample)], env=settings.worker_env(), capture_output=True, timeout=1800, check=False)
    if done.returncode != 0:
        return {"skipped": True, "reason": f"the measurement failed: {done.stderr.decode()[-400:]}"}
    doc: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return doc


@click.command()
@click.option("--subscribers", type=click.IntRange(1, 50_000_000), default=SUBSCRIBERS, show_default=True)
@click.option("--sample", type=click.IntRange(1, 1_000_000), default=SAMPLE, show_default=True,
              help="subscribers of the bench's workload whose states are cycled")
def main(subscribers: int, sample: int) -> None:
    """Print the resident bytes a subscriber costs a worker's store at SUBSCRIBERS (one JSON line)."""
    settings = Settings()
    sys.stdout.write(orjson.dumps(measure(settings, subscribers, sample)).decode() + "\n")


if __name__ == "__main__":
    main()
