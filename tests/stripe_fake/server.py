"""Run the fake Stripe on loopback:

    python -m tests.stripe_fake.server --port 0 [--state-file PATH] [--api-key sk_test_...]

localstripe serves what it does well (customers, products, payment methods, events);
this package's routes take precedence and add what the 2026-10-28 API needs. The first
stdout line is `LISTENING <port>`. With --state-file the whole state is saved after every
write and loaded at start, so a killed and restarted server (a Stripe outage) keeps it.
With --api-key, only those keys are accepted (others answer 401 as Stripe does)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import socket
import sys
import warnings

from aiohttp import web

# localstripe registers plain (non-async) handlers, which aiohttp deprecates.
warnings.filterwarnings("ignore", message="Bare functions are deprecated",
                        category=DeprecationWarning)

from localstripe import resources as ls  # noqa: E402
from localstripe import server as ls_server  # noqa: E402
from localstripe.errors import UserError  # noqa: E402

ls.Store.dump_to_disk = lambda self: None  # never write localstripe's fixed /tmp file

from . import billing, checkout, core, meters, prices, search, webhooks  # noqa: E402

log = logging.getLogger("stripe_fake")

# Paths whose localstripe implementation predates the current API: served only by ours.
OWNED = ("/v1/subscriptions", "/v1/subscription_items", "/v1/invoices", "/v1/invoiceitems",
         "/v1/customers/{id}/subscriptions", "/v1/usage_records", "/v1/plans")
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
            return core.respond(exc.body, exc.status)
        except UserError as exc:
            return exc.to_response()
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            return core.respond({"error": {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({request.method}: {request.path})."}},
                exc.status)
        except Exception:
            log.exception("fake Stripe failed on %s %s", request.method, request.path)
            return core.respond({"error": {"type": "api_error",
                                           "message": "The fake Stripe server failed."}}, 500)

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
    async def idempotency(request, handler):
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key or request.path.startswith("/_test/"):
            return await handler(request)
        st = core.state()
        t = core.now()
        for k in [k for k, v in st.idempotency.items() if v["at"] < t - IDEMPOTENCY_TTL]:
            del st.idempotency[k]
        slot = f"{_api_key(request)}:{key}"
        fingerprint = hashlib.sha256(request.path.encode() + b"\0" + await request.read()).hexdigest()
        seen = st.idempotency.get(slot)
        if seen is not None:
            if seen["fingerprint"] != fingerprint:
                raise core.StripeError(
                    400, "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you meant "
                    "to execute a different request.", type_="idempotency_error")
            if seen["body"] is None:
                raise core.StripeError(409, "There is currently another in-progress request "
                                       "using this Stripe API key with this idempotency key.",
                                       type_="idempotency_error")
            return web.Response(body=seen["body"], status=seen["status"],
                                content_type="application/json",
                                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key})
        st.idempotency[slot] = {"fingerprint": fingerprint, "body": None, "at": t}
        try:
            response = await handler(request)
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

    app = web.Application(middlewares=[errors, auth, idempotency, after_write])
    for table in (prices.routes, meters.routes, billing.routes, checkout.routes,
                  webhooks.routes, search.routes, _test_routes):
        app.router.add_routes(table)
    claimed = {(r.method, r.resource.canonical) for r in app.router.routes()}
    for route in ls_server.app.router.routes():
        path = route.resource.canonical
        if (route.method, path) in claimed or path.startswith(OWNED):
            continue
        app.router.add_route(route.method, path, _as_async(route.handler))
    app.on_shutdown.append(lambda app: _shutdown(state_file))
    return app


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
    web.run_app(build_app(args.api_key, args.state_file), sock=sock, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
