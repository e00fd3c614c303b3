"""Test harness: a fresh database per test, on SQLite (default) or on PostgreSQL when
TANSO_TEST_DATABASE_URL names one; a frozen system clock; an app context built through
the same composition root as production."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tanso_mcp.bootstrap import AppContext, build_context
from tanso_mcp.clock import FrozenClock
from tanso_mcp.db.migrate import upgrade
from tanso_mcp.db.models import Base
from tanso_mcp.services import tenancy
from tanso_mcp.settings import Settings
from tanso_mcp.web.app import create_app
from tests.stripe_fake.fixtures import (  # noqa: F401 - fixtures for the Stripe tests
    stripe_client,
    stripe_fake,
    stripe_fake_server,
    webhook_receiver,
)

# every MCP and REST answer of every test is checked against its declared schema
pytest_plugins = ["tests.schema_guard"]

PG_URL = os.environ.get("TANSO_TEST_DATABASE_URL")
START = datetime(2026, 1, 15, 10, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


def _reset_pg_schema(url: str) -> None:
    async def go():
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(go())


@pytest.fixture(scope="session")
def _template(tmp_path_factory) -> str:
    """SQLite: a migrated template file copied per test. PostgreSQL: the schema migrated
    once per session (tables are truncated before each test)."""
    if PG_URL:
        _reset_pg_schema(PG_URL)
        return PG_URL
    path = tmp_path_factory.mktemp("template") / "template.db"
    url = f"sqlite+aiosqlite:///{path}"

    async def go():
        engine = create_async_engine(url)
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(go())
    return str(path)


@pytest.fixture
async def db_url(_template, tmp_path) -> str:
    if PG_URL:
        engine = create_async_engine(PG_URL)
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        await engine.dispose()
        return PG_URL
    dest = tmp_path / "test.db"
    shutil.copyfile(_template, dest)
    return f"sqlite+aiosqlite:///{dest}"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def settings(db_url) -> Settings:
    return Settings(
        database_url=db_url, key_cache_seconds=0, jobs_enabled=False, max_body_bytes=65536
    )


@pytest.fixture
async def ctx(settings, clock) -> AppContext:
    c = build_context(settings, clock=clock)
    yield c
    await c.close()


@dataclass
class Tenant:
    account_id: str
    env_ids: dict[str, str]
    keys: dict[tuple[str, str], str]  # (mode, role) -> key

    def key(self, role: str = "admin", mode: str = "test") -> str:
        return self.keys[(mode, role)]

    def headers(self, role: str = "admin", mode: str = "test") -> dict[str, str]:
        return {"X-API-Key": self.key(role, mode)}


async def make_tenant(ctx: AppContext, name: str = "acme") -> Tenant:
    now = ctx.clocks.system_now()
    async with ctx.db.unit_of_work() as s:
        account, envs = await tenancy.create_account(s, name, now)
        keys = {}
        for mode, env in envs.items():
            for role in tenancy.ROLES:
                issued = await tenancy.create_api_key(s, env, role, now, account_name=name)
                keys[(mode, role)] = issued.key
    return Tenant(account.id, {m: e.id for m, e in envs.items()}, keys)


@pytest.fixture
async def tenant(ctx) -> Tenant:
    return await make_tenant(ctx)


@pytest.fixture
async def client(ctx):
    app = create_app(ctx)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as c:
        yield c


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
