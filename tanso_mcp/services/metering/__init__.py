"""Metering: usage events (exactly once, group commit), usage counters, credit
consumption on the event path, entitlement checks served from an in-process cache, and
the usage lines of invoices (``services/usage.py``)."""

from .service import (
    Metering,
    check_entitlement,
    evaluate_entitlement,
    ingest_batch,
    ingest_event,
    list_entitlements,
    metering,
)

__all__ = [
    "Metering",
    "check_entitlement",
    "evaluate_entitlement",
    "ingest_batch",
    "ingest_event",
    "list_entitlements",
    "metering",
]
