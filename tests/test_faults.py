"""Transient database faults are 503 ``unavailable`` with ``Retry-After`` (MCP error
``unavailable``), never 400 or 500, keep-alive connections stay open, and the service
recovers by itself.

The outage test runs ``tanso-mcp serve`` on a PostgreSQL cluster of its own (started
on a free port, never the shared server), stops the cluster under load and starts it
again. The in-process tests make the same faults happen deterministically on whichever
database the suite runs on: a database file that cannot be opened, a lock held beyond
the timeout, a pool with no free connection."""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import threading
import time
import uuid
from contextlib import suppress

import httpx
import pytest
from sqlalchemy import exc as sa_exc

from tanso_mcp.db.faults import is_transient
from tanso_mcp.services.metering.service import metering
from tanso_mcp.web.app import create_app
from tests.mcp_helpers import inmemory
from tests.servekit import PgCluster, Served, pg_available

pytestmark = pytest.mark.anyio

API = "/api/v1/client"


def unavailable(r: httpx.Response) -> bool:
    body = r.json()
    # on the MCP endpoint: a JSON-RPC error holding the REST error object
    err = body["error"]["data"] if "jsonrpc" in body else body["error"]
    return (
        r.status_code == 503
        and r.headers.get("retry-after") == "1"
        and err["code"] == "unavailable"
        and r.headers.get("connection", "").lower() != "close"
    )


# --------------------------------------------------------------------- classification


def test_transient_faults_are_recognised():
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert is_transient(sa_exc.TimeoutError("QueuePool limit reached"))
    locked = sqlite3.OperationalError("database is locked")
    assert is_transient(sa_exc.OperationalError("BEGIN", {}, locked))
    assert is_transient(locked)
    assert not is_transient(sqlite3.OperationalError("no such table: x"))
    assert not is_transient(ValueError("x"))

    class DriverError(Exception):  # the shape of asyncpg's errors: a SQLSTATE attribute
        def __init__(self, state: str):
            super().__init__(state)
            self.sqlstate = state

    for state in ("40001", "40P01", "08006", "57P01", "57P03", "53300"):
        assert is_transient(sa_exc.DBAPIError("COMMIT", {}, DriverError(state))), state
    for state in ("23505", "22P02", "42P01"):
        assert not is_transient(sa_exc.DBAPIError("INSERT", {}, DriverError(state))), state
    assert not is_transient(sa_exc.IntegrityError("INSERT", {}, Exception("unique")))


# --------------------------------------------------------------------- in process


async def _ingest_body(n: int) -> bytes:
    return json.dumps(
        {
            "eventName": "call",
            "customerReferenceId": "c1",
            "featureKey": "api",
            "eventIdempotencyKey": f"k{n}",
        }
    ).encode()


async def test_pool_exhausted_is_503_on_rest_and_unavailable_on_mcp(ctx, tenant):
    """Every pooled connection is held: requests that need one wait the pool timeout
    and answer 503 (the event is not acknowledged, and the writer says so too)."""
    app = create_app(ctx)
    h = {**tenant.headers(), "content-type": "application/json"}
    engine = ctx.db.engine
    engine.pool._timeout = 0.2  # noqa: SLF001 - a short wait for the test
    held = []
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        inmemory(ctx, tenant.key()) as mcp,
    ):
        assert (await c.get(f"{API}/customers/nobody", headers=h)).status_code == 404
        try:
            for _ in range(engine.pool.size() + engine.pool._max_overflow):  # noqa: SLF001
                held.append(await engine.connect())
            for path in ("/customers/c1", "/test-clock", "/entitlements/c1"):
                r = await c.get(API + path, headers=h)
                assert unavailable(r), (path, r.status_code, r.text)
            r = await c.post(f"{API}/events", content=await _ingest_body(1), headers=h)
            assert unavailable(r), r.text
            for tool, args in (
                ("getCustomer", {"customerReferenceId": "c1"}),
                (
                    "ingestEvent",
                    {
                        "eventIdempotencyKey": "m1",
                        "eventName": "call",
                        "occurredAt": "2026-01-15T09:00:00Z",
                        "customerReferenceId": "c1",
                        "featureKey": "api",
                    },
                ),
            ):
                result = await mcp.call_tool(tool, args)
                assert result.is_error, (tool, result)
                assert result.structured_content["error"] == "unavailable", result
        finally:
            for conn in held:
                await conn.close()
        r = await c.post(f"{API}/events", content=await _ingest_body(2), headers=h)
        assert r.status_code == 201, r.text


async def test_sqlite_lock_beyond_the_timeout_is_503(ctx, tenant, db_url):
    """Another process holds SQLite's write lock longer than the busy timeout."""
    if ctx.db.dialect != "sqlite":
        pytest.skip("PostgreSQL: see the pool and outage tests")
    app = create_app(ctx)
    h = {**tenant.headers(), "content-type": "application/json"}
    path = db_url.split("///", 1)[1]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post(f"{API}/events", content=await _ingest_body(1), headers=h)
        assert r.status_code == 201, r.text
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            w = metering(ctx).writer
            assert w._conn is not None  # noqa: SLF001
            w._conn.execute("PRAGMA busy_timeout=50")  # noqa: SLF001
            from tanso_mcp.services.metering import writer as writer_mod

            old, writer_mod.RETRIES = writer_mod.RETRIES, 2
            try:
                r = await c.post(f"{API}/events", content=await _ingest_body(2), headers=h)
            finally:
                writer_mod.RETRIES = old
            assert unavailable(r), r.text
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        r = await c.post(f"{API}/events", content=await _ingest_body(2), headers=h)
        assert r.status_code == 201, r.text


async def test_sqlite_lock_on_a_unit_of_work_is_503(ctx, tenant, db_url):
    """A request's own unit of work (not the writer) waits for the lock past its busy
    timeout: 503, nothing written, and the next request after the lock is released
    succeeds."""
    if ctx.db.dialect != "sqlite":
        pytest.skip("PostgreSQL: see the pool and outage tests")
    from sqlalchemy import event

    def short_wait(dbapi_conn, _record) -> None:
        dbapi_conn.cursor().execute("PRAGMA busy_timeout=50")

    await ctx.db.engine.dispose()
    event.listen(ctx.db.engine.sync_engine, "connect", short_wait)
    app = create_app(ctx)
    h = {**tenant.headers(), "content-type": "application/json"}
    path = db_url.split("///", 1)[1]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            r = await c.post(f"{API}/customers", json={"customerReferenceId": "locked"}, headers=h)
            assert unavailable(r), r.text
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        r = await c.get(f"{API}/customers/locked", headers=h)
        assert r.status_code == 404, r.text
        r = await c.post(f"{API}/customers", json={"customerReferenceId": "locked"}, headers=h)
        assert r.status_code == 201, r.text


# --------------------------------------------------------------------- the outage


@pytest.fixture(scope="module")
def cluster():
    if not pg_available():
        pytest.skip("pg_config/runuser not installed: the outage test needs its own cluster")
    c = PgCluster()
    c.init()
    c.start()
    try:
        yield c
    finally:
        c.destroy()


class KeepAliveProbe(threading.Thread):
    """One HTTP/1.1 connection used for every request: counts answers by status and how
    often the server closed it (a closed connection shows as a new socket)."""

    def __init__(self, port: int, key: str, path: str):
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.key, self.path = key, path
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self.reconnects = 0
        self.errors: list[str] = []

    def run(self) -> None:
        sock = None
        while not self.stop.is_set():
            try:
                self.conn.request("GET", self.path, headers={"X-API-Key": self.key})
                if sock is not None and self.conn.sock is not sock:
                    self.reconnects += 1
                sock = self.conn.sock
                r = self.conn.getresponse()
                r.read()
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                self.errors.append(repr(exc))
                self.conn.close()
                sock = None
            time.sleep(0.02)
        self.conn.close()


async def test_postgres_outage_under_load(cluster, tmp_path):
    url = cluster.create_database(f"outage_{uuid.uuid4().hex[:8]}")
    served = Served(tmp_path, url, TANSO_KEY_CACHE_SECONDS="60")
    try:
        served.wait_ready()
        key = served.admin_key()
        h = {"X-API-Key": key, "content-type": "application/json"}
        results: list[tuple[float, float, str, int]] = []  # start, end, key, status
        failures: list[str] = []
        mcp_answers: list[tuple[float, float, object]] = []
        stop_load = asyncio.Event()
        counter = iter(range(10**9))

        async def ingest_worker(http: httpx.AsyncClient) -> None:
            while not stop_load.is_set():
                k = f"evt-{next(counter)}"
                body = {
                    "eventName": "call",
                    "customerReferenceId": "c1",
                    "featureKey": "api",
                    "eventIdempotencyKey": k,
                }
                t0 = time.monotonic()
                try:
                    r = await http.post(f"{API}/events", json=body, headers=h)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                t1 = time.monotonic()
                if r.status_code == 503 and not unavailable(r):
                    failures.append(f"bad 503: {r.headers} {r.text}")
                results.append((t0, t1, k, r.status_code))
                await asyncio.sleep(0.005)

        async def other_worker(http: httpx.AsyncClient) -> None:
            while not stop_load.is_set():
                t0 = time.monotonic()
                try:
                    r = await http.get(f"{API}/customers/c1", headers=h)
                    m = await http.post(
                        "/mcp",
                        json={
                            "jsonrpc": "2.0",
                            "id": 1,
                            "method": "tools/call",
                            "params": {
                                "name": "ingestEvent",
                                "arguments": {
                                    "eventIdempotencyKey": f"mcp-{next(counter)}",
                                    "eventName": "call",
                                    "occurredAt": time.strftime(
                                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()
                                    ),
                                    "customerReferenceId": "c1",
                                    "featureKey": "api",
                                },
                            },
                        },
                        headers={
                            **h,
                            "accept": "application/json, text/event-stream",
                            "mcp-protocol-version": "2025-11-25",
                        },
                    )
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                t1 = time.monotonic()
                if r.status_code not in (200, 404, 503) or (
                    r.status_code == 503 and not unavailable(r)
                ):
                    failures.append(f"GET customer: {r.status_code} {r.text}")
                if m.status_code == 503:
                    mcp_answers.append((t0, t1, "http-503" if unavailable(m) else m.text))
                else:
                    result = m.json().get("result") or {}
                    content = result.get("structuredContent") or {}
                    outcome = content.get("error") if result.get("isError") else "ok"
                    mcp_answers.append((t0, t1, outcome))
                await asyncio.sleep(0.01)

        probe = KeepAliveProbe(served.port, key, f"{API}/customers/c1")
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        async with httpx.AsyncClient(base_url=served.base, limits=limits, timeout=30) as http:
            # warm up: the customer exists, keys are cached
            r = await http.post(
                f"{API}/events",
                json={"eventName": "call", "customerReferenceId": "c1", "featureKey": "api"},
                headers=h,
            )
            assert r.status_code == 201, r.text
            probe.start()
            tasks = [asyncio.create_task(ingest_worker(http)) for _ in range(4)]
            tasks.append(asyncio.create_task(other_worker(http)))
            await asyncio.sleep(1.5)
            await asyncio.to_thread(cluster.stop)
            down = time.monotonic()
            await asyncio.sleep(2.5)
            up_begin = time.monotonic()
            await asyncio.to_thread(cluster.start)
            up = time.monotonic()
            await asyncio.sleep(2.5)
            stop_load.set()
            await asyncio.gather(*tasks)
            probe.stop.set()
            await asyncio.to_thread(probe.join, 10)

        assert not failures, failures[:5]
        statuses = {s for *_, s in results}
        errors = [line for line in served.lines if "Error" in line or "rror:" in line]
        assert statuses <= {200, 201, 503}, (statuses, errors[-20:])
        during = [s for t0, t1, _, s in results if t0 > down and t1 < up_begin]
        assert len(during) >= 10 and set(during) == {503}, during[:20]
        mcp_during = [o for t0, t1, o in mcp_answers if t0 > down and t1 < up_begin]
        assert mcp_during and set(mcp_during) <= {"unavailable", "http-503"}, mcp_during
        assert "unavailable" in mcp_during, mcp_during
        after = sorted((t1, s) for t0, t1, _, s in results if t0 >= up)
        first_ok = next(t1 for t1, s in after if s in (200, 201))
        assert first_ok - up < 1.0, first_ok - up
        assert [s for t1, s in after if t1 > first_ok + 0.5].count(503) == 0
        assert [o for t0, _, o in mcp_answers if t0 > up + 1.0] and all(
            o == "ok" for t0, _, o in mcp_answers if t0 > up + 1.0
        )
        # keep-alive held through the outage
        assert probe.errors == [] and probe.reconnects == 0, (probe.errors, probe.reconnects)
        assert probe.statuses.get(503, 0) > 0 and probe.statuses.get(200, 0) > 0
        # every acknowledged event is stored
        acked = {k for *_, k, s in results if s in (200, 201)}
        assert acked

        async def stored() -> set[str]:
            import asyncpg

            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            try:
                rows = await conn.fetch("SELECT idempotency_key FROM events")
            finally:
                await conn.close()
            return {r[0] for r in rows}

        assert acked <= await stored()
        assert "Traceback" not in served.output, served.output[-3000:]
    finally:
        with suppress(Exception):
            served.terminate()
