"""The Faust app factory: the group, the reader, timers and web views."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from datetime import date, timedelta
from collections.abc import Awaitable
from typing import Any

import faust
from aiohttp.web import Response
from faust.web import Request, View

from rules.events import MSISDN_RE
from rules.ruleset import RuleSet
from streams.auth import Authenticator
from streams.runtime.changelog import ChangelogWriter
from streams.runtime.claims import Claims
from streams.runtime.local import LocalStore
from streams.faults import Faults
from streams.metrics import Metrics
from streams.runtime.processor import Processor
from streams.runtime.queries import Queries
from streams.runtime.reader import Reader
from streams.settings import Settings
from sinks.capacity import CapacityQueue
from sinks.outcomes import OutcomeStore
from sinks.redis_store import PolicyStore
from sinks.tasks import TaskSink
from streams.topics import OUTPUT_TOPICS, TASK_TOPIC, TICKS, changelog_topic

log = logging.getLogger(__name__)

RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _credentials(settings: Settings) -> Any:
    if settings.kafka_security != "sasl_ssl":
        return None
    assert settings.kafka_password is not None
    context = ssl.create_default_context(cafile=str(settings.kafka_ca) if settings.kafka_ca else None)
    return faust.SASLCredentials(
        username=settings.kafka_user,
        password=settings.kafka_password.get_secret_value(),
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


class Sender:
    """Enqueue raw messages on output topics through Faust's producer (flushed before commits)."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.topics = {base: app.topic(settings.topic(base), **RAW) for base in OUTPUT_TOPICS}
        # Per output partition ("topic/partition"), one past the highest offset acknowledged.
        self.ends: dict[str, int] = {}

    async def enqueue(self, base: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]]) -> Awaitable[Any]:
        """Enqueue one message; return the future that resolves when the broker acknowledged it."""
        fut: asyncio.Future[Any] = await self.topics[base].send(key=key, value=value, headers=headers)
        fut.add_done_callback(self._acked)
        return fut

    def _acked(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        meta = fut.result()
        where = f"{meta.topic}/{meta.partition}"
        if meta.offset + 1 > self.ends.get(where, 0):
            self.ends[where] = meta.offset + 1

    async def acked(self, base: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """Send one message and return once the broker acknowledged it."""
        await (await self.enqueue(base, key, value, headers))


class FaustGroup:
    """The group as Faust runs it: this worker owns partition p when it owns p of the ticks topic
    (co-partitioned with the inputs and the changelog)."""

    def __init__(self, app: faust.App, ticks_topic: str) -> None:
        self.app = app
        self.ticks_topic = ticks_topic

    @property
    def generation(self) -> int | None:
        return self.app.consumer_generation_id  # type: ignore[no-any-return]

    @property
    def rebalancing(self) -> bool:
        return bool(self.app.rebalancing)

    def owned(self) -> set[int]:
        """The partitions Faust assigned this worker (of the ticks topic)."""
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.ticks_topic}

    @property
    def me(self) -> str:
        return str(self.app.conf.canonical_url)

    @property
    def member(self) -> bool:
        # aiokafka resets its generation when the coordinator no longer knows the member (its
        # session expired); a rebalance the member takes part in keeps it until the new one.
        try:
            generation = self.app.consumer._thread._ensure_consumer()._coordinator.generation
        except Exception:
            return False
        return bool(generation != -1)

    def members(self) -> set[str]:
        # Every member's URL with its share of the assignment (Faust's, for topic_route), empty shares too.
        return set(self.app.assignor.external_topic_distribution)


def _window_days(processor: Processor, rules: RuleSet, msisdn: str, found: dict[str, Any]) -> None:
    """Add the window's daily figures and the rule set's thresholds to a /subscribers answer."""
    state = processor.store.states.get(msisdn.encode())
    window = found.get("window")
    days: list[dict[str, Any]] = []
    if state is not None and window is not None:
        buckets = state.days
        first, last = date.fromisoformat(window["from"]), date.fromisoformat(window["to"])
        for n in range((last - first).days + 1):
            day = first + timedelta(days=n)
            fen, seconds = buckets.get(day.toordinal(), (0, 0))
            days.append({"day": day.isoformat(), "revenue": fen / 100, "mou": round(seconds / 60, 2)})
    found["days"] = days
    found["thresholds"] = {
        "arpu_min": rules.arpu_min_fen / 100,
        "mou_min": None if rules.mou_min_seconds is None else round(rules.mou_min_seconds / 60, 2),
        "decline_ratio": rules.decline_ratio,
    }


def create_app(settings: Settings, metrics: Metrics, rules: RuleSet,
               store: PolicyStore | None = None) -> tuple[faust.App, Processor, Sender]:
    """Build the worker's Faust app and the processor its reader drives (tasks when `store` is given)."""
    assert settings.kafka is not None, "resolve the embedded broker before creating the app"
    auth = Authenticator.from_settings(settings.api_token, settings.users_file)
    if not auth.configured:
        log.warning("neither CHURNLIGHT_API_TOKEN nor CHURNLIGHT_USERS_FILE is set: /subscribers refuses everyone")
    app = faust.App(
        f"{settings.topic_prefix}{settings.app_id}",
        broker=[f"kafka://{hp.strip()}" for hp in settings.kafka.split(",")],
        broker_credentials=_credentials(settings),
        # No Faust table: the state is in memory and in its changelog (streams.runtime.recovery).
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 3),
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        consumer_group_instance_id=settings.instance_id,
        consumer_auto_offset_reset="earliest",
        # Faust's producer sends light changes, dead letters and tasks (the changelog has its own,
        # streams.runtime.changelog): a task waits for its acknowledgement, so a long linger is its latency.
        producer_linger_ms=1,
        web_port=settings.web_port,
        web_bind=settings.bind,
        web_host=settings.web_host,
        web_in_thread=False,
        stream_wait_empty=True,
    )
    ticks = app.topic(settings.topic(TICKS), **RAW)
    sender = Sender(app, settings)
    tasks: TaskSink | None = None
    outcomes: OutcomeStore | None = None
    if store is not None:
        outcomes = OutcomeStore(store.client, tz=settings.zone)
    changelog = ChangelogWriter(settings, changelog_topic(settings))
    # The owned partitions' changelog records on local disk: a restart reads only the changelog's tail.
    local = changelog.local = LocalStore(settings, changelog.topic)
    metrics.use_labels(rules.label_regions, rules.label_brands)
    faults = Faults(settings.fault)
    group = FaustGroup(app, settings.topic(TICKS))
    reader = Reader(settings, group)
    reader.local, reader.claims = local, Claims(group, changelog, faults)
    # The processor's partitions are those the reader reads: through a rebalance too (streams.runtime.claims).
    processor = Processor(settings, metrics, rules, group=reader, source=reader, send=sender.enqueue,
                         changelog=changelog, outcomes=outcomes, output_ends=sender.ends, faults=faults)
    reader.attach(processor)
    queries = Queries(processor)
    if store is not None:
        tasks = TaskSink(
            store, sender.acked, metrics, tz=settings.zone, salt=settings.holdout_salt, rules=rules,
            topic_for=TASK_TOPIC.__getitem__, outcomes=outcomes, published=processor.was_published,
            crash=faults.reached, arpu_of=processor.decision_arpu,
            capacity=CapacityQueue(store.client, limits=rules.capacity, partitions=settings.partitions,
                                   tz=settings.zone) if rules.capacity else None)
        processor.use_tasks(tasks)

    @app.agent(ticks, concurrency=1, name="partitions")
    async def partitions(stream: faust.StreamT[bytes]) -> None:
        # The group's assignment of this co-partitioned topic says which partitions this worker
        # owns; the reader reads their input records. Nothing is sent here (older versions sent
        # wall-clock ticks): whatever arrives is acknowledged and left.
        async for _ in stream:
            pass

    @app.task
    async def read() -> None:
        await reader.run()

    @app.on_partitions_revoked.connect
    async def on_revoked(_app: faust.App, revoked: set[faust.types.TP], **_: object) -> None:
        await reader.on_revoked()

    @app.on_before_shutdown.connect
    async def on_shutdown(_app: faust.App, **_: object) -> None:
        await reader.stop(give_up=tasks.stop if tasks is not None else None)
        local.close()

    @app.timer(interval=3.0)
    async def broker() -> None:
        # /health answers 503 while the broker does not answer (the reader alone would not notice
        # a paused broker: its fetches just return nothing).
        try:
            await reader.probe()
        except Exception:
            log.exception("probing the broker failed; the worker goes on")

    @app.timer(interval=5.0)
    async def gauges() -> None:
        # An exception in a Faust timer stops the worker: gauges are never worth that.
        try:
            metrics.set_lights(queries.summary())
            queries.update_lag()
            await queries.update_kpis()
        except Exception:
            log.exception("updating the gauges failed; the worker goes on")

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            ok, detail = queries.health()
            return self.json(detail, status=200 if ok else 503)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            ok, detail = queries.health()
            metrics.set_health(ready=ok, redis_degraded=not detail["redis"])
            return self.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/lights/summary")
    class Summary(View):
        async def get(self, request: Request) -> Response:
            counts = queries.summary()
            rows = [{"light": light, "region": region, "brand": brand, "count": n}
                    for (light, region, brand), n in sorted(counts.items())]
            totals: dict[str, int] = {}
            for (light, _, _), n in counts.items():
                totals[light] = totals.get(light, 0) + n
            return self.json({"partitions": sorted(processor.owned()), "totals": totals, "counts": rows})

    def authenticated(view: Any) -> Any:
        # Checked before the request is routed to the owner (which checks the forwarded header again).
        @functools.wraps(view)
        async def get(web: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
            if auth.header(request.headers.get("Authorization")) is None:
                return web.json({"error": "authentication required"}, status=401,
                                headers={"WWW-Authenticate": 'Bearer realm="churnlight", Basic realm="churnlight"'})
            return await view(web, request, *args, **kwargs)
        return get

    @app.page("/subscribers/{msisdn}")
    @authenticated
    @app.topic_route(topic=ticks, match_info="msisdn")
    async def subscriber(web: Any, request: Request, msisdn: str) -> Response:
        # topic_route forwards the request to the worker that owns the key's partition of the
        # ticks topic, co-partitioned with the inputs.
        if not MSISDN_RE.match(msisdn):
            return web.json({"error": "not an msisdn"}, status=400)
        found = queries.subscriber(msisdn)
        if found is None:
            return web.json({"error": "unknown subscriber"}, status=404)
        _window_days(processor, rules, msisdn, found)
        return web.json(found)

    return app, processor, sender
