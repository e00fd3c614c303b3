"""/v1/webhook_endpoints and the delivery of events to them, signed as Stripe signs
(`Stripe-Signature: t=<unix>,v1=HMAC_SHA256(secret, "<t>.<body>")`), plus test-only
controls: hold deliveries, release them in a chosen order, redeliver an event."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time

import aiohttp
from aiohttp import web
from localstripe import resources as ls

from .core import (
    API_VERSION,
    as_bool,
    bad,
    get,
    merge_metadata,
    missing,
    new_id,
    now,
    one_of,
    page,
    params,
    req,
    respond,
    state,
    table,
)

routes = web.RouteTableDef()
log = logging.getLogger("stripe_fake.webhooks")


def _events_param(data: dict) -> list[str]:
    events = data.get("enabled_events")
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise bad("enabled_events", "Missing required param: enabled_events.", "parameter_missing")
    return events


@routes.post("/v1/webhook_endpoints")
async def create_endpoint(request):
    data = await params(request)
    url = req(data, "url")
    if not str(url).startswith(("http://", "https://")):
        raise bad("url", "Invalid URL: must start with http:// or https://", "url_invalid")
    endpoint = {
        "id": new_id("we_"),
        "object": "webhook_endpoint",
        "api_version": data.get("api_version") or None,
        "application": None,
        "created": now(),
        "description": data.get("description") or None,
        "enabled_events": _events_param(data),
        "livemode": False,
        "metadata": merge_metadata({}, data.get("metadata")),
        "status": "enabled",
        "url": url,
        "_secret": "whsec_" + secrets.token_hex(16),
    }
    table("webhook_endpoint")[endpoint["id"]] = endpoint
    # Stripe shows the signing secret only in the creation response
    return respond(export(endpoint) | {"secret": endpoint["_secret"]})


def export(endpoint: dict) -> dict:
    return {k: v for k, v in endpoint.items() if not k.startswith("_")}


@routes.get("/v1/webhook_endpoints/{id}")
async def retrieve_endpoint(request):
    return respond(export(get("webhook_endpoint", request.match_info["id"], "webhook endpoint")))


@routes.post("/v1/webhook_endpoints/{id}")
async def update_endpoint(request):
    endpoint = get("webhook_endpoint", request.match_info["id"], "webhook endpoint")
    data = await params(request)
    if "url" in data:
        endpoint["url"] = req(data, "url")
    if "enabled_events" in data:
        endpoint["enabled_events"] = _events_param(data)
    if "disabled" in data:
        endpoint["status"] = "disabled" if as_bool(data["disabled"], "disabled") else "enabled"
    if "description" in data:
        endpoint["description"] = data["description"] or None
    endpoint["metadata"] = merge_metadata(endpoint["metadata"], data.get("metadata"))
    return respond(export(endpoint))


@routes.delete("/v1/webhook_endpoints/{id}")
async def delete_endpoint(request):
    endpoint_id = request.match_info["id"]
    get("webhook_endpoint", endpoint_id, "webhook endpoint")
    del table("webhook_endpoint")[endpoint_id]
    return respond({"id": endpoint_id, "object": "webhook_endpoint", "deleted": True})


@routes.get("/v1/webhook_endpoints")
async def list_endpoints(request):
    data = await params(request)
    out = page("/v1/webhook_endpoints", list(table("webhook_endpoint").values()), data)
    out["data"] = [export(e) for e in out["data"]]
    return respond(out)


# --- delivery ---


def event_object(event_id: str):
    event = ls.store.get(f"event:{event_id}")
    if event is None:
        raise missing("event", event_id)
    return event


def payload_of(event) -> bytes:
    # One serialisation per event, so a redelivery sends the very same bytes.
    body = getattr(event, "_fake_payload", None)
    if body is None:
        exported = event._export()
        exported.setdefault("api_version", API_VERSION)
        body = json.dumps(exported, indent=2).encode()
        event._fake_payload = body
    return body


def sign(body: bytes, secret: str, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def targets(event) -> list[dict]:
    return [
        e
        for e in table("webhook_endpoint").values()
        if e["status"] == "enabled"
        and ("*" in e["enabled_events"] or event.type in e["enabled_events"])
    ]


async def deliver(event_id: str) -> list[dict]:
    """POST the event to every matching endpoint now; record and return the outcomes."""
    event = event_object(event_id)
    body = payload_of(event)
    results = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for endpoint in targets(event):
            result = {
                "event": event.id,
                "type": event.type,
                "endpoint": endpoint["id"],
                "url": endpoint["url"],
                "at": now(),
            }
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Stripe-Signature": sign(body, endpoint["_secret"]),
            }
            try:
                async with session.post(endpoint["url"], data=body, headers=headers) as r:
                    result["status"] = r.status
                    result["ok"] = 200 <= r.status < 300
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                result.update(status=None, ok=False, error=repr(exc))
            log.info("webhook %s %s -> %s", event.type, endpoint["url"], result.get("status"))
            results.append(result)
    state().deliveries.extend(results)
    return results


async def flush_outbox() -> None:
    """Called after every request: send (or queue, or hold) the events the request
    produced, in order."""
    st = state()
    pending, st.outbox[:] = list(st.outbox), []
    if st.webhook_mode == "hold":
        st.held.extend(pending)
    elif st.webhook_mode == "async":
        st.queue.extend(pending)
        start_drain()
    else:
        for event_id in pending:
            await deliver(event_id)


_drain: asyncio.Task | None = None


def start_drain() -> None:
    global _drain
    if state().queue and (_drain is None or _drain.done()):
        _drain = asyncio.get_running_loop().create_task(_drain_queue())


async def _drain_queue() -> None:
    st = state()
    while st.queue and state() is st:  # a reset drops what was queued
        await deliver(st.queue[0])
        if st.queue:
            st.queue.pop(0)


# --- test-only controls ---


@routes.post("/_test/webhooks/mode")
async def set_mode(request):
    data = await params(request)
    state().webhook_mode = one_of(req(data, "mode"), ("sync", "async", "hold"), "mode")
    return respond({"mode": state().webhook_mode})


def _summary(event_id: str) -> dict:
    event = event_object(event_id)
    return {
        "id": event.id,
        "type": event.type,
        "created": event.created,
        "object_id": event.data["object"].get("id"),
    }


@routes.post("/_test/webhooks/drain")
async def drain(request):
    """Wait until every event queued for async delivery has been sent."""
    while state().queue or (_drain is not None and not _drain.done()):
        start_drain()
        await asyncio.sleep(0.01)
    return respond({"queued": 0})


@routes.get("/_test/webhooks/held")
async def held(request):
    return respond([_summary(e) for e in state().held])


@routes.post("/_test/webhooks/release")
async def release(request):
    """Deliver held events: those listed in `order` (in that order), else all (FIFO)."""
    data = await params(request)
    st = state()
    order = data.get("order")
    if order is None:
        order = list(st.held)
    if not isinstance(order, list) or any(e not in st.held for e in order):
        raise bad("order", "order must list ids of held events")
    results = []
    for event_id in order:
        st.held.remove(event_id)
        results.extend(await deliver(event_id))
    return respond(results)


@routes.post("/_test/webhooks/redeliver")
async def redeliver(request):
    data = await params(request)
    return respond(await deliver(req(data, "event")))


@routes.post("/_test/webhooks/retry_failed")
async def retry_failed(request):
    """Redeliver every event whose latest delivery attempt failed (Stripe retries them)."""
    latest: dict[tuple, dict] = {}
    for d in state().deliveries:
        latest[(d["event"], d["endpoint"])] = d
    failed = list(dict.fromkeys(e for (e, _), d in latest.items() if not d["ok"]))
    results = []
    for event_id in failed:
        results.extend(await deliver(event_id))
    return respond(results)


@routes.get("/_test/webhooks/deliveries")
async def deliveries(request):
    return respond(state().deliveries)


@routes.get("/_test/events/{id}/signed")
async def signed(request):
    """The exact body and headers the fake would POST for an event, per matching endpoint
    (for tests that hand the delivery to an in-process app themselves)."""
    event = event_object(request.match_info["id"])
    body = payload_of(event)
    return respond(
        [
            {
                "endpoint": e["id"],
                "url": e["url"],
                "payload": body.decode(),
                "headers": {
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": sign(body, e["_secret"]),
                },
            }
            for e in targets(event)
        ]
    )


@routes.get("/_test/events")
async def all_events(request):
    """Every event in creation order (oldest first), with type and object id."""
    events = sorted(
        (v for k, v in ls.store.items() if k.startswith("event:")), key=lambda e: e.created
    )
    return respond([_summary(e.id) for e in events])
