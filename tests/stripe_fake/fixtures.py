"""pytest fixtures for the fake Stripe.

`stripe_fake_server` (session scope) starts one server process; `stripe_fake` (per test)
resets its state, restarts it if a test left it stopped, and gives the `StripeFake`
handle: base URL, API key, an SDK client, and the test-only controls (complete a
checkout, end a period, fail a payment, hold / release / redeliver webhooks, outage)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import stripe

REPO = Path(__file__).resolve().parents[2]


class StripeFake:
    """A fake Stripe server process on 127.0.0.1. The port stays the same across restarts."""

    def __init__(
        self, workdir: Path, api_key: str = "sk_test_fake_4242424242424242", persist: bool = True
    ):
        self.api_key = api_key
        # saved after every write, so a restart keeps the state; without it, a restart is
        # a fresh Stripe account (and writes are a little faster)
        self.state_file = workdir / "stripe-fake.pickle" if persist else None
        self.log_file = workdir / "stripe-fake.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- process control (an outage is stop() then start(): the state survives) ---

    def start(self) -> None:
        if self.running:
            return
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.stripe_fake.server",
                "--port",
                str(self.port),
                "--api-key",
                self.api_key,
                *(["--state-file", str(self.state_file)] if self.state_file else []),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            env=os.environ | {"PYTHONWARNINGS": ""},
        )
        log.close()
        line = self.proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            self.stop(crash=True)
            raise RuntimeError(f"fake Stripe did not start: {line!r}; see {self.log_file}")
        self.port = int(line.split()[1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.base_url}/_test/health", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"fake Stripe not answering; see {self.log_file}")

    def stop(self, *, crash: bool = False) -> None:
        """Stop the server: gracefully, or with SIGKILL (`crash=True`)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextmanager
    def outage(self, *, crash: bool = True) -> Iterator[None]:
        """`with fake.outage(): ...` — Stripe is unreachable inside the block, back after."""
        self.stop(crash=crash)
        try:
            yield
        finally:
            self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- clients ---

    def client(
        self, api_key: str | None = None, http_client: stripe.HTTPXClient | None = None
    ) -> stripe.StripeClient:
        """The real SDK, async, pointed at the fake (use the `*_async` methods). Close the
        HTTPXClient you pass (`await http_client.close_async()`). Without one, the client
        keeps no idle connection, so a client nobody closes leaks no socket."""
        if http_client is None:
            http_client = stripe.HTTPXClient()
            http_client._client_async = httpx.AsyncClient(
                limits=httpx.Limits(max_keepalive_connections=0)
            )
        return stripe.StripeClient(
            api_key or self.api_key,
            base_addresses={"api": self.base_url},
            http_client=http_client,
            max_network_retries=0,
        )

    async def _call(self, method: str, path: str, json: dict | None = None):
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as http:
            response = await http.request(method, path, json=json)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/_test/reset", timeout=10).raise_for_status()

    # --- test-only controls ---

    async def complete_checkout(self, session_id: str) -> dict:
        """The customer pays on the hosted page: Stripe creates the subscription and its
        paid invoice and sends the events. Returns the completed session."""
        return await self._call("POST", f"/_test/checkout/sessions/{session_id}/complete")

    async def end_period(
        self, subscription_id: str, *, fail: bool = False, pay: bool | None = None
    ) -> dict | None:
        """End the current period now: the renewal invoice (licensed items for the new
        period, metered usage, pending prorations) is created and collected as Stripe does:
        charged to the card (`charge_automatically`; the fake's cards always work) or left
        open for the customer (`send_invoice`). `fail=True`: the payment attempt fails;
        `pay=True`: paid whatever the collection method; `pay=False`: left open. Returns
        the invoice (None when a cancel-at-period-end subscription ends with nothing to bill)."""
        body = {"fail": fail} | ({} if pay is None else {"pay": pay})
        return await self._call("POST", f"/_test/subscriptions/{subscription_id}/end_period", body)

    async def pay_invoice_hosted(self, invoice_id: str) -> dict:
        """The customer pays an open invoice on its hosted page (`invoice.paid`)."""
        return await self._call("POST", f"/_test/invoices/{invoice_id}/pay")

    async def fail_payment(self, invoice_id: str) -> dict:
        """A payment attempt on an open invoice fails (`invoice.payment_failed`, past_due)."""
        return await self._call("POST", f"/_test/invoices/{invoice_id}/fail_payment")

    async def hold_webhooks(self) -> None:
        """From now on events are queued, not sent, until `release_webhooks`."""
        await self._call("POST", "/_test/webhooks/mode", {"mode": "hold"})

    async def deliver_webhooks_now(self) -> None:
        """Default mode: events are sent before the API call that caused them answers."""
        await self._call("POST", "/_test/webhooks/mode", {"mode": "sync"})

    async def deliver_webhooks_async(self) -> None:
        """Events are sent in order right after the API call answers, as Stripe does;
        `await drain_webhooks()` waits until all are sent."""
        await self._call("POST", "/_test/webhooks/mode", {"mode": "async"})

    async def drain_webhooks(self) -> None:
        await self._call("POST", "/_test/webhooks/drain")

    async def fail_next(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        type: str = "api_error",
        message: str | None = None,
        code: str | None = None,
        count: int = 1,
    ) -> None:
        """The next `count` `method` requests whose path starts with `path` answer `status`
        with a Stripe error of `type`, and change nothing. As Stripe does, a 5xx (or 402)
        answer is saved under the request's Idempotency-Key: a retry with the same key gets
        the same error for 24 h; only a new key executes again."""
        await self._call(
            "POST",
            "/_test/faults",
            {
                "method": method,
                "path": path,
                "status": status,
                "type": type,
                "message": message,
                "code": code,
                "count": count,
                "mode": "error",
            },
        )

    async def drop_next(self, method: str, path: str, *, count: int = 1) -> None:
        """The next `count` matching requests take effect, but the connection closes before
        the answer: the client sees a network error (an unknown outcome)."""
        await self._call(
            "POST",
            "/_test/faults",
            {"method": method, "path": path, "count": count, "mode": "drop"},
        )

    async def set_rate_limit(self, per_second: int | None) -> None:
        """Answer 429 (`stripe.RateLimitError`) past `per_second` /v1 requests in any second,
        as Stripe does (25/s in test mode); None lifts the limit."""
        await self._call("POST", "/_test/rate_limit", {"per_second": per_second})

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/_test/faults")

    async def held_events(self) -> list[dict]:
        """Queued events, oldest first: [{id, type, created, object_id}]."""
        return await self._call("GET", "/_test/webhooks/held")

    async def release_webhooks(self, order: list[str] | None = None) -> list[dict]:
        """Send held events, in the given order of event ids (default: all, oldest first).
        Returns one delivery record per (event, endpoint)."""
        body = {} if order is None else {"order": order}
        return await self._call("POST", "/_test/webhooks/release", body)

    async def redeliver(self, event_id: str) -> list[dict]:
        """Send an event again: same id, same bytes, fresh signature."""
        return await self._call("POST", "/_test/webhooks/redeliver", {"event": event_id})

    async def retry_failed_webhooks(self) -> list[dict]:
        """Resend every event whose last delivery attempt failed (Stripe's retries)."""
        return await self._call("POST", "/_test/webhooks/retry_failed")

    async def deliveries(self) -> list[dict]:
        """Every delivery attempt: {event, type, endpoint, url, status, ok, at[, error]}."""
        return await self._call("GET", "/_test/webhooks/deliveries")

    async def events(self, type: str | None = None) -> list[dict]:
        """Every event so far, oldest first: [{id, type, created, object_id}]."""
        events = await self._call("GET", "/_test/events")
        return [e for e in events if type is None or e["type"] == type]

    async def signed_event(self, event_id: str) -> list[dict]:
        """What would be POSTed for an event, per matching endpoint:
        [{endpoint, url, payload (str), headers}] — for delivering to an in-process app."""
        return await self._call("GET", f"/_test/events/{event_id}/signed")

    async def meter_totals(self, meter_id: str) -> dict[str, Decimal]:
        """Every accepted meter event of a meter, aggregated per customer id."""
        raw = await self._call("GET", f"/_test/billing/meters/{meter_id}/totals")
        return {cus: Decimal(v) for cus, v in raw.items()}

    async def meter_events(self, event_name: str | None = None) -> list[dict]:
        """Every accepted meter event, oldest first: {event_name, identifier, payload,
        timestamp, created, invoiced_by}."""
        path = "/_test/billing/meter_events"
        return await self._call("GET", path + (f"?event_name={event_name}" if event_name else ""))

    async def meter_total(self, meter_id: str, customer_id: str) -> Decimal:
        return (await self.meter_totals(meter_id)).get(customer_id, Decimal(0))


@pytest.fixture(scope="session")
def stripe_fake_server(tmp_path_factory) -> Iterator[StripeFake]:
    fake = StripeFake(tmp_path_factory.mktemp("stripe-fake"))
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def stripe_fake(stripe_fake_server: StripeFake) -> StripeFake:
    """A running fake Stripe with no objects, no events, webhooks delivered synchronously."""
    stripe_fake_server.start()
    stripe_fake_server.reset()
    return stripe_fake_server


@pytest.fixture
async def stripe_client(stripe_fake: StripeFake) -> AsyncIterator[stripe.StripeClient]:
    """The stripe SDK's async client on the fake, closed after the test."""
    http = stripe.HTTPXClient()
    yield stripe_fake.client(http_client=http)
    await http.close_async()


class WebhookReceiver:
    """A loopback HTTP server (in a thread) recording the webhooks POSTed to it.
    `status` is what it answers (set 500 to make deliveries fail)."""

    def __init__(self):
        import http.server
        import threading

        receiver = self
        self.received: list[tuple[dict, bytes]] = []
        self.status = 200
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhook"

    def events(self, secret: str) -> list[stripe.Event]:
        """Received events, each verified with the endpoint's signing secret."""
        with self._lock:
            received = list(self.received)
        return [
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret)
            for headers, body in received
        ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
