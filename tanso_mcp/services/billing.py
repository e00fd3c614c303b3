"""Native billing: the subscription lifecycle.

Every function takes the caller's session, never commits, and returns an
:class:`Effects` record of what it did (invoices created, voided or paid, entitlements
granted or revoked, credits granted or clawed back, the subscription's status before and
after, the domain events to announce after the commit). The confirmAction previews run
the very same functions inside a transaction that is rolled back
(``services/billing_ops.py``), so a preview can never disagree with the real call.

Exactly-once under concurrent job runners: every state transition is a conditional
UPDATE that re-states the state it starts from (``WHERE current_period_start = :old``,
``WHERE status IN (…)``); invoices and credit grants are additionally backed by unique
indexes. A second runner finds nothing to do.

Billing decisions (documented in README "Billing rules"):

* a subscription starts at 00:00 UTC of the day it is created; its anchor day is that
  day of the month; periods end on the anchor day clamped to the month's length
  (Jan 31 → Feb 28 → Mar 31 → Apr 30…);
* UPGRADE is immediate only between plans with the same billing timing and interval.
  IN_ADVANCE→IN_ADVANCE: prorated ``ADJUSTMENT`` invoice ``round(r×new) − round(r×old)``
  (DUE; a negative total is a credit, recorded PAID). IN_ARREARS→IN_ARREARS: the open
  invoice of the period is re-priced by segments (used share of the old plan + remaining
  share of the new one). A change between billing timings or intervals — whatever its
  changeType — takes effect at the end of the current period, like a downgrade (one
  period cannot be billed both in advance and in arrears);
* a plan change needs an active subscription that is not past due and has no scheduled
  cancellation; the target must be ACTIVE (DRAFT/ARCHIVED refused), not the current
  plan, and in the same currency;
* IMMEDIATE cancellation refunds the unused share of what was actually paid for the
  current period (nothing when its invoice was not paid); cancelling a subscription that
  still waits for its first payment always ends it at once;
* paying an invoice never moves the billing period; the period's plan credits are granted
  when the invoice for the *current* period is paid;
* a subscription whose renewal was paused by a past-due invoice resumes on the period of
  its anchor schedule that contains the time it resumes (the periods it spent paused are
  not billed);
* an invoice whose amount is 0 when it becomes due is settled (PAID) at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.guards import among, in_environment
from ..db.models import (
    CreditPool,
    CreditPoolSubscription,
    Customer,
    Entitlement,
    Invoice,
    InvoiceItem,
    Plan,
    ScheduledChange,
    Subscription,
)
from ..db.scale import int_to_qty
from ..db.types import new_id
from ..domain.credits import plan_grant_key
from ..domain.money import from_minor
from ..domain.periods import add_months, is_past_grace, remaining_fraction, start_of_day
from ..domain.proration import cancellation_refund, upgrade_adjustment
from ..errors import Conflict, InvalidRequest, NotFound
from ..plugin.api import MULTIPLE_SUBSCRIPTIONS
from . import catalog, credits
from . import invoices as inv_svc
from . import usage as usage_seam
from .credits import insert_ignore
from .invoices import Line
from .plan_entitlements import grants
from .subscriptions import derive_status, past_due_ids

GRACE_DEFAULT = 3
MAX_GRACE = 365

# --------------------------------------------------------------------------- effects


@dataclass
class Effects:
    """What an operation did (or, in a preview, would do)."""

    action: str
    subscription_id: str | None = None
    status_before: str | None = None
    status_after: str | None = None
    effective_at: datetime | None = None
    plan_before: dict[str, Any] | None = None
    plan_after: dict[str, Any] | None = None
    invoices_created: list[dict[str, Any]] = field(default_factory=list)
    invoices_voided: list[dict[str, Any]] = field(default_factory=list)
    invoices_paid: list[dict[str, Any]] = field(default_factory=list)
    invoices_closed: list[dict[str, Any]] = field(default_factory=list)
    entitlements_granted: list[str] = field(default_factory=list)
    entitlements_revoked: list[str] = field(default_factory=list)
    credits_granted: dict[str, int] = field(default_factory=dict)
    credits_clawed_back: dict[str, int] = field(default_factory=dict)
    credits_expired: dict[str, int] = field(default_factory=dict)
    scheduled_change: dict[str, Any] | None = None
    cancelled_changes: int = 0
    notes: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    subscription: Subscription | None = None
    invoice: Invoice | None = None

    def add_credits(self, bucket: dict[str, int], amounts: dict[str, int]) -> None:
        for k, v in amounts.items():
            if v:
                bucket[k] = bucket.get(k, 0) + v

    def event(self, name: str, **payload: Any) -> None:
        self.events.append((name, payload))

    def to_json(self, *, with_ids: bool = True) -> dict[str, Any]:
        def strip(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if with_ids:
                return views
            out = []
            for v in views:
                v = {k: x for k, x in v.items() if k != "id"}
                if "items" in v:
                    v["items"] = [{k: x for k, x in it.items() if k != "id"} for it in v["items"]]
                out.append(v)
            return out

        created = strip(self.invoices_created)
        closed = strip(self.invoices_closed)
        charged = sum(
            (
                v["amount"]
                for v in created + closed
                if v["status"] in ("DUE", "PENDING") and v["amount"] > 0
            ),
            Decimal(0),
        )
        credited = sum(
            (-v["amount"] for v in created if v["amount"] < 0),
            Decimal(0),
        )
        out: dict[str, Any] = {
            "action": self.action,
            "subscriptionId": self.subscription_id,
            "statusBefore": self.status_before,
            "statusAfter": self.status_after,
            "effectiveAt": self.effective_at,
            "planBefore": self.plan_before,
            "planAfter": self.plan_after,
            "invoicesCreated": created,
            "invoicesVoided": strip(self.invoices_voided),
            "invoicesPaid": strip(self.invoices_paid),
            "invoicesClosed": closed,
            "amountToPay": charged,
            "amountCredited": credited,
            "entitlementsGranted": sorted(self.entitlements_granted),
            "entitlementsRevoked": sorted(self.entitlements_revoked),
            "creditsGranted": {k: int_to_qty(v) for k, v in self.credits_granted.items()},
            "creditsClawedBack": {k: int_to_qty(v) for k, v in self.credits_clawed_back.items()},
            "creditsExpired": {k: int_to_qty(v) for k, v in self.credits_expired.items()},
            "scheduledChange": self.scheduled_change,
            "cancelledScheduledChanges": self.cancelled_changes,
            "notes": self.notes,
        }
        if not with_ids and out["scheduledChange"]:
            out["scheduledChange"] = {
                k: v for k, v in out["scheduledChange"].items() if k not in ("id", "createdAt")
            }
        return out


def _plan_brief(p: Plan) -> dict[str, Any]:
    return {
        "id": p.id,
        "key": p.key,
        "name": p.name,
        "priceAmount": from_minor(p.price_minor, p.currency),
        "currency": p.currency,
        "intervalMonths": p.interval_months,
        "billingTiming": p.billing_timing,
    }


def _change_view(sc: ScheduledChange) -> dict[str, Any]:
    return {
        "id": sc.id,
        "type": sc.type,
        "status": sc.status,
        "fromPlanId": sc.from_plan_id,
        "toPlanId": sc.to_plan_id,
        "effectiveAt": sc.effective_at,
        "createdAt": sc.created_at,
    }


async def _record_invoice(s: AsyncSession, fx: Effects, inv: Invoice, bucket: str) -> None:
    """Describe an invoice this operation just created, closed, voided or paid: what
    is stored is its amount as of now (a new invoice is computed as of now, and every
    status change stores the current amount first), so no recomputation is needed."""
    items = (await inv_svc.items_of(s, [inv.id]))[inv.id]
    # the same invoice view as listCustomerInvoices, customer reference included
    ref = await s.scalar(select(Customer.reference_id).where(Customer.id == inv.customer_id))
    getattr(fx, bucket).append(
        inv_svc.invoice_view(inv, [inv_svc.ItemRow.of(it) for it in items], ref)
    )


# --------------------------------------------------------------------------- loading


async def load_subscription(
    s: AsyncSession, env: str, sub_id: str, field: str = "subscriptionId", *, lock: bool = False
) -> Subscription:
    """``lock``: hold the subscription row until the transaction ends (PostgreSQL
    ``FOR UPDATE``; SQLite's write transactions are serial anyway). Every billing write
    locks its subscription first, then touches invoices, then credit pools (in id order),
    then grants: one lock order for API calls and jobs alike."""
    q = (
        select(Subscription)
        .where(Subscription.environment_id == env, Subscription.id == sub_id)
        .execution_options(populate_existing=True)
    )
    if lock:
        q = q.with_for_update()
    sub = await s.scalar(q)
    if sub is None:
        raise NotFound(f"subscription {sub_id} not found", field=field)
    return sub


async def has_past_due(s: AsyncSession, sub_id: str) -> bool:
    return sub_id in await past_due_ids(s, [sub_id])


async def status_of(s: AsyncSession, sub: Subscription) -> str:
    return derive_status(sub, await has_past_due(s, sub.id))


async def _reload(s: AsyncSession, sub: Subscription) -> Subscription:
    await s.refresh(sub)
    return sub


async def _plan(s: AsyncSession, plan_id: str) -> Plan:
    plan = await s.get(Plan, plan_id)
    assert plan is not None
    return plan


async def pending_change(s: AsyncSession, sub_id: str) -> ScheduledChange | None:
    return await s.scalar(
        select(ScheduledChange)
        .where(ScheduledChange.subscription_id == sub_id, ScheduledChange.status == "PENDING")
        .execution_options(populate_existing=True)
    )


# --------------------------------------------------------------------------- entitlements


@dataclass
class EntitlementChanges:
    """How a subscription's entitlement records move to match its plan: features to
    grant, records to restore (revoked, or renamed feature), records to revoke."""

    grant: list[tuple[str, str]]  # (feature id, feature key)
    restore: list[tuple[Entitlement, str]]  # (record, feature key)
    revoke: list[Entitlement]


def entitlement_changes(
    plan_rules: list[tuple[Any, Any]], existing: list[Entitlement]
) -> EntitlementChanges:
    """Grant (or un-revoke) what the plan includes, revoke what it does not."""
    desired = {f.id: f.key for pf, f in plan_rules if grants(pf.is_enabled, f.is_enabled)}
    have = {e.feature_id: e for e in existing}
    out = EntitlementChanges([], [], [])
    for fid, key in desired.items():
        e = have.get(fid)
        if e is None:
            out.grant.append((fid, key))
        elif e.revoked_at is not None or e.feature_key != key:
            out.restore.append((e, key))
    for fid, e in have.items():
        if fid not in desired and e.revoked_at is None:
            out.revoke.append(e)
    return out


async def reconcile_entitlements(
    s: AsyncSession, env: str, sub: Subscription, plan: Plan, now: datetime, fx: Effects
) -> None:
    """Make the subscription's entitlement records match the plan's enabled features."""
    rules = (await catalog.plan_rules(s, [plan.id]))[plan.id]
    existing = (
        await s.scalars(
            select(Entitlement)
            .where(Entitlement.subscription_id == sub.id)
            .execution_options(populate_existing=True)
        )
    ).all()
    changes = entitlement_changes(rules, list(existing))
    for fid, key in changes.grant:
        inserted = await insert_ignore(
            s,
            Entitlement.__table__,
            {
                "id": new_id(),
                "environment_id": env,
                "customer_id": sub.customer_id,
                "subscription_id": sub.id,
                "feature_id": fid,
                "feature_key": key,
                "granted_at": now,
                "revoked_at": None,
            },
        )
        if inserted:
            fx.entitlements_granted.append(key)
    for e, key in changes.restore:
        if e.revoked_at is not None:
            fx.entitlements_granted.append(key)
        await s.execute(
            update(Entitlement)
            .where(Entitlement.id == e.id)
            .values(revoked_at=None, granted_at=now, feature_key=key)
            .execution_options(synchronize_session=False)
        )
    for e in changes.revoke:
        await s.execute(
            update(Entitlement)
            .where(Entitlement.id == e.id, Entitlement.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        fx.entitlements_revoked.append(e.feature_key)


async def revoke_entitlements(
    s: AsyncSession, sub: Subscription, now: datetime, fx: Effects
) -> None:
    keys = (
        await s.scalars(
            select(Entitlement.feature_key).where(
                Entitlement.subscription_id == sub.id, Entitlement.revoked_at.is_(None)
            )
        )
    ).all()
    if keys:
        await s.execute(
            update(Entitlement)
            .where(Entitlement.subscription_id == sub.id, Entitlement.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        fx.entitlements_revoked.extend(keys)


# --------------------------------------------------------------------------- credits


async def provision_period_credits(
    s: AsyncSession,
    env: str,
    sub: Subscription,
    plan: Plan,
    period_start: datetime,
    now: datetime,
    fx: Effects,
) -> None:
    """Grant the plan's credit allocations for the period starting at ``period_start``:
    once per (subscription, denomination, period) through the grant idempotency key."""
    todo = []
    for alloc, model in await catalog.plan_allocations(s, plan.id):
        if alloc.credit_amount_q > 0:
            todo.append((alloc, model, await _plan_pool(s, env, sub, plan, alloc, model, now)))
    await _lock_in_order(s, env, [pool for _, _, pool in todo])
    for alloc, model, pool in todo:
        spec = plan_grant_spec(sub.id, plan, alloc, model, period_start, now)
        g = await credits.grant(
            s,
            env,
            pool,
            alloc.credit_amount_q,
            "PLAN_INCLUDED",
            now,
            idempotency_key=spec["idempotency_key"],
            expires_at=spec["expires_at"],
            subscription_id=sub.id,
            period_start=period_start,
            description=spec["description"],
        )
        if g is not None:
            fx.add_credits(fx.credits_granted, {model.denomination: alloc.credit_amount_q})


def plan_grant_spec(
    sub_id: str, plan: Plan, alloc: Any, model: Any, period_start: datetime, now: datetime
) -> dict[str, Any]:
    """Idempotency key, expiry and description of a period's plan credit grant."""
    return {
        "idempotency_key": plan_grant_key(sub_id, model.denomination, period_start),
        "expires_at": add_months(now, alloc.grant_expires_months)
        if alloc.grant_expires_months
        else None,
        "description": f"{plan.name}: plan credits for the period from "
        f"{period_start.date().isoformat()}",
    }


def plan_pool_settings(alloc: Any, model: Any) -> dict[str, Any]:
    """What a plan allocation restates on its denomination's pool."""
    return {
        "hard_limit": alloc.hard_limit if alloc.hard_limit is not None else model.hard_limit,
        "rollover_policy": model.rollover_policy,
        "rollover_cap_q": model.rollover_cap_q,
    }


async def _lock_in_order(s: AsyncSession, env: str, pools: list[CreditPool]) -> None:
    """Lock several pools in id order (the order every multi-pool writer uses, metering
    included), so concurrent writers never wait on each other in a cycle."""
    for pool_id in sorted({p.id for p in pools}):
        await credits.lock_pool(s, env, pool_id)


async def _plan_pool(s, env, sub, plan, alloc, model, now) -> CreditPool:
    pool = await credits.ensure_pool(
        s,
        env,
        sub.customer_id,
        model.denomination,
        now,
        currency=plan.currency,
        **plan_pool_settings(alloc, model),
    )
    await credits.link_subscription(s, env, pool.id, sub.id)
    return pool


async def _rollover(
    s: AsyncSession, env: str, sub: Subscription, new_start: datetime, now: datetime, fx: Effects
) -> None:
    pools = (
        await s.scalars(
            select(CreditPool)
            .join(CreditPoolSubscription, CreditPoolSubscription.pool_id == CreditPool.id)
            .where(CreditPoolSubscription.subscription_id == sub.id)
            .order_by(CreditPool.id)  # lock order: by id, like every multi-pool writer
        )
    ).all()
    for pool in pools:
        expired = await credits.apply_rollover(s, env, pool, sub.id, new_start, now)
        if expired:
            fx.add_credits(fx.credits_expired, {pool.denomination: expired})
        # a link's draw limit caps what the subscription draws per billing period: the
        # drawn total counts the current period's draws and starts again here, in the
        # transaction that starts the new period (the pool is locked: same lock order as
        # the metering writer, pool then link)
        await s.execute(
            update(CreditPoolSubscription)
            .where(
                CreditPoolSubscription.pool_id == pool.id,
                CreditPoolSubscription.subscription_id == sub.id,
                CreditPoolSubscription.total_drawn_q != 0,
            )
            .values(total_drawn_q=0)
            .execution_options(synchronize_session=False)
        )


async def _period_paid(s: AsyncSession, sub: Subscription, plan: Plan) -> bool:
    """Has the current period been paid for (IN_ADVANCE), or does it not need to be?"""
    if plan.billing_timing == "IN_ARREARS":
        return True
    base = await _period_base_invoice(s, sub)
    return base is not None and base.status == "PAID"


async def _period_base_invoice(s: AsyncSession, sub: Subscription) -> Invoice | None:
    return await s.scalar(
        select(Invoice)
        .where(
            Invoice.subscription_id == sub.id,
            Invoice.type.in_(("IN_ADVANCE_INITIAL", "REGULAR")),
            Invoice.period_start == sub.current_period_start,
        )
        .order_by(Invoice.created_at)
        .limit(1)
        .execution_options(populate_existing=True)
    )


async def _period_pricing(
    s: AsyncSession, sub_id: str, period_start: datetime, plan: Plan
) -> dict[str, Any] | None:
    """The rules ``plan`` had when the subscription's period starting at ``period_start``
    began, as recorded on that period's invoice (None: not recorded — price with the
    rules as they stand)."""
    meta = await s.scalar(
        select(Invoice.metadata_)
        .where(
            Invoice.subscription_id == sub_id,
            Invoice.type.in_(("IN_ADVANCE_INITIAL", "REGULAR")),
            Invoice.period_start == period_start,
        )
        .order_by(Invoice.created_at)
        .limit(1)
    )
    recorded = (meta or {}).get("periodPricing") or {}
    return recorded.get("rules") if recorded.get("planId") == plan.id else None


async def _pricing_record(s: AsyncSession, plan: Plan) -> dict[str, Any]:
    return {"planId": plan.id, "rules": await usage_seam.pricing_snapshot(s, plan.id)}


# --------------------------------------------------------------------------- subscribe


def parse_grace(value: Any, field: str = "gracePeriod") -> int:
    if value is None:
        return GRACE_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise InvalidRequest(f"{field} must be a whole number of days", field=field)
    try:
        d = Decimal(str(value).strip())
    except Exception:
        raise InvalidRequest(f"{field} must be a whole number of days", field=field) from None
    if not d.is_finite() or d != d.to_integral_value() or not 0 <= d <= MAX_GRACE:
        raise InvalidRequest(
            f"{field} must be a whole number of days from 0 to {MAX_GRACE}", field=field
        )
    return int(d)


async def create_subscription(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    customer: Customer,
    plan: Plan,
    grace_days: int,
    capabilities: frozenset[str],
    plan_field: str = "planId",
    metadata: dict[str, Any] | None = None,
) -> Effects:
    fx = Effects(action="SUBSCRIBE")
    if plan.status != "ACTIVE":
        raise InvalidRequest(
            f"only ACTIVE plans accept subscriptions (plan {plan.key} is {plan.status})",
            field=plan_field,
        )
    if MULTIPLE_SUBSCRIPTIONS not in capabilities:
        live = await s.scalar(
            select(Subscription.id).where(
                Subscription.customer_id == customer.id, Subscription.ended_at.is_(None)
            )
        )
        if live is not None:
            raise InvalidRequest(
                "this customer already has a subscription; the environment's payment "
                "provider allows only one",
                field="customerReferenceId",
            )
    start = start_of_day(now)
    end = add_months(start, plan.interval_months, start.day)
    free = plan.price_minor == 0
    arrears = plan.billing_timing == "IN_ARREARS"
    sub = Subscription(
        id=new_id(),
        environment_id=env,
        customer_id=customer.id,
        plan_id=plan.id,
        is_active=arrears or free,
        interval_months=plan.interval_months,
        grace_period_days=grace_days,
        billing_anchor_day=start.day,
        started_at=start,
        current_period_start=start,
        current_period_end=end,
        metadata_=dict(metadata or {}),
        created_at=now,
        modified_at=now,
    )
    s.add(sub)
    await s.flush()
    fx.subscription_id = sub.id
    fx.subscription = sub
    fx.status_before = None
    fx.plan_after = _plan_brief(plan)
    lines = [inv_svc.base_line(plan)] if not free else []
    if arrears:
        inv = await inv_svc.create_invoice(
            s,
            env,
            now,
            customer_id=customer.id,
            subscription_id=sub.id,
            type="REGULAR",
            status="PENDING",
            currency=plan.currency,
            due_date=end,
            period_start=start,
            period_end=end,
            lines=lines,
            metadata={
                "usageWindows": [
                    inv_svc.window(plan, start, end, await usage_seam.pricing_snapshot(s, plan.id))
                ],
                "segments": [inv_svc.segment(plan, start, end)],
            },
        )
        await reconcile_entitlements(s, env, sub, plan, now, fx)
        await provision_period_credits(s, env, sub, plan, start, now, fx)
    else:
        inv = await inv_svc.create_invoice(
            s,
            env,
            now,
            customer_id=customer.id,
            subscription_id=sub.id,
            type="IN_ADVANCE_INITIAL",
            status="DUE",
            currency=plan.currency,
            due_date=start,
            period_start=start,
            period_end=end,
            lines=lines,
            metadata={"periodPricing": await _pricing_record(s, plan)},
        )
        assert inv is not None
        if inv.amount_minor == 0:
            await _settle(s, env, inv, now, fx)
    assert inv is not None
    fx.invoice = inv
    await _record_invoice(s, fx, inv, "invoices_created")
    sub = await _reload(s, sub)
    fx.status_after = await status_of(s, sub)
    fx.event("subscription.created", subscriptionId=sub.id, planId=plan.id)
    fx.event("invoice.created", invoiceId=inv.id, type=inv.type, status=inv.status)
    if sub.is_active:
        fx.event("subscription.activated", subscriptionId=sub.id)
    return fx


# --------------------------------------------------------------------------- paying


async def mark_invoice_paid(s: AsyncSession, env: str, invoice_id: str, now: datetime) -> Effects:
    """Record a payment (native mode): the invoice is PAID at its amount as of now, and
    the subscription feels it (see ``_settle``)."""
    inv = await inv_svc.get_invoice(s, env, invoice_id)
    inv_svc.check_payable(inv)
    fx = Effects(action="MARK_PAID", subscription_id=inv.subscription_id)
    sub = None
    if inv.subscription_id:
        sub = await load_subscription(s, env, inv.subscription_id, lock=True)
        fx.status_before = await status_of(s, sub)
        fx.plan_before = _plan_brief(await _plan(s, sub.plan_id))
        inv = await inv_svc.get_invoice(s, env, invoice_id)  # as of the lock
        inv_svc.check_payable(inv)
    await _settle(s, env, inv, now, fx)
    if sub is not None:
        sub = await _reload(s, sub)
        fx.status_after = await status_of(s, sub)
    return fx


async def _settle(s: AsyncSession, env: str, inv: Invoice, now: datetime, fx: Effects) -> None:
    """An invoice becomes PAID, and the subscription feels it: activation (initial
    invoice), restoration from past due, the current period's plan credits."""
    # what is recorded as paid is the amount as of now, stored before the status moves
    await inv_svc.refresh(s, inv, now)
    if not await inv_svc.set_status(s, inv, "PAID", now, only_from=inv_svc.UNPAID):
        fresh = await inv_svc.get_invoice(s, env, inv.id)
        inv_svc.check_payable(fresh)  # raises: someone else paid or voided it
        raise InvalidRequest(f"invoice {inv.id} cannot be paid now", field="invoiceId")
    await _record_invoice(s, fx, inv, "invoices_paid")
    fx.event(
        "invoice.paid",
        invoiceId=inv.id,
        type=inv.type,
        amount=from_minor(inv.amount_minor, inv.currency),
    )
    if inv.subscription_id is None:
        return
    sub = await load_subscription(s, env, inv.subscription_id)
    if sub.ended_at is not None:
        return
    plan = await _plan(s, sub.plan_id)
    was_past_due = fx.status_before == "past_due"
    if inv.type == "IN_ADVANCE_INITIAL" and not sub.is_active:
        res = await s.execute(
            update(Subscription)
            .where(
                Subscription.id == sub.id,
                Subscription.is_active.is_(False),
                Subscription.ended_at.is_(None),
            )
            .values(is_active=True, modified_at=now)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount:
            sub = await _reload(s, sub)
            fx.event("subscription.activated", subscriptionId=sub.id)
    if not sub.is_active or await has_past_due(s, sub.id):
        return
    await reconcile_entitlements(s, env, sub, plan, now, fx)
    if (
        inv.type in ("IN_ADVANCE_INITIAL", "REGULAR")
        and inv.period_start == sub.current_period_start
    ):
        await provision_period_credits(s, env, sub, plan, sub.current_period_start, now, fx)
    if was_past_due:
        fx.event("subscription.restored", subscriptionId=sub.id)


# --------------------------------------------------------------------------- plan change


async def _cancel_pending_changes(s: AsyncSession, sub_id: str, now: datetime, fx: Effects) -> None:
    res = await s.execute(
        update(ScheduledChange)
        .where(ScheduledChange.subscription_id == sub_id, ScheduledChange.status == "PENDING")
        .values(status="CANCELLED", fulfilled_at=now)
        .execution_options(synchronize_session=False)
    )
    fx.cancelled_changes += res.rowcount or 0


async def change_plan(
    s: AsyncSession,
    env: str,
    now: datetime,
    sub_id: str,
    to_plan_id: str,
    change_type: str,
    *,
    plan_field: str = "changeToPlanId",
) -> Effects:
    change_type = (change_type or "").upper()
    if change_type not in ("UPGRADE", "DOWNGRADE"):
        raise InvalidRequest("changeType must be UPGRADE or DOWNGRADE", field="changeType")
    sub = await load_subscription(s, env, sub_id, lock=True)
    target = await catalog.plan_by_id(s, env, to_plan_id, field=plan_field)
    current = await _plan(s, sub.plan_id)
    status = await status_of(s, sub)
    fx = Effects(
        action=change_type,
        subscription_id=sub.id,
        status_before=status,
        plan_before=_plan_brief(current),
        plan_after=_plan_brief(target),
    )
    if status == "cancelled":
        raise InvalidRequest("the subscription is cancelled", field="subscriptionId")
    if status == "pending_payment":
        raise InvalidRequest(
            "the subscription is waiting for its first payment: pay or cancel it first",
            field="subscriptionId",
        )
    if status == "past_due":
        raise InvalidRequest(
            "the subscription is past due: pay its open invoice before changing plans",
            field="subscriptionId",
        )
    if status == "cancel_scheduled":
        raise InvalidRequest(
            "the subscription has a scheduled cancellation: undo it first",
            field="subscriptionId",
        )
    if target.status != "ACTIVE":
        raise InvalidRequest(
            f"only ACTIVE plans accept subscriptions (plan {target.key} is {target.status})",
            field=plan_field,
        )
    if target.id == current.id:
        raise InvalidRequest("the subscription is already on this plan", field=plan_field)
    if target.currency != current.currency:
        raise InvalidRequest(
            f"plans must share a currency ({current.currency} → {target.currency})",
            field=plan_field,
        )
    same_shape = (
        target.billing_timing == current.billing_timing
        and target.interval_months == current.interval_months
    )
    if change_type == "DOWNGRADE" or not same_shape:
        if change_type == "UPGRADE":
            fx.notes.append(
                "the plans differ in billing timing or interval, so the change takes "
                "effect at the end of the current period instead of now"
            )
        await _cancel_pending_changes(s, sub.id, now, fx)
        sc = ScheduledChange(
            id=new_id(),
            environment_id=env,
            subscription_id=sub.id,
            type=change_type,
            from_plan_id=current.id,
            to_plan_id=target.id,
            status="PENDING",
            effective_at=sub.current_period_end,
            created_at=now,
        )
        s.add(sc)
        await s.flush()
        fx.scheduled_change = _change_view(sc)
        fx.effective_at = sub.current_period_end
        fx.status_after = status
        fx.event(
            "subscription.plan_change_scheduled",
            subscriptionId=sub.id,
            toPlanId=target.id,
            effectiveAt=sub.current_period_end,
        )
        return fx
    return await _upgrade_now(s, env, now, sub, current, target, fx)


async def _upgrade_now(
    s: AsyncSession,
    env: str,
    now: datetime,
    sub: Subscription,
    current: Plan,
    target: Plan,
    fx: Effects,
) -> Effects:
    await _cancel_pending_changes(s, sub.id, now, fx)
    ratio = remaining_fraction(now, sub.current_period_start, sub.current_period_end)
    adj_invoice: Invoice | None = None
    if current.billing_timing == "IN_ADVANCE":
        adj = upgrade_adjustment(
            ratio,
            from_minor(current.price_minor, current.currency),
            from_minor(target.price_minor, target.currency),
            target.currency,
        )
        if adj.old_credit_line or adj.new_charge_line:
            adj_invoice = await inv_svc.create_invoice(
                s,
                env,
                now,
                customer_id=sub.customer_id,
                subscription_id=sub.id,
                type="ADJUSTMENT",
                status="DUE" if adj.total > 0 else "PAID",
                currency=target.currency,
                due_date=start_of_day(now),
                period_start=now,
                period_end=sub.current_period_end,
                lines=[
                    Line(
                        "adjustment",
                        f"Credit for unused time on {current.name}",
                        adj.old_credit_line,
                    ),
                    Line("adjustment", f"Remaining time on {target.name}", adj.new_charge_line),
                ],
            )
    else:
        adj_invoice = await _reprice_arrears_period(s, env, now, sub, current, target, ratio)
    if adj_invoice is not None:
        await _record_invoice(s, fx, adj_invoice, "invoices_created")
        fx.event(
            "invoice.created",
            invoiceId=adj_invoice.id,
            type=adj_invoice.type,
            status=adj_invoice.status,
        )
    await grant_upgrade_credits(s, env, sub, current, target, now, fx)
    await s.execute(
        update(Subscription)
        .where(
            Subscription.id == sub.id,
            Subscription.plan_id == current.id,
            Subscription.current_period_start == sub.current_period_start,
        )
        .values(plan_id=target.id, modified_at=now)
        .execution_options(synchronize_session=False)
    )
    sub = await _reload(s, sub)
    if sub.plan_id != target.id:
        raise Conflict("the subscription changed concurrently; retry", field="subscriptionId")
    await reconcile_entitlements(s, env, sub, target, now, fx)
    sc = ScheduledChange(
        id=new_id(),
        environment_id=env,
        subscription_id=sub.id,
        type="UPGRADE",
        from_plan_id=current.id,
        to_plan_id=target.id,
        status="COMPLETED",
        effective_at=now,
        fulfilled_at=now,
        adjustment_invoice_id=adj_invoice.id if adj_invoice is not None else None,
        created_at=now,
    )
    s.add(sc)
    await s.flush()
    fx.scheduled_change = _change_view(sc)
    fx.effective_at = now
    fx.status_after = await status_of(s, sub)
    fx.event(
        "subscription.plan_changed",
        subscriptionId=sub.id,
        fromPlanId=current.id,
        toPlanId=target.id,
    )
    return fx


async def grant_upgrade_credits(
    s: AsyncSession,
    env: str,
    sub: Subscription,
    current: Plan,
    target: Plan,
    now: datetime,
    fx: Effects,
) -> None:
    """A plan change within a period grants the credit delta: per denomination, the
    target's allocation minus the current one when positive (existing credits are
    kept), and only once the period itself is paid for."""
    if await _period_paid(s, sub, current):
        old = {
            m.denomination: a.credit_amount_q
            for a, m in await catalog.plan_allocations(s, current.id)
        }
        change_id = new_id()
        todo = []
        for alloc, model in await catalog.plan_allocations(s, target.id):
            delta = alloc.credit_amount_q - old.get(model.denomination, 0)
            if delta > 0:
                pool = await _plan_pool(s, env, sub, target, alloc, model, now)
                todo.append((alloc, model, pool, delta))
        await _lock_in_order(s, env, [t[2] for t in todo])
        for alloc, model, pool, delta in todo:
            key = (
                plan_grant_key(sub.id, model.denomination, sub.current_period_start)
                if model.denomination not in old
                else f"plan_upgrade_{sub.id}_{model.denomination}_{change_id}"
            )
            g = await credits.grant(
                s,
                env,
                pool,
                delta,
                "PLAN_INCLUDED",
                now,
                idempotency_key=key,
                expires_at=add_months(now, alloc.grant_expires_months)
                if alloc.grant_expires_months
                else None,
                subscription_id=sub.id,
                period_start=sub.current_period_start,
                description=f"upgrade to {target.name}: additional plan credits",
            )
            if g is not None:
                fx.add_credits(fx.credits_granted, {model.denomination: delta})


async def _reprice_arrears_period(
    s: AsyncSession,
    env: str,
    now: datetime,
    sub: Subscription,
    current: Plan,
    target: Plan,
    ratio: Any,
) -> Invoice | None:
    """IN_ARREARS upgrade: split the open period invoice's plan segments at ``now`` so
    the period bills the old plan for the time used and the new plan for the rest, and
    price the period's usage with the new plan. Without an open period invoice (it was
    paid early), the difference goes on an ADJUSTMENT invoice due at period end."""
    inv = await s.scalar(
        select(Invoice)
        .where(
            Invoice.subscription_id == sub.id,
            Invoice.type == "REGULAR",
            Invoice.period_start == sub.current_period_start,
            Invoice.status.in_(inv_svc.OPEN),
            Invoice.provider_invoice_id.is_(None),  # a provider's invoice is its own
        )
        .execution_options(populate_existing=True)
    )
    if inv is None:
        adj = upgrade_adjustment(
            ratio,
            from_minor(current.price_minor, current.currency),
            from_minor(target.price_minor, target.currency),
            target.currency,
        )
        if not (adj.old_credit_line or adj.new_charge_line):
            return None
        return await inv_svc.create_invoice(
            s,
            env,
            now,
            customer_id=sub.customer_id,
            subscription_id=sub.id,
            type="ADJUSTMENT",
            status="PENDING" if adj.total > 0 else "PAID",
            currency=target.currency,
            due_date=sub.current_period_end,
            period_start=now,
            period_end=sub.current_period_end,
            lines=[
                Line(
                    "adjustment", f"Credit for unused time on {current.name}", adj.old_credit_line
                ),
                Line("adjustment", f"Remaining time on {target.name}", adj.new_charge_line),
            ],
        )
    meta = dict(inv.metadata_ or {})
    segs = list(
        meta.get("segments") or [inv_svc.segment(current, inv.period_start, inv.period_end)]
    )
    last = dict(segs[-1])
    last["to"] = now
    segs[-1] = last
    segs.append(inv_svc.segment(target, now, inv.period_end))
    meta["segments"] = [
        {"planId": x["planId"], "from": _iso(x["from"]), "to": _iso(x["to"])} for x in segs
    ]
    meta["usageWindows"] = [
        inv_svc.window(
            target,
            inv.period_start,
            inv.period_end,
            await usage_seam.pricing_snapshot(s, target.id),
        )
    ]
    await s.execute(
        update(Invoice)
        .where(Invoice.id == inv.id)
        .values(metadata=meta)
        .execution_options(synchronize_session=False)
    )
    await s.refresh(inv)
    await inv_svc.refresh(s, inv, now)
    return None


def _iso(v: Any) -> str:
    return v.isoformat() if isinstance(v, datetime) else str(v)


async def undo_scheduled_change(s: AsyncSession, env: str, sub_id: str, now: datetime) -> Effects:
    sub = await load_subscription(s, env, sub_id, lock=True)
    status = await status_of(s, sub)
    fx = Effects(action="UNDO_PLAN_CHANGE", subscription_id=sub.id, status_before=status)
    pending = await pending_change(s, sub.id)
    if pending is not None:
        fx.scheduled_change = _change_view(pending)
    await _cancel_pending_changes(s, sub.id, now, fx)
    if fx.cancelled_changes:
        fx.event("subscription.plan_change_cancelled", subscriptionId=sub.id)
    else:
        fx.notes.append("no scheduled plan change to cancel")
    fx.status_after = status
    return fx


# --------------------------------------------------------------------------- cancellation


async def _prepaid_price_minor(s: AsyncSession, sub: Subscription) -> int:
    """Price (minor units) actually paid for the current period: the base lines of its
    invoice if PAID, raised by every PAID upgrade adjustment of the period."""
    base = await _period_base_invoice(s, sub)
    if base is None or base.status != "PAID":
        return 0
    price = int(
        await s.scalar(
            select(func.coalesce(func.sum(InvoiceItem.charge_minor), 0)).where(
                InvoiceItem.invoice_id == base.id, InvoiceItem.kind == "base"
            )
        )
        or 0
    )
    upgrades = (
        await s.scalars(
            select(ScheduledChange)
            .where(
                ScheduledChange.subscription_id == sub.id,
                ScheduledChange.type == "UPGRADE",
                ScheduledChange.status == "COMPLETED",
                ScheduledChange.fulfilled_at >= sub.current_period_start,
            )
            .order_by(ScheduledChange.fulfilled_at, ScheduledChange.created_at)
        )
    ).all()
    for ch in upgrades:
        if ch.adjustment_invoice_id is not None:
            adj = await s.get(Invoice, ch.adjustment_invoice_id)
            if adj is not None and adj.status != "PAID":
                break
        price = (await _plan(s, ch.to_plan_id)).price_minor
    return price


def _ending_by(part: dict[str, Any], end: datetime) -> dict[str, Any]:
    """A segment or usage window cut at ``end`` (its other keys kept)."""
    return {
        **part,
        "from": _iso(part["from"]),
        "to": _iso(min(inv_svc.dt(part["to"]), end)),
    }


async def _close_arrears_period(s: AsyncSession, inv: Invoice, now: datetime) -> None:
    """An IN_ARREARS period ends at an immediate cancellation: its open invoice keeps the
    plan segments and usage up to ``now`` only (base price prorated to the time used,
    shares of the full period, rounded like an upgrade), ends its period at ``now`` and
    is DUE at once, with the amount as of now."""
    meta = dict(inv.metadata_ or {})
    full_end = meta.get("fullPeriodEnd") or _iso(inv.period_end)
    segs = meta.get("segments") or []
    meta["segments"] = [_ending_by(x, now) for x in segs if inv_svc.dt(x["from"]) < now]
    meta["usageWindows"] = [
        _ending_by(w, now) for w in meta.get("usageWindows") or [] if inv_svc.dt(w["from"]) < now
    ]
    meta["fullPeriodEnd"] = full_end
    meta["closedAt"] = _iso(now)
    await s.execute(
        update(Invoice)
        .where(Invoice.id == inv.id, Invoice.status.in_(inv_svc.OPEN))
        .values(metadata=meta, period_end=now, due_date=start_of_day(now), modified_at=now)
        .execution_options(synchronize_session=False)
    )
    await s.refresh(inv)
    await inv_svc.refresh(s, inv, now)
    if inv.status == "PENDING":
        await inv_svc.set_status(s, inv, "DUE", now, only_from=("PENDING",))


async def _final_usage_invoice(
    s: AsyncSession,
    env: str,
    sub: Subscription,
    plan: Plan,
    period: tuple[datetime, datetime],
    carried: list[dict[str, Any]],
    now: datetime,
    fx: Effects,
) -> None:
    """IN_ADVANCE immediate cancellation: usage is billed in arrears, so what was used
    in the running period up to ``now`` — and the previous period's usage, when the
    invoice carrying it was just voided unpaid — goes on a final usage invoice, DUE now,
    keyed like the END_OF_PERIOD one on the start of the period that will never begin.
    ``period``: the running period as it was before the cancellation."""
    start, end = period
    pricing = await _period_pricing(s, sub.id, start, plan)
    windows = [*carried, inv_svc.window(plan, start, now, pricing)]
    await _bill_final_usage(s, env, sub, plan, windows, end, now, fx)


async def _bill_final_usage(
    s: AsyncSession,
    env: str,
    sub: Subscription,
    plan: Plan,
    windows: list[dict[str, Any]],
    key_at: datetime,
    now: datetime,
    fx: Effects,
) -> None:
    """The usage of ``windows`` on a final REGULAR invoice, DUE now, keyed on ``key_at``
    (the start of the period that will never begin); nothing when there is no usage."""
    lines = await inv_svc.compute_usage_lines(s, sub, windows)
    if not lines:
        return
    inv = await inv_svc.create_invoice(
        s,
        env,
        now,
        customer_id=sub.customer_id,
        subscription_id=sub.id,
        type="REGULAR",
        status="DUE",
        currency=plan.currency,
        due_date=start_of_day(now),
        period_start=key_at,
        period_end=key_at,
        lines=lines,
        metadata={"usageWindows": windows, "final": True},
    )
    if inv is not None:
        await _record_invoice(s, fx, inv, "invoices_created")
        fx.event("invoice.created", invoiceId=inv.id, type="REGULAR", status="DUE")


async def cancel_subscription(
    s: AsyncSession, env: str, sub_id: str, mode: str, now: datetime
) -> Effects:
    mode = (mode or "END_OF_PERIOD").upper()
    if mode == "IMMEDIATELY":
        mode = "IMMEDIATE"
    if mode not in ("IMMEDIATE", "END_OF_PERIOD"):
        raise InvalidRequest("cancelMode must be END_OF_PERIOD or IMMEDIATE", field="cancelMode")
    sub = await load_subscription(s, env, sub_id, lock=True)
    status = await status_of(s, sub)
    plan = await _plan(s, sub.plan_id)
    fx = Effects(
        action=f"CANCEL_{mode}",
        subscription_id=sub.id,
        status_before=status,
        plan_before=_plan_brief(plan),
    )
    if status == "cancelled":
        raise InvalidRequest("Subscription is already cancelled", field="subscriptionId")
    if mode == "END_OF_PERIOD" and status == "pending_payment":
        mode = "IMMEDIATE"
        fx.action = "CANCEL_IMMEDIATE"
        fx.notes.append(
            "the subscription was never paid for, so it ends now rather than at period end"
        )
    if mode == "END_OF_PERIOD":
        if sub.cancel_mode == "END_OF_PERIOD":
            fx.notes.append("a cancellation at the end of the period was already scheduled")
        else:
            await s.execute(
                update(Subscription)
                .where(Subscription.id == sub.id, Subscription.ended_at.is_(None))
                .values(
                    cancel_mode="END_OF_PERIOD",
                    cancel_effective_at=sub.current_period_end,
                    cancelled_at=now,
                    modified_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            fx.event(
                "subscription.cancel_scheduled",
                subscriptionId=sub.id,
                effectiveAt=sub.current_period_end,
            )
        sub = await _reload(s, sub)
        fx.effective_at = sub.cancel_effective_at
        fx.status_after = await status_of(s, sub)
        return fx
    # IMMEDIATE
    period_start, period_end = sub.current_period_start, sub.current_period_end
    ratio = remaining_fraction(now, sub.current_period_start, sub.current_period_end)
    refund = Decimal(0)
    if plan.billing_timing == "IN_ADVANCE":
        paid = await _prepaid_price_minor(s, sub)
        refund = cancellation_refund(ratio, from_minor(paid, plan.currency), plan.currency)
    res = await s.execute(
        update(Subscription)
        .where(Subscription.id == sub.id, Subscription.ended_at.is_(None))
        .values(
            is_active=False,
            cancel_mode="IMMEDIATE",
            cancel_effective_at=now,
            cancelled_at=now,
            ended_at=now,
            current_period_end=now,
            modified_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if not res.rowcount:
        raise InvalidRequest("Subscription is already cancelled", field="subscriptionId")
    open_invoices = (
        await s.scalars(
            select(Invoice)
            .where(Invoice.subscription_id == sub.id, Invoice.status.in_(inv_svc.UNPAID))
            .order_by(Invoice.created_at)
            .execution_options(populate_existing=True)
        )
    ).all()
    carried: list[dict[str, Any]] = []  # usage windows of the invoices voided here
    for inv in open_invoices:
        if inv.period_end is not None and inv.period_end <= now:
            continue  # a debt for a period that is over stays payable
        if (
            plan.billing_timing == "IN_ARREARS"
            and inv.type == "REGULAR"
            and inv.period_start == sub.current_period_start
            and inv.status in inv_svc.OPEN
        ):
            await _close_arrears_period(s, inv, now)
            await _record_invoice(s, fx, inv, "invoices_closed")
            fx.event(
                "invoice.due", invoiceId=inv.id, amount=from_minor(inv.amount_minor, inv.currency)
            )
            continue
        if await inv_svc.set_status(s, inv, "VOID", now, only_from=inv_svc.UNPAID):
            await _record_invoice(s, fx, inv, "invoices_voided")
            fx.event("invoice.voided", invoiceId=inv.id)
            carried += (inv.metadata_ or {}).get("usageWindows") or []
    if plan.billing_timing == "IN_ADVANCE":
        await _final_usage_invoice(s, env, sub, plan, (period_start, period_end), carried, now, fx)
    if refund:
        credit = await inv_svc.create_invoice(
            s,
            env,
            now,
            customer_id=sub.customer_id,
            subscription_id=sub.id,
            type="CREDIT",
            status="PAID",
            currency=plan.currency,
            due_date=start_of_day(now),
            period_start=now,
            period_end=period_end,
            lines=[Line("credit", f"Unused time on {plan.name}", refund)],
        )
        if credit is not None:
            await _record_invoice(s, fx, credit, "invoices_created")
            fx.event("invoice.created", invoiceId=credit.id, type="CREDIT", status="PAID")
    await revoke_entitlements(s, sub, now, fx)
    fx.add_credits(
        fx.credits_clawed_back, await credits.claw_back_subscription(s, env, sub.id, now)
    )
    await _cancel_pending_changes(s, sub.id, now, fx)
    sub = await _reload(s, sub)
    fx.effective_at = now
    fx.status_after = await status_of(s, sub)
    fx.event("subscription.cancelled", subscriptionId=sub.id, mode="IMMEDIATE")
    return fx


async def undo_cancellation(s: AsyncSession, env: str, sub_id: str, now: datetime) -> Effects:
    sub = await load_subscription(s, env, sub_id, lock=True)
    status = await status_of(s, sub)
    fx = Effects(action="UNDO_CANCELLATION", subscription_id=sub.id, status_before=status)
    if status == "cancelled":
        raise InvalidRequest("Subscription is already cancelled", field="subscriptionId")
    if sub.cancel_mode != "END_OF_PERIOD":
        fx.notes.append("no scheduled cancellation to undo")
        fx.status_after = status
        return fx
    res = await s.execute(
        update(Subscription)
        .where(
            Subscription.id == sub.id,
            Subscription.ended_at.is_(None),
            Subscription.cancel_mode == "END_OF_PERIOD",
        )
        .values(cancel_mode=None, cancel_effective_at=None, cancelled_at=None, modified_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount:
        fx.event("subscription.cancellation_undone", subscriptionId=sub.id)
    sub = await _reload(s, sub)
    fx.status_after = await status_of(s, sub)
    return fx


# --------------------------------------------------------------------------- jobs


def next_period(
    old_end: datetime, interval: int, anchor_day: int, now: datetime
) -> tuple[datetime, datetime]:
    """The period after one that ended at ``old_end``; when resuming late, the period
    of the anchor schedule containing ``now``."""
    start = old_end
    end = add_months(start, interval, anchor_day)
    while end <= now:
        start, end = end, add_months(end, interval, anchor_day)
    return start, end


async def renew(s: AsyncSession, env: str, sub_id: str, now: datetime) -> Effects | None:
    """Period rollover, exactly once per period: the claim is a
    conditional UPDATE of the period; a concurrent runner matches no row."""
    sub = await load_subscription(s, env, sub_id, lock=True)
    if (
        not sub.is_active
        or sub.ended_at is not None
        or sub.cancel_mode is not None
        or sub.current_period_end > now
        or await has_past_due(s, sub.id)
    ):
        return None
    old_start, old_end = sub.current_period_start, sub.current_period_end
    old_plan = await _plan(s, sub.plan_id)
    change = await pending_change(s, sub.id)
    new_plan = old_plan
    if change is not None and change.effective_at <= old_end:
        new_plan = await _plan(s, change.to_plan_id)
    new_start, new_end = next_period(old_end, new_plan.interval_months, sub.billing_anchor_day, now)
    res = await s.execute(
        update(Subscription)
        .where(
            Subscription.id == sub.id,
            Subscription.current_period_start == old_start,
            Subscription.plan_id == old_plan.id,
            Subscription.is_active.is_(True),
            Subscription.ended_at.is_(None),
            Subscription.cancel_mode.is_(None),
        )
        .values(
            current_period_start=new_start,
            current_period_end=new_end,
            plan_id=new_plan.id,
            interval_months=new_plan.interval_months,
            modified_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if not res.rowcount:
        return None  # another runner renewed it
    sub = await _reload(s, sub)
    fx = Effects(
        action="RENEW",
        subscription_id=sub.id,
        status_before="active",
        plan_before=_plan_brief(old_plan),
        plan_after=_plan_brief(new_plan),
        effective_at=new_start,
    )
    if change is not None and new_plan.id != old_plan.id:
        await s.execute(
            update(ScheduledChange)
            .where(ScheduledChange.id == change.id, ScheduledChange.status == "PENDING")
            .values(status="COMPLETED", fulfilled_at=now)
            .execution_options(synchronize_session=False)
        )
        fx.scheduled_change = _change_view(change) | {"status": "COMPLETED"}
        fx.event(
            "subscription.plan_changed",
            subscriptionId=sub.id,
            fromPlanId=old_plan.id,
            toPlanId=new_plan.id,
        )
    # usage of the period that just closed, when its plan billed in advance
    windows: list[dict[str, Any]] = []
    if old_plan.billing_timing == "IN_ADVANCE":
        old_pricing = await _period_pricing(s, sub.id, old_start, old_plan)
        windows.append(inv_svc.window(old_plan, old_start, old_end, old_pricing))
    await _rollover(s, env, sub, new_start, now, fx)
    lines = [inv_svc.base_line(new_plan)] if new_plan.price_minor else []
    meta: dict[str, Any] = {}
    new_pricing = await _pricing_record(s, new_plan)
    if new_plan.billing_timing == "IN_ARREARS":
        windows.append(inv_svc.window(new_plan, new_start, new_end, new_pricing["rules"]))
        meta["segments"] = [inv_svc.segment(new_plan, new_start, new_end)]
        status, due = "PENDING", new_end
    else:
        meta["periodPricing"] = new_pricing
        status, due = "DUE", max(new_start, start_of_day(now))
    meta["usageWindows"] = windows
    lines += await inv_svc.compute_usage_lines(s, sub, windows)
    inv = await inv_svc.create_invoice(
        s,
        env,
        now,
        customer_id=sub.customer_id,
        subscription_id=sub.id,
        type="REGULAR",
        status=status,
        currency=new_plan.currency,
        due_date=due,
        period_start=new_start,
        period_end=new_end,
        lines=lines,
        metadata=meta,
    )
    if inv is not None:
        await _record_invoice(s, fx, inv, "invoices_created")
        fx.event("invoice.created", invoiceId=inv.id, type="REGULAR", status=inv.status)
        fx.invoice = inv
    await reconcile_entitlements(s, env, sub, new_plan, now, fx)
    if new_plan.billing_timing == "IN_ARREARS":
        await provision_period_credits(s, env, sub, new_plan, new_start, now, fx)
    elif inv is not None and inv.status == "DUE" and inv.amount_minor == 0:
        fx.status_before = "active"
        await _settle(s, env, inv, now, fx)
    fx.status_after = await status_of(s, sub)
    fx.event(
        "subscription.renewed", subscriptionId=sub.id, periodStart=new_start, periodEnd=new_end
    )
    return fx


async def end_at_period_end(
    s: AsyncSession, env: str, sub_id: str, now: datetime
) -> Effects | None:
    """An END_OF_PERIOD cancellation takes effect."""
    sub = await load_subscription(s, env, sub_id, lock=True)
    if (
        sub.cancel_mode != "END_OF_PERIOD"
        or sub.ended_at is not None
        or sub.cancel_effective_at is None
        or sub.cancel_effective_at > now
    ):
        return None
    status = await status_of(s, sub)
    res = await s.execute(
        update(Subscription)
        .where(
            Subscription.id == sub.id,
            Subscription.ended_at.is_(None),
            Subscription.cancel_mode == "END_OF_PERIOD",
        )
        .values(is_active=False, ended_at=sub.cancel_effective_at, modified_at=now)
        .execution_options(synchronize_session=False)
    )
    if not res.rowcount:
        return None
    plan = await _plan(s, sub.plan_id)
    fx = Effects(
        action="CANCEL_END_OF_PERIOD",
        subscription_id=sub.id,
        status_before=status,
        plan_before=_plan_brief(plan),
        effective_at=sub.cancel_effective_at,
    )
    sub = await _reload(s, sub)
    if plan.billing_timing == "IN_ADVANCE":
        # the last period's usage still has to be billed: on an invoice keyed on the
        # start of the period that will never begin
        pricing = await _period_pricing(s, sub.id, sub.current_period_start, plan)
        windows = [inv_svc.window(plan, sub.current_period_start, sub.current_period_end, pricing)]
        await _bill_final_usage(s, env, sub, plan, windows, sub.current_period_end, now, fx)
    await revoke_entitlements(s, sub, now, fx)
    fx.add_credits(
        fx.credits_clawed_back, await credits.claw_back_subscription(s, env, sub.id, now)
    )
    await _cancel_pending_changes(s, sub.id, now, fx)
    fx.status_after = await status_of(s, sub)
    fx.event("subscription.cancelled", subscriptionId=sub.id, mode="END_OF_PERIOD")
    return fx


async def invoice_due(s: AsyncSession, env: str, invoice_id: str, now: datetime) -> Effects | None:
    """PENDING → DUE at the due date (recomputed first; a zero invoice is settled)."""
    inv = await inv_svc.get_invoice(s, env, invoice_id)
    if inv.status != "PENDING" or inv.due_date is None or inv.due_date > now:
        return None
    sub = (
        await load_subscription(s, env, inv.subscription_id, lock=True)
        if inv.subscription_id
        else None
    )
    await inv_svc.refresh(s, inv, now)
    if not await inv_svc.set_status(s, inv, "DUE", now, only_from=("PENDING",)):
        return None
    fx = Effects(action="INVOICE_DUE", subscription_id=inv.subscription_id)
    fx.event("invoice.due", invoiceId=inv.id, amount=from_minor(inv.amount_minor, inv.currency))
    if inv.amount_minor == 0:
        if sub is not None:
            fx.status_before = await status_of(s, sub)
        await _settle(s, env, inv, now, fx)
    return fx


async def invoice_due_many(
    s: AsyncSession, env: str, invoice_ids: list[str], now: datetime
) -> list[Effects]:
    """:func:`invoice_due` for a batch whose subscriptions the caller holds (the job
    claim): the invoices are recomputed and moved to DUE with a few set statements; a
    zero invoice is then settled one at a time, as :func:`invoice_due` settles it."""
    invs = [
        inv
        for inv in (
            await s.scalars(
                select(Invoice)
                .where(
                    in_environment(Invoice.environment_id, env), among(s, Invoice.id, invoice_ids)
                )
                .execution_options(populate_existing=True)
            )
        ).all()
        if inv.status == "PENDING" and inv.due_date is not None and inv.due_date <= now
    ]
    await inv_svc.refresh_many(s, env, invs, now)
    await inv_svc.set_status_many(s, invs, "DUE", now, only_from="PENDING")
    out = []
    for inv in invs:
        fx = Effects(action="INVOICE_DUE", subscription_id=inv.subscription_id)
        fx.event("invoice.due", invoiceId=inv.id, amount=from_minor(inv.amount_minor, inv.currency))
        if inv.amount_minor == 0:
            if inv.subscription_id is not None:
                sub = await load_subscription(s, env, inv.subscription_id, lock=True)
                fx.status_before = await status_of(s, sub)
            await _settle(s, env, inv, now, fx)
        out.append(fx)
    return out


async def refresh_invoice_job(s: AsyncSession, env: str, invoice_id: str, now: datetime) -> None:
    """Store an open invoice's amount as of now (usage was recorded since it was last
    stored). Locks its subscription first, like every billing write."""
    inv = await inv_svc.get_invoice(s, env, invoice_id)
    if inv.status not in inv_svc.OPEN or inv.subscription_id is None:
        return
    await load_subscription(s, env, inv.subscription_id, lock=True)
    inv = await inv_svc.get_invoice(s, env, invoice_id)  # as of the lock
    await inv_svc.refresh(s, inv, now, touch=True)


def past_due_at(due_date: datetime, grace_days: int) -> datetime:
    """First instant at which a DUE invoice is past due (due Mar 1, grace 3
    → Mar 5 00:00)."""
    from datetime import timedelta

    return start_of_day(due_date) + timedelta(days=grace_days + 1)


async def invoice_past_due(
    s: AsyncSession, env: str, invoice_id: str, now: datetime
) -> Effects | None:
    """DUE → PAST_DUE after due date + grace: entitlements revoked, renewal paused."""
    inv = await inv_svc.get_invoice(s, env, invoice_id)
    if inv.status != "DUE" or inv.due_date is None or inv.subscription_id is None:
        return None
    sub = await load_subscription(s, env, inv.subscription_id, lock=True)
    if not is_past_grace(inv.due_date, sub.grace_period_days, now):
        return None
    status = await status_of(s, sub)
    await inv_svc.refresh(s, inv, now)
    if not await inv_svc.set_status(s, inv, "PAST_DUE", now, only_from=("DUE",)):
        return None
    fx = Effects(action="INVOICE_PAST_DUE", subscription_id=sub.id, status_before=status)
    fx.event("invoice.past_due", invoiceId=inv.id)
    await revoke_entitlements(s, sub, now, fx)
    fx.status_after = await status_of(s, sub)
    if status != "past_due" and fx.status_after == "past_due":
        fx.event("subscription.past_due", subscriptionId=sub.id, invoiceId=inv.id)
    return fx


async def invoice_past_due_many(
    s: AsyncSession, env: str, invoice_ids: list[str], now: datetime
) -> list[Effects]:
    """:func:`invoice_past_due` for a batch whose subscriptions the caller holds (the
    job claim), in the order given, with a few set statements."""
    invs = (
        await s.scalars(
            select(Invoice)
            .where(in_environment(Invoice.environment_id, env), among(s, Invoice.id, invoice_ids))
            .execution_options(populate_existing=True)
        )
    ).all()
    order = {iid: n for n, iid in enumerate(invoice_ids)}
    invs = sorted(
        (i for i in invs if i.status == "DUE" and i.due_date is not None and i.subscription_id),
        key=lambda i: order[i.id],
    )
    subs = {
        sub.id: sub
        for sub in await s.scalars(
            select(Subscription)
            .where(among(s, Subscription.id, {i.subscription_id for i in invs}))
            .execution_options(populate_existing=True)
        )
    }
    invs = [
        i for i in invs if is_past_grace(i.due_date, subs[i.subscription_id].grace_period_days, now)
    ]
    if not invs:
        return []
    paused = await past_due_ids(s, sorted({i.subscription_id for i in invs if i.subscription_id}))
    await inv_svc.refresh_many(s, env, invs, now)
    await inv_svc.set_status_many(s, invs, "PAST_DUE", now, only_from="DUE")
    live: dict[str, list[str]] = {}
    for sid, key in await s.execute(
        select(Entitlement.subscription_id, Entitlement.feature_key).where(
            among(s, Entitlement.subscription_id, list({i.subscription_id for i in invs})),
            Entitlement.revoked_at.is_(None),
        )
    ):
        live.setdefault(sid, []).append(key)
    if live:
        await s.execute(
            update(Entitlement)
            .where(
                among(s, Entitlement.subscription_id, list(live)), Entitlement.revoked_at.is_(None)
            )
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
    out = []
    for inv in invs:
        sub = subs[inv.subscription_id]
        status = derive_status(sub, sub.id in paused)
        fx = Effects(action="INVOICE_PAST_DUE", subscription_id=sub.id, status_before=status)
        fx.event("invoice.past_due", invoiceId=inv.id)
        fx.entitlements_revoked.extend(live.pop(sub.id, []))
        paused.add(sub.id)
        fx.status_after = derive_status(sub, True)
        if status != "past_due" and fx.status_after == "past_due":
            fx.event("subscription.past_due", subscriptionId=sub.id, invoiceId=inv.id)
        out.append(fx)
    return out


async def expire_grant_job(
    s: AsyncSession, env: str, grant_id: str, now: datetime
) -> Effects | None:
    from ..db.models import CreditGrant

    g = await s.get(CreditGrant, grant_id)
    if g is None or g.environment_id != env or g.expires_at is None or g.expires_at > now:
        return None
    taken = await credits.expire_grant(s, env, grant_id, now)
    if not taken:
        return None
    fx = Effects(action="CREDITS_EXPIRED", subscription_id=g.subscription_id)
    pool = await s.get(CreditPool, g.pool_id)
    fx.add_credits(fx.credits_expired, {pool.denomination: taken})
    fx.event("credits.expired", poolId=g.pool_id, grantId=g.id, amount=int_to_qty(taken))
    return fx


async def expire_grants_many(
    s: AsyncSession, env: str, grant_ids: list[str], now: datetime
) -> list[Effects]:
    """:func:`expire_grant_job` for a batch whose pools the caller holds (the job claim)."""
    out = []
    for g, pool, taken in await credits.expire_many(s, env, grant_ids, now):
        fx = Effects(action="CREDITS_EXPIRED", subscription_id=g.subscription_id)
        fx.add_credits(fx.credits_expired, {pool.denomination: taken})
        fx.event("credits.expired", poolId=g.pool_id, grantId=g.id, amount=int_to_qty(taken))
        out.append(fx)
    return out
