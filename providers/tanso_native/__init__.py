"""The native payment provider ("Tanso mode").

tanso-mcp itself is the billing system of record: it issues invoices on its own clock,
runs renewals and dunning, and records payments when someone marks an invoice paid
(bank transfer, enterprise invoicing, sandbox testing). There is nothing to call on the
outside, so every provider method answers ``None``.

Like every provider, this package imports only the public plugin API
(``tanso_mcp.plugin``), never the database or the services.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tanso_mcp.plugin import (
    CORE_INVOICING,
    MARK_PAID,
    MULTIPLE_SUBSCRIPTIONS,
    CustomerData,
    ExternalRef,
    PlanData,
    ProviderEvent,
    ProviderInfo,
    SubscriptionData,
    UsageReport,
    hookimpl,
)

NAME = "native"
CAPABILITIES = frozenset({CORE_INVOICING, MARK_PAID, MULTIPLE_SUBSCRIPTIONS})

INFO = ProviderInfo(
    name=NAME,
    title="Native billing (Tanso mode)",
    capabilities=CAPABILITIES,
    description="tanso-mcp issues invoices and runs renewals itself; payments are "
    "recorded with mark-paid.",
)


class NativeProvider:
    name = NAME
    capabilities = CAPABILITIES

    async def ensure_customer(
        self, customer: CustomerData, *, idempotency_key: str
    ) -> ExternalRef | None:
        return None

    async def sync_plan(self, plan: PlanData, *, idempotency_key: str) -> ExternalRef | None:
        return None

    async def create_checkout(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalRef | None:
        return None

    async def upsert_subscription(
        self, subscription: SubscriptionData, *, idempotency_key: str
    ) -> ExternalRef | None:
        return None

    async def cancel_subscription(
        self, subscription: SubscriptionData, *, immediate: bool, idempotency_key: str
    ) -> ExternalRef | None:
        return None

    async def report_usage(
        self, report: UsageReport, *, idempotency_key: str
    ) -> ExternalRef | None:
        return None

    async def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[ProviderEvent]:
        return []


@hookimpl(trylast=True)
def tanso_payment_providers() -> list[ProviderInfo]:
    return [INFO]


@hookimpl(trylast=True)
def tanso_make_payment_provider(name: str, config: dict[str, Any], ctx: Any):
    return NativeProvider() if name == NAME else None


@hookimpl
def tanso_plugin_info() -> dict[str, Any]:
    return {"name": "tanso_native", "description": "built-in native payment provider"}
