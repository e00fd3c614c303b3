"""A year of monthly renewals driven by the test clock, for an IN_ADVANCE plan (plan
credits with CAPPED rollover) and an IN_ARREARS plan (FULL rollover), with the exact
invoices, statuses and credit balances at every step."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from tanso_mcp.services import credits
from tests.billing_helpers import Billing, money, summary
from tests.factories import make_plan

pytestmark = pytest.mark.anyio

D = Decimal
Q = 10_000
MONTHS = [date(2026 + (m // 12), m % 12 + 1, 15) for m in range(1, 13)]  # Feb 15 … Jan 15


async def _consume(b: Billing, pool_id: str, amount: int) -> int:
    now = await b.ctx.clocks.now(b.env)
    async with b.ctx.db.unit_of_work() as s:
        return await credits.deduct(s, b.env, pool_id, amount * Q, now, allow_partial=True) // Q


async def test_a_year_of_in_advance_renewals_with_capped_rollover(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(
        ctx,
        b.env,
        key="starter",
        price="49.00",
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 100,'
        '"rolloverPolicy": "CAPPED", "rolloverCap": 50}]',
    )
    await b.customer("adv")
    sub, inv = await b.subscribe("adv", plan["plan_id"])
    await b.pay(inv["id"])
    pool_id = (await b.pools("adv"))["AI_TOKENS"]["id"]
    usage = [70, 20, 0, 130, 45, 100, 10, 0, 60, 75, 5, 150]  # consumed in each period
    balance, expired, consumed = 100, 0, 0
    for month, day in enumerate(MONTHS):
        consumed += await _consume(b, pool_id, usage[month])
        balance -= min(usage[month], balance)
        await b.to(f"{day.isoformat()}T00:00:00Z")
        # renewal: CAPPED rollover keeps at most 50 plan credits, then the invoice is due
        lost = max(balance - 50, 0)
        balance, expired = balance - lost, expired + lost
        pool = (await b.pools("adv"))["AI_TOKENS"]
        assert (money(pool["balance"]), money(pool["totalExpired"])) == (balance, expired), day
        latest = (await b.invoices("adv"))[-1]
        assert (latest["type"], latest["status"], money(latest["amount"])) == (
            "REGULAR",
            "DUE",
            D("49.00"),
        )
        assert latest["dueDate"][:10] == latest["periodStart"][:10] == day.isoformat()
        s = await b.sub(sub["id"])
        assert s["status"] == "active" and s["currentPeriodStart"][:10] == day.isoformat()
        # paying grants the new period's 100 credits, once
        out = await b.pay(latest["id"])
        assert out["creditsGranted"] == {"AI_TOKENS": 100}
        balance += 100
        pool = (await b.pools("adv"))["AI_TOKENS"]
        assert money(pool["balance"]) == balance
        assert money(pool["totalConsumed"]) == consumed
    invs = await b.invoices("adv")
    assert len(invs) == 13
    assert summary(invs)[0] == ("IN_ADVANCE_INITIAL", "PAID", D("49.00"), "2026-01-15")
    assert [i["periodStart"][:10] for i in invs[1:]] == [d.isoformat() for d in MONTHS]
    assert all(i["status"] == "PAID" and money(i["amount"]) == D("49.00") for i in invs)
    pool = (await b.pools("adv"))["AI_TOKENS"]
    assert money(pool["totalGranted"]) == 13 * 100
    # by hand: 100 + 12 x 100 granted - 665 consumed - 535 expired by the cap
    assert (balance, expired, consumed) == (100, 535, 665)
    await b.check()


async def test_a_year_of_in_arrears_renewals_with_full_rollover(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(
        ctx,
        b.env,
        key="metered",
        price="99.00",
        timing="IN_ARREARS",
        credit_allocations='[{"denomination": "API_CREDITS", "creditAmount": 1000,'
        '"rolloverPolicy": "FULL"}]',
    )
    await b.customer("arr")
    sub, inv = await b.subscribe("arr", plan["plan_id"])
    assert (inv["status"], inv["dueDate"]) == ("PENDING", "2026-02-15T00:00:00Z")
    pool_id = (await b.pools("arr"))["API_CREDITS"]["id"]
    assert money((await b.pools("arr"))["API_CREDITS"]["balance"]) == 1000
    balance = 1000
    for month, day in enumerate(MONTHS):
        balance -= await _consume(b, pool_id, 400 + 100 * (month % 3))
        await b.to(f"{day.isoformat()}T00:00:00Z")
        invs = await b.invoices("arr")
        closing, opening = invs[-2], invs[-1]
        # the period that ended is billed now; the new one is billed at its end
        assert (closing["status"], closing["periodEnd"][:10], closing["dueDate"][:10]) == (
            "DUE",
            day.isoformat(),
            day.isoformat(),
        )
        assert (opening["status"], opening["periodStart"][:10]) == ("PENDING", day.isoformat())
        assert money(opening["amount"]) == money(closing["amount"]) == D("99.00")
        # FULL rollover keeps everything, and the new period's credits arrive at once
        balance += 1000
        assert money((await b.pools("arr"))["API_CREDITS"]["balance"]) == balance
        await b.pay(closing["id"])
        assert (await b.sub(sub["id"]))["status"] == "active"
    invs = await b.invoices("arr")
    assert len(invs) == 13
    assert [i["status"] for i in invs] == ["PAID"] * 12 + ["PENDING"]
    assert [i["periodStart"][:10] for i in invs] == ["2026-01-15"] + [d.isoformat() for d in MONTHS]
    pool = (await b.pools("arr"))["API_CREDITS"]
    assert (money(pool["totalGranted"]), money(pool["totalExpired"])) == (13_000, 0)
    assert money(pool["balance"]) == balance == 13_000 - 12 * 400 - 4 * (100 + 200)
    await b.check()


async def test_unpaid_in_arrears_invoice_goes_past_due_and_blocks_renewal(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="metered", price="99.00", timing="IN_ARREARS")
    await b.customer("late")
    sub, _ = await b.subscribe("late", plan["plan_id"])
    await b.to("2026-02-18T23:59:59Z")
    assert [i["status"] for i in await b.invoices("late")] == ["DUE", "PENDING"]
    await b.to("2026-02-19T00:00:00Z")  # due Feb 15 + grace 3
    assert [i["status"] for i in await b.invoices("late")] == ["PAST_DUE", "PENDING"]
    assert (await b.sub(sub["id"]))["status"] == "past_due"
    await b.to("2026-03-16T00:00:00Z")
    # the Feb–Mar invoice still became due on its date, but no Mar–Apr period began
    assert [i["status"] for i in await b.invoices("late")] == ["PAST_DUE", "DUE"]
    assert (await b.sub(sub["id"]))["currentPeriodStart"][:10] == "2026-02-15"
    await b.to("2026-03-19T00:00:00Z")
    assert [i["status"] for i in await b.invoices("late")] == ["PAST_DUE", "PAST_DUE"]
    await b.check()
