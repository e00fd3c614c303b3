"""Usage reconciliation: for one billing period, per customer and feature, what was
accepted, what credits covered, what is billable, what the payment provider's meter
has received and what is still pending.

Read from the usage counters (one row per subscription, feature and period) and the
meter reports, so it costs the same whatever the number of events. Units beyond a
feature's limit are accepted with zero usage and appear nowhere here, as on invoices.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select

from ..db.models import Customer, Feature, PlanFeature, Subscription, UsageCounter
from ..db.scale import QTY_SCALE
from ..db.stripe_usage_models import MeterReport
from ..errors import InvalidRequest
from ..principal import Principal
from .metering.windows import LIFETIME, SubPeriod, period_start_for
from .outputs_stripe import ReconciliationOut, ReconciliationTotalsOut
from .stripe_usage import is_forwarded_rule, reporting_provider

if TYPE_CHECKING:
    from ..bootstrap import AppContext

CURRENT = "current"
PREVIOUS = "previous"


def parse_period(value: str | None) -> str | datetime:
    """``current`` (default), ``previous``, or a date / ISO date-time inside the period."""
    if value is None or value.strip().lower() in ("", CURRENT):
        return CURRENT
    text = value.strip()
    if text.lower() == PREVIOUS:
        return PREVIOUS
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise InvalidRequest(
            "period must be 'current', 'previous', a date (YYYY-MM-DD) or an ISO 8601 "
            "date-time with a time zone",
            field="period",
        )
    return at.astimezone(UTC)


def _units(q: int) -> Decimal:
    return (Decimal(q) / QTY_SCALE).normalize() if q else Decimal(0)


def _window(sub: Any, period: str | datetime) -> datetime:
    """The start of the subscription's period that ``period`` designates."""
    sp = SubPeriod(
        started_at=sub.started_at,
        period_start=sub.current_period_start,
        period_end=sub.current_period_end,
        interval_months=sub.interval_months,
        anchor_day=sub.billing_anchor_day,
    )
    if period == CURRENT:
        return sub.current_period_start
    if period == PREVIOUS:
        return period_start_for(sp, sub.current_period_start - timedelta(microseconds=1))
    if isinstance(period, str):  # parse_period answers the two names above or a time
        raise InvalidRequest(f"unknown period {period!r}", field="period")
    return period_start_for(sp, period)


async def usage_reconciliation(
    ctx: AppContext, p: Principal, period: str | None = None
) -> ReconciliationOut:
    env = p.environment_id
    which = parse_period(period)
    async with ctx.db.reader() as s:
        forwarding = await reporting_provider(ctx, s, env) is not None
        subs = (
            await s.execute(
                select(
                    Subscription.id,
                    Subscription.customer_id,
                    Subscription.plan_id,
                    Subscription.started_at,
                    Subscription.current_period_start,
                    Subscription.current_period_end,
                    Subscription.interval_months,
                    Subscription.billing_anchor_day,
                    Subscription.provider_subscription_id,
                ).where(Subscription.environment_id == env)
            )
        ).all()
        windows = {sub.id: _window(sub, which) for sub in subs}
        by_sub = {sub.id: sub for sub in subs}
        if not subs:
            return ReconciliationOut(
                period=which, forwarding=forwarding, items=[], totals=ReconciliationTotalsOut()
            )
        counters = (
            await s.execute(
                select(
                    UsageCounter.subscription_id,
                    UsageCounter.feature_id,
                    UsageCounter.window_start,
                    UsageCounter.used_q,
                    UsageCounter.overage_q,
                ).where(
                    UsageCounter.environment_id == env,
                    UsageCounter.window_start.in_(set(windows.values()) | {LIFETIME}),
                )
            )
        ).all()
        rows = [
            c
            for c in counters
            if c.subscription_id in windows
            and (c.window_start == windows[c.subscription_id] or c.window_start == LIFETIME)
        ]
        sent = case((MeterReport.status == "sent", MeterReport.to_q - MeterReport.from_q), else_=0)
        reports = (
            await s.execute(
                select(
                    MeterReport.subscription_id,
                    MeterReport.feature_id,
                    MeterReport.period_start,
                    func.sum(sent),
                )
                .where(MeterReport.environment_id == env)
                .group_by(
                    MeterReport.subscription_id, MeterReport.feature_id, MeterReport.period_start
                )
            )
        ).all()
        reported = {(r[0], r[1], r[2]): int(r[3] or 0) for r in reports}
        customer_ids = {by_sub[r.subscription_id].customer_id for r in rows}
        feature_ids = {r.feature_id for r in rows}
        customers = (
            dict(
                (
                    await s.execute(
                        select(Customer.id, Customer.reference_id).where(
                            Customer.id.in_(customer_ids)
                        )
                    )
                ).all()
            )
            if customer_ids
            else {}
        )
        features = (
            dict(
                (
                    await s.execute(
                        select(Feature.id, Feature.key).where(Feature.id.in_(feature_ids))
                    )
                ).all()
            )
            if feature_ids
            else {}
        )
        rules = (
            {
                (pid, fid): value
                for pid, fid, value in (
                    await s.execute(
                        select(
                            PlanFeature.plan_id, PlanFeature.feature_id, PlanFeature.value
                        ).where(
                            PlanFeature.environment_id == env,
                            PlanFeature.feature_id.in_(feature_ids),
                        )
                    )
                ).all()
            }
            if feature_ids
            else {}
        )
    items = []
    totals: dict[str, int] = defaultdict(int)
    for c in rows:
        sub = by_sub[c.subscription_id]
        lifetime = c.window_start == LIFETIME
        metered = is_forwarded_rule(rules.get((sub.plan_id, c.feature_id)))
        forwarded = (
            forwarding and metered and not lifetime and sub.provider_subscription_id is not None
        )
        rep = reported.get((c.subscription_id, c.feature_id, c.window_start), 0)
        billable = c.overage_q
        pending = max(billable - rep, 0) if forwarded else 0
        values = {
            "unitsAccepted": c.used_q,
            "unitsCoveredByCredits": c.used_q - c.overage_q,
            "unitsBillable": billable,
            "unitsReported": rep,
            "unitsPending": pending,
        }
        for k, v in values.items():
            totals[k] += v
        items.append(
            {
                "customerReferenceId": customers.get(sub.customer_id),
                "customerId": sub.customer_id,
                "subscriptionId": sub.id,
                "featureKey": features.get(c.feature_id),
                "featureId": c.feature_id,
                "periodStart": None if lifetime else c.window_start,
                "window": "lifetime" if lifetime else "period",
                "forwarded": forwarded,
                **{k: _units(v) for k, v in values.items()},
            }
        )
    items.sort(key=lambda i: (i["customerReferenceId"] or "", i["featureKey"] or ""))
    return ReconciliationOut.model_validate(
        {
            "period": which,
            "forwarding": forwarding,
            "items": items,
            "totals": {k: _units(v) for k, v in totals.items()},
        }
    )
