"""Margin analytics at scale: builds a SQLite database of N usage events quickly (bulk
``sqlite3`` inserts, not the API), rolls it up, leaves a tail of fresh events past the
watermark (as while events arrive), and times every view.

    python bench/analytics_bench.py                    # 1M and 10M events
    python bench/analytics_bench.py --events 1000000 --reps 7 --keep /tmp/a.db

The data set: one month (January 2026) of events for 2,000 customers (80 % on one of
3 plans, the rest plan-less), 5 features, 8 models (one unknown to the price table),
each customer mostly using one feature and one model; every event has a cost and most
a revenue. Targets: every view ≤ 200 ms at 1M events and ≤ 1 s at 10M (median).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tanso_mcp.bootstrap import build_context  # noqa: E402
from tanso_mcp.clock import FrozenClock  # noqa: E402
from tanso_mcp.services import analytics, tenancy  # noqa: E402
from tanso_mcp.services import analytics_rollup as rollup_module  # noqa: E402
from tanso_mcp.services.analytics_rollup import roll_up  # noqa: E402
from tanso_mcp.settings import Settings  # noqa: E402

MONTH = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
CUSTOMERS = 2000
FEATURES = ["chat", "search", "embed", "summarize", "agent"]
MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "gemini-2.5-flash",
    "deepseek-chat",
    "llama-3.3-70b",
    "in-house-v2",
]
TAIL = 20_000  # events left past the watermark


def ts(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


BASE = 100_000_000  # events generated in Python; larger sets replicate them in SQL


def build(path: str, n_events: int, seed: int = 7) -> tuple[str, dict]:
    """``n_events`` events: up to BASE generated independently, then (beyond it) copies
    of those made by SQLite itself (same customers, features, models and times, new ids
    and keys). Copies would understate the rollup's size, so the default generates all."""
    env, info = _generate(path, min(n_events, BASE), seed)
    if n_events > BASE:
        _replicate(path, n_events)
    return env, info


def _replicate(path: str, n_events: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("DROP INDEX ix_events_env_customer_time")
    base = conn.execute("SELECT MAX(rowid) FROM events").fetchone()[0]
    count, copy = base, 1
    while count < n_events:
        take = min(base, n_events - count)
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO events (id, environment_id, idempotency_key, event_type, event_name, "
            "customer_id, feature_id, subscription_id, occurred_at, usage_q, billable_q, "
            "overage_q, credits_deducted_q, usage_limit_exceeded, revenue_micros, cost_micros, "
            "cost_source, model, created_at) "
            "SELECT printf('r%02d', ?) || substr(id, 4), environment_id, "
            "printf('r%02d', ?) || idempotency_key, event_type, event_name, customer_id, "
            "feature_id, subscription_id, occurred_at, usage_q, billable_q, overage_q, "
            "credits_deducted_q, usage_limit_exceeded, revenue_micros, cost_micros, "
            "cost_source, model, created_at FROM events WHERE rowid <= ?",
            (copy, copy, take),
        )
        conn.execute("COMMIT")
        count += take
        copy += 1
        print(f"  replicated to {count:,} events", flush=True)
    conn.execute(
        "CREATE INDEX ix_events_env_customer_time ON events "
        "(environment_id, customer_id, occurred_at)"
    )
    conn.close()


def _generate(path: str, n_events: int, seed: int) -> tuple[str, dict]:
    ctx = build_context(Settings(database_url=f"sqlite+aiosqlite:///{path}"), FrozenClock(NOW))

    async def setup() -> str:
        await ctx.migrate()
        async with ctx.db.unit_of_work() as s:
            _, envs = await tenancy.create_account(s, "bench", NOW)
        await ctx.close()
        return envs["live"].id

    env = asyncio.run(setup())
    rnd = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    created = ts(MONTH)
    conn.execute("BEGIN")
    feature_ids = []
    for i, key in enumerate(FEATURES):
        fid = f"f0000000-0000-7000-8000-{i:012d}"
        feature_ids.append(fid)
        conn.execute(
            "INSERT INTO features (id, environment_id, key, name, is_enabled, source, metadata, "
            "created_at, modified_at) VALUES (?, ?, ?, ?, 1, 'API', '{}', ?, ?)",
            (fid, env, key, key, created, created),
        )
    plan_ids = []
    for i, (key, price) in enumerate((("starter", 2900), ("pro", 9900), ("scale", 49900))):
        pid = f"p0000000-0000-7000-8000-{i:012d}"
        plan_ids.append(pid)
        conn.execute(
            "INSERT INTO plans (id, environment_id, key, name, price_minor, currency, "
            "interval_months, billing_timing, status, metadata, created_at, modified_at) "
            "VALUES (?, ?, ?, ?, ?, 'USD', 1, 'IN_ADVANCE', 'ACTIVE', '{}', ?, ?)",
            (pid, env, key, key, price, created, created),
        )
    customers = []
    for i in range(CUSTOMERS):
        cid = f"c0000000-0000-7000-8000-{i:012d}"
        sid = None
        conn.execute(
            "INSERT INTO customers (id, environment_id, reference_id, source, metadata, "
            "created_at, modified_at) VALUES (?, ?, ?, 'API', '{}', ?, ?)",
            (cid, env, f"cus_{i:05d}", created, created),
        )
        if rnd.random() < 0.8:
            sid = f"s0000000-0000-7000-8000-{i:012d}"
            conn.execute(
                "INSERT INTO subscriptions (id, environment_id, customer_id, plan_id, "
                "is_active, interval_months, grace_period_days, billing_anchor_day, "
                "started_at, current_period_start, current_period_end, metadata, created_at, "
                "modified_at) VALUES (?, ?, ?, ?, 1, 1, 3, 1, ?, ?, ?, '{}', ?, ?)",
                (
                    sid,
                    env,
                    cid,
                    rnd.choice(plan_ids),
                    created,
                    created,
                    ts(datetime(2026, 2, 1, tzinfo=UTC)),
                    created,
                    created,
                ),
            )
        customers.append((cid, sid, rnd.choice(feature_ids), rnd.choice(MODELS)))
    conn.execute("COMMIT")
    weights = [1 / (i + 1) ** 0.8 for i in range(CUSTOMERS)]
    seconds = int((NOW - MONTH).total_seconds())
    cols = (
        "id, environment_id, idempotency_key, event_type, event_name, customer_id, "
        "feature_id, subscription_id, occurred_at, usage_q, billable_q, overage_q, "
        "credits_deducted_q, usage_limit_exceeded, revenue_micros, cost_micros, cost_source, "
        "model, created_at"
    )
    sql = f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * 19)})"
    # the customer/time index is built once at the end (far faster than row by row)
    conn.execute("DROP INDEX ix_events_env_customer_time")
    t0 = time.perf_counter()
    chunk = 100_000
    done = 0
    while done < n_events:
        n = min(chunk, n_events - done)
        picks = rnd.choices(customers, weights=weights, k=n)
        # events arrive in time order, as they do in production
        lo_s, hi_s = seconds * done // n_events, seconds * (done + n) // n_events
        offsets = sorted(rnd.randrange(lo_s, max(hi_s, lo_s + 1)) for _ in range(n))
        rows = []
        for j in range(n):
            cid, sid, fid, model = picks[j]
            k = done + j
            if rnd.random() < 0.2:
                fid = rnd.choice(feature_ids)
            if rnd.random() < 0.1:
                model = rnd.choice(MODELS)
            usage = rnd.randint(1, 40) * 10_000
            revenue = usage * 10 if sid is not None else (None if rnd.random() < 0.5 else usage * 8)
            known = model != "in-house-v2"
            cost = rnd.randint(500, 200_000) if known else None
            at = MONTH + timedelta(seconds=offsets[j])
            rows.append(
                (
                    f"e{k:035d}",
                    env,
                    f"k{k:012d}",
                    "CLIENT_TRACKED",
                    "call",
                    cid,
                    fid,
                    sid,
                    ts(at),
                    usage,
                    usage,
                    usage,
                    0,
                    0,
                    revenue,
                    cost,
                    "global_model_pricing" if known else None,
                    model,
                    ts(at),
                )
            )
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        done += n
        if done % 1_000_000 == 0 or done == n_events:
            rate = done / (time.perf_counter() - t0)
            print(f"  inserted {done:,} events ({rate:,.0f}/s)", flush=True)
    conn.execute(
        "CREATE INDEX ix_events_env_customer_time ON events "
        "(environment_id, customer_id, occurred_at)"
    )
    conn.close()
    return env, {"customers": customers}


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.1f} ms (max {max(samples) * 1000:.1f})"


VIEWS = [
    ("margins by customer", lambda s, env: analytics.margins(s, env, NOW, group_by="customer")),
    ("margins by feature", lambda s, env: analytics.margins(s, env, NOW, group_by="feature")),
    ("margins by model", lambda s, env: analytics.margins(s, env, NOW, group_by="model")),
    ("margins by plan", lambda s, env: analytics.margins(s, env, NOW, group_by="plan")),
    (
        "margins by customer, Jan 3 12:00 - Jan 20 07:00",
        lambda s, env: analytics.margins(
            s,
            env,
            NOW,
            group_by="customer",
            start=datetime(2026, 1, 3, 12, tzinfo=UTC),
            end=datetime(2026, 1, 20, 7, tzinfo=UTC),
        ),
    ),
    ("customer view (busiest)", lambda s, env: analytics.customer_margin(s, env, NOW, "cus_00000")),
    ("timeseries by day", lambda s, env: analytics.timeseries(s, env, NOW, interval="day")),
    ("timeseries by hour", lambda s, env: analytics.timeseries(s, env, NOW, interval="hour")),
    (
        "timeseries by day, top 10 customers",
        lambda s, env: analytics.timeseries(s, env, NOW, interval="day", group_by="customer"),
    ),
]


async def run_views(path: str, env: str, reps: int) -> dict[str, list[float]]:
    ctx = build_context(Settings(database_url=f"sqlite+aiosqlite:///{path}"), FrozenClock(NOW))
    out: dict[str, list[float]] = {}
    for name, fn in VIEWS:
        samples = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            async with ctx.db.reader() as s:
                await fn(s, env)
            samples.append(time.perf_counter() - t0)
        out[name] = samples[1:]  # the first run warms the page cache
    await ctx.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, action="append", help="events (repeatable)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", help="database path to keep (single --events only)")
    ap.add_argument("--dir", default="/var/tmp", help="where the databases are built")
    ap.add_argument("--build-only", action="store_true", help="build the data sets only")
    args = ap.parse_args()
    sizes = args.events or [1_000_000, 10_000_000]
    results = {}
    for n in sizes:
        tmp = tempfile.mkdtemp(prefix="analytics-bench-", dir=args.dir)
        path = args.keep if args.keep and len(sizes) == 1 else os.path.join(tmp, "a.db")
        print(f"{n:,} events -> {path}", flush=True)
        t0 = time.perf_counter()
        env, _ = build(path, n - TAIL)
        if args.build_only:
            continue
        print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
        ctx_time = time.perf_counter()
        asyncio.run(_rollup(path))
        print(
            f"  rollup of {n - TAIL:,} events: {time.perf_counter() - ctx_time:.1f} s", flush=True
        )
        _append_tail(path, env, n - TAIL)
        results[n] = asyncio.run(run_views(path, env, args.reps))
        for name, samples in results[n].items():
            print(f"  {name:<48} {_ms(samples)}", flush=True)
        if not (args.keep and len(sizes) == 1):
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(path + suffix)
                except FileNotFoundError:
                    pass
    print()
    print("| view | " + " | ".join(f"{n:,} events" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name, _ in VIEWS:
        cells = [f"{statistics.median(results[n][name]) * 1000:.0f} ms" for n in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


async def _rollup(path: str) -> None:
    """The rollup job's own code, in one transaction (the data set is built at once; the
    job itself works in chunks of ``CHUNK_EVENTS``)."""
    rollup_module.CHUNK_EVENTS = 10**12
    ctx = build_context(Settings(database_url=f"sqlite+aiosqlite:///{path}"), FrozenClock(NOW))
    await roll_up(ctx, max_chunks=1_000_000)
    await ctx.close()


def _append_tail(path: str, env: str, start: int) -> None:
    """TAIL more events, written after the rollup ran: the views read them raw."""
    conn = sqlite3.connect(path, isolation_level=None)
    cid = conn.execute("SELECT id FROM customers WHERE reference_id = 'cus_00000'").fetchone()[0]
    rows = []
    for j in range(TAIL):
        k = start + j
        at = ts(NOW - timedelta(minutes=30) + timedelta(milliseconds=j))
        rows.append(
            (
                f"e{k:035d}",
                env,
                f"k{k:012d}",
                "CLIENT_TRACKED",
                "call",
                cid,
                None,
                None,
                at,
                10_000,
                10_000,
                10_000,
                0,
                0,
                100_000,
                20_000,
                "explicit",
                None,
                at,
            )
        )
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (id, environment_id, idempotency_key, event_type, event_name, "
        "customer_id, feature_id, subscription_id, occurred_at, usage_q, billable_q, "
        "overage_q, credits_deducted_q, usage_limit_exceeded, revenue_micros, cost_micros, "
        "cost_source, model, created_at) VALUES (" + ", ".join("?" * 19) + ")",
        rows,
    )
    conn.execute("COMMIT")
    conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
