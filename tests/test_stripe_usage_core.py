"""The overage reporter's exactly-once contract, provider-independent: run against a
small in-process meter backend ("ledger", below) that de-duplicates identifiers the way
Stripe's meter events do. (The same properties against the fake Stripe server and the
real Stripe provider are in tests/test_stripe_usage.py.)

Covered: only uncovered units are reported, in whole units, per (subscription, feature,
period), accumulate features never; a crash between send and record re-sends the same
identifier once the claim lease expires; an outage marks reports ``unknown`` and they
catch up; two processes reporting at once never double-report; a customer not linked
yet waits."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from tanso_mcp.bootstrap import build_context
from tanso_mcp.db.models import Customer, Environment, Subscription
from tanso_mcp.db.stripe_usage_models import MeterReport
from tanso_mcp.plugin import (
    PROVIDER_INVOICING,
    USAGE_REPORTING,
    ExternalRef,
    ProviderInfo,
    ProviderUnavailable,
    build_plugins,
    hookimpl,
)
from tanso_mcp.services import stripe_usage
from tanso_mcp.services.jobs import run_due
from tests.metering_factories import give_credits, metered_setup

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
D = Decimal


class Ledger:
    """The meter backend: accepted events by identifier, an outage switch."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[str, str, Decimal]] = {}
        self.calls = 0
        self.up = True

    def total(self, customer: str = "cus_stripe_1", feature: str = "api_calls") -> Decimal:
        return sum((v for c, f, v in self.events.values() if c == customer and f == feature), D(0))


class LedgerProvider:
    name = "ledger"
    capabilities = frozenset({PROVIDER_INVOICING, USAGE_REPORTING})

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def report_usage(self, report, *, idempotency_key):
        self.ledger.calls += 1
        await asyncio.sleep(0)  # a real call yields to other tasks
        if not self.ledger.up:
            raise ProviderUnavailable("meter backend unreachable")
        # a repeated identifier is "already recorded": the same answer, nothing added
        self.ledger.events.setdefault(
            idempotency_key, (report.customer.external_id, report.feature_key, report.quantity)
        )
        return ExternalRef(idempotency_key)

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

    async def parse_webhook(self, headers, body):
        return []


class LedgerPlugin:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @hookimpl
    def tanso_payment_providers(self):
        return [ProviderInfo("ledger", "Meter ledger", LedgerProvider.capabilities)]

    @hookimpl
    def tanso_make_payment_provider(self, name, config, ctx):
        return LedgerProvider(self.ledger) if name == "ledger" else None


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
async def ctx(settings, clock, ledger):
    c = build_context(
        settings,
        clock=clock,
        plugins=build_plugins(load_entrypoints=False, extra=[LedgerPlugin(ledger)]),
    )
    yield c
    await c.close()


def rule(mode="reset"):
    return {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "tokens",
            "price_per_unit": "0.02",
            "reset_mode": mode,
        },
        "credits": {"denomination": "AI_TOKENS"},
    }


async def post(client, tenant, key, units, feature="api_calls"):
    r = await client.post(
        f"{API}/events",
        json={
            "eventIdempotencyKey": key,
            "eventName": "tokens",
            "customerReferenceId": "cus_1",
            "featureKey": feature,
            "usageUnits": units,
        },
        headers=tenant.headers("client"),
    )
    assert r.status_code == 201, r.text


async def linked_setup(ctx, env, *, link_customer=True):
    s = await metered_setup(
        ctx, env, rule=rule(), extra_features={"storage": json.dumps(rule("accumulate"))}
    )
    async with ctx.db.unit_of_work() as db:
        await db.execute(
            update(Environment)
            .where(Environment.id == env)
            .values(payment_provider="ledger", stripe_mode="STRIPE_DRIVEN")
        )
        await db.execute(
            update(Subscription)
            .where(Subscription.id == s["subscription_id"])
            .values(provider_subscription_id="sub_stripe_1")
        )
        if link_customer:
            await db.execute(
                update(Customer)
                .where(Customer.reference_id == "cus_1")
                .values(provider_customer_id="cus_stripe_1")
            )
    await give_credits(ctx, env, "cus_1", "AI_TOKENS", "100", subscription_id=s["subscription_id"])
    ctx.invalidate(env)
    return s


async def reports(ctx):
    async with ctx.db.reader() as s:
        return list((await s.execute(select(MeterReport).order_by(MeterReport.from_q))).scalars())


async def sweep(ctx, env):
    return await stripe_usage.report_overage(ctx, env, await ctx.clocks.now(env))


async def test_overage_reported_once_in_whole_units(ctx, client, tenant, ledger):
    env = tenant.env_ids["test"]
    await linked_setup(ctx, env)
    await post(client, tenant, "e1", 60)  # credits
    await post(client, tenant, "e2", 70.5)  # 40 credits + 30.5 overage
    await post(client, tenant, "e3", 9, feature="storage")  # accumulate: never forwarded
    run = await sweep(ctx, env)
    assert (run.claimed, run.sent, run.failed) == (1, 1, 0)
    assert ledger.total() == 30 and ledger.total(feature="storage") == 0
    again = await sweep(ctx, env)  # nothing new (0.5 waits for a whole unit)
    assert (again.claimed, again.sent) == (0, 0) and ledger.calls == 1
    await post(client, tenant, "e4", 10.5)  # overage 41 in total
    await run_due(ctx, env)  # the job runner's pass runs the sweep
    assert ledger.total() == 41 and len(ledger.events) == 2
    rows = await reports(ctx)
    assert [(r.from_q, r.to_q, r.status) for r in rows] == [
        (0, 300000, "sent"),
        (300000, 410000, "sent"),
    ]
    view = (
        await client.get(f"{API}/stripe/usage-reconciliation", headers=tenant.headers("read"))
    ).json()["data"]
    api = next(i for i in view["items"] if i["featureKey"] == "api_calls")
    assert view["forwarding"] is True and api["forwarded"] is True
    assert D(str(api["unitsBillable"])) == 41 and D(str(api["unitsReported"])) == 41
    assert D(str(api["unitsPending"])) == 0 and D(str(api["unitsCoveredByCredits"])) == 100


async def test_crash_between_send_and_record_resends_the_same_identifier(
    ctx, client, tenant, ledger, clock, monkeypatch
):
    env = tenant.env_ids["test"]
    await linked_setup(ctx, env)
    await post(client, tenant, "e1", 125)  # 25 overage

    class Crash(BaseException):
        pass

    real = stripe_usage.record_outcomes

    async def crash(*a, **k):
        raise Crash

    monkeypatch.setattr(stripe_usage, "record_outcomes", crash)
    with pytest.raises(BaseExceptionGroup):  # the process "dies" after the send
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sweep(ctx, env))
    monkeypatch.setattr(stripe_usage, "record_outcomes", real)
    assert ledger.total() == 25
    [row] = await reports(ctx)
    assert row.status == "pending"
    # another pass within the claim lease leaves it to its (dead) claimer
    assert (await sweep(ctx, env)).sent == 0 and ledger.calls == 1
    clock.set(clock.now() + timedelta(seconds=61))
    run = await sweep(ctx, env)
    assert run.sent == 1 and ledger.calls == 2  # sent again, same identifier
    assert ledger.total() == 25 and len(ledger.events) == 1
    [row] = await reports(ctx)
    assert row.status == "sent"


async def test_outage_marks_unknown_and_catches_up(ctx, client, tenant, ledger, clock):
    env = tenant.env_ids["test"]
    await linked_setup(ctx, env)
    await post(client, tenant, "e1", 112)
    ledger.up = False
    run = await sweep(ctx, env)
    assert (run.sent, run.failed) == (0, 1)
    [row] = await reports(ctx)
    assert row.status == "unknown" and row.attempts == 1 and "unreachable" in row.last_error
    await post(client, tenant, "e2", 3)  # more overage meanwhile: its own step
    ledger.up = True
    clock.set(clock.now() + timedelta(seconds=6))  # past the first back-off
    await run_due(ctx, env)
    assert ledger.total() == 15
    assert [(r.to_q - r.from_q, r.status) for r in await reports(ctx)] == [
        (120000, "sent"),
        (30000, "sent"),
    ]


async def test_unlinked_customer_waits(ctx, client, tenant, ledger, clock):
    env = tenant.env_ids["test"]
    await linked_setup(ctx, env, link_customer=False)
    await post(client, tenant, "e1", 107)
    run = await sweep(ctx, env)
    assert run.failed == 1 and ledger.calls == 0
    [row] = await reports(ctx)
    assert row.status == "rejected" and "not linked" in row.last_error
    async with ctx.db.unit_of_work() as db:
        await db.execute(
            update(Customer)
            .where(Customer.reference_id == "cus_1")
            .values(provider_customer_id="cus_stripe_1")
        )
    clock.set(clock.now() + timedelta(seconds=6))
    await sweep(ctx, env)
    assert ledger.total() == 7


async def test_two_processes_never_double_report(settings, clock, ledger, client, tenant, ctx):
    """Two application contexts (two processes' worth of pools and caches) on one
    database, sweeping the same environment at once, repeatedly, while usage grows."""
    env = tenant.env_ids["test"]
    await linked_setup(ctx, env)
    other = build_context(
        settings,
        clock=clock,
        plugins=build_plugins(load_entrypoints=False, extra=[LedgerPlugin(ledger)]),
    )
    try:
        for i in range(6):
            await post(client, tenant, f"e{i}", 120 if i == 0 else 7)
            await asyncio.gather(sweep(ctx, env), sweep(other, env), sweep(ctx, env))
    finally:
        await other.close()
    assert ledger.total() == 20 + 5 * 7
    rows = await reports(ctx)
    assert all(r.status == "sent" for r in rows)
    # the chain has no gap and no overlap
    assert [r.from_q for r in rows] == [0] + [r.to_q for r in rows[:-1]]
    assert rows[-1].to_q == 550000
