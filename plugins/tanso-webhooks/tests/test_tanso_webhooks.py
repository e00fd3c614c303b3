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


class _MemoryOutbox:
    """The outbox protocol in memory, for the plugin's own tests (the core's database
    outbox is tested in tests/test_outbox.py and end to end in tests/test_shutdown.py)."""

    def __init__(self):
        self.items: dict[str, dict] = {}
        self.done_ids: list[str] = []
        self.retried: list[str] = []

    async def put(self, plugin, items):
        new = [k for k in items if k not in self.items]
        for k in new:
            self.items[k] = {"id": k, "payload": dict(items[k]), "attempts": 0}
        return len(new)

    async def claim(self, plugin, *, limit=100, lease_seconds=60.0):
        from tanso_mcp.plugin import OutboxItem

        out = []
        for k, v in list(self.items.items())[:limit]:
            if k in self.done_ids:
                continue
            v["attempts"] += 1
            out.append(OutboxItem(k, k, v["payload"], v["attempts"]))
        return out

    async def done(self, item_id):
        self.items.pop(item_id, None)
        self.done_ids.append(item_id)

    async def retry(self, item_id, *, delay_seconds, error=None):
        self.retried.append(item_id)


async def test_shutdown_hands_pending_deliveries_to_the_outbox_and_the_next_run_sends_them():
    import asyncio

    refused = []

    def down(request: httpx.Request) -> httpx.Response:
        refused.append(request)
        return httpx.Response(503)

    box = _MemoryOutbox()
    ctx = _ctx(urls=["http://r/hook"], secret="k", backoff=0.05, max_attempts=1000)
    ctx.extras["outbox"] = box
    ctx.extras["tanso_webhooks"] = wh.Dispatcher(transport=httpx.MockTransport(down))
    wh.tanso_domain_event(event=_event(), ctx=ctx)
    await asyncio.sleep(0.1)
    assert refused  # being retried
    assert await wh.tanso_shutdown(ctx=ctx) == 1
    (item,) = box.items.values()
    assert item["payload"]["eventId"] == "evt_1" and item["payload"]["url"] == "http://r/hook"

    seen = []

    def up(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    nxt = _ctx(urls=["http://r/hook"], secret="k")
    nxt.extras["outbox"] = box
    nxt.extras["tanso_webhooks"] = wh.Dispatcher(transport=httpx.MockTransport(up))
    wh.tanso_startup(ctx=nxt)
    for _ in range(100):
        if box.done_ids:
            break
        await asyncio.sleep(0.02)
    await wh.tanso_shutdown(ctx=nxt)
    assert box.done_ids and not box.items
    (sent,) = seen
    assert sent.headers["Tanso-Event-Id"] == "evt_1"
    assert wh.verify("k", sent.headers[wh.SIGNATURE_HEADER], sent.content, now=time.time())
