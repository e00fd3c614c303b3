"""Credit pools, grants and the append-only ledger.

Every function works inside the caller's transaction and never commits.

Invariants (checked by :func:`ledger_problems`, which every credits/billing scenario
test calls at its end):

* a pool's ``balance_q`` equals the sum of its ledger rows' ``amount_q``;
* it also equals the sum of its grants' ``remaining_q`` (voided and expired grants have
  ``remaining_q = 0``);
* ``balance_q = total_granted − total_consumed − total_expired − total_reversed``;
* nothing is ever negative.

How they hold under concurrency:

* a balance changes only in :func:`_move`: one guarded statement
  ``UPDATE credit_pools SET balance_q = balance_q + :delta … WHERE id = :id AND
  balance_q + :delta >= 0`` next to one ledger row, in the same transaction;
* every mutating function first locks the pool row (``SELECT … FOR UPDATE`` on
  PostgreSQL; SQLite serialises writers itself), so grant remainders are read and
  changed by one transaction at a time per pool; the grant updates are guarded too
  (``remaining_q >= :take``), so a lost race raises instead of corrupting anything;
* a grant is issued exactly once per idempotency key through the unique constraint
  ``(environment_id, idempotency_key)`` and ``INSERT … ON CONFLICT DO NOTHING``: no
  exception, no savepoint, and a concurrent duplicate waits for the first and then
  does nothing.

Ledger types used: ``GRANT`` (+), ``DEDUCTION`` (−, usage), ``EXPIRATION`` (−, expiry and
rollover), ``REVERSAL`` (−, claw-back of plan-included credits on cancellation; counted
in ``total_reversed``).

Rollover (decision): a denomination's rollover policy applies to the *plan-included*
credits of the subscription that renews (including plan credits carried over before);
purchased, promotional and manual credits keep their own ``expiresAt`` and are never
expired by a rollover. ``NONE`` expires all of them, ``CAPPED`` what exceeds the cap
(oldest first), ``FULL`` nothing. Carried credits stay ``PLAN_INCLUDED`` grants, so an
immediate cancellation claws them back too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.engine import rowcount
from ..db.guards import in_environment
from ..db.models import (
    CreditGrant,
    CreditPool,
    CreditPoolSubscription,
    CreditTransaction,
)
from ..db.types import new_id
from ..domain.credits import available_credits, fifo_allocation, plan_draw, rollover_expiry
from ..errors import Conflict, InsufficientCredits, InvalidRequest, NotFound

__all__ = [
    "GRANT_TYPES",
    "ROLLOVER_POLICIES",
    "TOPUP_GRANT_TYPES",
    "ConcurrentCreditChange",
    "apply_rollover",
    "claw_back_subscription",
    "deduct",
    "ensure_pool",
    "expire_due_grants",
    "expire_grant",
    "find_pool",
    "grant",
    "insert_ignore",
    "ledger_problems",
    "link_subscription",
    "lock_pool",
    "plan_included_remaining",
]

GRANT_TYPES = (
    "PLAN_INCLUDED",
    "PURCHASED",
    "PROMOTIONAL",
    "REFUND",
    "SYSTEM",
    "ROLLOVER",
    "MANUAL",
)
TOPUP_GRANT_TYPES = ("PURCHASED", "PROMOTIONAL", "MANUAL")
ROLLOVER_POLICIES = ("NONE", "FULL", "CAPPED")

_TOTALS = {
    "GRANT": CreditPool.total_granted_q,
    "DEDUCTION": CreditPool.total_consumed_q,
    "EXPIRATION": CreditPool.total_expired_q,
    "REVERSAL": CreditPool.total_reversed_q,
}


class ConcurrentCreditChange(Conflict):
    """A guarded credit statement matched nothing although the pool was locked: another
    transaction changed the pool in between (only possible where row locks do not exist).
    The unit of work rolls back; retrying is safe."""


# --------------------------------------------------------------------------- helpers


def expiry_description(g: CreditGrant) -> str:
    return f"expiry of {g.grant_type} grant"


async def insert_ignore(s: AsyncSession, model: Any, values: dict[str, Any]) -> bool:
    """``INSERT … ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL alike. True when the
    row was inserted, False when a unique constraint already held an equal row (or a
    concurrent transaction inserted one first: PostgreSQL waits for it, then skips)."""
    dialect = s.bind.dialect.name if s.bind is not None else "sqlite"
    ins = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    stmt = ins(model).values(**values).on_conflict_do_nothing()
    res = await s.execute(stmt)
    return (rowcount(res) or 0) == 1


async def lock_pool(s: AsyncSession, env_id: str, pool_id: str) -> CreditPool:
    """Load the pool with fresh values and lock its row until the transaction ends."""
    pool = await s.scalar(
        select(CreditPool)
        .where(CreditPool.id == pool_id, CreditPool.environment_id == env_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if pool is None:
        raise NotFound(f"credit pool {pool_id} not found", field="poolId")
    return pool


async def _move(
    s: AsyncSession,
    env_id: str,
    pool: CreditPool,
    delta_q: int,
    tx_type: str,
    now: datetime,
    *,
    grant_id: str | None = None,
    event_id: str | None = None,
    subscription_id: str | None = None,
    description: str | None = None,
) -> tuple[int, int]:
    """The only place a pool balance changes: one guarded UPDATE and one ledger row.
    Returns (balance before, balance after). Raises InsufficientCredits when a debit
    would take the balance below zero."""
    if delta_q == 0:
        raise ValueError("a ledger movement needs a non-zero amount")
    total_col = _TOTALS[tx_type]
    res = await s.execute(
        update(CreditPool)
        .where(
            CreditPool.id == pool.id,
            CreditPool.environment_id == env_id,
            CreditPool.balance_q + delta_q >= 0,
        )
        .values(
            {
                CreditPool.balance_q: CreditPool.balance_q + delta_q,
                total_col: total_col + abs(delta_q),
                CreditPool.modified_at: now,
            }
        )
        .returning(CreditPool.balance_q)
        .execution_options(synchronize_session=False)
    )
    row = res.first()
    if row is None:
        raise InsufficientCredits(
            f"credit pool {pool.denomination} cannot cover {abs(delta_q) / 10000} credits",
            field="amount",
        )
    after = int(row[0])
    before = after - delta_q
    # keep the loaded object in step with the row (no lazy load in async code)
    pool.balance_q = after
    setattr(pool, total_col.key, getattr(pool, total_col.key) + abs(delta_q))
    pool.modified_at = now
    _committed(pool, ("balance_q", total_col.key, "modified_at"))
    await s.execute(
        insert(CreditTransaction).values(
            id=new_id(),
            environment_id=env_id,
            pool_id=pool.id,
            grant_id=grant_id,
            type=tx_type,
            amount_q=delta_q,
            balance_before_q=before,
            balance_after_q=after,
            event_id=event_id,
            subscription_id=subscription_id,
            description=description,
            created_at=now,
        )
    )
    return before, after


def _committed(obj: Any, keys: tuple[str, ...]) -> None:
    """Mark attributes we set by hand as matching the database (no UPDATE at flush)."""
    from sqlalchemy.orm.attributes import set_committed_value

    for key in keys:
        set_committed_value(obj, key, getattr(obj, key))


async def _take_from_grant(s: AsyncSession, grant_id: str, take_q: int) -> None:
    res = await s.execute(
        update(CreditGrant)
        .where(CreditGrant.id == grant_id, CreditGrant.remaining_q >= take_q)
        .values(remaining_q=CreditGrant.remaining_q - take_q)
        .execution_options(synchronize_session=False)
    )
    if (rowcount(res) or 0) != 1:
        raise ConcurrentCreditChange("a credit grant changed concurrently; retry")


def _live_grants_query(env_id: str, pool_id: str):
    return (
        select(CreditGrant)
        .where(
            CreditGrant.environment_id == env_id,
            CreditGrant.pool_id == pool_id,
            CreditGrant.remaining_q > 0,
            CreditGrant.voided_at.is_(None),
        )
        .order_by(CreditGrant.created_at, CreditGrant.id)
        .execution_options(populate_existing=True)
    )


# --------------------------------------------------------------------------- pools


async def find_pool(
    s: AsyncSession, env_id: str, customer_id: str, denomination: str
) -> CreditPool | None:
    return await s.scalar(
        select(CreditPool).where(
            CreditPool.environment_id == env_id,
            CreditPool.customer_id == customer_id,
            CreditPool.denomination == denomination,
        )
    )


async def ensure_pool(
    s: AsyncSession,
    env_id: str,
    customer_id: str,
    denomination: str,
    now: datetime,
    *,
    currency: str | None = None,
    hard_limit: bool | None = None,
    rollover_policy: str | None = None,
    rollover_cap_q: int | None = None,
) -> CreditPool:
    """The customer's pool of ``denomination``, created on first use (race-safe through
    the unique (customer, denomination) constraint). Settings given here are applied to
    an existing pool too (a plan allocation restates its denomination's properties);
    ``None`` keeps what the pool has (defaults on creation: USD, no hard limit, NONE)."""
    if rollover_policy is not None and rollover_policy not in ROLLOVER_POLICIES:
        raise InvalidRequest("rolloverPolicy must be NONE, FULL or CAPPED", field="rolloverPolicy")
    pool = await find_pool(s, env_id, customer_id, denomination)
    if pool is None:
        await insert_ignore(
            s,
            CreditPool,
            new_pool_row(
                env_id,
                customer_id,
                denomination,
                now,
                currency=currency,
                hard_limit=hard_limit,
                rollover_policy=rollover_policy,
                rollover_cap_q=rollover_cap_q,
            ),
        )
        pool = await find_pool(s, env_id, customer_id, denomination)
        assert pool is not None
        return pool
    changes = pool_setting_changes(pool, hard_limit, rollover_policy, rollover_cap_q)
    if changes:
        for k, v in changes.items():
            setattr(pool, k, v)
        pool.modified_at = now
        await s.flush()
    return pool


def pool_setting_changes(
    pool: Any, hard_limit: bool | None, rollover_policy: str | None, rollover_cap_q: int | None
) -> dict[str, Any]:
    """The settings restated for an existing pool that differ from what it has."""
    changes: dict[str, Any] = {}
    if hard_limit is not None and pool.hard_limit != hard_limit:
        changes["hard_limit"] = hard_limit
    if rollover_policy is not None and pool.rollover_policy != rollover_policy:
        changes["rollover_policy"] = rollover_policy
    if rollover_policy is not None and pool.rollover_cap_q != rollover_cap_q:
        changes["rollover_cap_q"] = rollover_cap_q
    return changes


def new_pool_row(
    env_id: str,
    customer_id: str,
    denomination: str,
    now: datetime,
    *,
    currency: str | None,
    hard_limit: bool | None,
    rollover_policy: str | None,
    rollover_cap_q: int | None,
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "environment_id": env_id,
        "customer_id": customer_id,
        "denomination": denomination,
        "name": f"{denomination} - {customer_id}",
        "currency": currency or "USD",
        "balance_q": 0,
        "total_granted_q": 0,
        "total_consumed_q": 0,
        "total_expired_q": 0,
        "total_reversed_q": 0,
        "hard_limit": bool(hard_limit),
        "rollover_policy": rollover_policy or "NONE",
        "rollover_cap_q": rollover_cap_q,
        "status": "ACTIVE",
        "created_at": now,
        "modified_at": now,
    }


async def link_subscription(
    s: AsyncSession, env_id: str, pool_id: str, subscription_id: str
) -> None:
    """Link a pool to a subscription (events of that subscription draw from it); once."""
    await insert_ignore(
        s,
        CreditPoolSubscription,
        {
            "id": new_id(),
            "environment_id": env_id,
            "pool_id": pool_id,
            "subscription_id": subscription_id,
            "total_drawn_q": 0,
        },
    )


# --------------------------------------------------------------------------- grants


async def grant(
    s: AsyncSession,
    env_id: str,
    pool: CreditPool,
    amount_q: int,
    grant_type: str,
    now: datetime,
    *,
    idempotency_key: str,
    expires_at: datetime | None = None,
    subscription_id: str | None = None,
    period_start: datetime | None = None,
    description: str | None = None,
) -> CreditGrant | None:
    """Add ``amount_q`` credits to ``pool``. Exactly once per ``idempotency_key`` in the
    environment: returns None (and changes nothing) when the key was already used."""
    if grant_type not in GRANT_TYPES:
        raise InvalidRequest(
            f"grantType must be one of {', '.join(GRANT_TYPES)}", field="grantType"
        )
    if amount_q <= 0:
        raise InvalidRequest("amount must be greater than 0", field="amount")
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("expiresAt must be in the future", field="expiresAt")
    if not idempotency_key or len(idempotency_key) > 200:
        raise InvalidRequest("idempotencyKey must be 1-200 characters", field="idempotencyKey")
    await lock_pool(s, env_id, pool.id)
    grant_id = new_id()
    inserted = await insert_ignore(
        s,
        CreditGrant,
        {
            "id": grant_id,
            "environment_id": env_id,
            "pool_id": pool.id,
            "grant_type": grant_type,
            "amount_q": amount_q,
            "remaining_q": amount_q,
            "expires_at": expires_at,
            "idempotency_key": idempotency_key,
            "subscription_id": subscription_id,
            "period_start": period_start,
            "description": description,
            "created_at": now,
        },
    )
    if not inserted:
        return None
    await _move(
        s,
        env_id,
        pool,
        amount_q,
        "GRANT",
        now,
        grant_id=grant_id,
        subscription_id=subscription_id,
        description=description or f"{grant_type} grant",
    )
    return await s.get(CreditGrant, grant_id)


async def find_grant_by_key(s: AsyncSession, env_id: str, key: str) -> CreditGrant | None:
    return await s.scalar(
        select(CreditGrant).where(
            CreditGrant.environment_id == env_id, CreditGrant.idempotency_key == key
        )
    )


# --------------------------------------------------------------------------- debits


async def expire_grant(
    s: AsyncSession,
    env_id: str,
    grant_id: str,
    now: datetime,
    *,
    amount_q: int | None = None,
    description: str | None = None,
    pool: CreditPool | None = None,
) -> int:
    """Expire what is left of a grant (or ``amount_q`` of it): its remainder drops and
    the pool loses the same amount with an EXPIRATION row. Returns the amount expired;
    0 when nothing was left (re-running is harmless)."""
    if pool is None:
        pool_id = await s.scalar(
            select(CreditGrant.pool_id).where(
                CreditGrant.id == grant_id, CreditGrant.environment_id == env_id
            )
        )
        if pool_id is None:
            raise NotFound(f"credit grant {grant_id} not found", field="grantId")
        pool = await lock_pool(s, env_id, pool_id)
    # read after the pool lock: nobody else changes this grant until we commit
    g = await s.scalar(
        select(CreditGrant)
        .where(CreditGrant.id == grant_id, CreditGrant.environment_id == env_id)
        .execution_options(populate_existing=True)
    )
    if g is None:
        raise NotFound(f"credit grant {grant_id} not found", field="grantId")
    take = g.remaining_q if amount_q is None else min(amount_q, g.remaining_q)
    if take <= 0 or g.voided_at is not None:
        return 0
    await _take_from_grant(s, g.id, take)
    g.remaining_q -= take
    _committed(g, ("remaining_q",))
    await _move(
        s,
        env_id,
        pool,
        -take,
        "EXPIRATION",
        now,
        grant_id=g.id,
        subscription_id=g.subscription_id,
        description=description or expiry_description(g),
    )
    return take


async def expire_many(
    s: AsyncSession, env_id: str, grant_ids: list[str], now: datetime
) -> list[tuple[CreditGrant, CreditPool, int]]:
    """:func:`expire_grant` (the whole remainder) of several grants whose ``expires_at``
    has passed, in the order given, with a fixed number of statements: the pools are
    locked in id order, each movement's ledger row carries the balance before and after
    it, and the grants, pools and ledger are written with one statement each. Returns
    ``(grant, pool, amount expired)`` of the grants that had something left."""
    grants = {
        g.id: g
        for g in await s.scalars(
            select(CreditGrant)
            .where(
                in_environment(CreditGrant.environment_id, env_id), CreditGrant.id.in_(grant_ids)
            )
            .execution_options(populate_existing=True)
        )
    }
    pools = {
        p.id: p
        for p in await s.scalars(
            select(CreditPool)
            .where(
                in_environment(CreditPool.environment_id, env_id),
                CreditPool.id.in_({g.pool_id for g in grants.values()}),
            )
            .order_by(CreditPool.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    balance = {pid: p.balance_q for pid, p in pools.items()}
    out: list[tuple[CreditGrant, CreditPool, int]] = []
    ledger: list[dict[str, Any]] = []
    for gid in grant_ids:
        g = grants.get(gid)
        if g is None or g.expires_at is None or g.expires_at > now or g.voided_at is not None:
            continue
        take = g.remaining_q
        if take <= 0:
            continue
        before = balance[g.pool_id]
        if before < take:  # grants and balance disagree: never paper over it
            raise ConcurrentCreditChange("credit grants do not cover the pool balance; retry")
        balance[g.pool_id] = before - take
        ledger.append(
            {
                "id": new_id(),
                "environment_id": env_id,
                "pool_id": g.pool_id,
                "grant_id": g.id,
                "type": "EXPIRATION",
                "amount_q": -take,
                "balance_before_q": before,
                "balance_after_q": before - take,
                "event_id": None,
                "subscription_id": g.subscription_id,
                "description": expiry_description(g),
                "created_at": now,
            }
        )
        out.append((g, pools[g.pool_id], take))
    if not out:
        return out
    gt, pt = _table(CreditGrant), _table(CreditPool)
    await s.execute(
        update(gt)
        .where(gt.c.id == bindparam("b_id"), gt.c.remaining_q == bindparam("b_take"))
        .values(remaining_q=0),
        [{"b_id": g.id, "b_take": take} for g, _p, take in out],
    )
    moved = {
        pid: pools[pid].balance_q - q for pid, q in balance.items() if q != pools[pid].balance_q
    }
    await s.execute(
        update(pt)
        .where(pt.c.id == bindparam("b_id"))
        .values(
            balance_q=pt.c.balance_q - bindparam("b_q"),
            total_expired_q=pt.c.total_expired_q + bindparam("b_q"),
            modified_at=now,
        ),
        [{"b_id": pid, "b_q": q} for pid, q in moved.items()],
    )
    await s.execute(_table(CreditTransaction).insert(), ledger)
    for g, _p, take in out:
        g.remaining_q -= take
        _committed(g, ("remaining_q",))
    for pid, q in moved.items():
        p = pools[pid]
        p.balance_q, p.total_expired_q, p.modified_at = p.balance_q - q, p.total_expired_q + q, now
        _committed(p, ("balance_q", "total_expired_q", "modified_at"))
    return out


def _table(model: Any) -> Table:
    return cast(Table, model.__table__)


async def _expire_due_in_pool(
    s: AsyncSession, env_id: str, pool: CreditPool, grants: list[CreditGrant], now: datetime
) -> int:
    total = 0
    for g in grants:
        if g.expires_at is not None and g.expires_at <= now and g.remaining_q > 0:
            total += await expire_grant(s, env_id, g.id, now, pool=pool)
    return total


async def expire_due_grants(s: AsyncSession, env_id: str, pool_id: str, now: datetime) -> int:
    """Expire every grant of the pool whose ``expires_at`` has passed."""
    pool = await lock_pool(s, env_id, pool_id)
    grants = list((await s.scalars(_live_grants_query(env_id, pool_id))).all())
    return await _expire_due_in_pool(s, env_id, pool, grants, now)


async def deduct(
    s: AsyncSession,
    env_id: str,
    pool_id: str,
    amount_q: int,
    now: datetime,
    *,
    allow_partial: bool,
    event_id: str | None = None,
    subscription_id: str | None = None,
    description: str | None = None,
) -> int:
    """Take up to ``amount_q`` credits from the pool by the usage draw
    (:func:`~tanso_mcp.domain.credits.plan_draw`, as ingest does: FIFO over its
    unexpired, unvoided grants) and return what was taken. Grants whose expiry has passed
    are expired first (so usage never eats credits that are no longer valid, even if the
    expiry job has not run yet). Without ``allow_partial``, a pool that cannot cover the
    whole amount raises InsufficientCredits and nothing changes. A non-ACTIVE pool gives
    nothing."""
    if amount_q < 0:
        raise InvalidRequest("amount must not be negative", field="amount")
    pool = await lock_pool(s, env_id, pool_id)
    grants = list((await s.scalars(_live_grants_query(env_id, pool_id))).all())
    await _expire_due_in_pool(s, env_id, pool, grants, now)
    usable = [g for g in grants if g.remaining_q > 0]
    available = available_credits(pool.balance_q, pool.status)
    take = min(amount_q, available)
    if take < amount_q and not allow_partial:
        raise InsufficientCredits(
            f"credit pool {pool.denomination} has {available / 10000} credits; "
            f"{amount_q / 10000} needed",
            field="amount",
        )
    if take <= 0:
        return 0
    plan = plan_draw([(g, g.remaining_q, g.expires_at) for g in usable], take, now)
    if sum(t for _, t in plan) != take:  # grants and balance disagree: never paper over it
        raise ConcurrentCreditChange("credit grants do not cover the pool balance; retry")
    for g, t in plan:
        await _take_from_grant(s, g.id, t)
        g.remaining_q -= t
        _committed(g, ("remaining_q",))
    await _move(
        s,
        env_id,
        pool,
        -take,
        "DEDUCTION",
        now,
        grant_id=plan[0][0].id if len(plan) == 1 else None,
        event_id=event_id,
        subscription_id=subscription_id,
        description=description,
    )
    if subscription_id is not None:
        await s.execute(
            update(CreditPoolSubscription)
            .where(
                CreditPoolSubscription.pool_id == pool.id,
                CreditPoolSubscription.subscription_id == subscription_id,
            )
            .values(total_drawn_q=CreditPoolSubscription.total_drawn_q + take)
            .execution_options(synchronize_session=False)
        )
    return take


def _plan_grants_of(env_id: str, subscription_id: str):
    return (
        select(CreditGrant)
        .where(
            CreditGrant.environment_id == env_id,
            CreditGrant.subscription_id == subscription_id,
            CreditGrant.grant_type == "PLAN_INCLUDED",
            CreditGrant.voided_at.is_(None),
        )
        .order_by(CreditGrant.created_at, CreditGrant.id)
        .execution_options(populate_existing=True)
    )


async def plan_included_remaining(
    s: AsyncSession, env_id: str, subscription_id: str
) -> dict[str, int]:
    """Unused plan-included credits of a subscription, per denomination (what a claw-back
    would take; previews use it)."""
    rows = await s.execute(
        select(CreditPool.denomination, func.sum(CreditGrant.remaining_q))
        .join(CreditPool, CreditPool.id == CreditGrant.pool_id)
        .where(
            CreditGrant.environment_id == env_id,
            CreditGrant.subscription_id == subscription_id,
            CreditGrant.grant_type == "PLAN_INCLUDED",
            CreditGrant.voided_at.is_(None),
            CreditGrant.remaining_q > 0,
        )
        .group_by(CreditPool.denomination)
    )
    return {d: int(q) for d, q in rows if q}


async def claw_back_subscription(
    s: AsyncSession, env_id: str, subscription_id: str, now: datetime
) -> dict[str, int]:
    """Void every plan-included grant of the subscription and take its unused remainder
    back from the pool (REVERSAL rows). Purchased, promotional and manual credits stay.
    Returns the amount taken per denomination. Re-running takes nothing more."""
    grants = list((await s.scalars(_plan_grants_of(env_id, subscription_id))).all())
    out: dict[str, int] = {}
    pools: dict[str, CreditPool] = {}
    # lock every pool first, in id order (the order every multi-pool writer uses, so two
    # of them never wait on each other in a cycle)
    for pool_id in sorted({g.pool_id for g in grants}):
        pools[pool_id] = await lock_pool(s, env_id, pool_id)
    for g in grants:
        pool = pools[g.pool_id]
        await s.refresh(g)
        if g.voided_at is not None:
            continue
        take = g.remaining_q
        res = await s.execute(
            update(CreditGrant)
            .where(
                CreditGrant.id == g.id,
                CreditGrant.voided_at.is_(None),
                CreditGrant.remaining_q == take,
            )
            .values(remaining_q=0, voided_at=now)
            .execution_options(synchronize_session=False)
        )
        if (rowcount(res) or 0) != 1:
            raise ConcurrentCreditChange("a credit grant changed concurrently; retry")
        g.remaining_q, g.voided_at = 0, now
        _committed(g, ("remaining_q", "voided_at"))
        if take > 0:
            await _move(
                s,
                env_id,
                pool,
                -take,
                "REVERSAL",
                now,
                grant_id=g.id,
                subscription_id=subscription_id,
                description="claw back of unused plan-included credits",
            )
            out[pool.denomination] = out.get(pool.denomination, 0) + take
    return out


async def apply_rollover(
    s: AsyncSession,
    env_id: str,
    pool: CreditPool,
    subscription_id: str,
    new_period_start: datetime,
    now: datetime,
    *,
    policy: str | None = None,
    cap_q: int | None = None,
) -> int:
    """Apply the rollover policy to the subscription's plan-included credits of this
    pool issued before ``new_period_start`` (call it at renewal, before the new period's
    grant). Returns the amount expired. Idempotent: a second run finds nothing above the
    policy's limit."""
    pool = await lock_pool(s, env_id, pool.id)
    policy = policy or pool.rollover_policy
    cap_q = cap_q if cap_q is not None else pool.rollover_cap_q
    grants = [
        g
        for g in (
            await s.scalars(
                _plan_grants_of(env_id, subscription_id).where(
                    CreditGrant.pool_id == pool.id,
                    CreditGrant.remaining_q > 0,
                    or_(
                        CreditGrant.period_start.is_(None),
                        CreditGrant.period_start < new_period_start,
                    ),
                )
            )
        ).all()
    ]
    total = 0
    for gid, t in rollover_takes(policy, cap_q, grants):
        total += await expire_grant(
            s,
            env_id,
            gid,
            now,
            amount_q=int(t),
            pool=pool,
            description=rollover_description(policy),
        )
    return total


def rollover_takes(policy: str, cap_q: int | None, grants: list[Any]) -> list[tuple[str, int]]:
    """What a renewal expires of the subscription's carried plan grants (those of one
    pool issued before the new period, oldest first): ``[(grant id, amount)]``."""
    carried = sum(g.remaining_q for g in grants)
    if policy == "CAPPED" and cap_q is None:
        cap_q = 0
    expire = int(rollover_expiry(policy, cap_q, carried))
    if expire <= 0:
        return []
    return [
        (gid, int(t))
        for gid, t in fifo_allocation(
            [(g.id, g.remaining_q, (g.created_at, g.id)) for g in grants], expire
        )
    ]


def rollover_description(policy: str) -> str:
    return f"rollover {policy}: plan credits not carried into the new period"


# --------------------------------------------------------------------------- checks


@dataclass
class _PoolCheck:
    pool: CreditPool
    ledger_sum: int = 0
    grant_sum: int = 0


async def ledger_problems(s: AsyncSession, env_id: str) -> list[str]:
    """Every broken credit invariant in the environment, as readable sentences (empty
    when all hold). Tests call it at the end of each credits/billing scenario."""
    problems: list[str] = []
    pools = (
        await s.scalars(
            select(CreditPool)
            .where(CreditPool.environment_id == env_id)
            .execution_options(populate_existing=True)
        )
    ).all()
    # the sums of every pool at once (a per-pool query made a large environment's check
    # cost a round trip per pool)
    ledger: dict[str, int] = {}
    by_type: dict[tuple[str, str], int] = {}
    for pid, tx_type, total in await s.execute(
        select(
            CreditTransaction.pool_id,
            CreditTransaction.type,
            func.coalesce(func.sum(CreditTransaction.amount_q), 0),
        )
        .where(
            CreditTransaction.pool_id.in_(
                select(CreditPool.id).where(CreditPool.environment_id == env_id)
            )
        )
        .group_by(CreditTransaction.pool_id, CreditTransaction.type)
    ):
        by_type[(pid, tx_type)] = int(total)
        ledger[pid] = ledger.get(pid, 0) + int(total)
    grant_sums = {
        pid: (int(rem), int(amt))
        for pid, rem, amt in await s.execute(
            select(
                CreditGrant.pool_id,
                func.coalesce(func.sum(CreditGrant.remaining_q), 0),
                func.coalesce(func.sum(CreditGrant.amount_q), 0),
            )
            .where(
                CreditGrant.pool_id.in_(
                    select(CreditPool.id).where(CreditPool.environment_id == env_id)
                )
            )
            .group_by(CreditGrant.pool_id)
        )
    }
    for p in pools:
        ledger_sum = ledger.get(p.id, 0)
        grants = grant_sums.get(p.id, (0, 0))
        name = f"pool {p.denomination} of customer {p.customer_id}"
        if p.balance_q < 0:
            problems.append(f"{name}: negative balance {p.balance_q}")
        if ledger_sum != p.balance_q:
            problems.append(f"{name}: balance {p.balance_q} != ledger sum {ledger_sum}")
        if grants[0] != p.balance_q:
            problems.append(f"{name}: balance {p.balance_q} != grant remainders {grants[0]}")
        if grants[1] != p.total_granted_q:
            problems.append(
                f"{name}: total granted {p.total_granted_q} != grant amounts {grants[1]}"
            )
        net = p.total_granted_q - p.total_consumed_q - p.total_expired_q - p.total_reversed_q
        if net != p.balance_q:
            problems.append(f"{name}: totals give {net}, balance is {p.balance_q}")
        for tx_type, col in _TOTALS.items():
            sign = 1 if tx_type == "GRANT" else -1
            total = by_type.get((p.id, tx_type), 0)
            if sign * total != getattr(p, col.key):
                problems.append(
                    f"{name}: {col.key} {getattr(p, col.key)} != Σ {tx_type} {sign * total}"
                )
    bad_rows = (
        await s.execute(
            select(CreditTransaction.id, CreditTransaction.type).where(
                CreditTransaction.environment_id == env_id,
                or_(
                    CreditTransaction.balance_before_q + CreditTransaction.amount_q
                    != CreditTransaction.balance_after_q,
                    CreditTransaction.balance_after_q < 0,
                    CreditTransaction.balance_before_q < 0,
                    and_(CreditTransaction.type == "GRANT", CreditTransaction.amount_q <= 0),
                    and_(CreditTransaction.type != "GRANT", CreditTransaction.amount_q >= 0),
                ),
            )
        )
    ).all()
    for tid, ttype in bad_rows:
        problems.append(f"ledger row {tid} ({ttype}) is inconsistent")
    bad_grants = (
        await s.execute(
            select(CreditGrant.id).where(
                CreditGrant.environment_id == env_id,
                or_(
                    CreditGrant.remaining_q < 0,
                    CreditGrant.remaining_q > CreditGrant.amount_q,
                    and_(CreditGrant.voided_at.is_not(None), CreditGrant.remaining_q != 0),
                ),
            )
        )
    ).all()
    for (gid,) in bad_grants:
        problems.append(f"grant {gid} has an impossible remainder")
    return problems
