"""The subscribers' usage, plan fees, adjustments and prepaid balances of one day, as `Rows`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

import numpy as np

from streams.tools.sim import render
from streams.tools.sim.base import (
    DATA_CHARGED_SHARE,
    DECLINE_DEACT,
    DECLINE_PORT,
    RECOVER,
    SECOND_SIM,
    SILENT,
    TOPUP_STEPS,
    Base,
)
from streams.tools.sim.config import SimConfig
from streams.tools.sim.rows import ADJ, BAL, DATA, DAY, F64, FEE, I64, ID_DAY, SI, SO, TOPUP, VI, VO, B, Rows, sample_seconds

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
ADJUST_P: Final = 5e-4


@dataclass(slots=True)
class UsageDay:
    """What one day's usage drew, and what the day's lifecycle events need of it."""

    groups: list[Rows]  # the day's records by kind, in the order drawn
    on: B  # still a subscriber (not churned before today)
    using: B  # uses the line today (a silent leaver does not)
    cut: I64  # the second of the day its line ends (DAY: not today)
    rev_day: I64  # today's revenue per subscriber, in fen
    seq: int  # the next event-id sequence number of the day


class Usage:
    """The usage model of a run: draws each day's records and keeps the figures that carry over
    (first-month revenue and minutes for the photo, yesterday's complainers)."""

    def __init__(self, cfg: SimConfig, base: Base) -> None:
        self.cfg = cfg
        self.base = base
        n = base.n
        self.rev30 = np.zeros(n, dtype=np.int64)
        self.mou30 = np.zeros(n, dtype=np.int64)
        # Complained the day before (the lifecycle sets it): half of them get an adjustment.
        self.complained = np.zeros(n, dtype=bool)
        self._decliners = np.nonzero(np.isin(base.pattern, (DECLINE_DEACT, DECLINE_PORT)))[0]
        self._recoverers = np.nonzero(np.isin(base.pattern, (RECOVER, SECOND_SIM)))[0]
        self._silent = base.pattern == SILENT
        self.shapes = [cfg.shape(name) for name, _ in cfg.brands]

    def draw(self, d: int, rng: np.random.Generator) -> UsageDay:
        """Draw day `d`'s usage, fee, adjustment, balance and top-up records, after the plan
        changes and contract ends that take effect today."""
        cfg, b = self.cfg, self.base
        n = b.n
        day = cfg.start + timedelta(days=d)
        t0 = d * DAY
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
        groups: list[Rows] = []
        seq = [0]

        def rows(kind: int, sub: I64, sec: I64, a: I64, bb: I64) -> Rows:
            k = len(sub)
            eid = (d + 1) * ID_DAY + seq[0] + np.arange(k, dtype=np.int64)
            seq[0] += k
            ts = t0 + sec
            r = Rows(np.full(k, kind, dtype=np.int8), sub, ts, ts, eid, a, bb)
            groups.append(r)
            return r

        def draw(lam: F64, hours: tuple[float, ...], outgoing: bool) -> tuple[I64, I64]:
            counts = rng.poisson(lam)
            sub = np.repeat(np.arange(n, dtype=np.int64), counts)
            sec = sample_seconds(rng, hours, len(sub))
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
        adj_p = np.where(self.complained, 0.5, ADJUST_P)
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
            self.rev30 += rev_day
            self.mou30 += np.bincount(vo.sub, weights=vo.a, minlength=n).astype(np.int64)
        return UsageDay(groups, on, using, cut, rev_day, seq[0])

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
            for s in self.shapes:
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
