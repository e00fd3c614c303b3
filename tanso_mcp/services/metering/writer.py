"""Group commit for usage events.

Every ingest (a single event, a batch, an entitlement audit record) is handed to one
writer per process as a *unit*. The writer takes the first waiting unit, drains whatever
else is queued at that moment (up to ``max_events``), writes them all in **one
transaction** (:func:`.batch.process_batch`), commits, publishes the committed counters
and balances to the in-process cache, and only then answers each unit. While a
transaction is committing, new requests queue up and form the next batch, so batches
grow with the load and there is no timer to wait for: at low load an event commits
alone. Every acknowledged event is durable: the answer is sent after the commit, and on
SQLite the writer's connection runs ``synchronous=FULL`` (an fsync per batch, so an
acknowledged event survives a power cut as well as a crash).

Where the work runs:

- **SQLite**: a plain ``sqlite3`` connection (no SQLAlchemy, no aiosqlite thread hop per
  statement). ``BEGIN IMMEDIATE`` — which may wait for another process holding the
  database's write lock — and ``COMMIT`` — the fsync — run on a dedicated writer
  thread, so the event loop keeps serving while they wait; the statements in between
  run on the event loop itself. Measured on the bench machine (one core for the
  server), running them on the writer thread too was 10-20% slower: the two threads
  only take turns on the GIL, and every ``sqlite3`` call hands it over. A batch is
  capped at ``max_events`` so the loop is never held for long.
- **PostgreSQL**: the same batch code straight on the asyncpg connection of a pooled
  SQLAlchemy connection (:class:`.sqlio.AsyncpgTx`, bridged by SQLAlchemy's greenlet so
  the synchronous code can wait on it), in a transaction opened here; rows are locked in
  a fixed order, so several processes' writers never deadlock; a lost race on an
  idempotency key (another process committed the same key first) fails the events'
  ``COPY``, and the retry then sees the key and answers ``duplicate``. Under a
  backlog a second lane writes a batch beside the first, on its own connection, both
  taking from the one queue: while the server inserts one batch, the next is worked
  out in Python (measured: 1000-event batches 59k → 71k events/s with one worker).
  The second lane only takes work while at least ``SECOND_LANE_AT`` events wait: small
  batches gain nothing from it, and two lanes raising one customer's counter at once
  only queue on its row lock. The two commit in either order, so the cache takes a
  committed counter or pool over only when it is not older than what it holds
  (``MeteringCache.apply``).

The first attempt at a batch skips the duplicate probe (``probe=False``): the events'
unique index refuses a duplicate, the transaction rolls back, and the retry probes the
keys first. A batch that still fails is retried; then its units are written one by one,
so one bad request never takes the others down with it. A batch that fails because the
database cannot be reached or used is not split: every unit in it is answered
``Unavailable`` (503, nothing written, safe to send again).

``close()`` drains: units already queued are written before the writer stops, so an
orderly shutdown answers every request it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.util import greenlet_spawn

from ...db.faults import ConnectionLost, is_transient
from ...errors import IngestionFailed, Unavailable
from .batch import ERROR, Effects, GuardFailed, Outcome, process_batch
from .inputs import EventIn
from .pgfast import FastLane
from .sqlio import AlchemyTx, AsyncpgTx, SqliteTx

if TYPE_CHECKING:
    from ...context import AppContext

log = logging.getLogger("tanso_mcp.metering")

RETRIES = 6
# PostgreSQL: events waiting in the queue before the second lane writes a batch too
SECOND_LANE_AT = 200
WAL_CHECKPOINT_PAGES = 10_000
# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock
_RETRY_STATES = {"40001", "40P01"}


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, GuardFailed | IntegrityError | sqlite3.IntegrityError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    if isinstance(exc, DBAPIError):
        orig = getattr(exc, "orig", None)
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if state in _RETRY_STATES:
            return True
        text = str(exc).lower()
        return "deadlock" in text or "could not serialize" in text
    return False


class MeteringWriter:
    def __init__(
        self,
        ctx: AppContext,
        *,
        max_events: int = 4000,
        on_commit: Callable[[Effects, dict[str, int]], None] | None = None,
    ):
        self.ctx = ctx
        self.max_events = max_events
        self.on_commit = on_commit
        self.is_sqlite = ctx.db.dialect == "sqlite"
        self._queue: asyncio.Queue | None = None
        self._queued = 0  # events in the queue
        self._backlog: asyncio.Event | None = None  # set when SECOND_LANE_AT are queued
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # PostgreSQL: plain batches in one statement (pgfast.py)
        self.fast: FastLane | None = None if self.is_sqlite else FastLane()
        # statistics, for tests and the bench
        self.batches = 0
        self.events = 0
        self.largest_batch = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._tasks and self._loop is loop and not any(t.done() for t in self._tasks):
            return
        if self._closed:
            raise RuntimeError("the metering writer is closed")
        self._loop = loop
        self._queue = asyncio.Queue()
        self._queued = 0
        self._backlog = asyncio.Event()
        if self.is_sqlite and self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="tanso-writer")
        self._tasks = [loop.create_task(self._run(), name="tanso-metering-writer")]
        if not self.is_sqlite:  # SQLite has one writer at a time anyway
            self._tasks.append(
                loop.create_task(self._run(second=True), name="tanso-metering-writer-2")
            )

    async def close(self, drain_seconds: float = 30.0) -> None:
        self._closed = True
        if self.batches:
            lane = self.fast
            log.info(
                "metering writer: %d events in %d batches (largest %d)%s",
                self.events,
                self.batches,
                self.largest_batch,
                f"; one-statement lane: {lane.hits} batches, {lane.misses} loads, "
                f"{lane.fallbacks} fallbacks"
                if lane is not None
                else "",
            )
        tasks, self._tasks = self._tasks, []
        if self._queue is not None and any(not t.done() for t in tasks):
            try:
                await asyncio.wait_for(self._queue.join(), drain_seconds)
            except TimeoutError:
                log.warning("metering writer: queue not drained in %.0f s", drain_seconds)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(Unavailable("the server is shutting down; send it again"))
        if self._executor is not None:
            self._executor.submit(self._close_conn).result()
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ API

    async def submit(self, items: list[EventIn]) -> list[Outcome]:
        """Write ``items`` (in one transaction, possibly with other requests' items) and
        return one outcome per item, in order, once committed."""
        if not items:
            return []
        if self._closed:
            raise Unavailable("the server is shutting down; send it again")
        self.start()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((items, fut))  # type: ignore[union-attr]
        self._queued += len(items)
        if self._queued >= SECOND_LANE_AT:
            self._backlog.set()  # type: ignore[union-attr]
        return await fut

    # ------------------------------------------------------------------ loop

    async def _run(self, second: bool = False) -> None:
        queue, backlog = self._queue, self._backlog
        assert queue is not None and backlog is not None
        while True:
            if second:
                if self._queued < SECOND_LANE_AT:
                    backlog.clear()
                    await backlog.wait()
                    continue
                units = [queue.get_nowait()]
            else:
                units = [await queue.get()]
            count = len(units[0][0])
            while count < self.max_events and not queue.empty():
                unit = queue.get_nowait()
                units.append(unit)
                count += len(unit[0])
            self._queued -= count
            try:
                await self._write(units)
            except asyncio.CancelledError:
                for _, fut in units:
                    if not fut.done():
                        fut.set_exception(Unavailable("the server is shutting down; send it again"))
                raise
            except Exception as exc:  # never let the writer die
                if is_transient(exc):
                    error: Exception = Unavailable()
                else:
                    log.exception("metering writer failed a batch")
                    error = IngestionFailed("the event could not be stored")
                for _, fut in units:
                    if not fut.done():
                        fut.set_exception(error)
            finally:
                for _ in units:
                    queue.task_done()

    async def _write(self, units: list[tuple[list[EventIn], asyncio.Future]]) -> None:
        items = [item for unit, _ in units for item in unit]
        gens = self._generations(items)
        try:
            outcomes, effects = await self._execute(items)
            parts = []
            pos = 0
            for unit, fut in units:
                parts.append((fut, outcomes[pos : pos + len(unit)]))
                pos += len(unit)
            self._publish(effects, gens)
        except Exception as exc:
            if is_transient(exc):
                raise  # every unit is answered Unavailable by _run; nothing was written
            if len(units) == 1 and len(units[0][0]) == 1:
                log.exception("an event could not be stored")
                parts = [(units[0][1], [_failed()])]
            else:
                log.warning("a batch of %d events failed; writing its parts alone", len(items))
                parts = []
                for unit, fut in units:
                    try:
                        parts.append((fut, await self._write_alone(unit)))
                    except Exception as part_exc:  # transient: this unit wrote nothing
                        if not fut.done():
                            fut.set_exception(
                                Unavailable()
                                if is_transient(part_exc)
                                else IngestionFailed("the event could not be processed")
                            )
        self.batches += 1
        self.events += len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        for fut, result in parts:
            if not fut.done():
                fut.set_result(result)

    async def _write_alone(self, unit: list[EventIn]) -> list[Outcome]:
        gens = self._generations(unit)
        try:
            outcomes, effects = await self._execute(unit)
            self._publish(effects, gens)
            return outcomes
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(unit) == 1:
                log.exception("an event could not be stored")
                return [_failed()]
            out: list[Outcome] = []
            for item in unit:
                out.extend(await self._write_alone([item]))
            return out

    def _generations(self, items: list[EventIn]) -> dict[str, int]:
        return {env: self.ctx.generation(env) for env in {i.environment_id for i in items}}

    def _publish(self, effects: Effects, generations: dict[str, int]) -> None:
        if self.fast is not None:
            self.fast.observe(effects)
        if self.on_commit is not None:
            try:
                self.on_commit(effects, generations)
            except Exception:
                log.exception("cache update after a metering commit failed")
        for env in effects.catalog_changed:
            self.ctx.invalidate(env)
        feed = self.ctx.feed
        if feed is not None and not effects.announced:
            for env in effects.counters.keys() | effects.pools.keys():
                ids = {key[0] for key in effects.counters.get(env, {})}
                ids.update(v["customer_id"] for v in effects.pools.get(env, {}).values())
                feed.publish("usage", env, ids)

    async def _execute(self, items: list[EventIn]) -> tuple[list[Outcome], Effects]:
        if self.is_sqlite:
            return await self._sqlite_batch(items)
        return await self._alchemy_batch(items)

    # ------------------------------------------------------------------ SQLite

    def _open(self) -> sqlite3.Connection:
        path = make_url(self.ctx.db.url).database
        if not path or path == ":memory:":
            raise RuntimeError("the metering writer needs a file database")
        # used from the writer thread (BEGIN, COMMIT) and the event loop (statements),
        # never from both at once
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        # checkpoint every ~40 MB of WAL instead of SQLite's 4 MB: pages the writer
        # rewrites batch after batch (index right edges, counters, pools) are copied
        # back into the database once per checkpoint instead of once per few batches
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        return conn

    async def _sqlite_batch(self, items: list[EventIn]) -> tuple[list[Outcome], Effects]:
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        for attempt in range(RETRIES):
            if self._conn is None:
                self._conn = await loop.run_in_executor(self._executor, self._open)
            conn = self._conn
            try:
                await loop.run_in_executor(self._executor, conn.execute, "BEGIN IMMEDIATE")
                try:
                    result = process_batch(SqliteTx(conn), items, probe=attempt > 0)
                    await loop.run_in_executor(self._executor, conn.execute, "COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except Exception as exc:
                if not _retryable(exc):
                    raise
                last = exc
                log.debug("metering batch retry %d after %s", attempt + 1, type(exc).__name__)
        assert last is not None
        raise last

    # ------------------------------------------------------------------ PostgreSQL

    async def _alchemy_batch(self, items: list[EventIn]) -> tuple[list[Outcome], Effects]:
        last: BaseException | None = None
        for attempt in range(RETRIES):
            try:
                async with self.ctx.db.engine.connect() as conn:
                    raw: Any = (await conn.get_raw_connection()).driver_connection
                    if not hasattr(raw, "copy_records_to_table"):  # not asyncpg
                        async with conn.begin():
                            return await conn.run_sync(_run_sync, items, attempt > 0)
                    try:
                        if attempt == 0 and self.fast is not None:
                            done = await self._fast(raw, items)
                            if done is not None:
                                return done
                        async with raw.transaction():
                            return await greenlet_spawn(
                                process_batch, AsyncpgTx(raw), items, probe=attempt > 0
                            )
                    except Exception as exc:
                        lost = raw.is_closed()
                        if lost or is_transient(exc):  # a lost connection goes back to no pool
                            await conn.invalidate()
                        if lost and not is_transient(exc):
                            raise ConnectionLost(str(exc)) from exc
                        raise
            except Exception as exc:
                if not _retryable(exc):
                    raise
                last = exc
                log.debug("metering batch retry %d after %s", attempt + 1, type(exc).__name__)
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        assert last is not None
        raise last

    async def _fast(self, raw: Any, items: list[EventIn]) -> tuple[list[Outcome], Effects] | None:
        assert self.fast is not None
        self.fast.feed = self.ctx.feed
        try:
            done = await self.fast.write(raw, items)
            if done is not None and self.fast.feed is not None:
                done[1].announced = True
            return done
        except Exception as exc:
            import asyncpg

            if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
                # a key stored before: the retry (general path) probes the keys
                raise IntegrityError("fast lane", None, exc) from exc
            wrapped = (
                DBAPIError("fast lane", None, exc)  # sqlstate kept: deadlocks retried
                if isinstance(exc, asyncpg.PostgresError)
                else exc
            )
            if raw.is_closed() or is_transient(wrapped):
                if wrapped is exc:
                    raise
                raise wrapped from exc
            # the lane is an optimisation: any other failure of it (a bug, a server
            # refusing one of its functions) leaves the batch to the general path
            log.warning("metering lane failed; the general path takes the batch", exc_info=True)
            self.fast.fallbacks += 1
            return None


def _failed() -> Outcome:
    return Outcome(ERROR, error=IngestionFailed("the event could not be processed"))


def _run_sync(conn: Any, items: list[EventIn], probe: bool) -> tuple[list[Outcome], Effects]:
    return process_batch(AlchemyTx(conn), items, probe=probe)
