"""Several `tanso-mcp serve` processes on one database, run as real OS processes.

- PostgreSQL: three servers started at once on an empty database all come up (the
  migrations and the default account are made once), and a write committed through one
  server is seen by the checks of the others within 100 ms (subscription, usage,
  cancellation, key revocation), also after the change feed's connection was cut.
- SQLite: a second server on the same file is refused with a clear message, and so is
  `--workers` (SQLite is served by one process).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tanso_mcp.bootstrap import build_context
from tanso_mcp.services import tenancy
from tanso_mcp.settings import Settings
from tests.factories import make_plan
from tests.test_cli import _free_port, _stop, _wait_ready

PG_URL = os.environ.get("TANSO_TEST_DATABASE_URL")
TANSO = [sys.executable, "-m", "tanso_mcp.cli"]
FRESH_WITHIN = 0.100  # seconds


def _env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANSO_")}
    env.update(
        TANSO_DATABASE_URL=db_url,
        TANSO_JOBS_ENABLED="false",
        # long TTLs: only the change feed can make the other processes fresh in time
        TANSO_ENTITLEMENT_CACHE_SECONDS="60",
        TANSO_KEY_CACHE_SECONDS="60",
        TANSO_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def _spawn(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(TANSO + args, cwd=cwd, env=env, stdout=out, stderr=out)


# --------------------------------------------------------------------------- SQLite


def test_second_server_on_one_sqlite_file_is_refused(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/one.db"
    port = _free_port()
    first = _spawn(["serve", "--port", str(port)], _env(db), tmp_path, tmp_path / "1.log")
    try:
        _wait_ready(port, first)
        second = subprocess.run(
            TANSO + ["serve", "--port", str(_free_port())],
            cwd=tmp_path,
            env=_env(db),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "already serving the SQLite database" in second.stderr
        assert "PostgreSQL" in second.stderr
        # the first one is unaffected
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        _stop(first)
    # once the first has stopped, the file may be served again
    again = _spawn(["serve", "--port", str(port)], _env(db), tmp_path, tmp_path / "3.log")
    try:
        _wait_ready(port, again)
    finally:
        _stop(again)


def test_workers_need_postgresql(tmp_path):
    out = subprocess.run(
        TANSO + ["serve", "--workers", "2", "--port", str(_free_port())],
        cwd=tmp_path,
        env=_env(f"sqlite+aiosqlite:///{tmp_path}/w.db"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--workers" in out.stderr and "PostgreSQL" in out.stderr


# --------------------------------------------------------------------------- PostgreSQL

pg_only = pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (TANSO_TEST_DATABASE_URL)")


@pytest.fixture
def empty_pg_database():
    """A brand-new, empty database on the test PostgreSQL server."""
    name = f"tanso_mp_{uuid.uuid4().hex[:10]}"
    admin = make_url(PG_URL).set(database="postgres")

    async def run(sql: str) -> None:
        engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(sql))
        await engine.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _poll_until(fn, *, timeout: float = 2.0) -> float:
    """Call fn until it returns true; the seconds it took."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if fn():
            return time.perf_counter() - start
        time.sleep(0.002)
    raise AssertionError(f"not seen within {timeout} s")


async def _seed_catalog(db_url: str) -> None:
    ctx = build_context(Settings(database_url=db_url, jobs_enabled=False))
    try:
        async with ctx.db.reader() as s:
            env = await tenancy.get_environment(s, "default", "test")
        rule = '{"pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.10", "max_usage": 50}}'
        await make_plan(
            ctx,
            env.id,
            key="metered",
            price="10.00",
            timing="IN_ARREARS",
            features={"api_calls": rule},
        )
    finally:
        await ctx.close()


@pg_only
def test_three_servers_start_together_and_stay_fresh(empty_pg_database, tmp_path):
    db = empty_pg_database
    ports = [_free_port() for _ in range(3)]
    logs = [tmp_path / f"serve{i}.log" for i in range(3)]
    procs = [
        _spawn(["serve", "--port", str(p)], _env(db), tmp_path, log)
        for p, log in zip(ports, logs, strict=True)
    ]
    clients: list[httpx.Client] = []

    def client(port: int, key: str) -> httpx.Client:
        clients.append(
            httpx.Client(
                base_url=f"http://127.0.0.1:{port}/api/v1/client", headers={"X-API-Key": key}
            )
        )
        return clients[-1]

    try:
        for p, proc in zip(ports, procs, strict=True):
            _wait_ready(p, proc)
        # the default account and its keys were made exactly once
        printed = [re.findall(r"\b(sk_test_\S+)", log.read_text()) for log in logs]
        assert sorted(len(k) for k in printed) == [0, 0, 1], printed
        key = next(k for keys in printed for k in keys)
        asyncio.run(_seed_catalog(db))

        a, b, c = (client(p, key) for p in ports)

        def allowed(client) -> bool:
            r = client.get("/entitlements/cus_1/api_calls")
            assert r.status_code == 200, r.text
            return r.json()["data"]["allowed"]

        def used(client) -> int:
            return client.get("/entitlements/cus_1/api_calls").json()["data"]["usage"]["used"]

        assert a.post("/customers", json={"customerReferenceId": "cus_1"}).status_code == 201
        # warm the other processes' caches with "not allowed"
        assert not allowed(b) and not allowed(c)

        r = a.post("/subscriptions", json={"customerReferenceId": "cus_1", "planKey": "metered"})
        assert r.status_code == 201, r.text
        sub_id = r.json()["data"]["subscription"]["id"]
        assert _poll_until(lambda: allowed(b)) < FRESH_WITHIN
        assert _poll_until(lambda: allowed(c)) < FRESH_WITHIN

        assert used(b) == 0
        for i in range(3):
            r = a.post(
                "/events",
                json={
                    "eventIdempotencyKey": f"e{i}",
                    "eventName": "call",
                    "customerReferenceId": "cus_1",
                    "featureKey": "api_calls",
                },
            )
            assert r.status_code == 201, r.text
        assert _poll_until(lambda: used(b) == 3) < FRESH_WITHIN

        # the listening connection is cut: the process re-subscribes by itself
        async def cut() -> int:
            engine = create_async_engine(db)
            async with engine.connect() as conn:
                n = (
                    await conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name = 'tanso-changefeed'"
                        )
                    )
                ).scalar()
            await engine.dispose()
            return n

        assert asyncio.run(cut()) == 3
        time.sleep(1.0)  # back-off and re-subscribe
        r = a.post(
            "/events",
            json={
                "eventIdempotencyKey": "e-after-cut",
                "eventName": "call",
                "customerReferenceId": "cus_1",
                "featureKey": "api_calls",
            },
        )
        assert r.status_code == 201, r.text
        assert _poll_until(lambda: used(c) == 4) < FRESH_WITHIN

        r = a.post(f"/subscriptions/cancellation/{sub_id}?cancelMode=IMMEDIATE")
        assert r.status_code == 200, r.text
        assert _poll_until(lambda: not allowed(b)) < FRESH_WITHIN
        assert _poll_until(lambda: not allowed(c)) < FRESH_WITHIN

        # key revocation from the CLI (another process again)
        made = subprocess.run(
            TANSO + ["keys", "create", "--role", "read", "--mode", "test"],
            env=_env(db),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        key_id = re.search(r"id:\s+(\S+)", made.stdout).group(1)
        read_key = re.search(r"key:\s+(\S+)", made.stdout).group(1)
        read = client(ports[1], read_key)
        assert read.get("/plans").status_code == 200  # now cached as valid for 60 s
        revoked = subprocess.run(
            TANSO + ["keys", "revoke", key_id],
            env=_env(db),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert revoked.returncode == 0, revoked.stderr
        assert _poll_until(lambda: read.get("/plans").status_code == 401) < FRESH_WITHIN
    finally:
        for cl in clients:
            cl.close()
        for proc in procs:
            _stop(proc)


@pg_only
def test_workers_serve_on_postgresql(empty_pg_database, tmp_path):
    port = _free_port()
    log = tmp_path / "workers.log"
    proc = _spawn(
        ["serve", "--workers", "2", "--port", str(port)], _env(empty_pg_database), tmp_path, log
    )
    try:
        _wait_ready(port, proc)
        key = re.search(r"\b(sk_test_\S+)", log.read_text()).group(1)
        for _ in range(20):
            r = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/client/plans", headers={"X-API-Key": key}
            )
            assert r.status_code == 200
        assert "with 2 workers" in log.read_text()
    finally:
        _stop(proc)
