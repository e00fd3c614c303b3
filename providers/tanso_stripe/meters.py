"""Usage reports as Stripe Billing Meter events.

One report is one meter event: ``event_name`` is the feature's meter, the payload
carries the Stripe customer and the value (a decimal string), ``identifier`` is the
core's deterministic key for this step of the customer's overage, and ``timestamp`` is
the one the core chose within Stripe's window (never ahead of real time, at most 35
days old). Stripe keeps identifiers unique over at least a rolling 24 h; its idempotency
keys replay the first answer for 24 h. A retry past the idempotency window can meet the
identifier again: Stripe then answers 400 "An event already exists with identifier …",
which means "recorded" — answered as a success, never as an error to retry.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from tanso_mcp.plugin import ExternalRef, ProviderError, UsageReport

if TYPE_CHECKING:
    from .provider import StripeProvider

# Stripe's v1 answer to a repeated identifier: 400 with this message and no error code
# (some API versions add the code); either way the usage is already recorded
DUPLICATE = "resource_already_exists"
DUPLICATE_MESSAGE = "already exists with identifier"
# meter id -> event name, per provider instance (a meter's event name never changes)
_EVENT_NAMES: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def already_recorded(exc: ProviderError) -> bool:
    return exc.code == DUPLICATE or (exc.status == 400 and DUPLICATE_MESSAGE in (exc.message or ""))


def meter_event_name(feature_key: str) -> str:
    """The meter event name of a feature whose meter tanso-mcp created."""
    return f"tanso_{feature_key}"


async def event_name_for(provider: StripeProvider, report: UsageReport) -> str:
    """The event name of the report's meter: read from Stripe once per meter (a meter
    found by an import keeps the event name it had), else derived from the feature."""
    if not report.external_meter_id:
        return meter_event_name(report.feature_key)
    names = _EVENT_NAMES.setdefault(provider, {})
    name = names.get(report.external_meter_id)
    if name is None:
        meter = await provider._call(
            lambda: provider.v1.billing.meters.retrieve_async(report.external_meter_id)
        )
        name = names[report.external_meter_id] = meter.event_name
    return name


async def send_meter_event(
    provider: StripeProvider,
    report: UsageReport,
    *,
    identifier: str,
    idempotency_key: str,
) -> ExternalRef:
    if not report.customer.external_id:
        raise ProviderError("the customer is not synced to Stripe yet", code="no_customer")
    params = {
        "event_name": await event_name_for(provider, report),
        "payload": {
            "stripe_customer_id": report.customer.external_id,
            "value": format(report.quantity.normalize(), "f"),
        },
        "identifier": identifier,
        "timestamp": int(report.occurred_at.timestamp()),
    }
    try:
        obj = await provider._call(
            lambda: provider.v1.billing.meter_events.create_async(
                params=params, options={"idempotency_key": idempotency_key[:255]}
            )
        )
    except ProviderError as exc:
        if already_recorded(exc):
            return ExternalRef(external_id=identifier, data={"alreadyRecorded": True})
        raise
    return ExternalRef(external_id=getattr(obj, "identifier", None) or identifier)
