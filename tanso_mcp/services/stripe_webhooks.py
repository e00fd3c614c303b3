"""Stripe webhooks: verified, recorded once, answered at once, processed after the
commit, retried until processed.

1. ``receive``: the provider verifies the signature over the raw body (missing or bad →
   400, nothing stored); each event is inserted into ``webhook_inbox`` unique on
   (environment, provider, event id) — a redelivery finds its row and has no second
   effect — and the request is answered 200.
2. ``process``: after the commit, in the background. The event only says *which*
   objects changed; their current state is read back from Stripe (outside any
   transaction) and applied by ``stripe_mirror`` in one unit of work, which also marks
   the inbox row processed. Events delivered late or out of order therefore converge
   on what Stripe holds now: a late "active" after a deletion never reactivates, a late
   payment failure after a payment never locks the customer out.
3. A processing failure (Stripe unreachable, a bug) leaves the row unprocessed with a
   retry time; the job runner's pass (``retry_due``) processes it again, with backoff.
   Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, is_dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from ..db.models import Environment, WebhookInbox
from ..db.types import new_id
from ..errors import InvalidRequest, NotFound
from ..plugin.api import (
    WEBHOOKS,
    ExternalCheckout,
    ExternalInvoice,
    ExternalSubscription,
    ProviderError,
    ProviderEvent,
    WebhookSignatureError,
)
from . import billing, payments
from .billing_jobs import system_principal
from .credits import insert_ignore
from .stripe_mirror import (
    converge_subscription,
    materialise,
    mirror_invoice,
    subscription_by_external,
)
from .stripe_setup import invoicing

if TYPE_CHECKING:
    from ..bootstrap import AppContext

log = logging.getLogger("tanso_mcp.stripe.webhooks")

PROVIDER = "stripe"
MAX_BACKOFF = timedelta(hours=1)


def _wall(ctx: AppContext) -> datetime:
    # retries are about Stripe being reachable again: real time, not the test clock
    return ctx.clocks.system_now()


def _encode(event: ProviderEvent) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        return str(o)

    body = {
        "event_id": event.event_id,
        "kind": event.kind,
        "raw_type": event.raw_type,
        "external_ids": dict(event.external_ids),
        "created": event.created,
        "object": asdict(event.object) if is_dataclass(event.object) else None,
    }
    return json.dumps(body, default=default)


async def receive(ctx: AppContext, env_id: str, headers: dict[str, str], body: bytes) -> list[str]:
    """Verify and record; returns the inbox ids to process after the commit."""
    async with ctx.db.reader() as s:
        env = await s.get(Environment, env_id)
        if env is None:
            raise NotFound("unknown environment", field="environmentId")
        provider = await payments.provider_for(ctx, s, env_id, name=PROVIDER)
    if WEBHOOKS not in provider.capabilities:
        raise InvalidRequest("this environment does not take Stripe webhooks")
    try:
        events = await provider.parse_webhook(headers, body)
    except WebhookSignatureError as exc:
        raise InvalidRequest(f"webhook rejected: {exc.message}", field="Stripe-Signature") from None
    now = _wall(ctx)
    ids = []
    async with ctx.db.unit_of_work() as s:
        for event in events:
            row_id = new_id()
            await insert_ignore(
                s,
                WebhookInbox.__table__,
                {
                    "id": row_id,
                    "environment_id": env_id,
                    "provider": PROVIDER,
                    "event_id": event.event_id,
                    "event_type": event.raw_type or event.kind,
                    "payload": _encode(event),
                    "received_at": now,
                    "processed_at": None,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "last_error": None,
                },
            )
            row = await s.scalar(
                select(WebhookInbox).where(
                    WebhookInbox.environment_id == env_id,
                    WebhookInbox.provider == PROVIDER,
                    WebhookInbox.event_id == event.event_id,
                )
            )
            if row is not None and row.processed_at is None:
                ids.append(row.id)
    return ids


# --------------------------------------------------------------------------- background


def schedule(ctx: AppContext, inbox_ids: list[str]) -> None:
    """Process after the answer is sent; tasks are kept so shutdown and tests can wait."""
    if not inbox_ids:
        return
    tasks: set[asyncio.Task] = ctx.extras.setdefault("stripe_webhook_tasks", set())
    if not ctx.extras.get("stripe_webhook_closer"):
        ctx.extras["stripe_webhook_closer"] = True
        ctx.on_close(lambda: drain(ctx))
    for inbox_id in inbox_ids:
        task = asyncio.create_task(process_one(ctx, inbox_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def drain(ctx: AppContext) -> None:
    """Wait for the webhooks being processed in the background."""
    tasks: set[asyncio.Task] = ctx.extras.get("stripe_webhook_tasks") or set()
    while tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)


def _backoff(ctx: AppContext, attempts: int) -> timedelta:
    base = timedelta(seconds=ctx.settings.stripe_retry_seconds)
    return min(base * (2 ** max(attempts - 1, 0)), MAX_BACKOFF)


async def process_one(ctx: AppContext, inbox_id: str) -> bool:
    """Apply one inbox event; True when it is processed (now or before)."""
    async with ctx.db.reader() as s:
        row = await s.get(WebhookInbox, inbox_id)
        if row is None or row.processed_at is not None:
            return True
        env_id = row.environment_id
        payload = json.loads(row.payload)
    try:
        await _apply(ctx, env_id, inbox_id, payload)
        return True
    except Exception as exc:  # noqa: BLE001 - recorded and retried, never dropped
        transient = isinstance(exc, ProviderError)
        if not transient:
            log.exception("stripe webhook %s failed", payload.get("event_id"))
        now = _wall(ctx)
        async with ctx.db.unit_of_work() as s:
            row = await s.get(WebhookInbox, inbox_id)
            if row is not None and row.processed_at is None:
                attempts = row.attempts + 1
                row.attempts = attempts
                row.next_attempt_at = now + _backoff(ctx, attempts)
                row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        return False


async def retry_due(ctx: AppContext, env_id: str, now: datetime | None = None) -> int:
    """The job runner's pass: process every unprocessed event whose retry time came."""
    wall = _wall(ctx)
    async with ctx.db.reader() as s:
        ids = (
            await s.scalars(
                select(WebhookInbox.id)
                .where(
                    WebhookInbox.environment_id == env_id,
                    WebhookInbox.processed_at.is_(None),
                    WebhookInbox.next_attempt_at <= wall,
                )
                .order_by(WebhookInbox.received_at)
                .limit(500)
            )
        ).all()
    done = 0
    for inbox_id in ids:
        if await process_one(ctx, inbox_id):
            done += 1
    return done


# --------------------------------------------------------------------------- applying


async def _apply(ctx: AppContext, env_id: str, inbox_id: str, payload: dict[str, Any]) -> None:
    kind = payload.get("kind")
    ids = payload.get("external_ids") or {}
    async with ctx.db.reader() as s:
        provider = invoicing(await payments.provider_for(ctx, s, env_id, name=PROVIDER))
    ext_sub: ExternalSubscription | None = None
    invoices: list[tuple[ExternalInvoice, bool]] = []
    checkout_id = None
    # read the objects' current state from Stripe, outside any transaction
    if kind == "checkout.completed" and ids.get("checkout"):
        checkout_id = ids["checkout"]
        session = await provider.retrieve("checkout", checkout_id)
        if isinstance(session, ExternalCheckout) and session.subscription_external_id:
            ids = {**ids, "subscription": session.subscription_external_id}
    if kind in ("invoice.created", "invoice.paid", "invoice.payment_failed") and ids.get("invoice"):
        inv = await provider.retrieve("invoice", ids["invoice"])
        if isinstance(inv, ExternalInvoice):
            invoices.append((inv, kind == "invoice.payment_failed" and inv.status == "open"))
            if inv.subscription_external_id:
                ids = {**ids, "subscription": inv.subscription_external_id}
    if kind != "unknown" and ids.get("subscription"):
        obj = await provider.retrieve("subscription", ids["subscription"])
        ext_sub = obj if isinstance(obj, ExternalSubscription) else None
        latest = ext_sub.latest_invoice_id if ext_sub else None
        if latest and all(i.external_id != latest for i, _ in invoices):
            inv = await provider.retrieve("invoice", latest)
            if isinstance(inv, ExternalInvoice):
                invoices.append((inv, False))
    now = await ctx.clocks.now(env_id)
    fx = billing.Effects(action="STRIPE_WEBHOOK")
    async with ctx.db.unit_of_work() as s:
        row = await s.get(WebhookInbox, inbox_id, with_for_update=True)
        if row is None or row.processed_at is not None:
            return
        if ext_sub is not None:
            sub = await subscription_by_external(s, env_id, ext_sub.external_id)
            if sub is None:
                await materialise(s, env_id, ext_sub, now, fx, checkout_id=checkout_id)
            else:
                await converge_subscription(s, env_id, sub, ext_sub, now, fx)
        for inv, failed in invoices:
            await mirror_invoice(s, env_id, inv, ext_sub, now, fx, failed=failed)
        await s.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(processed_at=_wall(ctx), attempts=WebhookInbox.attempts + 1, last_error=None)
            .execution_options(synchronize_session=False)
        )
        principal = await system_principal(s, env_id)
    ctx.invalidate(env_id)
    for name, data in fx.events:
        await ctx.emit(name, principal, data)
