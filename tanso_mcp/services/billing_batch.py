"""Set-based renewal: many subscriptions' period rollovers in one unit of work.

The renewal rules are those of :func:`billing.renew` (which stays the path of a failing
batch's items, of renewals that apply a scheduled plan change and of IN_ADVANCE renewals
whose invoice comes to zero); this module only changes how the data moves: everything
a batch needs is read with a handful of set queries (subscriptions, plans, the recorded
period pricing, usage sums, credit links, pools and grants, entitlements), each renewal
is worked out in Python with the same pure rules (next period, invoice lines and
rounding, usage pricing, rollover, plan grants, entitlement reconciliation), and the
results are written with one multi-row statement (or one executemany) per table.

Exactly once: the caller holds the subscriptions' rows (the job claim, ``FOR UPDATE
SKIP LOCKED`` on PostgreSQL; SQLite serialises writers), and they are re-read here
after the claim, so the state each renewal starts from is the committed one. Invoices
and plan grants keep their unique indexes; a batch that meets an existing one raises,
and the job runner re-runs its items one at a time through :func:`billing.renew`.

Pools are locked in id order once per batch (the order every multi-pool writer uses);
their balances are carried in memory from one movement to the next, so the ledger rows
hold the same before/after balances as movements made one at a time.

Handled one at a time, through :func:`billing.renew`, inside the same unit of work: a
renewal that applies a scheduled plan change, and an IN_ADVANCE renewal whose invoice
amounts to 0 (it is settled at once, which grants credits and restores access).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.guards import among, in_environment
from ..db.models import (
    CreditGrant,
    CreditModel,
    CreditPool,
    CreditPoolSubscription,
    CreditTransaction,
    Customer,
    Entitlement,
    Invoice,
    Plan,
    PlanCreditAllocation,
    ScheduledChange,
    Subscription,
)
from ..db.records import record_of
from ..db.types import new_id
from ..domain.periods import start_of_day
from . import catalog, credits
from . import invoices as inv_svc
from . import usage as usage_seam
from .billing import (
    Effects,
    _plan_brief,
    entitlement_changes,
    next_period,
    plan_grant_spec,
    plan_pool_settings,
    renew,
)
from .subscriptions import derive_status, past_due_ids

_RENEWABLE_TYPES = ("IN_ADVANCE_INITIAL", "REGULAR")


def _t(model: Any) -> Table:
    return cast(Table, model.__table__)


SUBS, GRANTS, POOLS, LINKS, LEDGER, ENTS = (
    _t(Subscription),
    _t(CreditGrant),
    _t(CreditPool),
    _t(CreditPoolSubscription),
    _t(CreditTransaction),
    _t(Entitlement),
)


class BatchConflict(Exception):
    """A row the batch meant to create already exists (an invoice or grant of the
    period): the batch is rolled back and its items run one at a time."""


@dataclass
class _Renewal:
    sub: Any  # the subscription's record (read-only row)
    old_plan: Plan
    new_plan: Plan
    old_start: datetime
    old_end: datetime
    new_start: datetime
    new_end: datetime
    status_before: str
    fx: Effects
    invoice: inv_svc.NewInvoice | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _PoolState:
    """A locked pool's balance and totals as the batch moves them."""

    row: Any  # the pool's record (read-only row)
    balance_q: int
    granted_q: int = 0
    expired_q: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


def _insert(s: AsyncSession) -> Any:
    dialect = s.bind.dialect.name if s.bind is not None else "sqlite"
    return pg_insert if dialect == "postgresql" else sqlite_insert


async def _update_rows(
    s: AsyncSession, table: Table, rows: list[dict[str, Any]], build: Callable[[Any], Any]
) -> None:
    """One UPDATE of ``table`` with a value row per target row: ``build(v)`` is the
    statement, ``v.<key>`` a row's value (each key names the column whose type it has;
    every row has the same keys in the same order).
    PostgreSQL: the rows are joined as arrays (``unnest``), one statement executed once
    (an executemany runs it once per row); SQLite: an executemany (in-process, cheap)."""
    keys = list(rows[0])
    if s.bind is not None and s.bind.dialect.name == "postgresql":
        v = (
            func.unnest(
                *(
                    bindparam(f"u_{k}", [r[k] for r in rows], type_=ARRAY(table.c[k].type))
                    for k in keys
                )
            )
            .table_valued(*keys)
            .render_derived(name="v")
        )
        await s.execute(build(v.c))
        return
    names = [f"b_{k}" for k in keys]
    params = SimpleNamespace(
        **{k: bindparam(n, type_=table.c[k].type) for k, n in zip(keys, names, strict=True)}
    )
    await s.execute(build(params), [dict(zip(names, r.values(), strict=True)) for r in rows])


async def renew_many(s: AsyncSession, env: str, sub_ids: list[str], now: datetime) -> list[Effects]:
    """Renew every subscription of ``sub_ids`` that is due at ``now`` (the others are
    skipped, as :func:`billing.renew` skips them). Returns the renewals' effects."""
    if not sub_ids:
        return []
    # records (read-only rows): the batch writes back with Core statements
    subs: list[Any] = list(
        (
            await s.execute(
                select(*record_of(Subscription)).where(
                    in_environment(Subscription.environment_id, env),
                    among(s, Subscription.id, sub_ids),
                )
            )
        ).all()
    )
    order = {sid: n for n, sid in enumerate(sub_ids)}
    subs.sort(key=lambda x: order[x.id])
    subs = [
        x
        for x in subs
        if x.is_active
        and x.ended_at is None
        and x.cancel_mode is None
        and x.current_period_end <= now
        and x.provider_subscription_id is None
    ]
    if not subs:
        return []
    paused = await past_due_ids(s, [x.id for x in subs])
    subs = [x for x in subs if x.id not in paused]
    changes = {
        c.subscription_id: c
        for c in await s.scalars(
            select(ScheduledChange).where(
                among(s, ScheduledChange.subscription_id, [x.id for x in subs]),
                ScheduledChange.status == "PENDING",
            )
        )
    }
    one_by_one = [
        x.id for x in subs if x.id in changes and changes[x.id].effective_at <= x.current_period_end
    ]
    subs = [x for x in subs if x.id not in set(one_by_one)]
    plans = {
        p.id: p for p in await s.scalars(select(Plan).where(Plan.id.in_({x.plan_id for x in subs})))
    }
    briefs = {pid: _plan_brief(p) for pid, p in plans.items()}  # once per plan, not per item
    work: list[_Renewal] = []
    for sub in subs:
        plan = plans[sub.plan_id]
        new_start, new_end = next_period(
            sub.current_period_end, plan.interval_months, sub.billing_anchor_day, now
        )
        fx = Effects(
            action="RENEW",
            subscription_id=sub.id,
            status_before="active",
            plan_before=dict(briefs[plan.id]),
            plan_after=dict(briefs[plan.id]),
            effective_at=new_start,
        )
        work.append(
            _Renewal(
                sub,
                plan,
                plan,
                sub.current_period_start,
                sub.current_period_end,
                new_start,
                new_end,
                derive_status(sub, False),
                fx,
            )
        )
    if work:
        await _invoices(s, env, work, now)
        # an IN_ADVANCE invoice of 0 is settled at once: those renew one at a time
        zero = {
            r.sub.id
            for r in work
            if r.new_plan.billing_timing == "IN_ADVANCE"
            and r.invoice is not None
            and r.invoice.values["amount_minor"] == 0
        }
        if zero:
            one_by_one += [r.sub.id for r in work if r.sub.id in zero]
            work = [r for r in work if r.sub.id not in zero]
    done: list[Effects] = []
    if work:
        await _write(s, env, work, now)
        done += [r.fx for r in work]
    for sid in one_by_one:
        alone = await renew(s, env, sid, now)
        if alone is not None:
            done.append(alone)
    return done


async def _invoices(s: AsyncSession, env: str, work: list[_Renewal], now: datetime) -> None:
    """Each renewal's invoice, as :func:`billing.renew` builds it (not yet written)."""
    # the rules each closing IN_ADVANCE period was priced with, as recorded on its invoice
    advance = [r for r in work if r.old_plan.billing_timing == "IN_ADVANCE"]
    recorded: dict[tuple[str, datetime], tuple[datetime, str, Any]] = {}
    if advance:
        rows = await s.execute(
            select(
                Invoice.subscription_id,
                Invoice.period_start,
                Invoice.created_at,
                Invoice.id,
                Invoice.metadata_,
            ).where(
                among(s, Invoice.subscription_id, [r.sub.id for r in advance]),
                Invoice.type.in_(_RENEWABLE_TYPES),
                Invoice.period_start.in_(sorted({r.old_start for r in advance})),
            )
        )
        for sid, start, created, iid, stored in rows:
            key = (sid, start)
            if key not in recorded or (created, iid) < recorded[key][:2]:
                recorded[key] = (created, iid, stored)
    snapshots = await usage_seam.pricing_snapshots(s, sorted({r.new_plan.id for r in work}))
    for r in work:
        if r.old_plan.billing_timing == "IN_ADVANCE":
            stored = recorded.get((r.sub.id, r.old_start), (None, None, None))[2]
            period = (stored or {}).get("periodPricing") or {}
            rules = period.get("rules") if period.get("planId") == r.old_plan.id else None
            r.windows.append(inv_svc.window(r.old_plan, r.old_start, r.old_end, rules))
    usage = await inv_svc._usage_lines_many(s, [(r.sub, _all_windows(r, snapshots)) for r in work])
    for r, usage_lines in zip(work, usage, strict=True):
        plan = r.new_plan
        lines = [inv_svc.base_line(plan)] if plan.price_minor else []
        meta: dict[str, Any] = {}
        pricing = {"planId": plan.id, "rules": snapshots[plan.id]}
        if plan.billing_timing == "IN_ARREARS":
            meta["segments"] = [inv_svc.segment(plan, r.new_start, r.new_end)]
            status, due = "PENDING", r.new_end
        else:
            meta["periodPricing"] = pricing
            status, due = "DUE", max(r.new_start, start_of_day(now))
        meta["usageWindows"] = _all_windows(r, snapshots)
        r.invoice = inv_svc.build_invoice(
            env,
            now,
            customer_id=r.sub.customer_id,
            subscription_id=r.sub.id,
            type="REGULAR",
            status=status,
            currency=plan.currency,
            due_date=due,
            period_start=r.new_start,
            period_end=r.new_end,
            lines=lines + usage_lines,
            metadata=meta,
        )


def _all_windows(r: _Renewal, snapshots: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The closing IN_ADVANCE period's window, then (IN_ARREARS) the new period's own."""
    out = list(r.windows)
    if r.new_plan.billing_timing == "IN_ARREARS":
        out.append(inv_svc.window(r.new_plan, r.new_start, r.new_end, snapshots[r.new_plan.id]))
    return out


async def _write(s: AsyncSession, env: str, work: list[_Renewal], now: datetime) -> None:
    # 1. the period moves (the rows are held by the claim: the state read is current)
    await _update_rows(
        s,
        SUBS,
        [
            {
                "id": r.sub.id,
                "current_period_start": r.new_start,
                "current_period_end": r.new_end,
                "plan_id": r.new_plan.id,
                "interval_months": r.new_plan.interval_months,
            }
            for r in work
        ],
        lambda v: (
            update(SUBS)
            .where(SUBS.c.id == v.id)
            .values(
                current_period_start=v.current_period_start,
                current_period_end=v.current_period_end,
                plan_id=v.plan_id,
                interval_months=v.interval_months,
                modified_at=now,
            )
        ),
    )
    # 2. credits: rollover of the linked pools, then (IN_ARREARS) the new period's grants
    await _credits(s, env, work, now)
    # 3. invoices and their lines
    new = [r.invoice for r in work if r.invoice is not None]
    inserted = await inv_svc.insert_invoices(s, env, new, now)
    if len(inserted) != len(new):
        raise BatchConflict("an invoice of a renewed period already exists")
    refs = dict(
        (
            await s.execute(
                select(Customer.id, Customer.reference_id).where(
                    among(s, Customer.id, {r.sub.customer_id for r in work})
                )
            )
        ).all()
    )
    for r in work:
        if r.invoice is None:
            continue
        inv = r.invoice.transient()
        r.fx.invoices_created.append(
            inv_svc.invoice_view(inv, r.invoice.rows, refs.get(r.sub.customer_id))
        )
        r.fx.event("invoice.created", invoiceId=inv.id, type="REGULAR", status=inv.status)
    # 4. entitlements
    await _entitlements(s, env, work, now)
    for r in work:
        r.fx.status_after = r.status_before
        r.fx.event(
            "subscription.renewed",
            subscriptionId=r.sub.id,
            periodStart=r.new_start,
            periodEnd=r.new_end,
        )


async def _credits(s: AsyncSession, env: str, work: list[_Renewal], now: datetime) -> None:
    ids = [r.sub.id for r in work]
    links: dict[str, list[str]] = defaultdict(list)
    for pool_id, sid in await s.execute(
        select(CreditPoolSubscription.pool_id, CreditPoolSubscription.subscription_id).where(
            among(s, CreditPoolSubscription.subscription_id, ids)
        )
    ):
        links[sid].append(pool_id)
    arrears_plans = sorted(
        {r.new_plan.id for r in work if r.new_plan.billing_timing == "IN_ARREARS"}
    )
    allocs: dict[str, list[tuple[PlanCreditAllocation, CreditModel]]] = defaultdict(list)
    if arrears_plans:
        for a, m in await s.execute(
            select(PlanCreditAllocation, CreditModel)
            .join(CreditModel, CreditModel.id == PlanCreditAllocation.credit_model_id)
            .where(PlanCreditAllocation.plan_id.in_(arrears_plans))
            .order_by(CreditModel.denomination)
        ):
            if a.credit_amount_q > 0:
                allocs[a.plan_id].append((a, m))
    wanted = {
        (r.sub.customer_id, m.denomination)
        for r in work
        if r.new_plan.billing_timing == "IN_ARREARS"
        for _a, m in allocs.get(r.new_plan.id, [])
    }
    if not links and not wanted:
        return
    # the pools the plan grants go to: created when missing (race-safe by the unique
    # (customer, denomination) constraint)
    by_key: dict[tuple[str, str], str] = {}
    if wanted:
        by_key = await _pool_ids(s, env, wanted)
        missing = wanted - set(by_key)
        if missing:
            first = {}
            for r in work:
                for a, m in allocs.get(r.new_plan.id, []):
                    k = (r.sub.customer_id, m.denomination)
                    if k in missing and k not in first:
                        first[k] = credits.new_pool_row(
                            env,
                            k[0],
                            k[1],
                            now,
                            currency=r.new_plan.currency,
                            **plan_pool_settings(a, m),
                        )
            await s.execute(_insert(s)(POOLS).on_conflict_do_nothing(), list(first.values()))
            by_key = await _pool_ids(s, env, wanted)
    pool_ids = sorted({p for ps in links.values() for p in ps} | set(by_key.values()))
    # lock every pool once, in id order
    pools = {
        p.id: _PoolState(p, p.balance_q)
        for p in await s.execute(
            select(*record_of(CreditPool))
            .where(
                among(s, CreditPool.id, pool_ids), in_environment(CreditPool.environment_id, env)
            )
            .order_by(CreditPool.id)
            .with_for_update()
        )
    }
    grants: dict[tuple[str | None, str], list[Any]] = defaultdict(list)
    if links:
        for g in await s.execute(
            select(*record_of(CreditGrant))
            .where(
                in_environment(CreditGrant.environment_id, env),
                among(s, CreditGrant.subscription_id, list(links)),
                CreditGrant.grant_type == "PLAN_INCLUDED",
                CreditGrant.voided_at.is_(None),
                CreditGrant.remaining_q > 0,
            )
            .order_by(CreditGrant.created_at, CreditGrant.id)
        ):
            grants[(g.subscription_id, g.pool_id)].append(g)
    # remainders as the batch takes from them (the loaded rows are left untouched)
    remaining = {g.id: g.remaining_q for gs in grants.values() for g in gs}
    takes: list[dict[str, Any]] = []
    ledger: list[dict[str, Any]] = []
    new_links: list[dict[str, Any]] = []
    new_grants: list[dict[str, Any]] = []

    def move(st: _PoolState, delta: int, tx_type: str, grant_id: str, sid: str, desc: str):
        before = st.balance_q
        if before + delta < 0:  # the guard of every balance change
            raise credits.ConcurrentCreditChange("a pool cannot cover a rollover; retry")
        st.balance_q = before + delta
        ledger.append(
            {
                "id": new_id(),
                "environment_id": env,
                "pool_id": st.row.id,
                "grant_id": grant_id,
                "type": tx_type,
                "amount_q": delta,
                "balance_before_q": before,
                "balance_after_q": st.balance_q,
                "event_id": None,
                "subscription_id": sid,
                "description": desc,
                "created_at": now,
            }
        )

    for r in work:
        sid = r.sub.id
        for pool_id in sorted(links.get(sid, [])):
            st = pools[pool_id]
            policy = st.settings.get("rollover_policy", st.row.rollover_policy)
            cap = st.settings.get("rollover_cap_q", st.row.rollover_cap_q)
            carried = [
                _Grant(g.id, remaining[g.id], g.created_at)
                for g in grants.get((sid, pool_id), [])
                if (g.period_start is None or g.period_start < r.new_start) and remaining[g.id] > 0
            ]
            expired = 0
            for gid, t in credits.rollover_takes(policy, cap, carried):
                take = min(t, remaining[gid])
                if take <= 0:
                    continue
                remaining[gid] -= take
                takes.append({"id": gid, "remaining_q": take})
                move(st, -take, "EXPIRATION", gid, sid, credits.rollover_description(policy))
                st.expired_q += take
                expired += take
            if expired:
                r.fx.add_credits(r.fx.credits_expired, {st.row.denomination: expired})
        if r.new_plan.billing_timing != "IN_ARREARS":
            continue
        for a, m in allocs.get(r.new_plan.id, []):
            st = pools[by_key[(r.sub.customer_id, m.denomination)]]
            settings = plan_pool_settings(a, m)
            current = {k: st.settings.get(k, getattr(st.row, k)) for k in settings}
            st.settings.update(credits.pool_setting_changes(_Settings(**current), **settings))
            if st.row.id not in links.get(sid, []):
                links[sid].append(st.row.id)
                new_links.append(
                    {
                        "id": new_id(),
                        "environment_id": env,
                        "pool_id": st.row.id,
                        "subscription_id": sid,
                        "total_drawn_q": 0,
                    }
                )
            spec = plan_grant_spec(sid, r.new_plan, a, m, r.new_start, now)
            gid = new_id()
            new_grants.append(
                {
                    "id": gid,
                    "environment_id": env,
                    "pool_id": st.row.id,
                    "grant_type": "PLAN_INCLUDED",
                    "amount_q": a.credit_amount_q,
                    "remaining_q": a.credit_amount_q,
                    "expires_at": spec["expires_at"],
                    "idempotency_key": spec["idempotency_key"],
                    "subscription_id": sid,
                    "period_start": r.new_start,
                    "description": spec["description"],
                    "created_at": now,
                }
            )
            move(st, a.credit_amount_q, "GRANT", gid, sid, spec["description"])
            st.granted_q += a.credit_amount_q
            r.fx.add_credits(r.fx.credits_granted, {m.denomination: a.credit_amount_q})
    # writes: one statement (or one executemany) per table
    if takes:
        # the amount taken, typed as the remainder it comes off
        await _update_rows(
            s,
            GRANTS,
            takes,
            lambda v: (
                update(GRANTS)
                .where(GRANTS.c.id == v.id, GRANTS.c.remaining_q >= v.remaining_q)
                .values(remaining_q=GRANTS.c.remaining_q - v.remaining_q)
            ),
        )
    # a link's draw limit counts the current period's draws: it starts again here
    await s.execute(
        update(CreditPoolSubscription)
        .where(
            among(s, CreditPoolSubscription.subscription_id, ids),
            CreditPoolSubscription.total_drawn_q != 0,
        )
        .values(total_drawn_q=0)
        .execution_options(synchronize_session=False)
    )
    if new_links:
        await s.execute(_insert(s)(LINKS).on_conflict_do_nothing(), new_links)
    if new_grants:
        stmt = _insert(s)(GRANTS).on_conflict_do_nothing().returning(GRANTS.c.id)
        got = (await s.execute(stmt, new_grants)).scalars().all()
        if len(got) != len(new_grants):
            raise BatchConflict("a plan grant of a renewed period already exists")
    changed = [st for st in pools.values() if st.granted_q or st.expired_q or st.settings]
    if changed:
        # the movements, typed as the pool columns they add to
        await _update_rows(
            s,
            POOLS,
            [
                {
                    "id": st.row.id,
                    "balance_q": st.balance_q - st.row.balance_q,
                    "total_granted_q": st.granted_q,
                    "total_expired_q": st.expired_q,
                    "hard_limit": st.settings.get("hard_limit", st.row.hard_limit),
                    "rollover_policy": st.settings.get("rollover_policy", st.row.rollover_policy),
                    "rollover_cap_q": st.settings.get("rollover_cap_q", st.row.rollover_cap_q),
                }
                for st in changed
            ],
            lambda v: (
                update(POOLS)
                .where(POOLS.c.id == v.id)
                .values(
                    balance_q=POOLS.c.balance_q + v.balance_q,
                    total_granted_q=POOLS.c.total_granted_q + v.total_granted_q,
                    total_expired_q=POOLS.c.total_expired_q + v.total_expired_q,
                    hard_limit=v.hard_limit,
                    rollover_policy=v.rollover_policy,
                    rollover_cap_q=v.rollover_cap_q,
                    modified_at=now,
                )
            ),
        )
    if ledger:
        await s.execute(LEDGER.insert(), ledger)


@dataclass
class _Grant:
    id: str
    remaining_q: int
    created_at: datetime


@dataclass
class _Settings:
    hard_limit: bool
    rollover_policy: str
    rollover_cap_q: int | None


async def _pool_ids(
    s: AsyncSession, env: str, wanted: set[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    rows = await s.execute(
        select(CreditPool.customer_id, CreditPool.denomination, CreditPool.id).where(
            CreditPool.environment_id == env,
            among(s, CreditPool.customer_id, {c for c, _d in wanted}),
            CreditPool.denomination.in_({d for _c, d in wanted}),
        )
    )
    return {(c, d): pid for c, d, pid in rows if (c, d) in wanted}


async def _entitlements(s: AsyncSession, env: str, work: list[_Renewal], now: datetime) -> None:
    rules = await catalog.plan_rules(s, sorted({r.new_plan.id for r in work}))
    existing: dict[str, list[Any]] = defaultdict(list)
    for row in await s.execute(
        select(*record_of(Entitlement)).where(
            among(s, Entitlement.subscription_id, [r.sub.id for r in work])
        )
    ):
        existing[row.subscription_id].append(row)
    grant_rows: list[dict[str, Any]] = []
    restore: list[dict[str, Any]] = []
    revoke: list[dict[str, Any]] = []
    owner: dict[tuple[str, str], _Renewal] = {}
    for r in work:
        ch = entitlement_changes(rules[r.new_plan.id], existing.get(r.sub.id, []))
        for fid, key in ch.grant:
            owner[(r.sub.id, fid)] = r
            grant_rows.append(
                {
                    "id": new_id(),
                    "environment_id": env,
                    "customer_id": r.sub.customer_id,
                    "subscription_id": r.sub.id,
                    "feature_id": fid,
                    "feature_key": key,
                    "granted_at": now,
                    "revoked_at": None,
                }
            )
        for e, key in ch.restore:
            if e.revoked_at is not None:
                r.fx.entitlements_granted.append(key)
            restore.append({"b_id": e.id, "b_key": key})
        for e in ch.revoke:
            revoke.append({"b_id": e.id})
            r.fx.entitlements_revoked.append(e.feature_key)
    t = ENTS
    if grant_rows:
        stmt = (
            _insert(s)(t)
            .on_conflict_do_nothing()
            .returning(t.c.subscription_id, t.c.feature_id, t.c.feature_key)
        )
        for sid, fid, key in await s.execute(stmt, grant_rows):
            owner[(sid, fid)].fx.entitlements_granted.append(key)
    if restore:
        await s.execute(
            update(t)
            .where(t.c.id == bindparam("b_id"))
            .values(revoked_at=None, granted_at=now, feature_key=bindparam("b_key")),
            restore,
        )
    if revoke:
        await s.execute(
            update(t)
            .where(t.c.id == bindparam("b_id"), t.c.revoked_at.is_(None))
            .values(revoked_at=now),
            revoke,
        )
