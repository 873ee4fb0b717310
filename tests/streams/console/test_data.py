"""The console's pure summaries of the feed."""

from __future__ import annotations

from typing import Any

from streams.console.data import uplift


def _row(msisdn: str, kind: str, light: str, status: str, at: int, reason: str = "") -> dict[str, Any]:
    return {"msisdn": msisdn, "kind": kind, "light": light, "channel": "callcentre", "status": status,
            "reason": reason, "decided_ms": at}


def test_a_task_released_from_the_capacity_queue_counts_as_a_contact_and_an_expired_one_does_not() -> None:
    rows = [
        _row("1", "red_light", "red", "queued", 1), _row("1", "red_light", "red", "released", 2),
        _row("2", "red_light", "red", "queued", 1), _row("2", "red_light", "red", "expired", 3, "expired"),
        _row("3", "red_light", "red", "suppressed", 1, "holdout"),
        _row("1", "black_light", "black", "issued", 5), _row("2", "black_light", "black", "issued", 5),
    ]
    (cell,) = uplift(rows)
    assert (cell["light"], cell["channel"]) == ("red", "callcentre")
    assert (cell["contacted"], cell["contacted_churned"]) == (1, 1)  # "2" expired: never contacted
    assert (cell["holdout"], cell["holdout_churned"]) == (1, 0)
