"""The tenant walk: every REST endpoint and every MCP tool that takes an id is called
with another tenant's ids, and with another environment's ids (the same account's live
key against its test data). Nothing of the victim may come back (its internal ids, its
customer's e-mail and name, its plan's name), no call naming a victim id may succeed,
and the victim's rows stay exactly as they were (0 writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from tanso_mcp.db.models import Base
from tanso_mcp.tools.specs import TOOL_SPECS
from tanso_mcp.web.app import client_api
from tests.conftest import make_tenant
from tests.contract_report import report
from tests.factories import make_plan
from tests.mcp_helpers import inmemory

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
EMAIL = "victim-secret@example.com"
NAME = "VictimSecretName"
PLAN_NAME = "Victimsecretplan"


@dataclass
class Victim:
    env: str
    ref: str
    customer_id: str
    plan_id: str
    feature_id: str
    feature_key: str
    subscription_id: str
    invoice_id: str
    pool_id: str

    def secrets(self) -> dict[str, str]:
        return {
            "customer id": self.customer_id,
            "plan id": self.plan_id,
            "feature id": self.feature_id,
            "subscription id": self.subscription_id,
            "invoice id": self.invoice_id,
            "pool id": self.pool_id,
            "e-mail": EMAIL,
            "name": NAME,
            "plan name": PLAN_NAME,
        }

    def uuids(self) -> set[str]:
        return {
            self.customer_id,
            self.plan_id,
            self.feature_id,
            self.subscription_id,
            self.invoice_id,
            self.pool_id,
        }


async def make_victim(ctx, client, tenant) -> Victim:
    env = tenant.env_ids["test"]
    h = tenant.headers()
    plan = await make_plan(
        ctx, env, key="victimsecretplan", price="10.00", features={"victim_feature": None}
    )

    async def data(method: str, path: str, **kw) -> Any:
        r = await client.request(method, API + path, headers=h, **kw)
        assert r.status_code in (200, 201), (path, r.text)
        return r.json()["data"]

    customer = await data(
        "POST",
        "/customers",
        json={"customerReferenceId": "victim-ref", "email": EMAIL, "firstName": NAME},
    )
    sub = await data(
        "POST",
        "/subscriptions",
        json={"customerReferenceId": "victim-ref", "planId": plan["plan_id"]},
    )
    await data(
        "POST",
        "/credits/victim-ref/grants",
        json={"denomination": "tokens", "amount": 100, "idempotencyKey": "victim-grant"},
    )
    pools = await data("GET", "/credits/victim-ref/pools")
    await data(
        "POST",
        "/events",
        json={
            "eventName": "use",
            "customerReferenceId": "victim-ref",
            "featureKey": "victim_feature",
        },
    )
    return Victim(
        env=env,
        ref="victim-ref",
        customer_id=customer["id"],
        plan_id=plan["plan_id"],
        feature_id=plan["feature_ids"]["victim_feature"],
        feature_key="victim_feature",
        subscription_id=sub["subscription"]["id"],
        invoice_id=sub["invoice"]["id"],
        pool_id=pools[0]["id"],
    )


async def fingerprint(ctx, env: str) -> dict[str, list[str]]:
    """Every row of every tenant-owned table in ``env``, as text (counts and contents)."""
    out: dict[str, list[str]] = {}
    async with ctx.db.reader() as s:
        for table in Base.metadata.sorted_tables:
            # the analytics rollup is derived data the rollup job keeps for every
            # environment whenever it runs (any caller's view may run it); the events it
            # sums are compared
            if "environment_id" not in table.c or table.name == "analytics_rollup":
                continue
            rows = (await s.execute(select(table).where(table.c.environment_id == env))).all()
            out[table.name] = sorted(repr(tuple(r)) for r in rows)
    return out


def rest_calls(v: Victim) -> list[tuple[str, str, Any]]:
    path_ids = {
        "ref": v.ref,
        "id": v.subscription_id,
        "subscriptionId": v.subscription_id,
        "invoiceId": v.invoice_id,
        "poolId": v.pool_id,
        "key": v.feature_key,
        "featureKey": v.feature_key,
    }
    event = {
        "eventName": "walk",
        "customerId": v.customer_id,
        "featureId": v.feature_id,
        "subscriptionId": v.subscription_id,
        "invoiceId": v.invoice_id,
    }
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/test-clock/advance"): {"days": 1},
        ("POST", "/test-clock"): {"frozen": True},
        # a live key on a test environment: refused, nothing stored
        ("POST", "/api/v1/tanso/stripe/connect"): {"stripeSecretKey": "sk_live_walk1234"},
        ("PUT", "/settings/costs"): {},
        ("PUT", "/analytics/alerts/settings"): {"customers": [v.ref]},
        ("POST", "/customers"): {"customerReferenceId": v.ref, "email": "intruder@example.com"},
        ("PATCH", "/customers/{ref}"): {"firstName": "Intruder"},
        ("POST", "/subscriptions"): {"customerReferenceId": v.ref, "planId": v.plan_id},
        ("POST", "/subscriptions/{id}/plan-change"): {
            "changeToPlanId": v.plan_id,
            "changeType": "UPGRADE",
        },
        ("POST", "/credits/{ref}/grants"): {
            "denomination": "tokens",
            "amount": 5,
            "idempotencyKey": "walk",
        },
        ("POST", "/events"): event,
        ("POST", "/events/batch"): {"events": [event]},
        ("POST", "/entitlements"): {"customerReferenceId": v.ref, "featureKey": v.feature_key},
        ("POST", "/entitlements/check"): {
            "customerReferenceId": v.ref,
            "featureKey": v.feature_key,
        },
    }
    calls = []
    for r in client_api().routes:
        rel = r.path.removeprefix(API)
        path = rel
        for name, value in path_ids.items():
            path = path.replace("{" + name + "}", value)
        body = bodies.get((r.method, rel))
        if (r.body is not None or r.body_doc is not None) and body is None:
            raise AssertionError(f"the walk has no body for {r.method} {rel}")
        calls.append((r.method, path, body))
    return calls


def mcp_calls(v: Victim) -> list[tuple[str, dict[str, Any]]]:
    values = {
        "customerReferenceId": v.ref,
        "featureKey": v.feature_key,
        "poolId": v.pool_id,
        "subscriptionId": v.subscription_id,
        "planId": v.plan_id,
        "newPlanId": v.plan_id,
        "invoiceId": v.invoice_id,
        "featureId": v.feature_id,
        "jobId": v.subscription_id,
    }
    filler = {
        "changeType": "UPGRADE",
        "eventIdempotencyKey": "walk-mcp",
        "eventName": "walk",
        "occurredAt": "2026-01-15T09:00:00Z",
        "email": "intruder@example.com",
        "name": "Intruder",
        "key": "intruder",
        "priceAmount": "1",
        "confirmAction": True,
    }
    calls = []
    for spec in TOOL_SPECS:
        fields = spec.params.model_fields
        if not any(name in values for name in fields):
            continue
        args: dict[str, Any] = {}
        for name, info in fields.items():
            if name in values:
                args[name] = values[name]
            elif name in filler:
                args[name] = filler[name]
            elif info.is_required():
                raise AssertionError(f"the walk cannot fill {spec.name}.{name}")
        calls.append((spec.name, args))
    return calls


def leaks(v: Victim, sent: str, answer: str, ok: bool) -> list[str]:
    """What of the victim an answer shows: any secret it was not sent, and on success
    any at all (a call naming a victim id must not succeed)."""
    found = [
        label for label, secret in v.secrets().items() if secret in answer and secret not in sent
    ]
    if ok:
        found += [
            f"succeeded with the victim's {label}"
            for label, secret in v.secrets().items()
            if secret in sent and secret in v.uuids()
        ]
    return found


async def test_tenant_walk(ctx, client, tenant):
    other = await make_tenant(ctx, "intruder")
    victim = await make_victim(ctx, client, tenant)
    # the detector sees the victim's data in the owner's own answer
    own = await client.get(
        f"{API}/subscriptions/{victim.subscription_id}", headers=tenant.headers()
    )
    assert leaks(victim, "", own.text, True)
    before = await fingerprint(ctx, victim.env)
    intruders = {
        "another tenant": (other, "test"),
        "another environment": (tenant, "live"),
    }
    problems: list[str] = []
    rest = mcp = 0
    for who, (t, mode) in intruders.items():
        h = t.headers("admin", mode)
        for method, path, body in rest_calls(victim):
            r = await client.request(method, API + path, headers=h, json=body)
            rest += 1
            if r.status_code >= 500:
                problems.append(f"{who}: {method} {path}: {r.status_code}")
            sent = path + repr(body)
            ok = 200 <= r.status_code < 300
            if ok and path.endswith("/batch"):  # 200 with per-item results
                ok = r.json()["data"]["accepted"] > 0
            for leak in leaks(victim, sent, r.text, ok):
                problems.append(f"{who}: {method} {path} ({r.status_code}): {leak}")
        async with inmemory(ctx, t.key("admin", mode)) as session:
            for name, args in mcp_calls(victim):
                result = await session.call_tool(name, args)
                mcp += 1
                answer = repr(result.structured_content) + repr(result.content)
                content = result.structured_content or {}
                if content.get("error") == "internal_error":
                    problems.append(f"{who}: {name}: internal_error")
                for leak in leaks(victim, repr(args), answer, not result.is_error):
                    problems.append(f"{who}: tool {name}: {leak}")
    after = await fingerprint(ctx, victim.env)
    writes = [table for table in before if before[table] != after[table]]
    report(
        f"tenant walk: {rest} REST calls and {mcp} MCP tool calls with another tenant's "
        f"and another environment's ids: {len(problems)} leaks, {len(writes)} tables written"
    )
    assert not problems, problems
    assert not writes, {t: (len(before[t]), len(after[t])) for t in writes}
