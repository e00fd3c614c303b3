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
Providers that invoice themselves (``PROVIDER_INVOICING``) are the system of record for
subscriptions and invoices: the core mirrors their state. It reads it through
:class:`ExternalSubscription`, :class:`ExternalInvoice` and :class:`ExternalCheckout`
(returned by the provider's calls, carried by :class:`ProviderEvent`, or read back with
``retrieve``), and converges to what the provider says *now*, so callbacks delivered
twice or out of order change nothing. A provider signals failures with
:class:`ProviderError` (the core answers ``stripe_api_error`` / HTTP 502 and applies
nothing); :class:`ProviderUnavailable` means "try again later" (network down, 5xx).

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
class PriceTier:
    """One bracket of a graduated price; ``up_to`` ``None`` is the open last bracket.
    Amounts in major units of the plan's currency."""

    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal | None = None


@dataclass(frozen=True)
class MeteredPrice:
    """A metered feature of a plan: what one unit of overage costs (``unit_price``) or
    graduated ``tiers``. ``external_meter_id``/``external_price_id`` are what an earlier
    ``sync_plan`` returned (reuse them; create only what is missing)."""

    feature_id: str
    feature_key: str
    feature_name: str
    unit_price: Decimal | None = None
    tiers: tuple[PriceTier, ...] = ()
    external_meter_id: str | None = None
    external_price_id: str | None = None
    price_version: str | None = None
    """A fingerprint of this pricing: a provider whose prices are immutable creates a
    new price for each version (put it in the idempotency key)."""


BASE_FEE_KEY = "tanso.base_fee"
"""``UsageReport.feature_key`` of a plan's base fee billed in arrears through a usage
meter (one unit per subscription period, priced at the plan's price)."""


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
    metered: tuple[MeteredPrice, ...] = ()
    price_minor: int | None = None
    """``price`` in minor units of ``currency`` (what payment APIs usually take)."""
    price_version: str | None = None
    """A fingerprint of the base price's terms (see :attr:`MeteredPrice.price_version`)."""
    external_base_meter_id: str | None = None
    """IN_ARREARS plans: the usage meter their base fee is reported to (one per
    provider account; ``sync_plan`` returns it as ``base_meter_id`` when it created it)."""
    retired_price_ids: tuple[str, ...] = ()
    """Prices this plan no longer offers (replaced by a new version): a provider may
    archive them; subscriptions still on them keep billing them until moved."""


@dataclass(frozen=True)
class SubscriptionData:
    subscription_id: str
    customer: CustomerData
    plan: PlanData
    period_start: datetime
    period_end: datetime
    external_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Stored on the provider's subscription and returned in
    :attr:`ExternalSubscription.metadata` (the core puts its own ids here)."""
    days_until_due: int | None = None
    """Invoices of a directly created subscription are payable within this many days."""


@dataclass(frozen=True)
class CheckoutRequest:
    """A hosted payment page that starts a subscription to ``plan`` once paid."""

    reference: str
    """The core's id for this checkout (also in ``metadata``)."""
    customer: CustomerData
    plan: PlanData
    success_url: str
    cancel_url: str
    metadata: Mapping[str, str] = field(default_factory=dict)


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
    """Overage of one customer and feature to add to the provider's usage meter.
    ``external_meter_id`` is the feature's meter on the provider's side when known (set
    by ``sync_plan``, or found by an import), else the provider derives it from
    ``feature_key``."""

    customer: CustomerData
    feature_key: str
    quantity: Decimal
    period_start: datetime
    occurred_at: datetime
    external_meter_id: str | None = None


@dataclass(frozen=True)
class ExternalRef:
    """What a provider call created or found on its side."""

    external_id: str
    url: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExternalSubscription:
    """A subscription as the provider holds it. ``status``: ``active``, ``trialing``,
    ``past_due``, ``unpaid``, ``incomplete``, ``incomplete_expired``, ``canceled`` or
    ``paused``. ``price_ids``: the prices it bills (base price first if any)."""

    external_id: str
    customer_external_id: str | None
    status: str
    price_ids: tuple[str, ...] = ()
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool = False
    ended_at: datetime | None = None
    latest_invoice_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_live(self) -> bool:
        return self.status in ("active", "trialing", "past_due", "unpaid")


@dataclass(frozen=True)
class ExternalInvoiceLine:
    description: str
    amount_minor: int
    price_id: str | None = None
    proration: bool = False
    metered: bool = False


@dataclass(frozen=True)
class ExternalInvoice:
    """An invoice as the provider holds it. ``status``: ``draft``, ``open``, ``paid``,
    ``void`` or ``uncollectible``. ``billing_reason``: ``subscription_create`` (first
    invoice), ``subscription_cycle`` (renewal), ``subscription_update`` (proration of
    a plan change), or anything else (manual/one-off). Amounts in minor units."""

    external_id: str
    customer_external_id: str | None
    subscription_external_id: str | None
    status: str
    billing_reason: str | None
    currency: str
    amount_due_minor: int
    amount_paid_minor: int = 0
    lines: tuple[ExternalInvoiceLine, ...] = ()
    period_start: datetime | None = None
    period_end: datetime | None = None
    due_date: datetime | None = None
    hosted_url: str | None = None
    attempted: bool = False


@dataclass(frozen=True)
class ExternalCheckout:
    """A hosted checkout. ``status``: ``open``, ``complete`` or ``expired``."""

    external_id: str
    status: str
    url: str | None = None
    subscription_external_id: str | None = None
    customer_external_id: str | None = None
    payment_status: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExternalCustomer:
    external_id: str
    email: str | None = None
    name: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExternalPrice:
    external_id: str
    product_id: str
    currency: str
    unit_amount_minor: int | None = None
    interval: str | None = None
    """``month``, ``year``… for recurring prices; ``None`` for one-off ones."""
    interval_count: int = 1
    usage_type: str = "licensed"
    """``licensed`` (a fixed price per period) or ``metered`` (billed on usage)."""
    meter_id: str | None = None
    tiers: tuple[PriceTier, ...] = ()
    unit_amount: Decimal | None = None
    """Exact per-unit price in major units (metered prices may be fractional)."""
    active: bool = True


@dataclass(frozen=True)
class ExternalProduct:
    external_id: str
    name: str
    description: str | None = None
    active: bool = True
    prices: tuple[ExternalPrice, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


ExternalObject = ExternalSubscription | ExternalInvoice | ExternalCheckout


@dataclass(frozen=True)
class ProviderEvent:
    """A provider callback, normalised. ``kind`` is one of ``checkout.completed``,
    ``invoice.created``, ``invoice.paid``, ``invoice.payment_failed``,
    ``subscription.updated``, ``subscription.deleted`` or ``unknown``.
    ``external_ids`` names the objects involved (keys ``subscription``, ``invoice``,
    ``checkout``, ``customer``); ``object`` is the object as the event carried it (it
    may be stale: the core reads the current one back with ``retrieve``)."""

    event_id: str
    kind: str
    external_ids: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    object: ExternalObject | None = None
    created: datetime | None = None
    raw_type: str = ""
    """The provider's own event type (``invoice.paid``…), for logs and the inbox."""


class ProviderError(Exception):
    """A provider call failed; ``message`` is the provider's own explanation. The core
    answers ``stripe_api_error`` (HTTP 502) and applies nothing."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or failed on its side: retry later."""


class WebhookSignatureError(ProviderError):
    """A callback's signature is missing or wrong: reject it, store nothing."""


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
    ) -> ExternalRef | None:
        """Create the customer (or update it when ``customer.external_id`` is set)."""
        ...

    async def sync_plan(self, plan: PlanData, *, idempotency_key: str) -> ExternalRef | None:
        """Create what is missing of the plan: ``external_id`` is the product; ``data``
        holds ``price_id`` (the base price), ``metered`` ``{feature_key: {"meter_id",
        "price_id"}}`` and, for an IN_ARREARS plan billed through a usage meter,
        ``base_meter_id``. A missing ``external_price_id`` means "create the price of
        this ``price_version``"; ``retired_price_ids`` may be archived."""
        ...

    async def create_checkout(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalRef | None: ...

    async def upsert_subscription(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalSubscription | ExternalRef | None:
        """Create the subscription directly (no payment page; active at once)."""
        ...

    async def cancel_subscription(
        self, subscription: SubscriptionData, *, immediate: bool, idempotency_key: str
    ) -> ExternalSubscription | ExternalRef | None:
        """``immediate``: end it now; otherwise at the end of the current period."""
        ...

    async def report_usage(
        self, report: UsageReport, *, idempotency_key: str
    ) -> ExternalRef | None: ...

    async def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[ProviderEvent]:
        """Verify the signature (raise :class:`WebhookSignatureError` if it fails) and
        normalise the callback."""
        ...


@runtime_checkable
class InvoicingProvider(PaymentProvider, Protocol):
    """What the core needs in addition from a provider with ``PROVIDER_INVOICING``
    (it issues and collects invoices; the core mirrors it). The core calls these
    methods only on such providers, so a provider without that capability needs none
    of them."""

    async def start_checkout(
        self, request: CheckoutRequest, *, idempotency_key: str
    ) -> ExternalRef | None:
        """A hosted page where the customer pays for and starts a subscription
        (``external_id`` = the checkout id, ``url``)."""
        ...

    async def change_plan(
        self,
        subscription: SubscriptionData,
        plan: PlanData,
        *,
        prorate: bool,
        idempotency_key: str,
    ) -> ExternalSubscription | None:
        """Make the subscription bill ``plan``'s prices (its base price and every
        ``metered`` price, no others) from now. ``prorate``: charge the difference for
        the rest of the period at once (an adjustment invoice); otherwise the new prices
        apply from the next invoice (a price billed in advance from the next period)."""
        ...

    async def resume_subscription(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalSubscription | None:
        """Withdraw a cancellation scheduled for the end of the period."""
        ...

    async def mark_invoice_paid(
        self, invoice: InvoiceData, *, idempotency_key: str
    ) -> ExternalInvoice | None:
        """Record that the invoice was paid outside the provider."""
        ...

    async def invoice_payment_url(self, invoice: InvoiceData) -> ExternalRef | None:
        """A page where the customer pays an open invoice (``url``)."""
        ...

    async def create_webhook_endpoint(
        self, url: str, *, idempotency_key: str
    ) -> ExternalRef | None:
        """Register ``url`` for the callbacks the core handles; ``data["secret"]`` is
        the signing secret (stored encrypted by the core and passed back in the
        provider's config as ``secrets["webhook_secret"]``). Also proves the
        credentials work."""
        ...

    async def retrieve(self, kind: str, external_id: str) -> ExternalObject | ExternalRef | None:
        """The current state of a ``subscription``, ``invoice`` or ``checkout``; for a
        ``webhook_endpoint`` an :class:`ExternalRef` (``url``), or a
        :class:`ProviderError` with ``status`` 404 when it no longer exists."""
        ...

    async def list_products(self) -> list[ExternalProduct]: ...

    async def list_customers(self) -> list[ExternalCustomer]: ...

    async def list_subscriptions(self) -> list[ExternalSubscription]: ...


def has_capability(provider: PaymentProvider, capability: str) -> bool:
    return capability in provider.capabilities


__all__ = [
    "ALL_CAPABILITIES",
    "BASE_FEE_KEY",
    "CHECKOUT",
    "CheckoutRequest",
    "ExternalCheckout",
    "ExternalCustomer",
    "ExternalInvoice",
    "ExternalInvoiceLine",
    "ExternalObject",
    "ExternalPrice",
    "ExternalProduct",
    "ExternalSubscription",
    "InvoicingProvider",
    "MeteredPrice",
    "PriceTier",
    "ProviderError",
    "ProviderUnavailable",
    "WebhookSignatureError",
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
