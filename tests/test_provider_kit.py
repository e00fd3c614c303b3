"""The provider author's kit (``tanso_mcp.plugin.testing``): the native provider passes
it through the pytest base class exactly as a third party would use it; a small
complete provider with a backend ("toypay", below) passes every check; and each check
catches the fault it exists for (I/O at construction, a key ignored, an outage reported
as success or as a stray exception, unsigned or tampered callbacks accepted)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import tanso_native

from tanso_mcp.plugin import (
    PROVIDER_INVOICING,
    USAGE_REPORTING,
    WEBHOOKS,
    ExternalRef,
    ProviderEvent,
    ProviderInfo,
    ProviderUnavailable,
    WebhookSignatureError,
    build_plugins,
)
from tanso_mcp.plugin.testing import (
    KitFailure,
    PaymentProviderContract,
    ProviderKit,
    WebhookSample,
    check_all,
    check_construction,
    check_idempotency,
    check_unknown_outcomes,
    check_webhooks,
)

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- native


class TestNativeProvider(PaymentProviderContract):
    """What a plugin's own suite writes: a fixture, and the inherited checks run."""

    @pytest.fixture
    def provider_kit(self) -> ProviderKit:
        plugins = build_plugins(load_entrypoints=False)
        return ProviderKit(
            make_provider=lambda: plugins.make_provider("native", {}, None),
            info=tanso_native.INFO,
        )


# --------------------------------------------------------------------------- toypay


class ToyBackend:
    """The fake of toypay's backend: objects, usage, idempotency keys, an outage switch."""

    SECRET = b"whsec_toy"

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.usage: list[tuple[str, Any]] = []
        self.replies: dict[str, ExternalRef] = {}
        self.up = True
        self.honour_keys = True

    def request(self, key: str, kind: str, payload: dict[str, Any]) -> ExternalRef:
        if not self.up:
            raise ConnectionError("backend unreachable")
        if self.honour_keys and key in self.replies:
            return self.replies[key]
        oid = f"{kind}_{len(self.objects) + len(self.usage) + 1}"
        if kind == "usage":
            self.usage.append((oid, payload))
        else:
            self.objects[oid] = payload
        ref = ExternalRef(oid, url=f"https://toy.example/{oid}" if kind == "checkout" else None)
        self.replies[key] = ref
        return ref

    def sign(self, body: bytes) -> dict[str, str]:
        return {"toy-signature": hmac.new(self.SECRET, body, hashlib.sha256).hexdigest()}


KINDS = {"payment.succeeded": "invoice.paid", "sub.ended": "subscription.deleted"}
TOY_CAPS = frozenset({PROVIDER_INVOICING, USAGE_REPORTING, WEBHOOKS})
TOY_INFO = ProviderInfo("toypay", "Toy pay", TOY_CAPS)


class ToyPay:
    """A complete provider in a few lines: what the kit expects of a real one."""

    name = "toypay"
    capabilities = TOY_CAPS

    def __init__(self, backend: ToyBackend) -> None:
        self.backend = backend

    async def _call(self, key: str, kind: str, payload: dict[str, Any]) -> ExternalRef:
        try:
            return self.backend.request(key, kind, payload)
        except ConnectionError as exc:
            raise ProviderUnavailable(str(exc)) from exc

    async def ensure_customer(self, customer, *, idempotency_key):
        return await self._call(idempotency_key, "customer", {"ref": customer.reference_id})

    async def sync_plan(self, plan, *, idempotency_key):
        return await self._call(idempotency_key, "plan", {"key": plan.key})

    async def create_checkout(self, subscription, *, idempotency_key):
        return await self._call(idempotency_key, "checkout", {})

    async def upsert_subscription(self, subscription, *, idempotency_key):
        return await self._call(idempotency_key, "sub", {"plan": subscription.plan.key})

    async def cancel_subscription(self, subscription, *, immediate, idempotency_key):
        return await self._call(idempotency_key, "cancel", {"sub": subscription.external_id})

    async def report_usage(self, report, *, idempotency_key):
        return await self._call(idempotency_key, "usage", {"units": str(report.quantity)})

    # a provider that invoices itself also starts checkouts, changes plans, …
    async def start_checkout(self, request, *, idempotency_key):
        return await self._call(idempotency_key, "checkout", {"plan": request.plan.key})

    async def change_plan(self, subscription, plan, *, prorate, idempotency_key):
        return await self._call(idempotency_key, "change", {"plan": plan.key})

    async def resume_subscription(self, subscription, *, idempotency_key):
        return await self._call(idempotency_key, "resume", {})

    async def mark_invoice_paid(self, invoice, *, idempotency_key):
        return await self._call(idempotency_key, "paid", {})

    async def create_webhook_endpoint(self, url, *, idempotency_key):
        return await self._call(idempotency_key, "endpoint", {"url": url})

    async def invoice_payment_url(self, invoice):
        return None

    async def retrieve(self, kind, external_id):
        return None

    async def list_products(self):
        return []

    async def list_customers(self):
        return []

    async def list_subscriptions(self):
        return []

    async def parse_webhook(self, headers: Mapping[str, str], body: bytes):
        expected = self.backend.sign(body)["toy-signature"]
        if not hmac.compare_digest(headers.get("toy-signature", ""), expected):
            raise WebhookSignatureError("bad signature")
        doc = json.loads(body)
        return [ProviderEvent(doc["id"], KINDS.get(doc["type"], "unknown"), data=doc)]


def toy_kit(backend: ToyBackend, make=None) -> ProviderKit:
    @asynccontextmanager
    async def outage():
        backend.up = False
        try:
            yield
        finally:
            backend.up = True

    async def effects() -> int:
        return len(backend.objects) + len(backend.usage)

    async def webhooks():
        out = []
        for i, (typ, kind) in enumerate(
            [
                ("payment.succeeded", "invoice.paid"),
                ("sub.ended", "subscription.deleted"),
                ("customer.renamed", "unknown"),
            ]
        ):
            body = json.dumps({"id": f"evt_{i}", "type": typ}).encode()
            out.append(WebhookSample(backend.sign(body), body, kind))
        return out

    return ProviderKit(
        make_provider=make or (lambda: ToyPay(backend)),
        info=TOY_INFO,
        effects=effects,
        outage=outage,
        webhooks=webhooks,
    )


class TestToyPay(PaymentProviderContract):
    @pytest.fixture
    def provider_kit(self) -> ProviderKit:
        return toy_kit(ToyBackend())


async def test_toypay_exercises_every_mutating_call():
    backend = ToyBackend()
    report = await check_all(toy_kit(backend))
    assert report["idempotency"] == [
        "ensure_customer",
        "sync_plan",
        "upsert_subscription",
        "report_usage",
        "cancel_subscription",
    ]
    assert report["unknown_outcomes"] == report["idempotency"]
    assert report["webhooks"] == 3
    assert len(backend.usage) == 2  # one report per check, never a second for a retry


# --------------------------------------------------------------------------- faults caught


def test_io_at_construction_is_caught():
    class Eager(ToyPay):
        def __init__(self, backend):
            super().__init__(backend)
            with socket.socket() as s:
                s.connect(("127.0.0.1", 9))

    with pytest.raises(KitFailure, match="did I/O"):
        check_construction(toy_kit(ToyBackend(), make=lambda: Eager(ToyBackend())))


def test_file_read_at_construction_is_caught(tmp_path):
    path = tmp_path / "key.txt"
    path.write_text("sk")

    class ReadsFile(ToyPay):
        def __init__(self, backend):
            super().__init__(backend)
            self.key = path.read_text()

    with pytest.raises(KitFailure, match="did I/O"):
        check_construction(toy_kit(ToyBackend(), make=lambda: ReadsFile(ToyBackend())))
    assert path.read_text() == "sk"  # open() is restored after the check


def test_inconsistent_description_is_caught():
    class Mislabelled(ToyPay):
        capabilities = frozenset({PROVIDER_INVOICING})

    with pytest.raises(KitFailure, match="disagree on capabilities"):
        check_construction(toy_kit(ToyBackend(), make=lambda: Mislabelled(ToyBackend())))


async def test_backend_without_probes_is_refused():
    kit = toy_kit(ToyBackend())
    kit.outage = None
    with pytest.raises(KitFailure, match="give the kit outage"):
        await check_unknown_outcomes(kit)


async def test_ignored_idempotency_key_is_caught():
    backend = ToyBackend()
    backend.honour_keys = False
    with pytest.raises(KitFailure, match="ensure_customer repeated with the same key"):
        await check_idempotency(toy_kit(backend))


async def test_outage_answered_as_success_is_caught():
    class Optimist(ToyPay):
        async def _call(self, key, kind, payload):
            try:
                return self.backend.request(key, kind, payload)
            except ConnectionError:
                return None  # pretends it worked

    backend = ToyBackend()
    with pytest.raises(KitFailure, match="must raise ProviderUnavailable"):
        await check_unknown_outcomes(toy_kit(backend, make=lambda: Optimist(backend)))


async def test_outage_as_stray_exception_is_caught():
    class Leaky(ToyPay):
        async def _call(self, key, kind, payload):
            return self.backend.request(key, kind, payload)  # ConnectionError escapes

    backend = ToyBackend()
    with pytest.raises(KitFailure, match="raised ConnectionError"):
        await check_unknown_outcomes(toy_kit(backend, make=lambda: Leaky(backend)))


async def test_unsigned_callback_accepted_is_caught():
    class Trusting(ToyPay):
        async def parse_webhook(self, headers, body):
            doc = json.loads(body)
            return [ProviderEvent(doc["id"], KINDS.get(doc["type"], "unknown"))]

    backend = ToyBackend()
    with pytest.raises(KitFailure, match="was accepted"):
        await check_webhooks(toy_kit(backend, make=lambda: Trusting(backend)))


async def test_unnormalised_kind_is_caught():
    class Raw(ToyPay):
        async def parse_webhook(self, headers, body):
            events = await super().parse_webhook(headers, body)
            return [ProviderEvent(e.event_id, "payment.succeeded") for e in events]

    backend = ToyBackend()
    with pytest.raises(KitFailure, match="not normalised"):
        await check_webhooks(toy_kit(backend, make=lambda: Raw(backend)))
