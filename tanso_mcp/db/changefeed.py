"""Cross-process change announcements on PostgreSQL (LISTEN/NOTIFY).

Every process keeps in-process caches (entitlement decisions, API keys, test clocks).
Its own writes update them at once; writes of the other processes sharing the database
are announced here after their commit and applied on receipt, so a check in any process
sees a committed write within milliseconds instead of a cache TTL.

- ``publish`` is synchronous and never blocks the caller (it is called right after a
  commit): messages are queued and sent by one background task, several per round trip.
- Each message carries the sending process's ``origin`` so a process ignores its own.
- When the listening connection drops, the caches fall back to their TTLs and the feed
  reconnects by itself (with back-off); on reconnecting it reports a ``resync`` so the
  process drops everything it may have missed meanwhile.

SQLite needs none of this: it is served by one process by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy.engine import make_url

log = logging.getLogger("tanso_mcp.changefeed")

CHANNEL = "tanso_changes"
APPLICATION_NAME = "tanso-changefeed"  # how the feed's connections show in pg_stat_activity
# NOTIFY payloads must stay under 8000 bytes; a message naming more ids than this is
# sent as an environment-wide change instead
MAX_IDS = 100


@dataclass(frozen=True, slots=True)
class Change:
    """``kind``: ``env`` (catalog, subscriptions, entitlements, credits or clock of an
    environment changed), ``usage`` (metering commits: ``ids`` are the customers and
    subscriptions whose counters or pools moved), ``keys`` (an API key was revoked or
    changed) or ``resync`` (the feed was down: forget everything)."""

    kind: str
    environment_id: str | None = None
    ids: tuple[str, ...] = ()


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def encode(origin: str, change: Change) -> str:
    return json.dumps(
        {"o": origin, "k": change.kind, "e": change.environment_id, "i": list(change.ids)},
        separators=(",", ":"),
    )


def decode(payload: str) -> tuple[str, Change] | None:
    try:
        d = json.loads(payload)
        return d["o"], Change(d["k"], d.get("e"), tuple(d.get("i") or ()))
    except (ValueError, KeyError, TypeError):
        return None


class ChangeFeed:
    def __init__(
        self,
        url: str,
        on_change: Callable[[Change], None],
        *,
        retry_max_seconds: float = 2.0,
    ):
        self.dsn = asyncpg_dsn(url)
        self.on_change = on_change
        self.origin = uuid.uuid4().hex
        self.retry_max = retry_max_seconds
        self.connected = asyncio.Event()
        self.received = 0
        self._queue: asyncio.Queue[Change] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._conn = None

    # ---------------------------------------------------------------- sending

    def publish(self, kind: str, environment_id: str | None = None, ids: Iterable[str] = ()):
        if self._task is None:  # not serving (a test context, a CLI command): nobody to tell
            return
        self._queue.put_nowait(_change(kind, environment_id, ids))

    def payload(
        self, kind: str, environment_id: str | None = None, ids: Iterable[str] = ()
    ) -> str | None:
        """The NOTIFY payload of a change, for a writer that sends it with
        ``pg_notify(CHANNEL, payload)`` inside its own transaction (delivered at its
        commit, no round trip of its own); None when not serving."""
        if self._task is None:
            return None
        return encode(self.origin, _change(kind, environment_id, ids))

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tanso-changefeed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=1)

    async def _run(self) -> None:
        import asyncpg

        delay = 0.05
        first = True
        while True:
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=5, server_settings={"application_name": APPLICATION_NAME}
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._conn = conn
                self.connected.set()
                if not first:
                    log.info("change feed re-subscribed")
                    self._deliver(Change("resync"))
                first = False
                delay = 0.05
                await self._send_loop(conn, lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: fall back to TTLs, retry
                if self.connected.is_set() or first:
                    log.warning("change feed unavailable (%s); caches use their TTLs", exc)
            await self._drop_connection()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _send_loop(self, conn, lost: asyncio.Event) -> None:
        while not lost.is_set():
            getter = asyncio.ensure_future(self._queue.get())
            waiter = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                if not getter.done():
                    getter.cancel()
            if not getter.done() or getter.cancelled():
                break
            batch = [getter.result()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            args = [(CHANNEL, encode(self.origin, c)) for c in _coalesce(batch)]
            try:
                await conn.executemany("SELECT pg_notify($1, $2)", args)
            except Exception:
                # not sent: the other processes will see the change within their TTL
                for c in batch:
                    self._queue.put_nowait(c)
                raise
        raise ConnectionError("change feed connection lost")

    # ---------------------------------------------------------------- receiving

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        decoded = decode(payload)
        if decoded is None:
            return
        origin, change = decoded
        if origin == self.origin:
            return
        self.received += 1
        self._deliver(change)

    def _deliver(self, change: Change) -> None:
        try:
            self.on_change(change)
        except Exception:
            log.exception("applying a change notification failed")


def _change(kind: str, environment_id: str | None, ids: Iterable[str]) -> Change:
    ids = tuple(ids)
    if len(ids) > MAX_IDS:
        kind, ids = ("env" if environment_id else "resync"), ()
    return Change(kind, environment_id, ids)


def _coalesce(batch: list[Change]) -> list[Change]:
    """Drop repeats within one send (an environment invalidated ten times is announced
    once)."""
    seen: set[Change] = set()
    out = []
    for c in batch:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


async def announce_once(url: str, change: Change) -> None:
    """Send one change from a short-lived process (the CLI) without listening."""
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, encode("cli", change))
    finally:
        await conn.close()
