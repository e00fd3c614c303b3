"""Billing Meters, meter events (identifier de-duplication, Stripe's timestamp window) and
meter event summaries."""

from __future__ import annotations

from decimal import Decimal

from aiohttp import web

from .core import (
    StripeError,
    as_decimal,
    as_int,
    bad,
    expire,
    get,
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

PAST_WINDOW = 35 * 86400
FUTURE_WINDOW = 300
IDENTIFIER_TTL = 24 * 3600  # Stripe promises uniqueness over at least a rolling 24 h


@routes.post("/v1/billing/meters")
async def create_meter(request):
    data = await params(request)
    event_name = req(data, "event_name")
    for other in table("billing.meter").values():
        if other["event_name"] == event_name and other["status"] == "active":
            raise bad(
                "event_name", f"An active meter with event_name `{event_name}` already exists."
            )
    agg = data.get("default_aggregation") or {}
    mapping = data.get("customer_mapping") or {}
    values = data.get("value_settings") or {}
    meter = {
        "id": new_id("mtr_test_"),
        "object": "billing.meter",
        "created": now(),
        "customer_mapping": {
            "event_payload_key": mapping.get("event_payload_key") or "stripe_customer_id",
            "type": one_of(mapping.get("type"), ("by_id",), "customer_mapping[type]", "by_id"),
        },
        "default_aggregation": {
            "formula": one_of(
                req(agg, "formula", "default_aggregation[formula]"),
                ("sum", "count", "last"),
                "default_aggregation[formula]",
            ),
        },
        "display_name": req(data, "display_name"),
        "event_name": event_name,
        "event_time_window": data.get("event_time_window") or None,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": now(),
        "value_settings": {"event_payload_key": values.get("event_payload_key") or "value"},
    }
    table("billing.meter")[meter["id"]] = meter
    return respond(meter)


@routes.get("/v1/billing/meters/{id}")
async def retrieve_meter(request):
    return respond(get("billing.meter", request.match_info["id"], "billing meter"))


@routes.post("/v1/billing/meters/{id}")
async def update_meter(request):
    meter = get("billing.meter", request.match_info["id"], "billing meter")
    data = await params(request)
    if data.get("display_name"):
        meter["display_name"] = data["display_name"]
        meter["updated"] = now()
    return respond(meter)


@routes.post("/v1/billing/meters/{id}/deactivate")
async def deactivate_meter(request):
    meter = get("billing.meter", request.match_info["id"], "billing meter")
    meter.update(status="inactive", updated=now(), status_transitions={"deactivated_at": now()})
    return respond(meter)


@routes.get("/v1/billing/meters")
async def list_meters(request):
    data = await params(request)
    items = list(table("billing.meter").values())
    if data.get("status"):
        items = [m for m in items if m["status"] == data["status"]]
    return respond(page("/v1/billing/meters", items, data))


@routes.post("/v1/billing/meter_events")
async def create_meter_event(request):
    data = await params(request)
    event_name = req(data, "event_name")
    payload = data.get("payload")
    if not isinstance(payload, dict) or not payload:
        raise bad("payload", "Missing required param: payload.", "parameter_missing")
    t = now()
    timestamp = as_int(data.get("timestamp"), "timestamp")
    timestamp = t if timestamp is None else timestamp
    if timestamp < t - PAST_WINDOW:
        raise bad(
            "timestamp",
            "Timestamp must be within the past 35 calendar days.",
            "timestamp_too_far_in_past",
        )
    if timestamp > t + FUTURE_WINDOW:
        raise bad(
            "timestamp",
            "Timestamp must not be more than 5 minutes in the future.",
            "timestamp_in_future",
        )
    meter = next(
        (
            m
            for m in table("billing.meter").values()
            if m["event_name"] == event_name and m["status"] == "active"
        ),
        None,
    )
    if meter is not None:
        value = payload.get(meter["value_settings"]["event_payload_key"])
        if (
            meter["default_aggregation"]["formula"] != "count"
            and as_decimal(value, f"payload[{meter['value_settings']['event_payload_key']}]")
            is None
        ):
            raise bad(
                f"payload[{meter['value_settings']['event_payload_key']}]",
                "The meter event payload is missing the value key.",
                "parameter_missing",
            )
        if not payload.get(meter["customer_mapping"]["event_payload_key"]):
            raise bad(
                f"payload[{meter['customer_mapping']['event_payload_key']}]",
                "The meter event payload is missing the customer key.",
                "parameter_missing",
            )
    st = state()
    expire(st.meter_event_ids, t - IDENTIFIER_TTL)
    identifier = data.get("identifier") or new_id("mev_")
    if identifier in st.meter_event_ids:
        # Stripe's v1 answer carries no error code: integrations recognise the message
        raise StripeError(
            400,
            f"An event already exists with identifier {identifier}.",
            headers={"Stripe-Should-Retry": "false"},
        )
    st.meter_event_ids[identifier] = t
    event = {
        "object": "billing.meter_event",
        "created": t,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": {k: str(v) for k, v in payload.items()},
        "timestamp": timestamp,
        "_invoice": None,  # set when a renewal invoice bills it
    }
    st.meter_events.append(event)
    return respond({k: v for k, v in event.items() if not k.startswith("_")})


def events_for(meter: dict, cus_id: str, start: int | None = None, end: int | None = None):
    key_c = meter["customer_mapping"]["event_payload_key"]
    return [
        e
        for e in state().meter_events
        if e["event_name"] == meter["event_name"]
        and e["payload"].get(key_c) == cus_id
        and (start is None or e["timestamp"] >= start)
        and (end is None or e["timestamp"] < end)
    ]


def aggregate(meter: dict, events: list[dict]) -> Decimal:
    formula = meter["default_aggregation"]["formula"]
    if formula == "count":
        return Decimal(len(events))
    values = [
        Decimal(e["payload"].get(meter["value_settings"]["event_payload_key"], "0"))
        for e in sorted(events, key=lambda e: (e["timestamp"], e["created"]))
    ]
    if formula == "last":
        return values[-1] if values else Decimal(0)
    return sum(values, Decimal(0))


def number(value: Decimal):
    return int(value) if value == value.to_integral() else float(value)


@routes.get("/v1/billing/meters/{id}/event_summaries")
async def event_summaries(request):
    meter = get("billing.meter", request.match_info["id"], "billing meter")
    data = await params(request)
    cus = req(data, "customer")
    start = as_int(req(data, "start_time"), "start_time")
    end = as_int(req(data, "end_time"), "end_time")
    for name, value in (("start_time", start), ("end_time", end)):
        if value % 60:
            raise bad(name, f"{name} must be aligned with minute boundaries.")
    if end <= start:
        raise bad("end_time", "end_time must be after start_time.")
    step = {None: end - start, "": end - start, "hour": 3600, "day": 86400}.get(
        data.get("value_grouping_window")
    )
    if step is None:
        raise bad("value_grouping_window", "Invalid value_grouping_window: must be hour or day")
    summaries = []
    for s in range(start, end, step):
        e = min(s + step, end)
        summaries.append(
            {
                "id": f"mtrusg_{meter['id']}_{cus}_{s}",
                "object": "billing.meter_event_summary",
                "aggregated_value": number(aggregate(meter, events_for(meter, cus, s, e))),
                "end_time": e,
                "livemode": False,
                "meter": meter["id"],
                "start_time": s,
            }
        )
    return respond(
        page(
            f"/v1/billing/meters/{meter['id']}/event_summaries", summaries, data, newest_first=False
        )
    )


@routes.get("/_test/billing/meters/{id}/totals")
async def totals(request):
    """Test-only: every event ever accepted for the meter, summed per customer (exact)."""
    meter = get("billing.meter", request.match_info["id"], "billing meter")
    key_c = meter["customer_mapping"]["event_payload_key"]
    customers = sorted(
        {
            e["payload"].get(key_c)
            for e in state().meter_events
            if e["event_name"] == meter["event_name"]
        }
        - {None}
    )
    return respond({c: str(aggregate(meter, events_for(meter, c))) for c in customers})


@routes.get("/_test/billing/meter_events")
async def all_meter_events(request):
    """Test-only: every accepted meter event, oldest first (optionally one `event_name`),
    with the invoice that billed it (`invoiced_by`: a subscription id, or null)."""
    data = await params(request)
    return respond(
        [
            {k: v for k, v in e.items() if not k.startswith("_")} | {"invoiced_by": e["_invoice"]}
            for e in state().meter_events
            if not data.get("event_name") or e["event_name"] == data["event_name"]
        ]
    )
