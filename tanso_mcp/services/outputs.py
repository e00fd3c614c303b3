"""One typed model per resource and per operation result: the single description of
every answer.

The REST response models (and so /openapi.json) and every MCP tool's ``outputSchema`` are
generated from these classes; the presenters (``views.py`` and the services' ``*_view``
functions) produce exactly these shapes, and the test suite checks every real answer of
every workflow test against the generated schemas with undeclared fields forbidden.
The answers of margin analytics and of the Stripe integration live beside this module
(``outputs_analytics``, ``outputs_stripe``), under the same conventions.

Conventions:
- ``extra="forbid"``: a field is either declared here or not sent.
- A field that may be absent or null has a ``None`` default and is not required (REST
  leaves nulls out of its bodies, MCP sends them as null).
- ``Amount``: an exact decimal. It goes out as a JSON number when that number is exact,
  otherwise as a string holding the exact value (never a rounded float).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

__all__ = [
    "Amount",
    "CatalogPlanOut",
    "CheckOut",
    "ClockOut",
    "CostSource",
    "CreditAllocationOut",
    "CreditPoolDetailOut",
    "CreditPoolOut",
    "CustomerOut",
    "EffectsOut",
    "EventOut",
    "FeatureOut",
    "InvoiceItemOut",
    "InvoiceOut",
    "Out",
    "PlanBriefOut",
    "PlanFeatureOut",
    "PlanOut",
    "PricingOut",
    "RuleOut",
    "ScheduledChangeOut",
    "SubscribedOut",
    "SubscriptionEntitlementsOut",
    "SubscriptionOut",
    "TierOut",
    "CustomerWriteOut",
    "FeatureWriteOut",
    "PlanWriteOut",
    "RuleWriteOut",
    "SubscribedWriteOut",
    "UnlinkOut",
    "WriteOut",
    "GrantOut",
    "TopUpOut",
    "TransactionOut",
    "BatchItemOut",
    "BatchOut",
]

Amount = Annotated[
    Decimal,
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}]}),
]
JsonObject = Annotated[
    dict[str, Any], WithJsonSchema({"type": "object", "additionalProperties": True})
]


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- catalog


class FeatureOut(Out):
    id: str
    key: str
    name: str
    description: str | None = None
    isEnabled: bool
    createdAt: datetime
    modifiedAt: datetime


class PlanOut(Out):
    id: str
    key: str
    name: str
    description: str | None = None
    priceAmount: Amount
    currency: str
    intervalMonths: int
    billingTiming: str
    status: str = Field(description="DRAFT, ACTIVE or ARCHIVED")
    createdAt: datetime
    modifiedAt: datetime


class PlanBriefOut(Out):
    """A plan as an operation's before/after shows it."""

    id: str
    key: str
    name: str
    priceAmount: Amount
    currency: str
    intervalMonths: int
    billingTiming: str


class TierOut(Out):
    upTo: Annotated[
        Decimal | str,
        WithJsonSchema(
            {"anyOf": [{"type": "number"}, {"type": "string"}], "description": 'or "inf"'}
        ),
    ]
    pricePerUnit: Amount
    flatFee: Amount | None = None


class PricingOut(Out):
    model: str
    pricePerUnit: Amount | None = None
    unitLabel: str | None = None
    maxUsage: Amount | None = Field(default=None, description="null: no cap")
    resetMode: str | None = None
    tiers: list[TierOut] | None = None


class RuleOut(Out):
    """A plan-feature rule: the plan grants (and may price) the feature."""

    id: str
    planId: str
    featureId: str
    featureKey: str | None = None
    type: str
    value: JsonObject | None = Field(
        default=None, description='the rule\'s {"pricing": …, "cost": …}; null: on/off gate'
    )
    isEnabled: bool
    createdAt: datetime
    modifiedAt: datetime


class PlanFeatureOut(Out):
    """A feature of a plan as the catalog shows it."""

    id: str
    key: str
    name: str
    description: str | None = None
    isEnabled: bool
    pricingType: str = Field(description="included, usage_based or graduated")
    pricing: PricingOut | None = None
    credits: JsonObject | None = None
    rule: RuleOut | None = Field(default=None, description="admin views only")


class CreditAllocationOut(Out):
    id: str
    creditModelId: str
    creditModelName: str
    denomination: str
    creditAmount: Amount
    grantExpiresMonths: int | None = None
    hardLimit: bool
    rolloverPolicy: str
    rolloverCap: Amount | None = None
    createdAt: datetime


class CatalogPlanOut(Out):
    """A plan (its id is plan.id) with its features and credit allocations."""

    plan: PlanOut
    features: list[PlanFeatureOut]
    creditAllocations: list[CreditAllocationOut]


# --------------------------------------------------------------------------- customers


class ScheduledChangeOut(Out):
    id: str | None = None
    type: str
    status: str
    fromPlanId: str
    toPlanId: str
    effectiveAt: datetime
    createdAt: datetime | None = None


class SubscriptionOut(Out):
    id: str
    status: str
    isActive: bool
    customerReferenceId: str
    planId: str
    plan: PlanOut
    intervalMonths: int
    gracePeriodDays: int
    billingAnchorDay: int
    currentPeriodStart: datetime
    currentPeriodEnd: datetime
    cancelMode: str | None = None
    cancelEffectiveAt: datetime | None = None
    cancelledAt: datetime | None = None
    createdAt: datetime
    metadata: JsonObject | None = None
    scheduledChange: ScheduledChangeOut | None = None


class CreditPoolOut(Out):
    id: str
    name: str
    denomination: str
    balance: Amount
    totalGranted: Amount
    totalConsumed: Amount
    totalExpired: Amount
    hardLimit: bool
    rolloverPolicy: str
    rolloverCap: Amount | None = None
    status: str
    currency: str
    createdAt: datetime
    modifiedAt: datetime


class CreditPoolDetailOut(CreditPoolOut):
    """One credit pool in detail."""

    totalReversed: Amount
    customerId: str


class CustomerOut(Out):
    id: str
    customerReferenceId: str
    externalClientCustomerId: str
    email: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    phoneNumber: str | None = None
    source: str
    stripeCustomerId: str | None = Field(
        default=None, description="the Stripe customer, when Stripe collects payments"
    )
    createdAt: datetime
    modifiedAt: datetime
    subscriptions: list[SubscriptionOut]
    creditPools: list[CreditPoolOut] | None = Field(
        default=None, description="present when the customer has credit pools"
    )


# --------------------------------------------------------------------------- billing


class InvoiceItemOut(Out):
    id: str | None = None
    kind: str | None = None
    description: str
    chargeAmount: Amount
    quantity: Amount | None = None


class InvoiceOut(Out):
    id: str | None = Field(default=None, description="absent only in previews")
    type: str
    status: str
    amount: Amount
    currency: str
    dueDate: datetime | None = None
    periodStart: datetime | None = None
    periodEnd: datetime | None = None
    subscriptionId: str | None = None
    customerReferenceId: str | None = None
    paidAt: datetime | None = None
    voidedAt: datetime | None = None
    createdAt: datetime
    modifiedAt: datetime
    items: list[InvoiceItemOut] | None = None


class SubscribedOut(Out):
    # with Stripe collecting payments, a paid in-advance plan answers a checkout page
    # instead: the subscription exists once Stripe confirms the payment
    subscription: SubscriptionOut | None = None
    invoice: InvoiceOut | None = None
    checkoutUrl: str | None = None
    checkoutSessionId: str | None = None
    message: str | None = None


class EffectsOut(Out):
    """What a subscription operation did (or, in a preview, would do)."""

    success: bool | None = None
    message: str | None = None
    action: str
    subscriptionId: str | None = None
    statusBefore: str | None = None
    statusAfter: str | None = None
    effectiveAt: datetime | None = None
    planBefore: PlanBriefOut | None = None
    planAfter: PlanBriefOut | None = None
    subscription: SubscriptionOut | None = None
    invoice: InvoiceOut | None = None
    invoicesCreated: list[InvoiceOut]
    invoicesVoided: list[InvoiceOut]
    invoicesPaid: list[InvoiceOut]
    # open invoices closed early and made DUE (an IN_ARREARS period ended by an
    # immediate cancellation)
    invoicesClosed: list[InvoiceOut] = []
    amountToPay: Amount
    amountCredited: Amount
    entitlementsGranted: list[str]
    entitlementsRevoked: list[str]
    creditsGranted: dict[str, Amount]
    creditsClawedBack: dict[str, Amount]
    creditsExpired: dict[str, Amount]
    scheduledChange: ScheduledChangeOut | None = None
    cancelledScheduledChanges: int
    notes: list[str]


# --------------------------------------------------------------------------- metering

CostSource = Annotated[
    Literal["explicit", "rule", "account_default", "global_model_pricing", "none"],
    Field(
        description="the step of the cost chain that priced the event: explicit (its "
        "costAmount), rule (the plan rule's cost model), account_default (the environment's "
        "default cost configuration), global_model_pricing (the model price table, with the "
        "environment's overrides) or none (no cost given, or a model no price is known for: "
        "never priced at zero silently)"
    ),
]


class EventOut(Out):
    success: bool | None = None
    eventId: str
    usageLimitExceeded: bool
    creditsDeducted: Amount
    overageUnits: Amount
    customerAutoCreated: bool
    costSource: CostSource
    message: str | None = None


class UsageOut(Out):
    used: Amount
    limit: Amount | None = None
    remaining: Amount | None = None


class CreditCheckOut(Out):
    denomination: str
    balance: Amount
    totalGranted: Amount
    totalConsumed: Amount
    hardLimit: bool
    weight: Amount


class SimulationOut(Out):
    requestedUsage: Amount
    projectedUsage: Amount
    projectedRemaining: Amount | None = None
    wouldExceedLimit: bool
    creditsRequired: Amount | None = None
    creditsAvailable: Amount | None = None
    wouldExceedCredits: bool | None = None


class ReasonOut(Out):
    description: str


class CheckMetaOut(Out):
    reason: ReasonOut


class CheckOut(Out):
    """An entitlement decision (check or evaluation)."""

    success: bool | None = None
    customerReferenceId: str
    referenceCustomerId: str
    featureKey: str
    allowed: bool
    isAllowed: bool
    subscriptionId: str | None = None
    usage: UsageOut | None = None
    credit: CreditCheckOut | None = None
    simulation: SimulationOut | None = None
    reason: str | None = None
    meta: CheckMetaOut | None = None
    flowId: str | None = None
    auditEventId: str | None = None


class FeatureEntitlementOut(Out):
    featureKey: str
    featureId: str
    allowed: bool
    isAllowed: bool
    usage: UsageOut | None = None
    credit: CreditCheckOut | None = None
    reason: str | None = None


class SubscriptionEntitlementsOut(Out):
    subscriptionId: str
    planId: str
    planKey: str
    currentPeriodStart: datetime
    currentPeriodEnd: datetime
    entitlements: list[FeatureEntitlementOut]


# --------------------------------------------------------------------------- test clock


class ClockOut(Out):
    now: datetime
    frozen: bool
    offsetSeconds: Amount = Field(
        description="how far the clock is ahead of real time (negative: behind)"
    )
    jobsRun: int | None = Field(default=None, description="after an advance: jobs that ran")


# --------------------------------------------------------------------------- write results
# Write tools answer {"success": true, "message": …} with the resource under a named key.


class WriteOut(Out):
    success: bool
    message: str


class CustomerWriteOut(WriteOut):
    customer: CustomerOut


class FeatureWriteOut(WriteOut):
    feature: FeatureOut


class PlanWriteOut(WriteOut):
    """The plan (its id is plan.id), its features and its credit allocations."""

    plan: PlanOut
    features: list[PlanFeatureOut]
    creditAllocations: list[CreditAllocationOut]


class RuleWriteOut(WriteOut):
    rule: RuleOut


class UnlinkOut(WriteOut):
    ruleId: str


class SubscribedWriteOut(WriteOut):
    # a Stripe Checkout page instead of a subscription for paid in-advance plans when
    # Stripe collects payments
    subscription: SubscriptionOut | None = None
    invoice: InvoiceOut | None = None
    checkoutUrl: str | None = None
    checkoutSessionId: str | None = None


# --------------------------------------------------------------------------- credits


class TransactionOut(Out):
    id: str
    poolId: str
    type: str
    amount: Amount
    balanceBefore: Amount
    balanceAfter: Amount
    grantId: str | None = None
    eventId: str | None = None
    subscriptionId: str | None = None
    description: str | None = None
    createdAt: datetime


class GrantOut(Out):
    id: str
    poolId: str
    grantType: str
    amount: Amount
    remaining: Amount
    status: str
    expiresAt: datetime | None = None
    idempotencyKey: str | None = None
    subscriptionId: str | None = None
    periodStart: datetime | None = None
    description: str | None = None
    voidedAt: datetime | None = None
    createdAt: datetime


class TopUpOut(Out):
    grant: GrantOut
    pool: CreditPoolDetailOut


class ItemErrorOut(Out):
    code: str = Field(description="duplicate_event, invalid_request, insufficient_credits, …")
    message: str
    field: str | None = Field(default=None, description="e.g. events[3].usageUnits")


class BatchItemOut(Out):
    index: int
    status: str = Field(description="accepted, duplicate or error")
    eventId: str | None = None
    costSource: CostSource | None = Field(default=None, description="accepted events")
    usageLimitExceeded: bool | None = None
    creditsDeducted: Amount | None = None
    overageUnits: Amount | None = None
    customerAutoCreated: bool | None = None
    error: ItemErrorOut | None = None


class BatchOut(Out):
    results: list[BatchItemOut]
    accepted: int
    duplicates: int
    errors: int
