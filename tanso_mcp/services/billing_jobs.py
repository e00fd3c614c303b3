"""Billing and credit jobs on the environment clock.

Each kind finds its due items in the domain tables (so the schedule cannot drift from
the data). Items due at the same instant run in batches (``services/jobs.py``): the batch
claims the rows it writes (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: the subscriptions,
or the pools for expiries), so several processes share the due set without overlap;
each kind also names the customer of each item, so that on PostgreSQL a process runs
two lanes of batches at once, split by customer (``services/jobs.py``).
Renewals, ``invoice.due``, ``invoice.past_due`` and expiries are set-based (a few statements per
table per batch, the same rules as the one-item functions, which stay the path for a
failing batch's items); cancellations run each item
in a savepoint of the batch's unit of work. Every item re-checks its condition and
claims its transition with a conditional UPDATE or under the claim; invoices and grants
are also backed by unique indexes, so several processes running the same items at once
produce each effect once (``tests/test_billing_concurrency.py``).

Kinds, in the order they run when due at the same instant:

1. ``credits.expire``          — a grant's ``expires_at`` passed: EXPIRATION of the rest;
2. ``invoice.past_due``        — DUE invoice past due date + grace: PAST_DUE, entitlements
   revoked, renewal paused;
3. ``invoice.due``             — PENDING invoice reached its due date: recomputed, DUE;
4. ``subscription.cancel``     — END_OF_PERIOD cancellation takes effect;
5. ``subscription.renew``      — period rollover (applies a scheduled plan change first);
6. ``invoice.refresh``         — usage was recorded for the subscription of an open
   (PENDING/DUE) invoice since the invoice was last stored: its amount and lines as of
   now are stored (reads compute them anyway; this keeps the stored amount current).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.guards import among, in_environment
from ..db.models import CreditGrant, CreditPool, Environment, Invoice, Subscription, UsageCounter
from ..principal import Principal
from . import billing, billing_batch
from .jobs import DueItem, JobRegistry
from .subscriptions import past_due_clause

if TYPE_CHECKING:
    from ..context import AppContext

SYSTEM_KEY_ID = "system:jobs"


async def system_principal(s: AsyncSession, env_id: str) -> Principal:
    row = (
        await s.execute(
            select(Environment.account_id, Environment.mode).where(Environment.id == env_id)
        )
    ).one()
    mode: Any = row[1]  # "test" | "live", as stored
    return Principal(
        account_id=row[0], environment_id=env_id, mode=mode, role="admin", key_id=SYSTEM_KEY_ID
    )


async def announce(
    s: AsyncSession, ctx: AppContext, env_id: str, fx: Any, principal: Principal | None = None
) -> None:
    """Record on the job's unit of work: invalidate the environment's caches and emit
    its events after the commit."""
    if fx is None:
        return
    if principal is None:
        principal = await system_principal(s, env_id)

    ctx.changed(s, env_id)
    for name, payload in fx.events:
        ctx.announce(s, name, principal, payload)


async def _announce_all(s: AsyncSession, ctx: AppContext, env: str, done: list[Any]) -> None:
    if done:
        principal = await system_principal(s, env)
        for fx in done:
            await announce(s, ctx, env, fx, principal)


def _batched(run_many: Callable[..., Awaitable[list[Any]]]):
    """A batch runner from a set-based use case: its effects announced after commit."""

    async def run(s: AsyncSession, ctx: AppContext, env: str, keys: list[str], now: datetime):
        done = await run_many(s, env, keys, now)
        await _announce_all(s, ctx, env, done)
        return len(done)

    return run


# -- claims: the rows a batch writes, taken without waiting (PostgreSQL SKIP LOCKED;
# SQLite serialises writers and ignores FOR UPDATE) — a process skips what another one
# is processing. Keys keep their (time) order.


def _keep(keys: list[str], claimed: Any) -> list[str]:
    got = set(claimed)
    return [k for k in keys if k in got]


async def claim_subscriptions(s: AsyncSession, env: str, keys: list[str]) -> list[str]:
    rows = await s.scalars(
        select(Subscription.id)
        .where(in_environment(Subscription.environment_id, env), among(s, Subscription.id, keys))
        .order_by(Subscription.id)
        .with_for_update(skip_locked=True)
    )
    return _keep(keys, rows.all())


async def claim_invoices(s: AsyncSession, env: str, keys: list[str]) -> list[str]:
    """An invoice job writes its subscription first (the billing lock order); an invoice
    without a subscription is claimed by locking the invoice itself."""
    alone = await s.scalars(
        select(Invoice.id)
        .where(
            in_environment(Invoice.environment_id, env),
            among(s, Invoice.id, keys),
            Invoice.subscription_id.is_(None),
        )
        .order_by(Invoice.id)
        .with_for_update(skip_locked=True)
    )
    held = set(alone.all())
    rows = await s.scalars(
        select(Invoice.id)
        .join(Subscription, Subscription.id == Invoice.subscription_id)
        .where(in_environment(Invoice.environment_id, env), among(s, Invoice.id, keys))
        .order_by(Subscription.id)
        .with_for_update(skip_locked=True, of=Subscription)
    )
    return _keep(keys, held.union(rows.all()))


async def claim_grants(s: AsyncSession, env: str, keys: list[str]) -> list[str]:
    """An expiry writes the grant's pool (every pool writer locks pools first)."""
    rows = await s.scalars(
        select(CreditGrant.id)
        .join(CreditPool, CreditPool.id == CreditGrant.pool_id)
        .where(in_environment(CreditGrant.environment_id, env), among(s, CreditGrant.id, keys))
        .order_by(CreditPool.id)
        .with_for_update(skip_locked=True, of=CreditPool)
    )
    return _keep(keys, rows.all())


# -- owners: the customer each key belongs to. A billing job locks nothing beyond its
# claimed rows but that customer's (credit pools, a new pool's unique key), so batches
# of different customers can run at once without waiting for each other.


async def subscription_owners(s: AsyncSession, env: str, keys: list[str]) -> dict[str, str]:
    rows = await s.execute(
        select(Subscription.id, Subscription.customer_id).where(
            in_environment(Subscription.environment_id, env), among(s, Subscription.id, keys)
        )
    )
    return {k: c for k, c in rows}


async def invoice_owners(s: AsyncSession, env: str, keys: list[str]) -> dict[str, str]:
    rows = await s.execute(
        select(Invoice.id, Invoice.customer_id).where(
            in_environment(Invoice.environment_id, env), among(s, Invoice.id, keys)
        )
    )
    return {k: c for k, c in rows}


async def grant_owners(s: AsyncSession, env: str, keys: list[str]) -> dict[str, str]:
    rows = await s.execute(
        select(CreditGrant.id, CreditPool.customer_id)
        .join(CreditPool, CreditPool.id == CreditGrant.pool_id)
        .where(in_environment(CreditGrant.environment_id, env), among(s, CreditGrant.id, keys))
    )
    return {k: c for k, c in rows}


def register(registry: JobRegistry) -> None:
    def item(name: str, at: datetime | None, key: str) -> DueItem:
        assert at is not None  # every finder selects rows whose due time is set
        return registry.item(name, at, key)

    # -- credits.expire -------------------------------------------------------
    async def expire_find(s: AsyncSession, env: str, until: datetime, limit: int):
        rows = await s.execute(
            select(CreditGrant.id, CreditGrant.expires_at)
            .where(
                CreditGrant.environment_id == env,
                CreditGrant.expires_at.is_not(None),
                CreditGrant.expires_at <= until,
                CreditGrant.remaining_q > 0,
                CreditGrant.voided_at.is_(None),
            )
            .order_by(CreditGrant.expires_at)
            .limit(limit)
        )
        return [item("credits.expire", at, gid) for gid, at in rows]

    async def expire_run(s: AsyncSession, ctx: AppContext, env: str, key: str, now: datetime):
        await announce(s, ctx, env, await billing.expire_grant_job(s, env, key, now))

    # -- invoice.past_due -----------------------------------------------------
    async def past_due_find(s: AsyncSession, env: str, until: datetime, limit: int):
        rows = await s.execute(
            select(Invoice.id, Invoice.due_date, Subscription.grace_period_days)
            .join(Subscription, Subscription.id == Invoice.subscription_id)
            .where(
                Invoice.environment_id == env,
                Invoice.status == "DUE",
                Invoice.due_date <= until,
                Subscription.provider_subscription_id.is_(None),
            )
            .order_by(Invoice.due_date)
            .limit(limit)
        )
        out = []
        for iid, due, grace in rows:
            if due is None:
                continue
            at = billing.past_due_at(due, grace)
            if at <= until:
                out.append(item("invoice.past_due", at, iid))
        return out

    async def past_due_run(s: AsyncSession, ctx: AppContext, env: str, key: str, now: datetime):
        await announce(s, ctx, env, await billing.invoice_past_due(s, env, key, now))

    # -- invoice.due ------------------------------------------------------------
    async def due_find(s: AsyncSession, env: str, until: datetime, limit: int):
        rows = await s.execute(
            select(Invoice.id, Invoice.due_date)
            .where(
                Invoice.environment_id == env,
                Invoice.status == "PENDING",
                Invoice.due_date <= until,
                Invoice.provider_invoice_id.is_(None),
            )
            .order_by(Invoice.due_date)
            .limit(limit)
        )
        return [item("invoice.due", at, iid) for iid, at in rows]

    async def due_run(s: AsyncSession, ctx: AppContext, env: str, key: str, now: datetime):
        await announce(s, ctx, env, await billing.invoice_due(s, env, key, now))

    # -- subscription.cancel ----------------------------------------------------
    async def cancel_find(s: AsyncSession, env: str, until: datetime, limit: int):
        rows = await s.execute(
            select(Subscription.id, Subscription.cancel_effective_at)
            .where(
                Subscription.environment_id == env,
                Subscription.cancel_mode == "END_OF_PERIOD",
                Subscription.ended_at.is_(None),
                Subscription.cancel_effective_at <= until,
                Subscription.provider_subscription_id.is_(None),
            )
            .order_by(Subscription.cancel_effective_at)
            .limit(limit)
        )
        return [item("subscription.cancel", at, sid) for sid, at in rows]

    async def cancel_run(s: AsyncSession, ctx: AppContext, env: str, key: str, now: datetime):
        await announce(s, ctx, env, await billing.end_at_period_end(s, env, key, now))

    # -- subscription.renew -----------------------------------------------------
    async def renew_find(s: AsyncSession, env: str, until: datetime, limit: int):
        past_due = past_due_clause(Subscription.id)
        rows = await s.execute(
            select(Subscription.id, Subscription.current_period_end)
            .where(
                Subscription.environment_id == env,
                Subscription.is_active.is_(True),
                Subscription.ended_at.is_(None),
                Subscription.cancel_mode.is_(None),
                Subscription.provider_subscription_id.is_(None),
                Subscription.current_period_end <= until,
                ~past_due,
            )
            .order_by(Subscription.current_period_end)
            .limit(limit)
        )
        return [item("subscription.renew", at, sid) for sid, at in rows]

    async def renew_run(s: AsyncSession, ctx: AppContext, env: str, key: str, now: datetime):
        await announce(s, ctx, env, await billing.renew(s, env, key, now))

    # -- invoice.refresh ---------------------------------------------------------
    async def refresh_find(s: AsyncSession, env: str, until: datetime, limit: int):
        # every ingest that counts usage moves its counter's modified_at (the
        # environment's time); ">=": usage recorded at the very instant of the last
        # store (a test clock standing still) is looked at again
        last_usage = func.max(UsageCounter.modified_at)
        rows = await s.execute(
            select(Invoice.id, last_usage)
            .join(UsageCounter, UsageCounter.subscription_id == Invoice.subscription_id)
            .where(
                Invoice.environment_id == env,
                Invoice.status.in_(("PENDING", "DUE")),
                Invoice.provider_invoice_id.is_(None),
                UsageCounter.modified_at >= Invoice.modified_at,
                UsageCounter.modified_at <= until,
            )
            .group_by(Invoice.id)
            .order_by(last_usage, Invoice.id)
            .limit(limit)
        )
        return [item("invoice.refresh", at, iid) for iid, at in rows]

    async def refresh_run(s: AsyncSession, ctx: AppContext, env: str, key: str, now: datetime):
        await billing.refresh_invoice_job(s, env, key, now)

    registry.register(
        "credits.expire",
        expire_find,
        expire_run,
        claim=claim_grants,
        run_batch=_batched(billing.expire_grants_many),
        owners=grant_owners,
    )
    registry.register(
        "invoice.past_due",
        past_due_find,
        past_due_run,
        claim=claim_invoices,
        run_batch=_batched(billing.invoice_past_due_many),
        owners=invoice_owners,
    )
    registry.register(
        "invoice.due",
        due_find,
        due_run,
        claim=claim_invoices,
        run_batch=_batched(billing.invoice_due_many),
        owners=invoice_owners,
    )
    registry.register(
        "subscription.cancel",
        cancel_find,
        cancel_run,
        batch=True,
        claim=claim_subscriptions,
        owners=subscription_owners,
    )
    registry.register(
        "subscription.renew",
        renew_find,
        renew_run,
        claim=claim_subscriptions,
        run_batch=_batched(billing_batch.renew_many),
        owners=subscription_owners,
    )
    registry.register(
        "invoice.refresh",
        refresh_find,
        refresh_run,
        batch=True,
        claim=claim_invoices,
        owners=invoice_owners,
    )
