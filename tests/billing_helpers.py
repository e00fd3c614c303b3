"""Helpers for billing scenarios driven through the REST API and the test clock."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from tanso_mcp.db import models
from tanso_mcp.services import credits
from tanso_mcp.services.invoices import invoice_problems

API = "/api/v1/client"


class Billing:
    def __init__(self, ctx, client, tenant, mode: str = "test"):
        self.ctx, self.client, self.tenant, self.mode = ctx, client, tenant, mode
        self.h = tenant.headers("admin", mode)
        self.env = tenant.env_ids[mode]

    async def req(self, method: str, path: str, expect: int | None = 200, **kw) -> Any:
        r = await self.client.request(method, API + path, headers=self.h, **kw)
        if expect is not None:
            assert r.status_code == expect, (method, path, r.status_code, r.text)
        return r.json()

    async def data(self, method: str, path: str, expect: int = 200, **kw) -> Any:
        return (await self.req(method, path, expect, **kw))["data"]

    async def customer(self, ref: str = "cust") -> dict:
        return await self.data(
            "POST", "/customers", 201, json={"customerReferenceId": ref, "email": f"{ref}@x.io"}
        )

    async def subscribe(self, ref: str, plan_id: str, **extra) -> tuple[dict, dict]:
        d = await self.data(
            "POST",
            "/subscriptions",
            201,
            json={"customerReferenceId": ref, "planId": plan_id, **extra},
        )
        return d["subscription"], d.get("invoice")

    async def pay(self, invoice_id: str) -> dict:
        return await self.data("POST", f"/billing/invoices/{invoice_id}/mark-paid")

    async def advance(self, **kw) -> dict:
        return await self.data("POST", "/test-clock/advance", json=kw)

    async def to(self, iso: str) -> dict:
        return await self.advance(to=iso)

    async def sub(self, sub_id: str) -> dict:
        return await self.data("GET", f"/subscriptions/{sub_id}")

    async def invoices(self, ref: str) -> list[dict]:
        """Oldest first (the API lists newest first)."""
        return list(reversed(await self.data("GET", f"/billing/invoices/{ref}?limit=500")))

    async def pools(self, ref: str) -> dict[str, dict]:
        return {p["denomination"]: p for p in await self.data("GET", f"/credits/{ref}/pools")}

    async def entitlements(self, sub_id: str) -> dict[str, bool]:
        async with self.ctx.db.reader() as s:
            rows = (
                await s.execute(
                    select(models.Entitlement.feature_key, models.Entitlement.revoked_at).where(
                        models.Entitlement.subscription_id == sub_id
                    )
                )
            ).all()
        return {k: r is None for k, r in rows}

    async def count(self, model) -> int:
        async with self.ctx.db.reader() as s:
            return int(await s.scalar(select(func.count()).select_from(model)))

    async def counts(self) -> dict[str, int]:
        names = (
            "Subscription",
            "Invoice",
            "InvoiceItem",
            "ScheduledChange",
            "Entitlement",
            "CreditPool",
            "CreditGrant",
            "CreditTransaction",
        )
        return {n: await self.count(getattr(models, n)) for n in names}

    async def check(self) -> None:
        """The invariants every scenario ends with."""
        async with self.ctx.db.reader() as s:
            assert await credits.ledger_problems(s, self.env) == []
            assert await invoice_problems(s, self.env) == []


def money(v: Any) -> Decimal:
    return Decimal(str(v))


def summary(invoices: list[dict]) -> list[tuple]:
    return [(i["type"], i["status"], money(i["amount"]), i["periodStart"][:10]) for i in invoices]
