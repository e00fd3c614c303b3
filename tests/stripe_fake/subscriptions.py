"""Subscriptions with several items (a base price plus metered prices), period dates on
the items (API 2026-10-28), prorations on update, cancellation, the upcoming-invoice
preview, and the test-only route that ends a period (renewal invoice with the metered
usage of the closing period)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal

from aiohttp import web
from dateutil.relativedelta import relativedelta
from localstripe import resources as ls

from . import invoices, meters
from .core import (
    StripeError,
    as_bool,
    as_int,
    bad,
    customer,
    emit,
    get,
    merge_metadata,
    missing,
    new_id,
    now,
    one_of,
    page,
    params,
    req,
    respond,
    state,
    table,
)
from .prices import amount_for
from .prices import export as export_price

routes = web.RouteTableDef()


def _step(price: dict, anchor: int, n: int) -> int:
    rec = price["recurring"]
    k = n * rec["interval_count"]
    delta = {
        "day": relativedelta(days=k),
        "week": relativedelta(weeks=k),
        "month": relativedelta(months=k),
        "year": relativedelta(years=k),
    }[rec["interval"]]
    return int((datetime.fromtimestamp(anchor, UTC) + delta).timestamp())


def _set_period(sub: dict, anchor: int, cycle: int) -> None:
    sub["_anchor"], sub["_cycle"] = anchor, cycle
    for item in sub["items"]["data"]:
        item["current_period_start"] = _step(item["price"], anchor, cycle)
        item["current_period_end"] = _step(item["price"], anchor, cycle + 1)


def period(sub: dict) -> tuple[int, int]:
    first = sub["items"]["data"][0]
    return first["current_period_start"], first["current_period_end"]


def metered(price: dict) -> bool:
    return price["recurring"]["usage_type"] == "metered"


def product_name(price: dict) -> str:
    product = ls.store.get(f"product:{price['product']}")
    return product.name if product is not None else price["product"]


def usage_lines(sub: dict, end: int, mark: str | None) -> list[dict]:
    """Metered items: not yet billed meter events up to `end`, priced by the item's price.
    Stripe bills the events whose timestamp falls in the closing period; the fake cannot move
    real time forward, so it bills every not-yet-billed event before the period's end."""
    start = period(sub)[0]
    lines = []
    for item in sub["items"]["data"]:
        price = item["price"]
        if not metered(price):
            continue
        meter = table("billing.meter")[price["recurring"]["meter"]]
        events = [
            e
            for e in meters.events_for(meter, sub["customer"], None, end)
            if e["_invoice"] is None and e["timestamp"] >= sub["start_date"]
        ]
        qty = max(meters.aggregate(meter, events), Decimal(0))
        if mark:
            for e in events:
                e["_invoice"] = mark
        lines.append(
            invoices.line(
                price,
                qty,
                amount_for(table("price")[price["id"]], qty),
                start,
                end,
                f"{qty} × {product_name(price)}",
                sub,
                item["id"],
            )
        )
    return lines


def advance_lines(sub: dict) -> list[dict]:
    start, end = period(sub)
    return [
        invoices.line(
            item["price"],
            item["quantity"],
            amount_for(table("price")[item["price"]["id"]], Decimal(item["quantity"])),
            start,
            end,
            f"{item['quantity']} × {product_name(item['price'])}",
            sub,
            item["id"],
        )
        for item in sub["items"]["data"]
        if not metered(item["price"])
    ]


def set_status(sub: dict, status: str) -> None:
    if sub["status"] != status:
        before = export(sub)
        sub["status"] = status
        emit("customer.subscription.updated", export(sub), before)


def export(sub: dict) -> dict:
    out = {k: copy.deepcopy(v) for k, v in sub.items() if not k.startswith("_")}
    for item in out["items"]["data"]:
        item["price"] = export_price(table("price")[item["price"]["id"]])
    return out


def _item(sub_id: str, spec: dict, i: int, current_price: str | None = None) -> dict:
    price = get("price", req(spec, "price", f"items[{i}][price]"), "price", f"items[{i}][price]")
    if not price.get("active", True) and price["id"] != current_price:
        # an archived price keeps billing the items already on it, but takes no new ones
        raise bad(
            f"items[{i}][price]",
            "The price specified is inactive. This field only accepts active prices.",
        )
    if price["type"] != "recurring":
        raise bad(f"items[{i}][price]", "The price must be recurring to be used in a subscription.")
    qty = as_int(spec.get("quantity"), f"items[{i}][quantity]")
    if metered(price):
        if qty is not None:
            raise bad(
                f"items[{i}][quantity]",
                "Quantity should not be specified where usage_type is `metered`.",
            )
    else:
        qty = 1 if qty is None else qty
        if qty < 0:
            raise bad(f"items[{i}][quantity]", "Invalid quantity: must be >= 0")
    return {
        "id": new_id("si_"),
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": now(),
        "current_period_end": None,
        "current_period_start": None,
        "discounts": [],
        "metadata": merge_metadata({}, spec.get("metadata")),
        "price": copy.deepcopy(price),
        "quantity": qty,
        "subscription": sub_id,
        "tax_rates": [],
    }


def build_subscription(data: dict) -> dict:
    cus_id = req(data, "customer")
    customer(cus_id)
    items_spec = data.get("items")
    if not isinstance(items_spec, list) or not items_spec:
        raise bad("items", "Missing required param: items.", "parameter_missing")
    sub_id = new_id("sub_")
    items = [_item(sub_id, spec, i) for i, spec in enumerate(items_spec)]
    distinct_prices([it["price"]["id"] for it in items])
    same_terms([it["price"] for it in items])
    currencies = {it["price"]["currency"] for it in items}
    t = now()
    sub = {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "billing_cycle_anchor": t,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": one_of(
            data.get("collection_method"),
            ("charge_automatically", "send_invoice"),
            "collection_method",
            "charge_automatically",
        ),
        "created": t,
        "currency": currencies.pop(),
        "customer": cus_id,
        "days_until_due": as_int(data.get("days_until_due"), "days_until_due"),
        "default_payment_method": data.get("default_payment_method") or None,
        "description": data.get("description") or None,
        "discounts": [],
        "ended_at": None,
        "items": {
            "object": "list",
            "data": items,
            "has_more": False,
            "total_count": len(items),
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": merge_metadata({}, data.get("metadata")),
        "pending_update": None,
        "start_date": t,
        "status": "incomplete",
        "test_clock": None,
        "trial_end": None,
        "trial_start": None,
    }
    _set_period(sub, t, 0)
    table("subscription")[sub_id] = sub
    return sub


@routes.post("/v1/subscriptions")
async def create_subscription(request):
    data = await params(request)
    behavior = one_of(
        data.get("payment_behavior"),
        ("allow_incomplete", "default_incomplete", "error_if_incomplete", "pending_if_incomplete"),
        "payment_behavior",
        "allow_incomplete",
    )
    sub = build_subscription(data)
    lines = advance_lines(sub)
    due = sum(line["amount"] for line in lines) + state().balances.get(sub["customer"], 0)
    pays = (
        due <= 0 or sub["collection_method"] == "send_invoice" or invoices.has_payment_method(sub)
    )
    if not pays and behavior == "error_if_incomplete":
        del table("subscription")[sub["id"]]
        raise StripeError(
            402,
            "This customer has no attached payment source or default payment method.",
            code="resource_missing",
            type_="card_error",
        )
    sub["status"] = "active" if pays else "incomplete"
    emit("customer.subscription.created", export(sub))
    inv = invoices.new_invoice(sub, lines, "subscription_create", *period(sub))
    if behavior == "default_incomplete" and not pays:
        invoices.finalize(inv)
    else:
        invoices.collect(inv)
    return respond(export(sub))


@routes.get("/v1/subscriptions/{id}")
async def retrieve_subscription(request):
    return respond(export(get("subscription", request.match_info["id"])))


def _proration(sub, item, price, qty, sign, start, end, t, label) -> None:
    if metered(price) or end <= start:
        return
    fraction = Decimal(max(end - t, 0)) / Decimal(end - start)
    amount = int(
        (Decimal(amount_for(table("price")[price["id"]], Decimal(qty))) * fraction).quantize(
            Decimal(1)
        )
    )
    when = datetime.fromtimestamp(t, UTC).strftime("%d %b %Y")
    invoices.invoice_item(
        sub,
        item,
        price,
        qty,
        sign * amount,
        t,
        end,
        f"{label} time on {qty} × {product_name(price)} after {when}",
    )


def _plan_items(sub: dict, specs) -> tuple[list[tuple[str, dict | None, dict | None]], bool]:
    """Check every item change before applying any (Stripe applies all or nothing):
    [("add", None, new) | ("delete", current, None) | ("change", current, new)], and
    whether the billing interval changes."""
    if specs in (None, ""):
        return [], False
    if not isinstance(specs, list):
        raise bad("items", "Invalid items: must be a list")
    plan = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise bad(f"items[{i}]", "Invalid item")
        current = next((it for it in sub["items"]["data"] if it["id"] == spec.get("id")), None)
        if spec.get("id") and current is None:
            raise bad(
                f"items[{i}][id]", f"No such subscription item: '{spec['id']}'", "resource_missing"
            )
        if current is None:
            plan.append(("add", None, _item(sub["id"], spec, i)))
        elif as_bool(spec.get("deleted"), f"items[{i}][deleted]"):
            plan.append(("delete", current, None))
        else:
            price_id = spec.get("price") or current["price"]["id"]
            price = get("price", price_id, param=f"items[{i}][price]")
            if "quantity" in spec:
                qty = spec["quantity"]
            else:
                qty = None if metered(price) else current["quantity"] or 1
            new = _item(sub["id"], {"price": price_id, "quantity": qty}, i, current["price"]["id"])
            new["metadata"] = merge_metadata(current["metadata"], spec.get("metadata"))
            plan.append(("change", current, new))
    if len({(a, c["id"] if c else n["id"]) for a, c, n in plan}) < len(plan):
        raise bad("items", "Each subscription item can be changed only once per request.")
    final = {it["id"]: it["price"]["id"] for it in sub["items"]["data"]}
    for action, current, new in plan:
        if action == "delete":
            final.pop(current["id"])
        else:
            final[current["id"] if current else new["id"]] = new["price"]["id"]
    distinct_prices(list(final.values()))
    same_terms([table("price")[p] for p in final.values()])
    if not final:
        raise bad("items", "A subscription needs at least one item; cancel it instead.")
    old = sub["items"]["data"][0]["price"]
    new = table("price")[next(iter(final.values()))]
    return plan, not _same_cycle(old, new)


def same_terms(prices: list[dict], param: str = "items") -> None:
    terms = {
        (p["currency"], p["recurring"]["interval"], p["recurring"]["interval_count"])
        for p in prices
    }
    if len(terms) > 1:
        raise bad(param, "All prices on a subscription must have the same currency and interval.")


def distinct_prices(price_ids: list[str], param: str = "items") -> None:
    if len(set(price_ids)) < len(price_ids):
        raise bad(
            param,
            "You cannot add multiple subscription items with the same price; "
            "use one item with a quantity instead.",
        )


def _same_cycle(a: dict, b: dict) -> bool:
    ra, rb = a["recurring"], b["recurring"]
    return (ra["interval"], ra["interval_count"]) == (rb["interval"], rb["interval_count"])


@routes.post("/v1/subscriptions/{id}")
async def update_subscription(request):
    sub = get("subscription", request.match_info["id"])
    if sub["status"] in ("canceled", "incomplete_expired"):
        raise bad("subscription", "A canceled subscription can only update its metadata.")
    data = await params(request)
    behavior = one_of(
        data.get("proration_behavior"),
        ("create_prorations", "always_invoice", "none"),
        "proration_behavior",
        "create_prorations",
    )
    cancel_flag = as_bool(data.get("cancel_at_period_end"), "cancel_at_period_end")
    plan, cycle_reset = _plan_items(sub, data.get("items"))
    start, end = period(sub)
    # `proration_date` fixes the instant prorations are computed for, as in Stripe
    t = as_int(data.get("proration_date"), "proration_date") or now()
    t = min(max(t, start), end)
    prorate = behavior != "none"
    before = export(sub)
    for action, current, new in plan:
        if action in ("delete", "change") and prorate:
            item_id = current["id"] if action == "change" else None
            _proration(
                sub, item_id, current["price"], current["quantity"], -1, start, end, t, "Unused"
            )
        if action == "delete":
            sub["items"]["data"].remove(current)
            continue
        if action == "add":
            new.update(current_period_start=start, current_period_end=end)
            sub["items"]["data"].append(new)
            current = new
        else:
            current.update(price=new["price"], quantity=new["quantity"], metadata=new["metadata"])
        if prorate and not cycle_reset:
            _proration(
                sub, current["id"], new["price"], new["quantity"], 1, start, end, t, "Remaining"
            )
    sub["items"]["total_count"] = len(sub["items"]["data"])
    if cancel_flag is not None:
        sub["cancel_at_period_end"] = cancel_flag
        sub["cancel_at"] = end if cancel_flag else None
        sub["canceled_at"] = now() if cancel_flag else None
        sub["cancellation_details"]["reason"] = "cancellation_requested" if cancel_flag else None
    for key in ("default_payment_method", "description"):
        if key in data:
            sub[key] = data[key] or None
    sub["metadata"] = merge_metadata(sub["metadata"], data.get("metadata"))
    if cycle_reset:  # a new interval starts a new billing cycle now, invoiced at once
        sub["billing_cycle_anchor"] = now()
        _set_period(sub, now(), 0)
    emit("customer.subscription.updated", export(sub), before)
    if cycle_reset or (behavior == "always_invoice" and invoices.pending_lines(sub)):
        lines = invoices.pending_lines(sub) + (advance_lines(sub) if cycle_reset else [])
        inv = invoices.new_invoice(sub, lines, "subscription_update", t, period(sub)[1])
        invoices.collect(inv)
    return respond(export(sub))


@routes.delete("/v1/subscriptions/{id}")
async def cancel_subscription(request):
    sub = get("subscription", request.match_info["id"])
    if sub["status"] == "canceled":
        raise bad("subscription", f"This subscription is already canceled: {sub['id']}")
    data = await params(request)
    t = now()
    start, end = period(sub)
    if as_bool(data.get("prorate"), "prorate"):
        for item in sub["items"]["data"]:
            _proration(
                sub, item["id"], item["price"], item["quantity"], -1, start, end, t, "Unused"
            )
    if as_bool(data.get("invoice_now"), "invoice_now"):
        lines = usage_lines(sub, t + 1, mark=sub["id"]) + invoices.pending_lines(sub)
        invoices.collect(invoices.new_invoice(sub, lines, "subscription_cycle", start, t))
    before = export(sub)
    sub.update(status="canceled", canceled_at=t, ended_at=t)
    sub["cancellation_details"]["reason"] = "cancellation_requested"
    emit("customer.subscription.deleted", export(sub), before)
    return respond(export(sub))


@routes.get("/v1/subscriptions")
async def list_subscriptions(request):
    data = await params(request)
    items = list(table("subscription").values())
    if data.get("customer"):
        items = [s for s in items if s["customer"] == data["customer"]]
    status = data.get("status")
    if status and status != "all":
        items = [s for s in items if s["status"] == status]
    elif not status:
        items = [s for s in items if s["status"] not in ("canceled", "incomplete_expired")]
    if data.get("price"):
        items = [
            s for s in items if any(it["price"]["id"] == data["price"] for it in s["items"]["data"])
        ]
    out = page("/v1/subscriptions", items, data)
    out["data"] = [export(table("subscription")[s["id"]]) for s in out["data"]]
    return respond(out)


@routes.get("/v1/subscription_items")
async def list_items(request):
    data = await params(request)
    sub = get("subscription", req(data, "subscription"), param="subscription")
    return respond(
        page("/v1/subscription_items", export(sub)["items"]["data"], data, newest_first=False)
    )


@routes.get("/v1/subscription_items/{id}")
async def retrieve_item(request):
    for sub in table("subscription").values():
        for item in export(sub)["items"]["data"]:
            if item["id"] == request.match_info["id"]:
                return respond(item)
    raise missing("subscription item", request.match_info["id"])


@routes.post("/_test/subscriptions/{id}/end_period")
async def end_period(request):
    """Test-only: the current period ends now. Moves the period forward (or ends the
    subscription if it was set to cancel at period end) and bills the renewal invoice —
    licensed items for the new period, metered usage, pending prorations. Collection as
    Stripe does it: charged to the customer's card (`charge_automatically`), or left open
    for the customer to pay (`send_invoice`). `fail=true`: the payment attempt fails;
    `pay=true`: paid whatever the collection method; `pay=false`: left open."""
    sub = get("subscription", request.match_info["id"])
    if sub["status"] not in ("active", "past_due", "trialing", "unpaid"):
        raise bad("subscription", f"Cannot end the period of a {sub['status']} subscription")
    data = await params(request)
    fail = bool(as_bool(data.get("fail"), "fail"))
    pay = as_bool(data.get("pay"), "pay")
    if pay is None:
        pay = sub["collection_method"] == "charge_automatically"
    start, end = period(sub)
    before = export(sub)
    usage = usage_lines(sub, end, mark=sub["id"])
    pending = invoices.pending_lines(sub)
    if sub["cancel_at_period_end"]:
        sub.update(status="canceled", ended_at=end)
        emit("customer.subscription.deleted", export(sub), before)
        if not any(line["amount"] for line in usage + pending):
            return respond(None)
        inv = invoices.new_invoice(sub, usage + pending, "subscription_cycle", start, end)
    else:
        _set_period(sub, sub["_anchor"], sub["_cycle"] + 1)
        emit("customer.subscription.updated", export(sub), before)
        inv = invoices.new_invoice(
            sub, advance_lines(sub) + usage + pending, "subscription_cycle", start, end
        )
    invoices.finalize(inv)
    if inv["amount_due"] == 0 or (pay and not fail):
        invoices.mark_paid(inv, out_of_band=False)
    elif fail:
        invoices.mark_failed(inv)
    return respond(inv)


@routes.post("/v1/invoices/create_preview")
async def create_preview(request):
    data = await params(request)
    sub = get("subscription", req(data, "subscription"), param="subscription")
    start, end = period(sub)
    nxt = copy.deepcopy(sub)
    _set_period(nxt, sub["_anchor"], sub["_cycle"] + 1)
    lines = advance_lines(nxt) + usage_lines(sub, end, mark=None) + invoices.pending_lines(sub)
    total = sum(line["amount"] for line in lines)
    return respond(
        {
            "id": f"upcoming_{sub['id']}",
            "object": "invoice",
            "customer": sub["customer"],
            "currency": sub["currency"],
            "billing_reason": "upcoming",
            "status": "draft",
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "total_count": len(lines),
                "url": "/v1/invoices/upcoming/lines",
            },
            "parent": {
                "type": "subscription_details",
                "subscription_details": {"subscription": sub["id"], "metadata": sub["metadata"]},
            },
            "period_start": start,
            "period_end": end,
            "subtotal": total,
            "total": total,
            "amount_due": max(total, 0),
            "livemode": False,
        }
    )
