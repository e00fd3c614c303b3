"""Plugin architecture: documented hooks, the native provider as default, external
providers (registered in code and installed through the ``tanso_mcp`` entry-point
group) selected per environment, domain events after commit, the webhooks plugin end to
end, and ``tanso-mcp plugins``."""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from tanso_mcp.bootstrap import build_context
from tanso_mcp.db.models import Customer, Environment, Subscription
from tanso_mcp.plugin import (
    CHECKOUT,
    PROVIDER_INVOICING,
    PaymentProvider,
    ProviderInfo,
    build_plugins,
    hookimpl,
    hookspecs,
)
from tanso_mcp.services import payments
from tanso_mcp.web.app import create_app
from tests.conftest import make_tenant
from tests.factories import make_plan

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


class FakePay:
    """A provider that owns invoicing (like Stripe): no mark-paid, no core subscriptions."""

    name = "fakepay"
    capabilities = frozenset({PROVIDER_INVOICING, CHECKOUT})

    async def ensure_customer(self, customer, *, idempotency_key):
        return None

    async def sync_plan(self, plan, *, idempotency_key):
        return None

    async def create_checkout(self, subscription, *, idempotency_key):
        return None

    async def upsert_subscription(self, subscription, *, idempotency_key):
        return None

    async def cancel_subscription(self, subscription, *, immediate, idempotency_key):
        return None

    async def report_usage(self, report, *, idempotency_key):
        return None

    async def parse_webhook(self, headers, body):
        return []


class FakePayPlugin:
    @hookimpl
    def tanso_payment_providers(self):
        return [ProviderInfo("fakepay", "Fake pay", FakePay.capabilities)]

    @hookimpl
    def tanso_make_payment_provider(self, name, config, ctx):
        return FakePay() if name == "fakepay" else None


class Recorder:
    def __init__(self, ctx_holder: list):
        self.events: list[tuple[Any, bool]] = []
        self.ctx_holder = ctx_holder

    @hookimpl
    def tanso_domain_event(self, event, ctx):
        async def check():
            # runs after the commit: another connection already sees the rows
            async with ctx.db.reader() as s:
                seen = await s.scalar(select(Customer.id).limit(1)) is not None
            self.events.append((event, seen))

        return check()


class Broken:
    @hookimpl
    def tanso_domain_event(self, event, ctx):
        raise RuntimeError("plugin bug")


@asynccontextmanager
async def app_with(settings, clock, *plugins, load_entrypoints=False):
    ctx = build_context(
        settings,
        clock=clock,
        plugins=build_plugins(load_entrypoints=load_entrypoints, extra=plugins),
    )
    try:
        tenant = await make_tenant(ctx)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(ctx)), base_url="http://t"
        ) as client:
            yield ctx, tenant, client
    finally:
        await ctx.close()


def _dist_info(tmp_path: Path, dist: str, entry: str, module_src: str | None = None) -> None:
    """What `pip install` leaves behind: a dist-info with an entry point (and, for a
    throw-away plugin, its module)."""
    info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[tanso_mcp]\n{entry}\n")
    if module_src is not None:
        name = entry.split("=")[1].strip()
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_src))


# --------------------------------------------------------------------------- hooks


def test_every_hook_is_documented_in_code_and_in_the_authors_guide():
    guide = (ROOT / "plugins" / "README.md").read_text()
    hooks = [
        n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("tanso_")
    ]
    assert set(hooks) >= {
        "tanso_payment_providers",
        "tanso_make_payment_provider",
        "tanso_domain_event",
    }
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 40, name
        assert f"`{name}" in guide, f"{name} is missing from plugins/README.md"


def test_a_typo_in_a_hook_name_fails_at_start():
    class Typo:
        @hookimpl
        def tanso_domain_evnt(self, event, ctx):
            pass

    with pytest.raises(Exception, match="tanso_domain_evnt"):
        build_plugins(load_entrypoints=False, extra=[Typo()])


async def test_native_provider_is_the_default(ctx, tenant):
    async with ctx.db.reader() as s:
        provider = await payments.provider_for(ctx, s, tenant.env_ids["test"])
    assert provider.name == "native" and isinstance(provider, PaymentProvider)
    assert "core_invoicing" in provider.capabilities and "mark_paid" in provider.capabilities


# --------------------------------------------------------------------------- providers


async def test_an_external_provider_is_selected_for_its_environment(settings, clock):
    async with app_with(settings, clock, FakePayPlugin()) as (ctx, tenant, client):
        env = tenant.env_ids["test"]
        plan = await make_plan(ctx, env, key="pro", price="9.00")
        h = tenant.headers()
        await client.post("/api/v1/client/customers", json={"customerReferenceId": "c"}, headers=h)
        r = await client.post(
            "/api/v1/client/subscriptions",
            json={"customerReferenceId": "c", "planId": plan["plan_id"]},
            headers=h,
        )
        assert r.status_code == 201
        invoice_id = r.json()["data"]["invoice"]["id"]
        async with ctx.db.unit_of_work() as s:
            await s.execute(
                update(Environment).where(Environment.id == env).values(payment_provider="fakepay")
            )
        async with ctx.db.reader() as s:
            provider = await payments.provider_for(ctx, s, env)
            live = await payments.provider_for(ctx, s, tenant.env_ids["live"])
        assert isinstance(provider, FakePay) and live.name == "native"
        assert "fakepay" in ctx.plugins.providers()
        # the core asks the provider's capabilities
        r = await client.post(f"/api/v1/client/billing/invoices/{invoice_id}/mark-paid", headers=h)
        assert r.status_code == 400 and "collected by the payment provider" in r.text
        r = await client.post(
            "/api/v1/client/subscriptions",
            json={"customerReferenceId": "c", "planId": plan["plan_id"]},
            headers=h,
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "precondition_failed"


async def test_a_provider_installed_through_an_entry_point(
    settings, clock, tmp_path, monkeypatch, capsys
):
    _dist_info(
        tmp_path,
        "fakepay-plugin",
        "fakepay = fakepay_plugin",
        """
        from tanso_mcp.plugin import ProviderInfo, hookimpl, PROVIDER_INVOICING
        from tests.test_plugins import FakePay

        @hookimpl
        def tanso_payment_providers():
            return [ProviderInfo("fakepay", "Fake pay (installed)", frozenset({PROVIDER_INVOICING}))]

        @hookimpl
        def tanso_make_payment_provider(name, config, ctx):
            return FakePay() if name == "fakepay" else None

        @hookimpl
        def tanso_plugin_info():
            return {"name": "fakepay-plugin", "description": "test provider"}
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fakepay_plugin", raising=False)
    plugins = build_plugins()
    entry = plugins.providers()["fakepay"]
    assert entry.plugin == "fakepay" and entry.info.title == "Fake pay (installed)"
    described = plugins.describe()
    mine = next(p for p in described["plugins"] if p["name"] == "fakepay")
    assert mine["distribution"] == "fakepay-plugin 1.0" and not mine["builtin"]
    # selected for an environment
    async with app_with(settings, clock, load_entrypoints=True) as (ctx, tenant, _client):
        env = tenant.env_ids["live"]
        async with ctx.db.unit_of_work() as s:
            await s.execute(
                update(Environment).where(Environment.id == env).values(payment_provider="fakepay")
            )
        async with ctx.db.reader() as s:
            chosen = await payments.provider_for(ctx, s, env)
        assert chosen.name == "fakepay" and isinstance(chosen, PaymentProvider)
    # and listed by the CLI
    from tanso_mcp.cli import main

    assert main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"native", "fakepay"} <= {p["name"] for p in out["providers"]}
    assert {h["name"] for h in out["hooks"]} >= {
        "tanso_domain_event",
        "tanso_make_payment_provider",
    }
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "fakepay" in text and "tanso_domain_event" in text and "fakepay-plugin 1.0" in text


async def test_an_unknown_provider_name_is_a_clear_error(ctx, client, tenant):
    env = tenant.env_ids["test"]
    async with ctx.db.unit_of_work() as s:
        await s.execute(
            update(Environment).where(Environment.id == env).values(payment_provider="nopay")
        )
    await client.post(
        "/api/v1/client/customers", json={"customerReferenceId": "c"}, headers=tenant.headers()
    )
    plan = await make_plan(ctx, env, key="pro", price="9.00")
    r = await client.post(
        "/api/v1/client/subscriptions",
        json={"customerReferenceId": "c", "planId": plan["plan_id"]},
        headers=tenant.headers(),
    )
    assert r.status_code == 400 and "not installed" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- domain events


async def test_domain_events_reach_plugins_after_commit_and_never_for_failures(settings, clock):
    holder: list = []
    rec = Recorder(holder)
    async with app_with(settings, clock, rec, Broken()) as (ctx, tenant, client):
        env = tenant.env_ids["test"]
        plan = await make_plan(ctx, env, key="pro", price="0", timing="IN_ARREARS")
        h = tenant.headers()
        r = await client.post(
            "/api/v1/client/customers", json={"customerReferenceId": "c"}, headers=h
        )
        assert r.status_code == 201  # the broken plugin did not fail the request
        r = await client.post(
            "/api/v1/client/customers", json={"customerReferenceId": "c"}, headers=h
        )
        assert r.status_code == 409
        r = await client.post(
            "/api/v1/client/subscriptions",
            json={"customerReferenceId": "c", "planId": plan["plan_id"]},
            headers=h,
        )
        assert r.status_code == 201
        names = [e.name for e, _ in rec.events]
        assert names == [
            "customer.created",
            "subscription.created",
            "invoice.created",
            "subscription.activated",
        ]
        assert all(seen for _, seen in rec.events)
        event = rec.events[1][0]
        assert (event.environment_id, event.account_id, event.mode) == (
            env,
            tenant.account_id,
            "test",
        )
        assert event.payload["planId"] == plan["plan_id"] and event.id
        # jobs announce theirs too, after their own commit
        await client.post("/api/v1/client/test-clock/advance", json={"days": 31}, headers=h)
        names = [e.name for e, _ in rec.events]
        assert "subscription.renewed" in names and "invoice.due" in names


async def test_webhooks_plugin_installed_through_its_entry_point(
    settings, clock, tmp_path, monkeypatch
):
    import tanso_webhooks_loader  # noqa: F401  (makes the plugin's source importable)

    _dist_info(tmp_path, "tanso-webhooks", "webhooks = tanso_webhooks")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tanso_webhooks as wh

    settings = settings.model_copy(
        update={"plugins": {"webhooks": {"urls": ["http://receiver/hook"], "secret": "whsec_t"}}}
    )
    received: list[tuple[httpx.Request, bool]] = []
    async with app_with(settings, clock, load_entrypoints=True) as (ctx, tenant, client):
        assert ctx.plugins.pm.get_plugin("webhooks") is wh

        async def receiver(request: httpx.Request) -> httpx.Response:
            async with ctx.db.reader() as s:  # delivered after the commit
                committed = await s.scalar(select(Customer.id).limit(1)) is not None
            received.append((request, committed))
            return httpx.Response(204)

        ctx.extras["tanso_webhooks"] = wh.Dispatcher(transport=httpx.MockTransport(receiver))
        h = tenant.headers()
        r = await client.post(
            "/api/v1/client/customers", json={"customerReferenceId": "c"}, headers=h
        )
        assert r.status_code == 201
        r = await client.post(
            "/api/v1/client/customers", json={"customerReferenceId": "c"}, headers=h
        )
        assert r.status_code == 409
        await wh.dispatcher_for(ctx).flush()
    ((request, committed),) = received
    assert committed
    assert request.headers["Tanso-Event"] == "customer.created"
    assert wh.verify("whsec_t", request.headers["Tanso-Signature"], request.content)
    body = json.loads(request.content)
    assert body["data"]["customer"]["customerReferenceId"] == "c"
    assert body["environmentId"] == tenant.env_ids["test"]


async def test_job_events_for_a_renewal_carry_the_environment(settings, clock):
    rec = Recorder([])
    async with app_with(settings, clock, rec) as (ctx, tenant, client):
        env = tenant.env_ids["test"]
        plan = await make_plan(ctx, env, key="pro", price="5.00", timing="IN_ARREARS")
        h = tenant.headers()
        await client.post("/api/v1/client/customers", json={"customerReferenceId": "c"}, headers=h)
        await client.post(
            "/api/v1/client/subscriptions",
            json={"customerReferenceId": "c", "planId": plan["plan_id"]},
            headers=h,
        )
        await client.post("/api/v1/client/test-clock/advance", json={"days": 40}, headers=h)
        renewed = [e for e, _ in rec.events if e.name == "subscription.renewed"]
        assert len(renewed) == 1 and renewed[0].environment_id == env
        async with ctx.db.reader() as s:
            sub = await s.scalar(select(Subscription))
        assert renewed[0].payload["subscriptionId"] == sub.id
