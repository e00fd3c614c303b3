"""The provider author's kit: behavioural checks every payment provider must pass.

A provider's own test suite runs these against its provider and a fake of its backend
(the kit never imports the core's database or services, and needs nothing from the
core but the public plugin API). The checks:

1. **Construction does no I/O** — building the provider (what the
   ``tanso_make_payment_provider`` hook does) opens no socket and no file, returns a
   :class:`~tanso_mcp.plugin.api.PaymentProvider` whose name and capabilities are
   consistent, with every method ``async`` and every mutating method taking an
   ``idempotency_key``.
2. **Same key, one effect** — every mutating call repeated with the same idempotency
   key (as the core does after a crash or a timeout, with the same data) answers the
   same external ids and leaves the backend as the first call left it.
3. **Unknown outcomes are reported as such** — while the backend cannot be reached,
   every mutating call raises :class:`~tanso_mcp.plugin.api.ProviderUnavailable` (never a
   success, never another exception), and the retry with the same key once the backend
   is back does the work exactly once. A provider that talks to a backend must give the
   kit a way to cut it off.
4. **Webhooks** — signed callbacks parse into normalised
   :class:`~tanso_mcp.plugin.api.ProviderEvent` s with stable event ids (a redelivery is
   recognisable), unknown types become ``unknown``, and a tampered body or a missing
   signature raises :class:`~tanso_mcp.plugin.api.WebhookSignatureError`. A provider
   without the ``webhooks`` capability turns any callback into no event.

Use it in two ways (``plugins/README.md`` has a worked example):

* plain async functions — ``check_construction(kit)``, ``await check_idempotency(kit)``,
  ``await check_unknown_outcomes(kit)``, ``await check_webhooks(kit)`` or
  ``await check_all(kit)`` — from any test runner;
* with pytest: subclass :class:`PaymentProviderContract` as ``TestMyProvider`` and
  define a ``provider_kit`` fixture returning a :class:`ProviderKit`.

A failed check raises :class:`KitFailure` naming the method and what was wrong.
"""

from __future__ import annotations

import builtins
import inspect
import io
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from .api import (
    ALL_CAPABILITIES,
    CHECKOUT,
    CORE_INVOICING,
    PROVIDER_INVOICING,
    USAGE_REPORTING,
    WEBHOOKS,
    CheckoutRequest,
    CustomerData,
    PaymentProvider,
    PlanData,
    ProviderEvent,
    ProviderInfo,
    ProviderUnavailable,
    SubscriptionData,
    UsageReport,
    WebhookSignatureError,
)

EVENT_KINDS = frozenset(
    {
        "checkout.completed",
        "invoice.created",
        "invoice.paid",
        "invoice.payment_failed",
        "subscription.updated",
        "subscription.deleted",
        "unknown",
    }
)
"""The normalised ``ProviderEvent.kind`` values."""

MUTATING = (
    "ensure_customer",
    "sync_plan",
    "create_checkout",
    "upsert_subscription",
    "cancel_subscription",
    "report_usage",
)
# the extra mutating methods of a provider that invoices itself (InvoicingProvider)
INVOICING_MUTATING = (
    "start_checkout",
    "change_plan",
    "resume_subscription",
    "mark_invoice_paid",
    "create_webhook_endpoint",
)
PROTOCOL_METHODS = (*MUTATING, "parse_webhook")
# capabilities that only make sense with an outside backend
EXTERNAL_CAPABILITIES = frozenset({PROVIDER_INVOICING, CHECKOUT, USAGE_REPORTING, WEBHOOKS})


class KitFailure(AssertionError):
    """A provider failed one of the kit's checks."""


@dataclass(frozen=True)
class WebhookSample:
    """One authentic callback as the backend would send it, and the kind it means."""

    headers: Mapping[str, str]
    body: bytes
    kind: str


Call = Callable[..., Awaitable[Any]]
"""``await call("method_name", *args, **kwargs)`` — runs a provider method under a check
(the check adds the ``idempotency_key``) and answers the provider's result."""

Scenario = Callable[[PaymentProvider, Call], Awaitable[None]]


@dataclass
class ProviderKit:
    """What a provider author gives the kit."""

    make_provider: Callable[[], PaymentProvider]
    """Builds the provider, as the ``tanso_make_payment_provider`` hook would."""
    info: ProviderInfo | None = None
    """The provider's description (``tanso_payment_providers``), checked against it."""
    effects: Callable[[], Awaitable[int]] | None = None
    """Counts what the backend holds (objects created, usage recorded…): the kit
    compares it before and after repeated calls. Required with a backend."""
    outage: Callable[[], AbstractAsyncContextManager[Any]] | None = None
    """An async context manager during which the backend cannot be reached (refused
    connections, a stopped fake server…). Required with a backend."""
    webhooks: Callable[[], Awaitable[Sequence[WebhookSample]]] | None = None
    """Signed sample callbacks (at least one of a kind the provider does not handle,
    expected as ``unknown``). Required with the ``webhooks`` capability."""
    scenario: Scenario | None = None
    """The mutating calls to check, in order (each through ``call``). Default:
    :func:`standard_scenario`."""
    now: Callable[[], datetime] | None = None
    """The time the default scenario's samples are set at (periods, usage); a backend
    that checks timestamps against its own clock needs its real time. Default:
    :data:`KIT_TIME`."""

    def run_scenario(self, provider: PaymentProvider, call: Call) -> Awaitable[None]:
        if self.scenario is not None:
            return self.scenario(provider, call)
        return standard_scenario(provider, call, at=self.now() if self.now else KIT_TIME)


# --------------------------------------------------------------------------- samples

KIT_TIME = datetime(2026, 1, 15, tzinfo=UTC)


def sample_customer() -> CustomerData:
    return CustomerData(
        customer_id="kit-customer-1", reference_id="kit_user_1", email="kit@example.com"
    )


def sample_plan() -> PlanData:
    return PlanData(
        plan_id="kit-plan-1",
        key="kit_pro",
        name="Kit Pro",
        price=Decimal("49.00"),
        currency="USD",
        interval_months=1,
        billing_timing="IN_ARREARS",
    )


async def standard_scenario(
    provider: PaymentProvider, call: Call, *, at: datetime = KIT_TIME
) -> None:
    """Customer → plan → (checkout) → subscription → (usage report) → cancel, each
    call fed the external ids the previous ones answered (a plan's price id is read
    from ``ExternalRef.data["price_id"]``)."""
    customer = sample_customer()
    ref = await call("ensure_customer", customer)
    if ref is not None:
        customer = replace(customer, external_id=ref.external_id)
    plan = sample_plan()
    ref = await call("sync_plan", plan)
    if ref is not None:
        plan = replace(
            plan, external_product_id=ref.external_id, external_price_id=ref.data.get("price_id")
        )
    sub = SubscriptionData(
        subscription_id="kit-subscription-1",
        customer=customer,
        plan=plan,
        period_start=at,
        period_end=at + timedelta(days=31),
    )
    if CHECKOUT in provider.capabilities:
        await call("create_checkout", sub)
        if hasattr(provider, "start_checkout"):  # providers that invoice themselves
            await call(
                "start_checkout",
                CheckoutRequest(
                    reference="kit-checkout-1",
                    customer=customer,
                    plan=plan,
                    success_url="https://example.com/paid",
                    cancel_url="https://example.com/cancelled",
                ),
            )
    ref = await call("upsert_subscription", sub)
    if ref is not None:
        sub = replace(sub, external_id=ref.external_id)
    await call(
        "report_usage",
        UsageReport(
            customer=customer,
            feature_key="kit_api_calls",
            quantity=Decimal(7),
            period_start=at,
            occurred_at=at - timedelta(minutes=1),
        ),
    )
    await call("cancel_subscription", sub, immediate=False)


# --------------------------------------------------------------------------- helpers


def _fail(message: str) -> KitFailure:
    return KitFailure(message)


@contextmanager
def no_io(what: str):
    """Any socket connection, DNS lookup or file open inside raises :class:`KitFailure`."""

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise _fail(f"{what} did I/O (network or file); connect lazily in async methods")

    saved = [
        (socket.socket, "connect", socket.socket.connect),
        (socket.socket, "connect_ex", socket.socket.connect_ex),
        (socket, "getaddrinfo", socket.getaddrinfo),
        (socket, "create_connection", socket.create_connection),
        (builtins, "open", builtins.open),
        (io, "open", io.open),
        (os, "open", os.open),
    ]
    for owner, name, _ in saved:
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _same(a: Any, b: Any) -> bool:
    """Two answers name the same external object (and page, for a checkout)."""
    if a is None or b is None:
        return a is b
    return a.external_id == b.external_id and getattr(a, "url", None) == getattr(b, "url", None)


async def _close(provider: PaymentProvider) -> None:
    """Release the provider's connections (``aclose``), when it has any."""
    aclose = getattr(provider, "aclose", None)
    if aclose is not None:
        await aclose()


def _has_backend(provider: PaymentProvider) -> bool:
    return bool(provider.capabilities & EXTERNAL_CAPABILITIES)


async def _count(kit: ProviderKit) -> int | None:
    return None if kit.effects is None else await kit.effects()


def _require_backend_hooks(kit: ProviderKit, provider: PaymentProvider) -> None:
    if not _has_backend(provider):
        return
    missing = [n for n in ("effects", "outage") if getattr(kit, n) is None]
    if missing:
        raise _fail(
            f"provider {provider.name!r} talks to a backend (capabilities "
            f"{sorted(provider.capabilities & EXTERNAL_CAPABILITIES)}): give the kit "
            f"{' and '.join(missing)} so its calls can be checked"
        )


# --------------------------------------------------------------------------- checks


def check_construction(kit: ProviderKit) -> PaymentProvider:
    """Check 1: construction does no I/O and yields a consistent provider."""
    with no_io("building the provider"):
        provider = kit.make_provider()
    if inspect.isawaitable(provider):
        raise _fail("make_provider returned an awaitable: building a provider is synchronous")
    if not isinstance(provider, PaymentProvider):
        raise _fail(f"{type(provider).__name__} does not implement PaymentProvider")
    if not isinstance(provider.name, str) or not provider.name:
        raise _fail("the provider has no name")
    caps = provider.capabilities
    if not isinstance(caps, frozenset) or not caps <= ALL_CAPABILITIES:
        raise _fail(f"capabilities must be a frozenset of {sorted(ALL_CAPABILITIES)}: {caps!r}")
    if (CORE_INVOICING in caps) == (PROVIDER_INVOICING in caps):
        raise _fail("exactly one of core_invoicing and provider_invoicing says who invoices")
    if kit.info is not None:
        if kit.info.name != provider.name:
            raise _fail(f"ProviderInfo names {kit.info.name!r}, the provider {provider.name!r}")
        if kit.info.capabilities != caps:
            raise _fail("ProviderInfo and the provider disagree on capabilities")
    names = list(PROTOCOL_METHODS)
    if PROVIDER_INVOICING in caps:
        missing = [n for n in INVOICING_MUTATING if not hasattr(provider, n)]
        if missing:
            raise _fail(f"a provider_invoicing provider needs {', '.join(missing)}")
        names += INVOICING_MUTATING
    for name in names:
        method = getattr(provider, name)
        if not inspect.iscoroutinefunction(method):
            raise _fail(f"{name} must be an async method")
        if (
            name not in ("parse_webhook",)
            and "idempotency_key" not in inspect.signature(method).parameters
        ):
            raise _fail(f"{name} must take an idempotency_key")
    return provider


async def check_idempotency(kit: ProviderKit) -> list[str]:
    """Check 2: each mutating call, repeated with the same key, answers the same and
    adds nothing to the backend. Returns the methods exercised."""
    provider = check_construction(kit)
    _require_backend_hooks(kit, provider)
    done: list[str] = []

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        key = f"kit-{method}-{len(done)}"
        fn = getattr(provider, method)
        first = await fn(*args, idempotency_key=key, **kwargs)
        after_first = await _count(kit)
        again = await fn(*args, idempotency_key=key, **kwargs)
        after_again = await _count(kit)
        if not _same(first, again):
            raise _fail(f"{method} repeated with the same key answered {again!r}, first {first!r}")
        if after_first != after_again:
            raise _fail(
                f"{method} repeated with the same key changed the backend again "
                f"({after_first} -> {after_again})"
            )
        if first is not None and not isinstance(getattr(first, "external_id", None), str):
            raise _fail(f"{method} must answer None or an object with an external_id: {first!r}")
        done.append(method)
        return first

    try:
        await kit.run_scenario(provider, call)
    finally:
        await _close(provider)
    return done


async def check_unknown_outcomes(kit: ProviderKit) -> list[str]:
    """Check 3: with the backend unreachable every mutating call raises
    ``ProviderUnavailable``; once it is back, the retry with the same key works, once."""
    provider = check_construction(kit)
    _require_backend_hooks(kit, provider)
    if not _has_backend(provider):
        return []  # nothing outside the core can fail: every call answers locally
    outage = kit.outage
    assert outage is not None
    done: list[str] = []

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        key = f"kit-unknown-{method}-{len(done)}"
        fn = getattr(provider, method)
        before = await _count(kit)
        answered: Any = _NOTHING
        async with outage():
            try:
                answered = await fn(*args, idempotency_key=key, **kwargs)
            except ProviderUnavailable:
                pass
            except Exception as exc:
                raise _fail(
                    f"{method} with the backend unreachable raised {type(exc).__name__}: "
                    f"{exc}; it must raise ProviderUnavailable"
                ) from exc
        if await _count(kit) != before:
            raise _fail(f"{method} changed the backend while it was unreachable")
        result = await fn(*args, idempotency_key=key, **kwargs)
        after = await _count(kit)
        if answered is not _NOTHING and (
            answered is not None or result is not None or after != before
        ):
            # only a call with nothing to do outside (None, no effect, either way) may
            # answer while the backend is unreachable
            raise _fail(
                f"{method} with the backend unreachable answered {answered!r}; "
                "it must raise ProviderUnavailable"
            )
        again = await fn(*args, idempotency_key=key, **kwargs)
        if await _count(kit) != after or not _same(result, again):
            raise _fail(f"{method} retried with the same key after an outage acted twice")
        done.append(method)
        return result

    try:
        await kit.run_scenario(provider, call)
    finally:
        await _close(provider)
    return done


_NOTHING = object()


def _tamper(body: bytes) -> bytes:
    # still well-formed (trailing whitespace), so only the signature can tell
    return body + b" "


async def check_webhooks(kit: ProviderKit) -> int:
    """Check 4: callbacks parse into normalised events, are authenticated, and unknown
    types are recognisable. Returns the number of samples checked."""
    provider = check_construction(kit)
    try:
        return await _check_webhooks(kit, provider)
    finally:
        await _close(provider)


async def _check_webhooks(kit: ProviderKit, provider: PaymentProvider) -> int:
    if WEBHOOKS not in provider.capabilities:
        for body in (b"", b"{}", b'{"type": "invoice.paid", "id": "evt_1"}'):
            try:
                events = await provider.parse_webhook({}, body)
            except WebhookSignatureError:
                continue
            if events:
                raise _fail("a provider without the webhooks capability produced events")
        return 0
    if kit.webhooks is None:
        raise _fail("a provider with the webhooks capability must give the kit signed samples")
    samples = list(await kit.webhooks())
    if not samples:
        raise _fail("no webhook samples")
    if not any(s.kind == "unknown" for s in samples):
        raise _fail("give at least one sample of a type the provider does not handle")
    for sample in samples:
        if sample.kind not in EVENT_KINDS:
            raise _fail(f"sample kind {sample.kind!r} is not one of {sorted(EVENT_KINDS)}")
        events = await provider.parse_webhook(dict(sample.headers), sample.body)
        if not events or not all(isinstance(e, ProviderEvent) for e in events):
            raise _fail(f"a {sample.kind} callback parsed into {events!r}")
        for event in events:
            if event.kind not in EVENT_KINDS:
                raise _fail(f"event kind {event.kind!r} is not normalised")
            if not isinstance(event.event_id, str) or not event.event_id:
                raise _fail("every event needs its backend's event id (for de-duplication)")
        if [e.kind for e in events] != [sample.kind] * len(events):
            raise _fail(f"expected {sample.kind}, parsed {[e.kind for e in events]}")
        again = await provider.parse_webhook(dict(sample.headers), sample.body)
        if [e.event_id for e in again] != [e.event_id for e in events]:
            raise _fail("a redelivered callback must carry the same event ids")
        for label, headers, body in (
            ("a tampered body", dict(sample.headers), _tamper(sample.body)),
            ("no signature", {}, sample.body),
        ):
            try:
                parsed = await provider.parse_webhook(headers, body)
            except WebhookSignatureError:
                continue
            except Exception as exc:
                raise _fail(
                    f"a callback with {label} raised {type(exc).__name__}; "
                    "it must raise WebhookSignatureError"
                ) from exc
            raise _fail(f"a callback with {label} was accepted: {parsed!r}")
    return len(samples)


async def check_all(kit: ProviderKit) -> dict[str, Any]:
    """Every check, in order; answers what each exercised."""
    check_construction(kit)
    return {
        "idempotency": await check_idempotency(kit),
        "unknown_outcomes": await check_unknown_outcomes(kit),
        "webhooks": await check_webhooks(kit),
    }


# --------------------------------------------------------------------------- pytest


try:  # the base class is for pytest users; the functions above need nothing
    import pytest as _pytest
except ImportError:  # pragma: no cover - pytest is a test dependency
    _pytest = None  # type: ignore[assignment]


class PaymentProviderContract:
    """Base test class: ``class TestMyProvider(PaymentProviderContract)`` with a
    ``provider_kit`` fixture answering a :class:`ProviderKit`. Its async tests run under
    anyio's pytest plugin (installed with tanso-mcp)."""

    if _pytest is not None:
        pytestmark = _pytest.mark.anyio

    async def test_construction_does_no_io(self, provider_kit: ProviderKit) -> None:
        # async like the others, so ``provider_kit`` may be an async fixture
        check_construction(provider_kit)

    async def test_same_key_one_effect(self, provider_kit: ProviderKit) -> None:
        assert await check_idempotency(provider_kit)

    async def test_unknown_outcomes_reported(self, provider_kit: ProviderKit) -> None:
        await check_unknown_outcomes(provider_kit)

    async def test_webhooks_normalised(self, provider_kit: ProviderKit) -> None:
        await check_webhooks(provider_kit)


__all__ = [
    "EVENT_KINDS",
    "KIT_TIME",
    "Call",
    "KitFailure",
    "PaymentProviderContract",
    "ProviderKit",
    "Scenario",
    "WebhookSample",
    "check_all",
    "check_construction",
    "check_idempotency",
    "check_unknown_outcomes",
    "check_webhooks",
    "no_io",
    "sample_customer",
    "sample_plan",
    "standard_scenario",
]
