"""The Stripe provider passes the provider author's kit against the fake Stripe server,
exactly as a third party's provider would be checked against a fake of its backend:
construction without I/O, same key one effect (Stripe idempotency keys, meter event
identifiers), unknown outcomes while Stripe is down (the fake server stopped), signed
webhooks normalised, tampered or unsigned ones refused."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import tanso_stripe

from tanso_mcp.plugin.testing import PaymentProviderContract, ProviderKit, WebhookSample

pytestmark = pytest.mark.anyio

HANDLED = {
    "invoice.created": "invoice.created",
    "invoice.paid": "invoice.paid",
    "customer.subscription.updated": "subscription.updated",
    "customer.subscription.deleted": "subscription.deleted",
}


async def _signed_samples(fake, client, endpoint_id: str) -> list[WebhookSample]:
    """Real events from a short story on the fake, signed for our endpoint."""
    customer = await client.v1.customers.create_async(params={"email": "kit@example.com"})
    product = await client.v1.products.create_async(params={"name": "Kit"})
    price = await client.v1.prices.create_async(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 900,
            "recurring": {"interval": "month"},
        }
    )
    sub = await client.v1.subscriptions.create_async(
        params={
            "customer": customer.id,
            "items": [{"price": price.id}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    invoice = await fake.end_period(sub.id)
    await client.v1.invoices.pay_async(invoice["id"], params={"paid_out_of_band": True})
    await client.v1.subscriptions.cancel_async(sub.id)
    samples = []
    wanted = {**HANDLED, "customer.created": "unknown"}
    for event in await fake.events():
        kind = wanted.pop(event["type"], None)
        if kind is None:
            continue
        signed = [s for s in await fake.signed_event(event["id"]) if s["endpoint"] == endpoint_id]
        assert signed, event
        samples.append(WebhookSample(signed[0]["headers"], signed[0]["payload"].encode(), kind))
    assert not wanted, f"the story produced no {sorted(wanted)}"
    return samples


class TestStripeProvider(PaymentProviderContract):
    @pytest.fixture
    async def provider_kit(self, stripe_fake, stripe_client) -> ProviderKit:
        client = stripe_client
        endpoint = await client.v1.webhook_endpoints.create_async(
            params={"url": "http://127.0.0.1:9/kit", "enabled_events": ["*"]}
        )
        secret = endpoint.to_dict()["secret"]
        # the kit's usage reports go to this meter (the provider's event name for the
        # sample feature), so they count among the backend's effects
        meter = await client.v1.billing.meters.create_async(
            params={
                "display_name": "kit",
                "event_name": tanso_stripe.provider.meter_event_name("kit_api_calls"),
                "default_aggregation": {"formula": "sum"},
            }
        )

        async def effects() -> int:
            totals = await stripe_fake.meter_totals(meter.id)
            units = sum(totals.values(), Decimal(0))
            return len(await stripe_fake.events()) + int(units)

        @asynccontextmanager
        async def outage():
            with stripe_fake.outage():
                yield

        async def webhooks():
            return await _signed_samples(stripe_fake, client, endpoint.id)

        return ProviderKit(
            now=lambda: datetime.now(UTC),
            make_provider=lambda: tanso_stripe.StripeProvider(
                api_key=stripe_fake.api_key,
                webhook_secret=secret,
                api_base=stripe_fake.base_url,
                max_network_retries=0,
            ),
            info=tanso_stripe.INFO,
            effects=effects,
            outage=outage,
            webhooks=webhooks,
        )
