"""Subscribers' lifecycle events (churn, port-outs, complaints, VAS trials, contracts) and profiles."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from rules.events import LIFECYCLE, PROFILES
from streams.tools.sim import render
from streams.tools.sim.base import (
    DECLINE_DEACT,
    DECLINE_PORT,
    NEVER,
    PORTS_OUT,
    QUIET,
    QUIET_COMPLAINT_DAYS,
    QUIET_COMPLAINT_P,
    RECOVER,
    SEGMENTS,
    Base,
    add_months,
)
from streams.tools.sim.config import SimConfig
from streams.tools.sim.rows import ID_DAY, Specials
from streams.tools.sim.usage import Usage, UsageDay

COMPLAINT_P: Final = 3e-4  # per subscriber and day; more when declining or in a dip
VAS_SERVICES: Final = ("video_ring", "cloud_drive", "music_plus", "migu_video", "mobile_news",
                       "game_pass")
NEW_CONTRACT_P: Final = 2e-4


class Lifecycle:
    """The events and profile records of a run that are not usage, rendered one by one."""

    def __init__(self, cfg: SimConfig, base: Base, usage: Usage) -> None:
        self.cfg = cfg
        self.base = base
        self.usage = usage
        self._tz = ZoneInfo(cfg.tz)
        self._brand_names = [name for name, _ in cfg.brands]
        self._region_names = [name for name, _ in cfg.regions]
        # Who the photo took (the first month's figures qualified them), once it is taken.
        self.photographed = np.zeros(base.n, dtype=bool)

    def events(self, d: int, rng: np.random.Generator, today: UsageDay, specials: Specials) -> None:
        """Add day `d`'s lifecycle events to `specials`: churn, port-out requests and cancellations,
        complaints, VAS trials, contracts, and the deletion of ported-out numbers' profiles."""
        b, n = self.base, self.base.n
        day = self.cfg.start + timedelta(days=d)
        offset = render.utc_offset(self._tz, day)
        on, using, cut, rev_day = today.on, today.using, today.cut, today.rev_day
        seq = [today.seq]

        def event(i: int, sec: int, kind: str, **extra: Any) -> None:
            eid = (d + 1) * ID_DAY + seq[0]
            seq[0] += 1
            value = {"event_id": f"l{eid}", "msisdn": b.msisdn[i], "ts": render.ts_str(day, sec, offset),
                     "type": kind, **extra}
            specials.add(sec, 3, render.line(LIFECYCLE, value))

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
        complained = np.zeros(n, dtype=bool)
        complained[who] = True
        self.usage.complained = complained

        # VAS free trials about to turn paid.
        vas_p = np.asarray([s.vas_trials_per_day for s in self.usage.shapes])[b.brand]
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

        # Ported-out numbers lose their profile after a while.
        if self.cfg.profile_delete_after_days is not None:
            gone = np.nonzero(np.isin(b.pattern, PORTS_OUT) & (b.p_churn + self.cfg.profile_delete_after_days == d))[0]
            for i in gone.tolist():
                specials.add(3 * 3600, 2, render.line(PROFILES, None, key=b.msisdn[i]))

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

    def profile_lines(self, d: int, who: npt.NDArray[np.intp] | None) -> list[str]:
        day = self.cfg.start + timedelta(days=d)
        updated_at = render.ts_str(day, 0, render.utc_offset(self._tz, day))
        idx = range(self.base.n) if who is None else who.tolist()
        month = self.cfg.start.strftime("%Y-%m")
        lines = []
        for i in idx:
            photo = None
            if who is not None:
                photo = {"month": month, "arpu": int(self.usage.rev30[i]) / 100,
                         "mou": round(int(self.usage.mou30[i]) / 60, 2)}
            lines.append(render.line(PROFILES, self._profile(i, updated_at, photo)))
        if who is not None:  # the spent figure is now stated in the profile
            b = self.base
            b.c_spent[who] += b.c_rev[who]
            b.c_rev[who] = 0
        return lines

    def photo_lines(self, d: int) -> list[str]:
        """Photograph the base: profiles with the first-month figures of those who qualify."""
        cfg, b = self.cfg, self.base
        on = b.p_churn >= d
        qualify = on & (self.usage.rev30 >= round(cfg.photo_arpu * 100)) & (self.usage.mou30 >= round(cfg.photo_mou * 60))
        self.photographed = qualify
        return self.profile_lines(d, np.nonzero(qualify)[0])
