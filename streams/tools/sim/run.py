"""The day-by-day generator: one day's records as column arrays, sorted by production time, rendered
in chunks. Memory holds one day at a time."""

from __future__ import annotations

import time as clock
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import orjson

from rules.events import PROFILES
from streams.tools.sim import render
from streams.tools.sim.base import (
    DECLINE_DEACT,
    DECLINE_PORT,
    NEVER,
    PATTERNS,
    PORTS_OUT,
    RECOVER,
    SECOND_SIM,
    SILENT,
    Base,
    build_base,
)
from streams.tools.sim.config import SimConfig
from streams.tools.sim.lifecycle import Lifecycle
from streams.tools.sim.rows import BAL, DATA, DAY, FEE, KIND_TOPIC, SI, SO, SPEC, TOPUP, VI, VO, Rows, Specials
from streams.tools.sim.usage import Usage

CHUNK_ROWS: Final = 1 << 17


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


class Simulation:
    """One seeded run; iterate `chunks()` once, then read `stats` and `labels()`."""

    def __init__(self, cfg: SimConfig, progress: Callable[[int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.base: Base = build_base(cfg)
        self.stats: SimStats | None = None
        self._tz = ZoneInfo(cfg.tz)
        self.usage = Usage(cfg, self.base)
        self.lifecycle = Lifecycle(cfg, self.base, self.usage)
        self._carry = Rows.empty()  # resends that arrive after midnight
        self._topics = dict.fromkeys(render.TOPICS, 0)
        self._bad = 0
        self._dups = 0
        self._lines = 0
        self._bytes = 0
        self._started = False

    @property
    def photographed(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Who the photo took."""
        return self.lifecycle.photographed

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
            tail = self.lifecycle.photo_lines(cfg.days)
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
        specials = Specials()
        if d == 0:
            for text in self.lifecycle.profile_lines(0, None):
                specials.add(0, 2, text)
        if d == cfg.photo_days:
            for text in self.lifecycle.photo_lines(d):
                specials.add(0, 2, text)
        today = self.usage.draw(d, rng)
        self.lifecycle.events(d, rng, today, specials)
        b.c_rev += today.rev_day

        fast = Rows.concat(today.groups)
        del today  # one copy of the day at a time
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
                specials.add(int(fast.ts[i] - t0), 0,
                             render.bad_line(render.BAD_KINDS[int(kinds[j])], value, other, int(pick[j])))
            self._bad += n_bad
        # Resends: the same record again, 1 minute to 6 hours later (maybe after midnight).
        n_dup = int(rng.binomial(total, cfg.dup_share)) if cfg.dup_share and len(fast) else 0
        dups = fast.take(rng.integers(0, len(fast), n_dup)) if n_dup else Rows.empty()
        dups.emit = dups.ts + rng.integers(60, 6 * 3600, len(dups))
        self._dups += len(dups)
        stays = dups.emit < t0 + DAY
        carry, self._carry = self._carry, dups.take(~stays)


        day_rows = Rows.concat([specials.rows(t0), carry, fast, dups.take(stays)])
        del fast, dups
        order = np.argsort(day_rows.emit, kind="stable")
        for lo in range(0, len(order), CHUNK_ROWS):
            yield self._render(day_rows.take(order[lo : lo + CHUNK_ROWS]), specials.texts)

    def _render(self, rows: Rows, specials: list[str]) -> list[str]:
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

    def _render_kind(self, kind: int, d: int, r: Rows) -> list[str]:
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
