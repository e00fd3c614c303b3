"""The app wired to the fake Stripe: real time (Stripe's own clock), the full app served
by uvicorn on a loopback port so the fake can deliver signed webhooks to it, REST and
MCP clients over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import uvicorn
from mcp.client import Client

from tanso_mcp.bootstrap import AppContext, build_context
from tanso_mcp.clock import Clock, SystemClock, utcnow
from tanso_mcp.services import stripe_webhooks
from tanso_mcp.settings import Settings
from tanso_mcp.web.app import create_app
from tests.conftest import Tenant, make_tenant
from tests.mcp_helpers import free_port, http_client

API = "/api/v1/client"


class ShiftedClock:
    """Real time (Stripe's clock) moved ahead by what the test lets pass: a lease or a
    retry back-off runs out without the test sleeping. Keep the shift within Stripe's
    five minutes of tolerance for meter-event timestamps."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def now(self) -> datetime:
        return utcnow() + self.shift

    def advance(self, seconds: float) -> None:
        self.shift += timedelta(seconds=seconds)


@dataclass
class StripeApp:
    ctx: AppContext
    tenant: Tenant
    url: str
    http: httpx.AsyncClient
    fake: Any

    @property
    def env(self) -> str:
        return self.tenant.env_ids["test"]

    def h(self, role: str = "admin") -> dict[str, str]:
        return self.tenant.headers(role)

    async def req(self, method: str, path: str, expect: int | None = 200, **kw) -> Any:
        r = await self.http.request(method, path, headers=kw.pop("headers", self.h()), **kw)
        if expect is not None:
            assert r.status_code == expect, (method, path, r.status_code, r.text)
        return r.json()

    async def data(self, method: str, path: str, expect: int = 200, **kw) -> Any:
        return (await self.req(method, API + path, expect, **kw))["data"]

    async def settle(self) -> None:
        """Wait until the webhooks received so far are processed."""
        for _ in range(3):
            await asyncio.sleep(0.05)
            await stripe_webhooks.drain(self.ctx)

    async def connect(self) -> dict:
        await self.req(
            "POST",
            "/api/v1/tanso/stripe/connect",
            json={"stripeSecretKey": self.fake.api_key},
        )
        return (await self.req("POST", "/api/v1/tanso/stripe/setup"))["data"]

    @asynccontextmanager
    async def mcp(self, role: str = "admin") -> AsyncIterator[Client]:
        async with http_client(self.url, self.tenant.key(role)) as client:
            yield client


@asynccontextmanager
async def stripe_app(
    db_url: str, fake: Any, *, clock: Clock | None = None, **settings: Any
) -> AsyncIterator[StripeApp]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ctx = build_context(
        Settings(
            database_url=db_url,
            key_cache_seconds=0,
            jobs_enabled=False,
            public_base_url=url,
            stripe_api_base=fake.base_url,
            stripe_max_network_retries=0,
            **settings,
        ),
        clock=clock or SystemClock(),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ctx),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            loop="asyncio",
            http="h11",
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        tenant = await make_tenant(ctx)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            yield StripeApp(ctx, tenant, url, http, fake)
    finally:
        await stripe_webhooks.drain(ctx)
        server.should_exit = True
        await task
        await ctx.close()
