"""Invoices and invoice items as the 2026-10-28 API shapes them (lines priced per
subscription item or pending invoice item; `parent` pointing at the subscription),
finalization with the customer's credit balance, collection, and the test-only routes
where the customer pays on the hosted page or a payment fails."""

from __future__ import annotations

from decimal import Decimal

from aiohttp import web

from . import subscriptions
from .core import (
    StripeError,
    as_bool,
    bad,
    customer,
    emit,
    get,
    merge_metadata,
    new_id,
    now,
    page,
    params,
    respond,
    state,
    table,
)

routes = web.RouteTableDef()


def _pricing(price: dict) -> dict:
    return {
        "price_details": {"price": price["id"], "product": price["product"]},
        "type": "price_details",
        "unit_amount_decimal": price["unit_amount_decimal"],
    }


def invoice_item(
    sub: dict,
    item_id: str | None,
    price: dict,
    quantity: int,
    amount: int,
    start: int,
    end: int,
    description: str,
) -> dict:
    ii = {
        "id": new_id("ii_"),
        "object": "invoiceitem",
        "amount": amount,
        "currency": price["currency"],
        "customer": sub["customer"],
        "date": now(),
        "created": now(),
        "description": description,
        "discountable": False,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": sub["id"], "subscription_item": item_id},
        },
        "period": {"start": start, "end": end},
        "pricing": _pricing(price),
        "proration": True,
        "quantity": quantity,
        "tax_rates": [],
    }
    table("invoiceitem")[ii["id"]] = ii
    return ii


def line(
    price: dict,
    quantity,
    amount: int,
    start: int,
    end: int,
    description: str,
    sub: dict | None,
    item_id: str | None,
    ii: dict | None = None,
) -> dict:
    if ii is not None:
        parent = {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": ii["id"],
                "proration": ii["proration"],
                "proration_details": {"credited_items": None},
                "subscription": sub["id"] if sub else None,
            },
        }
    else:
        parent = {
            "type": "subscription_item_details",
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": sub["id"],
                "subscription_item": item_id,
            },
        }
    qty = Decimal(quantity)
    return {
        "id": new_id("il_"),
        "object": "line_item",
        "amount": amount,
        "currency": price["currency"],
        "description": description,
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "parent": parent,
        "period": {"start": start, "end": end},
        "pretax_credit_amounts": [],
        "pricing": _pricing(price),
        "quantity": int(qty) if qty == qty.to_integral() else None,
        "quantity_decimal": str(qty),
        "subscription": sub["id"] if sub else None,
        "subtotal": amount,
        "taxes": [],
    }


def pending_lines(sub: dict) -> list[dict]:
    out = []
    for ii in table("invoiceitem").values():
        sd = ii["parent"]["subscription_details"]
        if ii["invoice"] is None and sd["subscription"] == sub["id"]:
            price = table("price")[ii["pricing"]["price_details"]["price"]]
            out.append(
                line(
                    price,
                    ii["quantity"],
                    ii["amount"],
                    ii["period"]["start"],
                    ii["period"]["end"],
                    ii["description"],
                    sub,
                    None,
                    ii,
                )
            )
    return out


def new_invoice(sub: dict, lines: list[dict], reason: str, start: int, end: int) -> dict:
    cus = customer(sub["customer"])
    inv_id = new_id("in_")
    for line in lines:
        line["invoice"] = inv_id
        ii_details = line["parent"].get("invoice_item_details")
        if ii_details:
            table("invoiceitem")[ii_details["invoice_item"]]["invoice"] = inv_id
    total = sum(line["amount"] for line in lines)
    inv = {
        "id": inv_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Fake",
        "amount_due": total,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_paid_off_stripe": 0,
        "amount_remaining": total,
        "amount_shipping": 0,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": True,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_reason": reason,
        "collection_method": sub["collection_method"],
        "created": now(),
        "currency": sub["currency"],
        "customer": sub["customer"],
        "customer_email": cus.email,
        "customer_name": cus.name,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "total_count": len(lines),
            "url": f"/v1/invoices/{inv_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
        },
        "period_end": end,
        "period_start": start,
        "starting_balance": 0,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subtotal": total,
        "subtotal_excluding_tax": total,
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": total,
        "total_taxes": [],
        "webhooks_delivered_at": None,
    }
    table("invoice")[inv_id] = inv
    sub["latest_invoice"] = inv_id
    emit("invoice.created", inv)
    return inv


def finalize(inv: dict) -> None:
    balances = state().balances
    balance = balances.get(inv["customer"], 0)
    due = inv["total"] + balance
    inv.update(
        starting_balance=balance,
        ending_balance=min(due, 0),
        amount_due=max(due, 0),
        amount_remaining=max(due, 0),
        status="open",
        effective_at=now(),
        number=f"FAKE-{len(table('invoice')):04d}",
        hosted_invoice_url=f"https://invoice.stripe.test/{inv['id']}",
    )
    inv["status_transitions"]["finalized_at"] = now()
    if inv["collection_method"] == "send_invoice":
        inv["due_date"] = now() + 30 * 86400
    balances[inv["customer"]] = min(due, 0)
    emit("invoice.finalized", inv)


def sub_of(inv: dict) -> dict | None:
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    return table("subscription").get(details.get("subscription"))


def has_payment_method(sub: dict) -> bool:
    cus = customer(sub["customer"])
    return bool(
        sub["default_payment_method"]
        or cus.invoice_settings.get("default_payment_method")
        or cus.default_source
    )


def mark_paid(inv: dict, *, out_of_band: bool) -> None:
    inv.update(
        status="paid",
        amount_paid=inv["amount_due"],
        amount_remaining=0,
        attempted=True,
        next_payment_attempt=None,
    )
    if out_of_band:
        inv["amount_paid_off_stripe"] = inv["amount_due"]
    inv["status_transitions"]["paid_at"] = now()
    emit("invoice.paid", inv)
    if not out_of_band:
        emit("invoice.payment_succeeded", inv)
    sub = sub_of(inv)
    if (
        sub
        and sub["latest_invoice"] == inv["id"]
        and sub["status"] in ("incomplete", "past_due", "unpaid")
    ):
        subscriptions.set_status(sub, "active")


def mark_failed(inv: dict) -> None:
    inv.update(
        attempted=True,
        attempt_count=inv["attempt_count"] + 1,
        next_payment_attempt=now() + 3 * 86400,
    )
    emit("invoice.payment_failed", inv)
    sub = sub_of(inv)
    if sub and sub["status"] in ("active", "trialing"):
        subscriptions.set_status(sub, "past_due")


def collect(inv: dict) -> None:
    """Finalize, then charge as Stripe would: nothing due → paid; send_invoice → left open;
    charge_automatically → paid with the default payment method, failed without one."""
    finalize(inv)
    sub = sub_of(inv)
    if inv["amount_due"] == 0:
        mark_paid(inv, out_of_band=False)
    elif inv["collection_method"] == "send_invoice":
        return
    elif sub and has_payment_method(sub):
        mark_paid(inv, out_of_band=False)
    else:
        mark_failed(inv)


@routes.get("/v1/invoices/{id}")
async def retrieve_invoice(request):
    return respond(get("invoice", request.match_info["id"]))


@routes.get("/v1/invoices/{id}/lines")
async def invoice_lines(request):
    inv = get("invoice", request.match_info["id"])
    data = await params(request)
    return respond(
        page(f"/v1/invoices/{inv['id']}/lines", inv["lines"]["data"], data, newest_first=False)
    )


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
    finalize(inv)
    return respond(inv)


@routes.post("/v1/invoices/{id}/pay")
async def pay_invoice(request):
    inv = get("invoice", request.match_info["id"])
    data = await params(request)
    if inv["status"] == "paid":
        raise bad("invoice", "Invoice is already paid", "invoice_already_paid")
    if inv["status"] == "void":
        raise bad("invoice", "This invoice has been voided.", "invoice_not_open")
    out_of_band = bool(as_bool(data.get("paid_out_of_band"), "paid_out_of_band"))
    sub = sub_of(inv)
    if not (out_of_band or data.get("payment_method") or (sub and has_payment_method(sub))):
        raise StripeError(
            400,
            "This customer has no attached payment source or default payment method.",
            code="invoice_no_customer_payment_method",
        )
    if inv["status"] == "draft":
        finalize(inv)
    mark_paid(inv, out_of_band=out_of_band)
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


def _open_invoice(request) -> dict:
    """The invoice of a test-only payment route, finalized if still a draft; must be open."""
    inv = get("invoice", request.match_info["id"])
    if inv["status"] not in ("draft", "open"):
        raise bad("invoice", f"The invoice is {inv['status']}; only an open invoice is payable")
    if inv["status"] == "draft":
        finalize(inv)
    return inv


@routes.post("/_test/invoices/{id}/pay")
async def pay_hosted(request):
    """Test-only: the customer pays the open invoice on its hosted page with a card."""
    inv = _open_invoice(request)
    mark_paid(inv, out_of_band=False)
    return respond(inv)


@routes.post("/_test/invoices/{id}/fail_payment")
async def fail_payment(request):
    """Test-only: a payment attempt on this open invoice fails (the subscription goes
    past_due, `invoice.payment_failed` is sent)."""
    inv = _open_invoice(request)
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
        items = [i for i in items if (sub_of(i) or {}).get("id") == data["subscription"]]
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
