"""The public plugin API: everything a payment provider or another plugin may import
from tanso-mcp. Plugins never import ``tanso_mcp.db`` or ``tanso_mcp.services``: the core
owns the database, calls providers with plain data objects and applies what they return.

Payment providers
-----------------
A provider is an object satisfying :class:`PaymentProvider`. It is described by a
:class:`ProviderInfo` (hook ``tanso_payment_providers``) and built per environment by the
``tanso_make_payment_provider`` hook. ``capabilities`` tells the core who does what:

* ``CORE_INVOICING`` — the core is the billing system of record: it issues invoices,
  runs renewals and dunning on its own clock (native "Tanso mode");
* ``MARK_PAID`` — invoices may be marked paid through the API (``mark-paid``);
* ``MULTIPLE_SUBSCRIPTIONS`` — a customer may hold several active subscriptions;
* ``PROVIDER_INVOICING`` — the provider issues and collects invoices; the core mirrors
  them from webhooks (Stripe-driven mode);
* ``CHECKOUT`` — ``create_checkout`` returns a hosted payment page;
* ``USAGE_REPORTING`` — metered overage is forwarded with ``report_usage``;
* ``WEBHOOKS`` — ``parse_webhook`` turns the provider's callbacks into :class:`ProviderEvent`.

Every mutating provider method takes an ``idempotency_key``: the core derives it from its
own ids so a retry after a crash or timeout never does the work twice. The core never
calls a provider inside a database transaction (it writes a pending row, commits, calls,
then records the result).

Outbox
------
Work a plugin cannot finish before the process stops (an outbound delivery still being
retried) is handed to the :class:`Outbox` of the application, ``outbox_of(ctx)``: a
database table, so whichever process runs next — this one after a restart, or another
one sharing the database — takes it up (``claim``) and finishes it. The core calls the
``tanso_startup`` and ``tanso_shutdown`` hooks around serving for exactly this.

Domain events
-------------
After a unit of work commits, the core announces what happened as a
:class:`DomainEvent` through the ``tanso_domain_event`` hook (names such as
``subscription.created``, ``invoice.paid``; the full list is in ``plugins/README.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import pluggy

PROJECT = "tanso_mcp"
"""pluggy project name, and the entry-point group external plugins register under."""

hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

# --------------------------------------------------------------------------- capabilities

CORE_INVOICING = "core_invoicing"
PROVIDER_INVOICING = "provider_invoicing"
MARK_PAID = "mark_paid"
MULTIPLE_SUBSCRIPTIONS = "multiple_subscriptions"
CHECKOUT = "checkout"
USAGE_REPORTING = "usage_reporting"
WEBHOOKS = "webhooks"

ALL_CAPABILITIES = frozenset(
    {
        CORE_INVOICING,
        PROVIDER_INVOICING,
        MARK_PAID,
        MULTIPLE_SUBSCRIPTIONS,
        CHECKOUT,
        USAGE_REPORTING,
        WEBHOOKS,
    }
)


@dataclass(frozen=True)
class ProviderInfo:
    """Describes a payment provider a plugin offers."""

    name: str
    """Stable identifier stored on the environment (``native``, ``stripe``…)."""
    title: str
    capabilities: frozenset[str]
    description: str = ""
    settings_model: type | None = None
    """Optional pydantic model of the provider's configuration."""


# --------------------------------------------------------------------------- DTOs


@dataclass(frozen=True)
class CustomerData:
    customer_id: str
    reference_id: str
    email: str | None = None
    name: str | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class PlanData:
    plan_id: str
    key: str
    name: str
    price: Decimal
    currency: str
    interval_months: int
    billing_timing: str
    external_product_id: str | None = None
    external_price_id: str | None = None


@dataclass(frozen=True)
class SubscriptionData:
    subscription_id: str
    customer: CustomerData
    plan: PlanData
    period_start: datetime
    period_end: datetime
    external_id: str | None = None


@dataclass(frozen=True)
class InvoiceData:
    invoice_id: str
    customer: CustomerData
    amount: Decimal
    currency: str
    type: str
    status: str
    subscription_id: str | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class UsageReport:
    customer: CustomerData
    feature_key: str
    quantity: Decimal
    period_start: datetime
    occurred_at: datetime


@dataclass(frozen=True)
class ExternalRef:
    """What a provider call created or found on its side."""

    external_id: str
    url: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderEvent:
    """A provider callback, normalised. ``kind`` is one of ``checkout.completed``,
    ``invoice.created``, ``invoice.paid``, ``invoice.payment_failed``,
    ``subscription.updated``, ``subscription.deleted`` or ``unknown``."""

    event_id: str
    kind: str
    external_ids: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DomainEvent:
    """Something that happened in the core, announced after its commit."""

    name: str
    environment_id: str
    account_id: str
    mode: str
    occurred_at: datetime
    payload: Mapping[str, Any]
    id: str = ""


@dataclass(frozen=True)
class OutboxItem:
    """An outbox entry claimed by this process (see :class:`Outbox`)."""

    id: str
    key: str
    payload: Mapping[str, Any]
    attempts: int
    """How many times it has been claimed, this time included."""


@runtime_checkable
class Outbox(Protocol):
    """Persistent hand-over of a plugin's unfinished work. ``plugin`` names the owner
    (the plugin's own name); ``key`` makes hand-over idempotent (the same key is stored
    once); ``payload`` is a JSON document. Every method is its own database
    transaction; call them outside any other."""

    async def put(self, plugin: str, items: Mapping[str, Mapping[str, Any]]) -> int:
        """Store ``{key: payload}``, due now; returns how many were new."""
        ...

    async def claim(
        self, plugin: str, *, limit: int = 100, lease_seconds: float = 60.0
    ) -> list[OutboxItem]:
        """Take up to ``limit`` due entries, leased to this process for
        ``lease_seconds`` (an entry whose lease ran out can be claimed again)."""
        ...

    async def done(self, item_id: str) -> None:
        """The work is finished: remove the entry."""
        ...

    async def retry(self, item_id: str, *, delay_seconds: float, error: str | None = None) -> None:
        """Not finished: make the entry due again after ``delay_seconds``."""
        ...


def outbox_of(ctx: Any) -> Outbox:
    """The outbox of the application context handed to a hook."""
    return ctx.extras["outbox"]


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class PaymentProvider(Protocol):
    """What the core needs from a payment backend. Methods a provider has no use for
    return ``None`` (the native provider implements all of them that way)."""

    name: str
    capabilities: frozenset[str]

    async def ensure_customer(
        self, customer: CustomerData, *, idempotency_key: str
    ) -> ExternalRef | None: ...

    async def sync_plan(self, plan: PlanData, *, idempotency_key: str) -> ExternalRef | None: ...

    async def create_checkout(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalRef | None: ...

    async def upsert_subscription(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalRef | None: ...

    async def cancel_subscription(
        self, subscription: SubscriptionData, *, immediate: bool, idempotency_key: str
    ) -> ExternalRef | None: ...

    async def report_usage(
        self, report: UsageReport, *, idempotency_key: str
    ) -> ExternalRef | None: ...

    async def parse_webhook(
        self, headers: Mapping[str, str], body: bytes
    ) -> list[ProviderEvent]: ...


def has_capability(provider: PaymentProvider, capability: str) -> bool:
    return capability in provider.capabilities


__all__ = [
    "ALL_CAPABILITIES",
    "CHECKOUT",
    "CORE_INVOICING",
    "MARK_PAID",
    "MULTIPLE_SUBSCRIPTIONS",
    "PROJECT",
    "PROVIDER_INVOICING",
    "USAGE_REPORTING",
    "WEBHOOKS",
    "CustomerData",
    "DomainEvent",
    "ExternalRef",
    "InvoiceData",
    "Outbox",
    "OutboxItem",
    "PaymentProvider",
    "PlanData",
    "ProviderEvent",
    "ProviderInfo",
    "SubscriptionData",
    "UsageReport",
    "has_capability",
    "hookimpl",
    "hookspec",
    "outbox_of",
]
