"""Logging: one format for churnlight's and Faust's lines (text, or JSON lines), and rate-limited warnings."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final

LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object a line: ts (UTC, ISO 8601), level, logger, msg, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """Return the dictConfig of the whole process: one stderr handler, one format.

    Handed to Faust's worker as well (its `logging_config`), so that its lines look like ours
    instead of its own bracketed, coloured format.
    """
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"churnlight": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "churnlight"}},
        "root": {"level": LEVELS[level], "handlers": ["stderr"]},
        # aiokafka is chatty at info about reconnects that are handled.
        "loggers": {"aiokafka": {"level": "WARNING"}},
    }


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the process's logging once: `level` from LEVELS, `fmt` text or json."""
    logging.config.dictConfig(logging_config(level, fmt))
    if fmt == "json":
        # Python's own last words (an uncaught exception, in any thread) as one JSON line too.
        log = logging.getLogger("churnlight")
        sys.excepthook = lambda kind, exc, tb: log.critical("uncaught exception", exc_info=(kind, exc, tb))
        threading.excepthook = lambda a: log.error(
            "uncaught exception in thread %s", a.thread.name if a.thread else "?",
            exc_info=a.exc_value if a.exc_value is not None else False)


class RateLimited:
    """Log at most one line per key and interval, saying how many were left out since the last one.

    For warnings that come in floods (a producer sending broken records): the first of a key is
    logged at once, the rest of the interval only counted, and the next line after the interval
    carries that count.
    """

    def __init__(self, logger: logging.Logger, *, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        """Log `msg % args` at warning level unless a line of `key` went out within the interval."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        skipped = self._skipped.pop(key, 0)
        self._last[key] = now
        if skipped:
            self.logger.warning(msg + " (and %d more %s since the last such line)", *args, skipped, key)
        else:
            self.logger.warning(msg, *args)


# The dead-letter warning of streams.runtime.processor: one line per reason code per minute.
DEADLETTER_LOG: Final = RateLimited(logging.getLogger("streams.runtime.processor"))
