"""The outbox behind ``tanso_mcp.plugin.outbox_of``: idempotent hand-over, a claim is
exclusive until its lease runs out, retry and done."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tanso_mcp.plugin import Outbox, outbox_of

pytestmark = pytest.mark.anyio


async def test_put_is_idempotent_and_claims_are_exclusive(ctx, clock):
    box = outbox_of(ctx)
    assert isinstance(box, Outbox)
    items = {f"k{i}": {"n": i, "body": "{}"} for i in range(30)}
    assert await box.put("p", items) == 30
    assert await box.put("p", {"k0": {"n": 0}, "k30": {"n": 30}}) == 1
    assert await box.put("other", {"k0": {"n": 0}}) == 1  # keys are per plugin
    a, b = await asyncio.gather(box.claim("p", limit=20), box.claim("p", limit=20))
    ids_a, ids_b = {i.id for i in a}, {i.id for i in b}
    assert not ids_a & ids_b and len(ids_a | ids_b) == 31
    assert await box.claim("p") == []  # all leased
    first = a[0] if a else b[0]
    assert first.attempts == 1 and first.payload["body"] == "{}"
    await box.done(first.id)
    await box.retry((a + b)[1].id, delay_seconds=0, error="HTTP 503")
    again = await box.claim("p")
    assert [i.id for i in again] == [(a + b)[1].id] and again[0].attempts == 2
    await box.retry(again[0].id, delay_seconds=3600)
    assert await box.claim("p") == []
    # a process that died with a lease: the entry is claimed again once it runs out
    clock.set(clock.now() + timedelta(seconds=61))
    reclaimed = await box.claim("p", limit=100)
    assert len(reclaimed) == 29
    assert [i.key for i in await box.claim("other")] == ["k0"]
