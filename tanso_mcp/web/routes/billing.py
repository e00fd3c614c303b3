"""Subscriptions, invoices and credits. Thin: parse, then one billing_ops call
(the same functions the MCP tools call)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import Field, field_validator

from ...errors import InvalidRequest
from ...services import billing_ops as ops
from ...services.outputs import (
    CreditPoolDetailOut,
    EffectsOut,
    GrantOut,
    InvoiceOut,
    SubscribedOut,
    SubscriptionOut,
    TopUpOut,
    TransactionOut,
)
from ..routing import Api, ApiModel, Call, Page, Pagination, QueryModel, Result

api = Api("/api/v1/client")

Number = Decimal | int | str


# --------------------------------------------------------------------------- models


class CreateSubscription(ApiModel):
    customerReferenceId: str | None = Field(default=None, max_length=128)
    externalClientCustomerId: str | None = Field(default=None, max_length=128)
    planId: str | None = Field(default=None, max_length=64)
    planKey: str | None = Field(default=None, max_length=128)
    gracePeriod: Any = None  # validated by the service (whole days, 0-365)
    metadata: dict[str, Any] | None = None


class PlanChange(ApiModel):
    changeToPlanId: str = Field(max_length=64)
    changeType: str

    @field_validator("changeType")
    @classmethod
    def _type(cls, v: str) -> str:
        if not isinstance(v, str) or v.upper() not in ("UPGRADE", "DOWNGRADE"):
            raise InvalidRequest("changeType must be UPGRADE or DOWNGRADE", field="changeType")
        return v.upper()


class CancelQuery(QueryModel):
    cancelMode: str = "END_OF_PERIOD"

    @field_validator("cancelMode")
    @classmethod
    def _mode(cls, v: str) -> str:
        v = (v or "").upper()
        if v == "IMMEDIATELY":
            v = "IMMEDIATE"
        if v not in ("END_OF_PERIOD", "IMMEDIATE"):
            raise InvalidRequest(
                "cancelMode must be END_OF_PERIOD or IMMEDIATE", field="cancelMode"
            )
        return v


class TopUp(ApiModel):
    denomination: str
    amount: Number
    grantType: str = "PURCHASED"
    expiresAt: str | None = None
    idempotencyKey: str


# --------------------------------------------------------------------------- responses


# answer models: services.outputs (shared with the MCP tools' output schemas)
PoolOut = CreditPoolDetailOut


def _drop_success(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if k != "success"}


# --------------------------------------------------------------------------- subscriptions


@api.route(
    "POST",
    "/subscriptions",
    role="client",
    body=CreateSubscription,
    response=SubscribedOut,
    status=201,
    summary="Subscribe a customer to an ACTIVE plan (planId or planKey)",
    tags=["subscriptions"],
    errors=(404,),
)
async def create_subscription(call: Call):
    b: CreateSubscription = call.body
    a, c = b.customerReferenceId, b.externalClientCustomerId
    if a and c and a != c:
        raise InvalidRequest(
            "customerReferenceId and externalClientCustomerId differ", field="customerReferenceId"
        )
    ref = a or c
    if not ref:
        raise InvalidRequest("customerReferenceId is required", field="customerReferenceId")
    out = await ops.create_subscription(
        call.ctx,
        call.principal,
        customer_ref=ref,
        plan_id=b.planId,
        plan_key=b.planKey,
        grace_period=b.gracePeriod,
        metadata=b.metadata,
    )
    return Result(out, 201)


@api.route(
    "GET",
    "/subscriptions/{id}",
    role="read",
    response=SubscriptionOut,
    summary="One subscription with its derived status",
    tags=["subscriptions"],
    errors=(404,),
)
async def get_subscription(call: Call):
    return await ops.get_subscription(call.ctx, call.principal, call.path["id"])


@api.route(
    "POST",
    "/subscriptions/{id}/plan-change",
    role="client",
    body=PlanChange,
    response=EffectsOut,
    summary="UPGRADE now (prorated) or DOWNGRADE at the end of the period",
    tags=["subscriptions"],
    errors=(404,),
)
async def change_plan(call: Call):
    b: PlanChange = call.body
    out = await ops.change_plan(
        call.ctx, call.principal, call.path["id"], b.changeToPlanId, b.changeType
    )
    return _drop_success(out)


@api.route(
    "DELETE",
    "/subscriptions/{id}/plan-change/scheduled",
    role="client",
    response=EffectsOut,
    summary="Cancel the subscription's scheduled plan change",
    tags=["subscriptions"],
    errors=(404,),
)
async def undo_plan_change(call: Call):
    return _drop_success(await ops.undo_plan_change(call.ctx, call.principal, call.path["id"]))


@api.route(
    "POST",
    "/subscriptions/cancellation/{id}",
    role="client",
    query=CancelQuery,
    response=EffectsOut,
    summary="Cancel at the end of the period (default) or IMMEDIATE",
    tags=["subscriptions"],
    errors=(404,),
)
async def cancel_subscription(call: Call):
    out = await ops.cancel(call.ctx, call.principal, call.path["id"], call.query.cancelMode)
    return _drop_success(out)


@api.route(
    "DELETE",
    "/subscriptions/cancellation/{id}/scheduled",
    role="client",
    response=EffectsOut,
    summary="Undo an END_OF_PERIOD cancellation that has not taken effect",
    tags=["subscriptions"],
    errors=(404,),
)
async def undo_cancellation(call: Call):
    return _drop_success(await ops.undo_cancel(call.ctx, call.principal, call.path["id"]))


async def _page(call: Call, fetch, *path_keys: str) -> Page:
    """A paginated list: the path values named, then the query's limit and offset."""
    q: Pagination = call.query
    args = (call.path[k] for k in path_keys)
    items, total = await fetch(call.ctx, call.principal, *args, limit=q.limit, offset=q.offset)
    return Page(items, total, q.limit, q.offset)


# --------------------------------------------------------------------------- invoices


@api.route(
    "GET",
    "/billing/invoices/{ref}",
    role="read",
    query=Pagination,
    response=InvoiceOut,
    paginated=True,
    summary="A customer's invoices (all subscriptions, newest first, with items)",
    tags=["billing"],
    errors=(404,),
)
async def list_invoices(call: Call):
    return await _page(call, ops.list_invoices, "ref")


@api.route(
    "GET",
    "/billing/invoice/{invoiceId}",
    role="read",
    response=InvoiceOut,
    summary="One invoice with its line items",
    tags=["billing"],
    errors=(404,),
)
async def get_invoice(call: Call):
    return await ops.get_invoice(call.ctx, call.principal, call.path["invoiceId"])


@api.route(
    "POST",
    "/billing/invoices/{invoiceId}/mark-paid",
    role="client",
    response=EffectsOut,
    summary="Record a payment made outside the system (native billing only)",
    tags=["billing"],
    errors=(404, 409),
)
async def mark_paid(call: Call):
    return _drop_success(await ops.mark_paid(call.ctx, call.principal, call.path["invoiceId"]))


# --------------------------------------------------------------------------- credits


@api.route(
    "GET",
    "/credits/{ref}/pools",
    role="read",
    query=Pagination,
    response=PoolOut,
    paginated=True,
    summary="A customer's credit pools",
    tags=["credits"],
    errors=(404,),
)
async def list_pools(call: Call):
    return await _page(call, ops.list_pools, "ref")


@api.route(
    "GET",
    "/credits/{ref}/pools/{poolId}",
    role="read",
    response=PoolOut,
    summary="One credit pool",
    tags=["credits"],
    errors=(404,),
)
async def get_pool(call: Call):
    return await ops.get_pool(call.ctx, call.principal, call.path["ref"], call.path["poolId"])


@api.route(
    "GET",
    "/credits/{ref}/pools/{poolId}/transactions",
    role="read",
    query=Pagination,
    response=TransactionOut,
    paginated=True,
    summary="A pool's ledger, oldest first",
    tags=["credits"],
    errors=(404,),
)
async def list_transactions(call: Call):
    return await _page(call, ops.list_transactions, "ref", "poolId")


@api.route(
    "GET",
    "/credits/{ref}/pools/{poolId}/grants",
    role="read",
    query=Pagination,
    response=GrantOut,
    paginated=True,
    summary="A pool's grants, oldest first",
    tags=["credits"],
    errors=(404,),
)
async def list_grants(call: Call):
    return await _page(call, ops.list_grants, "ref", "poolId")


@api.route(
    "POST",
    "/credits/{ref}/grants",
    role="client",
    body=TopUp,
    response=TopUpOut,
    status=201,
    summary="Top up a customer's credits (PURCHASED, PROMOTIONAL or MANUAL)",
    tags=["credits"],
    errors=(404, 409),
)
async def top_up(call: Call):
    b: TopUp = call.body
    out = await ops.top_up(
        call.ctx,
        call.principal,
        call.path["ref"],
        denomination=b.denomination,
        amount=b.amount,
        grant_type=b.grantType,
        expires_at=b.expiresAt,
        idempotency_key=b.idempotencyKey,
    )
    return Result(out, 201)
