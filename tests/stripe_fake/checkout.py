"""Checkout Sessions in subscription mode, and the test-only route that plays the customer
paying on the hosted page: Stripe (never the client) creates the subscription and its
paid first invoice, then sends checkout.session.completed."""

from __future__ import annotations

import copy
from decimal import Decimal

from aiohttp import web
from localstripe import resources as ls

from . import invoices, subscriptions
from .core import (
    as_int,
    bad,
    customer,
    emit,
    get,
    merge_metadata,
    new_id,
    now,
    one_of,
    page,
    params,
    req,
    respond,
    table,
)
from .prices import amount_for, create_price
from .prices import export as export_price

routes = web.RouteTableDef()


def export(session: dict) -> dict:
    return {k: copy.deepcopy(v) for k, v in session.items() if not k.startswith("_")}


@routes.post("/v1/checkout/sessions")
async def create_session(request):
    data = await params(request)
    mode = one_of(req(data, "mode"), ("payment", "setup", "subscription"), "mode")
    if mode == "setup":
        raise bad("mode", "The fake supports mode=subscription and mode=payment")
    success_url = req(data, "success_url")
    if data.get("customer"):
        customer(data["customer"])
    raw = data.get("line_items")
    if not isinstance(raw, list) or not raw:
        raise bad("line_items", "Missing required param: line_items.", "parameter_missing")
    items, currency = [], None
    for i, spec in enumerate(raw):
        if isinstance(spec.get("price_data"), dict):  # an inline price, as Stripe allows
            price = create_price(spec["price_data"])
            price["active"] = False
        else:
            price = get(
                "price",
                req(spec, "price", f"line_items[{i}][price]"),
                "price",
                f"line_items[{i}][price]",
            )
        if mode == "payment" and price["recurring"]:
            raise bad(
                f"line_items[{i}][price]",
                "You must use one-time prices in `payment` "
                "mode; use `subscription` mode for recurring prices.",
            )
        metered = price["recurring"] and price["recurring"]["usage_type"] == "metered"
        qty = as_int(spec.get("quantity"), f"line_items[{i}][quantity]")
        if metered and qty is not None:
            raise bad(
                f"line_items[{i}][quantity]",
                "Quantity should not be specified where usage_type is `metered`.",
            )
        if not metered and qty is None:
            raise bad(f"line_items[{i}][quantity]", "Quantity is required.", "parameter_missing")
        if currency not in (None, price["currency"]):
            raise bad("line_items", "All prices must have the same currency.")
        currency = price["currency"]
        amount = 0 if metered else amount_for(price, Decimal(qty))
        items.append(
            {
                "id": new_id("li_"),
                "object": "item",
                "amount_discount": 0,
                "amount_subtotal": amount,
                "amount_tax": 0,
                "amount_total": amount,
                "currency": currency,
                "description": None,
                "price": price["id"],
                "quantity": qty,
            }
        )
    if mode == "subscription":
        prices = [table("price")[it["price"]] for it in items]
        if not all(p["recurring"] for p in prices):
            raise bad("line_items", "The fake takes only recurring prices in `subscription` mode.")
        # checked now, as Stripe does, so that completing the session cannot fail
        subscriptions.same_terms(prices, "line_items")
        subscriptions.distinct_prices([p["id"] for p in prices], "line_items")
    total = sum(it["amount_total"] for it in items)
    sid = new_id("cs_test_")
    session = {
        "id": sid,
        "object": "checkout.session",
        "amount_subtotal": total,
        "amount_total": total,
        "cancel_url": data.get("cancel_url") or None,
        "client_reference_id": data.get("client_reference_id") or None,
        "created": now(),
        "currency": currency,
        "customer": data.get("customer") or None,
        "customer_email": data.get("customer_email") or None,
        "expires_at": as_int(data.get("expires_at"), "expires_at") or now() + 86400,
        "invoice": None,
        "livemode": False,
        "metadata": merge_metadata({}, data.get("metadata")),
        "mode": mode,
        "payment_intent": None,
        "payment_status": "unpaid",
        "status": "open",
        "subscription": None,
        "success_url": success_url,
        "ui_mode": "hosted",
        "url": f"https://checkout.stripe.test/c/pay/{sid}",
        "_line_items": items,
        "_subscription_data": data.get("subscription_data") or {},
        "customer_details": None,
    }
    table("checkout.session")[sid] = session
    return respond(export(session))


@routes.get("/v1/checkout/sessions/{id}")
async def retrieve_session(request):
    return respond(export(get("checkout.session", request.match_info["id"], "checkout session")))


@routes.get("/v1/checkout/sessions/{id}/line_items")
async def session_line_items(request):
    session = get("checkout.session", request.match_info["id"], "checkout session")
    data = await params(request)
    rows = [
        dict(it, price=export_price(table("price")[it["price"]])) for it in session["_line_items"]
    ]
    return respond(
        page(f"/v1/checkout/sessions/{session['id']}/line_items", rows, data, newest_first=False)
    )


@routes.get("/v1/checkout/sessions")
async def list_sessions(request):
    data = await params(request)
    items = list(table("checkout.session").values())
    for key in ("customer", "subscription", "status"):
        if data.get(key):
            items = [s for s in items if s[key] == data[key]]
    out = page("/v1/checkout/sessions", items, data)
    out["data"] = [export(s) for s in out["data"]]
    return respond(out)


@routes.post("/v1/checkout/sessions/{id}/expire")
async def expire_session(request):
    session = get("checkout.session", request.match_info["id"], "checkout session")
    if session["status"] != "open":
        raise bad(
            "session", f"Only an open session can be expired (this one is {session['status']})"
        )
    session["status"] = "expired"
    emit("checkout.session.expired", export(session))
    return respond(export(session))


@routes.post("/_test/checkout/sessions/{id}/complete")
async def complete_session(request):
    """Test-only: the customer pays on the hosted page with a test card."""
    session = get("checkout.session", request.match_info["id"], "checkout session")
    if session["status"] != "open" or session["expires_at"] < now():
        raise bad("session", f"This checkout session is not open (status {session['status']})")
    cus_id = session["customer"]
    if cus_id is None:
        cus_id = ls.Customer(email=session["customer_email"]).id
    pm = ls.PaymentMethod._api_retrieve("pm_card_visa")
    ls.PaymentMethod._api_attach(pm.id, customer=cus_id)
    cus = customer(cus_id)
    details = {
        "address": None,
        "email": cus.email,
        "name": cus.name,
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
    }
    if session["mode"] == "payment":
        session.update(
            customer=cus_id,
            customer_details=details,
            status="complete",
            payment_status="paid",
            payment_intent=new_id("pi_"),
        )
        emit("checkout.session.completed", export(session))
        return respond(export(session))
    sub_data = session["_subscription_data"]
    sub = subscriptions.build_subscription(
        {
            "customer": cus_id,
            "items": [
                {"price": it["price"], "quantity": it["quantity"]} for it in session["_line_items"]
            ],
            "metadata": sub_data.get("metadata"),
            "description": sub_data.get("description"),
            "default_payment_method": pm.id,
        }
    )
    emit("customer.subscription.created", subscriptions.export(sub))
    inv = invoices.new_invoice(
        sub, subscriptions.advance_lines(sub), "subscription_create", *subscriptions.period(sub)
    )
    invoices.collect(inv)  # pays with the card: the subscription becomes active
    session.update(
        customer=cus_id,
        customer_details=details,
        subscription=sub["id"],
        invoice=inv["id"],
        status="complete",
        payment_status="paid",
    )
    emit("checkout.session.completed", export(session))
    return respond(export(session))
