"""Gross margin maths.

* ``gross_margin = (revenue − cost) / revenue``, 4 dp half-up. With zero revenue:
  ``−1`` when there is a cost, ``0`` when there is none.
* status: ``healthy`` when margin >= 0.70, ``at_risk`` when >= 0.40, else
  ``underwater``.
* MRR of a plan: ``price / interval_months``, rounded to the currency's minor unit.

Only ``CURRENCY`` costs belong in these sums (``TOKENS``/``CREDITS`` costs are not money)
— the caller filters.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from tanso_mcp.domain.money import decimal_context, round_money, round_places

__all__ = [
    "AT_RISK_THRESHOLD",
    "HEALTHY_THRESHOLD",
    "MarginStatus",
    "gross_margin",
    "margin_status",
    "monthly_recurring_revenue",
]

HEALTHY_THRESHOLD = Decimal("0.70")
AT_RISK_THRESHOLD = Decimal("0.40")


class MarginStatus(StrEnum):
    HEALTHY = "healthy"
    AT_RISK = "at_risk"
    UNDERWATER = "underwater"


def gross_margin(revenue: Decimal | int, cost: Decimal | int) -> Decimal:
    if type(revenue) is int and type(cost) is int and revenue > 0:
        # integer sums (e.g. micro-units): the same half-up rounding without Decimal
        # division, for views that rank thousands of rows
        q, r = divmod(abs(revenue - cost) * 10_000, revenue)
        if 2 * r >= revenue:
            q += 1
        return Decimal(q if revenue >= cost else -q).scaleb(-4)
    revenue, cost = Decimal(revenue), Decimal(cost)
    if revenue == 0:
        return Decimal(-1) if cost > 0 else Decimal(0)
    with decimal_context():
        return round_places((revenue - cost) / revenue, 4)


def margin_status(margin: Decimal | int) -> MarginStatus:
    if margin >= HEALTHY_THRESHOLD:
        return MarginStatus.HEALTHY
    if margin >= AT_RISK_THRESHOLD:
        return MarginStatus.AT_RISK
    return MarginStatus.UNDERWATER


def monthly_recurring_revenue(price: Decimal | int, interval_months: int, currency: str) -> Decimal:
    """``$600`` per 3 months -> ``200.00``."""
    if (
        isinstance(interval_months, bool)
        or not isinstance(interval_months, int)
        or (interval_months < 1)
    ):
        raise ValueError("interval_months must be a positive integer")
    with decimal_context():
        return round_money(Decimal(price) / interval_months, currency)
