"""The offers a task carries (CONTRACT §5): a contract's renewal stages and the tenure discount.

Pure functions of the contract as it stands, the local day and the rule set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal, Protocol

from rules.task_message import Offer, SubscriberFacts, cny
from rules.vocabulary import Scalar

Stage = Literal["remaining_match", "deposit_match", "overspend_match"]
# Contract listing order; it is also the order in which stages due on the same day are issued
# and the precedence when a light task picks its contract offer.
STAGES: Final[tuple[Stage, ...]] = ("remaining_match", "deposit_match", "overspend_match")
TENURE_OFFER: Final = "tenure_discount"


class OfferRules(Protocol):
    """The fields of a rule set that the offers read."""

    @property
    def remaining_match_days(self) -> tuple[int, int]: ...

    @property
    def tenure_discounts(self) -> Sequence[tuple[int, int]]: ...


@dataclass(frozen=True, slots=True)
class ContractTerms:
    """A contract as it stands: `spend_fen` = profile `spent` + revenue counted since."""

    ends_on: date
    committed_fen: int
    spend_fen: int


def tenure_years(activated_on: date, on: date) -> int:
    """Return whole years from `activated_on` to `on` (a Feb-29 start completes on Mar 1)."""
    years = on.year - activated_on.year
    if (on.month, on.day) < (activated_on.month, activated_on.day):
        years -= 1
    return years


def tenure_discount(years: int, table: Sequence[tuple[int, int]]) -> int | None:
    """Return the voice discount percent for `years` of tenure, or None below the table."""
    best: tuple[int, int] | None = None
    for min_years, percent in table:
        if years >= min_years and (best is None or min_years > best[0]):
            best = (min_years, percent)
    return None if best is None else best[1]


def contract_stages(contract: ContractTerms, day: date, rules: OfferRules) -> tuple[Stage, ...]:
    """Return the contract stages due on local `day`, in `STAGES` order."""
    low, high = rules.remaining_match_days
    days_left = (contract.ends_on - day).days
    due: list[Stage] = []
    if low <= days_left <= high:
        due.append("remaining_match")
    if (day.year, day.month) == (contract.ends_on.year, contract.ends_on.month) and day <= contract.ends_on:
        due.append("deposit_match")
    if contract.spend_fen >= contract.committed_fen and day < contract.ends_on:
        due.append("overspend_match")
    return tuple(due)


def contract_offer(contract: ContractTerms, stage: Stage) -> Offer:
    """Return the offer of contract `stage`."""
    ends = contract.ends_on.isoformat()
    if stage == "remaining_match":
        remaining = max(contract.committed_fen - contract.spend_fen, 0)
        detail = f"contract ends {ends}; remaining commitment {cny(remaining):.2f} CNY matched on renewal"
    elif stage == "deposit_match":
        detail = f"contract ends {ends}; deposit on renewal matched"
    else:
        over = contract.spend_fen - contract.committed_fen
        detail = (
            f"contract ends {ends}; spend {cny(contract.spend_fen):.2f} CNY exceeds commitment "
            f"{cny(contract.committed_fen):.2f} CNY by {cny(over):.2f} CNY, overspend matched"
        )
    return Offer(stage, detail)


def light_offer(
    who: SubscriberFacts, contract: ContractTerms | None, day: date, rules: OfferRules
) -> tuple[Offer | None, dict[str, Scalar]]:
    """Return the offer of a light task changing on local `day` and its template vars.

    The contract offer applies when the contract is in a stage on that day (same rules as the
    day-open check, first in `STAGES` order, regardless of whether the stage's own task was
    already used); otherwise the tenure discount; otherwise none.
    """
    if contract is not None:
        stages = contract_stages(contract, day, rules)
        if stages:
            return contract_offer(contract, stages[0]), {
                "offer": stages[0],
                "contract_ends_on": contract.ends_on.isoformat(),
            }
    if who.activated_on is not None:
        years = tenure_years(who.activated_on, day)
        percent = tenure_discount(years, rules.tenure_discounts)
        if percent is not None:
            detail = f"voice calls at {percent}% of list price (tenure {years} y)"
            return Offer(TENURE_OFFER, detail), {
                "offer": TENURE_OFFER,
                "discount_percent": percent,
                "tenure_years": years,
            }
    return None, {}
