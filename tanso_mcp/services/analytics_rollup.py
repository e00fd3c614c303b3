"""The analytics rollup and the exact reads over it.

Every margin view is ``rollup up to the watermark + raw events past it``, read in **one
SQL statement** (so in one snapshot, on SQLite and PostgreSQL alike): a view equals the
sum of its events to the micro-unit at any moment, also while events arrive and while
the rollup job runs.

The watermark must never pass an event that could still commit below it:

- **SQLite** orders events by ``rowid``. Writers hold the database write lock from
  ``BEGIN IMMEDIATE`` to ``COMMIT`` and events are never deleted, so rowids are assigned
  in commit order: once the job (itself holding the write lock) has seen ``max(rowid)``,
  no later commit can land below it.
- **PostgreSQL** orders events by ``tx_seq``, the id of the writing transaction (a
  column default). The job advances the watermark only up to the oldest transaction
  still running (``pg_snapshot_xmin``): every event below it belongs to a finished
  transaction, so it is either visible or never will be.

The rollup holds CLIENT_TRACKED events (the only kind that carries usage, cost and
revenue) at three grains (hour, day, calendar month; UTC), each as several row sets:
every dimension (customer-scoped reads filter it through the customer index), each
dimension alone and totals (a grouped view reads a few rows per bucket). A window is
read from the coarsest grains that fit it (``domain.analytics.decompose``). The job
runs in bounded chunks so it never holds SQLite's write lock for long; several
processes may run it at once (SQLite serialises them; PostgreSQL locks the watermark
row).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ..domain.analytics import DAY, HOUR, MONTH, Sums, hour_start
from .jobs import JobRegistry

if TYPE_CHECKING:
    from ..bootstrap import AppContext

log = logging.getLogger("tanso_mcp.analytics")

WATERMARK = "events"
CHUNK_EVENTS = 50_000  # SQLite: rowids per job transaction
CHUNK_TXIDS = 2_000  # PostgreSQL: transaction ids per job transaction
JOB = "analytics.rollup"

_SUMS = "events, usage_q, revenue_micros, cost_micros, costed_events, unknown_model_events"
_RAW_SUMS = (
    "1, usage_q, COALESCE(revenue_micros, 0), COALESCE(cost_micros, 0), "
    "CASE WHEN cost_micros IS NULL THEN 0 ELSE 1 END, "
    "CASE WHEN model IS NOT NULL AND cost_source IS NULL THEN 1 ELSE 0 END"
)
_RAW_DIMS = {
    "customer": "customer_id",
    "feature": "COALESCE(feature_id, '')",
    "model": "COALESCE(model, '')",
    "subscription": "COALESCE(subscription_id, '')",
    None: "''",
}
_ROLLUP_DIMS = {
    "customer": "customer_id",
    "feature": "feature_id",
    "model": "model",
    "subscription": "subscription_id",
    None: "''",
}


def _seq(dialect: str) -> str:
    return "rowid" if dialect == "sqlite" else "tx_seq"


def _events_table(dialect: str) -> str:
    # SQLite: read past the watermark by rowid range only, never through an index over
    # the whole environment
    return "events NOT INDEXED" if dialect == "sqlite" else "events"


def _bucket_sql(dialect: str, grain: str) -> str:
    if dialect == "sqlite":
        if grain == MONTH:
            return "CAST(strftime('%s', substr(occurred_at, 1, 7) || '-01') AS INTEGER) / 3600"
        hour = "CAST(strftime('%s', substr(occurred_at, 1, 13) || ':00:00') AS INTEGER) / 3600"
        return hour if grain == HOUR else f"(({hour}) / 24) * 24"
    unit = {HOUR: "hour", DAY: "day", MONTH: "month"}[grain]
    return f"CAST(EXTRACT(EPOCH FROM date_trunc('{unit}', occurred_at, 'UTC')) AS BIGINT) / 3600"


def db_time(dialect: str, value: datetime) -> Any:
    """A datetime as the events' ``occurred_at`` column stores it."""
    value = value.astimezone(UTC)
    if dialect == "sqlite":
        return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


# --------------------------------------------------------------------------- the job


async def _watermark(s: AsyncSession, lock: bool = False) -> int:
    suffix = " FOR UPDATE" if lock else ""
    value = await s.scalar(
        text(f"SELECT value FROM analytics_state WHERE name = :n{suffix}"), {"n": WATERMARK}
    )
    return int(value) if value is not None else 0


async def _set_watermark(s: AsyncSession, value: int) -> None:
    await s.execute(
        text(
            "INSERT INTO analytics_state (name, value) VALUES (:n, :v) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        ),
        {"n": WATERMARK, "v": value},
    )


# Row sets kept at each grain: '*' every dimension (customer-scoped reads filter it by
# customer), one dimension alone (grouped views read a few rows per bucket), 't' totals.
# The grain column holds time grain + row set, e.g. 'dc' = daily rows by customer.
ROW_SETS = {
    "*": ("customer_id", "feature_id", "model", "subscription_id"),
    "c": ("customer_id",),
    "f": ("feature_id",),
    "o": ("model",),
    "s": ("subscription_id",),
    "t": (),
}
ROW_SET_OF_DIM = {"customer": "c", "feature": "f", "model": "o", "subscription": "s", None: "t"}
_DIM_COLUMNS = ("customer_id", "feature_id", "model", "subscription_id")


def _from_hour_sql(dialect: str, grain: str) -> str:
    """Bucket start (epoch hour) of the staged epoch hour ``h`` at ``grain``."""
    if grain == HOUR:
        return "h"
    if grain == DAY:
        return "(h / 24) * 24"
    if dialect == "sqlite":
        return (
            "CAST(strftime('%s', datetime(h * 3600, 'unixepoch', 'start of month')) "
            "AS INTEGER) / 3600"
        )
    return (
        "CAST(EXTRACT(EPOCH FROM date_trunc('month', to_timestamp(h * 3600), 'UTC')) "
        "AS BIGINT) / 3600"
    )


async def _roll(s: AsyncSession, dialect: str, lo: int, hi: int) -> None:
    """Add the CLIENT_TRACKED events with ``lo <= seq < hi`` to every grain and row set:
    the chunk is first summed per (hour, all dimensions) into a staging table, and every
    rollup row is derived from that small table."""
    seq = _seq(dialect)
    if dialect == "sqlite":
        await s.execute(
            text(
                "CREATE TEMP TABLE IF NOT EXISTS analytics_stage (environment_id TEXT, "
                "h INTEGER, customer_id TEXT, feature_id TEXT, model TEXT, "
                f"subscription_id TEXT, {_SUMS.replace(',', ' INTEGER,')} INTEGER)"
            )
        )
        await s.execute(text("DELETE FROM analytics_stage"))
    else:
        await s.execute(
            text(
                "CREATE TEMP TABLE IF NOT EXISTS analytics_stage (environment_id TEXT, "
                "h BIGINT, customer_id TEXT, feature_id TEXT, model TEXT, "
                f"subscription_id TEXT, {_SUMS.replace(',', ' BIGINT,')} BIGINT) "
                "ON COMMIT DELETE ROWS"
            )
        )
    if dialect == "sqlite":
        # group by the stored text's hour prefix; the epoch hour is computed per group
        hour_key, hour_of_key = (
            "substr(occurred_at, 1, 13)",
            "CAST(strftime('%s', hk || ':00:00') AS INTEGER) / 3600",
        )
    else:
        hour_key, hour_of_key = _bucket_sql(dialect, HOUR), "hk"
    await s.execute(
        text(
            f"INSERT INTO analytics_stage SELECT environment_id, {hour_of_key}, customer_id, "
            f"f, m, sub, {_SUMS} FROM (SELECT environment_id, {hour_key} AS hk, customer_id, "
            "COALESCE(feature_id, '') AS f, COALESCE(model, '') AS m, "
            "COALESCE(subscription_id, '') AS sub, COUNT(*) AS events, SUM(usage_q) AS usage_q, "
            "COALESCE(SUM(revenue_micros), 0) AS revenue_micros, "
            "COALESCE(SUM(cost_micros), 0) AS cost_micros, COUNT(cost_micros) AS costed_events, "
            "SUM(CASE WHEN model IS NOT NULL AND cost_source IS NULL THEN 1 ELSE 0 END) "
            f"AS unknown_model_events FROM {_events_table(dialect)} "
            f"WHERE {seq} >= :lo AND {seq} < :hi AND event_type = 'CLIENT_TRACKED' "
            "GROUP BY 1, 2, 3, 4, 5, 6) g"
        ),
        {"lo": lo, "hi": hi},
    )
    sums = ", ".join(f"SUM({c})" for c in _SUMS.split(", "))
    updates = ", ".join(f"{c} = analytics_rollup.{c} + excluded.{c}" for c in _SUMS.split(", "))
    for grain in (HOUR, DAY, MONTH):
        for code, dims in ROW_SETS.items():
            cols = ", ".join(c if c in dims else "''" for c in _DIM_COLUMNS)
            await s.execute(
                text(
                    "INSERT INTO analytics_rollup (environment_id, grain, bucket, customer_id, "
                    f"feature_id, model, subscription_id, {_SUMS}) "
                    f"SELECT environment_id, '{grain}{code}', {_from_hour_sql(dialect, grain)}, "
                    f"{cols}, {sums} FROM analytics_stage WHERE 1 = 1 "
                    "GROUP BY 1, 2, 3, 4, 5, 6, 7 "
                    "ON CONFLICT (environment_id, grain, bucket, customer_id, feature_id, model, "
                    f"subscription_id) DO UPDATE SET {updates}"
                )
            )


async def roll_up_chunk(s: AsyncSession) -> bool:
    """One bounded step of the rollup inside the caller's unit of work (a writer
    transaction). Returns whether there may be more to do."""
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        low = await _watermark(s)
        top = await s.scalar(text("SELECT MAX(rowid) FROM events"))
        if top is None or top < low:
            return False
        hi = min(int(top) + 1, low + CHUNK_EVENTS)
        await _roll(s, dialect, low, hi)
        await _set_watermark(s, hi)
        return hi <= int(top)
    await s.execute(
        text(
            "INSERT INTO analytics_state (name, value) VALUES (:n, 0) ON CONFLICT (name) DO NOTHING"
        ),
        {"n": WATERMARK},
    )
    low = await _watermark(s, lock=True)
    safe = int(await s.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")))
    first = await s.scalar(text("SELECT MIN(tx_seq) FROM events WHERE tx_seq >= :w"), {"w": low})
    if first is None or int(first) >= safe:
        if safe > low:
            await _set_watermark(s, safe)
        return False
    hi = min(safe, int(first) + CHUNK_TXIDS)
    await _roll(s, dialect, low, hi)
    await _set_watermark(s, hi)
    return hi < safe


async def roll_up(ctx: AppContext, max_chunks: int = 1_000) -> int:
    """Bring the rollup up to date (each chunk its own transaction). Returns the number
    of chunks written."""
    done = 0
    while done < max_chunks:
        async with ctx.db.unit_of_work() as s:
            more = await roll_up_chunk(s)
        done += 1
        if not more:
            break
    return done


async def pending(s: AsyncSession) -> bool:
    """Whether events wait past the watermark (cheap: one index probe)."""
    dialect = s.get_bind().dialect.name
    low = await _watermark(s)
    if dialect == "sqlite":
        top = await s.scalar(text("SELECT MAX(rowid) FROM events"))
        return top is not None and int(top) >= low
    found = await s.scalar(text("SELECT tx_seq FROM events WHERE tx_seq >= :w LIMIT 1"), {"w": low})
    return found is not None


def register(registry: JobRegistry) -> None:
    """The rollup is one job for the whole database: it runs when any environment's
    jobs run and finds events past the watermark."""

    async def find_due(s: AsyncSession, env: str, until: datetime, limit: int):
        if await pending(s):
            return [registry.item(JOB, until, "rollup")]
        return []

    async def run(s: AsyncSession, ctx: AppContext, env: str, key: str, now: datetime):
        # the item's own unit of work takes the first chunk; the rest follow in theirs
        if await roll_up_chunk(s):

            async def rest() -> None:
                await roll_up(ctx)

            from ..db.engine import after_commit

            after_commit(s, rest)

    registry.register(JOB, find_due, run)


# --------------------------------------------------------------------------- reads


def _arms(
    dialect: str,
    dim: str | None,
    with_bucket: bool,
    parts: list[tuple[str, int, int]],
    params: dict[str, Any],
    where: str,
) -> list[str]:
    arms = []
    col = _ROLLUP_DIMS[dim]
    row_set = "*" if where else ROW_SET_OF_DIM[dim]
    for n, (grain, lo, hi) in enumerate(parts):
        params[f"g{n}"], params[f"lo{n}"], params[f"hi{n}"] = grain + row_set, lo, hi
        bucket = "bucket" if with_bucket else "0"
        arms.append(
            f"SELECT {col} AS k, {bucket} AS b, {_SUMS} FROM analytics_rollup "
            f"WHERE environment_id = :env AND grain = :g{n} AND bucket >= :lo{n} "
            f"AND bucket < :hi{n}{where}"
        )
    return arms


async def read_sums(
    s: AsyncSession,
    env: str,
    start: datetime,
    end: datetime,
    *,
    parts: list[tuple[str, int, int]],
    dim: str | None = None,
    with_bucket: bool = False,
    customer_id: str | None = None,
    subscription_id: str | None = None,
    dim_ids: list[str] | None = None,
) -> dict[tuple[str, int], Sums]:
    """Sums of the CLIENT_TRACKED events of ``env`` with ``start <= occurredAt < end``,
    grouped by ``dim`` (customer|feature|model|subscription, ids; '' = none) and, with
    ``with_bucket``, by the epoch hour each row's bucket starts at.

    ``parts`` are the rollup ranges covering ``[start, end)`` (``domain.analytics``).
    With ``customer_id``, the window may cut hours: the parts then cover the whole
    hours inside it and the cut edges are read from the customer's events (its index).
    """
    dialect = s.get_bind().dialect.name
    seq = _seq(dialect)
    params: dict[str, Any] = {
        "env": env,
        "wm": WATERMARK,
        "t0": db_time(dialect, start),
        "t1": db_time(dialect, end),
    }
    where = ""
    raw_where = ""
    if customer_id is not None:
        params["cid"] = customer_id
        where += " AND customer_id = :cid"
        raw_where += " AND customer_id = :cid"
    if subscription_id is not None:
        params["sid"] = subscription_id
        where += " AND subscription_id = :sid"
        raw_where += " AND subscription_id = :sid"
    raw_dim = _RAW_DIMS[dim]
    if dim_ids is not None:
        # only these keys of ``dim`` (e.g. one page of customers)
        marks = ", ".join(f":k{n}" for n in range(len(dim_ids))) or "NULL"
        params.update({f"k{n}": v for n, v in enumerate(dim_ids)})
        raw_where += f" AND {raw_dim} IN ({marks})"
    arms = _arms(dialect, dim, with_bucket, parts, params, where)
    if dim_ids is not None:
        arms = [f"{arm} AND {_ROLLUP_DIMS[dim]} IN ({marks})" for arm in arms]
    hour = _bucket_sql(dialect, HOUR) if with_bucket else "0"
    watermark = "(SELECT COALESCE(MAX(value), 0) FROM analytics_state WHERE name = :wm)"
    # events not yet rolled up
    arms.append(
        f"SELECT {raw_dim} AS k, {hour} AS b, {_RAW_SUMS} FROM {_events_table(dialect)} "
        f"WHERE {seq} >= {watermark} AND environment_id = :env "
        "AND event_type = 'CLIENT_TRACKED' AND occurred_at >= :t0 AND occurred_at < :t1"
        f"{raw_where}"
    )
    if customer_id is not None:
        # rolled-up events in the cut hours at the window's edges
        covered = sorted((lo, hi) for _, lo, hi in parts)
        edges = _uncovered(covered, start, end)
        for n, (a, b) in enumerate(edges):
            params[f"ea{n}"], params[f"eb{n}"] = db_time(dialect, a), db_time(dialect, b)
            arms.append(
                f"SELECT {raw_dim} AS k, {hour} AS b, {_RAW_SUMS} FROM events "
                "WHERE environment_id = :env AND customer_id = :cid "
                f"AND occurred_at >= :ea{n} AND occurred_at < :eb{n} AND {seq} < {watermark} "
                f"AND event_type = 'CLIENT_TRACKED'{raw_where.replace(' AND customer_id = :cid', '')}"
            )
    sql = (
        "SELECT k, b, SUM(events), SUM(usage_q), SUM(revenue_micros), SUM(cost_micros), "
        "SUM(costed_events), SUM(unknown_model_events) FROM ("
        + " UNION ALL ".join(arms)
        + ") u GROUP BY k, b"
    )
    out: dict[tuple[str, int], Sums] = {}
    for row in (await s.execute(text(sql), params)).all():
        out[(row[0], int(row[1]))] = Sums.of(row[2:])
    return out


def _uncovered(
    covered: Iterable[tuple[int, int]], start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` outside the covered epoch-hour ranges."""
    out: list[tuple[datetime, datetime]] = []
    at = start
    for lo, hi in covered:
        a = hour_start(lo)
        if at < a:
            out.append((at, min(a, end)))
        at = max(at, hour_start(hi))
    if at < end:
        out.append((at, end))
    return out
