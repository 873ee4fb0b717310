"""The day-by-day generator: one day's records as column arrays, sorted by production time, rendered
in chunks. Memory holds one day at a time."""

from __future__ import annotations

import time as clock
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import orjson

from rules.events import LIFECYCLE, PROFILES
from streams.tools.sim import render
from streams.tools.sim.base import (
    DATA_CHARGED_SHARE,
    DECLINE_DEACT,
    DECLINE_PORT,
    NEVER,
    PATTERNS,
    PORTS_OUT,
    QUIET,
    QUIET_COMPLAINT_DAYS,
    QUIET_COMPLAINT_P,
    RECOVER,
    SECOND_SIM,
    SEGMENTS,
    SILENT,
    TOPUP_STEPS,
    Base,
    add_months,
    build_base,
)
from streams.tools.sim.config import SimConfig

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

DAY: Final = 86400
# Record kinds of a day's rows. SPEC rows point into the day's list of pre-rendered lines.
VO, VI, SO, SI, DATA, FEE, BAL, TOPUP, ADJ, SPEC = range(10)
KIND_TOPIC: Final = (0, 0, 0, 0, 0, 1, 1, 1, 1)  # index into render.TOPICS
CHUNK_ROWS: Final = 1 << 17
ID_DAY: Final = 10**10  # event_id = letter + (day + 1) * ID_DAY + sequence of the day

# Hour-of-day weights: calls in business hours, data in the evening.
VOICE_HOURS: Final = (0.3, 0.15, 0.1, 0.1, 0.1, 0.2, 0.6, 1.5, 3.5, 5.5, 6.5, 6.5, 5.0, 4.5, 5.5, 6.0,
                      6.0, 5.5, 5.0, 4.5, 4.0, 3.0, 1.8, 0.8)
SMS_HOURS: Final = (0.5, 0.3, 0.2, 0.1, 0.1, 0.2, 0.6, 1.5, 3.0, 4.0, 4.5, 4.5, 4.0, 4.0, 4.0, 4.5, 4.5,
                    4.5, 4.5, 5.0, 5.5, 5.0, 3.5, 1.5)
DATA_HOURS: Final = (1.5, 0.8, 0.5, 0.3, 0.3, 0.4, 1.0, 2.5, 3.5, 4.0, 4.0, 4.5, 5.0, 4.5, 4.0, 4.0, 4.0,
                     4.5, 5.0, 6.0, 6.5, 6.5, 5.5, 3.5)
CALL_SIGMA: Final = 0.9  # lognormal spread of call lengths
DATA_SIGMA: Final = 1.0
OUTLIER_CALL_P: Final = 2e-5  # a 3-8 hour call
OUTLIER_DATA_P: Final = 1e-5  # roaming: gigabytes and hundreds of CNY
COMPLAINT_P: Final = 3e-4  # per subscriber and day; more when declining or in a dip
VAS_SERVICES: Final = ("video_ring", "cloud_drive", "music_plus", "migu_video", "mobile_news",
                       "game_pass")
NEW_CONTRACT_P: Final = 2e-4
ADJUST_P: Final = 5e-4


@dataclass(frozen=True, slots=True)
class SimStats:
    subscribers: int
    days: int
    lines: int
    per_topic: dict[str, int]  # lines per topic, bad records and resends included
    bad: int
    duplicates: int
    photographed: int
    churners: int  # deactivated or ported out inside the run
    photographed_churners: int
    labels: int
    seconds: float
    events_per_second: float  # lines per second
    bytes: int


@dataclass(slots=True)
class _Rows:
    """Records as columns: kind, subscriber, event time and production time (seconds since the
    run's first local midnight), event id number, and two kind-specific numbers."""

    kind: npt.NDArray[np.int8]
    sub: I64
    ts: I64
    emit: I64
    eid: I64
    a: I64
    b: I64

    @staticmethod
    def empty() -> _Rows:
        z = np.zeros(0, dtype=np.int64)
        return _Rows(np.zeros(0, dtype=np.int8), z, z, z, z, z, z)

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        if not parts:
            return _Rows.empty()
        return _Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in _Rows.__slots__))

    def take(self, idx: npt.NDArray[np.intp] | B) -> _Rows:
        return _Rows(*(getattr(self, f)[idx] for f in _Rows.__slots__))

    def __len__(self) -> int:
        return len(self.kind)


def _sample_seconds(rng: np.random.Generator, weights: tuple[float, ...], k: int) -> I64:
    """Draw k seconds of the day from an hourly profile."""
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w) / w.sum()
    u = rng.random(k)
    hour = np.minimum(np.searchsorted(cdf, u, side="right"), 23)
    lo = np.where(hour > 0, cdf[hour - 1], 0.0)
    frac = (u - lo) / (cdf[hour] - lo)
    seconds: I64 = np.minimum(((hour + frac) * 3600).astype(np.int64), DAY - 1)
    return seconds


class Simulation:
    """One seeded run; iterate `chunks()` once, then read `stats` and `labels()`."""

    def __init__(self, cfg: SimConfig, progress: Callable[[int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.base: Base = build_base(cfg)
        self.stats: SimStats | None = None
        self._tz = ZoneInfo(cfg.tz)
        n = self.base.n
        self._rev30 = np.zeros(n, dtype=np.int64)
        self._mou30 = np.zeros(n, dtype=np.int64)
        self.photographed = np.zeros(n, dtype=bool)
        self._complained = np.zeros(n, dtype=bool)
        self._carry = _Rows.empty()
        self._topics = dict.fromkeys(render.TOPICS, 0)
        self._bad = 0
        self._dups = 0
        self._lines = 0
        self._bytes = 0
        self._started = False
        b = self.base
        self._decliners = np.nonzero(np.isin(b.pattern, (DECLINE_DEACT, DECLINE_PORT)))[0]
        self._recoverers = np.nonzero(np.isin(b.pattern, (RECOVER, SECOND_SIM)))[0]
        self._silent = b.pattern == SILENT
        names = [name for name, _ in cfg.brands]
        self._shapes = [cfg.shape(name) for name in names]
        self._brand_names = names
        self._region_names = [name for name, _ in cfg.regions]

    # ---------------------------------------------------------------- public

    def chunks(self) -> Iterator[list[str]]:
        """Yield the history lines (each ending in a newline) in production order, in chunks."""
        if self._started:
            raise RuntimeError("a Simulation runs once; make a new one")
        self._started = True
        t0 = clock.perf_counter()
        cfg = self.cfg
        for d in range(cfg.days):
            for chunk in self._day(d):
                self._lines += len(chunk)
                yield chunk
            if self.progress is not None:
                self.progress(d + 1, cfg.days)
        tail: list[str] = []
        if cfg.days == cfg.photo_days:  # the photo is due at the very end
            tail = self._photo_lines(cfg.days)
            self._topics[PROFILES] += len(tail)
            self._bytes += sum(map(len, tail))
        if len(self._carry):  # resends that would arrive after the last day
            tail += self._render(self._carry, [])
        if tail:
            self._lines += len(tail)
            yield tail
        seconds = clock.perf_counter() - t0
        churned = self.base.p_churn < cfg.days
        self.stats = SimStats(
            subscribers=self.base.n,
            days=cfg.days,
            lines=self._lines,
            per_topic=dict(self._topics),
            bad=self._bad,
            duplicates=self._dups,
            photographed=int(self.photographed.sum()),
            churners=int(churned.sum()),
            photographed_churners=int((churned & self.photographed).sum()),
            labels=int((self.base.pattern != 0).sum()),
            seconds=seconds,
            events_per_second=self._lines / seconds if seconds > 0 else 0.0,
            bytes=self._bytes,
        )

    def labels(self) -> list[dict[str, Any]]:
        """Return one label per subscriber with a designed pattern, in subscriber order."""
        b, cfg = self.base, self.cfg

        def day_or_none(d: int) -> str | None:
            return None if d >= min(cfg.days, NEVER) else (cfg.start + timedelta(days=d)).isoformat()

        out: list[dict[str, Any]] = []
        for i in np.nonzero(b.pattern)[0].tolist():
            p = int(b.pattern[i])
            churned = b.p_churn[i] < cfg.days
            how = None
            if churned:
                how = "ported_out" if p in PORTS_OUT else "deactivated"
            has_start = p in (DECLINE_DEACT, DECLINE_PORT, SILENT, RECOVER, SECOND_SIM)
            out.append({
                "msisdn": b.msisdn[i],
                "pattern": PATTERNS[p],
                "photographed": bool(self.photographed[i]),
                "churn_date": day_or_none(int(b.p_churn[i])),
                "decline_start": (cfg.start + timedelta(days=int(b.p_start[i]))).isoformat()
                if has_start
                else None,
                "how": how,
                "request_date": day_or_none(int(b.p_request[i])),
            })
        return out

    # ---------------------------------------------------------------- one day

    def _day(self, d: int) -> Iterator[list[str]]:
        cfg, b = self.cfg, self.base
        n = b.n
        rng = np.random.default_rng([cfg.seed, 3, d])
        day = cfg.start + timedelta(days=d)
        offset = render.utc_offset(self._tz, day)
        t0 = d * DAY
        specials: list[str] = []
        spec_sec: list[int] = []
        spec_topic: list[int] = []

        def special(sec: int, topic: int, text: str) -> None:
            specials.append(text)
            spec_sec.append(sec)
            spec_topic.append(topic)

        if d == 0:
            for text in self._profile_lines(0, None):
                special(0, 2, text)
        if d == cfg.photo_days:
            for text in self._photo_lines(d):
                special(0, 2, text)

        # Plan changes and contract ends that take effect today.
        dg = b.downgrade_day == d
        if dg.any():
            b.fee_fen[dg] = (np.round(b.fee_fen[dg] * b.downgrade_to[dg] / 100) * 100).astype(np.int64)
        b.has_contract &= b.c_end >= d

        on = b.p_churn >= d
        cut = np.where(b.p_churn == d, b.churn_sec, DAY).astype(np.int64)
        using = on & ~(self._silent & (d >= b.p_start))
        f = self._factor(d) * rng.gamma(4.0, 0.25, n)
        mv, ms_, md = self._multipliers(day)

        # Fee, then the prepaid balance that follows it; top-ups when it runs low.
        fee = self._fee_today(day)
        pre = b.prepaid
        fee_ok = on & (fee > 0) & (~pre | (b.balance > 0))
        bal1 = b.balance - np.where(fee_ok & pre, fee, 0)
        want = (bal1 < b.trigger) & (rng.random(n) < np.where(bal1 <= 0, 0.8, 0.55))
        want |= rng.random(n) < 0.01
        broke = bal1 <= 0
        t_top = np.where(broke, rng.integers(6 * 3600, 9 * 3600, n), rng.integers(8 * 3600, 22 * 3600, n))
        topup = pre & using & want & (t_top < cut)
        t_top = np.where(topup, t_top, DAY)
        suspended = pre & broke & ~topup
        out_from = np.where(pre & broke & topup, t_top, 0)  # broke until the top-up

        out_ok = using & ~suspended
        groups: list[_Rows] = []
        seq = [0]

        def rows(kind: int, sub: I64, sec: I64, a: I64, bb: I64) -> _Rows:
            k = len(sub)
            eid = (d + 1) * ID_DAY + seq[0] + np.arange(k, dtype=np.int64)
            seq[0] += k
            ts = t0 + sec
            r = _Rows(np.full(k, kind, dtype=np.int8), sub, ts, ts, eid, a, bb)
            groups.append(r)
            return r

        def draw(lam: F64, hours: tuple[float, ...], outgoing: bool) -> tuple[I64, I64]:
            counts = rng.poisson(lam)
            sub = np.repeat(np.arange(n, dtype=np.int64), counts)
            sec = _sample_seconds(rng, hours, len(sub))
            keep = sec < cut[sub]
            if outgoing:
                keep &= sec >= out_from[sub]
            return sub[keep], sec[keep]

        brand = b.brand
        # Voice out: lognormal call lengths, billed per started minute on the charged share.
        sub, sec = draw(np.where(out_ok, b.lam_vo * f * mv[brand], 0.0), VOICE_HOURS, True)
        k = len(sub)
        dur = self._call_seconds(rng, sub)
        outlier = rng.random(k) < OUTLIER_CALL_P
        dur[outlier] = rng.integers(3 * 3600, render.MAX_CALL_SEC, int(outlier.sum()))
        charged = rng.random(k) < b.voice_q[sub]
        charge = np.where(charged, np.round(np.ceil(dur / 60) * b.voice_rate[sub]), 0).astype(np.int64)
        vo = rows(VO, sub, sec, dur, charge)
        # Voice in: free.
        sub, sec = draw(np.where(using, b.lam_vi * f * mv[brand], 0.0), VOICE_HOURS, False)
        rows(VI, sub, sec, self._call_seconds(rng, sub), np.zeros(len(sub), np.int64))
        # SMS.
        sub, sec = draw(np.where(out_ok, b.lam_so * f * ms_[brand], 0.0), SMS_HOURS, True)
        so = rows(SO, sub, sec, np.zeros(len(sub), np.int64),
                  np.where(rng.random(len(sub)) < b.sms_q[sub], 10, 0).astype(np.int64))
        sub, sec = draw(np.where(using, b.lam_si * ms_[brand] * np.sqrt(f), 0.0), SMS_HOURS, False)
        rows(SI, sub, sec, np.zeros(len(sub), np.int64), np.zeros(len(sub), np.int64))
        # Data sessions; a rare roaming session costs hundreds.
        sub, sec = draw(np.where(out_ok, b.lam_data * f * md[brand], 0.0), DATA_HOURS, True)
        k = len(sub)
        mb = np.maximum(np.round(b.data_mb[sub] * 100 * rng.lognormal(-DATA_SIGMA**2 / 2, DATA_SIGMA, k)), 1
                        ).astype(np.int64)
        charged = rng.random(k) < DATA_CHARGED_SHARE
        charge = np.where(charged, np.round(mb / 100 * b.data_rate[sub]), 0).astype(np.int64)
        outlier = rng.random(k) < OUTLIER_DATA_P
        m = int(outlier.sum())
        mb[outlier] = rng.integers(2000, 20000, m) * 100
        charge[outlier] = rng.integers(200, 2000, m) * 100
        da = rows(DATA, sub, sec, mb, charge)

        # The fee just after midnight; adjustments (mostly credits; half of yesterday's
        # complainers get one).
        fee_sub = np.nonzero(fee_ok)[0]
        fee_sec = rng.integers(1, 1800, len(fee_sub))
        rows(FEE, fee_sub, fee_sec, fee[fee_sub], np.zeros(len(fee_sub), np.int64))
        adj_p = np.where(self._complained, 0.5, ADJUST_P)
        adj_sub = np.nonzero(on & (rng.random(n) < adj_p))[0]
        adj_sec = rng.integers(9 * 3600, 18 * 3600, len(adj_sub))
        keep = adj_sec < cut[adj_sub]
        adj_sub, adj_sec = adj_sub[keep], adj_sec[keep]
        credit = rng.random(len(adj_sub)) < 0.8
        amount = np.where(credit, -rng.integers(500, 5001, len(adj_sub)), rng.integers(100, 3001, len(adj_sub)))
        adj = rows(ADJ, adj_sub, adj_sec, amount.astype(np.int64), np.zeros(len(adj_sub), np.int64))

        # Revenue, and the prepaid balance at each balance and top-up event, exact in fen.
        def spent_before(limit: I64) -> I64:
            """Return each subscriber's usage and adjustment revenue today before its `limit` second."""
            total = np.zeros(n, dtype=np.int64)
            for r, amount in ((vo, vo.b), (so, so.b), (da, da.b), (adj, adj.a)):
                early = r.ts - t0 < limit[r.sub]
                # float bincounts of integers below 2**53 are exact
                total += np.bincount(r.sub[early], weights=amount[early], minlength=n).astype(np.int64)
            return total

        rev_usage = spent_before(np.full(n, DAY, dtype=np.int64))
        rev_day = rev_usage + np.where(fee_ok, fee, 0)
        bal_mask = pre[fee_sub]  # prepaid: the balance after the fee
        bal_sub = fee_sub[bal_mask]
        bal_sec = np.full(n, DAY, dtype=np.int64)
        bal_sec[bal_sub] = fee_sec[bal_mask] + rng.integers(1, 31, len(bal_sub))
        balance = bal1 - spent_before(bal_sec)
        rows(BAL, bal_sub, bal_sec[bal_sub], np.zeros(len(bal_sub), np.int64), balance[bal_sub])
        top_sub = np.nonzero(topup)[0]
        steps = TOPUP_STEPS[np.minimum(np.searchsorted(TOPUP_STEPS, b.topup_cny[top_sub]), len(TOPUP_STEPS) - 1)]
        top_amount = np.zeros(n, dtype=np.int64)
        top_amount[top_sub] = steps * 100
        balance = bal1 - spent_before(t_top) + top_amount
        rows(TOPUP, top_sub, t_top[top_sub], top_amount[top_sub], balance[top_sub])
        b.balance = np.where(pre & on, bal1 - rev_usage + top_amount, b.balance)
        if d < cfg.photo_days:
            self._rev30 += rev_day
            self._mou30 += np.bincount(vo.sub, weights=vo.a, minlength=n).astype(np.int64)

        # Lifecycle: churn, port-out requests, complaints, VAS trials, contracts.
        self._complained = np.zeros(n, dtype=bool)
        self._lifecycle(d, day, offset, rng, on, using, cut, rev_day, special, seq)
        b.c_rev += rev_day

        # Ported-out numbers lose their profile after a while.
        if cfg.profile_delete_after_days is not None:
            gone = np.nonzero(np.isin(b.pattern, PORTS_OUT) & (b.p_churn + cfg.profile_delete_after_days == d))[0]
            for i in gone.tolist():
                special(3 * 3600, 2, render.line(PROFILES, None, key=b.msisdn[i]))

        fast = _Rows.concat(groups)
        del groups, vo, so, da, adj  # one copy of the day at a time
        total = len(fast) + len(specials)
        # Bad records: corrupted copies of usage events, next to them in time.
        usage_idx = np.nonzero(fast.kind <= DATA)[0]
        n_bad = min(int(rng.binomial(total, cfg.bad_share)) if cfg.bad_share else 0, len(usage_idx))
        if n_bad:
            pick = rng.integers(0, 1 << 30, n_bad)
            kinds = rng.integers(0, len(render.BAD_KINDS), n_bad)
            for j, i in enumerate(rng.choice(usage_idx, n_bad, replace=False).tolist()):
                sub_i = int(fast.sub[i])
                value = render.usage_value(int(fast.kind[i]), int(fast.eid[i]), b.msisdn[sub_i],
                                           render.ts_str(day, int(fast.ts[i] - t0), offset), int(fast.a[i]), int(fast.b[i]))
                other = b.msisdn[(sub_i + 1) % n] if n > 1 else b.msisdn[sub_i][:-1] + "x"
                special(int(fast.ts[i] - t0), 0,
                        render.bad_line(render.BAD_KINDS[int(kinds[j])], value, other, int(pick[j])))
            self._bad += n_bad
        # Resends: the same record again, 1 minute to 6 hours later (maybe after midnight).
        n_dup = int(rng.binomial(total, cfg.dup_share)) if cfg.dup_share and len(fast) else 0
        dups = fast.take(rng.integers(0, len(fast), n_dup)) if n_dup else _Rows.empty()
        dups.emit = dups.ts + rng.integers(60, 6 * 3600, len(dups))
        self._dups += len(dups)
        stays = dups.emit < t0 + DAY
        carry, self._carry = self._carry, dups.take(~stays)

        spec = _Rows(
            np.full(len(specials), SPEC, dtype=np.int8),
            np.zeros(len(specials), np.int64),
            t0 + np.asarray(spec_sec, dtype=np.int64),
            t0 + np.asarray(spec_sec, dtype=np.int64),
            np.zeros(len(specials), np.int64),
            np.arange(len(specials), dtype=np.int64),
            np.asarray(spec_topic, dtype=np.int64),
        )
        day_rows = _Rows.concat([spec, carry, fast, dups.take(stays)])
        del fast, dups
        order = np.argsort(day_rows.emit, kind="stable")
        for lo in range(0, len(order), CHUNK_ROWS):
            yield self._render(day_rows.take(order[lo : lo + CHUNK_ROWS]), specials)

    def _render(self, rows: _Rows, specials: list[str]) -> list[str]:
        """Render rows in their order; SPEC rows are taken from `specials`."""
        out = np.empty(len(rows), dtype=object)
        for kind in np.unique(rows.kind).tolist():
            of_kind = np.nonzero(rows.kind == kind)[0]
            if kind == SPEC:
                r = rows.take(of_kind)
                out[of_kind] = [specials[i] for i in r.a.tolist()]
                for topic, count in zip(*np.unique(r.b, return_counts=True)):
                    self._topics[render.TOPICS[int(topic)]] += int(count)
                continue
            self._topics[render.TOPICS[KIND_TOPIC[kind]]] += len(of_kind)
            days = rows.ts[of_kind] // DAY
            for d in np.unique(days).tolist():  # resends after midnight carry yesterday's time
                pos = of_kind[days == d]
                r = rows.take(pos)
                out[pos] = self._render_kind(kind, d, r)
        result: list[str] = out.tolist()
        self._bytes += sum(map(len, result))
        return result

    def _render_kind(self, kind: int, d: int, r: _Rows) -> list[str]:
        day = self.cfg.start + timedelta(days=d)
        prefix = day.isoformat() + "T"
        eid = r.eid.tolist()
        ms = self.base.msisdn[r.sub].tolist()
        ts = render.clock_table(render.utc_offset(self._tz, day))[r.ts - d * DAY].tolist()
        if kind in (VO, VI):
            return render.voice_lines("out" if kind == VO else "in", eid, ms, prefix, ts, r.a, r.b)
        if kind in (SO, SI):
            return render.sms_lines("out" if kind == SO else "in", eid, ms, prefix, ts, r.b)
        if kind == DATA:
            return render.data_lines(eid, ms, prefix, ts, r.a, r.b)
        if kind == FEE:
            return render.billing_lines("fee", eid, ms, prefix, ts, r.a, None)
        if kind == BAL:
            return render.billing_lines("balance", eid, ms, prefix, ts, None, r.b)
        if kind == TOPUP:
            return render.billing_lines("topup", eid, ms, prefix, ts, r.a, r.b)
        return render.billing_lines("adjustment", eid, ms, prefix, ts, r.a, None)

    # ---------------------------------------------------------------- pieces

    def _call_seconds(self, rng: np.random.Generator, sub: I64) -> I64:
        """Draw call lengths around each caller's mean (lognormal), 1 s to 3 h."""
        dur = self.base.call_sec[sub] * rng.lognormal(-CALL_SIGMA**2 / 2, CALL_SIGMA, len(sub))
        seconds: I64 = np.clip(np.round(dur), 1, 3 * 3600).astype(np.int64)
        return seconds

    def _factor(self, d: int) -> F64:
        """Return each subscriber's usage level today relative to normal (designed patterns)."""
        b = self.base
        f = np.ones(b.n)
        i = self._decliners
        if len(i):
            s, c = b.p_start[i].astype(np.float64), b.p_churn[i].astype(np.float64)
            x = np.clip((d - s + 1) / np.maximum(c - s, 1), 0.0, 1.0)
            f[i] = np.where(d >= s, 1 - (1 - b.floor[i]) * x ** b.expo[i], 1.0)
        i = self._recoverers
        if len(i):
            t = (d - b.p_start[i]).astype(np.float64)
            down, hold, up = b.dip_down[i], b.dip_hold[i], b.dip_up[i]
            depth = b.floor[i]
            g = np.where(t < down, 1 - (1 - depth) * (t + 1) / down, depth)
            g = np.where(t >= down + hold, depth + (1 - depth) * (t - down - hold + 1) / up, g)
            f[i] = np.clip(np.where(t < 0, 1.0, g), depth, 1.0)
        return f

    def _multipliers(self, day: date) -> tuple[F64, F64, F64]:
        """Return per-brand multipliers of voice, sms and data for `day` (weekday, holiday)."""
        holiday = any(lo <= day <= hi for lo, hi in self.cfg.holidays)
        weekend = day.weekday() >= 5
        out: list[F64] = []
        for attr, hattr in (("weekend_voice", "holiday_voice"), (None, "holiday_sms"),
                            ("weekend_data", "holiday_data")):
            values = []
            for s in self._shapes:
                w = getattr(s, attr) if attr else 1.0
                norm = 7.0 / (5.0 + 2.0 * w)  # the week keeps its mean of 1
                if holiday:
                    values.append(norm * getattr(s, hattr))
                else:
                    values.append(norm * (w if weekend else 1.0))
            out.append(np.asarray(values))
        return out[0], out[1], out[2]

    def _fee_today(self, day: date) -> I64:
        """Return the plan fee each subscriber is charged today, in fen."""
        fee = self.base.fee_fen
        first = day.replace(day=1)
        days_in_month = ((first + timedelta(days=32)).replace(day=1) - first).days
        k = day.day - 1
        if self.cfg.fee_cycle == "daily":
            # Splits that add up to the monthly fee exactly over the calendar month.
            return (fee * (k + 1)) // days_in_month - (fee * k) // days_in_month
        if day.day == 1:
            return fee.copy()
        if day == self.cfg.start:  # a run starting mid-month charges the rest of the month
            return (fee * (days_in_month - k)) // days_in_month
        return np.zeros_like(fee)

    def _lifecycle(self, d: int, day: date, offset: str, rng: np.random.Generator, on: B, using: B,
                   cut: I64, rev_day: I64, special: Callable[[int, int, str], None], seq: list[int]) -> None:
        b, n = self.base, self.base.n

        def event(i: int, sec: int, kind: str, **extra: Any) -> None:
            eid = (d + 1) * ID_DAY + seq[0]
            seq[0] += 1
            value = {"event_id": f"l{eid}", "msisdn": b.msisdn[i], "ts": render.ts_str(day, sec, offset),
                     "type": kind, **extra}
            special(sec, 3, render.line(LIFECYCLE, value))

        for i in np.nonzero(b.p_churn == d)[0].tolist():
            event(i, int(b.churn_sec[i]), "ported_out" if int(b.pattern[i]) in PORTS_OUT else "deactivated")
        for i in np.nonzero((b.p_request == d) & on)[0].tolist():
            event(i, int(rng.integers(9 * 3600, min(20 * 3600, int(cut[i])))), "port_out_request")
        for i in np.nonzero((b.p_cancel == d) & on)[0].tolist():
            event(i, int(rng.integers(9 * 3600, 20 * 3600)), "port_out_cancelled")

        # Complaints: more while declining or in a dip.
        p = np.full(n, COMPLAINT_P)
        dec = np.isin(b.pattern, (DECLINE_DEACT, DECLINE_PORT)) & (d >= b.p_start)
        p[dec] = 4e-3
        dip = (b.pattern == RECOVER) & (d >= b.p_start) & (d < b.p_start + b.dip_down + b.dip_hold)
        p[dip] = 1e-2
        leaving = (b.pattern == QUIET) & (d >= b.p_churn - QUIET_COMPLAINT_DAYS) & (d < b.p_churn)
        p[leaving] = QUIET_COMPLAINT_P
        sec = rng.integers(9 * 3600, 21 * 3600, n)
        who = np.nonzero(using & (rng.random(n) < p) & (sec < cut))[0]
        for i in who.tolist():
            event(i, int(sec[i]), "complaint")
        self._complained[who] = True

        # VAS free trials about to turn paid.
        vas_p = np.asarray([s.vas_trials_per_day for s in self._shapes])[b.brand]
        for i in np.nonzero(using & (rng.random(n) < vas_p) & (sec < cut))[0].tolist():
            ends = day + timedelta(days=int(rng.integers(2, 6)))
            event(i, int(sec[i]), "vas_trial_ending", service=VAS_SERVICES[i % len(VAS_SERVICES)],
                  ends_on=ends.isoformat())

        # Contracts: renewals of ending ones, and a few new ones.
        renew = (b.renew_day == d) & on
        new = using & ~b.has_contract & ~b.prepaid & (rng.random(n) < NEW_CONTRACT_P)
        for i in np.nonzero((renew | new) & (sec < cut))[0].tolist():
            months = 12 if rng.random() < 0.5 else 24
            ends = add_months(day, months) - timedelta(days=1)
            committed = int(round(b.arpu[i] * rng.uniform(0.85, 1.25), -1)) * months * 100
            contract = {"starts_on": day.isoformat(), "ends_on": ends.isoformat(),
                        "committed": committed / 100, "spent": 0}
            event(i, int(sec[i]), "contract_signed", contract=contract)
            b.has_contract[i] = True
            b.c_start[i] = d
            b.c_end[i] = (ends - self.cfg.start).days
            b.c_committed[i] = committed
            b.c_spent[i] = 0
            b.c_rev[i] = -int(rev_day[i])  # the new contract counts from tomorrow
            b.renew_day[i] = NEVER

    def _profile(self, i: int, updated_at: str, photo: dict[str, Any] | None) -> dict[str, Any]:
        b, start = self.base, self.cfg.start
        contract = None
        if b.has_contract[i]:
            contract = {
                "starts_on": (start + timedelta(days=int(b.c_start[i]))).isoformat(),
                "ends_on": (start + timedelta(days=int(b.c_end[i]))).isoformat(),
                "committed": int(b.c_committed[i]) / 100,
                "spent": int(b.c_spent[i] + b.c_rev[i]) / 100,
            }
        return {
            "msisdn": b.msisdn[i],
            "region": self._region_names[int(b.region[i])],
            "brand": self._brand_names[int(b.brand[i])],
            "segment": SEGMENTS[int(b.segment[i])],
            "activated_on": b.activated[i].isoformat(),
            "birthday": b.birthday[i],
            "prepaid": bool(b.prepaid[i]),
            "contract": contract,
            "photo": photo,
            "updated_at": updated_at,
        }

    def _profile_lines(self, d: int, who: npt.NDArray[np.intp] | None) -> list[str]:
        day = self.cfg.start + timedelta(days=d)
        updated_at = render.ts_str(day, 0, render.utc_offset(self._tz, day))
        idx = range(self.base.n) if who is None else who.tolist()
        month = self.cfg.start.strftime("%Y-%m")
        lines = []
        for i in idx:
            photo = None
            if who is not None:
                photo = {"month": month, "arpu": int(self._rev30[i]) / 100,
                         "mou": round(int(self._mou30[i]) / 60, 2)}
            lines.append(render.line(PROFILES, self._profile(i, updated_at, photo)))
        if who is not None:  # the spent figure is now stated in the profile
            b = self.base
            b.c_spent[who] += b.c_rev[who]
            b.c_rev[who] = 0
        return lines

    def _photo_lines(self, d: int) -> list[str]:
        """Photograph the base: profiles with the first-month figures of those who qualify."""
        cfg, b = self.cfg, self.base
        on = b.p_churn >= d
        qualify = on & (self._rev30 >= round(cfg.photo_arpu * 100)) & (self._mou30 >= round(cfg.photo_mou * 60))
        self.photographed = qualify
        return self._profile_lines(d, np.nonzero(qualify)[0])


def write_history(cfg: SimConfig, path: Path | str, labels_path: Path | str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> SimStats:
    """Write the history (JSON lines) to `path` and the labels to `labels_path`; return the stats."""
    sim = Simulation(cfg, progress)
    with open(path, "wb", buffering=1 << 20) as fh:
        for chunk in sim.chunks():
            fh.write("".join(chunk).encode())
    if labels_path is not None:
        write_labels(sim, labels_path)
    assert sim.stats is not None
    return sim.stats


def write_labels(sim: Simulation, path: Path | str) -> None:
    """Write `sim`'s labels as JSON lines."""
    with open(path, "wb") as fh:
        for label in sim.labels():
            fh.write(orjson.dumps(label) + b"\n")


def iter_history_lines(cfg: SimConfig) -> Iterator[bytes]:
    """Yield the history lines of `cfg`, each ending in a newline, in production order."""
    for chunk in Simulation(cfg).chunks():
        for text in chunk:
            yield text.encode()


def iter_history(cfg: SimConfig) -> Iterator[tuple[str, str, dict[str, Any] | None | bytes]]:
    """Yield (topic, key, value) in production order: value is a dict, None for a profile deletion,
    or the raw bytes of a deliberately invalid record."""
    for text in iter_history_lines(cfg):
        doc = orjson.loads(text)
        if "raw" in doc:
            yield doc["topic"], doc["key"], doc["raw"].encode()
            continue
        value = doc["value"]
        key = doc.get("key") or value["msisdn"]
        yield doc["topic"], key, value
