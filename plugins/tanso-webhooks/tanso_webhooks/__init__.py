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

This package imports only the public plugin API of tanso-mcp (``tanso_mcp.plugin``).
"""

from __future__ import annotations

import asyncio
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

from tanso_mcp.plugin import DomainEvent, hookimpl

__version__ = "0.1.0"
__all__ = ["SIGNATURE_HEADER", "Config", "Dispatcher", "dispatcher_for", "sign", "verify"]

log = logging.getLogger("tanso_webhooks")

SIGNATURE_HEADER = "Tanso-Signature"
DEFAULT_TOLERANCE = 300


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
class Dispatcher:
    """Sends deliveries in background tasks. ``transport`` lets tests (or embedders)
    route the HTTP calls; ``flush()`` waits for everything in flight."""

    transport: httpx.AsyncBaseTransport | None = None
    history: deque[Delivery] = field(default_factory=lambda: deque(maxlen=1000))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def submit(self, config: Config, event: DomainEvent) -> None:
        body = event_body(event)
        for url in config.urls:
            task = asyncio.get_running_loop().create_task(self._deliver(config, url, event, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, cfg: Config, url: str, event: DomainEvent, body: bytes) -> None:
        status: int | None = None
        error: str | None = None
        attempt = 0
        async with httpx.AsyncClient(timeout=cfg.timeout, transport=self.transport) as http:
            for attempt in range(1, cfg.max_attempts + 1):
                headers = {
                    "Content-Type": "application/json",
                    "Tanso-Event": event.name,
                    "Tanso-Event-Id": event.id,
                    SIGNATURE_HEADER: sign(cfg.secret, int(time.time()), body),
                    "User-Agent": f"tanso-webhooks/{__version__}",
                }
                try:
                    r = await http.post(url, content=body, headers=headers)
                    status, error = r.status_code, None
                    if 200 <= r.status_code < 300:
                        self.history.append(
                            Delivery(url, event.id, event.name, attempt, status, True)
                        )
                        return
                    error = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                if attempt < cfg.max_attempts:
                    await asyncio.sleep(cfg.backoff * 2 ** (attempt - 1))
        log.warning(
            "webhook %s to %s failed after %d attempts: %s", event.name, url, attempt, error
        )
        self.history.append(Delivery(url, event.id, event.name, attempt, status, False, error))

    async def flush(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


_DEFAULT = Dispatcher()


def dispatcher_for(ctx: Any) -> Dispatcher:
    """The dispatcher of an application context (one per context, so tests and
    embedded servers stay apart); set ``ctx.extras["tanso_webhooks"]`` to inject one."""
    extras = getattr(ctx, "extras", None)
    if isinstance(extras, dict):
        found = extras.get("tanso_webhooks")
        if found is None:
            found = extras["tanso_webhooks"] = Dispatcher()
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
def tanso_plugin_info() -> dict[str, Any]:
    return {
        "name": "tanso-webhooks",
        "version": __version__,
        "description": "signed outbound webhooks (HMAC-SHA256) for domain events",
    }
