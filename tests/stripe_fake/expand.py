"""`expand[]` on this package's responses (Stripe replaces an id with the object it names;
`data.x` reaches into list items), and /v1/events listed as Stripe lists them."""

from __future__ import annotations

from aiohttp import web
from localstripe import resources as ls

from . import subscriptions
from .core import as_int, page, params, respond, table
from .prices import export as export_price

routes = web.RouteTableDef()

_LOCALSTRIPE = {"cus_": "customer", "prod_": "product", "pm_": "payment_method"}
_OURS = {
    "price_": ("price", export_price),
    "in_": ("invoice", dict),
    "sub_": ("subscription", subscriptions.export),
    "mtr_": ("billing.meter", dict),
    "ii_": ("invoiceitem", dict),
    "cs_": ("checkout.session", dict),
}


def _lookup(obj_id: str):
    for prefix, kind in _LOCALSTRIPE.items():
        if obj_id.startswith(prefix):
            obj = ls.store.get(f"{kind}:{obj_id}")
            return obj._export() if obj is not None else None
    for prefix, (kind, export) in _OURS.items():
        if obj_id.startswith(prefix) and obj_id in table(kind):
            return {k: v for k, v in export(table(kind)[obj_id]).items() if not k.startswith("_")}
    return None


def expand(obj, path: str) -> None:
    if isinstance(obj, list):
        for item in obj:
            expand(item, path)
        return
    head, _, rest = path.partition(".")
    if not isinstance(obj, dict) or head not in obj:
        return
    if isinstance(obj[head], str):
        obj[head] = _lookup(obj[head]) or obj[head]
    if rest:
        expand(obj[head], rest)


@routes.get("/v1/events")
async def list_events(request):
    """Newest first, filtered by `type`, `types[]` and `created[gte|gt|lte|lt]`."""
    data = await params(request)
    events = [v._export() for k, v in ls.store.items() if k.startswith("event:")]
    types = set(data.get("types") or []) | ({data["type"]} if data.get("type") else set())
    if types:
        events = [e for e in events if e["type"] in types]
    created = data.get("created")
    if isinstance(created, dict):
        for op, test in (
            ("gte", int.__ge__),
            ("gt", int.__gt__),
            ("lte", int.__le__),
            ("lt", int.__lt__),
        ):
            bound = as_int(created.get(op), f"created[{op}]")
            if bound is not None:
                events = [e for e in events if test(e["created"], bound)]
    return respond(page("/v1/events", events, data))
