"""/v1/prices: licensed, metered (backed by a Billing Meter) and tiered prices, and the
amount a price charges for a quantity (per unit, graduated or volume tiers)."""

from __future__ import annotations

import copy
from decimal import ROUND_HALF_UP, Decimal

from aiohttp import web
from localstripe import resources as ls

from .core import (
    StripeError,
    as_bool,
    as_decimal,
    as_int,
    bad,
    expand_list,
    get,
    merge_metadata,
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

routes = web.RouteTableDef()


def _tiers(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise bad("tiers", "Missing required param: tiers.", "parameter_missing")
    tiers = []
    for i, t in enumerate(raw):
        up_to = t.get("up_to")
        if up_to == "inf":
            up_to = None
        else:
            up_to = as_int(up_to, f"tiers[{i}][up_to]")
            if up_to is None or up_to <= 0:
                raise bad(f"tiers[{i}][up_to]", "Each tier needs up_to (a positive integer or inf)")
        unit = as_decimal(
            t.get("unit_amount_decimal", t.get("unit_amount")), f"tiers[{i}][unit_amount]"
        )
        flat = as_decimal(
            t.get("flat_amount_decimal", t.get("flat_amount")), f"tiers[{i}][flat_amount]"
        )
        if unit is None and flat is None:
            raise bad(f"tiers[{i}]", "Each tier needs unit_amount or flat_amount")
        tiers.append(
            {
                "up_to": up_to,
                "unit_amount": int(unit)
                if unit is not None and unit == unit.to_integral()
                else None,
                "unit_amount_decimal": str(unit) if unit is not None else None,
                "flat_amount": int(flat)
                if flat is not None and flat == flat.to_integral()
                else None,
                "flat_amount_decimal": str(flat) if flat is not None else None,
            }
        )
    bounds = [t["up_to"] for t in tiers]
    if bounds[-1] is not None or None in bounds[:-1]:
        raise bad("tiers", "The last tier must have up_to=inf, and only the last one")
    if any(a >= b for a, b in zip(bounds[:-2], bounds[1:-1], strict=False)):
        raise bad("tiers", "Tier up_to values must increase")
    return tiers


def create_price(data: dict) -> dict:
    currency = str(req(data, "currency")).lower()
    product = data.get("product")
    if product:
        if ls.store.get(f"product:{product}") is None:
            raise bad("product", f"No such product: '{product}'", "resource_missing")
    elif isinstance(data.get("product_data"), dict):
        pd = data["product_data"]
        product = ls.Product(
            name=req(pd, "name", "product_data[name]"), metadata=pd.get("metadata") or {}
        ).id
    else:
        raise bad("product", "Missing required param: product.", "parameter_missing")

    recurring = None
    if isinstance(data.get("recurring"), dict):
        r = data["recurring"]
        usage_type = one_of(
            r.get("usage_type"), ("licensed", "metered"), "recurring[usage_type]", "licensed"
        )
        meter = r.get("meter") or None
        if usage_type == "metered":
            if not meter:
                raise bad(
                    "recurring[meter]",
                    "Metered prices must be backed by a meter: pass recurring[meter].",
                    "parameter_missing",
                )
            get("billing.meter", meter, "billing meter", "recurring[meter]")
        elif meter:
            raise bad("recurring[meter]", "A meter can only be set on a metered price")
        recurring = {
            "interval": one_of(
                req(r, "interval", "recurring[interval]"),
                ("day", "week", "month", "year"),
                "recurring[interval]",
            ),
            "interval_count": as_int(r.get("interval_count"), "recurring[interval_count]") or 1,
            "meter": meter,
            "trial_period_days": None,
            "usage_type": usage_type,
        }

    scheme = one_of(
        data.get("billing_scheme"), ("per_unit", "tiered"), "billing_scheme", "per_unit"
    )
    tiers = tiers_mode = None
    unit = None
    if scheme == "tiered":
        tiers_mode = one_of(req(data, "tiers_mode"), ("graduated", "volume"), "tiers_mode")
        tiers = _tiers(data.get("tiers"))
    else:
        unit = as_decimal(data.get("unit_amount_decimal", data.get("unit_amount")), "unit_amount")
        if unit is None:
            raise bad("unit_amount", "Missing required param: unit_amount.", "parameter_missing")
        if unit < 0:
            raise bad("unit_amount", "unit_amount must be >= 0")

    price = {
        "id": new_id("price_"),
        "object": "price",
        "active": as_bool(data.get("active"), "active") is not False,
        "billing_scheme": scheme,
        "created": now(),
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": data.get("lookup_key") or None,
        "metadata": merge_metadata({}, data.get("metadata")),
        "nickname": data.get("nickname") or None,
        "product": product,
        "recurring": recurring,
        "tax_behavior": data.get("tax_behavior") or "unspecified",
        "tiers_mode": tiers_mode,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": int(unit) if unit is not None and unit == unit.to_integral() else None,
        "unit_amount_decimal": str(unit) if unit is not None else None,
        "_tiers": tiers,  # Stripe only shows tiers when expanded
    }
    if price["lookup_key"]:
        for other in table("price").values():
            if other["lookup_key"] == price["lookup_key"]:
                if as_bool(data.get("transfer_lookup_key"), "transfer_lookup_key"):
                    other["lookup_key"] = None
                else:
                    raise bad(
                        "lookup_key", f"A price (`{other['id']}`) already uses that lookup key."
                    )
    table("price")[price["id"]] = price
    return price


def export(price: dict, expand: list[str] | tuple = ()) -> dict:
    out = {k: copy.deepcopy(v) for k, v in price.items() if not k.startswith("_")}
    if "tiers" in expand and price["_tiers"] is not None:
        out["tiers"] = copy.deepcopy(price["_tiers"])
    return out


def amount_for(price: dict, quantity: Decimal) -> int:
    """What `price` charges for `quantity` units, rounded to the currency's minor unit."""
    if price["billing_scheme"] == "per_unit":
        total = Decimal(price["unit_amount_decimal"]) * quantity
    else:
        total = Decimal(0)
        lower = Decimal(0)
        for tier in price["_tiers"]:
            upper = Decimal(tier["up_to"]) if tier["up_to"] is not None else None
            unit = Decimal(tier["unit_amount_decimal"] or 0)
            flat = Decimal(tier["flat_amount_decimal"] or 0)
            if price["tiers_mode"] == "volume":
                if upper is None or quantity <= upper:
                    total = unit * quantity + (flat if quantity > 0 else 0)
                    break
            else:
                in_tier = (min(quantity, upper) if upper is not None else quantity) - lower
                if in_tier <= 0:
                    break
                total += unit * in_tier + flat
                lower = upper if upper is not None else lower
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@routes.post("/v1/products")
async def create_product(request):
    """localstripe's product, plus `default_price_data` (the product's first price)."""
    data = await params(request)
    price_data = data.pop("default_price_data", None)
    events = len(state().outbox)
    product = ls.Product._api_create(**data)
    if isinstance(price_data, dict):
        try:
            product.default_price = create_price(price_data | {"product": product.id})["id"]
        except StripeError as exc:  # all or nothing
            del ls.store[f"product:{product.id}"]
            del state().outbox[events:]
            exc.body["error"]["param"] = f"default_price_data[{exc.body['error'].get('param')}]"
            raise
    return respond(product._export())


@routes.post("/v1/prices")
async def create(request):
    return respond(export(create_price(await params(request)), expand_list(request)))


@routes.get("/v1/prices/{id}")
async def retrieve(request):
    return respond(export(get("price", request.match_info["id"]), expand_list(request)))


@routes.post("/v1/prices/{id}")
async def update(request):
    price = get("price", request.match_info["id"])
    data = await params(request)
    if "active" in data:
        price["active"] = as_bool(data["active"], "active")
    for key in ("nickname", "lookup_key"):
        if key in data:
            price[key] = data[key] or None
    price["metadata"] = merge_metadata(price["metadata"], data.get("metadata"))
    return respond(export(price, expand_list(request)))


@routes.get("/v1/prices")
async def list_prices(request):
    data = await params(request)
    items = list(table("price").values())
    if data.get("product"):
        items = [p for p in items if p["product"] == data["product"]]
    if data.get("active") not in (None, ""):
        active = as_bool(data["active"], "active")
        items = [p for p in items if p["active"] == active]
    if data.get("type"):
        items = [p for p in items if p["type"] == data["type"]]
    if data.get("lookup_keys"):
        keys = set(data["lookup_keys"])
        items = [p for p in items if p["lookup_key"] in keys]
    out = page("/v1/prices", items, data)
    out["data"] = [export(table("price")[p["id"]], expand_list(request)) for p in out["data"]]
    return respond(out)
