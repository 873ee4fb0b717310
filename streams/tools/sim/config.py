"""What the synthetic operator looks like: the settings of one run and the built-in brand shapes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from typing import Final, Literal

# Zunyi (遵义), the seeds' city branch, first; then its county-level branches. The first region is
# the urban one: a little more ARPU there.
REGIONS: Final[tuple[tuple[str, float], ...]] = (
    ("zunyi", 0.40),
    ("renhuai", 0.07),
    ("chishui", 0.05),
    ("tongzi", 0.07),
    ("suiyang", 0.05),
    ("zhengan", 0.05),
    ("daozhen", 0.04),
    ("wuchuan", 0.04),
    ("fenggang", 0.04),
    ("meitan", 0.05),
    ("yuqing", 0.04),
    ("xishui", 0.06),
)

BRANDS: Final[tuple[tuple[str, float], ...]] = (("gotone", 0.22), ("mzone", 0.33), ("easyown", 0.45))

# Statutory holidays (first day, last day). Mid-Autumn 2026 falls inside the default run
# (2026-07-01 + 90 days ends on 2026-09-28); National Day week for the years around it.
HOLIDAYS: Final[tuple[tuple[date, date], ...]] = (
    (date(2026, 9, 25), date(2026, 9, 27)),
    *((date(y, 10, 1), date(y, 10, 7)) for y in range(2024, 2031)),
)


@dataclass(frozen=True, slots=True)
class BrandShape:
    """How one brand's subscribers use the network; monthly figures are per 30 days."""

    arpu_median: float  # CNY
    arpu_sigma: float  # of the lognormal
    mou_median: float  # outgoing voice minutes
    mou_sigma: float
    call_minutes: float  # mean length of a call
    calls_in_ratio: float  # incoming calls per outgoing call
    sms_out_per_day: float
    sms_in_per_day: float
    data_sessions_per_day: float
    data_mb_per_session: float  # mean
    usage_split: tuple[float, float, float]  # share of non-fee revenue from voice, data, sms
    plans: tuple[int, ...]  # monthly plan fees, CNY
    prepaid_share: float
    contract_share: float
    tenure_beta: tuple[float, float]  # tenure = 15 years x Beta(a, b)
    weekend_voice: float  # multipliers before normalising the week to a mean of 1
    weekend_data: float
    holiday_voice: float
    holiday_data: float
    holiday_sms: float
    vas_trials_per_day: float


SHAPES: Final[dict[str, BrandShape]] = {
    # GoTone (全球通): business users, high voice, high ARPU, long tenure, weekends quiet.
    "gotone": BrandShape(
        arpu_median=175.0, arpu_sigma=0.45, mou_median=380.0, mou_sigma=0.7, call_minutes=4.0,
        calls_in_ratio=0.9, sms_out_per_day=0.8, sms_in_per_day=1.0, data_sessions_per_day=2.0,
        data_mb_per_session=60.0, usage_split=(0.6, 0.3, 0.1),
        plans=(58, 88, 128, 158, 188, 288, 388, 588), prepaid_share=0.05, contract_share=0.6,
        tenure_beta=(2.2, 2.0), weekend_voice=0.55, weekend_data=1.1, holiday_voice=0.45,
        holiday_data=1.2, holiday_sms=1.8, vas_trials_per_day=0.0005,
    ),
    # M-Zone (动感地带): youth, data and SMS heavy, little voice, short tenure.
    "mzone": BrandShape(
        arpu_median=55.0, arpu_sigma=0.5, mou_median=60.0, mou_sigma=0.8, call_minutes=2.0,
        calls_in_ratio=0.9, sms_out_per_day=2.5, sms_in_per_day=1.5, data_sessions_per_day=4.0,
        data_mb_per_session=90.0, usage_split=(0.15, 0.6, 0.25), plans=(8, 18, 28, 38, 58, 78),
        prepaid_share=0.55, contract_share=0.2, tenure_beta=(1.1, 4.0), weekend_voice=1.0,
        weekend_data=1.2, holiday_voice=0.9, holiday_data=1.3, holiday_sms=1.8,
        vas_trials_per_day=0.002,
    ),
    # EasyOwn (神州行): mass market, mostly prepaid.
    "easyown": BrandShape(
        arpu_median=75.0, arpu_sigma=0.6, mou_median=150.0, mou_sigma=0.8, call_minutes=2.5,
        calls_in_ratio=0.9, sms_out_per_day=0.6, sms_in_per_day=1.0, data_sessions_per_day=2.0,
        data_mb_per_session=40.0, usage_split=(0.4, 0.45, 0.15),
        plans=(8, 18, 28, 38, 58, 88, 128), prepaid_share=0.7, contract_share=0.3,
        tenure_beta=(1.3, 2.5), weekend_voice=0.85, weekend_data=1.1, holiday_voice=0.8,
        holiday_data=1.2, holiday_sms=1.8, vas_trials_per_day=0.001,
    ),
}


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Settings of one simulated run; the same config always yields the same bytes."""

    subscribers: int = 20000
    days: int = 90
    start: date = date(2026, 7, 1)
    seed: int = 7
    bad_share: float = 0.001  # extra, deliberately invalid records per line
    dup_share: float = 0.002  # exact resends of usage/billing events per line
    tz: str = "Asia/Shanghai"
    regions: tuple[tuple[str, float], ...] = REGIONS  # (name, weight); the first one is urban
    brands: tuple[tuple[str, float], ...] = BRANDS  # (name, weight); names must be in SHAPES
    holidays: tuple[tuple[date, date], ...] = HOLIDAYS
    # The photographed base: measured over the first `photo_days` days, published at their end.
    photo_days: int = 30
    photo_arpu: float = 120.0
    photo_mou: float = 100.0
    # Designed patterns, as shares of the subscribers per 90 days of run. `churn_share` is drawn
    # among those whose expected figures meet the photo thresholds; they churn after the photo, so
    # theirs is per 60 days after it (the default run: 30 days of photo, 60 after).
    churn_share: float = 0.075
    other_churn_share: float = 0.06
    recover_share: float = 0.03
    cancel_share: float = 0.006  # port-out request, then cancelled
    # Fates that do not flatter the lights (0: none, as before): watched subscribers who leave with
    # no decline around a tenure anniversary, complaining before (per 60 days after the photo), and
    # stayers whose usage drops for good, a second SIM taking the calls (per 60 days).
    quiet_churn_share: float = 0.0
    downshift_share: float = 0.0
    # "daily": the monthly plan fee is deducted day by day (日扣), so every 30-day window holds
    # 30 days of fee; "monthly": one fee event on the 1st, which a 30-day window misses on the 31st.
    fee_cycle: Literal["daily", "monthly"] = "daily"
    profile_delete_after_days: int | None = 60  # tombstone a ported-out number's profile
    # Events per day relative to the brand shapes, with the same minutes and revenue: 0.25 means
    # a quarter of the calls, SMS and data sessions, each four times as long or large. The demo
    # uses it to keep a realistic base within a few minutes of processing.
    activity: float = 1.0

    def shape(self, brand: str) -> BrandShape:
        """Return `brand`'s usage shape scaled to this run's activity."""
        base = SHAPES[brand]
        if self.activity == 1.0:
            return base
        a = self.activity
        return replace(base, call_minutes=base.call_minutes / a, sms_out_per_day=base.sms_out_per_day * a,
                       sms_in_per_day=base.sms_in_per_day * a, data_sessions_per_day=base.data_sessions_per_day * a,
                       data_mb_per_session=base.data_mb_per_session / a)

    def __post_init__(self) -> None:
        if not 1 <= self.subscribers <= 50_000_000:
            raise ValueError("subscribers must be between 1 and 50 000 000")
        if not 1 <= self.days <= 3650:
            raise ValueError("days must be between 1 and 3650")
        for name in ("bad_share", "dup_share", "churn_share", "other_churn_share", "recover_share",
                     "cancel_share", "quiet_churn_share", "downshift_share"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"{name} must be between 0 and 0.5")
        if not self.regions or any(w <= 0 for _, w in self.regions):
            raise ValueError("regions need positive weights")
        if not self.brands or any(w <= 0 for _, w in self.brands):
            raise ValueError("brands need positive weights")
        unknown = [b for b, _ in self.brands if b not in SHAPES]
        if unknown:
            raise ValueError(f"no usage shape for brands {unknown}; known: {sorted(SHAPES)}")
        if not 0.01 <= self.activity <= 10:
            raise ValueError("activity must be between 0.01 and 10")
        if self.photo_days < 1:
            raise ValueError("photo_days must be >= 1")
        if self.fee_cycle not in ("daily", "monthly"):
            raise ValueError("fee_cycle must be 'daily' or 'monthly'")


# The settings of `churnlight simulate --unflattering` and of the README's risk figures: more
# stayers with dips (holidays) and drops (a second SIM), leavers without a decline.
UNFLATTERING: Final[dict[str, float]] = {
    "recover_share": 0.08,
    "downshift_share": 0.05,
    "quiet_churn_share": 0.06,
}
