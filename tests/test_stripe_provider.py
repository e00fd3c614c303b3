"""The `stripe` provider on its own, against the fake Stripe: built through the plugin
hooks without I/O, idempotent calls, plans as products/prices/meters (reused, graduated
tiers as tiered prices), webhook parsing (signature, normalised kinds, unknown types)."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import stripe
from tanso_stripe import StripeProvider

from tanso_mcp.plugin import (
    InvoicingProvider,
    MeteredPrice,
    PlanData,
    PriceTier,
    ProviderError,
    WebhookSignatureError,
    build_plugins,
)
from tanso_mcp.plugin.api import CustomerData

pytestmark = pytest.mark.anyio


class _Ctx:
    class settings:  # noqa: N801 - what providers read from the context
        stripe_api_base = "http://127.0.0.1:9"
        stripe_max_network_retries = 0


def test_listed_and_built_through_the_hooks_without_io():
    plugins = build_plugins(load_entrypoints=False)
    entry = plugins.providers()["stripe"]
    assert entry.plugin == "tanso_stripe"
    assert {"provider_invoicing", "checkout", "webhooks", "usage_reporting"} <= set(
        entry.info.capabilities
    )
    # a closed port: construction must not connect
    provider = plugins.make_provider("stripe", {"secrets": {"api_key": "sk_test_x"}}, _Ctx())
    assert isinstance(provider, StripeProvider) and isinstance(provider, InvoicingProvider)
    assert provider._client is None


@pytest.fixture
async def provider(stripe_fake):
    p = StripeProvider(
        api_key=stripe_fake.api_key,
        webhook_secret="whsec_test_secret",
        api_base=stripe_fake.base_url,
        max_network_retries=0,
    )
    yield p
    await p.aclose()


async def test_the_same_key_creates_once(provider, stripe_client):
    c = CustomerData(customer_id="c1", reference_id="ref-1", email="a@example.com")
    first = await provider.ensure_customer(c, idempotency_key="customer:c1")
    second = await provider.ensure_customer(c, idempotency_key="customer:c1")
    assert first.external_id == second.external_id
    assert len((await stripe_client.v1.customers.list_async()).data) == 1


async def test_plans_become_products_prices_and_meters(provider, stripe_client):
    plan = PlanData(
        plan_id="p1",
        key="pro",
        name="Pro",
        price=Decimal("20.00"),
        price_minor=2000,
        currency="USD",
        interval_months=1,
        billing_timing="IN_ADVANCE",
        metered=(
            MeteredPrice(
                feature_id="f1",
                feature_key="api_calls",
                feature_name="API calls",
                tiers=(
                    PriceTier(up_to=Decimal(100), unit_price=Decimal(0)),
                    PriceTier(up_to=None, unit_price=Decimal("0.015")),
                ),
            ),
        ),
    )
    ref = await provider.sync_plan(plan, idempotency_key="plan:p1")
    ids = ref.data["metered"]["api_calls"]
    base = await stripe_client.v1.prices.retrieve_async(ref.data["price_id"])
    assert (base.unit_amount, base.recurring.interval, base.product) == (
        2000,
        "month",
        ref.external_id,
    )
    metered = await stripe_client.v1.prices.retrieve_async(ids["price_id"], {"expand": ["tiers"]})
    assert metered.recurring.usage_type == "metered" and metered.recurring.meter == ids["meter_id"]
    assert [(t.up_to, t.unit_amount_decimal) for t in metered.tiers] == [
        (100, Decimal(0)),
        (None, Decimal("1.5")),
    ]
    meter = await stripe_client.v1.billing.meters.retrieve_async(ids["meter_id"])
    assert meter.event_name == "tanso_api_calls"
    # a retry with the same key reuses everything
    again = await provider.sync_plan(plan, idempotency_key="plan:p1")
    assert again.external_id == ref.external_id and again.data == ref.data
    assert len((await stripe_client.v1.products.list_async()).data) == 1


async def test_stripe_errors_carry_stripes_message(stripe_fake):
    bad = StripeProvider(
        api_key="sk_test_nope", api_base=stripe_fake.base_url, max_network_retries=0
    )
    with pytest.raises(ProviderError) as err:
        await bad.ensure_customer(
            CustomerData(customer_id="c", reference_id="r"), idempotency_key="k"
        )
    await bad.aclose()
    assert "Invalid API Key" in err.value.message and err.value.status == 401


def _signed(event: dict, secret: str = "whsec_test_secret") -> tuple[dict, bytes]:
    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, int(time.time()))
    return {"Stripe-Signature": header}, body.encode()


async def test_webhooks_are_verified_and_normalised(provider):
    sub = {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": "active",
        "cancel_at_period_end": True,
        "metadata": {"tansoPendingId": "x"},
        "items": {
            "data": [
                {
                    "id": "si_2",
                    "price": {"id": "price_m", "recurring": {"usage_type": "metered"}},
                    "current_period_start": 1_700_000_000,
                    "current_period_end": 1_702_592_000,
                },
                {
                    "id": "si_1",
                    "price": {"id": "price_b", "recurring": {"usage_type": "licensed"}},
                    "current_period_start": 1_700_000_000,
                    "current_period_end": 1_702_592_000,
                },
            ]
        },
    }
    headers, body = _signed(
        {
            "id": "evt_1",
            "type": "customer.subscription.updated",
            "created": 1,
            "data": {"object": sub},
        }
    )
    [event] = await provider.parse_webhook(headers, body)
    assert (event.event_id, event.kind, event.raw_type) == (
        "evt_1",
        "subscription.updated",
        "customer.subscription.updated",
    )
    assert event.external_ids == {"subscription": "sub_1", "customer": "cus_1"}
    assert event.object.price_ids == ("price_b", "price_m")  # the base price first
    assert event.object.cancel_at_period_end and event.object.metadata["tansoPendingId"] == "x"
    inv = {
        "id": "in_1",
        "customer": "cus_1",
        "status": "paid",
        "billing_reason": "subscription_cycle",
        "currency": "usd",
        "amount_due": 2000,
        "parent": {"subscription_details": {"subscription": "sub_1"}},
        "lines": {"data": []},
    }
    headers, body = _signed({"id": "evt_2", "type": "invoice.paid", "data": {"object": inv}})
    [event] = await provider.parse_webhook(headers, body)
    assert event.kind == "invoice.paid"
    assert event.external_ids == {"invoice": "in_1", "subscription": "sub_1", "customer": "cus_1"}
    headers, body = _signed({"id": "evt_3", "type": "charge.refunded", "data": {"object": {}}})
    [event] = await provider.parse_webhook(headers, body)
    assert event.kind == "unknown"
    with pytest.raises(WebhookSignatureError):
        await provider.parse_webhook(headers, body.replace(b"evt_3", b"evt_4"))
    with pytest.raises(WebhookSignatureError):
        await provider.parse_webhook({}, body)
    wrong, _ = _signed({"id": "evt_3"}, secret="whsec_other")
    with pytest.raises(WebhookSignatureError):
        await provider.parse_webhook(wrong, body)
