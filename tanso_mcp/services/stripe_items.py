"""Which prices a Stripe subscription bills, and from when (Stripe Integration mode).

Stripe bills a licensed price at the start of each period (in advance) and a metered
price at its end (in arrears), always at the price the item carries when it invoices.
So that a change meant "from the next period" bills as native billing does:

* the licensed base price is set at once, with no proration: the period already paid
  is kept, the next renewal bills the new price. A scheduled plan change (same
  interval) puts the next plan's base price in place when it is scheduled; a plan
  whose base price was edited gets the new price before the next renewal;
* metered prices (usage, and the base fee of a plan billed in arrears) change only
  once a new period has begun: the closing period's usage is billed at the prices it
  was used under. A next plan billed in arrears puts its base-fee price in place early
  only when the current plan has none (nothing is reported to that meter before its
  first period begins);
* the engine keeps the current plan, its entitlements and credits until the period
  ends (``stripe_jobs`` applies the scheduled change at the boundary).

``Subscription.provider_items`` records what was last set in Stripe; a subscription
whose record differs from what it should bill is updated (idempotency key derived
from ``provider_ops``), then recorded.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Subscription
from ..plugin.api import InvoicingProvider, MeteredPrice, PlanData, ProviderError

if TYPE_CHECKING:
    from ..bootstrap import AppContext


def in_arrears_base(plan: PlanData) -> bool:
    """A base fee billed at the end of each period, through the base-fee meter."""
    return plan.billing_timing == "IN_ARREARS" and bool(plan.price_minor)


def _metered_of(plan: PlanData) -> list[list[str | None]]:
    out: list[list[str | None]] = [
        [m.external_price_id, m.external_meter_id] for m in plan.metered if m.external_price_id
    ]
    if in_arrears_base(plan) and plan.external_price_id:
        out.append([plan.external_price_id, plan.external_base_meter_id])
    return out


def full(plan: PlanData, period_start: datetime) -> dict[str, Any]:
    """Every price of ``plan``, as after a change that applies now."""
    licensed = (
        [] if in_arrears_base(plan) or not plan.external_price_id else [plan.external_price_id]
    )
    return {"licensed": licensed, "metered": _metered_of(plan), "period": period_start.isoformat()}


def wanted(
    current: PlanData,
    target: PlanData | None,
    recorded: dict[str, Any] | None,
    period_start: datetime,
) -> dict[str, Any]:
    """What the subscription should bill now: ``current`` is its plan, ``target`` the
    plan a scheduled change moves it to at the period end (None: none)."""
    period = period_start.isoformat()
    if recorded is None or recorded.get("period") != period:
        metered = _metered_of(current)  # a new period: usage prices follow the plan
    else:
        metered = [list(x) for x in recorded.get("metered") or []]
    licensed = full(current, period_start)["licensed"]
    if target is not None and target.interval_months == current.interval_months:
        if not in_arrears_base(target):
            licensed = [target.external_price_id] if target.external_price_id else []
        elif not in_arrears_base(current):
            licensed = []
            metered = [*metered, [target.external_price_id, target.external_base_meter_id]]
    return {"licensed": licensed, "metered": metered, "period": period}


def as_plan(current: PlanData, doc: dict[str, Any]) -> PlanData:
    """``doc`` as the plan data the provider's ``change_plan`` takes (it makes the
    subscription bill exactly these prices)."""
    licensed = doc.get("licensed") or []
    return PlanData(
        plan_id=current.plan_id,
        key=current.key,
        name=current.name,
        price=current.price,
        currency=current.currency,
        interval_months=current.interval_months,
        billing_timing="IN_ADVANCE",
        external_product_id=current.external_product_id,
        external_price_id=licensed[0] if licensed else None,
        metered=tuple(
            MeteredPrice(
                feature_id="",
                feature_key="",
                feature_name="",
                external_price_id=p,
                external_meter_id=m,
            )
            for p, m in doc.get("metered") or []
        ),
    )


def same_prices(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    if a is None:
        return False
    return sorted(a.get("licensed") or []) == sorted(b["licensed"]) and sorted(
        map(tuple, a.get("metered") or [])
    ) == sorted(map(tuple, b["metered"]))


async def record(s: AsyncSession, sub_id: str, doc: dict[str, Any], *, bump: bool) -> None:
    values: dict[str, Any] = {"provider_items": doc}
    if bump:
        values["provider_ops"] = Subscription.provider_ops + 1
    await s.execute(
        update(Subscription)
        .where(Subscription.id == sub_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def align(
    ctx: AppContext,
    provider: InvoicingProvider,
    env: str,
    sub: Subscription,
    current: PlanData,
    target: PlanData | None,
) -> dict[str, Any] | None:
    """Update the Stripe subscription's items to what it should bill now, when they
    differ from the record; answers the new record (None: nothing to change). Raises
    ``ProviderError``; the caller records the answer in its own unit of work."""
    from .stripe_billing import _state_key, _subscription_data

    doc = wanted(current, target, sub.provider_items, sub.current_period_start)
    if sub.provider_items is None and target is None:
        # a subscription from before this record (or imported): its items are taken as
        # they are, never rewritten on a guess (an imported one may bill other prices)
        return doc
    if same_prices(sub.provider_items, doc):
        return None if (sub.provider_items or {}).get("period") == doc["period"] else doc
    if not sub.provider_subscription_id:
        raise ProviderError("the subscription is not linked to Stripe", code="no_subscription")
    async with ctx.db.reader() as s:
        sdata = await _subscription_data(s, env, sub)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    await provider.change_plan(
        sdata,
        as_plan(current, doc),
        prorate=False,
        idempotency_key=_state_key("items", sub, digest),
    )
    return doc
