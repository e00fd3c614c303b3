"""Entitlement and event tools: the same service functions as the REST API."""

from __future__ import annotations

from typing import Any

from ...context import AppContext
from ...principal import Principal
from ...services import metering as svc


async def check_entitlement(app: AppContext, p: Principal, params: Any):
    return await svc.check_entitlement(app, p, params.customerReferenceId, params.featureKey)


async def list_customer_entitlements(app: AppContext, p: Principal, params: Any):
    return await svc.list_entitlements(app, p, params.customerReferenceId)


async def evaluate_entitlement(app: AppContext, p: Principal, params: Any):
    return await svc.evaluate_entitlement(
        app,
        p,
        params.customerReferenceId,
        params.featureKey,
        requested=params.requestedUsage,
    )


async def ingest_event(app: AppContext, p: Principal, params: Any):
    raw = {
        "eventIdempotencyKey": params.eventIdempotencyKey,
        "eventName": params.eventName,
        "occurredAt": params.occurredAt,
        "customerReferenceId": params.customerReferenceId,
        "featureKey": params.featureKey,
        "usageUnits": params.usageUnits,
    }
    data, _status = await svc.ingest_event(app, p, raw)
    return {"success": True, **data}
