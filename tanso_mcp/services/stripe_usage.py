"""Forwarding overage to the payment provider's usage meters (Stripe Billing Meters).

Ingest never calls the provider: it only updates the usage counters. This reporter,
a pass of the job runner (after every job tick and every test-clock advance), reads
per (subscription, feature, period) the overage the counters hold — units neither
covered by credits nor beyond the limit — and sends what was not reported yet as one
meter event, so its cost follows the number of customers, not the number of events.

Only ``reset`` features priced on the subscription's plan are forwarded (their period
is the provider's billing period); ``accumulate`` features are not. Meter values are
whole units; a fraction waits until it adds up to one.

The base fee of a plan billed in arrears goes the same way: Stripe bills licensed
prices at the start of a period, so such a plan's base price is a metered price on the
base-fee meter, and each period of a subscription on it reports one unit there, as
soon as the period has begun (``feature_id`` :data:`BASE_FEE_ID`, one step ``0 → 1``:
once per subscription and period; only with a provider that invoices itself). Stripe
bills it with the period's usage when the period ends, at the price the subscription
item carries then.

Exactly once, per step of the chain ``0 → t1 → t2 …`` of reported totals:

1. claim: insert a ``pending`` row ``(from_q, to_q, identifier)`` and commit — the
   unique ``(subscription, feature, period, from_q)`` lets one process win;
2. call the provider (no transaction open) with the identifier as idempotency key;
3. record ``sent``.

A crash between 2 and 3 leaves the row ``pending``; once its claim lease expires any
process sends it again with the same identifier, which the provider recognises as
already recorded. A timeout or an unreachable provider marks it ``unknown``; a refusal
``rejected``; both are retried with back-off (same identifier) and catch up by
themselves when the provider is back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import (
    Customer,
    Environment,
    Feature,
    Plan,
    PlanFeature,
    Subscription,
    UsageCounter,
)
from ..db.scale import QTY_SCALE
from ..db.stripe_usage_models import MeterReport
from ..db.types import new_id
from ..domain.meter_reports import (
    CLAIM_LEASE,
    meter_identifier,
    meter_timestamp,
    reportable_total,
    retry_delay,
)
from ..domain.rules import ResetMode, parse_rule_value
from ..errors import TansoError
from ..plugin import (
    BASE_FEE_KEY,
    PROVIDER_INVOICING,
    USAGE_REPORTING,
    CustomerData,
    PaymentProvider,
    ProviderError,
    ProviderUnavailable,
    UsageReport,
)
from ..services.metering.windows import LIFETIME
from . import payments
from .stripe_sync import BASE_METER_SETTING

if TYPE_CHECKING:
    from ..bootstrap import AppContext
    from .jobs import JobRegistry

log = logging.getLogger("tanso_mcp.stripe_usage")

PASS = "usage.meter_reports"
BATCH = 500  # reports claimed or retried per environment and pass
CONCURRENCY = 8  # provider calls in flight per environment
RECORD_EVERY = 64  # reports sent between two records (one unit of work each)
BASE_FEE_ID = "base-fee"  # MeterReport.feature_id of a period's base fee (no feature)


@dataclass(frozen=True)
class ReportRun:
    claimed: int = 0
    sent: int = 0
    failed: int = 0


@dataclass(frozen=True)
class _Work:
    report_id: str
    identifier: str
    quantity_q: int
    period_start: datetime
    event_timestamp: datetime
    feature_key: str
    meter_id: str | None
    customer: CustomerData
    attempts: int


async def reporting_provider(
    ctx: AppContext, s: AsyncSession, env_id: str
) -> PaymentProvider | None:
    """The environment's provider when it forwards usage, else ``None``."""
    try:
        provider = await payments.provider_for(ctx, s, env_id)
    except TansoError:
        return None
    return provider if USAGE_REPORTING in provider.capabilities else None


# --------------------------------------------------------------------------- what to forward


class _Rules:
    """Per (plan, feature): is the feature metered with a per-period reset?"""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str], bool] = {}

    async def forwarded(self, s: AsyncSession, plan_id: str, feature_id: str) -> bool:
        key = (plan_id, feature_id)
        hit = self._memo.get(key)
        if hit is None:
            value = await s.scalar(
                select(PlanFeature.value).where(
                    PlanFeature.plan_id == plan_id, PlanFeature.feature_id == feature_id
                )
            )
            hit = self._memo[key] = is_forwarded_rule(value)
        return hit


def is_forwarded_rule(value: dict[str, Any] | None) -> bool:
    if not value:
        return False
    try:
        rule = parse_rule_value(value)
    except TansoError:
        return False
    return (
        rule is not None and rule.pricing is not None and rule.pricing.reset_mode == ResetMode.RESET
    )


async def _candidates(s: AsyncSession, env_id: str, limit: int) -> list[Any]:
    """Counters with at least one whole unit of overage beyond what was claimed. The
    claimed total of each counter is looked up through the unique index of the chain."""
    r = MeterReport.__table__.alias("r")
    reported = func.coalesce(
        select(func.max(r.c.to_q))
        .where(
            r.c.subscription_id == UsageCounter.subscription_id,
            r.c.feature_id == UsageCounter.feature_id,
            r.c.period_start == UsageCounter.window_start,
        )
        .scalar_subquery(),
        0,
    )
    q = (
        select(
            UsageCounter.subscription_id,
            UsageCounter.feature_id,
            UsageCounter.window_start,
            UsageCounter.overage_q,
            reported,
            Subscription.plan_id,
            Subscription.customer_id,
        )
        .join(Subscription, Subscription.id == UsageCounter.subscription_id)
        .where(
            UsageCounter.environment_id == env_id,
            UsageCounter.window_start != LIFETIME,
            UsageCounter.overage_q >= QTY_SCALE,
            Subscription.provider_subscription_id.is_not(None),
            UsageCounter.overage_q - reported >= QTY_SCALE,
        )
        .order_by(UsageCounter.modified_at)
        .limit(limit)
    )
    return list((await s.execute(q)).all())


async def _base_fee_candidates(s: AsyncSession, env_id: str, limit: int) -> list[Any]:
    """Live Stripe subscriptions on a plan with a base fee billed in arrears whose
    current period has no base-fee report yet."""
    if limit <= 0:
        return []
    reported = (
        select(MeterReport.id)
        .where(
            MeterReport.subscription_id == Subscription.id,
            MeterReport.feature_id == BASE_FEE_ID,
            MeterReport.period_start == Subscription.current_period_start,
        )
        .exists()
    )
    q = (
        select(Subscription.id, Subscription.customer_id, Subscription.current_period_start)
        .join(Plan, Plan.id == Subscription.plan_id)
        .where(
            Subscription.environment_id == env_id,
            Subscription.provider_subscription_id.is_not(None),
            Subscription.ended_at.is_(None),
            Plan.billing_timing == "IN_ARREARS",
            Plan.price_minor > 0,
            # the plan's base price in the provider is the base-fee meter's price
            Plan.provider_price_id.is_not(None),
            Plan.provider_price_version.like("IN_ARREARS:%"),
            ~reported,
        )
        .limit(limit)
    )
    return list((await s.execute(q)).all())


def _insert(dialect: str):
    return (postgresql if dialect == "postgresql" else sqlite).insert


async def claim(
    ctx: AppContext,
    env_id: str,
    env_now: datetime,
    wall: datetime,
    limit: int = BATCH,
    *,
    base_fees: bool = False,
) -> list[str]:
    """Step 1: pending rows for every (subscription, feature, period) with unreported
    overage; answers the ids this process claimed (a concurrent claimer gets none of
    the same steps)."""
    rules = _Rules()
    stamp = meter_timestamp(env_now, wall)
    rows: list[dict[str, Any]] = []
    async with ctx.db.reader() as s:
        # non-forwarded features (no price on the plan) are skipped here, so look wider
        for sid, fid, period, overage_q, reported_q, plan_id, cid in await _candidates(
            s, env_id, limit * 10
        ):
            if not await rules.forwarded(s, plan_id, fid):
                continue
            to_q = reportable_total(overage_q, QTY_SCALE)
            if to_q <= reported_q:
                continue
            if len(rows) >= limit:
                break
            rows.append(
                {
                    "id": new_id(),
                    "environment_id": env_id,
                    "subscription_id": sid,
                    "customer_id": cid,
                    "feature_id": fid,
                    "period_start": period,
                    "from_q": int(reported_q),
                    "to_q": to_q,
                    "identifier": meter_identifier(env_id, sid, fid, period, int(reported_q), to_q),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": wall + CLAIM_LEASE,
                    "event_timestamp": stamp,
                    "created_at": wall,
                }
            )
        room = max(limit - len(rows), 0) if base_fees else 0
        for sid, cid, period in await _base_fee_candidates(s, env_id, room):
            rows.append(
                {
                    "id": new_id(),
                    "environment_id": env_id,
                    "subscription_id": sid,
                    "customer_id": cid,
                    "feature_id": BASE_FEE_ID,
                    "period_start": period,
                    "from_q": 0,
                    "to_q": QTY_SCALE,
                    "identifier": meter_identifier(env_id, sid, BASE_FEE_ID, period, 0, QTY_SCALE),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": wall + CLAIM_LEASE,
                    # Stripe's period is real time: the unit is dated now, inside it
                    "event_timestamp": meter_timestamp(wall, wall),
                    "created_at": wall,
                }
            )
    if not rows:
        return []
    insert = _insert(ctx.db.dialect)
    async with ctx.db.unit_of_work() as s:
        stmt = insert(MeterReport).values(rows).on_conflict_do_nothing().returning(MeterReport.id)
        return list((await s.execute(stmt)).scalars())


async def _load(ctx: AppContext, where: Any, limit: int) -> list[_Work]:
    async with ctx.db.reader() as s:
        rows = (
            await s.execute(
                select(MeterReport, Feature.key, Feature.provider_meter_id, Customer)
                .outerjoin(Feature, Feature.id == MeterReport.feature_id)
                .join(Customer, Customer.id == MeterReport.customer_id)
                .where(where)
                .order_by(MeterReport.created_at)
                .limit(limit)
            )
        ).all()
        base_meter = None
        if any(r[0].feature_id == BASE_FEE_ID for r in rows):
            env = await s.get(Environment, rows[0][0].environment_id)
            base_meter = (env.settings or {}).get(BASE_METER_SETTING) if env else None
    out = []
    for report, feature_key, meter_id, customer in rows:
        if report.feature_id == BASE_FEE_ID:
            feature_key, meter_id = BASE_FEE_KEY, base_meter
        name = " ".join(p for p in (customer.first_name, customer.last_name) if p) or None
        out.append(
            _Work(
                report_id=report.id,
                identifier=report.identifier,
                quantity_q=report.to_q - report.from_q,
                period_start=report.period_start,
                event_timestamp=report.event_timestamp,
                feature_key=feature_key,
                meter_id=meter_id,
                customer=CustomerData(
                    customer_id=customer.id,
                    reference_id=customer.reference_id,
                    email=customer.email,
                    name=name,
                    external_id=customer.provider_customer_id,
                ),
                attempts=report.attempts,
            )
        )
    return out


@dataclass(frozen=True)
class _Outcome:
    report_id: str
    status: str  # sent | unknown | rejected
    stamp: datetime
    external_id: str | None = None
    error: str | None = None


async def _send(ctx: AppContext, provider: PaymentProvider, work: _Work) -> _Outcome:
    """Step 2 for one report (no transaction open)."""
    # the claimed timestamp, so a retry is the very same request; re-clamped only when a
    # long outage pushed it out of the provider's window
    stamp = meter_timestamp(work.event_timestamp, ctx.clocks.system_now())
    report = UsageReport(
        customer=work.customer,
        feature_key=work.feature_key,
        quantity=Decimal(work.quantity_q // QTY_SCALE),
        period_start=work.period_start,
        occurred_at=stamp,
        external_meter_id=work.meter_id,
    )
    try:
        if work.customer.external_id is None:
            raise ProviderError("the customer is not linked to the provider yet")
        ref = await provider.report_usage(report, idempotency_key=work.identifier)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # recorded and retried with the same identifier
        refused = isinstance(exc, ProviderError) and not isinstance(exc, ProviderUnavailable)
        if not refused:
            log.warning("meter report %s: outcome unknown (%s)", work.identifier, exc)
        return _Outcome(
            work.report_id,
            "rejected" if refused else "unknown",
            stamp,
            error=(str(exc) or type(exc).__name__)[:2000],
        )
    return _Outcome(work.report_id, "sent", stamp, ref.external_id if ref is not None else None)


async def record_outcomes(ctx: AppContext, outcomes: list[_Outcome]) -> None:
    """Step 3 for a group of reports, in one unit of work. A report already recorded as
    sent (by a concurrent process) is left as it is."""
    wall = ctx.clocks.system_now()
    async with ctx.db.unit_of_work() as s:
        attempts = dict(
            (
                await s.execute(
                    select(MeterReport.id, MeterReport.attempts).where(
                        MeterReport.id.in_([o.report_id for o in outcomes])
                    )
                )
            ).all()
        )
        for o in outcomes:
            n = attempts.get(o.report_id)
            if n is None:
                continue
            values: dict[str, Any] = {"status": o.status, "attempts": n + 1}
            if o.status == "sent":
                values.update(
                    sent_at=wall,
                    event_timestamp=o.stamp,
                    external_id=o.external_id,
                    last_error=None,
                )
            else:
                values.update(last_error=o.error, next_attempt_at=wall + retry_delay(n + 1))
            await s.execute(
                update(MeterReport)
                .where(MeterReport.id == o.report_id, MeterReport.status != "sent")
                .values(**values)
            )


async def report_overage(ctx: AppContext, env_id: str, now: datetime) -> ReportRun:
    """One pass for one environment: claim new steps, send them and every
    earlier step that is due again (failed, or claimed by a process that vanished)."""
    async with ctx.db.reader() as s:
        provider = await reporting_provider(ctx, s, env_id)
    if provider is None:
        return ReportRun()
    wall = ctx.clocks.system_now()
    # base fees in arrears go through a meter only where the provider invoices
    claimed = await claim(
        ctx, env_id, now, wall, base_fees=PROVIDER_INVOICING in provider.capabilities
    )
    work = await _load(ctx, MeterReport.id.in_(claimed), BATCH) if claimed else []
    work += await _load(
        ctx,
        and_(
            MeterReport.environment_id == env_id,
            MeterReport.status != "sent",
            MeterReport.next_attempt_at <= wall,
        ),
        BATCH,
    )
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(w: _Work) -> _Outcome:
        async with gate:
            return await _send(ctx, provider, w)

    sent = failed = 0
    for i in range(0, len(work), RECORD_EVERY):
        outcomes = await asyncio.gather(*(one(w) for w in work[i : i + RECORD_EVERY]))
        await record_outcomes(ctx, list(outcomes))
        ok = sum(o.status == "sent" for o in outcomes)
        sent, failed = sent + ok, failed + len(outcomes) - ok
    return ReportRun(claimed=len(claimed), sent=sent, failed=failed)


def register(registry: JobRegistry) -> None:
    async def meter_pass(ctx: AppContext, env_id: str, now: datetime) -> int:
        return (await report_overage(ctx, env_id, now)).sent

    registry.register_pass(PASS, meter_pass)
