"""The subscriber base and the fate designed for each subscriber, as column arrays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

from streams.tools.sim.config import SimConfig

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]
OBJ = npt.NDArray[np.object_]

NEVER: Final = 1 << 30  # a day index after any run

# Pattern codes; index = code. "" is an ordinary subscriber.
PATTERNS: Final = (
    "",
    "decline_deactivate",  # usage and revenue decline over 30-60 days, then deactivated
    "decline_port_out",  # the same, then ported out (most file a port_out_request a few days before)
    "port_out_request",  # no warning in usage: a request, ported out 1-5 days later
    "silent",  # all usage stops one day; the operator deactivates the number 30-60 days later
    "sudden_deactivate",  # no warning: cancelled one day
    "recover",  # usage dips for a few weeks, then comes back
    "port_out_cancelled",  # files a request, then cancels it; stays
    "quiet_leave",  # no decline: complains, then leaves around a tenure anniversary (quiet_churn_share)
    "second_sim",  # usage drops for good (a second SIM takes the calls); stays (downshift_share)
)
NONE, DECLINE_DEACT, DECLINE_PORT, PORT_REQ, SILENT, SUDDEN, RECOVER, CANCELLED, QUIET, SECOND_SIM = range(10)
CHURN_PATTERNS: Final = (DECLINE_DEACT, DECLINE_PORT, PORT_REQ, SILENT, SUDDEN, QUIET)
# How long before a quiet leaver's churn day it complains, and how often per day meanwhile.
QUIET_COMPLAINT_DAYS: Final = 40
QUIET_COMPLAINT_P: Final = 0.02
PORTS_OUT: Final = (DECLINE_PORT, PORT_REQ)
# Pattern mix among churners: the photographed kind leaves loudly, the rest more often silently.
MIX_WATCHED: Final = (0.28, 0.37, 0.15, 0.12, 0.08)
MIX_OTHER: Final = (0.35, 0.15, 0.10, 0.30, 0.10)

# China Mobile number blocks; the 8 digits after them are a bijection of the subscriber index.
PREFIXES: Final = (134, 135, 136, 137, 138, 139, 147, 150, 151, 152, 157, 158, 159, 172, 178,
                   182, 183, 184, 187, 188, 195, 197, 198)
SEGMENTS: Final = ("high", "valuable", "low", "negative")
SEGMENT_CUTS: Final = (0.10, 0.40, 0.85)  # seed 000: high value 10 %, then by ARPU rank
TOPUP_STEPS: Final = np.array([10, 20, 30, 50, 100, 200, 300], dtype=np.int64)  # CNY
VOICE_RATE_FEN: Final = (15.0, 25.0)  # per started minute beyond the plan
SMS_PRICE_FEN: Final = 10
DATA_CHARGED_SHARE: Final = 0.4  # share of data sessions billed beyond the plan


@dataclass(slots=True)
class Base:
    """Every subscriber as one row across these arrays; the mutable ones change day by day."""

    n: int
    msisdn: OBJ  # str
    region: I8
    brand: I8
    segment: I8
    prepaid: B
    activated: list[date]
    birthday: list[str]  # "MM-DD"
    arpu: F64  # expected CNY per 30 days, before any pattern
    mou: F64  # expected outgoing minutes per 30 days
    fee_fen: I64  # monthly plan fee (mutable: churners downgrade)
    lam_vo: F64  # outgoing calls per day
    lam_vi: F64
    lam_so: F64
    lam_si: F64
    lam_data: F64
    call_sec: F64  # mean call length
    voice_rate: F64  # fen per started minute of a charged call
    voice_q: F64  # share of outgoing calls charged
    sms_q: F64
    data_mb: F64  # mean MB per session
    data_rate: F64  # fen per MB of a charged session
    # contract (mutable): days relative to the start; spent in fen at the last profile or signing
    has_contract: B
    c_start: I32
    c_end: I32
    c_committed: I64
    c_spent: I64
    c_rev: I64  # revenue since the contract's spent figure was stated
    # prepaid (mutable)
    balance: I64  # fen
    trigger: I64  # tops up when the balance is below this
    topup_cny: F64  # preferred top-up size
    # designed fate
    latent_watched: B  # expected figures meet the photo thresholds
    pattern: I8
    p_start: I32  # decline start, silence start or dip start
    p_churn: I32  # day of deactivated / ported_out, NEVER if none
    churn_sec: I32  # second of that day
    p_request: I32  # day of port_out_request, NEVER if none
    p_cancel: I32  # day of port_out_cancelled, NEVER if none
    floor: F64  # decline: usage factor reached on the churn day; recover: depth of the dip
    expo: F64  # decline curve exponent (< 1: drops early)
    downgrade_day: I32
    downgrade_to: F64  # fee factor after the downgrade
    dip_down: I32
    dip_hold: I32
    dip_up: I32
    renew_day: I32  # contract_signed renewing the current contract, NEVER if none


def _choice(rng: np.random.Generator, weights: list[float], n: int) -> I8:
    p = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(p), size=n, p=p / p.sum()).astype(np.int8)


def _uniform_int(rng: np.random.Generator, lo: I64 | int, hi: I64 | int, n: int) -> I64:
    """Draw integers uniformly in [lo, hi] (inclusive; hi >= lo elementwise)."""
    lo_a = np.broadcast_to(np.asarray(lo, dtype=np.int64), (n,))
    hi_a = np.broadcast_to(np.asarray(hi, dtype=np.int64), (n,))
    return lo_a + np.floor(rng.random(n) * (hi_a - lo_a + 1)).astype(np.int64)


def add_months(d: date, months: int) -> date:
    """Return `d` moved by whole calendar months, clamped to the month's last day."""
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    for day in (d.day, 30, 29, 28):
        try:
            return date(year, month, min(d.day, day))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def msisdns(n: int, seed: int, rng: np.random.Generator) -> OBJ:
    """Return n distinct 11-digit numbers in China Mobile blocks."""
    # 48271 is coprime with 10**8, so i -> (i * 48271 + offset) mod 10**8 is a bijection.
    offset = (seed * 7919 + 12345) % 10**8
    tail = (np.arange(n, dtype=np.int64) * 48271 + offset) % 10**8
    prefix = np.asarray(PREFIXES, dtype=np.int64)[rng.integers(0, len(PREFIXES), n)]
    numbers = prefix * 10**8 + tail
    return np.array([str(x) for x in numbers.tolist()], dtype=object)


def build_base(cfg: SimConfig) -> Base:
    """Draw the subscriber base and each subscriber's designed fate for `cfg`."""
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.subscribers
    brand_names = [b for b, _ in cfg.brands]
    shapes = [cfg.shape(b) for b in brand_names]

    region = _choice(rng, [w for _, w in cfg.regions], n)
    brand = _choice(rng, [w for _, w in cfg.brands], n)
    msisdn = msisdns(n, cfg.seed, rng)

    def per_brand(values: list[float]) -> F64:
        return np.asarray(values, dtype=np.float64)[brand]

    # Expected monthly ARPU and outgoing MOU: correlated lognormals around the brand's medians.
    z1 = rng.standard_normal(n)
    z2 = 0.5 * z1 + np.sqrt(1 - 0.25) * rng.standard_normal(n)
    urban = np.where(region == 0, 1.1, 1.0)
    arpu = per_brand([s.arpu_median for s in shapes]) * urban * np.exp(
        per_brand([s.arpu_sigma for s in shapes]) * z1
    )
    mou = per_brand([s.mou_median for s in shapes]) * np.exp(per_brand([s.mou_sigma for s in shapes]) * z2)
    arpu = np.clip(arpu, 3.0, 3000.0)
    mou = np.clip(mou, 0.5, 6000.0)

    # Plan fee: the largest plan under 60-85 % of the ARPU (else the brand's cheapest).
    target = arpu * rng.uniform(0.6, 0.85, n)
    fee = np.empty(n, dtype=np.float64)
    for b, shape in enumerate(shapes):
        sel = brand == b
        plans = np.asarray(shape.plans, dtype=np.float64)
        i = np.searchsorted(plans, target[sel], side="right") - 1
        fee[sel] = plans[np.maximum(i, 0)]
    arpu = np.maximum(arpu, fee + 2.0)
    usage_cny = arpu - fee

    split = np.asarray([s.usage_split for s in shapes], dtype=np.float64)[brand]
    call_min = per_brand([s.call_minutes for s in shapes]) * rng.uniform(0.7, 1.3, n)
    lam_vo = mou / 30.0 / call_min
    lam_vi = lam_vo * per_brand([s.calls_in_ratio for s in shapes]) * rng.uniform(0.6, 1.4, n)
    lam_so = per_brand([s.sms_out_per_day for s in shapes]) * rng.lognormal(-0.18, 0.6, n)
    lam_si = per_brand([s.sms_in_per_day for s in shapes]) * rng.uniform(0.5, 1.5, n)
    lam_data = per_brand([s.data_sessions_per_day for s in shapes]) * rng.uniform(0.4, 1.6, n)
    data_mb = per_brand([s.data_mb_per_session for s in shapes]) * rng.uniform(0.5, 1.5, n)

    # Prices that make the expected usage revenue what the ARPU says.
    voice_rate = rng.uniform(*VOICE_RATE_FEN, n)
    billed_minutes = mou + 0.5 * lam_vo * 30.0  # per started minute
    voice_q = split[:, 0] * usage_cny * 100.0 / (voice_rate * np.maximum(billed_minutes, 1.0))
    voice_rate = voice_rate * np.maximum(voice_q, 1.0)
    voice_q = np.minimum(voice_q, 1.0)
    sms_q = np.minimum(split[:, 2] * usage_cny * 100.0 / (SMS_PRICE_FEN * lam_so * 30.0 + 1e-9), 1.0)
    data_rate = split[:, 1] * usage_cny * 100.0 / (DATA_CHARGED_SHARE * lam_data * 30.0 * data_mb + 1e-9)

    # Value tier by ARPU rank.
    rank = np.empty(n, dtype=np.float64)
    rank[np.argsort(-arpu, kind="stable")] = (np.arange(n) + 0.5) / n
    segment = np.searchsorted(np.asarray(SEGMENT_CUTS), rank).astype(np.int8)

    prepaid = rng.random(n) < per_brand([s.prepaid_share for s in shapes])
    beta_a = per_brand([s.tenure_beta[0] for s in shapes])
    beta_b = per_brand([s.tenure_beta[1] for s in shapes])
    tenure_days = np.maximum((rng.beta(beta_a, beta_b) * 15 * 365.25).astype(np.int64), 1)
    birthday_doy = rng.integers(0, 365, n)

    # Contracts: end dates spread over the coming year, 12 or 24 months long.
    has_contract = rng.random(n) < per_brand([s.contract_share for s in shapes]) * np.where(prepaid, 0.5, 1.0)
    c_end = rng.integers(0, 364, n).astype(np.int32)
    months = np.where(rng.random(n) < 0.5, 12, 24)
    c_start = np.empty(n, dtype=np.int32)
    start = cfg.start
    for i in np.nonzero(has_contract)[0].tolist():
        end = start + timedelta(days=int(c_end[i]))
        c_start[i] = (add_months(end + timedelta(days=1), -int(months[i])) - start).days
    c_start[~has_contract] = 0
    monthly_commit = np.round(arpu * rng.uniform(0.85, 1.25, n), -1)  # minimum monthly spend
    c_committed = (monthly_commit * months * 100).astype(np.int64)
    elapsed_months = np.maximum(-c_start, 0) / 30.4
    c_spent = (elapsed_months * arpu * rng.uniform(0.8, 1.1, n) * 100).astype(np.int64)
    tenure_days = np.maximum(tenure_days, np.where(has_contract, -c_start.astype(np.int64), 1))
    activated = [start - timedelta(days=int(t)) for t in tenure_days.tolist()]
    birthday = [(date(2025, 1, 1) + timedelta(days=int(x))).strftime("%m-%d") for x in birthday_doy.tolist()]

    balance = np.where(prepaid, (rng.uniform(0.1, 1.5, n) * arpu * 100).astype(np.int64), 0)
    trigger = (rng.uniform(0.0, 30.0, n) * 100).astype(np.int64)
    topup_cny = arpu * rng.uniform(0.5, 1.5, n)

    base = Base(
        n=n, msisdn=msisdn, region=region, brand=brand, segment=segment, prepaid=prepaid,
        activated=activated, birthday=birthday, arpu=arpu, mou=mou,
        fee_fen=(fee * 100).astype(np.int64), lam_vo=lam_vo, lam_vi=lam_vi, lam_so=lam_so,
        lam_si=lam_si, lam_data=lam_data, call_sec=call_min * 60.0, voice_rate=voice_rate,
        voice_q=voice_q, sms_q=sms_q, data_mb=data_mb, data_rate=data_rate,
        has_contract=has_contract, c_start=c_start, c_end=c_end, c_committed=c_committed,
        c_spent=np.where(has_contract, c_spent, 0), c_rev=np.zeros(n, dtype=np.int64),
        balance=balance, trigger=trigger, topup_cny=topup_cny,
        latent_watched=(arpu >= cfg.photo_arpu) & (mou >= cfg.photo_mou),
        pattern=np.zeros(n, dtype=np.int8), p_start=np.full(n, NEVER, dtype=np.int32),
        p_churn=np.full(n, NEVER, dtype=np.int32), churn_sec=np.zeros(n, dtype=np.int32),
        p_request=np.full(n, NEVER, dtype=np.int32), p_cancel=np.full(n, NEVER, dtype=np.int32),
        floor=np.ones(n), expo=np.ones(n), downgrade_day=np.full(n, NEVER, dtype=np.int32),
        downgrade_to=np.ones(n), dip_down=np.ones(n, dtype=np.int32),
        dip_hold=np.ones(n, dtype=np.int32), dip_up=np.ones(n, dtype=np.int32),
        renew_day=np.full(n, NEVER, dtype=np.int32),
    )
    _design_fates(cfg, base, np.random.default_rng([cfg.seed, 2]))
    return base


def _design_fates(cfg: SimConfig, base: Base, rng: np.random.Generator) -> None:
    """Give each subscriber a pattern and its days; the rest stay ordinary."""
    n, days, photo = base.n, cfg.days, cfg.photo_days
    if days < 3:
        return
    watched = base.latent_watched
    # The watched kind churns after the photo when the run leaves room for it.
    after_photo = days - 1 >= photo + 2
    # Shares are per 90 days of run; the watched kind's churn share per 60 days after the photo.
    scale = days / 90.0
    late_scale = (days - photo) / 60.0 if after_photo else scale
    u = rng.random(n)
    churn_p = np.minimum(np.where(watched, cfg.churn_share * late_scale, cfg.other_churn_share * scale), 0.5)
    recover_p = min(cfg.recover_share * scale, 0.2)
    cancel_p = min(cfg.cancel_share * scale, 0.1)
    churner = u < churn_p
    recover = (u >= churn_p) & (u < churn_p + recover_p)
    cancel = (u >= churn_p + recover_p) & (u < churn_p + recover_p + cancel_p)

    mix = np.where(watched[:, None], np.asarray(MIX_WATCHED), np.asarray(MIX_OTHER))
    pick = (rng.random(n)[:, None] > np.cumsum(mix, axis=1)).sum(axis=1)
    pattern = np.zeros(n, dtype=np.int8)
    pattern[churner] = np.asarray(CHURN_PATTERNS, dtype=np.int8)[np.minimum(pick[churner], 4)]
    pattern[recover] = RECOVER
    pattern[cancel] = CANCELLED
    base.pattern = pattern

    late = watched & after_photo  # fates that start after the photo
    first = np.where(late, photo + 1, 1).astype(np.int64)
    last = days - 1
    p_churn = np.full(n, NEVER, dtype=np.int64)
    p_start = np.full(n, NEVER, dtype=np.int64)
    p_request = np.full(n, NEVER, dtype=np.int64)
    p_cancel = np.full(n, NEVER, dtype=np.int64)

    # Declines: the churn day, then 30-60 days of decline before it (a watched subscriber's decline
    # starts at most 15 days before the photo ends, so that most of them are photographed).
    dec = np.isin(pattern, (DECLINE_DEACT, DECLINE_PORT))
    lo = np.where(late & (last >= photo + 10), photo + 10, first)
    churn_day = _uniform_int(rng, lo, last, n)
    length = _uniform_int(rng, 30, 60, n)
    start = np.where(late, np.maximum(churn_day - length, photo - 15), churn_day - length)
    p_churn[dec] = churn_day[dec]
    p_start[dec] = start[dec]
    base.floor = np.where(dec, rng.uniform(0.03, 0.12, n), base.floor)
    base.expo = np.where(dec, rng.uniform(0.6, 1.2, n), base.expo)
    downgrade = dec & (rng.random(n) < 0.9)
    span = np.maximum(churn_day - start, 1)
    base.downgrade_day = np.where(
        downgrade, start + np.round(rng.uniform(0.15, 0.4, n) * span), NEVER
    ).astype(np.int32)
    base.downgrade_to = np.where(downgrade, rng.uniform(0.2, 0.45, n), 1.0)
    # Most who port out file the request 1-7 days before.
    req = (pattern == DECLINE_PORT) & (rng.random(n) < 0.75)
    req_day = churn_day - _uniform_int(rng, 1, 7, n)
    req &= req_day >= 0
    p_request[req] = req_day[req]

    # Port-out without warning: the request, then the port 1-5 days later.
    sel = pattern == PORT_REQ
    r = _uniform_int(rng, first, last, n)
    p_request[sel] = r[sel]
    p_churn[sel] = (r + _uniform_int(rng, 1, 5, n))[sel]

    # Silent: everything stops; the operator deactivates 30-60 days later.
    sel = pattern == SILENT
    stop = _uniform_int(rng, first - 1, last, n)
    p_start[sel] = stop[sel]
    p_churn[sel] = (stop + _uniform_int(rng, 30, 60, n))[sel]

    sel = pattern == SUDDEN
    p_churn[sel] = _uniform_int(rng, first, last, n)[sel]

    # Recover: down over 5-15 days to 20-45 % of usage, 5-20 days there, back over 3-10 days.
    sel = pattern == RECOVER
    dip_start = _uniform_int(rng, first - 1, np.maximum(last - 10, first - 1), n)
    p_start[sel] = dip_start[sel]
    base.floor = np.where(sel, rng.uniform(0.2, 0.45, n), base.floor)
    base.dip_down = _uniform_int(rng, 5, 15, n).astype(np.int32)
    base.dip_hold = _uniform_int(rng, 5, 20, n).astype(np.int32)
    base.dip_up = _uniform_int(rng, 3, 10, n).astype(np.int32)

    # A request, cancelled 1-5 days later.
    sel = pattern == CANCELLED
    r = _uniform_int(rng, first - 1, np.maximum(last - 1, first - 1), n)
    p_request[sel] = r[sel]
    p_cancel[sel] = (r + _uniform_int(rng, 1, 5, n))[sel]

    base.p_churn = np.minimum(p_churn, NEVER).astype(np.int32)
    base.p_start = np.minimum(p_start, NEVER).astype(np.int32)
    base.p_request = np.minimum(p_request, NEVER).astype(np.int32)
    base.p_cancel = np.minimum(p_cancel, NEVER).astype(np.int32)
    base.churn_sec = rng.integers(8 * 3600, 20 * 3600, n).astype(np.int32)

    # Renewals: 45 % of contracts ending inside the run are renewed up to 25 days early, by those
    # who stay.
    ends_inside = base.has_contract & (base.c_end < days)
    stays = ~np.isin(pattern, CHURN_PATTERNS)
    renew = ends_inside & stays & (rng.random(n) < 0.45)
    day = np.maximum(base.c_end.astype(np.int64) - rng.integers(0, 26, n), 1)
    base.renew_day = np.where(renew, day, NEVER).astype(np.int32)
    _design_unflattering(cfg, base, late_scale if after_photo else scale, photo + 1 if after_photo else 1)


def _design_unflattering(cfg: SimConfig, base: Base, late_scale: float, first: int) -> None:
    """Add the fates that make lights look worse than they are (SimConfig.quiet_churn_share,
    downshift_share): leavers without a decline, stayers whose usage drops for good. A generator of
    their own, so a run without them is the same bytes as before they existed."""
    if not (cfg.quiet_churn_share or cfg.downshift_share):
        return
    n, days = base.n, cfg.days
    rng = np.random.default_rng([cfg.seed, 16])
    u = rng.random(n)
    free = base.pattern == NONE
    last = days - 1
    quiet = free & base.latent_watched & (u < min(cfg.quiet_churn_share * late_scale, 0.5))
    shift = free & ~quiet & (rng.random(n) < min(cfg.downshift_share * late_scale, 0.5))
    jitter = rng.integers(-10, 4, n)
    fallback = _uniform_int(rng, first, last, n)
    for i in np.nonzero(quiet)[0].tolist():
        # The next anniversary of activation inside the run, a few days either side; else any day.
        activated = base.activated[i]
        day = fallback[i]
        for year in range(cfg.start.year, cfg.start.year + days // 365 + 2):
            try:
                anniversary = activated.replace(year=year)
            except ValueError:
                anniversary = date(year, 3, 1)
            k = (anniversary - cfg.start).days + int(jitter[i])
            if first <= k <= last and anniversary > activated:
                day = k
                break
        base.pattern[i] = QUIET
        base.p_churn[i] = day
        base.renew_day[i] = NEVER
    start = _uniform_int(rng, max(first - 1, 0), max(last - 10, first), n)
    base.pattern[shift] = SECOND_SIM
    base.p_start[shift] = start[shift]
    base.floor[shift] = rng.uniform(0.25, 0.5, n)[shift]
    base.dip_down[shift] = _uniform_int(rng, 3, 10, n)[shift]
    base.dip_hold[shift] = NEVER
