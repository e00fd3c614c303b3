"""``StripeProvider``: the PaymentProvider protocol on the stripe SDK's async client.

Every mutating call carries an idempotency key derived from the core's key (itself
derived from engine ids), so a retry after a timeout or crash returns the object Stripe
already created instead of creating a second one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import stripe

from tanso_mcp.plugin import (
    BASE_FEE_KEY,
    CHECKOUT,
    PROVIDER_INVOICING,
    USAGE_REPORTING,
    WEBHOOKS,
    CheckoutRequest,
    CustomerData,
    ExternalCustomer,
    ExternalInvoice,
    ExternalObject,
    ExternalProduct,
    ExternalRef,
    ExternalSubscription,
    InvoiceData,
    MeteredPrice,
    PlanData,
    ProviderError,
    ProviderEvent,
    ProviderUnavailable,
    SubscriptionData,
    UsageReport,
    WebhookSignatureError,
)

from . import meters

if TYPE_CHECKING:
    from stripe._base_address import BaseAddresses  # the SDK's TypedDict, not exported
from . import normalise as norm
from .meters import meter_event_name

NAME = "stripe"
CAPABILITIES = frozenset({PROVIDER_INVOICING, CHECKOUT, USAGE_REPORTING, WEBHOOKS})

# Stripe event type -> normalised kind
WEBHOOK_EVENTS = {
    "checkout.session.completed": "checkout.completed",
    "invoice.created": "invoice.created",
    "invoice.paid": "invoice.paid",
    "invoice.payment_failed": "invoice.payment_failed",
    "customer.subscription.updated": "subscription.updated",
    "customer.subscription.deleted": "subscription.deleted",
}
SIGNATURE_TOLERANCE_SECONDS = 300

T = TypeVar("T")


def _idem(key: str) -> dict[str, Any]:
    return {"idempotency_key": key[:255]}


def _amount_decimal(value: Decimal, currency: str) -> str:
    """Major units -> Stripe's minor-unit decimal string (``0.02`` USD -> ``"2"``)."""
    minor = (value * norm.minor_factor(currency)).normalize()
    return format(minor, "f")


def _replacing(plan: PlanData) -> str:
    """Part of a new price's idempotency key: the prices it replaces. Terms edited back
    and forth within Stripe's 24 h key window would otherwise replay the first
    (since archived) price; a retired price is never current again, so the key is new
    for every change and the same for a retry of it."""
    if not plan.retired_price_ids:
        return ""
    joined = ",".join(sorted(plan.retired_price_ids))
    return ":" + hashlib.sha256(joined.encode()).hexdigest()[:12]


def in_arrears_base(plan: PlanData) -> bool:
    """A base fee due at the end of each period (billed through the base-fee meter)."""
    return plan.billing_timing == "IN_ARREARS" and bool(plan.price_minor or plan.price)


def _up_to(value: Decimal | None) -> int | str:
    if value is None:
        return "inf"
    if value != value.to_integral_value():
        raise ProviderError("Stripe tiers need whole-number bounds (up_to)", code="tiers")
    return int(value)


class StripeProvider:
    name = NAME
    capabilities = CAPABILITIES

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str | None = None,
        api_base: str | None = None,
        max_network_retries: int = 2,
    ) -> None:
        # no I/O here: the client is built on first use
        self._api_key = api_key
        self._webhook_secret = webhook_secret
        self._api_base = api_base
        self._retries = max_network_retries
        self._client: stripe.StripeClient | None = None
        self._http: stripe.HTTPXClient | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            if not self._api_key:
                raise ProviderError("no Stripe secret key is registered", code="no_key")
            base: BaseAddresses | None = {"api": self._api_base} if self._api_base else None
            self._http = stripe.HTTPXClient()
            self._client = stripe.StripeClient(
                self._api_key,
                base_addresses=base,
                http_client=self._http,
                max_network_retries=self._retries,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections (the core calls it when it drops the provider)."""
        if self._http is not None:
            http, self._http, self._client = self._http, None, None
            await http.close_async()

    @property
    def v1(self) -> Any:
        return self.client.v1

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except stripe.APIConnectionError as exc:
            raise ProviderUnavailable(
                f"Stripe could not be reached: {exc.user_message or exc}", code="connection"
            ) from None
        except stripe.RateLimitError as exc:
            raise ProviderUnavailable(
                exc.user_message or "Stripe rate limit", code="rate_limit", status=429
            ) from None
        except stripe.StripeError as exc:
            status = exc.http_status
            message = exc.user_message or str(exc) or "Stripe request failed"
            cls = ProviderUnavailable if status is None or status >= 500 else ProviderError
            raise cls(message, code=exc.code, status=status) from None

    # ------------------------------------------------------------------ customers

    async def ensure_customer(
        self, customer: CustomerData, *, idempotency_key: str
    ) -> ExternalRef | None:
        params: dict[str, Any] = {"metadata": {"customerReferenceId": customer.reference_id}}
        if customer.email:
            params["email"] = customer.email
        if customer.name:
            params["name"] = customer.name
        if customer.external_id:
            obj = await self._call(
                lambda: self.v1.customers.update_async(
                    customer.external_id, params=params, options=_idem(idempotency_key)
                )
            )
        else:
            params["metadata"]["tansoCustomerId"] = customer.customer_id
            obj = await self._call(
                lambda: self.v1.customers.create_async(
                    params=params, options=_idem(idempotency_key)
                )
            )
        return ExternalRef(external_id=obj.id)

    # ------------------------------------------------------------------ catalog

    async def sync_plan(self, plan: PlanData, *, idempotency_key: str) -> ExternalRef | None:
        meta = {"tansoPlanId": plan.plan_id, "tansoPlanKey": plan.key}
        currency = plan.currency.lower()
        recurring: dict[str, Any] = {"interval": "month", "interval_count": plan.interval_months}
        product_id = plan.external_product_id
        if not product_id:
            product = await self._call(
                lambda: self.v1.products.create_async(
                    params={"name": plan.name, "metadata": meta},
                    options=_idem(f"{idempotency_key}:product"),
                )
            )
            product_id = product.id
        price_minor = plan.price_minor
        if price_minor is None:
            # a price finer than the currency's minor unit rounds half up, as invoices do
            exact = Decimal(plan.price) * norm.minor_factor(plan.currency)
            price_minor = int(exact.to_integral_value(rounding=ROUND_HALF_UP))
        base_meter_id = plan.external_base_meter_id
        price_id = plan.external_price_id
        if not price_id:
            # prices are immutable: each version of the terms is a price of its own
            version = plan.price_version or str(price_minor)
            version += _replacing(plan)
            params: dict[str, Any] = {
                "product": product_id,
                "currency": currency,
                "unit_amount": price_minor,
                "recurring": recurring,
                "metadata": meta,
            }
            if in_arrears_base(plan):
                # Stripe bills licensed prices at the start of a period; a base fee due
                # at its end is one unit per period on the base-fee meter instead
                if not base_meter_id:
                    base_meter_id = await self._base_fee_meter()
                params["recurring"] = {**recurring, "usage_type": "metered", "meter": base_meter_id}
                params["nickname"] = f"{plan.name}: base fee (billed at period end)"
            price = await self._call(
                lambda: self.v1.prices.create_async(
                    params=params, options=_idem(f"{idempotency_key}:price:{version}")
                )
            )
            price_id = price.id
        metered: dict[str, dict[str, str]] = {}
        for m in plan.metered:
            metered[m.feature_key] = await self._sync_metered(
                plan, m, product_id, recurring, idempotency_key
            )
        for old in plan.retired_price_ids:
            # archived prices keep billing the subscriptions still on them
            await self._archive_price(old)
        data: dict[str, Any] = {"price_id": price_id, "metered": metered}
        if base_meter_id:
            data["base_meter_id"] = base_meter_id
        return ExternalRef(external_id=product_id, data=data)

    async def _archive_price(self, price_id: str) -> None:
        await self._call(
            lambda: self.v1.prices.update_async(
                price_id, params={"active": False}, options=_idem(f"archive:{price_id}")
            )
        )

    async def _base_fee_meter(self) -> str:
        meter = await self._call(
            lambda: self.v1.billing.meters.create_async(
                params={
                    "display_name": "Plan base fees billed at period end",
                    "event_name": meter_event_name(BASE_FEE_KEY),
                    "default_aggregation": {"formula": "sum"},
                    "customer_mapping": {
                        "type": "by_id",
                        "event_payload_key": "stripe_customer_id",
                    },
                    "value_settings": {"event_payload_key": "value"},
                },
                options=_idem(f"meter:{BASE_FEE_KEY}"),
            )
        )
        return str(meter.id)

    async def _sync_metered(
        self,
        plan: PlanData,
        m: MeteredPrice,
        product_id: str,
        recurring: dict[str, Any],
        key: str,
    ) -> dict[str, str]:
        meter_id = m.external_meter_id
        if not meter_id:
            meter = await self._call(
                lambda: self.v1.billing.meters.create_async(
                    params={
                        "display_name": m.feature_name,
                        "event_name": meter_event_name(m.feature_key),
                        "default_aggregation": {"formula": "sum"},
                        "customer_mapping": {
                            "type": "by_id",
                            "event_payload_key": "stripe_customer_id",
                        },
                        "value_settings": {"event_payload_key": "value"},
                    },
                    options=_idem(f"meter:{m.feature_id}"),
                )
            )
            meter_id = meter.id
        price_id = m.external_price_id
        if not price_id:
            params: dict[str, Any] = {
                "product": product_id,
                "currency": plan.currency.lower(),
                "recurring": {**recurring, "usage_type": "metered", "meter": meter_id},
                "nickname": f"{plan.name}: {m.feature_name}",
                "metadata": {"tansoPlanId": plan.plan_id, "tansoFeatureKey": m.feature_key},
            }
            if m.tiers:
                params["billing_scheme"] = "tiered"
                params["tiers_mode"] = "graduated"
                params["tiers"] = [
                    {
                        "up_to": _up_to(t.up_to),
                        "unit_amount_decimal": _amount_decimal(t.unit_price, plan.currency),
                        **(
                            {"flat_amount_decimal": _amount_decimal(t.flat_fee, plan.currency)}
                            if t.flat_fee
                            else {}
                        ),
                    }
                    for t in m.tiers
                ]
            else:
                params["unit_amount_decimal"] = _amount_decimal(
                    m.unit_price or Decimal(0), plan.currency
                )
            price = await self._call(
                lambda: self.v1.prices.create_async(
                    params=params,
                    options=_idem(
                        f"{key}:metered:{m.feature_id}:{m.price_version or ''}{_replacing(plan)}"
                    ),
                )
            )
            price_id = price.id
        return {"meter_id": meter_id, "price_id": price_id}

    # ------------------------------------------------------------------ subscriptions

    @staticmethod
    def _line_items(plan: PlanData, *, checkout: bool) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if plan.external_price_id:
            base: dict[str, Any] = {"price": plan.external_price_id}
            if not in_arrears_base(plan):
                base["quantity"] = 1
            items.append(base)
        for m in plan.metered:
            if m.external_price_id:
                items.append({"price": m.external_price_id})
        return items

    async def create_checkout(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalRef | None:
        return None  # superseded by start_checkout (a checkout exists before a subscription)

    async def start_checkout(
        self, request: CheckoutRequest, *, idempotency_key: str
    ) -> ExternalRef | None:
        if not request.customer.external_id:
            raise ProviderError("the customer is not synced to Stripe yet", code="no_customer")
        meta = dict(request.metadata)
        session = await self._call(
            lambda: self.v1.checkout.sessions.create_async(
                params={
                    "mode": "subscription",
                    "customer": request.customer.external_id,
                    "line_items": self._line_items(request.plan, checkout=True),
                    "success_url": request.success_url,
                    "cancel_url": request.cancel_url,
                    "client_reference_id": request.reference,
                    "metadata": meta,
                    "subscription_data": {"metadata": meta},
                },
                options=_idem(idempotency_key),
            )
        )
        return ExternalRef(external_id=session.id, url=session.url)

    async def upsert_subscription(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalSubscription | None:
        if subscription.external_id:
            return await self._retrieve_subscription(subscription.external_id)
        if not subscription.customer.external_id:
            raise ProviderError("the customer is not synced to Stripe yet", code="no_customer")
        params: dict[str, Any] = {
            "customer": subscription.customer.external_id,
            "items": self._line_items(subscription.plan, checkout=False),
            "metadata": dict(subscription.metadata),
            # Stripe raises the invoices and the customer pays them; the subscription is
            # usable at once rather than "incomplete" until a card is on file
            "collection_method": "send_invoice",
            "days_until_due": subscription.days_until_due or 30,
        }
        obj = await self._call(
            lambda: self.v1.subscriptions.create_async(
                params=params, options=_idem(idempotency_key)
            )
        )
        return norm.subscription(norm.as_dict(obj))

    async def _retrieve_subscription(self, external_id: str) -> ExternalSubscription:
        obj = await self._call(lambda: self.v1.subscriptions.retrieve_async(external_id))
        return norm.subscription(norm.as_dict(obj))

    async def change_plan(
        self,
        subscription: SubscriptionData,
        plan: PlanData,
        *,
        prorate: bool,
        idempotency_key: str,
    ) -> ExternalSubscription | None:
        ext_id = subscription.external_id
        if not ext_id:
            raise ProviderError("the subscription is not linked to Stripe", code="no_subscription")
        current = norm.as_dict(
            await self._call(lambda: self.v1.subscriptions.retrieve_async(ext_id))
        )
        items = self._item_changes(plan, norm._items(current))
        meta = {**current.get("metadata", {}), "tansoPlanId": plan.plan_id}
        if not items and meta == current.get("metadata", {}):
            return norm.subscription(current)
        obj = await self._call(
            lambda: self.v1.subscriptions.update_async(
                ext_id,
                params={
                    "items": items,
                    "proration_behavior": "always_invoice" if prorate else "none",
                    "metadata": meta,
                },
                options=_idem(idempotency_key),
            )
        )
        return norm.subscription(norm.as_dict(obj))

    @staticmethod
    def _item_changes(plan: PlanData, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The item updates that make a subscription bill exactly ``plan``'s prices.
        An item already on a wanted price is left alone (its usage and period stay);
        an item on another price is moved in place to a wanted price of the same kind
        (licensed, or metered on the same meter); the rest is deleted or added."""
        wanted: dict[str, str | None] = {}  # price id -> its meter (None: licensed)
        if plan.external_price_id:
            wanted[plan.external_price_id] = (
                plan.external_base_meter_id if in_arrears_base(plan) else None
            )
        for m in plan.metered:
            if m.external_price_id:
                wanted[m.external_price_id] = m.external_meter_id
        remaining = dict(wanted)
        leftovers = []
        for item in current:
            pid = norm._item_price(item).get("id")
            if pid in remaining:
                del remaining[pid]
            else:
                leftovers.append(item)
        changes: list[dict[str, Any]] = []
        for item in leftovers:
            rec = norm._item_price(item).get("recurring") or {}
            meter = rec.get("meter") if rec.get("usage_type") == "metered" else None
            match = next((p for p, m in remaining.items() if m == meter), None)
            if match is None:
                changes.append({"id": item["id"], "deleted": True})
                continue
            del remaining[match]
            changes.append({"id": item["id"], "price": match, **({} if meter else {"quantity": 1})})
        for pid, meter in remaining.items():
            changes.append({"price": pid, **({} if meter else {"quantity": 1})})
        return changes

    async def cancel_subscription(
        self, subscription: SubscriptionData, *, immediate: bool, idempotency_key: str
    ) -> ExternalSubscription | None:
        ext_id = subscription.external_id
        if not ext_id:
            return None
        if immediate:
            obj = await self._call(
                lambda: self.v1.subscriptions.cancel_async(ext_id, options=_idem(idempotency_key))
            )
        else:
            obj = await self._call(
                lambda: self.v1.subscriptions.update_async(
                    ext_id,
                    params={"cancel_at_period_end": True},
                    options=_idem(idempotency_key),
                )
            )
        return norm.subscription(norm.as_dict(obj))

    async def resume_subscription(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalSubscription | None:
        ext_id = subscription.external_id
        if not ext_id:
            return None
        obj = await self._call(
            lambda: self.v1.subscriptions.update_async(
                ext_id, params={"cancel_at_period_end": False}, options=_idem(idempotency_key)
            )
        )
        return norm.subscription(norm.as_dict(obj))

    # ------------------------------------------------------------------ invoices

    async def mark_invoice_paid(
        self, invoice: InvoiceData, *, idempotency_key: str
    ) -> ExternalInvoice | None:
        ext_id = invoice.external_id
        if not ext_id:
            raise ProviderError("the invoice is not linked to Stripe", code="no_invoice")
        current = norm.invoice(
            norm.as_dict(await self._call(lambda: self.v1.invoices.retrieve_async(ext_id)))
        )
        if current.status == "paid":
            return current
        if current.status == "draft":
            await self._call(
                lambda: self.v1.invoices.finalize_invoice_async(
                    ext_id, options=_idem(f"{idempotency_key}:finalize")
                )
            )
        obj = await self._call(
            lambda: self.v1.invoices.pay_async(
                ext_id, params={"paid_out_of_band": True}, options=_idem(idempotency_key)
            )
        )
        return norm.invoice(norm.as_dict(obj))

    async def invoice_payment_url(self, invoice: InvoiceData) -> ExternalRef | None:
        ext_id = invoice.external_id
        if not ext_id:
            return None
        current = norm.invoice(
            norm.as_dict(await self._call(lambda: self.v1.invoices.retrieve_async(ext_id)))
        )
        url = None if current.status in ("paid", "void") else current.hosted_url
        return ExternalRef(external_id=ext_id, url=url, data={"status": current.status})

    # ------------------------------------------------------------------ webhooks

    async def create_webhook_endpoint(
        self, url: str, *, idempotency_key: str
    ) -> ExternalRef | None:
        obj = await self._call(
            lambda: self.v1.webhook_endpoints.create_async(
                params={
                    "url": url,
                    "enabled_events": sorted(WEBHOOK_EVENTS),
                    "description": "tanso-mcp",
                },
                options=_idem(idempotency_key),
            )
        )
        return ExternalRef(external_id=obj.id, data={"secret": norm.as_dict(obj).get("secret")})

    async def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[ProviderEvent]:
        if not self._webhook_secret:
            raise WebhookSignatureError("no webhook signing secret is stored", code="no_secret")
        header = None
        for k, v in headers.items():
            if k.lower() == "stripe-signature":
                header = v
        if not header:
            raise WebhookSignatureError("missing Stripe-Signature header", code="signature")
        try:
            stripe.WebhookSignature.verify_header(
                body.decode("utf-8"), header, self._webhook_secret, SIGNATURE_TOLERANCE_SECONDS
            )
            event = json.loads(body)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError):
            raise WebhookSignatureError("bad webhook signature", code="signature") from None
        if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
            raise WebhookSignatureError("not a Stripe event", code="payload")
        return [self._normalise_event(event)]

    @staticmethod
    def _normalise_event(event: dict[str, Any]) -> ProviderEvent:
        etype = str(event["type"])
        kind = WEBHOOK_EVENTS.get(etype, "unknown")
        obj = (event.get("data") or {}).get("object") or {}
        ids: dict[str, str] = {}
        parsed: Any = None
        try:
            if kind == "checkout.completed":
                parsed = norm.checkout(obj)
                ids["checkout"] = parsed.external_id
                if parsed.subscription_external_id:
                    ids["subscription"] = parsed.subscription_external_id
            elif kind.startswith("invoice."):
                parsed = norm.invoice(obj)
                ids["invoice"] = parsed.external_id
                if parsed.subscription_external_id:
                    ids["subscription"] = parsed.subscription_external_id
            elif kind.startswith("subscription."):
                parsed = norm.subscription(obj)
                ids["subscription"] = parsed.external_id
            if parsed is not None and parsed.customer_external_id:
                ids["customer"] = parsed.customer_external_id
        except (KeyError, TypeError, ValueError):
            kind, parsed = "unknown", None
        return ProviderEvent(
            event_id=str(event["id"]),
            kind=kind,
            external_ids=ids,
            object=parsed,
            created=norm.ts(event.get("created")),
            raw_type=etype,
        )

    async def retrieve(self, kind: str, external_id: str) -> ExternalObject | ExternalRef | None:
        if kind == "subscription":
            return await self._retrieve_subscription(external_id)
        if kind == "invoice":
            obj = await self._call(lambda: self.v1.invoices.retrieve_async(external_id))
            return norm.invoice(norm.as_dict(obj))
        if kind == "checkout":
            obj = await self._call(lambda: self.v1.checkout.sessions.retrieve_async(external_id))
            return norm.checkout(norm.as_dict(obj))
        if kind == "webhook_endpoint":
            obj = norm.as_dict(
                await self._call(lambda: self.v1.webhook_endpoints.retrieve_async(external_id))
            )
            return ExternalRef(
                external_id=obj["id"], url=obj.get("url"), data={"status": obj.get("status")}
            )
        raise ValueError(f"unknown object kind {kind!r}")

    # ------------------------------------------------------------------ import

    async def _list(self, service: Any, params: dict[str, Any] | None = None) -> list[dict]:
        page = await self._call(lambda: service.list_async(params={"limit": 100, **(params or {})}))
        out: list[dict] = []
        while True:
            out.extend(norm.as_dict(x) for x in page.data)
            if not getattr(page, "has_more", False) or not page.data:
                return out
            page = await self._page(service, page.data[-1].id, params)

    async def _page(self, service: Any, after: str, params: dict[str, Any] | None) -> Any:
        return await self._call(
            lambda: service.list_async(
                params={"limit": 100, "starting_after": after, **(params or {})}
            )
        )

    async def list_products(self) -> list[ExternalProduct]:
        prices: dict[str, list] = {}
        for p in await self._list(self.v1.prices):
            price = norm.price(p)
            prices.setdefault(price.product_id, []).append(price)
        return [
            norm.product(p, prices.get(p["id"], [])) for p in await self._list(self.v1.products)
        ]

    async def list_customers(self) -> list[ExternalCustomer]:
        return [norm.customer(c) for c in await self._list(self.v1.customers)]

    async def list_subscriptions(self) -> list[ExternalSubscription]:
        return [
            norm.subscription(s) for s in await self._list(self.v1.subscriptions, {"status": "all"})
        ]

    # ------------------------------------------------------------------ usage

    async def report_usage(
        self, report: UsageReport, *, idempotency_key: str
    ) -> ExternalRef | None:
        # the core's key is the meter event's identifier too (see meters.py)
        return await meters.send_meter_event(
            self, report, identifier=idempotency_key, idempotency_key=idempotency_key
        )
