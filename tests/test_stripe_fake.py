"""The fake Stripe behaves as Stripe does for what the Stripe provider uses, checked with
the real `stripe` SDK (async client) against the running fake server."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import httpx
import pytest
import stripe

pytestmark = pytest.mark.anyio


@pytest.fixture
def sc(stripe_client) -> stripe.StripeClient:
    return stripe_client


async def catalog(sc):
    """A product with a $20/month base price and a metered graduated price on a meter:
    the first 100 calls free, then 1.5 cents each."""
    product = await sc.v1.products.create_async({"name": "Pro", "metadata": {"planKey": "pro"}})
    meter = await sc.v1.billing.meters.create_async(
        {
            "display_name": "API calls",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
        }
    )
    base = await sc.v1.prices.create_async(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount": 2000,
            "recurring": {"interval": "month"},
            "lookup_key": "pro_base",
        }
    )
    metered = await sc.v1.prices.create_async(
        {
            "product": product.id,
            "currency": "usd",
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 100, "unit_amount": 0},
                {"up_to": "inf", "unit_amount_decimal": "1.5"},
            ],
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    return product, meter, base, metered


async def licensed_price(sc, product, amount, interval="month"):
    return await sc.v1.prices.create_async(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount": amount,
            "recurring": {"interval": interval},
        }
    )


async def usage(sc, customer, value, identifier, timestamp=None):
    params = {
        "event_name": "api_calls",
        "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": str(value)},
    }
    if timestamp is not None:
        params["timestamp"] = timestamp
    return await sc.v1.billing.meter_events.create_async(params)


async def endpoint(sc, receiver, events=("*",)):
    return await sc.v1.webhook_endpoints.create_async(
        {"url": receiver.url, "enabled_events": list(events)}
    )


async def test_prices_licensed_metered_and_tiered(sc):
    product, meter, base, metered = await catalog(sc)
    assert (base.unit_amount, base.type, base.recurring.usage_type) == (
        2000,
        "recurring",
        "licensed",
    )
    assert metered.recurring.meter == meter.id and metered.billing_scheme == "tiered"
    assert "tiers" not in metered  # Stripe shows tiers only when expanded
    got = await sc.v1.prices.retrieve_async(metered.id, {"expand": ["tiers"]})
    assert [(t.up_to, t.unit_amount_decimal) for t in got.tiers] == [
        (100, 0),
        (None, Decimal("1.5")),
    ]
    found = await sc.v1.prices.list_async({"lookup_keys": ["pro_base"]})
    assert [p.id for p in found.data] == [base.id]
    with pytest.raises(stripe.InvalidRequestError) as err:
        await sc.v1.prices.create_async(
            {
                "product": product.id,
                "currency": "usd",
                "unit_amount": 1,
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    assert err.value.param == "recurring[meter]"
    with pytest.raises(stripe.InvalidRequestError) as err:
        await sc.v1.prices.create_async(
            {"product": "prod_nope", "currency": "usd", "unit_amount": 1}
        )
    assert err.value.code == "resource_missing"


async def test_meter_events_dedup_window_and_summaries(sc, stripe_fake):
    _, meter, _, _ = await catalog(sc)
    cus = await sc.v1.customers.create_async({"email": "a@example.com"})
    now = int(time.time())
    await usage(sc, cus.id, 30, "ev-1")
    await usage(sc, cus.id, 12, "ev-2", timestamp=now - 34 * 86400)
    with pytest.raises(stripe.InvalidRequestError) as err:
        await usage(sc, cus.id, 30, "ev-1")
    # as on Stripe: no error code, the message says it (and Stripe-Should-Retry: false)
    assert err.value.code is None and err.value.http_status == 400
    assert str(err.value.user_message) == "An event already exists with identifier ev-1."
    assert err.value.headers["stripe-should-retry"] == "false"
    for ts in (now - 36 * 86400, now + 600):
        with pytest.raises(stripe.InvalidRequestError) as err:
            await usage(sc, cus.id, 1, f"late-{ts}", timestamp=ts)
        assert err.value.param == "timestamp"
    assert await stripe_fake.meter_total(meter.id, cus.id) == 42
    assert [e["identifier"] for e in await stripe_fake.meter_events("api_calls")] == [
        "ev-1",
        "ev-2",
    ]
    start = (now - 35 * 86400) // 60 * 60
    end = (now // 60 + 2) * 60
    summaries = await sc.v1.billing.meters.event_summaries.list_async(
        meter.id, {"customer": cus.id, "start_time": start, "end_time": end}
    )
    assert [s.aggregated_value for s in summaries.data] == [42]
    recent = await sc.v1.billing.meters.event_summaries.list_async(
        meter.id, {"customer": cus.id, "start_time": (now - 3600) // 60 * 60, "end_time": end}
    )
    assert recent.data[0].aggregated_value == 30


async def test_checkout_creates_nothing_until_completed(sc, stripe_fake, webhook_receiver):
    _, _, base, metered = await catalog(sc)
    we = await endpoint(sc, webhook_receiver)
    assert we.secret.startswith("whsec_")
    cus = await sc.v1.customers.create_async({"email": "b@example.com"})
    session = await sc.v1.checkout.sessions.create_async(
        {
            "mode": "subscription",
            "customer": cus.id,
            "client_reference_id": "ref-1",
            "line_items": [{"price": base.id, "quantity": 1}, {"price": metered.id}],
            "success_url": "https://app.test/ok",
            "cancel_url": "https://app.test/cancel",
            "metadata": {"tansoSubscription": "s1"},
        }
    )
    assert session.url and session.status == "open" and session.subscription is None
    assert (await sc.v1.subscriptions.list_async({"customer": cus.id})).data == []

    done = await stripe_fake.complete_checkout(session.id)
    assert done["status"] == "complete" and done["payment_status"] == "paid"
    sub = await sc.v1.subscriptions.retrieve_async(done["subscription"])
    assert sub.status == "active" and len(sub["items"].data) == 2
    item = sub["items"].data[0]
    assert item.current_period_end > item.current_period_start
    inv = await sc.v1.invoices.retrieve_async(sub.latest_invoice)
    assert (inv.status, inv.amount_paid, inv.billing_reason) == (
        "paid",
        2000,
        "subscription_create",
    )
    assert inv.parent.subscription_details.subscription == sub.id

    events = webhook_receiver.events(we.secret)
    types = [e.type for e in events]
    assert types[-1] == "checkout.session.completed"
    assert {
        "customer.subscription.created",
        "invoice.created",
        "invoice.paid",
        "customer.subscription.updated",
    } <= set(types)
    completed = events[-1].data.object
    assert completed.subscription == sub.id and completed.client_reference_id == "ref-1"
    assert completed.metadata["tansoSubscription"] == "s1"
    with pytest.raises(stripe.SignatureVerificationError):
        headers, body = webhook_receiver.received[0]
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_wrong")
    with pytest.raises(stripe.InvalidRequestError) as err:  # one item per price
        await sc.v1.checkout.sessions.create_async(
            {
                "mode": "subscription",
                "success_url": "https://app.test/ok",
                "line_items": [{"price": base.id, "quantity": 1}] * 2,
            }
        )
    assert err.value.param == "line_items"
    with pytest.raises(stripe.InvalidRequestError):  # a session completes once
        await sc.v1.checkout.sessions.expire_async(session.id)


async def test_direct_subscription_multi_item_and_out_of_band_payment(sc, stripe_fake):
    _, _, base, metered = await catalog(sc)
    cus = await sc.v1.customers.create_async({"email": "c@example.com"})
    arrears = await sc.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": metered.id}]}
    )
    assert arrears.status == "active"  # nothing due up front
    advance = await sc.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": base.id, "quantity": 2}, {"price": metered.id}]}
    )
    assert advance.status == "incomplete"  # no payment method to charge $40
    inv = await sc.v1.invoices.retrieve_async(advance.latest_invoice)
    assert (inv.status, inv.amount_due) == ("open", 4000)
    paid = await sc.v1.invoices.pay_async(inv.id, {"paid_out_of_band": True})
    assert paid.status == "paid"
    assert (await sc.v1.subscriptions.retrieve_async(advance.id)).status == "active"
    assert [e["type"] for e in await stripe_fake.events()][-2:] == [
        "invoice.paid",
        "customer.subscription.updated",
    ]
    with pytest.raises(stripe.InvalidRequestError) as err:
        await sc.v1.subscriptions.create_async(
            {"customer": cus.id, "items": [{"price": metered.id, "quantity": 3}]}
        )
    assert err.value.param == "items[0][quantity]"


async def test_renewal_bills_usage_with_graduated_tiers(sc, stripe_fake):
    _, _, base, metered = await catalog(sc)
    cus = await sc.v1.customers.create_async({"email": "d@example.com"})
    session = await sc.v1.checkout.sessions.create_async(
        {
            "mode": "subscription",
            "customer": cus.id,
            "success_url": "https://app.test/ok",
            "line_items": [{"price": base.id, "quantity": 1}, {"price": metered.id}],
        }
    )
    sub_id = (await stripe_fake.complete_checkout(session.id))["subscription"]
    before = await sc.v1.subscriptions.retrieve_async(sub_id)
    await usage(sc, cus.id, 150, "u-1")
    await usage(sc, cus.id, 50, "u-2")
    inv = await stripe_fake.end_period(sub_id)
    # 20.00 base + (200 - 100 free) * 1.5 cents
    assert (inv["status"], inv["total"], inv["billing_reason"]) == (
        "paid",
        2150,
        "subscription_cycle",
    )
    usage_line = [
        x for x in inv["lines"]["data"] if x["pricing"]["price_details"]["price"] == metered.id
    ]
    assert usage_line[0]["quantity"] == 200
    after = await sc.v1.subscriptions.retrieve_async(sub_id)
    assert after["items"].data[0].current_period_start == before["items"].data[0].current_period_end
    # usage is billed once: the next period starts from zero
    nxt = await stripe_fake.end_period(sub_id, fail=True)
    assert nxt["total"] == 2000 and nxt["status"] == "open"
    assert (await sc.v1.subscriptions.retrieve_async(sub_id)).status == "past_due"
    types = [e["type"] for e in await stripe_fake.events()]
    assert types[-3:] == [
        "invoice.finalized",
        "invoice.payment_failed",
        "customer.subscription.updated",
    ]


async def test_price_swap_prorations(sc, stripe_fake):
    product, _, base, metered = await catalog(sc)
    bigger = await licensed_price(sc, product, 5000)
    cus = await sc.v1.customers.create_async(
        {
            "email": "e@example.com",
            "payment_method": "pm_card_visa",
            "invoice_settings": {"default_payment_method": "pm_card_visa"},
        }
    )
    sub = await sc.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": base.id}, {"price": metered.id}]}
    )
    assert sub.status == "active"
    item = sub["items"].data[0]
    # create_prorations: pending invoice items, billed on the next invoice
    sub = await sc.v1.subscriptions.update_async(
        sub.id,
        {"items": [{"id": item.id, "price": bigger.id}], "proration_behavior": "create_prorations"},
    )
    assert sub["items"].data[0].price.id == bigger.id
    pending = await sc.v1.invoice_items.list_async({"customer": cus.id, "pending": True})
    assert sorted(ii.amount > 0 for ii in pending.data) == [False, True]
    assert all(ii.proration for ii in pending.data)
    net = sum(ii.amount for ii in pending.data)
    assert 2990 <= net <= 3000  # almost the whole period remains
    renewal = await stripe_fake.end_period(sub.id)
    assert renewal["total"] == 5000 + net
    # always_invoice: an invoice now, paid with the card
    sub = await sc.v1.subscriptions.update_async(
        sub.id,
        {"items": [{"id": item.id, "price": base.id}], "proration_behavior": "always_invoice"},
    )
    inv = await sc.v1.invoices.retrieve_async(sub.latest_invoice)
    assert inv.billing_reason == "subscription_update" and inv.total < 0
    assert all(line.parent.type == "invoice_item_details" for line in inv.lines.data)


async def test_cancel_at_period_end_and_immediately(sc, stripe_fake):
    _, _, base, metered = await catalog(sc)
    cus = await sc.v1.customers.create_async({"email": "f@example.com"})
    sub = await sc.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": metered.id}]}
    )
    sub = await sc.v1.subscriptions.update_async(sub.id, {"cancel_at_period_end": True})
    assert sub.cancel_at_period_end and sub.cancel_at == sub["items"].data[0].current_period_end
    sub = await sc.v1.subscriptions.update_async(sub.id, {"cancel_at_period_end": False})
    assert sub.cancel_at is None
    await sc.v1.subscriptions.update_async(sub.id, {"cancel_at_period_end": True})
    await usage(sc, cus.id, 101, "last")
    final = await stripe_fake.end_period(sub.id)
    assert final["total"] == 2  # 1 unit past the free tier, rounded half up
    assert (await sc.v1.subscriptions.retrieve_async(sub.id)).status == "canceled"
    other = await sc.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": metered.id}]}
    )
    canceled = await sc.v1.subscriptions.cancel_async(other.id)
    assert canceled.status == "canceled" and canceled.ended_at
    assert [e["type"] for e in await stripe_fake.events()][-1] == "customer.subscription.deleted"
    assert (await sc.v1.subscriptions.list_async({"customer": cus.id})).data == []


async def test_held_webhooks_reordered_and_redelivered(sc, stripe_fake, webhook_receiver):
    _, _, _, metered = await catalog(sc)
    we = await endpoint(
        sc, webhook_receiver, ["customer.subscription.updated", "customer.subscription.deleted"]
    )
    cus = await sc.v1.customers.create_async({"email": "g@example.com"})
    sub = await sc.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": metered.id}]}
    )
    await stripe_fake.hold_webhooks()
    await sc.v1.subscriptions.update_async(sub.id, {"metadata": {"k": "v"}})
    await sc.v1.subscriptions.cancel_async(sub.id)
    held = await stripe_fake.held_events()
    assert [e["type"] for e in held] == [
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ]
    assert webhook_receiver.received == []
    await stripe_fake.release_webhooks([held[1]["id"], held[0]["id"]])
    await stripe_fake.redeliver(held[0]["id"])
    got = webhook_receiver.events(we.secret)
    assert [e.id for e in got] == [held[1]["id"], held[0]["id"], held[0]["id"]]
    assert got[1].data.object.status == "active"  # the snapshot taken at the time
    assert got[1].data.previous_attributes["metadata"].to_dict() == {}
    assert webhook_receiver.received[1][1] == webhook_receiver.received[2][1]  # same bytes
    await stripe_fake.deliver_webhooks_now()
    assert await stripe_fake.held_events() == []


async def test_failed_deliveries_are_retried(sc, stripe_fake, webhook_receiver):
    we = await endpoint(sc, webhook_receiver, ["customer.created"])
    webhook_receiver.status = 500
    await sc.v1.customers.create_async({"email": "h@example.com"})
    assert [d["ok"] for d in await stripe_fake.deliveries()] == [False]
    webhook_receiver.status = 200
    retried = await stripe_fake.retry_failed_webhooks()
    assert [d["status"] for d in retried] == [200]
    first, second = webhook_receiver.events(we.secret)
    assert first.id == second.id and first.type == "customer.created"
    assert await stripe_fake.retry_failed_webhooks() == []


async def test_webhook_endpoints_crud(sc):
    we = await sc.v1.webhook_endpoints.create_async(
        {"url": "https://app.test/hook", "enabled_events": ["invoice.paid"]}
    )
    got = await sc.v1.webhook_endpoints.retrieve_async(we.id)
    assert "secret" not in got and got.url == "https://app.test/hook"  # secret only at creation
    await sc.v1.webhook_endpoints.update_async(
        we.id, {"enabled_events": ["invoice.paid", "invoice.created"]}
    )
    assert len((await sc.v1.webhook_endpoints.list_async()).data) == 1
    assert (await sc.v1.webhook_endpoints.delete_async(we.id)).deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        await sc.v1.webhook_endpoints.retrieve_async(we.id)


async def test_idempotency_keys_and_api_key_check(sc, stripe_fake):
    opts = {"idempotency_key": "cus-create-1"}
    a = await sc.v1.customers.create_async({"email": "i@example.com"}, opts)
    b = await sc.v1.customers.create_async({"email": "i@example.com"}, opts)
    assert a.id == b.id
    with pytest.raises(stripe.IdempotencyError):
        await sc.v1.customers.create_async({"email": "other@example.com"}, opts)
    assert len((await sc.v1.customers.list_async()).data) == 1
    with pytest.raises(stripe.AuthenticationError):  # no idle connection left behind either
        await stripe_fake.client("sk_test_wrong_key_0000").v1.customers.list_async()


async def test_customer_search_and_lists(sc):
    await sc.v1.customers.create_async(
        {"email": "j@example.com", "metadata": {"customerReferenceId": "r1"}}
    )
    other = await sc.v1.customers.create_async(
        {"email": "k@example.com", "metadata": {"customerReferenceId": "r2"}}
    )
    found = await sc.v1.customers.search_async({"query": "metadata['customerReferenceId']:'r2'"})
    assert [c.id for c in found.data] == [other.id]
    with pytest.raises(stripe.InvalidRequestError) as err:
        await sc.v1.customers.retrieve_async("cus_missing")
    assert (err.value.http_status, err.value.code) == (404, "resource_missing")
    basic = await sc.v1.products.create_async(
        {
            "name": "Basic",
            "default_price_data": {
                "currency": "usd",
                "unit_amount": 900,
                "recurring": {"interval": "month"},
            },
        }
    )
    assert (await sc.v1.prices.retrieve_async(basic.default_price)).unit_amount == 900
    with pytest.raises(stripe.InvalidRequestError):
        await sc.v1.products.create_async(
            {"name": "Broken", "default_price_data": {"currency": "usd"}}
        )
    assert (await sc.v1.customers.retrieve_async(other.id)).balance == 0
    assert [p.name for p in (await sc.v1.products.list_async()).data] == ["Basic"]


async def test_outage_keeps_state(sc, stripe_fake):
    cus = await sc.v1.customers.create_async({"email": "l@example.com"})
    _, meter, _, _ = await catalog(sc)
    await usage(sc, cus.id, 5, "before-outage")
    with stripe_fake.outage():
        with pytest.raises(stripe.APIConnectionError):
            await sc.v1.customers.retrieve_async(cus.id)
    assert (await sc.v1.customers.retrieve_async(cus.id)).email == "l@example.com"
    with pytest.raises(stripe.InvalidRequestError):  # identifiers survive too
        await usage(sc, cus.id, 5, "before-outage")
    assert await stripe_fake.meter_total(meter.id, cus.id) == 5


async def test_signed_event_for_in_process_delivery(sc, stripe_fake):
    we = await sc.v1.webhook_endpoints.create_async(
        {"url": "http://127.0.0.1:9/unreachable", "enabled_events": ["customer.created"]}
    )
    await stripe_fake.hold_webhooks()
    await sc.v1.customers.create_async({"email": "m@example.com"})
    [event] = await stripe_fake.held_events()
    [signed] = await stripe_fake.signed_event(event["id"])
    parsed = stripe.Webhook.construct_event(
        signed["payload"], signed["headers"]["Stripe-Signature"], we.secret
    )
    assert parsed.id == event["id"] and json.loads(signed["payload"])["api_version"].startswith(
        "2026"
    )
    async with httpx.AsyncClient() as http:  # test routes need no key; /v1 routes do
        assert (await http.get(f"{stripe_fake.base_url}/v1/customers")).status_code == 401


async def test_expand_events_list_and_preview(sc, stripe_fake):
    product, _, base, metered = await catalog(sc)
    cus = await sc.v1.customers.create_async({"email": "n@example.com"})
    sub = await sc.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": metered.id}], "expand": ["latest_invoice"]}
    )
    assert sub.latest_invoice.object == "invoice" and sub.latest_invoice.status == "paid"
    prices = await sc.v1.prices.list_async({"product": product.id, "expand": ["data.product"]})
    assert {p.product.name for p in prices.data} == {"Pro"}
    events = await sc.v1.events.list_async({"types": ["invoice.paid", "invoice.created"]})
    assert [e.type for e in events.data] == ["invoice.paid", "invoice.created"]  # newest first
    assert events.data[0].api_version == "2026-10-28.endive"
    await usage(sc, cus.id, 300, "p-1")
    preview = await sc.v1.invoices.create_preview_async({"subscription": sub.id})
    assert preview.total == 300  # (300 - 100 free) * 1.5 cents
    assert (await stripe_fake.end_period(sub.id))["total"] == 300


async def test_injected_errors_and_lost_answers(sc, stripe_fake):
    await stripe_fake.fail_next("POST", "/v1/customers", status=500)
    with pytest.raises(stripe.APIError):
        await sc.v1.customers.create_async({"email": "o@example.com"}, {"idempotency_key": "k5"})
    assert (await sc.v1.customers.list_async()).data == []  # nothing happened
    with pytest.raises(stripe.APIError):  # Stripe replays a 500 for the same key
        await sc.v1.customers.create_async({"email": "o@example.com"}, {"idempotency_key": "k5"})
    await stripe_fake.fail_next("POST", "/v1/customers", status=429, type="invalid_request_error")
    with pytest.raises(stripe.RateLimitError):
        await sc.v1.customers.create_async({"email": "o@example.com"}, {"idempotency_key": "k6"})
    assert (
        await sc.v1.customers.create_async({"email": "o@example.com"}, {"idempotency_key": "k6"})
    ).email
    await sc.v1.customers.delete_async((await sc.v1.customers.list_async()).data[0].id)
    await stripe_fake.drop_next("POST", "/v1/customers")
    opts = {"idempotency_key": "create-o"}
    with pytest.raises(stripe.APIConnectionError):
        await sc.v1.customers.create_async({"email": "o@example.com"}, opts)
    created = (await sc.v1.customers.list_async()).data
    assert len(created) == 1  # it did happen; the retry with the same key replays it
    replayed = await sc.v1.customers.create_async({"email": "o@example.com"}, opts)
    assert replayed.id == created[0].id
    await stripe_fake.set_rate_limit(3)
    with pytest.raises(stripe.RateLimitError):
        for _ in range(4):
            await sc.v1.customers.list_async()
    await stripe_fake.set_rate_limit(None)
    await sc.v1.customers.list_async()


async def test_async_delivery_after_the_answer(sc, stripe_fake, webhook_receiver):
    we = await endpoint(sc, webhook_receiver, ["customer.created", "customer.updated"])
    await stripe_fake.deliver_webhooks_async()
    cus = await sc.v1.customers.create_async({"email": "p@example.com"})
    await sc.v1.customers.update_async(cus.id, {"name": "P"})
    await stripe_fake.drain_webhooks()
    assert [e.type for e in webhook_receiver.events(we.secret)] == [
        "customer.created",
        "customer.updated",
    ]


async def test_payment_mode_checkout_and_hosted_invoice_payment(sc, stripe_fake):
    _, _, base, _ = await catalog(sc)
    cus = await sc.v1.customers.create_async({"email": "q@example.com"})
    session = await sc.v1.checkout.sessions.create_async(
        {
            "mode": "payment",
            "customer": cus.id,
            "success_url": "https://app.test/ok",
            "metadata": {"tansoInvoice": "inv-1"},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 1234,
                        "product_data": {"name": "Invoice inv-1"},
                    },
                }
            ],
        }
    )
    assert session.amount_total == 1234
    done = await stripe_fake.complete_checkout(session.id)
    assert done["payment_status"] == "paid" and done["metadata"] == {"tansoInvoice": "inv-1"}
    assert (await stripe_fake.events("checkout.session.completed"))[0]["object_id"] == session.id
    sub = await sc.v1.subscriptions.create_async(
        {
            "customer": cus.id,
            "items": [{"price": base.id}],
            "collection_method": "send_invoice",
            "days_until_due": 7,
        }
    )
    assert sub.status == "active"
    inv = await sc.v1.invoices.retrieve_async(sub.latest_invoice)
    assert inv.status == "open" and inv.hosted_invoice_url
    paid = await stripe_fake.pay_invoice_hosted(inv.id)
    assert paid["status"] == "paid" and paid["amount_paid"] == 2000


async def test_updates_are_all_or_nothing_and_proration_date_is_exact(sc, stripe_fake):
    product, _, base, metered = await catalog(sc)
    double = await licensed_price(sc, product, 4000)
    cus = await sc.v1.customers.create_async({"email": "r@example.com"})
    sub = await sc.v1.subscriptions.create_async(
        {
            "customer": cus.id,
            "collection_method": "send_invoice",
            "days_until_due": 7,
            "items": [{"price": base.id}, {"price": metered.id}],
        }
    )
    base_item, metered_item = sub["items"].data
    with pytest.raises(stripe.InvalidRequestError) as err:
        await sc.v1.subscriptions.update_async(
            sub.id,
            {
                "items": [
                    {"id": base_item.id, "price": double.id},
                    {"id": metered_item.id, "quantity": 2},  # metered items take no quantity
                ]
            },
        )
    assert err.value.param == "items[1][quantity]"
    unchanged = await sc.v1.subscriptions.retrieve_async(sub.id)
    assert unchanged["items"].data[0].price.id == base.id
    assert (await sc.v1.invoice_items.list_async({"customer": cus.id})).data == []
    halfway = (base_item.current_period_start + base_item.current_period_end) // 2
    await sc.v1.subscriptions.update_async(
        sub.id, {"items": [{"id": base_item.id, "price": double.id}], "proration_date": halfway}
    )
    pending = await sc.v1.invoice_items.list_async({"customer": cus.id, "pending": True})
    assert sorted(ii.amount for ii in pending.data) == [-1000, 2000]  # half of each month


async def test_interval_change_starts_a_new_cycle_and_send_invoice_renewals(sc, stripe_fake):
    product, _, base, metered = await catalog(sc)
    yearly = await licensed_price(sc, product, 20000, "year")
    cus = await sc.v1.customers.create_async({"email": "s@example.com"})
    sub = await sc.v1.subscriptions.create_async(
        {
            "customer": cus.id,
            "collection_method": "send_invoice",
            "days_until_due": 7,
            "items": [{"price": base.id}],
        }
    )
    first = await sc.v1.invoices.retrieve_async(sub.latest_invoice)
    await sc.v1.invoices.pay_async(first.id, {"paid_out_of_band": True})
    with pytest.raises(stripe.InvalidRequestError):  # one interval per subscription
        await sc.v1.subscriptions.update_async(sub.id, {"items": [{"price": yearly.id}]})
    item = sub["items"].data[0]
    sub = await sc.v1.subscriptions.update_async(
        sub.id, {"items": [{"id": item.id, "price": yearly.id}]}
    )
    new_item = sub["items"].data[0]
    assert new_item.current_period_end - new_item.current_period_start >= 365 * 86400
    inv = await sc.v1.invoices.retrieve_async(sub.latest_invoice)
    assert inv.billing_reason == "subscription_update" and inv.status == "open"
    assert 17990 <= inv.total <= 18000  # 200.00 for the year less the unused month
    left_open = await stripe_fake.end_period(sub.id)  # the customer pays when they like
    assert left_open["status"] == "open" and left_open["total"] == 20000
    paid = await stripe_fake.end_period(sub.id, pay=True)
    assert paid["status"] == "paid"


async def test_stale_payment_failure_delivered_after_the_payment(sc, stripe_fake, webhook_receiver):
    _, _, base, metered = await catalog(sc)
    we = await endpoint(sc, webhook_receiver, ["invoice.paid", "invoice.payment_failed"])
    cus = await sc.v1.customers.create_async({"email": "t@example.com"})
    session = await sc.v1.checkout.sessions.create_async(
        {
            "mode": "subscription",
            "customer": cus.id,
            "success_url": "https://app.test/ok",
            "line_items": [{"price": base.id, "quantity": 1}, {"price": metered.id}],
        }
    )
    sub_id = (await stripe_fake.complete_checkout(session.id))["subscription"]
    await stripe_fake.hold_webhooks()
    renewal = await stripe_fake.end_period(sub_id, fail=True)
    assert (await sc.v1.subscriptions.retrieve_async(sub_id)).status == "past_due"
    await sc.v1.invoices.pay_async(renewal["id"])  # retried with the card on file
    assert (await sc.v1.subscriptions.retrieve_async(sub_id)).status == "active"
    with pytest.raises(AssertionError, match="only an open invoice"):
        await stripe_fake.fail_payment(renewal["id"])
    held = {e["type"]: e["id"] for e in await stripe_fake.held_events()}
    await stripe_fake.release_webhooks([held["invoice.paid"], held["invoice.payment_failed"]])
    paid, failed = webhook_receiver.events(we.secret)[-2:]
    assert (paid.type, paid.data.object.status) == ("invoice.paid", "paid")
    assert (failed.type, failed.data.object.status) == ("invoice.payment_failed", "open")
    assert failed.created <= paid.created  # a receiver can tell the failure is older
