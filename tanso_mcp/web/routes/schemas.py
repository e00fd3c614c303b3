"""Response models for the OpenAPI document (the presenters in services/views.py produce
these shapes; tests check the two agree)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


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
    priceAmount: Decimal
    currency: str
    intervalMonths: int
    billingTiming: str
    status: str


class TierOut(Out):
    upTo: Decimal | str
    pricePerUnit: Decimal
    flatFee: Decimal | None = None


class PricingOut(Out):
    model: str
    pricePerUnit: Decimal | None = None
    unitLabel: str | None = None
    maxUsage: Decimal | None = None
    resetMode: str | None = None
    tiers: list[TierOut] | None = None


class PlanFeatureOut(Out):
    id: str
    key: str
    name: str
    description: str | None = None
    pricingType: str
    pricing: PricingOut | None = None


class CreditAllocationOut(Out):
    id: str
    creditModelId: str
    creditModelName: str
    denomination: str
    creditAmount: Decimal
    grantExpiresMonths: int | None = None
    hardLimit: bool
    createdAt: datetime


class CatalogPlanOut(Out):
    plan: PlanOut
    features: list[PlanFeatureOut]
    creditAllocations: list[CreditAllocationOut]


class SubscriptionOut(Out):
    id: str
    status: str
    customerReferenceId: str
    planId: str
    plan: PlanOut
    currentPeriodStart: datetime
    currentPeriodEnd: datetime
    gracePeriodDays: int
    cancelMode: str | None = None
    cancelEffectiveAt: datetime | None = None
    scheduledChange: dict[str, Any] | None = None


class CreditPoolOut(Out):
    id: str
    denomination: str
    balance: Decimal
    totalGranted: Decimal
    totalConsumed: Decimal
    totalExpired: Decimal
    hardLimit: bool
    rolloverPolicy: str
    status: str


class CustomerOut(Out):
    id: str
    customerReferenceId: str
    email: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    phoneNumber: str | None = None
    subscriptions: list[SubscriptionOut]
    creditPools: list[CreditPoolOut] | None = None
