"""A scripted history that exercises every task kind and every suppression reason (CONTRACT §5).

Day 0 is 2026-07-01 (Asia/Shanghai), as in `scripted`. Photographed subscribers are judged from
day 30 on. Redis starts with T8 in the SMS opt-out set, T9 in the do-not-call set and a recent
SMS contact for T11; T12 is opted out while the worker runs, between the two parts.
"""

from __future__ import annotations

from typing import Any

from tests.streams.scripted import DAYS, at, fillers, midnight, usage

PHOTO = {"month": "2026-06", "arpu": 150.0, "mou": 150.0}


def _profile(msisdn: str, **extra: Any) -> dict[str, Any]:
    return {"msisdn": msisdn, "region": "zunyi", "brand": "easyown", "activated_on": "2020-01-01",
            "photo": PHOTO, "updated_at": at(0, 0), **extra}


T1, T2, T3, T4, T5, T6, T7, T8, T9, T11, T12 = (f"139100000{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12))
T10 = "13910000033"  # in the 5 % hold-out group for the default salt

PROFILES = [
    _profile(T1), _profile(T2),
    _profile(T3, contract={"starts_on": "2025-10-01", "ends_on": "2026-09-30", "committed": 100, "spent": 0}),
    _profile(T4, prepaid=True, photo=None),
    _profile(T5, brand="gotone", birthday="08-10", photo=None),
    _profile(T6, photo=None),
    _profile(T7, prepaid=True),
    _profile(T8), _profile(T9), _profile(T10), _profile(T11), _profile(T12),
]


def _daily(msisdn: str, day: int) -> tuple[float, float] | None:
    if msisdn in (T1, T10) and day >= 40:
        return (0.0, 0.0) if msisdn == T1 else (0.0, 5.0)      # both drop / revenue drop
    if msisdn in (T8, T11, T12) and day >= 40:
        return (5.0, 0.0)                                       # minutes drop: yellow at day 51
    if msisdn in (T2, T9) and day > 50:
        return None                                             # deactivated on day 50
    return (5.0, 5.0)


EXTRA: dict[int, list[tuple[str, dict[str, Any]]]] = {
    10: [("billing.events", {"event_id": "t4-b1", "msisdn": T4, "ts": at(10), "type": "balance", "balance": 15.0})],
    12: [("billing.events", {"event_id": "t4-b2", "msisdn": T4, "ts": at(12), "type": "balance", "balance": 8.0})],
    20: [("lifecycle.events", {"event_id": "t6-vas", "msisdn": T6, "ts": at(20, 15), "type": "vas_trial_ending",
                               "service": "music-plus", "ends_on": "2026-07-25"})],
    30: [("billing.events", {"event_id": "t7-b1", "msisdn": T7, "ts": at(30), "type": "topup", "amount": 20.0,
                             "balance": 20.0})],
    40: [("lifecycle.events", {"event_id": "t7-req", "msisdn": T7, "ts": at(40), "type": "port_out_request"})],
    42: [("billing.events", {"event_id": "t7-b2", "msisdn": T7, "ts": at(42), "type": "balance", "balance": 5.0})],
    50: [("lifecycle.events", {"event_id": "t2-deact", "msisdn": T2, "ts": at(50, 12), "type": "deactivated"}),
         ("lifecycle.events", {"event_id": "t9-deact", "msisdn": T9, "ts": at(50, 12), "type": "deactivated"})],
}

SPLIT_DAY = 36  # part one: days 0-35; the consent change for T12 comes between the parts


def history(partitions: int) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """Return the two parts of the history, each as (topic, value) in production order."""
    parts: tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]] = (
        [("subscriber.profiles", p) for p in PROFILES], [])
    subs = [p["msisdn"] for p in PROFILES]
    for day in range(DAYS):
        out = parts[0] if day < SPLIT_DAY else parts[1]
        for msisdn in fillers(partitions):
            out.append(("usage.events", usage(msisdn, day, 0.5, 1.0)))
        for msisdn in subs:
            figures = _daily(msisdn, day)
            if figures is not None:
                out.append(("usage.events", usage(msisdn, day, *figures)))
        out.extend(EXTRA.get(day, []))
    return parts


# (topic, msisdn, kind, offer code or None, created_at, send_after)
EXPECTED_ISSUED = {
    ("retention.tasks.sms", T1, "yellow_light", "tenure_discount", midnight(47), at(47, 8)),
    ("retention.tasks.callcentre", T1, "red_light", "tenure_discount", midnight(51), None),
    ("retention.tasks.callcentre", T2, "black_light", "tenure_discount", at(50, 12), None),
    ("retention.tasks.callcentre", T3, "contract_expiry", "remaining_match", midnight(1), None),
    ("retention.tasks.callcentre", T3, "contract_expiry", "overspend_match", midnight(20), None),
    ("retention.tasks.callcentre", T3, "contract_expiry", "deposit_match", midnight(62), None),
    ("retention.tasks.sms", T4, "balance_low", None, at(12), None),
    ("retention.tasks.sms", T5, "birthday", None, midnight(40), at(40, 8)),
    ("retention.tasks.sms", T6, "vas_trial", None, at(20, 15), None),
    ("retention.tasks.sms", T7, "balance_low", None, at(42), None),  # a service reminder passes the guard
}

# (msisdn, kind, reason)
EXPECTED_SUPPRESSED = {
    (T7, "red_light", "port_out_guard"),
    (T8, "yellow_light", "opt_out"),
    (T9, "black_light", "dnc"),
    (T10, "yellow_light", "holdout"),
    (T11, "yellow_light", "cooldown"),
    (T12, "yellow_light", "opt_out"),
}

T11_LAST_SMS_CONTACT = at(45)
