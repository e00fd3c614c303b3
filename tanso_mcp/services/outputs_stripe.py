"""Answer models of the Stripe integration: connection, setup, status, payment pages,
discovery and import of a Stripe account, and the usage reconciliation (the conventions
of ``outputs``: undeclared fields are forbidden, ``Amount`` is an exact decimal).

The Stripe use cases return these models; the REST responses, /openapi.json and the
Stripe tools' outputSchemas are generated from them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import Field

from .outputs import Amount, Out

__all__ = [
    "ImportErrorOut",
    "ImportJobOut",
    "PaymentPageOut",
    "ReconciliationItemOut",
    "ReconciliationOut",
    "ReconciliationTotalsOut",
    "StripeCustomerOut",
    "StripeDiscoveryOut",
    "StripeKeyOut",
    "StripePriceOut",
    "StripeProductOut",
    "StripeSetupOut",
    "StripeStatusOut",
    "StripeSubscriptionOut",
]


class StripeKeyOut(Out):
    """The stored Stripe secret key, masked."""

    success: bool
    message: str
    maskedApiKey: str
    replaced: bool = Field(description="whether a key stored before was replaced")


class StripeStatusOut(Out):
    """Connection state (secrets masked)."""

    hasApiKey: bool
    maskedApiKey: str | None = None
    hasWebhook: bool
    maskedWebhookSecret: str | None = None
    webhookEndpointId: str | None = None
    webhookUrl: str | None = None
    stripeMode: str | None = None
    stripeEnabled: bool
    currency: str | None = None
    setupComplete: bool
    checkoutSuccessUrl: str | None = None
    checkoutCancelUrl: str | None = None


class StripeSetupOut(Out):
    """What the setup did."""

    success: bool
    message: str
    webhookCreated: bool
    modeChanged: bool
    stripeMode: str
    webhookUrl: str


class PaymentPageOut(Out):
    url: str = Field(description="the Stripe payment page; empty when already paid")
    invoiceId: str
    status: str = Field(description="the invoice's status")


# --------------------------------------------------------------------------- discovery, import


class StripePriceOut(Out):
    id: str
    currency: str
    unitAmount: Amount | None = None
    interval: str | None = None
    intervalCount: int | None = None
    usageType: str | None = None
    meterId: str | None = None
    tiered: bool
    active: bool


class StripeProductOut(Out):
    id: str
    name: str | None = None
    active: bool
    prices: list[StripePriceOut]
    alreadyMapped: bool
    planId: str | None = Field(default=None, description="the plan it is linked to")


class StripeCustomerOut(Out):
    id: str
    email: str | None = None
    name: str | None = None
    alreadyMapped: bool
    customerReferenceId: str | None = Field(default=None, description="the linked customer")


class StripeSubscriptionOut(Out):
    id: str
    customer: str = Field(description="the Stripe customer id")
    status: str
    priceIds: list[str]
    alreadyMapped: bool
    subscriptionId: str | None = Field(default=None, description="the linked subscription")


class StripeDiscoveryOut(Out):
    """What the Stripe account holds, each item flagged when already linked here."""

    products: list[StripeProductOut]
    customers: list[StripeCustomerOut]
    subscriptions: list[StripeSubscriptionOut]
    warnings: list[str]


class ImportErrorOut(Out):
    item: str = Field(description="product, customer, subscription or account")
    id: str | None = None
    message: str


class ImportJobOut(Out):
    """The import job."""

    success: bool | None = Field(default=None, description="true when the job was started")
    jobId: str
    status: str = Field(description="PENDING, RUNNING, COMPLETED or FAILED")
    totalItems: int
    processedItems: int
    failedItems: int
    errorDetails: list[ImportErrorOut]
    warnings: list[str]
    createdAt: datetime
    startedAt: datetime | None = None
    finishedAt: datetime | None = None


# --------------------------------------------------------------------------- usage reconciliation


class ReconciliationItemOut(Out):
    customerReferenceId: str | None = None
    customerId: str
    subscriptionId: str
    featureKey: str | None = None
    featureId: str
    periodStart: datetime | None = Field(default=None, description="null: a lifetime counter")
    window: str = Field(description="`period`, or `lifetime` for accumulate-mode features")
    forwarded: bool = Field(description="whether this usage is forwarded to a Stripe meter")
    unitsAccepted: Amount
    unitsCoveredByCredits: Amount
    unitsBillable: Amount = Field(description="overage: accepted units not covered by credits")
    unitsReported: Amount = Field(description="units the Stripe meter has acknowledged")
    unitsPending: Amount = Field(description="billable units not acknowledged yet")


class ReconciliationTotalsOut(Out):
    unitsAccepted: Amount = Decimal(0)
    unitsCoveredByCredits: Amount = Decimal(0)
    unitsBillable: Amount = Decimal(0)
    unitsReported: Amount = Decimal(0)
    unitsPending: Amount = Decimal(0)


class ReconciliationOut(Out):
    """The period's reconciliation."""

    period: str | datetime = Field(
        description="`current`, `previous`, or the instant the periods contain"
    )
    forwarding: bool = Field(description="whether the environment forwards usage to Stripe")
    items: list[ReconciliationItemOut]
    totals: ReconciliationTotalsOut
