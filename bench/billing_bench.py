"""The billing run at scale: N due subscriptions renewed by one test-clock advance.

    python bench/billing_bench.py --database sqlite+aiosqlite:////tmp/billing.db \
        --subscriptions 10000,100000
    python bench/billing_bench.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/db \
        --reset --subscriptions 10000

The data set is built the way the product builds it, then multiplied: a few template
customers are subscribed through the billing services (IN_ADVANCE plans paid, with plan
credits under CAPPED rollover; IN_ARREARS plans with plan credits under NONE and FULL
rollover; metered usage on most of them, priced per unit; some plan credits consumed),
and their rows (customer, subscription, entitlements, invoices and lines, credit pools,
links, grants, ledger, usage events) are copied with fresh ids until there are N
subscriptions, all in the same period (their usage events already rolled up into the
analytics tables, as the serve loop keeps them). The timed part is the advance of the test clock
to the end of that period, as ``POST /test-clock/advance`` runs it: every due job —
the IN_ARREARS invoices becoming DUE (recomputed with their usage) and every renewal
(rollover, new invoice with the closed period's usage, plan credits) — in time order.
It prints the time, the subscriptions renewed per second, this process's CPU time, the
statements and commits, the load average over the run (1-minute figure before and after:
the machine is shared) and checks the result (every subscription renewed exactly once,
the credit ledger consistent).

SQLite: the file is deleted first. PostgreSQL: the database must be empty, or give
``--reset`` to drop and recreate its ``public`` schema (everything in it is lost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event, func, select, text  # noqa: E402

from tanso_mcp.bootstrap import build_context  # noqa: E402
from tanso_mcp.db import models as m  # noqa: E402
from tanso_mcp.db.scale import QTY_SCALE  # noqa: E402
from tanso_mcp.db.types import new_id  # noqa: E402
from tanso_mcp.services import (  # noqa: E402
    analytics_rollup,
    billing,
    catalog,
    credits,
    customers,
    jobs,
    tenancy,
)
from tanso_mcp.settings import Settings  # noqa: E402

START = datetime(2026, 1, 15, tzinfo=UTC)
RENEW_AT = datetime(2026, 2, 15, tzinfo=UTC)
METERED = json.dumps(
    {"pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.10"}}
)
# (plan key, price, timing, credit allocation JSON)
PLANS = [
    (
        "adv",
        "20.00",
        "IN_ADVANCE",
        '[{"denomination": "ADV", "creditAmount": 50, "rolloverPolicy": "CAPPED",'
        ' "rolloverCap": 20}]',
    ),
    ("arr", "10.00", "IN_ARREARS", '[{"denomination": "ARR", "creditAmount": 100}]'),
    (
        "arr_full",
        "15.00",
        "IN_ARREARS",
        '[{"denomination": "FULL", "creditAmount": 30, "rolloverPolicy": "FULL"}]',
    ),
]
# per template: (plan key, usage units in the period, credits consumed)
TEMPLATES = [
    ("adv", 37, 12),
    ("adv", 0, 45),
    ("arr", 120, 30),
    ("arr", 0, 0),
    ("arr_full", 15, 10),
    ("adv", 8, 0),
]
# the tables a subscription's data lives in, parents first
TABLES = [
    m.Customer,
    m.Subscription,
    m.Entitlement,
    m.Invoice,
    m.InvoiceItem,
    m.CreditPool,
    m.CreditPoolSubscription,
    m.CreditGrant,
    m.CreditTransaction,
    m.Event,
]
SUFFIXED = {("customers", "reference_id"), ("customers", "email"), ("events", "idempotency_key")}
EMBEDDED = {("credit_grants", "idempotency_key"), ("credit_pools", "name")}


async def fresh_database(url: str, reset: bool) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)  # noqa: ASYNC240 (before any I/O)
        return
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        tables = await conn.scalar(
            text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
        )
        if tables and not reset:
            raise SystemExit(f"{url} is not empty: give --reset to drop its public schema")
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


async def build(ctx: Any, n: int) -> str:
    """The templates through the services, then copies up to ``n`` subscriptions."""
    now = START
    async with ctx.db.unit_of_work() as s:
        _account, envs = await tenancy.create_account(s, "bench", ctx.clocks.system_now())
        env = envs["test"].id
        await ctx.clocks.set_test_clock(s, env, START, frozen=True)
    ctx.clocks.forget(env)
    plans: dict[str, m.Plan] = {}
    async with ctx.db.unit_of_work() as s:
        feature = await catalog.create_feature(s, env, now, key="api_calls", name="API calls")
        for key, price, timing, allocs in PLANS:
            plan = await catalog.create_plan(
                s,
                env,
                now,
                key=key,
                name=key,
                description=f"{key} plan",
                price_amount=price,
                billing_timing=timing,
                interval_months=1,
                credit_allocations=allocs,
            )
            await catalog.link_feature(
                s, env, now, plan_id=plan.id, feature_id=feature.id, value_json=METERED
            )
            await catalog.update_plan(s, env, now, plan.id, status="ACTIVE")
            plans[key] = plan
    for n_t, (key, units, consumed) in enumerate(TEMPLATES):
        async with ctx.db.unit_of_work() as s:
            c = await customers.create_customer(s, env, now, reference_id=f"t{n_t}")
            plan = await s.get(m.Plan, plans[key].id)
            fx = await billing.create_subscription(
                s, env, now, customer=c, plan=plan, grace_days=10, capabilities=frozenset()
            )
            sub_id = fx.subscription_id
            if plan.billing_timing == "IN_ADVANCE":
                await billing.mark_invoice_paid(s, env, fx.invoice.id, now)
        async with ctx.db.unit_of_work() as s:
            if consumed:
                pool = (
                    await s.scalars(select(m.CreditPool).where(m.CreditPool.customer_id == c.id))
                ).one()
                await credits.deduct(
                    s,
                    env,
                    pool.id,
                    consumed * QTY_SCALE,
                    now + timedelta(days=3),
                    allow_partial=False,
                    subscription_id=sub_id,
                )
            for day, share in ((2, 1), (9, 2)) if units else ():
                s.add(
                    m.Event(
                        environment_id=env,
                        idempotency_key=f"e{n_t}-{day}",
                        event_name="api_calls",
                        customer_id=c.id,
                        feature_id=feature.id,
                        subscription_id=sub_id,
                        occurred_at=now + timedelta(days=day),
                        usage_q=units * share * QTY_SCALE // 3,
                        billable_q=units * share * QTY_SCALE // 3,
                        overage_q=units * share * QTY_SCALE // 3,
                        created_at=now + timedelta(days=day),
                    )
                )
    await copy_templates(ctx, env, n)
    return env


async def copy_templates(ctx: Any, env: str, n: int) -> None:
    """Copies of the template rows with fresh ids until there are ``n`` subscriptions."""
    async with ctx.db.reader() as s:
        rows = {
            model.__table__.name: [
                dict(r._mapping)
                for r in await s.execute(
                    select(model.__table__).where(model.__table__.c.environment_id == env)
                )
            ]
            for model in TABLES
        }
    template_ids = [r["id"] for t in rows.values() for r in t]
    copies = n // len(TEMPLATES) - 1
    per_unit = 500  # copies per unit of work
    for first in range(0, copies, per_unit):
        out: dict[str, list[dict[str, Any]]] = {t: [] for t in rows}
        for i in range(first + 1, min(first + per_unit, copies) + 1):
            ids = {old: new_id() for old in template_ids}
            for table, trows in rows.items():
                for r in trows:
                    c = {}
                    for col, v in r.items():
                        if isinstance(v, str):
                            if v in ids:
                                v = ids[v]
                            elif (table, col) in SUFFIXED:
                                v = f"{v}-{i}"
                            elif (table, col) in EMBEDDED:
                                for old in template_ids:
                                    if old in v:
                                        v = v.replace(old, ids[old])
                        c[col] = v
                    out[table].append(c)
        async with ctx.db.unit_of_work() as s:
            for model in TABLES:
                # executemany: one cached statement, multi-row INSERTs underneath
                await s.execute(model.__table__.insert(), out[model.__table__.name])


async def measure(url: str, n: int, reset: bool, analyze: bool = True) -> dict[str, Any]:
    await fresh_database(url, reset)
    ctx = build_context(Settings(database_url=url, jobs_enabled=False))
    try:
        await ctx.migrate()
        t0 = time.perf_counter()
        env = await build(ctx, n)
        built = time.perf_counter() - t0
        # the copied usage events are rolled up into the analytics tables first, as the
        # serve loop does within seconds of their ingestion: the timed run is the
        # billing run alone, not a month's backlog of analytics
        await analytics_rollup.roll_up(ctx, max_chunks=1_000_000)
        if analyze and not url.startswith("sqlite"):
            # a database that grew to this size over months has table statistics
            # (autovacuum analyses a table once a tenth of it changed); a bulk load just
            # before the run has none, and PostgreSQL then plans every per-batch read by
            # id as a scan of the whole table
            async with ctx.db.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("ANALYZE")
        async with ctx.db.reader() as s:
            subs = int(await s.scalar(select(func.count()).select_from(m.Subscription)))
        counts: Counter[str] = Counter()

        def statement(*_a: Any) -> None:
            counts["statements"] += 1

        def commit(*_a: Any) -> None:
            counts["commits"] += 1

        engine = ctx.db.engine.sync_engine
        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine, "commit", commit)
        load0 = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        report = await jobs.run_due_report(ctx, env, until=RENEW_AT, move_clock=True)
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        load1 = os.getloadavg()[0]
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)
        async with ctx.db.reader() as s:
            renewed = int(
                await s.scalar(
                    select(func.count())
                    .select_from(m.Subscription)
                    .where(m.Subscription.current_period_start == RENEW_AT)
                )
            )
            regular = int(
                await s.scalar(
                    select(func.count())
                    .select_from(m.Invoice)
                    .where(m.Invoice.type == "REGULAR", m.Invoice.period_start == RENEW_AT)
                )
            )
            problems = await credits.ledger_problems(s, env)
        return {
            "database": url.split(":", 1)[0],
            "subscriptions": subs,
            "build_s": round(built, 1),
            "run_s": round(took, 2),
            # this process's CPU time (on SQLite the database engine runs in it too): on a
            # shared machine, the part of the wall time that was this run's own work
            "cpu_s": round(cpu, 2),
            "cpu_ms_per_renewal": round(1000 * cpu / max(renewed, 1), 3),
            "load_1min": [round(load0, 2), round(load1, 2)],
            "renewed": renewed,
            "renewals_per_s": round(renewed / took),
            "jobs_done": report.done,
            "jobs_failed": len(report.failed),
            "new_invoices": regular,
            "statements": counts["statements"],
            "commits": counts["commits"],
            "ledger_ok": not problems,
        }
    finally:
        await ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database", required=True, help="sqlite+aiosqlite:///… or postgresql+…")
    ap.add_argument(
        "--subscriptions",
        action="append",
        help="N, or several: 10000,100000 (repeatable; default 10000)",
    )
    ap.add_argument("--reset", action="store_true", help="PostgreSQL: drop the public schema")
    ap.add_argument(
        "--no-analyze",
        action="store_true",
        help="PostgreSQL: run without table statistics (no ANALYZE after the bulk load)",
    )
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    results = []
    sizes = [int(n) for arg in args.subscriptions or ["10000"] for n in arg.split(",") if n]
    for n in sizes:
        r = asyncio.run(measure(args.database, n, args.reset, not args.no_analyze))
        results.append(r)
        ok = r["renewed"] == r["subscriptions"] == r["new_invoices"] and r["ledger_ok"]
        print(
            f"{r['database']:>20}  {r['subscriptions']:>7} subscriptions  "
            f"renewed {r['renewed']} in {r['run_s']:.2f} s = {r['renewals_per_s']:,}/s "
            f"(CPU {r['cpu_s']:.2f} s = {r['cpu_ms_per_renewal']:.2f} ms/renewal; "
            f"load {r['load_1min'][0]:.2f}→{r['load_1min'][1]:.2f})  "
            f"(jobs {r['jobs_done']}, failed {r['jobs_failed']}; {r['statements']} statements, "
            f"{r['commits']} commits; built in {r['build_s']} s)"
            f"  {'OK' if ok else 'CHECK FAILED'}",
            flush=True,
        )
        if not ok:
            print(json.dumps(r, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
