"""Stripe Integration mode: what Stripe bills when prices and plans change, against the
fake Stripe. Stripe prices are immutable and Stripe bills a licensed price at the start
of a period and a metered one at its end, at the price the item carries then:

* an edited price is a new Stripe price; subscriptions bill it from their next period
  (the base price before the renewal, usage prices once the new period has begun);
* a scheduled downgrade is billed by Stripe's renewal (its base price is put in place,
  without proration, when it is scheduled; withdrawing it puts the old one back), while
  the engine keeps the current plan until the period ends;
* an IN_ARREARS plan's base fee is billed at the end of each period (one unit per
  period on the base-fee meter), never at its start.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from tanso_mcp.db.models import Plan, PlanFeature, Subscription
from tanso_mcp.db.stripe_usage_models import MeterReport
from tanso_mcp.services import stripe_usage
from tanso_mcp.services.jobs import run_due
from tests.factories import make_plan
from tests.mcp_helpers import ok
from tests.stripe_helpers import StripeApp, stripe_app

pytestmark = pytest.mark.anyio


def usage_rule(price: str) -> str:
    return json.dumps(
        {"pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": price}}
    )


async def _checkout(app: StripeApp, ref: str, plan_id: str) -> tuple[str, str]:
    """A paid in-advance subscription through Checkout: (engine id, Stripe id)."""
    await app.data("POST", "/customers", 201, json={"customerReferenceId": ref})
    out = await app.data(
        "POST", "/subscriptions", 201, json={"customerReferenceId": ref, "planId": plan_id}
    )
    await app.fake.complete_checkout(out["checkoutSessionId"])
    await app.settle()
    return await _ids(app, ref)


async def _direct(app: StripeApp, ref: str, plan_id: str) -> tuple[str, str]:
    await app.data("POST", "/customers", 201, json={"customerReferenceId": ref})
    await app.data(
        "POST", "/subscriptions", 201, json={"customerReferenceId": ref, "planId": plan_id}
    )
    await app.settle()
    return await _ids(app, ref)


async def _ids(app: StripeApp, ref: str) -> tuple[str, str]:
    customer = await app.data("GET", f"/customers/{ref}")
    async with app.ctx.db.reader() as s:
        sub = await s.scalar(select(Subscription).where(Subscription.customer_id == customer["id"]))
    assert sub is not None and sub.provider_subscription_id
    return sub.id, sub.provider_subscription_id


async def _items(stripe_client, stripe_sub_id: str) -> dict[str, dict]:
    """The Stripe subscription's prices: {"licensed"|"metered": [price, …]}."""
    sub = await stripe_client.v1.subscriptions.retrieve_async(stripe_sub_id)
    out: dict[str, list] = {"licensed": [], "metered": []}
    for item in sub["items"].data:
        price = item.price
        out[price.recurring.usage_type].append(price)
    return out


async def _stripe_invoices(stripe_client, stripe_sub_id: str) -> list:
    got = await stripe_client.v1.invoices.list_async(params={"subscription": stripe_sub_id})
    # Stripe lists newest first, the later of two created in the same second first
    return list(reversed(got.data))


async def test_an_edited_price_is_a_new_stripe_price_billed_from_the_next_period(
    db_url, stripe_fake, stripe_client
):
    async with stripe_app(db_url, stripe_fake) as app:
        await app.connect()
        pro = await make_plan(
            app.ctx, app.env, key="pro", price="20.00", features={"calls": usage_rule("0.02")}
        )
        sub_id, stripe_sub = await _checkout(app, "p1", pro["plan_id"])
        items = await _items(stripe_client, stripe_sub)
        [base0], [usage0] = items["licensed"], items["metered"]
        assert (base0.unit_amount, usage0.unit_amount_decimal) == (2000, Decimal(2))

        # the usage price is edited: a new Stripe price (0.05), the old one archived;
        # the running period's usage stays at the old price
        async with app.mcp() as mcp:
            await ok(
                mcp,
                "adminUpdateFeatureRule",
                {
                    "planId": pro["plan_id"],
                    "featureId": pro["feature_ids"]["calls"],
                    "valueJson": usage_rule("0.05"),
                },
            )
        # and the base price (locked on ACTIVE plans through the API; the rule is the
        # same for any change of terms): a new Stripe price too
        async with app.ctx.db.unit_of_work() as s:
            await s.execute(update(Plan).where(Plan.id == pro["plan_id"]).values(price_minor=3000))
        await run_due(app.ctx, app.env)
        async with app.ctx.db.reader() as s:
            plan = await s.get(Plan, pro["plan_id"])
            rule = await s.scalar(select(PlanFeature).where(PlanFeature.plan_id == plan.id))
        assert plan.provider_price_id not in (None, base0.id)
        assert rule.provider_price_id not in (None, usage0.id)
        base1 = await stripe_client.v1.prices.retrieve_async(plan.provider_price_id)
        usage1 = await stripe_client.v1.prices.retrieve_async(rule.provider_price_id)
        assert (base1.unit_amount, base1.active) == (3000, True)
        assert (usage1.unit_amount_decimal, usage1.recurring.meter) == (
            Decimal(5),
            usage0.recurring.meter,
        )
        for old in (base0.id, usage0.id):
            assert (await stripe_client.v1.prices.retrieve_async(old)).active is False
        items = await _items(stripe_client, stripe_sub)
        assert [p.id for p in items["licensed"]] == [base1.id]  # billed from the renewal
        assert [p.id for p in items["metered"]] == [usage0.id]  # this period's usage
        assert len(await _stripe_invoices(stripe_client, stripe_sub)) == 1  # no proration
        await run_due(app.ctx, app.env)  # nothing more to change
        assert [p.id for p in (await _items(stripe_client, stripe_sub))["metered"]] == [usage0.id]

        # the renewal bills the new base price; once the new period has begun, its usage
        # is billed at the new usage price
        renewal = await stripe_fake.end_period(stripe_sub)
        assert renewal["amount_paid"] == 3000
        await app.settle()
        await run_due(app.ctx, app.env)
        items = await _items(stripe_client, stripe_sub)
        assert [p.id for p in items["licensed"]] == [base1.id]
        assert [p.id for p in items["metered"]] == [usage1.id]
        invoices = await app.data("GET", "/billing/invoices/p1")
        assert sorted(Decimal(str(i["amount"])) for i in invoices) == [
            Decimal("20.00"),
            Decimal("30.00"),
        ]
        # a new subscription starts on the new prices
        _, stripe_sub2 = await _checkout(app, "p2", pro["plan_id"])
        items = await _items(stripe_client, stripe_sub2)
        assert [p.id for p in items["licensed"] + items["metered"]] == [base1.id, usage1.id]

        # edited back to the first terms within Stripe's idempotency window: a new
        # active price again, never the archived first one
        async with app.mcp() as mcp:
            await ok(
                mcp,
                "adminUpdateFeatureRule",
                {
                    "planId": pro["plan_id"],
                    "featureId": pro["feature_ids"]["calls"],
                    "valueJson": usage_rule("0.02"),
                },
            )
        await run_due(app.ctx, app.env)
        async with app.ctx.db.reader() as s:
            rule = await s.scalar(select(PlanFeature).where(PlanFeature.id == rule.id))
        assert rule.provider_price_id not in (usage0.id, usage1.id)
        usage2 = await stripe_client.v1.prices.retrieve_async(rule.provider_price_id)
        assert (usage2.unit_amount_decimal, usage2.active) == (Decimal(2), True)
        assert sub_id


async def test_a_scheduled_downgrade_is_billed_by_stripes_renewal(
    db_url, stripe_fake, stripe_client
):
    async with stripe_app(db_url, stripe_fake) as app:
        await app.connect()
        big = await make_plan(
            app.ctx,
            app.env,
            key="big",
            price="50.00",
            features={"seats": None, "calls": usage_rule("0.10")},
        )
        small = await make_plan(
            app.ctx, app.env, key="small", price="20.00", features={"calls": usage_rule("0.01")}
        )
        sub_id, stripe_sub = await _checkout(app, "d1", big["plan_id"])
        [big_usage] = (await _items(stripe_client, stripe_sub))["metered"]
        path = f"/subscriptions/{sub_id}/plan-change"

        async def schedule() -> None:
            out = await app.data(
                "POST",
                path,
                json={"changeToPlanId": small["plan_id"], "changeType": "DOWNGRADE"},
            )
            assert out["scheduledChange"]["status"] == "PENDING"

        await schedule()
        await app.settle()
        items = await _items(stripe_client, stripe_sub)
        # Stripe bills the small plan's base price from its renewal, nothing now; the
        # period's usage stays at the big plan's price
        assert [p.unit_amount for p in items["licensed"]] == [2000]
        assert [p.id for p in items["metered"]] == [big_usage.id]
        assert len(await _stripe_invoices(stripe_client, stripe_sub)) == 1
        # the engine keeps the big plan until the period ends
        now = await app.data("GET", f"/subscriptions/{sub_id}")
        assert now["planId"] == big["plan_id"]
        assert (await app.data("GET", "/entitlements/d1/seats"))["allowed"]

        # withdrawn: the big plan's base price is back, still without proration
        out = await app.data("DELETE", f"{path}/scheduled")
        assert out["cancelledScheduledChanges"] == 1
        items = await _items(stripe_client, stripe_sub)
        assert [p.unit_amount for p in items["licensed"]] == [5000]
        assert [p.id for p in items["metered"]] == [big_usage.id]
        assert len(await _stripe_invoices(stripe_client, stripe_sub)) == 1
        await run_due(app.ctx, app.env)  # the prices pass agrees: nothing to change
        assert [p.unit_amount for p in (await _items(stripe_client, stripe_sub))["licensed"]] == [
            5000
        ]

        # scheduled again; Stripe renews first: its renewal bills the small plan
        await schedule()
        renewal = await stripe_fake.end_period(stripe_sub)
        assert renewal["amount_paid"] == 2000
        await app.settle()
        # the engine moves to the small plan at its boundary; the usage price follows
        await app.data("POST", "/test-clock/advance", json={"days": 32})
        await app.settle()
        await run_due(app.ctx, app.env)
        now = await app.data("GET", f"/subscriptions/{sub_id}")
        assert now["planId"] == small["plan_id"]
        assert not (await app.data("GET", "/entitlements/d1/seats"))["allowed"]
        items = await _items(stripe_client, stripe_sub)
        assert [p.unit_amount for p in items["licensed"]] == [2000]
        assert [p.unit_amount_decimal for p in items["metered"]] == [Decimal(1)]
        paid = [i.amount_paid for i in await _stripe_invoices(stripe_client, stripe_sub)]
        assert paid == [5000, 2000]


async def test_an_in_arrears_base_fee_is_billed_at_the_period_end(
    db_url, stripe_fake, stripe_client
):
    async with stripe_app(db_url, stripe_fake) as app:
        await app.connect()
        team = await make_plan(
            app.ctx,
            app.env,
            key="team",
            price="10.00",
            timing="IN_ARREARS",
            features={"calls": usage_rule("0.02")},
        )
        sub_id, stripe_sub = await _direct(app, "a1", team["plan_id"])
        [opening] = await _stripe_invoices(stripe_client, stripe_sub)
        assert opening.amount_due == 0  # nothing is billed in advance
        items = await _items(stripe_client, stripe_sub)
        assert items["licensed"] == []
        base = next(p for p in items["metered"] if p.unit_amount == 1000)

        # one unit per period on the base-fee meter, however often the reporter runs
        await run_due(app.ctx, app.env)
        await run_due(app.ctx, app.env)
        events = [
            e
            for e in await stripe_fake.meter_events()
            if e["event_name"] == f"tanso_{stripe_usage.BASE_FEE_KEY}"
        ]
        assert [e["payload"]["value"] for e in events] == ["1"]
        meter = await stripe_client.v1.billing.meters.retrieve_async(base.recurring.meter)
        assert meter.event_name == f"tanso_{stripe_usage.BASE_FEE_KEY}"

        renewal = await stripe_fake.end_period(stripe_sub, pay=True)
        assert renewal["amount_paid"] == 1000
        await app.settle()
        invoices = await app.data("GET", "/billing/invoices/a1")
        assert sorted((i["type"], Decimal(str(i["amount"]))) for i in invoices) == [
            ("IN_ADVANCE_INITIAL", Decimal(0)),
            ("REGULAR", Decimal("10.00")),
        ]
        # the next period gets its own unit, once
        await run_due(app.ctx, app.env)
        await run_due(app.ctx, app.env)
        async with app.ctx.db.reader() as s:
            rows = (
                await s.scalars(
                    select(MeterReport).where(MeterReport.feature_id == stripe_usage.BASE_FEE_ID)
                )
            ).all()
        assert sorted((r.status, r.to_q - r.from_q) for r in rows) == [
            ("sent", 10000),
            ("sent", 10000),
        ]
        assert len({r.period_start for r in rows}) == 2

        # cancelled at the period end: the last period's base fee is billed as it ends
        await app.data("POST", f"/subscriptions/cancellation/{sub_id}?cancelMode=END_OF_PERIOD")
        final = await stripe_fake.end_period(stripe_sub, pay=True)
        assert final["amount_paid"] == 1000
        await app.settle()
        assert (await app.data("GET", f"/subscriptions/{sub_id}"))["status"] == "cancelled"


async def test_a_downgrade_to_an_in_arrears_plan_bills_nothing_in_advance(
    db_url, stripe_fake, stripe_client
):
    async with stripe_app(db_url, stripe_fake) as app:
        await app.connect()
        big = await make_plan(app.ctx, app.env, key="big", price="50.00")
        team = await make_plan(app.ctx, app.env, key="team", price="10.00", timing="IN_ARREARS")
        sub_id, stripe_sub = await _checkout(app, "t1", big["plan_id"])
        out = await app.data(
            "POST",
            f"/subscriptions/{sub_id}/plan-change",
            json={"changeToPlanId": team["plan_id"], "changeType": "DOWNGRADE"},
        )
        assert out["scheduledChange"]["status"] == "PENDING"
        await app.settle()
        # the next period is billed in arrears: no licensed price left to bill in advance;
        # the team plan's base-fee price is in place (nothing is reported to its meter
        # before the team plan's first period)
        items = await _items(stripe_client, stripe_sub)
        assert items["licensed"] == []
        assert [p.unit_amount for p in items["metered"]] == [1000]
        assert (await app.data("GET", f"/subscriptions/{sub_id}"))["planId"] == big["plan_id"]
        await run_due(app.ctx, app.env)
        renewal = await stripe_fake.end_period(stripe_sub)
        assert renewal["amount_due"] == 0
        await app.settle()
        await app.data("POST", "/test-clock/advance", json={"days": 32})
        await app.settle()
        await run_due(app.ctx, app.env)  # the plan changes; its first period's unit
        assert (await app.data("GET", f"/subscriptions/{sub_id}"))["planId"] == team["plan_id"]
        end = await stripe_fake.end_period(stripe_sub)
        assert end["amount_paid"] == 1000  # the team plan's fee, at the end of its period
        paid = [i.amount_paid for i in await _stripe_invoices(stripe_client, stripe_sub)]
        assert paid == [5000, 0, 1000]
