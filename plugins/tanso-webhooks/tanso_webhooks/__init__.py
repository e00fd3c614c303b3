"""tanso-webhooks: signed outbound webhooks for tanso-mcp domain events.

Install it next to tanso-mcp (``pip install ./plugins/tanso-webhooks``); it registers
itself through the ``tanso_mcp`` entry-point group. Configure it in ``tanso.toml``::

    [plugins.webhooks]
    urls = ["https://example.com/hooks/tanso"]
    secret = "whsec_…"                       # shared with the receiver
    events = ["subscription.*", "invoice.paid"]   # optional, default every event

or with ``TANSO_WEBHOOKS_URLS`` (comma separated), ``TANSO_WEBHOOKS_SECRET`` and
``TANSO_WEBHOOKS_EVENTS``. Without URLs and a secret the plugin stays idle.

Every event is POSTed as JSON::

    {"id", "type", "createdAt", "accountId", "environmentId", "mode", "data": {...}}

with headers ``Tanso-Event`` (the type), ``Tanso-Event-Id`` and
``Tanso-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
Receivers check it with :func:`verify` (constant-time, with a replay tolerance).

Delivery happens after the database commit (the core calls ``tanso_domain_event`` only
then), in a background task, so a slow receiver never delays an API answer and no
network call ever runs inside a database transaction. Each delivery is tried up to
``max_attempts`` times with exponential backoff on network errors and non-2xx answers;
the ``Tanso-Event-Id`` header lets receivers drop the duplicates a retry can cause.

Nothing queued is lost when the server stops: on SIGTERM (``tanso_shutdown``) every
delivery still pending is stored in the core's outbox (a database table, through the
public plugin API), and whichever process runs next (``tanso_startup``) — this one after
a restart or another one sharing the database — delivers it; so do deliveries that
failed all their attempts, retried later with a growing delay.

This package imports only the public plugin API of tanso-mcp (``tanso_mcp.plugin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson

from tanso_mcp.plugin import DomainEvent, hookimpl, outbox_of

__version__ = "0.1.0"
__all__ = ["SIGNATURE_HEADER", "Config", "Dispatcher", "dispatcher_for", "sign", "verify"]

log = logging.getLogger("tanso_webhooks")

SIGNATURE_HEADER = "Tanso-Signature"
DEFAULT_TOLERANCE = 300
PLUGIN = "webhooks"  # this plugin's name in the outbox
OUTBOX_MAX_ATTEMPTS = 20


# --------------------------------------------------------------------------- signing


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Tanso-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Receiver side: is ``header`` a valid signature of ``body``, made at most
    ``tolerance`` seconds ago?"""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts.get("t", ""))
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    expected = sign(secret, ts, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    urls: tuple[str, ...]
    secret: str
    events: tuple[str, ...] = ("*",)
    timeout: float = 5.0
    max_attempts: int = 3
    backoff: float = 0.5

    def wants(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.events)


def _list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v).strip() for v in value if str(v).strip())


def load_config(ctx: Any) -> Config | None:
    """``[plugins.webhooks]`` of the settings, overridden by ``TANSO_WEBHOOKS_*``."""
    table: dict[str, Any] = {}
    settings = getattr(ctx, "settings", None)
    plugins = getattr(settings, "plugins", None) or {}
    if isinstance(plugins, dict):
        table.update(plugins.get("webhooks") or {})
    env = os.environ
    if env.get("TANSO_WEBHOOKS_URLS"):
        table["urls"] = env["TANSO_WEBHOOKS_URLS"]
    if env.get("TANSO_WEBHOOKS_SECRET"):
        table["secret"] = env["TANSO_WEBHOOKS_SECRET"]
    if env.get("TANSO_WEBHOOKS_EVENTS"):
        table["events"] = env["TANSO_WEBHOOKS_EVENTS"]
    urls, secret = _list(table.get("urls")), table.get("secret")
    if not urls or not secret:
        return None
    return Config(
        urls=urls,
        secret=str(secret),
        events=_list(table.get("events")) or ("*",),
        timeout=float(table.get("timeout", 5.0)),
        max_attempts=max(1, int(table.get("max_attempts", 3))),
        backoff=float(table.get("backoff", 0.5)),
    )


# --------------------------------------------------------------------------- delivery


def _json_default(v: Any) -> Any:
    if isinstance(v, Decimal):
        return orjson.Fragment(format(v, "f").encode())
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot send {type(v).__name__} in a webhook")


def event_body(event: DomainEvent) -> bytes:
    return orjson.dumps(
        {
            "id": event.id,
            "type": event.name,
            "createdAt": event.occurred_at,
            "accountId": event.account_id,
            "environmentId": event.environment_id,
            "mode": event.mode,
            "data": dict(event.payload),
        },
        default=_json_default,
        option=orjson.OPT_UTC_Z,
    )


@dataclass
class Delivery:
    url: str
    event_id: str
    event: str
    attempts: int
    status: int | None
    ok: bool
    error: str | None = None


@dataclass
class _Pending:
    """A delivery not yet acknowledged by its receiver."""

    url: str
    event_id: str
    event: str
    body: bytes
    attempts: int = 0

    @property
    def key(self) -> str:
        return f"{self.event_id}|{self.url}"

    def payload(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "eventId": self.event_id,
            "event": self.event,
            "body": self.body.decode(),
            "attempts": self.attempts,
        }

    @classmethod
    def from_payload(cls, data: Any) -> _Pending:
        return cls(
            str(data["url"]),
            str(data["eventId"]),
            str(data["event"]),
            str(data["body"]).encode(),
            int(data.get("attempts", 0)),
        )


@dataclass
class Dispatcher:
    """Sends deliveries in background tasks. ``transport`` lets tests (or embedders)
    route the HTTP calls; ``flush()`` waits for everything in flight.

    Nothing is dropped when the process stops: ``hand_over`` (the ``tanso_shutdown``
    hook) stores every delivery still pending in the core's outbox, and
    ``run_outbox`` (started by ``tanso_startup``) delivers what any earlier process
    handed over. A delivery that failed all its attempts goes to the outbox too when
    there is one, to be retried later with a growing delay."""

    transport: httpx.AsyncBaseTransport | None = None
    history: deque[Delivery] = field(default_factory=lambda: deque(maxlen=1000))
    outbox: Any = None
    _tasks: dict[asyncio.Task[None], _Pending] = field(default_factory=dict)
    _loop_task: asyncio.Task[None] | None = None
    _claimed: set[str] = field(default_factory=set)
    _closing: bool = False

    def submit(self, config: Config, event: DomainEvent) -> None:
        body = event_body(event)
        for url in config.urls:
            pending = _Pending(url, event.id, event.name, body)
            task = asyncio.get_running_loop().create_task(self._deliver(config, pending))
            self._tasks[task] = pending
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _attempt(self, cfg: Config, http: httpx.AsyncClient, p: _Pending) -> str | None:
        """One POST; ``None`` when the receiver acknowledged it, else the error."""
        p.attempts += 1
        headers = {
            "Content-Type": "application/json",
            "Tanso-Event": p.event,
            "Tanso-Event-Id": p.event_id,
            SIGNATURE_HEADER: sign(cfg.secret, int(time.time()), p.body),
            "User-Agent": f"tanso-webhooks/{__version__}",
        }
        try:
            r = await http.post(p.url, content=p.body, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if 200 <= r.status_code < 300:
            self.history.append(
                Delivery(p.url, p.event_id, p.event, p.attempts, r.status_code, True)
            )
            return None
        return f"HTTP {r.status_code}"

    async def _deliver(self, cfg: Config, p: _Pending) -> None:
        error: str | None = None
        async with httpx.AsyncClient(timeout=cfg.timeout, transport=self.transport) as http:
            for attempt in range(1, cfg.max_attempts + 1):
                error = await self._attempt(cfg, http, p)
                if error is None:
                    return
                if attempt < cfg.max_attempts:
                    await asyncio.sleep(cfg.backoff * 2 ** (attempt - 1))
        log.warning(
            "webhook %s to %s failed after %d attempts: %s", p.event, p.url, p.attempts, error
        )
        self.history.append(Delivery(p.url, p.event_id, p.event, p.attempts, None, False, error))
        if self.outbox is not None and not self._closing:
            try:
                await self.outbox.put(PLUGIN, {p.key: p.payload()})
            except Exception:
                log.exception("webhook %s to %s could not be kept for later", p.event, p.url)

    async def flush(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------ hand-over

    async def hand_over(self, grace: float = 1.0) -> int:
        """Shutdown: give deliveries in flight ``grace`` seconds, then store the rest in
        the outbox (receivers deduplicate by ``Tanso-Event-Id`` should one of them have
        arrived after all). Returns how many were handed over."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        left = dict(self._tasks)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if self.outbox is None:
            if left:
                log.warning("%d webhook deliveries dropped: no outbox", len(left))
            return 0
        items = {p.key: p.payload() for p in left.values()}
        if items:
            await self.outbox.put(PLUGIN, items)
            log.info("%d webhook deliveries handed to the outbox", len(items))
        for item_id in list(self._claimed):  # outbox entries being worked on: release
            await self.outbox.retry(item_id, delay_seconds=0)
        self._claimed.clear()
        return len(items)

    def start_outbox(self, cfg: Config, poll: float = 5.0) -> None:
        if self.outbox is not None and self._loop_task is None:
            self._closing = False
            self._loop_task = asyncio.get_running_loop().create_task(
                self.run_outbox(cfg, poll), name="tanso-webhooks-outbox"
            )

    async def run_outbox(self, cfg: Config, poll: float = 5.0) -> None:
        """Deliver what the outbox holds for this plugin, now and every ``poll`` seconds
        (another process sharing the database may hand work over at any time). Each
        claimed entry gets one attempt; a failure makes it due again after a delay that
        doubles up to an hour, and after ``OUTBOX_MAX_ATTEMPTS`` it is given up."""
        async with httpx.AsyncClient(timeout=cfg.timeout, transport=self.transport) as http:
            while True:
                try:
                    items = await self.outbox.claim(
                        PLUGIN, limit=100, lease_seconds=cfg.timeout * 2 + 30
                    )
                except Exception:
                    log.warning("webhook outbox unavailable; trying again in %.0f s", poll)
                    items = []
                for item in items:
                    self._claimed.add(item.id)
                    try:
                        await self._redeliver(cfg, http, item)
                    finally:
                        self._claimed.discard(item.id)
                if len(items) < 100:
                    await asyncio.sleep(poll)

    async def _redeliver(self, cfg: Config, http: httpx.AsyncClient, item: Any) -> None:
        p = _Pending.from_payload(item.payload)
        error = await self._attempt(cfg, http, p)
        if error is None:
            await self.outbox.done(item.id)
        elif item.attempts >= OUTBOX_MAX_ATTEMPTS:
            log.warning("webhook %s to %s given up: %s", p.event, p.url, error)
            self.history.append(
                Delivery(p.url, p.event_id, p.event, p.attempts, None, False, error)
            )
            await self.outbox.done(item.id)
        else:
            delay = min(3600.0, cfg.backoff * 2**item.attempts)
            await self.outbox.retry(item.id, delay_seconds=delay, error=error)


_DEFAULT = Dispatcher()


def dispatcher_for(ctx: Any) -> Dispatcher:
    """The dispatcher of an application context (one per context, so tests and
    embedded servers stay apart); set ``ctx.extras["tanso_webhooks"]`` to inject one.
    It uses the context's outbox when the core provides one."""
    extras = getattr(ctx, "extras", None)
    if isinstance(extras, dict):
        found = extras.get("tanso_webhooks")
        if found is None:
            found = extras["tanso_webhooks"] = Dispatcher()
        if found.outbox is None and "outbox" in extras:
            found.outbox = outbox_of(ctx)
        return found
    return _DEFAULT


# --------------------------------------------------------------------------- hooks


@hookimpl
def tanso_domain_event(event: DomainEvent, ctx: Any) -> None:
    config = load_config(ctx)
    if config is None or not config.wants(event.name):
        return None
    dispatcher_for(ctx).submit(config, event)
    return None


@hookimpl
def tanso_startup(ctx: Any) -> None:
    config = load_config(ctx)
    if config is not None:
        dispatcher_for(ctx).start_outbox(config)
    return None


@hookimpl
def tanso_shutdown(ctx: Any) -> Any:
    extras = getattr(ctx, "extras", None)
    dispatcher = extras.get("tanso_webhooks") if isinstance(extras, dict) else None
    if dispatcher is None:
        return None
    return dispatcher.hand_over()


@hookimpl
def tanso_plugin_info() -> dict[str, Any]:
    return {
        "name": "tanso-webhooks",
        "version": __version__,
        "description": "signed outbound webhooks (HMAC-SHA256) for domain events",
    }
