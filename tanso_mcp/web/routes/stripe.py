"""Stripe connection (admin, under ``/api/v1/tanso/stripe``) and the Stripe payment
pages of open invoices (under ``/api/v1/client/billing``). Thin: each calls the same
service function as its MCP tool."""

from __future__ import annotations

from pydantic import Field, SecretStr

from ...services import stripe_billing, stripe_setup
from ...services.outputs_stripe import PaymentPageOut, StripeKeyOut, StripeSetupOut, StripeStatusOut
from ..routing import Api, ApiModel, Call

api = Api("")


class Connect(ApiModel):
    stripeSecretKey: SecretStr = Field(min_length=1, max_length=255)
    successUrl: str | None = Field(default=None, max_length=2000)
    cancelUrl: str | None = Field(default=None, max_length=2000)


@api.route(
    "POST",
    "/api/v1/tanso/stripe/connect",
    role="admin",
    body=Connect,
    response=StripeKeyOut,
    summary="Register (or replace) the environment's Stripe secret key, stored encrypted",
    tags=["stripe"],
)
async def connect(call: Call):
    b: Connect = call.body
    return await stripe_setup.register_key(
        call.ctx,
        call.principal,
        b.stripeSecretKey.get_secret_value(),
        field="stripeSecretKey",
        success_url=b.successUrl,
        cancel_url=b.cancelUrl,
    )


@api.route(
    "GET",
    "/api/v1/tanso/stripe/status",
    role="read",
    response=StripeStatusOut,
    summary="How far Stripe is connected (secrets shown masked)",
    tags=["stripe"],
)
async def status(call: Call):
    return await stripe_setup.status(call.ctx, call.principal)


@api.route(
    "POST",
    "/api/v1/tanso/stripe/setup",
    role="admin",
    response=StripeSetupOut,
    summary="Create the Stripe webhook endpoint and switch to STRIPE_DRIVEN (idempotent)",
    tags=["stripe"],
    errors=(502,),
)
async def setup(call: Call):
    return await stripe_setup.setup(call.ctx, call.principal)


@api.route(
    "POST",
    "/api/v1/client/billing/invoices/{invoiceId}/stripe/checkout",
    role="client",
    response=PaymentPageOut,
    summary="Stripe payment page of an open invoice (empty url when already paid)",
    tags=["invoices"],
    errors=(404, 502),
)
async def invoice_checkout(call: Call):
    return await stripe_billing.invoice_payment_page(
        call.ctx, call.principal, invoice_id=call.path["invoiceId"]
    )


@api.route(
    "POST",
    "/api/v1/client/billing/subscriptions/{subscriptionId}/stripe/checkout",
    role="client",
    response=PaymentPageOut,
    summary="Stripe payment page of the subscription's oldest open invoice",
    tags=["invoices"],
    errors=(404, 502),
)
async def subscription_checkout(call: Call):
    return await stripe_billing.invoice_payment_page(
        call.ctx, call.principal, subscription_id=call.path["subscriptionId"]
    )
