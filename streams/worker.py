"""Run one churnlight worker: topics, app, Faust worker loop."""

from __future__ import annotations

import logging

from faust.worker import Worker

from rules.ruleset import load_rule_set
from sinks.redis_store import PolicyStore
from streams import collector
from streams.app import create_app
from streams.logs import logging_config
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Create the topics, check co-partitioning, and run the Faust worker until stopped."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    rules = load_rule_set(settings.rules)
    ensure_topics(settings)
    metrics = Metrics()
    assert settings.redis is not None, "resolve the embedded Redis before starting the worker"
    store = PolicyStore.from_url(settings.redis.get_secret_value(), tz=settings.zone)
    app, _processor, _sender = create_app(settings, metrics, rules, store)
    log.info(
        "churnlight worker %s: kafka %s, rules %s, tz %s, HTTP on :%d",
        app.conf.id, settings.kafka, settings.rules, settings.tz, settings.web_port,
    )
    # Faust's own lines in churnlight's format (text or JSON), not its bracketed, coloured one.
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
                    logging_config=logging_config(settings.log_level, settings.log_format))
    # mode logs every timer wake-up at debug level: 3 % of the worker's time in a profile.
    logging.getLogger("mode.timers").setLevel(logging.INFO)
    collector.tune()
    worker.execute_from_commandline()
