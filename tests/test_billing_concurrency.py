"""Several OS processes run the same due billing jobs at once against one PostgreSQL
database (half of them without the job leases): every renewal, invoice, status change,
plan-credit grant, rollover, claw-back and expiry happens exactly once."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import CreditGrant, CreditTransaction, Invoice
from tests.billing_helpers import Billing, money
from tests.conftest import PG_URL
from tests.factories import make_plan

pytestmark = pytest.mark.anyio
needs_pg = pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (TANSO_TEST_DATABASE_URL)")

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 6
T = datetime(2026, 2, 20, tzinfo=UTC)


@needs_pg
async def test_jobs_run_concurrently_from_separate_processes_do_everything_once(
    ctx, client, tenant
):
    b = Billing(ctx, client, tenant)
    arr = await make_plan(
        ctx,
        b.env,
        key="arr",
        price="10.00",
        timing="IN_ARREARS",
        credit_allocations='[{"denomination": "ARR_CREDITS", "creditAmount": 100}]',
    )
    adv = await make_plan(
        ctx,
        b.env,
        key="adv",
        price="20.00",
        credit_allocations='[{"denomination": "ADV_CREDITS", "creditAmount": 50,'
        '"rolloverPolicy": "FULL"}]',
    )
    arr_refs = [f"a{i}" for i in range(8)]
    adv_refs = [f"b{i}" for i in range(8)]
    cancelled = set(adv_refs[:4])
    for ref in arr_refs:
        await b.customer(ref)
        await b.subscribe(ref, arr["plan_id"], gracePeriod=10)
    for ref in adv_refs:
        await b.customer(ref)
        sub, inv = await b.subscribe(ref, adv["plan_id"])
        await b.pay(inv["id"])
        if ref in cancelled:
            await b.data("POST", f"/subscriptions/cancellation/{sub['id']}")
    for ref in arr_refs + adv_refs:
        await b.data(
            "POST",
            f"/credits/{ref}/grants",
            201,
            json={
                "denomination": "PROMO",
                "amount": 30,
                "grantType": "PROMOTIONAL",
                "expiresAt": "2026-02-01T00:00:00Z",
                "idempotencyKey": f"promo-{ref}",
            },
        )
    # move the test clock without running anything: the workers will find it all due
    async with ctx.db.unit_of_work() as s:
        # frozen: the worker processes read real time as their system clock
        await ctx.clocks.set_test_clock(s, b.env, T, frozen=True)

    start_at = time.time() + 4.0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.jobs_worker",
            PG_URL,
            str(start_at),
            *(["--no-lease"] if i % 2 else []),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(WORKERS)
    ]
    outputs = []
    for p in procs:
        out, err = await asyncio.wait_for(p.communicate(), timeout=180)
        assert p.returncode == 0, err.decode()
        outputs.append(out.decode())
    assert all("failures=0" in o for o in outputs), outputs
    assert sum(int(o.split("ran=")[1].split()[0]) for o in outputs) > 0

    # ---- every effect exactly once ----------------------------------------------
    async with ctx.db.reader() as s:
        dup = (
            await s.execute(
                select(Invoice.subscription_id, Invoice.type, Invoice.period_start, func.count())
                .group_by(Invoice.subscription_id, Invoice.type, Invoice.period_start)
                .having(func.count() > 1)
            )
        ).all()
        assert dup == []
        grant_kinds = Counter((await s.execute(select(CreditGrant.grant_type))).scalars().all())
        tx_kinds = Counter((await s.execute(select(CreditTransaction.type))).scalars().all())
    # plan grants: 2 per in-arrears sub (start + renewal), 1 per in-advance sub
    assert grant_kinds == {"PLAN_INCLUDED": 8 * 2 + 8, "PROMOTIONAL": 16}
    assert tx_kinds == {
        "GRANT": 8 * 2 + 8 + 16,
        "EXPIRATION": 8 + 16,  # NONE rollover of each arrears pool, each promo expiry
        "REVERSAL": 4,  # claw-back of each END_OF_PERIOD cancellation
    }
    for ref in arr_refs:
        invs = await b.invoices(ref)
        assert [(i["status"], i["periodStart"][:10]) for i in invs] == [
            ("DUE", "2026-01-15"),
            ("PENDING", "2026-02-15"),
        ]
        pool = (await b.pools(ref))["ARR_CREDITS"]
        assert (
            money(pool["balance"]),
            money(pool["totalGranted"]),
            money(pool["totalExpired"]),
        ) == (
            100,
            200,
            100,
        )
    for ref in adv_refs:
        invs = await b.invoices(ref)
        pool = (await b.pools(ref))["ADV_CREDITS"]
        if ref in cancelled:
            assert [i["type"] for i in invs] == ["IN_ADVANCE_INITIAL"]
            assert (money(pool["balance"]), money(pool["totalReversed"])) == (0, 50)
        else:
            assert [(i["type"], i["status"], money(i["amount"])) for i in invs] == [
                ("IN_ADVANCE_INITIAL", "PAID", Decimal("20.00")),
                ("REGULAR", "DUE", Decimal("20.00")),
            ]
            assert money(pool["balance"]) == 50
    for ref in arr_refs + adv_refs:
        promo = (await b.pools(ref))["PROMO"]
        assert (money(promo["balance"]), money(promo["totalExpired"])) == (0, 30)
    await b.check()


async def test_concurrent_api_calls_pay_cancel_and_top_up_once(ctx, client, tenant):
    """The same request sent many times at once: one wins, the others get a clear 4xx,
    and the effects (activation, plan credits, refund, top-up) happen once."""
    b = Billing(ctx, client, tenant)
    plan = await make_plan(
        ctx,
        b.env,
        key="p",
        price="30.00",
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 40}]',
    )
    await b.customer("c")
    sub, inv = await b.subscribe("c", plan["plan_id"])
    path = f"/api/v1/client/billing/invoices/{inv['id']}/mark-paid"
    codes = Counter(
        r.status_code
        for r in await asyncio.gather(*[client.post(path, headers=b.h) for _ in range(8)])
    )
    assert codes == {200: 1, 409: 7}
    assert money((await b.pools("c"))["AI_TOKENS"]["balance"]) == 40
    body = {"denomination": "AI_TOKENS", "amount": 5, "idempotencyKey": "same"}
    codes = Counter(
        r.status_code
        for r in await asyncio.gather(
            *[
                client.post("/api/v1/client/credits/c/grants", json=body, headers=b.h)
                for _ in range(8)
            ]
        )
    )
    assert codes == {201: 1, 409: 7}
    cancel = f"/api/v1/client/subscriptions/cancellation/{sub['id']}?cancelMode=IMMEDIATE"
    codes = Counter(
        r.status_code
        for r in await asyncio.gather(*[client.post(cancel, headers=b.h) for _ in range(8)])
    )
    assert codes == {200: 1, 400: 7}
    invs = await b.invoices("c")
    assert [(i["type"], money(i["amount"])) for i in invs] == [
        ("IN_ADVANCE_INITIAL", Decimal("30.00")),
        ("CREDIT", Decimal("-29.60")),  # 10 of 744 hours used: 30 x 734/744
    ]
    pool = (await b.pools("c"))["AI_TOKENS"]
    assert (money(pool["balance"]), money(pool["totalReversed"])) == (5, 40)
    await b.check()
