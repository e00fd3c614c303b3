"""Proration of plan prices for upgrades and immediate cancellations.

``ratio`` is the unused share of the current period in ``[0, 1]``: pass
:func:`tanso_mcp.domain.periods.remaining_fraction` (an exact ``Fraction``, so a
product that lands exactly on half a cent rounds up as it should) or
:func:`~tanso_mcp.domain.periods.remaining_ratio` (a 20-dp Decimal). Each line is
rounded half-up to the currency's minor unit on its own; totals are sums of lines:

* upgrade (IN_ADVANCE -> IN_ADVANCE): lines ``−round(r × old)`` ("credit for the old
  plan") and ``+round(r × new)``, total = their sum. The total is negative when the
  "upgrade" goes to a cheaper plan; callers decide what to do with that (it may
  become a credit).
* immediate cancellation (IN_ADVANCE): ``−round(r × price)``.

Negative zero is never returned.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

from tanso_mcp.domain.money import decimal_context, round_money

__all__ = ["Adjustment", "cancellation_refund", "prorate", "upgrade_adjustment"]

Ratio = Decimal | Fraction | int


def _check_ratio(ratio: Ratio) -> Ratio:
    if isinstance(ratio, bool) or not isinstance(ratio, Decimal | Fraction | int):
        raise TypeError(f"ratio must be a Decimal or Fraction, got {type(ratio).__name__}")
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be between 0 and 1, got {ratio}")
    return ratio


def _check_price(price: Decimal | int, name: str) -> Decimal:
    if isinstance(price, bool) or not isinstance(price, Decimal | int):
        raise TypeError(f"{name} must be a Decimal, got {type(price).__name__}")
    value = Decimal(price)
    if not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a finite amount >= 0, got {price}")
    return value


def prorate(ratio: Ratio, price: Decimal | int, currency: str) -> Decimal:
    """``round_money(ratio × price)`` (>= 0), computed exactly before the one rounding."""
    ratio = _check_ratio(ratio)
    value = _check_price(price, "price")
    if isinstance(ratio, Fraction):
        return round_money(ratio * Fraction(value), currency)
    with decimal_context():
        return round_money(Decimal(ratio) * value, currency)


class Adjustment(NamedTuple):
    old_credit_line: Decimal
    """Negative (or zero): the unused share of the old plan, credited back."""
    new_charge_line: Decimal
    """The unused share of the new plan, charged now."""
    total: Decimal
    """``new_charge_line + old_credit_line``."""


def _neg(amount: Decimal) -> Decimal:
    return -amount if amount else amount


def upgrade_adjustment(
    ratio: Ratio, old_price: Decimal | int, new_price: Decimal | int, currency: str
) -> Adjustment:
    """Prorated ``ADJUSTMENT`` lines for a mid-period IN_ADVANCE plan change.
    Worked example: ratio 1/3, $49 -> $99 gives ``(-16.33, 33.00, 16.67)``."""
    old_line = _neg(prorate(ratio, _check_price(old_price, "old_price"), currency))
    new_line = prorate(ratio, _check_price(new_price, "new_price"), currency)
    with decimal_context():
        total = new_line + old_line
    return Adjustment(old_line, new_line, total.copy_abs() if total.is_zero() else total)


def cancellation_refund(ratio: Ratio, price: Decimal | int, currency: str) -> Decimal:
    """Amount of the ``CREDIT`` invoice for an immediate cancellation: ``−round(r × price)``
    (zero when nothing is left). Worked example: $49, 20/30 unused -> ``-32.67``."""
    return _neg(prorate(ratio, price, currency))
