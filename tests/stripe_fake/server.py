"""Run the fake Stripe on loopback:

    python -m tests.stripe_fake.server --port 0 [--state-file PATH] [--api-key sk_test_...]

localstripe serves what it does well (customers, products, payment methods, events);
this package's routes take precedence and add what the 2026-10-28 API needs. The first
stdout line is `LISTENING <port>`. With --state-file the whole state is saved after every
write and loaded at start, so a killed and restarted server (a Stripe outage) keeps it.
With --api-key, only those keys are accepted (others answer 401 as Stripe does)."""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import pickle
import socket
import sys
import time
import warnings

from aiohttp import web

# localstripe registers plain (non-async) handlers, which aiohttp deprecates.
warnings.filterwarnings(
    "ignore", message="Bare functions are deprecated", category=DeprecationWarning
)

from localstripe import resources as ls  # noqa: E402
from localstripe import server as ls_server  # noqa: E402
from localstripe.errors import UserError  # noqa: E402

ls.Store.dump_to_disk = lambda self: None  # never write localstripe's fixed /tmp file

from . import (  # noqa: E402
    checkout,
    core,
    expand,
    invoices,
    meters,
    prices,
    search,
    subscriptions,
    webhooks,
)

log = logging.getLogger("stripe_fake")

# Paths whose localstripe implementation predates the current API: served only by ours.
OWNED = (
    "/v1/subscriptions",
    "/v1/subscription_items",
    "/v1/invoices",
    "/v1/invoiceitems",
    "/v1/customers/{id}/subscriptions",
    "/v1/usage_records",
    "/v1/plans",
)
IDEMPOTENCY_TTL = 24 * 3600


def _api_key(request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:]
    return None


def build_app(api_keys: list[str] | None = None, state_file: str | None = None) -> web.Application:
    @web.middleware
    async def errors(request, handler):
        try:
            return await handler(request)
        except core.StripeError as exc:
            return core.respond(exc.body, exc.status, exc.headers)
        except UserError as exc:  # localstripe's errors, in Stripe's shape
            if exc.code == 404:
                obj_id = request.match_info.get("id", request.path.rsplit("/", 1)[-1])
                kind = request.path.split("/")[2].rstrip("s")
                exc.body["error"].update(
                    code="resource_missing", param="id", message=f"No such {kind}: '{obj_id}'"
                )
            return exc.to_response()
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            return core.respond(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"Unrecognized request URL ({request.method}: {request.path}).",
                    }
                },
                exc.status,
            )
        except Exception:
            log.exception("fake Stripe failed on %s %s", request.method, request.path)
            return core.respond(
                {"error": {"type": "api_error", "message": "The fake Stripe server failed."}}, 500
            )

    @web.middleware
    async def auth(request, handler):
        if request.path.startswith(("/_test/", "/_config/")):
            return await handler(request)
        key = _api_key(request)
        if api_keys and key not in api_keys:
            shown = (key or "")[:8] + "*" * 8 + (key or "")[-4:]
            raise core.StripeError(401, f"Invalid API Key provided: {shown}")
        return await ls_server.auth_middleware(request, handler)

    @web.middleware
    async def faults(request, handler):
        _check_rate(request)
        fault = _take_fault(request)
        if fault is None:
            return await handler(request)
        if fault["mode"] == "error":
            raise core.StripeError(
                fault["status"], fault["message"], code=fault.get("code"), type_=fault["type"]
            )
        # "drop": the request takes effect but its answer is lost (an unknown outcome)
        response = await handler(request)
        request.transport.close()
        return response

    @web.middleware
    async def expansion(request, handler):
        response = await handler(request)
        if request.match_info.handler not in own or response.status >= 400:
            return response
        paths = (await core.params_with_expand(request)).get("expand") or []
        if not paths:
            return response
        body = json.loads(response.body)
        for path in paths:
            expand.expand(body, path)
        return core.respond(body, response.status)

    @web.middleware
    async def idempotency(request, handler):
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key or request.path.startswith("/_test/"):
            return await handler(request)
        st = core.state()
        t = core.now()
        core.expire(st.idempotency, t - IDEMPOTENCY_TTL, at=lambda v: v["at"])
        slot = f"{_api_key(request)}:{key}"
        fingerprint = hashlib.sha256(
            request.path.encode() + b"\0" + await request.read()
        ).hexdigest()
        seen = st.idempotency.get(slot)
        if seen is not None:
            if seen["fingerprint"] != fingerprint:
                raise core.StripeError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you meant "
                    "to execute a different request.",
                    type_="idempotency_error",
                )
            if seen["body"] is None:
                raise core.StripeError(
                    409,
                    "There is currently another in-progress request "
                    "using this Stripe API key with this idempotency key.",
                    type_="idempotency_error",
                )
            return web.Response(
                body=seen["body"],
                status=seen["status"],
                content_type="application/json",
                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
            )
        st.idempotency[slot] = {"fingerprint": fingerprint, "body": None, "at": t}
        try:
            response = await handler(request)
        except core.StripeError as exc:
            # Stripe saves the answer once the endpoint began executing, errors included
            # (a 500 is replayed too); not a request refused before (validation, 429, ...)
            if exc.status == 402 or exc.status >= 500:
                st.idempotency[slot].update(body=json.dumps(exc.body).encode(), status=exc.status)
            else:
                del st.idempotency[slot]
            raise
        except BaseException:
            del st.idempotency[slot]
            raise
        st.idempotency[slot].update(body=response.body, status=response.status)
        response.headers["Idempotency-Key"] = key
        return response

    @web.middleware
    async def after_write(request, handler):
        try:
            return await handler(request)
        finally:
            if request.method in ("POST", "DELETE"):
                await webhooks.flush_outbox()
                save_state(state_file)

    tables = (
        prices.routes,
        meters.routes,
        subscriptions.routes,
        invoices.routes,
        checkout.routes,
        webhooks.routes,
        search.routes,
        expand.routes,
        _test_routes,
    )
    own = {route.handler for table in tables for route in table}
    app = web.Application(middlewares=[errors, auth, idempotency, faults, expansion, after_write])
    for table in tables:
        app.router.add_routes(table)
    claimed = {(r.method, r.resource.canonical) for r in app.router.routes()}
    for route in ls_server.app.router.routes():
        path = route.resource.canonical
        if (route.method, path) in claimed or path.startswith(OWNED):
            continue
        app.router.add_route(route.method, path, _as_async(route.handler))
    app.on_shutdown.append(lambda app: _shutdown(state_file))
    app.on_startup.append(_startup)
    return app


async def _startup(app):
    webhooks.start_drain()  # events queued for async delivery before a restart


_recent: collections.deque[float] = collections.deque()


def _check_rate(request) -> None:
    """Stripe answers 429 past its rate limit (25 requests/s in test mode); off unless a
    test sets one with /_test/rate_limit."""
    limit = core.state().rate_limit
    if not limit or not request.path.startswith("/v1/"):
        return
    t = time.monotonic()
    while _recent and _recent[0] <= t - 1:
        _recent.popleft()
    if len(_recent) >= limit:
        raise core.StripeError(
            429,
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        )
    _recent.append(t)


def _take_fault(request) -> dict | None:
    if request.path.startswith(("/_test/", "/_config/")):
        return None
    faults = core.state().faults
    for fault in faults:
        if fault["method"] == request.method and request.path.startswith(fault["path"]):
            fault["count"] -= 1
            if fault["count"] <= 0:
                faults.remove(fault)
            return fault
    return None


def _as_async(handler):
    async def wrapped(request):
        response = handler(request)
        return await response if hasattr(response, "__await__") else response

    return wrapped


async def _shutdown(state_file):
    save_state(state_file)


_test_routes = web.RouteTableDef()


@_test_routes.get("/_test/health")
async def health(request):
    return core.respond({"ok": True, "pid": os.getpid()})


@_test_routes.post("/_test/faults")
async def add_fault(request):
    """The next `count` requests with this method and a path starting with `path` fail:
    mode "error" answers `status` with a Stripe error without doing anything; mode "drop"
    does the work and then closes the connection without answering."""
    data = await core.params(request)
    fault = {
        "method": core.one_of(core.req(data, "method"), ("GET", "POST", "DELETE"), "method"),
        "path": core.req(data, "path"),
        "mode": core.one_of(data.get("mode"), ("error", "drop"), "mode", "error"),
        "status": core.as_int(data.get("status"), "status") or 500,
        "type": data.get("type") or "api_error",
        "message": data.get("message") or "An unknown error occurred (injected by the test).",
        "code": data.get("code"),
        "count": core.as_int(data.get("count"), "count") or 1,
    }
    core.state().faults.append(fault)
    return core.respond(fault)


@_test_routes.post("/_test/rate_limit")
async def set_rate_limit(request):
    """Requests per second the /v1 API accepts before answering 429 (null: no limit)."""
    data = await core.params(request)
    core.state().rate_limit = core.as_int(data.get("per_second"), "per_second")
    return core.respond({"per_second": core.state().rate_limit})


@_test_routes.delete("/_test/faults")
async def clear_faults(request):
    core.state().faults.clear()
    return core.respond({"faults": []})


@_test_routes.post("/_test/reset")
async def reset(request):
    """Forget everything (objects, events, meter events, idempotency keys, webhook mode)."""
    ls.store.clear()
    return core.respond({"ok": True})


def save_state(path: str | None) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(dict(ls.store), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def load_state(path: str | None) -> None:
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            saved = pickle.load(f)
        ls.store.clear()
        dict.update(ls.store, saved)
    # A request cut by a crash may have left events unsent: they are sent with the next write.


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-file")
    parser.add_argument("--api-key", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    load_state(args.state_file)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    web.run_app(build_app(args.api_key, args.state_file), sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    main()
