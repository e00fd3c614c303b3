"""Stripe objects (as plain dicts) → the plugin API's normalised objects.

Shapes follow the Stripe API version the SDK pins (2026-10-28): the billing period lives
on subscription items, an invoice names its subscription under
``parent.subscription_details`` and a line its price under ``pricing.price_details``.
Where an older shape is also seen (top-level ``subscription``, ``price``,
``current_period_*``), it is read as a fallback, so objects from accounts pinned to an
older API version normalise the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tanso_mcp.plugin import (
    ExternalCheckout,
    ExternalCustomer,
    ExternalInvoice,
    ExternalInvoiceLine,
    ExternalPrice,
    ExternalProduct,
    ExternalSubscription,
    PriceTier,
)

ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())


def as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dict(obj)


def ts(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def ref(value: Any) -> str | None:
    """An expandable field: an id, or the expanded object."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("id")
    return str(value)


def minor_factor(currency: str) -> int:
    return 1 if currency.upper() in ZERO_DECIMAL else 100


def _meta(d: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (d.get("metadata") or {}).items()}


def _items(sub: dict[str, Any]) -> list[dict[str, Any]]:
    items = sub.get("items") or {}
    return list(items.get("data") or []) if isinstance(items, dict) else list(items)


def _item_price(item: dict[str, Any]) -> dict[str, Any]:
    price = item.get("price") or item.get("plan") or {}
    return price if isinstance(price, dict) else {"id": price}


def subscription(sub: dict[str, Any]) -> ExternalSubscription:
    items = _items(sub)
    prices = [_item_price(i) for i in items]
    # the base (licensed) price first, metered ones after
    prices.sort(key=lambda p: (p.get("recurring") or {}).get("usage_type") == "metered")
    starts = [t for i in items if (t := ts(i.get("current_period_start"))) is not None]
    ends = [t for i in items if (t := ts(i.get("current_period_end"))) is not None]
    start = min(starts) if starts else ts(sub.get("current_period_start"))
    end = max(ends) if ends else ts(sub.get("current_period_end"))
    return ExternalSubscription(
        external_id=sub["id"],
        customer_external_id=ref(sub.get("customer")),
        status=str(sub.get("status") or ""),
        price_ids=tuple(p["id"] for p in prices if p.get("id")),
        current_period_start=start,
        current_period_end=end,
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        ended_at=ts(sub.get("ended_at")),
        latest_invoice_id=ref(sub.get("latest_invoice")),
        metadata=_meta(sub),
    )


def _line(line: dict[str, Any]) -> ExternalInvoiceLine:
    pricing = line.get("pricing") or {}
    price_id = (pricing.get("price_details") or {}).get("price") or ref(line.get("price"))
    parent = line.get("parent") or {}
    details = parent.get("subscription_item_details") or parent.get("invoice_item_details") or {}
    proration = bool(details.get("proration", line.get("proration", False)))
    raw_price = line.get("price")
    price: dict[str, Any] = raw_price if isinstance(raw_price, dict) else {}
    metered = (price.get("recurring") or {}).get("usage_type") == "metered"
    return ExternalInvoiceLine(
        description=str(line.get("description") or ""),
        amount_minor=int(line.get("amount") or 0),
        price_id=ref(price_id),
        proration=proration,
        metered=metered,
    )


def invoice(inv: dict[str, Any]) -> ExternalInvoice:
    parent = inv.get("parent") or {}
    sub_id = ref((parent.get("subscription_details") or {}).get("subscription")) or ref(
        inv.get("subscription")
    )
    lines = inv.get("lines") or {}
    line_list = lines.get("data") if isinstance(lines, dict) else lines
    return ExternalInvoice(
        external_id=inv["id"],
        customer_external_id=ref(inv.get("customer")),
        subscription_external_id=sub_id,
        status=str(inv.get("status") or "draft"),
        billing_reason=inv.get("billing_reason"),
        currency=str(inv.get("currency") or "usd").upper(),
        amount_due_minor=int(inv.get("amount_due") or inv.get("total") or 0),
        amount_paid_minor=int(inv.get("amount_paid") or 0),
        lines=tuple(_line(x) for x in (line_list or [])),
        period_start=ts(inv.get("period_start")),
        period_end=ts(inv.get("period_end")),
        due_date=ts(inv.get("due_date")),
        hosted_url=inv.get("hosted_invoice_url"),
        attempted=bool(inv.get("attempted")),
    )


def checkout(session: dict[str, Any]) -> ExternalCheckout:
    return ExternalCheckout(
        external_id=session["id"],
        status=str(session.get("status") or "open"),
        url=session.get("url"),
        subscription_external_id=ref(session.get("subscription")),
        customer_external_id=ref(session.get("customer")),
        payment_status=session.get("payment_status"),
        metadata=_meta(session),
    )


def customer(c: dict[str, Any]) -> ExternalCustomer:
    return ExternalCustomer(
        external_id=c["id"], email=c.get("email"), name=c.get("name"), metadata=_meta(c)
    )


def _decimal(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def price(p: dict[str, Any]) -> ExternalPrice:
    currency = str(p.get("currency") or "usd").upper()
    factor = minor_factor(currency)
    recurring = p.get("recurring") or {}
    unit = _decimal(p.get("unit_amount_decimal"))
    if unit is None and p.get("unit_amount") is not None:
        unit = Decimal(int(p["unit_amount"]))
    tiers = tuple(
        PriceTier(
            up_to=None if t.get("up_to") in (None, "inf") else Decimal(str(t["up_to"])),
            unit_price=(
                _decimal(t.get("unit_amount_decimal")) or Decimal(int(t.get("unit_amount") or 0))
            )
            / factor,
            flat_fee=(
                (_decimal(t.get("flat_amount_decimal")) or Decimal(int(t.get("flat_amount") or 0)))
                / factor
            )
            or None,
        )
        for t in (p.get("tiers") or [])
    )
    return ExternalPrice(
        external_id=p["id"],
        product_id=ref(p.get("product")) or "",
        currency=currency,
        unit_amount_minor=p.get("unit_amount"),
        interval=recurring.get("interval"),
        interval_count=int(recurring.get("interval_count") or 1),
        usage_type=recurring.get("usage_type") or "licensed",
        meter_id=recurring.get("meter"),
        tiers=tiers,
        unit_amount=None if unit is None else unit / factor,
        active=bool(p.get("active", True)),
    )


def product(p: dict[str, Any], prices: list[ExternalPrice]) -> ExternalProduct:
    return ExternalProduct(
        external_id=p["id"],
        name=str(p.get("name") or p["id"]),
        description=p.get("description"),
        active=bool(p.get("active", True)),
        prices=tuple(prices),
        metadata=_meta(p),
    )
