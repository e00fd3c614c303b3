"""Customers, plans and features."""

from __future__ import annotations

from pydantic import Field, model_validator

from ...errors import InvalidRequest
from ...services import catalog, customers, views
from ..routing import Api, ApiModel, Call, Page, Pagination, Result
from .schemas import CatalogPlanOut, CustomerOut, FeatureOut

api = Api("/api/v1/client")


class CreateCustomer(ApiModel):
    customerReferenceId: str | None = Field(default=None, max_length=128)
    externalClientCustomerId: str | None = Field(default=None, max_length=128)
    email: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    phoneNumber: str | None = None

    @model_validator(mode="after")
    def _reference(self):
        a, b = self.customerReferenceId, self.externalClientCustomerId
        if a and b and a != b:
            raise InvalidRequest(
                "customerReferenceId and externalClientCustomerId differ",
                field="customerReferenceId",
            )
        if not (a or b):
            raise InvalidRequest("customerReferenceId is required", field="customerReferenceId")
        self.customerReferenceId = a or b
        return self


class UpdateCustomer(ApiModel):
    email: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    phoneNumber: str | None = None


@api.route(
    "POST",
    "/customers",
    role="client",
    body=CreateCustomer,
    response=CustomerOut,
    status=201,
    summary="Create a customer",
    tags=["customers"],
    errors=(409,),
)
async def create_customer(call: Call):
    b: CreateCustomer = call.body
    view = await customers.create(
        call.ctx,
        call.principal,
        reference_id=b.customerReferenceId,
        email=b.email,
        first_name=b.firstName,
        last_name=b.lastName,
        phone_number=b.phoneNumber,
    )
    return Result(view, 201)


@api.route(
    "GET",
    "/customers/{ref}",
    role="read",
    response=CustomerOut,
    summary="A customer with its subscriptions and credit pools",
    tags=["customers"],
    errors=(404,),
)
async def get_customer(call: Call):
    async with call.ctx.db.reader() as s:
        c = await customers.by_reference(s, call.principal.environment_id, call.path["ref"])
        return await customers.customer_view(s, c)


@api.route(
    "PATCH",
    "/customers/{ref}",
    role="client",
    body=UpdateCustomer,
    response=CustomerOut,
    summary="Update the given fields of a customer",
    tags=["customers"],
    errors=(404,),
)
async def update_customer(call: Call):
    return await customers.update(
        call.ctx, call.principal, call.path["ref"], **call.body.model_dump()
    )


@api.route(
    "GET",
    "/plans",
    role="read",
    query=Pagination,
    response=CatalogPlanOut,
    paginated=True,
    summary="Active plans with their features, pricing and credits",
    tags=["catalog"],
)
async def list_plans(call: Call):
    q: Pagination = call.query
    async with call.ctx.db.reader() as s:
        plans, total = await catalog.list_plans(
            s, call.principal.environment_id, active_only=True, limit=q.limit, offset=q.offset
        )
        items = await views.plans_with_features(s, plans)
    return Page(items, total, q.limit, q.offset)


@api.route(
    "GET",
    "/features",
    role="read",
    query=Pagination,
    response=FeatureOut,
    paginated=True,
    summary="All features",
    tags=["catalog"],
)
async def list_features(call: Call):
    q: Pagination = call.query
    async with call.ctx.db.reader() as s:
        rows, total = await catalog.list_features(
            s, call.principal.environment_id, q.limit, q.offset
        )
    return Page([views.feature_view(f) for f in rows], total, q.limit, q.offset)


@api.route(
    "GET",
    "/features/{key}",
    role="read",
    response=FeatureOut,
    summary="One feature by key",
    tags=["catalog"],
    errors=(404,),
)
async def get_feature(call: Call):
    async with call.ctx.db.reader() as s:
        f = await catalog.feature_by_key(s, call.principal.environment_id, call.path["key"])
    return views.feature_view(f)
