"""The seam between invoicing and metering: the usage lines of an invoice.

Invoicing (services/billing) calls `usage_lines` whenever it builds or recomputes an
invoice that closes a subscription period (or a plan's part of one, after a plan
change); metering owns how usage is counted and priced. Contract:

- only overage is priced (units covered by credits are never billed twice);
- `reset` features: graduated tiers on the period total; `accumulate` features: the
  period's increment, charge(prior + period) − charge(prior);
- one line per metered feature with a non-zero charge; `amount` is exact (the caller
  rounds once per line, half-up, to the currency's minor unit).

How: the events themselves are summed (never the counters, which serve limits): the
overage units (``events.overage_q``: usage neither covered by credits nor beyond
``max_usage``) of the subscription's ``CLIENT_TRACKED`` events whose ``occurredAt``
falls in ``[period_start, period_end)``, per feature, priced by the rules of ``plan``
(the plan in force during that window). For ``accumulate`` features the prior units are
the subscription's overage before ``period_start``. Exact integer sums in SQL on both
databases (scaled integers).

Late events: an event whose ``occurredAt`` lies in a period is billed as long as the
invoice closing that period is still open (``PENDING``/``DUE``: billing recomputes it);
once the invoice has left those states it is never recomputed, so usage that arrives
later is recorded (analytics, limits) but not billed retroactively.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Event, Feature, Plan, PlanFeature, Subscription
from ..db.scale import QTY_SCALE
from ..domain.pricing import period_charge
from ..domain.rules import ResetMode, parse_rule_value
from ..errors import TansoError


@dataclass(frozen=True)
class UsageLine:
    feature_id: str
    description: str
    quantity: Decimal  # billed (overage) units
    amount: Decimal  # exact, unrounded


def _units(q: int) -> Decimal:
    return (Decimal(q) / QTY_SCALE).normalize() if q else Decimal(0)


def _fmt(units: Decimal) -> str:
    return format(units, "f")


async def _overage_by_feature(
    s: AsyncSession, sub: Subscription, start: datetime | None, end: datetime
) -> dict[str, int]:
    q = (
        select(Event.feature_id, func.coalesce(func.sum(Event.overage_q), 0))
        .where(
            Event.environment_id == sub.environment_id,
            Event.customer_id == sub.customer_id,
            Event.subscription_id == sub.id,
            Event.event_type == "CLIENT_TRACKED",
            Event.occurred_at < end,
        )
        .group_by(Event.feature_id)
    )
    if start is not None:
        q = q.where(Event.occurred_at >= start)
    return {fid: int(total) for fid, total in (await s.execute(q)).all() if fid is not None}


async def usage_lines(
    s: AsyncSession, sub: Subscription, plan: Plan, period_start: datetime, period_end: datetime
) -> list[UsageLine]:
    rules = (
        await s.execute(
            select(PlanFeature.id, PlanFeature.value, Feature.id, Feature.key)
            .join(Feature, Feature.id == PlanFeature.feature_id)
            .where(PlanFeature.plan_id == plan.id)
            .order_by(Feature.key)
        )
    ).all()
    metered = []
    for _rid, value, fid, key in rules:
        if not value:
            continue
        try:
            rule = parse_rule_value(value)
        except TansoError:  # a stored rule is always valid; never fail an invoice on it
            continue
        if rule is not None and rule.pricing is not None:
            metered.append((fid, key, rule.pricing))
    if not metered:
        return []
    period = await _overage_by_feature(s, sub, period_start, period_end)
    prior: dict[str, int] | None = None
    lines: list[UsageLine] = []
    for fid, key, pricing in metered:
        units_q = period.get(fid, 0)
        if units_q <= 0:
            continue
        units = _units(units_q)
        if pricing.reset_mode == ResetMode.ACCUMULATE:
            if prior is None:
                prior = await _overage_by_feature(s, sub, None, period_start)
            amount = period_charge(pricing, units, _units(prior.get(fid, 0)))
        else:
            amount = period_charge(pricing, units)
        if amount == 0:
            continue
        lines.append(
            UsageLine(
                feature_id=fid,
                description=f"Usage for {key}: {_fmt(units)} units",
                quantity=units,
                amount=amount,
            )
        )
    return lines
