"""Engine, sessions and the unit of work.

Services receive an AsyncSession and never commit; the transport (REST handler, MCP
tool, job runner) opens one unit of work per request and commits it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from sqlalchemy import event, text
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger("tanso_mcp.db")


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE matched (``Session.execute`` is typed as returning a plain
    ``Result``; for these statements it is a ``CursorResult``)."""
    return cast("CursorResult[Any]", result).rowcount


def after_commit(session: AsyncSession, callback: Callable[[], Awaitable[None]]) -> None:
    """Run `callback` after the unit of work that owns `session` commits."""
    session.info.setdefault("after_commit", []).append(callback)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # The sqlite3 driver's own transaction handling emits BEGIN lazily (before the first
    # INSERT/UPDATE/DELETE only). A SAVEPOINT issued first then becomes the outermost
    # transaction and its RELEASE commits: work the unit of work later rolls back would
    # survive. So the driver is told to keep out of it and SQLAlchemy emits BEGIN itself
    # (SQLAlchemy's documented recipe for pysqlite/aiosqlite).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: an acknowledged payment, top-up or invoice survives a power loss, not only a
    # crash of this process (WAL + NORMAL may lose the last commits). About 0.3 ms per
    # write transaction here; the ingest hot path batches its fsyncs (metering writer).
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _sqlite_begin(conn) -> None:
    # Units of work take SQLite's write lock when they start (BEGIN IMMEDIATE): two
    # writers then queue on busy_timeout instead of the later one failing with
    # SQLITE_BUSY_SNAPSHOT when it upgrades a read snapshot that another writer has
    # moved past. Readers begin deferred.
    if conn.get_execution_options().get("tanso_writer"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        # asyncpg's reset-on-release query costs 30-45% throughput; SQLAlchemy's own
        # rollback on return is enough for our one-transaction-per-unit usage.
        pool_reset_on_return="rollback",
    )


class Database:
    def __init__(self, url: str, *, pool_size: int = 10):
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self.writer_sessionmaker = async_sessionmaker(
            self.engine.execution_options(tanso_writer=True), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block exits cleanly, rolled back on error.
        Callbacks registered with `after_commit` run once the commit has succeeded
        (domain events, plugin hooks, calls to external systems)."""
        async with self.writer_sessionmaker() as session:
            async with session.begin():
                yield session
            callbacks = session.info.pop("after_commit", [])
        for cb in callbacks:
            try:
                await cb()
            except Exception:  # a hook must never undo or fail a committed request
                log.exception("after-commit callback failed")

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
