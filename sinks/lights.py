"""Light changes on `churn.lights` (CONTRACT §2): one message per change, sent once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import tzinfo

import orjson

from rules.events import mask
from rules.lights import LightChange, Reason
from rules.tasks import iso_time
from rules.vocabulary import Light
from sinks.outbox import Outbox, light_id

log = logging.getLogger(__name__)


def reason_json(r: Reason) -> dict[str, object]:
    """A reason as the messages and the HTTP answers give it."""
    return {"code": r.code, "value": r.value, "threshold": r.threshold}


class LightSink:
    """Render light changes and queue them in the batch's outbox (sent at its commit)."""

    def __init__(self, outbox: Outbox, topic: str, rule_set: str, tz: tzinfo,
                 counted: Callable[[Light, Light], None]) -> None:
        self.outbox = outbox
        self.topic = topic  # the topic's base name (streams.topics.LIGHTS)
        self.rule_set = rule_set
        self.tz = tz
        self.counted = counted  # (previous light, light): the change metric

    def put(self, msisdn: str, change: LightChange, region: str | None, brand: str | None,
            risk: Mapping[str, object]) -> None:
        """Queue the message of one change of `msisdn`'s light (`risk`: its score fields, or none)."""
        at = iso_time(change.at_ms, self.tz)
        message = {
            "msisdn": msisdn, "light": change.light, "previous": change.previous,
            "at": at,
            "arpu": round(change.arpu_fen / 100, 2), "mou": round(change.mou_seconds / 60, 2),
            "reasons": [reason_json(r) for r in change.reasons],
            "region": region, "brand": brand, "rule_set": self.rule_set,
            **risk,
        }
        self.outbox.put((self.topic, msisdn.encode(), orjson.dumps(message), [], light_id(msisdn, at, change.light)))
        self.counted(change.previous or "green", change.light)
        log.info("light %s -> %s for %s", change.previous, change.light, mask(msisdn))
