"""Usage events and entitlement checks: the application's per-request
check → work → track calls. The handlers read their bodies themselves (the event
validator names the offending field and, in a batch, fails only that item); the pydantic
models below document the bodies in /openapi.json."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...errors import InvalidRequest
from ...services import metering as svc
from ...services.metering.service import MAX_BATCH
from ...services.outputs import BatchOut, CheckOut, EventOut, SubscriptionEntitlementsOut
from ..hotpath import batch_events, loads_exact
from ..jsonio import loads
from ..routing import Api, Call, Page, Pagination, Result

api = Api("/api/v1/client")


# --------------------------------------------------------------------------- documents


class CostInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    modelProvider: str | None = None
    inputTokens: Decimal | None = None
    outputTokens: Decimal | None = None
    costUnits: Decimal | None = None


class Event(BaseModel):
    """A usage event. Exactly one customer identifier; unknown customers and feature
    keys are created on the fly."""

    model_config = ConfigDict(extra="forbid")
    eventIdempotencyKey: str | None = Field(
        default=None,
        max_length=128,
        description="unique per environment; generated when absent; the X-Idempotency-Key "
        "header wins",
    )
    eventName: str = Field(max_length=128)
    featureKey: str | None = Field(default=None, max_length=128)
    featureId: str | None = None
    customerReferenceId: str | None = Field(default=None, max_length=128)
    customerId: str | None = None
    stripeCustomerId: str | None = Field(default=None, max_length=128)
    subscriptionId: str | None = None
    entitlementId: str | None = None
    invoiceId: str | None = None
    occurredAt: str | None = Field(default=None, description="ISO-8601; default now")
    usageUnits: Decimal | None = Field(default=None, ge=0, description="default 1, ≤4 dp")
    costAmount: Decimal | None = Field(default=None, ge=0)
    revenueAmount: Decimal | None = Field(default=None, ge=0)
    costInput: CostInput | None = None
    flowId: str | None = Field(default=None, max_length=128)
    meta: dict[str, Any] | None = None


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


# answer models: services.outputs (shared with the MCP tools' output schemas)
EntitlementOut = CheckOut


class TrackUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eventName: str | None = Field(default=None, max_length=128)
    usageUnits: Decimal | None = Field(default=None, gt=0)
    meta: dict[str, Any] | None = None
    model: str | None = Field(default=None, description="AI model name, for cost attribution")


class EvaluationContext(BaseModel):
    model_config = ConfigDict(extra="allow")
    idempotencyKey: str | None = Field(default=None, max_length=128)
    flowId: str | None = Field(default=None, max_length=128)


class EntitlementEvaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customerReferenceId: str = Field(max_length=128)
    featureKey: str = Field(max_length=128)
    track: TrackUsage | None = Field(default=None, description="usage to simulate (alias usage)")
    usage: TrackUsage | None = None
    context: EvaluationContext | None = None


# --------------------------------------------------------------------------- events


@api.route(
    "POST",
    "/events",
    role="client",
    body_doc=Event,
    response=EventOut,
    status=201,
    summary="Record a usage event (201; 200 with usageLimitExceeded once the limit is "
    "reached; 409 duplicate_event or insufficient_credits, nothing stored)",
    tags=["events"],
    errors=(409, 413),
)
async def post_event(call: Call):
    raw = loads_exact(await call.request.body())
    header = call.request.headers.get("x-idempotency-key")
    data, status = await svc.ingest_event(call.ctx, call.principal, raw, header_key=header)
    return Result(data, status)


@api.route(
    "POST",
    "/events/batch",
    role="client",
    body_doc=EventBatch,
    response=BatchOut,
    summary="Record up to 1000 events in one transaction; per-item results in input order",
    tags=["events"],
    errors=(413,),
)
async def post_event_batch(call: Call):
    events = batch_events(loads_exact(await call.request.body()))
    return await svc.ingest_batch(call.ctx, call.principal, events)


# --------------------------------------------------------------------------- entitlements


@api.route(
    "GET",
    "/entitlements/{ref}/{featureKey}",
    role="read",
    response=EntitlementOut,
    summary="May this customer use this feature now? (unknown customer: allowed false)",
    tags=["entitlements"],
)
async def get_entitlement(call: Call):
    return await svc.check_entitlement(
        call.ctx, call.principal, call.path["ref"], call.path["featureKey"]
    )


@api.route(
    "GET",
    "/entitlements/{ref}",
    role="read",
    query=Pagination,
    response=SubscriptionEntitlementsOut,
    paginated=True,
    summary="Every feature the customer may use, by subscription, with limits and usage",
    tags=["entitlements"],
    errors=(404,),
)
async def list_entitlements(call: Call):
    q: Pagination = call.query
    subs = await svc.list_entitlements(call.ctx, call.principal, call.path["ref"])
    return Page(subs[q.offset : q.offset + q.limit], len(subs), q.limit, q.offset)


async def _evaluate(call: Call, *, simulate: bool) -> dict[str, Any]:
    raw = loads(await call.request.body())
    if not isinstance(raw, dict):
        raise InvalidRequest("request body must be a JSON object", field="body")
    for name in raw:
        if name not in ("customerReferenceId", "featureKey", "track", "usage", "context"):
            raise InvalidRequest(f"{name} is not a recognised field", field=name)
    track = raw.get("track")
    if track is None:
        track = raw.get("usage")
    elif raw.get("usage") is not None:
        raise InvalidRequest("send track or usage, not both", field="usage")
    requested = event_name = meta = None
    if track is not None:
        if not isinstance(track, dict):
            raise InvalidRequest("track must be an object", field="track")
        for name in track:
            if name not in ("eventName", "usageUnits", "meta", "model"):
                raise InvalidRequest(f"track.{name} is not a recognised field", field=name)
        requested = track.get("usageUnits", Decimal(1))
        if requested is None:
            raise InvalidRequest(
                "track.usageUnits must be a number or a decimal string, not null",
                field="track.usageUnits",
            )
        event_name = track.get("eventName")
        meta = track.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise InvalidRequest("track.meta must be an object", field="track.meta")
    context = raw.get("context") or {}
    if not isinstance(context, dict):
        raise InvalidRequest("context must be an object", field="context")
    return await svc.evaluate_entitlement(
        call.ctx,
        call.principal,
        raw.get("customerReferenceId"),
        raw.get("featureKey"),
        requested=requested,
        event_name=event_name,
        meta=meta,
        idempotency_key=context.get("idempotencyKey"),
        flow_id=context.get("flowId"),
    )


@api.route(
    "POST",
    "/entitlements",
    role="client",
    body_doc=EntitlementEvaluation,
    response=EntitlementOut,
    summary="Evaluate an entitlement, optionally simulating usage (records a zero-usage "
    "audit event, never usage)",
    tags=["entitlements"],
)
async def evaluate(call: Call):
    return await _evaluate(call, simulate=True)


@api.route(
    "POST",
    "/entitlements/check",
    role="client",
    body_doc=EntitlementEvaluation,
    response=EntitlementOut,
    summary="Check an entitlement (body form; same as POST /entitlements)",
    tags=["entitlements"],
)
async def evaluate_check(call: Call):
    return await _evaluate(call, simulate=False)
