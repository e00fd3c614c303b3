"""Subscriptions (several items, period dates on the items), prorations, invoices and
invoice items, as the 2026-10-28 API shapes them, plus the test-only routes that end a
period (renewal invoice with metered usage) and make a payment fail."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal

from aiohttp import web
from dateutil.relativedelta import relativedelta
from localstripe import resources as ls

from . import meters
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


# --- periods ---

def _step(price: dict, anchor: int, n: int) -> int:
    rec = price["recurring"]
    k = n * rec["interval_count"]
    delta = {"day": relativedelta(days=k), "week": relativedelta(weeks=k),
             "month": relativedelta(months=k), "year": relativedelta(years=k)}[rec["interval"]]
    return int((datetime.fromtimestamp(anchor, UTC) + delta).timestamp())


def _set_period(sub: dict, anchor: int, cycle: int) -> None:
    sub["_anchor"], sub["_cycle"] = anchor, cycle
    for item in sub["items"]["data"]:
        item["current_period_start"] = _step(item["price"], anchor, cycle)
        item["current_period_end"] = _step(item["price"], anchor, cycle + 1)


def period(sub: dict) -> tuple[int, int]:
    first = sub["items"]["data"][0]
    return first["current_period_start"], first["current_period_end"]


def _metered(price: dict) -> bool:
    return price["recurring"]["usage_type"] == "metered"


def _product_name(price: dict) -> str:
    product = ls.store.get(f"product:{price['product']}")
    return product.name if product is not None else price["product"]


# --- invoice items and invoice lines ---

def _pricing(price: dict) -> dict:
    return {"price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details", "unit_amount_decimal": price["unit_amount_decimal"]}


def _invoice_item(sub: dict, item_id: str | None, price: dict, quantity: int, amount: int,
                  start: int, end: int, description: str) -> dict:
    ii = {
        "id": new_id("ii_"), "object": "invoiceitem", "amount": amount,
        "currency": price["currency"], "customer": sub["customer"], "date": now(),
        "created": now(), "description": description, "discountable": False, "discounts": [],
        "invoice": None, "livemode": False, "metadata": {},
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": sub["id"], "subscription_item": item_id}},
        "period": {"start": start, "end": end}, "pricing": _pricing(price), "proration": True,
        "quantity": quantity, "tax_rates": [],
    }
    table("invoiceitem")[ii["id"]] = ii
    return ii


def _line(price: dict, quantity, amount: int, start: int, end: int, description: str,
          sub: dict | None, item_id: str | None, ii: dict | None = None) -> dict:
    if ii is not None:
        parent = {"type": "invoice_item_details",
                  "invoice_item_details": {"invoice_item": ii["id"], "proration": ii["proration"],
                                           "proration_details": {"credited_items": None},
                                           "subscription": sub["id"] if sub else None}}
    else:
        parent = {"type": "subscription_item_details",
                  "subscription_item_details": {"invoice_item": None, "proration": False,
                                                "proration_details": {"credited_items": None},
                                                "subscription": sub["id"],
                                                "subscription_item": item_id}}
    qty = Decimal(quantity)
    return {
        "id": new_id("il_"), "object": "line_item", "amount": amount,
        "currency": price["currency"], "description": description, "discount_amounts": [],
        "discountable": True, "discounts": [], "invoice": None, "livemode": False,
        "metadata": {}, "parent": parent, "period": {"start": start, "end": end},
        "pretax_credit_amounts": [], "pricing": _pricing(price),
        "quantity": int(qty) if qty == qty.to_integral() else None,
        "quantity_decimal": str(qty), "subtotal": amount, "taxes": [],
    }


def _pending_lines(sub: dict) -> list[dict]:
    out = []
    for ii in table("invoiceitem").values():
        sd = ii["parent"]["subscription_details"]
        if ii["invoice"] is None and sd["subscription"] == sub["id"]:
            price = table("price")[ii["pricing"]["price_details"]["price"]]
            out.append(_line(price, ii["quantity"], ii["amount"], ii["period"]["start"],
                             ii["period"]["end"], ii["description"], sub, None, ii))
    return out


def _usage_lines(sub: dict, end: int, mark: str | None) -> list[dict]:
    """Metered items: not yet billed meter events up to `end`, priced by the item's price.
    Stripe bills the events whose timestamp falls in the closing period; the fake cannot move
    real time forward, so it bills every not-yet-billed event before the period's end."""
    start = period(sub)[0]
    lines = []
    for item in sub["items"]["data"]:
        price = item["price"]
        if not _metered(price):
            continue
        meter = table("billing.meter")[price["recurring"]["meter"]]
        events = [e for e in meters.events_for(meter, sub["customer"], None, end)
                  if e["_invoice"] is None and e["timestamp"] >= sub["start_date"]]
        qty = max(meters.aggregate(meter, events), Decimal(0))
        if mark:
            for e in events:
                e["_invoice"] = mark
        lines.append(_line(price, qty, amount_for(table("price")[price["id"]], qty), start, end,
                           f"{qty} × {_product_name(price)}", sub, item["id"]))
    return lines


def _advance_lines(sub: dict) -> list[dict]:
    start, end = period(sub)
    return [_line(item["price"], item["quantity"],
                  amount_for(table("price")[item["price"]["id"]], Decimal(item["quantity"])),
                  start, end, f"{item['quantity']} × {_product_name(item['price'])}",
                  sub, item["id"])
            for item in sub["items"]["data"] if not _metered(item["price"])]


# --- invoices ---

def _new_invoice(sub: dict, lines: list[dict], reason: str, start: int, end: int) -> dict:
    cus = customer(sub["customer"])
    inv_id = new_id("in_")
    for line in lines:
        line["invoice"] = inv_id
        ii_details = line["parent"].get("invoice_item_details")
        if ii_details:
            table("invoiceitem")[ii_details["invoice_item"]]["invoice"] = inv_id
    total = sum(line["amount"] for line in lines)
    inv = {
        "id": inv_id, "object": "invoice", "account_country": "US", "account_name": "Fake",
        "amount_due": total, "amount_overpaid": 0, "amount_paid": 0, "amount_paid_off_stripe": 0,
        "amount_remaining": total, "amount_shipping": 0, "attempt_count": 0, "attempted": False,
        "auto_advance": True, "automatic_tax": {"enabled": False, "liability": None,
                                                "provider": None, "status": None},
        "billing_reason": reason, "collection_method": sub["collection_method"],
        "created": now(), "currency": sub["currency"], "customer": sub["customer"],
        "customer_email": cus.email, "customer_name": cus.name, "default_payment_method": None,
        "description": None, "discounts": [], "due_date": None, "effective_at": None,
        "ending_balance": None, "hosted_invoice_url": None, "invoice_pdf": None,
        "lines": {"object": "list", "data": lines, "has_more": False,
                  "total_count": len(lines), "url": f"/v1/invoices/{inv_id}/lines"},
        "livemode": False, "metadata": {}, "next_payment_attempt": None, "number": None,
        "parent": {"type": "subscription_details", "quote_details": None,
                   "subscription_details": {"metadata": dict(sub["metadata"]),
                                            "subscription": sub["id"]}},
        "period_end": end, "period_start": start, "starting_balance": 0,
        "status": "draft",
        "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None,
                               "paid_at": None, "voided_at": None},
        "subtotal": total, "subtotal_excluding_tax": total, "total": total,
        "total_discount_amounts": [], "total_excluding_tax": total, "total_taxes": [],
        "webhooks_delivered_at": None,
    }
    table("invoice")[inv_id] = inv
    sub["latest_invoice"] = inv_id
    emit("invoice.created", inv)
    return inv


def _finalize(inv: dict) -> None:
    balances = state().balances
    balance = balances.get(inv["customer"], 0)
    due = inv["total"] + balance
    inv.update(starting_balance=balance, ending_balance=min(due, 0), amount_due=max(due, 0),
               amount_remaining=max(due, 0), status="open", effective_at=now(),
               number=f"FAKE-{len(table('invoice')):04d}",
               hosted_invoice_url=f"https://invoice.stripe.test/{inv['id']}")
    inv["status_transitions"]["finalized_at"] = now()
    if inv["collection_method"] == "send_invoice":
        inv["due_date"] = now() + 30 * 86400
    balances[inv["customer"]] = min(due, 0)
    emit("invoice.finalized", inv)


def _sub_of(inv: dict) -> dict | None:
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    return table("subscription").get(details.get("subscription"))


def _set_status(sub: dict, status: str) -> None:
    if sub["status"] != status:
        before = copy.deepcopy(sub)
        sub["status"] = status
        emit("customer.subscription.updated", export(sub), before)


def mark_paid(inv: dict, *, out_of_band: bool) -> None:
    inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0,
               attempted=True, next_payment_attempt=None)
    if out_of_band:
        inv["amount_paid_off_stripe"] = inv["amount_due"]
    inv["status_transitions"]["paid_at"] = now()
    emit("invoice.paid", inv)
    if not out_of_band:
        emit("invoice.payment_succeeded", inv)
    sub = _sub_of(inv)
    if sub and sub["latest_invoice"] == inv["id"] and sub["status"] in (
            "incomplete", "past_due", "unpaid"):
        _set_status(sub, "active")


def mark_failed(inv: dict) -> None:
    inv.update(attempted=True, attempt_count=inv["attempt_count"] + 1,
               next_payment_attempt=now() + 3 * 86400)
    emit("invoice.payment_failed", inv)
    sub = _sub_of(inv)
    if sub and sub["status"] in ("active", "trialing"):
        _set_status(sub, "past_due")


def _has_payment_method(sub: dict) -> bool:
    cus = customer(sub["customer"])
    return bool(sub["default_payment_method"] or cus.invoice_settings.get("default_payment_method")
                or cus.default_source)


def collect(inv: dict, *, fail: bool = False, assume_card: bool = False) -> None:
    """Finalize, then charge as Stripe would: nothing due → paid; send_invoice → left open;
    charge_automatically → paid with the default payment method, failed without one."""
    _finalize(inv)
    sub = _sub_of(inv)
    if inv["amount_due"] == 0:
        mark_paid(inv, out_of_band=False)
    elif inv["collection_method"] == "send_invoice":
        return
    elif not fail and (assume_card or (sub and _has_payment_method(sub))):
        mark_paid(inv, out_of_band=False)
    else:
        mark_failed(inv)


# --- subscriptions ---

def export(sub: dict) -> dict:
    out = {k: copy.deepcopy(v) for k, v in sub.items() if not k.startswith("_")}
    for item in out["items"]["data"]:
        item["price"] = export_price(table("price")[item["price"]["id"]])
    return out


def _item(sub_id: str, spec: dict, i: int) -> dict:
    price = get("price", req(spec, "price", f"items[{i}][price]"), "price", f"items[{i}][price]")
    if price["type"] != "recurring":
        raise bad(f"items[{i}][price]", "The price must be recurring to be used in a subscription.")
    qty = as_int(spec.get("quantity"), f"items[{i}][quantity]")
    if _metered(price):
        if qty is not None:
            raise bad(f"items[{i}][quantity]",
                      "Quantity should not be specified where usage_type is `metered`.")
    else:
        qty = 1 if qty is None else qty
        if qty < 0:
            raise bad(f"items[{i}][quantity]", "Invalid quantity: must be >= 0")
    return {"id": new_id("si_"), "object": "subscription_item", "billing_thresholds": None,
            "created": now(), "current_period_end": None, "current_period_start": None,
            "discounts": [], "metadata": merge_metadata({}, spec.get("metadata")),
            "price": copy.deepcopy(price), "quantity": qty, "subscription": sub_id,
            "tax_rates": []}


def build_subscription(data: dict) -> dict:
    cus_id = req(data, "customer")
    customer(cus_id)
    items_spec = data.get("items")
    if not isinstance(items_spec, list) or not items_spec:
        raise bad("items", "Missing required param: items.", "parameter_missing")
    sub_id = new_id("sub_")
    items = [_item(sub_id, spec, i) for i, spec in enumerate(items_spec)]
    currencies = {it["price"]["currency"] for it in items}
    intervals = {(it["price"]["recurring"]["interval"], it["price"]["recurring"]["interval_count"])
                 for it in items}
    if len(currencies) > 1 or len(intervals) > 1:
        raise bad("items", "All prices on a subscription must have the same currency and interval.")
    t = now()
    sub = {
        "id": sub_id, "object": "subscription", "application": None,
        "billing_cycle_anchor": t, "cancel_at": None, "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": one_of(data.get("collection_method"),
                                    ("charge_automatically", "send_invoice"),
                                    "collection_method", "charge_automatically"),
        "created": t, "currency": currencies.pop(), "customer": cus_id,
        "days_until_due": as_int(data.get("days_until_due"), "days_until_due"),
        "default_payment_method": data.get("default_payment_method") or None,
        "description": data.get("description") or None, "discounts": [], "ended_at": None,
        "items": {"object": "list", "data": items, "has_more": False,
                  "total_count": len(items), "url": f"/v1/subscription_items?subscription={sub_id}"},
        "latest_invoice": None, "livemode": False,
        "metadata": merge_metadata({}, data.get("metadata")), "pending_update": None,
        "start_date": t, "status": "incomplete", "test_clock": None, "trial_end": None,
        "trial_start": None,
    }
    _set_period(sub, t, 0)
    table("subscription")[sub_id] = sub
    return sub


@routes.post("/v1/subscriptions")
async def create_subscription(request):
    data = await params(request)
    behavior = one_of(data.get("payment_behavior"), (
        "allow_incomplete", "default_incomplete", "error_if_incomplete", "pending_if_incomplete"),
        "payment_behavior", "allow_incomplete")
    sub = build_subscription(data)
    lines = _advance_lines(sub)
    due = sum(line["amount"] for line in lines) + state().balances.get(sub["customer"], 0)
    pays = due <= 0 or sub["collection_method"] == "send_invoice" or _has_payment_method(sub)
    if not pays and behavior == "error_if_incomplete":
        del table("subscription")[sub["id"]]
        raise StripeError(402, "This customer has no attached payment source or default "
                          "payment method.", code="resource_missing", type_="card_error")
    sub["status"] = "active" if pays else "incomplete"
    emit("customer.subscription.created", export(sub))
    inv = _new_invoice(sub, lines, "subscription_create", *period(sub))
    if behavior == "default_incomplete" and not pays:
        _finalize(inv)
    else:
        collect(inv)
    return respond(export(sub))


@routes.get("/v1/subscriptions/{id}")
async def retrieve_subscription(request):
    return respond(export(get("subscription", request.match_info["id"])))


def _proration(sub, item, price, qty, sign, start, end, t, label) -> None:
    if _metered(price) or end <= start:
        return
    fraction = Decimal(max(end - t, 0)) / Decimal(end - start)
    amount = int((Decimal(amount_for(table("price")[price["id"]], Decimal(qty))) * fraction)
                 .quantize(Decimal(1)))
    when = datetime.fromtimestamp(t, UTC).strftime("%d %b %Y")
    _invoice_item(sub, item, price, qty, sign * amount, t, end,
                  f"{label} time on {qty} × {_product_name(price)} after {when}")


@routes.post("/v1/subscriptions/{id}")
async def update_subscription(request):
    sub = get("subscription", request.match_info["id"])
    if sub["status"] in ("canceled", "incomplete_expired"):
        raise bad("subscription", "A canceled subscription can only update its metadata.")
    data = await params(request)
    behavior = one_of(data.get("proration_behavior"),
                      ("create_prorations", "always_invoice", "none"),
                      "proration_behavior", "create_prorations")
    before = export(sub)
    t = now()
    start, end = period(sub)
    cycle_reset = False
    for i, spec in enumerate(data.get("items") or []):
        if not isinstance(spec, dict):
            raise bad(f"items[{i}]", "Invalid item")
        current = next((it for it in sub["items"]["data"] if it["id"] == spec.get("id")), None)
        if spec.get("id") and current is None:
            raise bad(f"items[{i}][id]", f"No such subscription item: '{spec['id']}'",
                      "resource_missing")
        if current is None:  # a new item
            new = _item(sub["id"], spec, i)
            new.update(current_period_start=start, current_period_end=end)
            sub["items"]["data"].append(new)
            if behavior != "none":
                _proration(sub, new["id"], new["price"], new["quantity"], 1, start, end, t,
                           "Remaining")
            continue
        if as_bool(spec.get("deleted"), f"items[{i}][deleted]"):
            sub["items"]["data"].remove(current)
            if behavior != "none":
                _proration(sub, None, current["price"], current["quantity"], -1, start, end,
                           t, "Unused")
            continue
        price_id = spec.get("price") or current["price"]["id"]
        qty = spec.get("quantity") if "quantity" in spec else (
            None if _metered(get("price", price_id, param=f"items[{i}][price]"))
            else current["quantity"] or 1)
        new = _item(sub["id"], {"price": price_id, "quantity": qty}, i)
        old_rec, new_rec = current["price"]["recurring"], new["price"]["recurring"]
        cycle_reset |= (old_rec["interval"], old_rec["interval_count"]) != (
            new_rec["interval"], new_rec["interval_count"])
        if behavior != "none":
            _proration(sub, current["id"], current["price"], current["quantity"], -1,
                       start, end, t, "Unused")
            if not cycle_reset:
                _proration(sub, current["id"], new["price"], new["quantity"], 1, start, end,
                           t, "Remaining")
        current["price"], current["quantity"] = new["price"], new["quantity"]
        current["metadata"] = merge_metadata(current["metadata"], spec.get("metadata"))
    sub["items"]["total_count"] = len(sub["items"]["data"])
    if "cancel_at_period_end" in data:
        flag = as_bool(data["cancel_at_period_end"], "cancel_at_period_end")
        sub["cancel_at_period_end"] = flag
        sub["cancel_at"] = period(sub)[1] if flag else None
        sub["canceled_at"] = t if flag else None
        sub["cancellation_details"]["reason"] = "cancellation_requested" if flag else None
    for key in ("default_payment_method", "description"):
        if key in data:
            sub[key] = data[key] or None
    sub["metadata"] = merge_metadata(sub["metadata"], data.get("metadata"))
    if cycle_reset:
        sub["billing_cycle_anchor"] = t
        _set_period(sub, t, 0)
    emit("customer.subscription.updated", export(sub), before)
    if cycle_reset or (behavior == "always_invoice" and _pending_lines(sub)):
        lines = _pending_lines(sub) + (_advance_lines(sub) if cycle_reset else [])
        collect(_new_invoice(sub, lines, "subscription_update", t, period(sub)[1]))
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
            _proration(sub, item["id"], item["price"], item["quantity"], -1, start, end, t,
                       "Unused")
    if as_bool(data.get("invoice_now"), "invoice_now"):
        lines = _usage_lines(sub, t + 1, mark=sub["id"]) + _pending_lines(sub)
        collect(_new_invoice(sub, lines, "subscription_cycle", start, t))
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
        items = [s for s in items if any(it["price"]["id"] == data["price"]
                                         for it in s["items"]["data"])]
    out = page("/v1/subscriptions", items, data)
    out["data"] = [export(table("subscription")[s["id"]]) for s in out["data"]]
    return respond(out)


@routes.get("/v1/subscription_items")
async def list_items(request):
    data = await params(request)
    sub = get("subscription", req(data, "subscription"), param="subscription")
    out = page("/v1/subscription_items", export(sub)["items"]["data"], data)
    return respond(out)


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
    licensed items for the new period, metered usage, pending prorations — then collects it
    (`fail=true` makes the charge fail)."""
    sub = get("subscription", request.match_info["id"])
    if sub["status"] not in ("active", "past_due", "trialing", "unpaid"):
        raise bad("subscription", f"Cannot end the period of a {sub['status']} subscription")
    data = await params(request)
    fail = bool(as_bool(data.get("fail"), "fail"))
    start, end = period(sub)
    before = export(sub)
    usage = _usage_lines(sub, end, mark=sub["id"])
    pending = _pending_lines(sub)
    if sub["cancel_at_period_end"]:
        sub.update(status="canceled", ended_at=end)
        emit("customer.subscription.deleted", export(sub), before)
        if not any(line["amount"] for line in usage + pending):
            return respond(None)
        inv = _new_invoice(sub, usage + pending, "subscription_cycle", start, end)
    else:
        _set_period(sub, sub["_anchor"], sub["_cycle"] + 1)
        emit("customer.subscription.updated", export(sub), before)
        inv = _new_invoice(sub, _advance_lines(sub) + usage + pending, "subscription_cycle",
                           start, end)
    collect(inv, fail=fail, assume_card=True)
    return respond(inv)


# --- invoice routes ---

@routes.post("/v1/invoices/create_preview")
async def create_preview(request):
    data = await params(request)
    sub = get("subscription", req(data, "subscription"), param="subscription")
    start, end = period(sub)
    nxt = copy.deepcopy(sub)
    _set_period(nxt, sub["_anchor"], sub["_cycle"] + 1)
    lines = _advance_lines(nxt) + _usage_lines(sub, end, mark=None) + _pending_lines(sub)
    total = sum(line["amount"] for line in lines)
    return respond({"id": f"upcoming_{sub['id']}", "object": "invoice",
                    "customer": sub["customer"], "currency": sub["currency"],
                    "billing_reason": "upcoming", "status": "draft",
                    "lines": {"object": "list", "data": lines, "has_more": False,
                              "total_count": len(lines), "url": "/v1/invoices/upcoming/lines"},
                    "parent": {"type": "subscription_details",
                               "subscription_details": {"subscription": sub["id"],
                                                        "metadata": sub["metadata"]}},
                    "period_start": start, "period_end": end, "subtotal": total,
                    "total": total, "amount_due": max(total, 0), "livemode": False})


@routes.get("/v1/invoices/{id}")
async def retrieve_invoice(request):
    return respond(get("invoice", request.match_info["id"]))


@routes.get("/v1/invoices/{id}/lines")
async def invoice_lines(request):
    inv = get("invoice", request.match_info["id"])
    data = await params(request)
    lines = [dict(line, created=-i) for i, line in enumerate(inv["lines"]["data"])]
    out = page(f"/v1/invoices/{inv['id']}/lines", lines, data)
    for line in out["data"]:
        line.pop("created")
    return respond(out)


@routes.post("/v1/invoices/{id}")
async def update_invoice(request):
    inv = get("invoice", request.match_info["id"])
    inv["metadata"] = merge_metadata(inv["metadata"], (await params(request)).get("metadata"))
    return respond(inv)


@routes.post("/v1/invoices/{id}/finalize")
async def finalize_invoice(request):
    inv = get("invoice", request.match_info["id"])
    if inv["status"] != "draft":
        raise bad("invoice", "This invoice is already finalized.", "invoice_not_editable")
    _finalize(inv)
    return respond(inv)


@routes.post("/v1/invoices/{id}/pay")
async def pay_invoice(request):
    inv = get("invoice", request.match_info["id"])
    data = await params(request)
    if inv["status"] == "paid":
        raise bad("invoice", "Invoice is already paid", "invoice_already_paid")
    if inv["status"] == "void":
        raise bad("invoice", "This invoice has been voided.", "invoice_not_open")
    if inv["status"] == "draft":
        _finalize(inv)
    if as_bool(data.get("paid_out_of_band"), "paid_out_of_band"):
        mark_paid(inv, out_of_band=True)
    else:
        sub = _sub_of(inv)
        if not (data.get("payment_method") or (sub and _has_payment_method(sub))):
            raise StripeError(400, "This customer has no attached payment source or default "
                              "payment method.", code="invoice_no_customer_payment_method")
        mark_paid(inv, out_of_band=False)
    return respond(inv)


@routes.post("/v1/invoices/{id}/void")
async def void_invoice(request):
    inv = get("invoice", request.match_info["id"])
    if inv["status"] != "open":
        raise bad("invoice", "You can only void an open invoice.", "invoice_not_open")
    inv["status"] = "void"
    inv["status_transitions"]["voided_at"] = now()
    emit("invoice.voided", inv)
    return respond(inv)


@routes.post("/_test/invoices/{id}/fail_payment")
async def fail_payment(request):
    """Test-only: a payment attempt on this open invoice fails (the subscription goes
    past_due, `invoice.payment_failed` is sent)."""
    inv = get("invoice", request.match_info["id"])
    if inv["status"] == "draft":
        _finalize(inv)
    if inv["status"] != "open":
        raise bad("invoice", f"Only an open invoice can fail a payment (this one is {inv['status']})")
    mark_failed(inv)
    return respond(inv)


@routes.get("/v1/invoices")
async def list_invoices(request):
    data = await params(request)
    items = list(table("invoice").values())
    for key in ("customer", "status", "collection_method"):
        if data.get(key):
            items = [i for i in items if i[key] == data[key]]
    if data.get("subscription"):
        items = [i for i in items if (_sub_of(i) or {}).get("id") == data["subscription"]]
    return respond(page("/v1/invoices", items, data))


@routes.get("/v1/invoiceitems")
async def list_invoice_items(request):
    data = await params(request)
    items = list(table("invoiceitem").values())
    if data.get("customer"):
        items = [i for i in items if i["customer"] == data["customer"]]
    if data.get("invoice"):
        items = [i for i in items if i["invoice"] == data["invoice"]]
    if as_bool(data.get("pending"), "pending"):
        items = [i for i in items if i["invoice"] is None]
    return respond(page("/v1/invoiceitems", items, data))


@routes.get("/v1/invoiceitems/{id}")
async def retrieve_invoice_item(request):
    return respond(get("invoiceitem", request.match_info["id"], "invoice item"))
