"""PostgreSQL's own ceiling for batch ingest: how many event rows per second this server
takes into the product's ``events`` table (its indexes, unique key and
``tx_seq`` default, exactly as migrated) with 1000-row binary ``COPY``s, one transaction
per batch as ``POST /events/batch`` writes them, from 1 and 2 concurrent connections, and
no other client work: every batch is encoded before the clock starts.

    python bench/pg_copy_ceiling.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/tanso_x
    python bench/pg_copy_ceiling.py --database … --connections 1,2 --batches 150
    python bench/pg_copy_ceiling.py --database … --breakdown   # what each table feature costs

The rows are the product's (the columns and values the batch writer stores for the
events ``bench/run.py``'s ``ingest_batch`` sends: time-ordered UUIDv7 ids, keys
``<nonce>-<thread>-<counter>-<i>``, one customer, feature and subscription). It works in a
fresh database named after the URL's (``…/tanso_x`` → ``tanso_x_<random>``), migrated to
the product's head and dropped at exit. Besides the wall-clock rate it prints the CPU
the server spent per row: the connections' backends (``/proc/<pid>/stat``, so the
server must be on this machine) and the WAL writer, checkpointer and background writer
— comparable across runs on a busy machine where the rate is not.

``--breakdown`` repeats the one-connection run on copies of the table that each lack
one feature (or add ``COLLATE "C"``), each starting empty: the difference from the
full table is what that feature costs per row.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pg_databases  # noqa: E402

from tanso_mcp.services.metering import sqlio  # noqa: E402
from tanso_mcp.services.metering.batch import _EVENT_COLUMNS  # noqa: E402

BATCH = 1000
# what the batch writer stores for a plain event, encoded by its own COPY encoder
COLUMNS = _EVENT_COLUMNS
_ENCODERS = (sqlio._text,) * 8 + (sqlio._timestamptz,) + (sqlio._int8,) * 4
_ENCODERS += (sqlio._bool, sqlio._int8, sqlio._text, sqlio._timestamptz)
_TICK = os.sysconf("SC_CLK_TCK")

# ----------------------------------------------------------------------- the rows


def _ids(n: int) -> list[str]:
    from tanso_mcp.services.metering.batch import _ids as product_ids

    return product_ids(n)


def _rows(env: str, cust: str, feat: str, sub: str, prefix: str, n: int) -> list[tuple]:
    now = datetime.now(UTC)
    return [
        (i, env, f"{prefix}-{k}", "CLIENT_TRACKED", "api_call", cust, feat, sub, now)
        + (10_000, 10_000, 10_000, 0, False, 1_000, None, now)
        for k, i in enumerate(_ids(n))
    ]


def encode(rows: list[tuple]) -> bytes:
    """A whole binary COPY stream, as the product's batch writer encodes it."""
    data = sqlio._copy_binary(_ENCODERS, rows)
    assert data is not None, "a bench row that the writer's encoder refuses"
    return data


# ----------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Variant:
    name: str
    drop: tuple[
        str, ...
    ] = ()  # features left out: pk, unique, customer_time, tx_seq_index, fk, tx_seq_default
    collate_c: tuple[str, ...] = ()  # columns in COLLATE "C"
    brin_tx_seq: bool = False  # the tx_seq index as BRIN instead of B-tree


_C_COLUMNS = ("id", "environment_id", "idempotency_key", "customer_id")
FEATURES = ("pk", "unique", "customer_time", "tx_seq_index", "fk", "tx_seq_default")
ALL = Variant("events as migrated")
BREAKDOWN = [
    ALL,
    Variant(
        'COLLATE "C" on id, environment_id, idempotency_key, customer_id', collate_c=_C_COLUMNS
    ),
    Variant('COLLATE "C" on id', collate_c=("id",)),
    Variant('COLLATE "C" on idempotency_key', collate_c=("idempotency_key",)),
    Variant("tx_seq index BRIN", brin_tx_seq=True),
    Variant("without FK to environments", drop=("fk",)),
    Variant("without primary key", drop=("pk",)),
    Variant("without unique (env, key)", drop=("unique",)),
    Variant("without (env, customer, time) index", drop=("customer_time",)),
    Variant("without tx_seq index", drop=("tx_seq_index",)),
    Variant("without tx_seq default+index", drop=("tx_seq_default", "tx_seq_index")),
    Variant("heap only (no index, FK, default)", drop=FEATURES),
    Variant('without FK, COLLATE "C" on the four', drop=("fk",), collate_c=_C_COLUMNS),
]


def variant_ddl(table: str, v: Variant) -> list[str]:
    """A copy of ``events`` named ``table`` with the variant's features."""
    out = [
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS)",
    ]
    for col in v.collate_c:
        out.append(
            f'ALTER TABLE {table} ALTER COLUMN {col} TYPE varchar(128) COLLATE "C"'
            if col == "idempotency_key"
            else f'ALTER TABLE {table} ALTER COLUMN {col} TYPE varchar(36) COLLATE "C"'
        )
    if "tx_seq_default" in v.drop:
        out.append(f"ALTER TABLE {table} ALTER COLUMN tx_seq DROP DEFAULT")
    if "pk" not in v.drop:
        out.append(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
    if "unique" not in v.drop:
        out.append(f"ALTER TABLE {table} ADD UNIQUE (environment_id, idempotency_key)")
    if "customer_time" not in v.drop:
        out.append(f"CREATE INDEX ON {table} (environment_id, customer_id, occurred_at)")
    if v.brin_tx_seq:
        out.append(f"CREATE INDEX ON {table} USING brin (tx_seq)")
    elif "tx_seq_index" not in v.drop:
        out.append(f"CREATE INDEX ON {table} (tx_seq) WHERE tx_seq IS NOT NULL")
    if "fk" not in v.drop:
        out.append(
            f"ALTER TABLE {table} ADD FOREIGN KEY (environment_id) REFERENCES environments (id) "
            "ON DELETE CASCADE"
        )
    return out


# ----------------------------------------------------------------------- measuring


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _background_pids(postmaster: int) -> list[int]:
    """The server's WAL writer, checkpointer and background writer."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == postmaster and any(
            w in cmd for w in (b"walwriter", b"checkpointer", b"background writer")
        ):
            found.append(int(entry))
    return found


@dataclass
class Measure:
    rows: int
    wall_s: float
    backend_cpu_s: float
    background_cpu_s: float
    load: float

    @property
    def rate(self) -> float:
        return self.rows / self.wall_s

    def per_row_us(self, cpu: float) -> float:
        return cpu / self.rows * 1e6


async def run(
    dsn: str, table: str, connections: int, batches: int, make: Callable[[int, int], bytes]
) -> Measure:
    import asyncpg

    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    try:
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
        bg = _background_pids(_postmaster(pids[0]))
        # everything encoded before the clock starts
        payloads = [[make(c, b) for b in range(batches)] for c in range(connections)]
        for c, conn in zip(range(connections), conns, strict=True):  # warm-up, untimed
            await _copy(conn, table, make(c, -1))

        async def worker(conn, mine: list[bytes]) -> None:
            for data in mine:
                await _copy(conn, table, data)

        load = os.getloadavg()[0]
        cpu0 = [_cpu(p) for p in pids]
        bg0 = [_cpu(p) for p in bg]
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c, p) for c, p in zip(conns, payloads, strict=True)))
        wall = time.perf_counter() - t0
        cpu = sum(_cpu(p) for p in pids) - sum(cpu0)
        bgcpu = sum(_cpu(p) for p in bg) - sum(bg0)
        return Measure(connections * batches * BATCH, wall, cpu, bgcpu, load)
    finally:
        for c in conns:
            await c.close()


def _postmaster(backend_pid: int) -> int:
    with open(f"/proc/{backend_pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


async def _copy(conn, table: str, data: bytes) -> None:
    async with conn.transaction():  # one transaction per batch, as the product writes
        await conn.copy_to_table(table, source=_Source(data), columns=COLUMNS, format="binary")


class _Source:
    """The encoded batch as the async iterable asyncpg's copy_to_table reads."""

    def __init__(self, data: bytes):
        self.data = data

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        yield self.data


# ----------------------------------------------------------------------- setup


async def prepare(dsn: str) -> tuple[str, str, str, str]:
    """Migrate the fresh database; an account and environment (the FK's target)."""
    import asyncpg
    from sqlalchemy.ext.asyncio import create_async_engine

    from tanso_mcp.db.migrate import upgrade

    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    env, acct = str(uuid.uuid4()), str(uuid.uuid4())
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        await conn.execute(
            "INSERT INTO accounts (id, name, created_at) VALUES ($1, 'ceiling', $2)", acct, now
        )
        await conn.execute(
            "INSERT INTO environments (id, account_id, mode, payment_provider, stripe_mode, "
            "currency, settings, created_at) VALUES ($1, $2, 'test', 'none', 'NONE', 'USD', "
            "'{}', $3)",
            env,
            acct,
            now,
        )
    finally:
        await conn.close()
    return env, str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--database",
        required=True,
        help="postgresql+asyncpg://… (a fresh database named after it is created and dropped)",
    )
    p.add_argument("--connections", default="1,2", help="comma list (default 1,2)")
    p.add_argument("--batches", type=int, default=100, help="1000-row COPYs per connection")
    p.add_argument("--breakdown", action="store_true", help="cost of each table feature")
    args = p.parse_args(argv)
    url = pg_databases.fresh(args.database)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    env, cust, feat, sub = asyncio.run(prepare(dsn))
    nonce = uuid.uuid4().hex[:8]
    runs = itertools.count()

    def make(conn: int, batch: int) -> bytes:
        # keys like the bench's `<nonce>-<thread>-<counter>-<i>`, new for every batch
        prefix = f"{nonce}{next(runs)}-{conn + 1}-{batch + 2}"
        return encode(_rows(env, cust, feat, sub, prefix, BATCH))

    def show(label: str, m: Measure) -> None:
        print(
            f"| {label} | {m.rate:,.0f} | {m.per_row_us(m.backend_cpu_s):.1f} | "
            f"{m.per_row_us(m.background_cpu_s):.1f} | "
            f"{1e6 / m.per_row_us(m.backend_cpu_s + m.background_cpu_s):,.0f} | {m.load:.2f} |",
            flush=True,
        )

    print(f"PostgreSQL COPY ceiling, {BATCH}-row binary COPYs, one transaction each")
    print(
        "| run | rows/s (wall) | backend µs/row | WAL/bg µs/row | rows/s per server core | load |"
    )
    print("|---|---|---|---|---|---|")
    if args.breakdown:
        for k, v in enumerate(BREAKDOWN):
            table = f"ev_{k}"

            async def setup(ddl=variant_ddl(table, v)) -> None:
                import asyncpg

                conn = await asyncpg.connect(dsn)
                try:
                    for stmt in ddl:
                        await conn.execute(stmt)
                finally:
                    await conn.close()

            asyncio.run(setup())
            show(f"1 conn, {v.name}", asyncio.run(run(dsn, table, 1, args.batches, make)))
        return 0
    for n in (int(x) for x in args.connections.split(",")):
        show(f"{n} conn, events", asyncio.run(run(dsn, "events", n, args.batches, make)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
