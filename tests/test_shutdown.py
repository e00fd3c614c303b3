"""SIGTERM stops ``tanso-mcp serve`` safely: it stops accepting, answers the requests in
flight, drains the group-commit writer, and hands webhook deliveries still queued to the
outbox, from which the next process delivers them. A real server process, real HTTP
clients under ingest load, and a local HTTP receiver for the webhooks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from tanso_mcp.db import models
from tests.servekit import Receiver, Served

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
ROOT = Path(__file__).resolve().parent.parent


def plugin_path(tmp_path: Path) -> str:
    """``tanso-webhooks`` from the source tree, registered in the ``tanso_mcp``
    entry-point group by a distribution record on the path (what ``pip install`` does),
    so the server process discovers it the ordinary way."""
    site = tmp_path / "site"
    info = site / "tanso_webhooks_from_source-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tanso-webhooks-from-source\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text("[tanso_mcp]\nwebhooks = tanso_webhooks\n")
    return f"{site}:{ROOT / 'plugins' / 'tanso-webhooks'}:{ROOT}"


async def stored(db_url: str) -> tuple[set[str], list[dict]]:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            keys = set((await conn.execute(select(models.Event.idempotency_key))).scalars())
            outbox = [
                dict(r._mapping)
                for r in await conn.execute(
                    select(models.OutboxEntry.key, models.OutboxEntry.payload).where(
                        models.OutboxEntry.plugin == "webhooks"
                    )
                )
            ]
    finally:
        await engine.dispose()
    return keys, outbox


async def outbox_count(db_url: str) -> int:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(models.OutboxEntry)))
    finally:
        await engine.dispose()


async def test_sigterm_under_load_loses_no_event_and_no_delivery(db_url, tmp_path):
    receiver = Receiver()
    receiver.status = 503  # deliveries stay queued, retrying, until the server stops
    (tmp_path / "tanso.toml").write_text(
        "[plugins.webhooks]\n"
        f'urls = ["{receiver.url}"]\n'
        'secret = "whsec_test"\n'
        'events = ["customer.*"]\n'
        "max_attempts = 1000\n"
        "backoff = 0.05\n"
        "timeout = 2.0\n"
    )
    env = {"TANSO_CONFIG": str(tmp_path / "tanso.toml"), "PYTHONPATH": plugin_path(tmp_path)}
    served = Served(tmp_path, db_url, **env)
    try:
        served.wait_ready()
        key = served.admin_key()
        h = {"X-API-Key": key}
        acked: set[str] = set()
        answers: dict[int, int] = {}
        refused = 0
        stop = asyncio.Event()
        counter = iter(range(10**9))

        async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
            for i in range(12):
                r = await http.post(
                    f"{API}/customers", json={"customerReferenceId": f"wh{i}"}, headers=h
                )
                assert r.status_code == 201, r.text
            await asyncio.sleep(0.3)  # deliveries are being tried (and refused)
            assert receiver.received == []

            async def worker() -> None:
                nonlocal refused
                async with httpx.AsyncClient(base_url=served.base, timeout=30) as c:
                    while not stop.is_set():
                        k = f"evt-{next(counter)}"
                        body = {
                            "eventName": "call",
                            "customerReferenceId": "c1",
                            "featureKey": "api",
                            "eventIdempotencyKey": k,
                        }
                        try:
                            r = await c.post(f"{API}/events", json=body, headers=h)
                        except httpx.ConnectError:  # the server stopped accepting
                            refused += 1
                            await asyncio.sleep(0.01)
                            continue
                        except httpx.HTTPError:
                            continue  # cut off after SIGTERM: not acknowledged
                        answers[r.status_code] = answers.get(r.status_code, 0) + 1
                        if r.status_code in (200, 201):
                            acked.add(k)

            tasks = [asyncio.create_task(worker()) for _ in range(6)]
            await asyncio.sleep(2.0)
            before_term = len(acked)
            t0 = time.monotonic()
            code = await asyncio.to_thread(served.terminate)
            stopped_in = time.monotonic() - t0
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*tasks)

        # uvicorn ends a process it stopped on a signal by that signal, once shut down
        assert code in (0, -15), served.output[-3000:]
        assert "Application shutdown complete" in served.output
        assert stopped_in < 20, stopped_in
        assert before_term > 5 and refused > 0, (before_term, refused)
        assert set(answers) <= {200, 201, 503}, answers
        events, outbox = await stored(db_url)
        assert acked <= events, len(acked - events)
        # every queued delivery (12 customers) was handed over, none sent
        assert receiver.received == []
        assert len(outbox) == 12, outbox
        assert {o["payload"]["event"] for o in outbox} == {"customer.created"}
        assert "handed to the outbox" in served.output
        assert "Traceback" not in served.output, served.output[-3000:]

        # the next process delivers them
        receiver.status = 200
        nxt = Served(tmp_path, db_url, **env)
        try:
            nxt.wait_ready()
            for _ in range(200):  # up to 20 s
                if len(receiver.received) >= 12:
                    break
                await asyncio.sleep(0.1)
        finally:
            nxt.terminate()
        ids = {headers.get("Tanso-Event-Id") for headers, _ in receiver.received}
        assert len(ids) == 12, receiver.received
        assert await outbox_count(db_url) == 0
    finally:
        served.terminate()
        receiver.close()
