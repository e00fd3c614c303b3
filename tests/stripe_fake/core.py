"""Shared machinery of the fake Stripe: state, ids, errors, request parsing, lists, events.

Every object this package adds is kept as the JSON dict Stripe would return, inside one
`FakeState` held in localstripe's store, so one pickle of the store is the whole fake's
state and localstripe's `DELETE /_config/data` resets it too."""

from __future__ import annotations

import copy
import json
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web
from localstripe import resources as ls
from localstripe.server import get_post_data, unflatten_data

API_VERSION = "2026-10-28.endive"
STATE_KEY = "fake:state"


@dataclass
class FakeState:
    # kind ("price", "billing.meter", "subscription", ...) -> id -> Stripe JSON object
    objects: dict[str, dict[str, dict]] = field(default_factory=dict)
    meter_events: list[dict] = field(default_factory=list)
    meter_event_ids: dict[str, int] = field(default_factory=dict)  # identifier -> created
    idempotency: dict[str, dict] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)  # customer -> balance (<0 = credit)
    # "sync": sent before the API call answers; "async": sent in order right after it answers;
    # "hold": queued until a test releases them
    webhook_mode: str = "sync"
    held: list[str] = field(default_factory=list)  # event ids waiting to be released
    queue: list[str] = field(default_factory=list)  # event ids waiting for async delivery
    faults: list[dict] = field(default_factory=list)  # injected failures, see /_test/faults
    rate_limit: int | None = None  # requests per second before a 429
    deliveries: list[dict] = field(default_factory=list)
    outbox: list[str] = field(default_factory=list)  # events of the request being handled


def state() -> FakeState:
    st = ls.store.get(STATE_KEY)
    if st is None:
        st = FakeState()
        dict.__setitem__(ls.store, STATE_KEY, st)
    return st


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def expire(entries: dict, cutoff: int, at=lambda v: v) -> None:
    """Drop entries older than `cutoff` from a dict filled in time order (oldest first)."""
    old = []
    for key, value in entries.items():
        if at(value) >= cutoff:
            break
        old.append(key)
    for key in old:
        del entries[key]


def table(kind: str) -> dict[str, dict]:
    return state().objects.setdefault(kind, {})


class StripeError(Exception):
    """An error answered in Stripe's shape: {"error": {type, message, code, param}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.body = {"error": {"type": type_, "message": message}}
        if param:
            self.body["error"]["param"] = param
        if code:
            self.body["error"]["code"] = code


def missing(kind: str, obj_id: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{obj_id}'", param=param, code="resource_missing")


def bad(param: str, message: str, code: str = "parameter_invalid") -> StripeError:
    return StripeError(400, message, param=param, code=code)


def get(kind: str, obj_id: Any, label: str | None = None, param: str = "id") -> dict:
    obj = table(kind).get(obj_id) if isinstance(obj_id, str) else None
    if obj is None:
        raise missing(label or kind, str(obj_id), param)
    return obj


def customer(cus_id: Any, param: str = "customer"):
    obj = ls.store.get(f"customer:{cus_id}") if isinstance(cus_id, str) else None
    if obj is None:
        raise missing("customer", str(cus_id), param)
    return obj


def respond(obj: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.json_response(obj, status=status, dumps=json.dumps, headers=headers)


async def params(request: web.Request) -> dict:
    """Form-encoded (as the SDK sends) or JSON body, plus the query string; `expand` is
    applied to the response by the server's middleware."""
    data = await params_with_expand(request)
    data.pop("expand", None)
    return data


async def params_with_expand(request: web.Request) -> dict:
    data = dict(unflatten_data(request.query) or {})
    if request.method in ("POST", "DELETE") and request.body_exists:
        data.update(await get_post_data(request) or {})
    return data


def expand_list(request: web.Request) -> list[str]:
    """`expand[]` of a GET (query) — POST bodies are read by `params_with_expand`."""
    raw = (unflatten_data(request.query) or {}).get("expand") or []
    return [p.removeprefix("data.") for p in raw]


# --- typed reads of form values (the SDK sends every scalar as a string) ---


def req(data: dict, key: str, param: str | None = None) -> Any:
    if data.get(key) in (None, ""):
        raise StripeError(
            400,
            f"Missing required param: {param or key}.",
            param=param or key,
            code="parameter_missing",
        )
    return data[key]


def as_int(value: Any, param: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad(param, f"Invalid integer: {value}", "parameter_invalid_integer") from None


def as_decimal(value: Any, param: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise bad(param, f"Invalid decimal: {value}") from None
    if not out.is_finite():
        raise bad(param, f"Invalid decimal: {value}")
    return out


def as_bool(value: Any, param: str) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise bad(param, f"Invalid boolean: {value}", "parameter_invalid_boolean")


def one_of(value: Any, allowed: tuple[str, ...], param: str, default: str | None = None):
    if value in (None, ""):
        return default
    if value not in allowed:
        raise bad(param, f"Invalid {param}: must be one of {', '.join(allowed)}")
    return value


def merge_metadata(current: dict | None, update: Any) -> dict:
    """Stripe merges metadata keys; an empty value removes a key; "" clears all."""
    out = dict(current or {})
    if update in (None,):
        return out
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise bad("metadata", "Invalid metadata: must be a hash")
    for k, v in update.items():
        if v in ("", None):
            out.pop(k, None)
        else:
            out[k] = str(v)
    return out


def page(url: str, items: list[dict], data: dict, *, newest_first: bool = True) -> dict:
    """A Stripe list object over `items` with limit / starting_after / ending_before.
    Stripe lists newest first (ties: the later created first); `newest_first=False` keeps
    the given order (invoice lines)."""
    limit = as_int(data.get("limit"), "limit") or 10
    if not 1 <= limit <= 100:
        raise bad("limit", "Invalid limit: must be between 1 and 100")
    if newest_first:
        ranked = sorted(
            enumerate(items), key=lambda p: (p[1].get("created", 0), p[0]), reverse=True
        )
        items = [o for _, o in ranked]
    after, before = data.get("starting_after"), data.get("ending_before")
    ids = [o.get("id") for o in items]
    if after:
        items = items[ids.index(after) + 1 :] if after in ids else []
    elif before:
        items = items[: ids.index(before)][-limit:] if before in ids else []
    chunk = items[:limit]
    return {
        "object": "list",
        "data": [copy.deepcopy(o) for o in chunk],
        "has_more": len(items) > limit,
        "url": url,
    }


# --- events: a snapshot of the object at the time of the change, like Stripe ---


class _Snapshot:
    """Adapter so localstripe's Event class stores our dicts (and lists them at /v1/events)."""

    def __init__(self, obj: dict):
        self.obj = obj

    def _export(self, expand=None):
        return copy.deepcopy(self.obj)


def emit(type_: str, obj: dict, previous: dict | None = None) -> str:
    event = ls.Event(type_, _Snapshot(obj))
    event.api_version = API_VERSION
    if previous is not None:
        changed = {k: v for k, v in previous.items() if obj.get(k) != v}
        if changed:
            event.data["previous_attributes"] = copy.deepcopy(changed)
    event.pending_webhooks = 0
    event.request = {"id": None, "idempotency_key": None}
    state().outbox.append(event.id)
    return event.id


def _emit_localstripe(event) -> None:
    # localstripe's own events (customer.created, ...) get the current API version and go
    # through the same delivery path as ours.
    event.api_version = API_VERSION
    event.request = {"id": None, "idempotency_key": None}
    state().outbox.append(event.id)


ls.schedule_webhook = _emit_localstripe

# localstripe's objects with the fields the current API has and localstripe lacks
ls.Product.default_price = None
ls.Customer.balance = property(
    lambda self: -self.account_balance,
    lambda self, value: setattr(self, "account_balance", -int(value)),
)
