"""The billing run in batches: a batch of renewals gives exactly what renewing each
subscription on its own gives; a subscription whose renewal fails does not hold up the
others (it is reported and retried by the next run); two runners sharing a due set on
PostgreSQL renew every subscription once."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tanso_mcp.db import models as m
from tanso_mcp.db.scale import QTY_SCALE
from tanso_mcp.services import billing, billing_batch, credits, jobs
from tests.billing_helpers import Billing
from tests.conftest import PG_URL
from tests.factories import make_plan

pytestmark = pytest.mark.anyio

RENEW_AT = datetime(2026, 2, 15, tzinfo=UTC)
METERED = json.dumps(
    {"pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.10"}}
)


async def _plans(ctx, env: str) -> dict[str, str]:
    specs = {
        "adv": ("20.00", "IN_ADVANCE", "ADV", '"rolloverPolicy": "CAPPED", "rolloverCap": 20'),
        "adv_small": ("5.00", "IN_ADVANCE", None, None),
        "arr": ("10.00", "IN_ARREARS", "ARR", '"rolloverPolicy": "NONE"'),
        "arr_full": ("15.00", "IN_ARREARS", "FULL", '"rolloverPolicy": "FULL"'),
        "free": ("0.00", "IN_ADVANCE", "FREE", '"rolloverPolicy": "FULL"'),
    }
    out = {}
    for key, (price, timing, denom, policy) in specs.items():
        allocs = f'[{{"denomination": "{denom}", "creditAmount": 50, {policy}}}]' if denom else None
        plan = await make_plan(
            ctx,
            env,
            key=key,
            price=price,
            timing=timing,
            features={"api_calls": METERED, "export": None},
            credit_allocations=allocs,
        )
        out[key] = plan["plan_id"]
    return out


# (plan, usage units in the period, credits consumed, scheduled change to)
SHAPES = [
    ("adv", 37, 12, None),
    ("adv", 0, 45, None),
    ("arr", 120, 30, None),
    ("arr", 0, 0, None),
    ("arr_full", 15, 10, None),
    ("free", 0, 0, None),
    ("adv", 8, 0, "adv_small"),
]


async def _subscribe_shapes(b: Billing, plans: dict[str, str], group: str) -> list[str]:
    """One subscription per shape, for customers ``<group><n>``; returns their ids."""
    ctx, env = b.ctx, b.env
    ids = []
    for n, (plan, units, consumed, change_to) in enumerate(SHAPES):
        ref = f"{group}{n}"
        await b.customer(ref)
        sub, inv = await b.subscribe(ref, plans[plan])
        if inv and inv["status"] == "DUE":
            await b.pay(inv["id"])
        if change_to:
            await b.data(
                "POST",
                f"/subscriptions/{sub['id']}/plan-change",
                json={"changeToPlanId": plans[change_to], "changeType": "DOWNGRADE"},
            )
        async with ctx.db.unit_of_work() as s:
            sub_row = await s.get(m.Subscription, sub["id"])
            if consumed:
                pool = (
                    await s.scalars(
                        select(m.CreditPool).where(m.CreditPool.customer_id == sub_row.customer_id)
                    )
                ).one()
                await credits.deduct(
                    s,
                    env,
                    pool.id,
                    consumed * QTY_SCALE,
                    RENEW_AT - timedelta(days=20),
                    allow_partial=False,
                    subscription_id=sub["id"],
                )
            feature = await s.scalar(select(m.Feature.id).where(m.Feature.key == "api_calls"))
            for day in (2, 9) if units else ():
                s.add(
                    m.Event(
                        environment_id=env,
                        idempotency_key=f"{ref}-{day}",
                        event_name="api_calls",
                        customer_id=sub_row.customer_id,
                        feature_id=feature,
                        subscription_id=sub["id"],
                        occurred_at=RENEW_AT - timedelta(days=30 - day),
                        usage_q=units * QTY_SCALE,
                        billable_q=units * QTY_SCALE,
                        overage_q=units * QTY_SCALE,
                        created_at=RENEW_AT - timedelta(days=30 - day),
                    )
                )
        ids.append(sub["id"])
    return ids


async def _state(b: Billing, ref: str, sub_id: str) -> dict[str, Any]:
    """Everything a renewal writes for one subscription, without ids."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: strip(x)
                for k, x in v.items()
                if k
                not in (
                    "id",
                    "subscriptionId",
                    "customerReferenceId",
                    "poolId",
                    "name",
                    "customerId",
                )
            }
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    async with b.ctx.db.reader() as s:
        sub = await s.get(m.Subscription, sub_id)
        pools = {
            p.id: p.denomination
            for p in await s.scalars(
                select(m.CreditPool).where(m.CreditPool.customer_id == sub.customer_id)
            )
        }
        ledger = [
            (
                pools[t.pool_id],
                t.type,
                t.amount_q,
                t.balance_before_q,
                t.balance_after_q,
                t.description,
                t.grant_id is not None,
            )
            for t in await s.scalars(
                select(m.CreditTransaction)
                .where(m.CreditTransaction.pool_id.in_(list(pools)))
                .order_by(m.CreditTransaction.created_at, m.CreditTransaction.id)
            )
        ]
        grants = [
            (
                pools[g.pool_id],
                g.grant_type,
                g.amount_q,
                g.remaining_q,
                g.expires_at,
                g.period_start,
                g.description,
                g.voided_at,
                g.idempotency_key.replace(sub_id, "SUB"),
            )
            for g in await s.scalars(
                select(m.CreditGrant)
                .where(m.CreditGrant.pool_id.in_(list(pools)))
                .order_by(m.CreditGrant.created_at, m.CreditGrant.id)
            )
        ]
        links = sorted(
            (pools[pool_id], drawn)
            for pool_id, drawn in await s.execute(
                select(
                    m.CreditPoolSubscription.pool_id, m.CreditPoolSubscription.total_drawn_q
                ).where(m.CreditPoolSubscription.subscription_id == sub_id)
            )
        )
        changes = [
            (c.type, c.status, c.fulfilled_at)
            for c in await s.scalars(
                select(m.ScheduledChange).where(m.ScheduledChange.subscription_id == sub_id)
            )
        ]
        period = (sub.current_period_start, sub.current_period_end, sub.plan_id)
    return {
        "period": period,
        "invoices": strip(await b.invoices(ref)),
        "pools": strip(await b.pools(ref)),
        "ledger": ledger,
        "grants": grants,
        "links": links,
        "changes": changes,
        "entitlements": await b.entitlements(sub_id),
    }


def _events(fx_list: list[Any], ids: list[str]) -> list[list[tuple[str, dict]]]:
    by_sub = {fx.subscription_id: fx for fx in fx_list}
    out = []
    for sid in ids:
        events = []
        for name, payload in by_sub[sid].events:
            keep = {k: v for k, v in payload.items() if k not in ("subscriptionId", "invoiceId")}
            events.append((name, keep))
        out.append(events)
    return out


async def test_a_batch_of_renewals_equals_renewing_one_by_one(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plans = await _plans(ctx, b.env)
    one = await _subscribe_shapes(b, plans, "one")
    many = await _subscribe_shapes(b, plans, "many")
    async with ctx.db.unit_of_work() as s:
        await ctx.clocks.set_test_clock(s, b.env, RENEW_AT, frozen=True)
    ctx.clocks.remember(b.env, RENEW_AT, frozen=True)

    singles = []
    for sid in one:
        async with ctx.db.unit_of_work() as s:
            singles.append(await billing.renew(s, b.env, sid, RENEW_AT))
    async with ctx.db.unit_of_work() as s:
        batch = await billing_batch.renew_many(s, b.env, many, RENEW_AT)

    assert len(batch) == len(SHAPES)
    assert _events(singles, one) == _events(batch, many)
    for n in range(len(SHAPES)):
        expected = await _state(b, f"one{n}", one[n])
        got = await _state(b, f"many{n}", many[n])
        for k in expected:
            assert got[k] == expected[k], (
                SHAPES[n],
                k,
                json.dumps(got[k], default=str),
                json.dumps(expected[k], default=str),
            )
        assert [i["periodStart"][:10] for i in got["invoices"]][-1] == "2026-02-15"
    # the shapes cover what the run has to get right
    states = [await _state(b, f"many{n}", many[n]) for n in range(len(SHAPES))]
    assert any(
        t[1] == "EXPIRATION" and "rollover CAPPED" in t[5] for st in states for t in st["ledger"]
    )
    assert any(
        i["kind"] == "usage" for st in states for inv in st["invoices"] for i in inv["items"]
    )
    assert states[5]["invoices"][-1]["status"] == "PAID"  # free plan: settled at once
    assert states[6]["changes"][0][1] == "COMPLETED"  # the scheduled downgrade applied
    await b.check()


async def test_a_failing_renewal_does_not_block_the_others_and_is_retried(
    ctx, client, tenant, caplog
):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(
        ctx,
        b.env,
        key="arr",
        price="10.00",
        timing="IN_ARREARS",
        credit_allocations='[{"denomination": "ARR", "creditAmount": 10}]',
    )
    ids = []
    for n in range(6):
        await b.customer(f"c{n}")
        sub, _inv = await b.subscribe(f"c{n}", plan["plan_id"])
        ids.append(sub["id"])
    poisoned = ids[2]
    # data its renewal cannot work with: an anchor day that is no day of any month
    async with ctx.db.unit_of_work() as s:
        await s.execute(
            update(m.Subscription).where(m.Subscription.id == poisoned).values(billing_anchor_day=0)
        )
    with caplog.at_level(logging.ERROR, logger="tanso_mcp.jobs"):
        report = await jobs.run_due_report(ctx, b.env, until=RENEW_AT, move_clock=True)
    assert report.failed == [("subscription.renew", poisoned)]
    assert any(poisoned in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)

    async def periods() -> dict[str, datetime]:
        async with ctx.db.reader() as s:
            rows = await s.execute(
                select(m.Subscription.id, m.Subscription.current_period_start).where(
                    m.Subscription.id.in_(ids)
                )
            )
            return dict(rows.all())

    got = await periods()
    assert {sid for sid, start in got.items() if start == RENEW_AT} == set(ids) - {poisoned}
    async with ctx.db.reader() as s:
        assert (
            await s.scalar(
                select(func.count())
                .select_from(m.Invoice)
                .where(m.Invoice.subscription_id == poisoned, m.Invoice.period_start == RENEW_AT)
            )
            == 0
        )
    # repaired, the next run renews it (its renewal stayed due)
    async with ctx.db.unit_of_work() as s:
        await s.execute(
            update(m.Subscription)
            .where(m.Subscription.id == poisoned)
            .values(billing_anchor_day=15)
        )
    report = await jobs.run_due_report(ctx, b.env, until=RENEW_AT + timedelta(hours=1))
    assert report.failed == []
    assert (await periods())[poisoned] == RENEW_AT
    for n in range(6):
        assert [i["periodStart"][:10] for i in await b.invoices(f"c{n}")] == [
            "2026-01-15",
            "2026-02-15",
        ]
    await b.check()


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (TANSO_TEST_DATABASE_URL)")
async def test_two_runners_share_a_due_set_without_renewing_anything_twice(
    ctx, client, tenant, monkeypatch
):
    b = Billing(ctx, client, tenant)
    plans = await _plans(ctx, b.env)
    ids = []
    for n in range(40):
        await b.customer(f"r{n}")
        sub, inv = await b.subscribe(f"r{n}", plans["arr" if n % 2 else "adv"])
        if inv["status"] == "DUE":
            await b.pay(inv["id"])
        ids.append(sub["id"])
    async with ctx.db.unit_of_work() as s:
        await ctx.clocks.set_test_clock(s, b.env, RENEW_AT, frozen=True)
    ctx.clocks.remember(b.env, RENEW_AT, frozen=True)
    monkeypatch.setattr(jobs, "BATCH_SIZE", 5)  # many small batches: the runners interleave
    reports = await asyncio.gather(
        *(jobs.run_due_report(ctx, b.env, until=RENEW_AT) for _ in range(2))
    )
    assert [r.failed for r in reports] == [[], []]
    async with ctx.db.reader() as s:
        per_sub = dict(
            (
                await s.execute(
                    select(m.Invoice.subscription_id, func.count())
                    .where(m.Invoice.type == "REGULAR", m.Invoice.period_start == RENEW_AT)
                    .group_by(m.Invoice.subscription_id)
                )
            ).all()
        )
        grants = (
            await s.execute(
                select(m.CreditGrant.idempotency_key, func.count())
                .group_by(m.CreditGrant.idempotency_key)
                .having(func.count() > 1)
            )
        ).all()
    assert per_sub == dict.fromkeys(ids, 1)
    assert grants == []
    await b.check()


def test_batches_keep_each_customer_in_one_unit():
    keys = [f"k{n}" for n in range(40)]
    owner = {k: f"c{n % 7}" for n, k in enumerate(keys)}
    owner["k0"] = owner["k1"] = owner["k2"] = "big"  # more keys than a batch holds
    owner["k3"] = owner["k4"] = owner["k5"] = "big"
    del owner["k39"]  # no owner: its own
    units = jobs.batches_by_owner(keys, owner, 5)
    batches = [b for u in units for b in u]
    assert sorted(k for b in batches for k in b) == sorted(keys)
    assert all(0 < len(b) <= 5 for b in batches)
    unit_of = {owner.get(k, k): n for n, u in enumerate(units) for b in u for k in b}
    assert all(unit_of[owner.get(k, k)] == n for n, u in enumerate(units) for b in u for k in b)
    assert [len(b) for b in units[0]] == [5, 1]  # the big customer's batches, in order
    assert len(batches) == 9  # packed: 40 keys, 6 of one customer, batches of 5


async def test_batches_running_at_once_never_share_a_customer(ctx, tenant, monkeypatch):
    """On PostgreSQL two batches of one kind run at once, split by customer: one
    customer's expiries (which lock the customer's pool) never run in both lanes at
    once, and every item runs once. (SQLite runs one batch at a time.)"""
    from tanso_mcp.services import customers
    from tests.conftest import START

    env = tenant.env_ids["test"]
    expiry = START + timedelta(days=1)
    customer_of: dict[str, str] = {}
    async with ctx.db.unit_of_work() as s:
        for ref in ("a", "b", "c", "d"):
            c = await customers.create_customer(s, env, START, reference_id=ref)
            pool = await credits.ensure_pool(s, env, c.id, "TOKENS", START)
            for n in range(3):
                pool = await credits.lock_pool(s, env, pool.id)
                g = await credits.grant(
                    s,
                    env,
                    pool,
                    10 * QTY_SCALE,
                    "PURCHASED",
                    START,
                    idempotency_key=f"{ref}{n}",
                    expires_at=expiry,
                )
                customer_of[g.id] = c.id
    monkeypatch.setattr(jobs, "BATCH_SIZE", 1)  # one grant per batch
    kind = ctx.jobs.get("credits.expire")
    assert kind.run_batch is not None
    run_batch = kind.run_batch
    running: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    together = 0

    async def watched(s, ctx_, env_, keys, now):
        nonlocal together
        mine = customer_of[keys[0]]
        if running:
            together += 1
            if mine in running:
                overlaps.append((mine, *running))
        running.append(mine)
        try:
            await asyncio.sleep(0.05)  # hold the pool while the other lane works
            return await run_batch(s, ctx_, env_, keys, now)
        finally:
            running.remove(mine)

    claim = kind.claim
    assert claim is not None
    short: list[list[str]] = []

    async def claim_watched(s, env_, keys):
        got = await claim(s, env_, keys)
        if got != keys:  # a row held by the other lane
            short.append(keys)
        return got

    monkeypatch.setattr(kind, "run_batch", watched)
    monkeypatch.setattr(kind, "claim", claim_watched)
    report = await jobs.run_due_report(ctx, env, until=expiry + timedelta(hours=1))
    assert report.failed == [] and report.done == 12
    assert overlaps == [] and short == []
    if ctx.db.dialect == "postgresql":
        assert together > 0  # the lanes did run at once
    async with ctx.db.reader() as s:
        left = await s.scalars(select(m.CreditGrant.remaining_q))
        assert set(left) == {0}
        assert await credits.ledger_problems(s, env) == []
