"""tanso-webhooks on its own: signatures, configuration, delivery with retries."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
import tanso_webhooks as wh

from tanso_mcp.plugin import DomainEvent

pytestmark = pytest.mark.anyio


def _event(name: str = "invoice.paid") -> DomainEvent:
    return DomainEvent(
        name=name,
        environment_id="env_1",
        account_id="acct_1",
        mode="test",
        occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
        payload={"invoiceId": "inv_1", "amount": Decimal("16.67")},
        id="evt_1",
    )


def _ctx(**table):
    return SimpleNamespace(settings=SimpleNamespace(plugins={"webhooks": table}), extras={})


def test_signature_round_trip_and_tampering():
    body = b'{"a":1}'
    header = wh.sign("s3cret", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert wh.verify("s3cret", header, body, now=1_700_000_100)
    assert not wh.verify("other", header, body, now=1_700_000_100)
    assert not wh.verify("s3cret", header, b'{"a":2}', now=1_700_000_100)
    assert not wh.verify("s3cret", header, body, now=1_700_000_000 + 301)  # replay window
    assert not wh.verify("s3cret", None, body)
    assert not wh.verify("s3cret", "garbage", body)


def test_config_from_settings_and_environment(monkeypatch):
    assert wh.load_config(_ctx()) is None  # idle without urls and secret
    cfg = wh.load_config(_ctx(urls=["http://a"], secret="x", events=["invoice.*"]))
    assert cfg.urls == ("http://a",) and cfg.wants("invoice.paid")
    assert not cfg.wants("subscription.created")
    monkeypatch.setenv("TANSO_WEBHOOKS_URLS", "http://b, http://c")
    monkeypatch.setenv("TANSO_WEBHOOKS_SECRET", "y")
    cfg = wh.load_config(_ctx())
    assert cfg.urls == ("http://b", "http://c") and cfg.secret == "y" and cfg.wants("anything")


def test_body_keeps_exact_numbers():
    body = json.loads(wh.event_body(_event()), parse_float=Decimal)
    assert body["data"]["amount"] == Decimal("16.67")
    assert body["type"] == "invoice.paid" and body["createdAt"] == "2026-03-01T00:00:00Z"


async def test_delivery_is_signed_and_retried_until_it_succeeds():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) < 3 else 200)

    ctx = _ctx(urls=["http://receiver/hook"], secret="k", backoff=0.001)
    ctx.extras["tanso_webhooks"] = wh.Dispatcher(transport=httpx.MockTransport(handler))
    assert wh.tanso_domain_event(event=_event(), ctx=ctx) is None  # returns at once
    await wh.dispatcher_for(ctx).flush()
    assert len(seen) == 3
    last = seen[-1]
    assert last.headers["Tanso-Event"] == "invoice.paid"
    assert last.headers["Tanso-Event-Id"] == "evt_1"
    assert wh.verify("k", last.headers[wh.SIGNATURE_HEADER], last.content, now=time.time())
    (delivery,) = wh.dispatcher_for(ctx).history
    assert delivery.ok and delivery.attempts == 3


async def test_a_dead_receiver_is_logged_not_raised(caplog):
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    ctx = _ctx(urls=["http://dead/hook"], secret="k", backoff=0.001, max_attempts=2)
    ctx.extras["tanso_webhooks"] = wh.Dispatcher(transport=httpx.MockTransport(handler))
    wh.tanso_domain_event(event=_event(), ctx=ctx)
    await wh.dispatcher_for(ctx).flush()
    (delivery,) = wh.dispatcher_for(ctx).history
    assert not delivery.ok and delivery.attempts == 2 and delivery.error == "ConnectError"
    assert any("failed after 2 attempts" in r.getMessage() for r in caplog.records)


async def test_unwanted_events_are_not_sent():
    calls = []
    ctx = _ctx(urls=["http://r"], secret="k", events=["subscription.*"])
    ctx.extras["tanso_webhooks"] = wh.Dispatcher(
        transport=httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(200))
    )
    wh.tanso_domain_event(event=_event("invoice.paid"), ctx=ctx)
    await wh.dispatcher_for(ctx).flush()
    assert calls == []
