"""Customer charges for metered usage. Exact Decimals; callers round once per invoice
line with :func:`~tanso_mcp.domain.money.round_money`.

* ``usage``: ``units × price_per_unit``.
* ``graduated``: each tier prices only the units inside its bracket
  ``(previous up_to, up_to]``; a tier's ``flat_fee`` is added once as soon as any usage
  lands in it (so ``units == 0`` costs nothing, ``0.5`` units enter the first tier).
  Tiers come from :mod:`~tanso_mcp.domain.rules`, whose last tier is always ``"inf"``;
  if a caller builds tiers whose last bound is finite, units above it are priced at the
  last tier's rate (never left free).
* ``reset_mode``: ``reset`` prices the period's own units; ``accumulate`` prices the
  period's increment on the lifetime total, ``charge(prior + period) − charge(prior)``.

Additions: :func:`charge` (dispatch on the pricing model) and a ``prior_units``
argument to :func:`event_revenue` (marginal revenue of the event given the usage
already in the window, so graduated per-event revenue follows the tiers; default 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Protocol

from tanso_mcp.domain.money import decimal_context, round_money
from tanso_mcp.domain.rules import GraduatedPricing, PricingModel, ResetMode, UsagePricing

__all__ = [
    "charge",
    "event_revenue",
    "graduated_charge",
    "period_charge",
    "usage_charge",
]


class TierLike(Protocol):
    @property
    def up_to(self) -> Decimal | None: ...
    @property
    def price_per_unit(self) -> Decimal: ...
    @property
    def flat_fee(self) -> Decimal | None: ...


def _units(units: Decimal | int, name: str = "units") -> Decimal:
    if isinstance(units, bool) or not isinstance(units, Decimal | int):
        raise TypeError(f"{name} must be a Decimal or int, got {type(units).__name__}")
    value = Decimal(units)
    if not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {units}")
    return value


def usage_charge(units: Decimal | int, price_per_unit: Decimal | int) -> Decimal:
    """``units × price_per_unit``, exact."""
    with decimal_context():
        return _units(units) * Decimal(price_per_unit)


def graduated_charge(units: Decimal | int, tiers: Iterable[TierLike]) -> Decimal:
    """Graduated (tiered) charge of ``units``, exact. See the module docstring."""
    remaining_units = _units(units)
    tiers = list(tiers)
    if not tiers:
        raise ValueError("graduated pricing needs at least one tier")
    total = Decimal(0)
    lower = Decimal(0)
    with decimal_context():
        for index, tier in enumerate(tiers):
            if remaining_units <= lower:
                break
            is_last = index == len(tiers) - 1
            upper = None if is_last else tier.up_to
            top = remaining_units if upper is None else min(remaining_units, upper)
            in_bracket = top - lower
            if in_bracket > 0:
                total += in_bracket * tier.price_per_unit
                if tier.flat_fee:
                    total += tier.flat_fee
            if upper is None:
                break
            lower = upper
    return total


def charge(pricing: PricingModel, units: Decimal | int) -> Decimal:
    """The pricing model's charge for ``units`` taken on their own."""
    if isinstance(pricing, UsagePricing):
        return usage_charge(units, pricing.price_per_unit)
    if isinstance(pricing, GraduatedPricing):
        return graduated_charge(units, pricing.tiers)
    raise TypeError(f"unknown pricing model {type(pricing).__name__}")


def period_charge(
    pricing: PricingModel, period_units: Decimal | int, prior_units: Decimal | int = 0
) -> Decimal:
    """Charge of one billing period's usage.

    ``reset``: ``charge(period_units)`` (``prior_units`` ignored).
    ``accumulate``: ``charge(prior_units + period_units) − charge(prior_units)`` where
    ``prior_units`` is the lifetime usage before the period.
    """
    period = _units(period_units, "period_units")
    if pricing.reset_mode == ResetMode.RESET:
        return charge(pricing, period)
    prior = _units(prior_units, "prior_units")
    with decimal_context():
        return charge(pricing, prior + period) - charge(pricing, prior)


def event_revenue(
    pricing: PricingModel,
    units: Decimal | int,
    prior_units: Decimal | int = 0,
    currency: str = "USD",
) -> Decimal:
    """Provisional revenue of one event, rounded to the currency's minor unit (2 dp for
    USD): ``charge(prior + units) − charge(prior)`` with ``prior_units`` the usage
    already counted in the pricing window (0 = price the event on its own). For
    ``usage`` pricing this is simply ``units × price``. Invoices re-price period totals;
    this number is for analytics only."""
    new = _units(units)
    prior = _units(prior_units, "prior_units")
    with decimal_context():
        amount = charge(pricing, prior + new) - charge(pricing, prior)
    return round_money(amount, currency)
