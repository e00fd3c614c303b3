"""The credits module: pools, exactly-once grants, FIFO deduction, expiry, claw-back,
rollover, and the ledger invariants (also under concurrency)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import CreditGrant, CreditTransaction
from tanso_mcp.errors import InsufficientCredits, InvalidRequest
from tanso_mcp.services import credits, customers
from tests.conftest import START

pytestmark = pytest.mark.anyio

Q = 10_000  # one credit in ledger units


async def _setup(ctx, tenant, **pool_kw):
    env = tenant.env_ids["test"]
    async with ctx.db.unit_of_work() as s:
        c = await customers.create_customer(s, env, START, reference_id="cust")
        pool = await credits.ensure_pool(s, env, c.id, "AI_TOKENS", START, **pool_kw)
    return env, c.id, pool.id


async def _grant(ctx, env, pool_id, amount, key, *, at=START, **kw):
    async with ctx.db.unit_of_work() as s:
        pool = await credits.lock_pool(s, env, pool_id)
        return await credits.grant(
            s, env, pool, amount * Q, kw.pop("kind", "PURCHASED"), at, idempotency_key=key, **kw
        )


async def _pool(ctx, env, pool_id):
    async with ctx.db.reader() as s:
        return await credits.lock_pool(s, env, pool_id)


async def _check(ctx, env):
    async with ctx.db.reader() as s:
        assert await credits.ledger_problems(s, env) == []


async def test_ensure_pool_is_once_per_customer_and_denomination(ctx, tenant):
    env, cid, pid = await _setup(ctx, tenant)
    async with ctx.db.unit_of_work() as s:
        again = await credits.ensure_pool(
            s,
            env,
            cid,
            "AI_TOKENS",
            START,
            hard_limit=True,
            rollover_policy="CAPPED",
            rollover_cap_q=5 * Q,
        )
    assert again.id == pid
    p = await _pool(ctx, env, pid)
    assert p.hard_limit and p.rollover_policy == "CAPPED" and p.rollover_cap_q == 5 * Q


async def test_grant_is_exactly_once_per_key(ctx, tenant):
    env, _, pid = await _setup(ctx, tenant)
    g = await _grant(ctx, env, pid, 100, "k1")
    assert g is not None and g.remaining_q == 100 * Q
    assert await _grant(ctx, env, pid, 100, "k1") is None
    p = await _pool(ctx, env, pid)
    assert p.balance_q == 100 * Q and p.total_granted_q == 100 * Q
    async with ctx.db.reader() as s:
        rows = (await s.scalars(select(CreditTransaction))).all()
    assert [(r.type, r.amount_q, r.balance_before_q, r.balance_after_q) for r in rows] == [
        ("GRANT", 100 * Q, 0, 100 * Q)
    ]
    await _check(ctx, env)


async def test_grant_rejects_bad_input(ctx, tenant):
    env, _, pid = await _setup(ctx, tenant)
    for kw, field in (
        ({"amount": 0}, "amount"),
        ({"kind": "GIFT"}, "grantType"),
        ({"expires_at": START - timedelta(days=1)}, "expiresAt"),
    ):
        amount = kw.pop("amount", 5)
        with pytest.raises(InvalidRequest) as exc:
            await _grant(ctx, env, pid, amount, "bad", **kw)
        assert exc.value.field == field
    assert (await _pool(ctx, env, pid)).balance_q == 0
    await _check(ctx, env)


async def test_deduct_is_fifo_and_writes_one_ledger_row(ctx, tenant):
    env, _, pid = await _setup(ctx, tenant)
    g1 = await _grant(ctx, env, pid, 30, "a", at=START)
    g2 = await _grant(ctx, env, pid, 50, "b", at=START + timedelta(seconds=1))
    async with ctx.db.unit_of_work() as s:
        taken = await credits.deduct(
            s, env, pid, 40 * Q, START + timedelta(seconds=2), allow_partial=False, event_id="e1"
        )
    assert taken == 40 * Q
    async with ctx.db.reader() as s:
        rem = {g.id: g.remaining_q for g in (await s.scalars(select(CreditGrant))).all()}
        last = (
            await s.scalars(select(CreditTransaction).where(CreditTransaction.type == "DEDUCTION"))
        ).one()
    assert rem == {g1.id: 0, g2.id: 40 * Q}
    assert (last.amount_q, last.balance_before_q, last.balance_after_q, last.event_id) == (
        -40 * Q,
        80 * Q,
        40 * Q,
        "e1",
    )
    p = await _pool(ctx, env, pid)
    assert p.balance_q == 40 * Q and p.total_consumed_q == 40 * Q
    await _check(ctx, env)


async def test_deduct_insufficient_changes_nothing_unless_partial(ctx, tenant):
    env, _, pid = await _setup(ctx, tenant)
    await _grant(ctx, env, pid, 100, "a")
    with pytest.raises(InsufficientCredits):
        async with ctx.db.unit_of_work() as s:
            await credits.deduct(s, env, pid, 130 * Q, START, allow_partial=False)
    assert (await _pool(ctx, env, pid)).balance_q == 100 * Q
    # Worked example, credits before overage: 130 wanted, 100 available -> 100 taken
    async with ctx.db.unit_of_work() as s:
        assert await credits.deduct(s, env, pid, 130 * Q, START, allow_partial=True) == 100 * Q
        assert await credits.deduct(s, env, pid, 5 * Q, START, allow_partial=True) == 0
    assert (await _pool(ctx, env, pid)).balance_q == 0
    await _check(ctx, env)


async def test_expired_grants_are_never_consumed(ctx, tenant):
    env, _, pid = await _setup(ctx, tenant)
    await _grant(ctx, env, pid, 10, "old", expires_at=START + timedelta(days=1))
    await _grant(ctx, env, pid, 10, "new", at=START + timedelta(seconds=1))
    later = START + timedelta(days=2)
    async with ctx.db.unit_of_work() as s:
        taken = await credits.deduct(s, env, pid, 15 * Q, later, allow_partial=True)
    assert taken == 10 * Q  # the expired 10 went to EXPIRATION first
    p = await _pool(ctx, env, pid)
    assert (p.balance_q, p.total_expired_q, p.total_consumed_q) == (0, 10 * Q, 10 * Q)
    async with ctx.db.unit_of_work() as s:  # the job finds nothing left to do
        assert await credits.expire_due_grants(s, env, pid, later) == 0
    await _check(ctx, env)


async def test_claw_back_takes_plan_credits_only(ctx, tenant):
    env, _, pid = await _setup(ctx, tenant)
    await _grant(ctx, env, pid, 100, "plan", kind="PLAN_INCLUDED", subscription_id="sub1")
    await _grant(ctx, env, pid, 20, "bought", kind="PURCHASED")
    await _grant(ctx, env, pid, 5, "promo", kind="PROMOTIONAL")
    async with ctx.db.unit_of_work() as s:
        await credits.deduct(s, env, pid, 30 * Q, START, allow_partial=False)
        assert await credits.plan_included_remaining(s, env, "sub1") == {"AI_TOKENS": 70 * Q}
        assert await credits.claw_back_subscription(s, env, "sub1", START) == {"AI_TOKENS": 70 * Q}
        assert await credits.claw_back_subscription(s, env, "sub1", START) == {}
    p = await _pool(ctx, env, pid)
    assert p.balance_q == 25 * Q and p.total_reversed_q == 70 * Q
    await _check(ctx, env)


@pytest.mark.parametrize(
    ("policy", "cap", "left"), [("NONE", None, 0), ("FULL", None, 60), ("CAPPED", 25, 25)]
)
async def test_rollover_policies_apply_to_plan_credits(ctx, tenant, policy, cap, left):
    env, _, pid = await _setup(ctx, tenant)
    await _grant(
        ctx, env, pid, 100, "p1", kind="PLAN_INCLUDED", subscription_id="s", period_start=START
    )
    await _grant(ctx, env, pid, 7, "bought")
    async with ctx.db.unit_of_work() as s:
        await credits.deduct(s, env, pid, 40 * Q, START, allow_partial=False)  # plan 100 -> 60
        pool = await credits.lock_pool(s, env, pid)
        new_start = START + timedelta(days=31)
        kw = {"policy": policy, "cap_q": cap * Q if cap is not None else None}
        await credits.apply_rollover(s, env, pool, "s", new_start, new_start, **kw)
        # idempotent
        assert await credits.apply_rollover(s, env, pool, "s", new_start, new_start, **kw) == 0
    assert (await _pool(ctx, env, pid)).balance_q == (left + 7) * Q
    await _check(ctx, env)


async def test_concurrent_deductions_never_overdraw(ctx, tenant):
    env, _, pid = await _setup(ctx, tenant, hard_limit=True)
    await _grant(ctx, env, pid, 50, "a")

    async def one(i):
        try:
            async with ctx.db.unit_of_work() as s:
                return await credits.deduct(s, env, pid, 3 * Q, START, allow_partial=False)
        except InsufficientCredits:
            return 0

    results = await asyncio.gather(*[one(i) for i in range(25)])
    assert sum(results) == 48 * Q and results.count(3 * Q) == 16
    assert (await _pool(ctx, env, pid)).balance_q == 2 * Q
    async with ctx.db.reader() as s:
        n = await s.scalar(select(func.count()).select_from(CreditTransaction))
    assert n == 17
    await _check(ctx, env)


async def test_concurrent_grants_with_one_key_grant_once(ctx, tenant):
    env, _, pid = await _setup(ctx, tenant)
    out = await asyncio.gather(*[_grant(ctx, env, pid, 10, "same") for _ in range(10)])
    assert sum(g is not None for g in out) == 1
    assert (await _pool(ctx, env, pid)).balance_q == 10 * Q
    await _check(ctx, env)


async def test_savepoint_rolls_back_with_the_unit_of_work(ctx, tenant):
    """Regression: on SQLite a SAVEPOINT issued first used to become the outer
    transaction, so its RELEASE committed work the unit of work then rolled back."""
    from tanso_mcp.db.models import Feature

    env = tenant.env_ids["test"]
    with pytest.raises(RuntimeError):
        async with ctx.db.unit_of_work() as s:
            async with s.begin_nested():
                s.add(
                    Feature(
                        environment_id=env, key="sp", name="sp", created_at=START, modified_at=START
                    )
                )
            raise RuntimeError("roll back")
    async with ctx.db.reader() as s:
        assert await s.scalar(select(func.count()).select_from(Feature)) == 0
