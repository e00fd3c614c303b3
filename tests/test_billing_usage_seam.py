"""Invoices and the metering seam (services/usage.usage_lines_for): usage is billed on the
invoice that closes its period, priced with the plan in force during that period,
recomputed while the invoice is open, frozen once it is not."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tanso_mcp.db.models import Plan
from tanso_mcp.services import usage
from tests.billing_helpers import Billing, money
from tests.factories import make_plan

pytestmark = pytest.mark.anyio
D = Decimal


class FakeMeter:
    """Stands in for metering: a usage amount per (plan key, period start)."""

    def __init__(self):
        self.amounts: dict[tuple[str, str], Decimal] = {}
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, s, sub, plan, period_start, period_end):
        key = (plan.key, period_start.date().isoformat())
        self.calls.append(
            (plan.key, period_start.date().isoformat(), period_end.date().isoformat())
        )
        amount = self.amounts.get(key)
        if not amount:
            return []
        return [usage.UsageLine("f1", f"Usage for tokens ({plan.key})", D("10"), amount)]


@pytest.fixture
def meter(monkeypatch):
    m = FakeMeter()

    async def usage_lines_for(s, requests):
        return [await m(s, r.sub, await s.get(Plan, r.plan_id), r.start, r.end) for r in requests]

    monkeypatch.setattr(usage, "usage_lines_for", usage_lines_for)
    return m


async def test_in_arrears_invoice_closes_its_period_with_usage(ctx, client, tenant, meter):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="arr", price="10.00", timing="IN_ARREARS")
    await b.customer("c")
    await b.subscribe("c", plan["plan_id"])
    meter.amounts[("arr", "2026-01-15")] = D("3.333")  # rounded once, half-up
    await b.to("2026-02-15T00:00:00Z")
    closing = (await b.invoices("c"))[0]
    assert closing["status"] == "DUE"
    assert [(i["kind"], money(i["chargeAmount"])) for i in closing["items"]] == [
        ("base", D("10.00")),
        ("usage", D("3.33")),
    ]
    assert money(closing["amount"]) == D("13.33")
    # late usage of that period is picked up while the invoice is open…
    meter.amounts[("arr", "2026-01-15")] = D("5")
    await b.to("2026-02-19T00:00:00Z")  # past due: recomputed on the way
    closing = (await b.invoices("c"))[0]
    assert (closing["status"], money(closing["amount"])) == ("PAST_DUE", D("15.00"))
    # …and frozen once paid
    await b.pay(closing["id"])
    meter.amounts[("arr", "2026-01-15")] = D("50")
    await b.advance(days=1)
    assert money((await b.invoices("c"))[0]["amount"]) == D("15.00")
    await b.check()


async def test_in_advance_usage_is_billed_on_the_next_invoice_and_at_the_end(
    ctx, client, tenant, meter
):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="adv", price="20.00")
    await b.customer("c")
    sub, inv = await b.subscribe("c", plan["plan_id"])
    assert [i["kind"] for i in inv["items"]] == ["base"]  # no usage on the initial invoice
    await b.pay(inv["id"])
    meter.amounts[("adv", "2026-01-15")] = D("7.50")
    await b.to("2026-02-15T00:00:00Z")
    renewal = (await b.invoices("c"))[-1]
    assert [(i["kind"], money(i["chargeAmount"])) for i in renewal["items"]] == [
        ("base", D("20.00")),
        ("usage", D("7.50")),
    ]
    await b.pay(renewal["id"])
    # the last period's usage after an END_OF_PERIOD cancellation still gets billed
    await b.data("POST", f"/subscriptions/cancellation/{sub['id']}")
    meter.amounts[("adv", "2026-02-15")] = D("1.25")
    await b.to("2026-03-15T00:00:00Z")
    final = (await b.invoices("c"))[-1]
    assert (final["type"], final["status"], money(final["amount"])) == ("REGULAR", "DUE", D("1.25"))
    assert final["periodStart"] == "2026-03-15T00:00:00Z"
    assert (await b.sub(sub["id"]))["status"] == "cancelled"
    await b.check()


async def test_downgrade_prices_the_closing_period_with_the_old_plan(ctx, client, tenant, meter):
    b = Billing(ctx, client, tenant)
    pro = await make_plan(ctx, b.env, key="pro", price="50.00")
    lite = await make_plan(ctx, b.env, key="lite", price="10.00", timing="IN_ARREARS")
    await b.customer("c")
    sub, inv = await b.subscribe("c", pro["plan_id"])
    await b.pay(inv["id"])
    await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": lite["plan_id"], "changeType": "DOWNGRADE"},
    )
    meter.amounts[("pro", "2026-01-15")] = D("4.00")
    meter.amounts[("lite", "2026-02-15")] = D("2.00")
    await b.to("2026-02-15T00:00:00Z")
    opening = (await b.invoices("c"))[-1]
    # in-arrears lite: its own period (empty so far) + the closing pro period's usage
    assert opening["status"] == "PENDING"
    assert [(i["kind"], money(i["chargeAmount"])) for i in opening["items"]] == [
        ("base", D("10.00")),
        ("usage", D("4.00")),
        ("usage", D("2.00")),
    ]
    assert ("pro", "2026-01-15", "2026-02-15") in meter.calls
    await b.check()
