"""The bare-framework ceiling for tanso-mcp's benchmarks.

A Starlette app that does the least a JSON API can do, served exactly the way the
product is served: uvicorn, one worker, uvloop + httptools, access log off.

    python bench/ceiling.py --port 8001             # bare Starlette (the ceiling)
    python bench/ceiling.py --port 8001 --app mcp   # bare MCP SDK, one no-op tool

Endpoints of the bare app:
    GET  /healthz        -> {"status": "ok"}                       (readiness)
    GET  /ceiling/get    -> a small constant JSON document, orjson  (ceiling for GETs)
    POST /ceiling/post   -> parses the JSON body, answers a small JSON document that
                            depends on it (ceiling for POSTs of any size: the body is
                            really parsed, so a 1000-event body costs what parsing it costs)

The `mcp` app is the SDK's own ceiling: `MCPServer.streamable_http_app()` in
stateless JSON-response mode with one no-op tool named `checkEntitlement`, mounted the way
MCP-NOTES.md says the product mounts it (at "/" as the last route, path /mcp, host
lifespan running the session manager). It answers `tools/call` without an
`initialize` handshake, like the product.
"""

from __future__ import annotations

import argparse
import contextlib
import logging

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


async def healthz(request: Request) -> Response:
    return ORJSONResponse({"status": "ok"})


async def ceiling_get(request: Request) -> Response:
    # Build and serialise a document the size of an entitlement answer on every request
    # (the product does too); no I/O, no lookup.
    return ORJSONResponse(
        {
            "success": True,
            "data": {
                "customerReferenceId": "cus_bench",
                "featureKey": "api_calls",
                "allowed": True,
                "isAllowed": True,
                "usage": {"used": 41, "limit": 1000, "remaining": 959},
            },
        }
    )


async def ceiling_post(request: Request) -> Response:
    payload = orjson.loads(await request.body())
    if isinstance(payload, dict):
        items = payload.get("events")
        n = len(items) if isinstance(items, list) else 1
        key = payload.get("eventIdempotencyKey")
    else:
        n, key = 0, None
    return ORJSONResponse(
        {"success": True, "data": {"accepted": n, "eventIdempotencyKey": key}}, status_code=201
    )


def make_bare_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/ceiling/get", ceiling_get, methods=["GET"]),
            Route("/ceiling/post", ceiling_post, methods=["POST"]),
        ]
    )


def make_mcp_app() -> Starlette:
    from mcp.server import MCPServer

    server = MCPServer("ceiling-mcp")

    @server.tool()
    async def checkEntitlement(customerReferenceId: str, featureKey: str) -> dict:  # noqa: N802,N803
        """No-op stand-in for the product's checkEntitlement tool (async: a sync tool would
        run in a worker thread, which costs more than the call itself)."""
        return {
            "customerReferenceId": customerReferenceId,
            "featureKey": featureKey,
            "allowed": True,
            "isAllowed": True,
        }

    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with server.session_manager.run():
            yield

    return Starlette(
        routes=[Route("/healthz", healthz, methods=["GET"]), Mount("/", app=mcp_app)],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--app", choices=["bare", "mcp"], default="bare")
    args = parser.parse_args(argv)
    app = make_bare_app() if args.app == "bare" else make_mcp_app()
    # MCPServer turns on INFO logging globally; keep the benchmark quiet.
    logging.getLogger().setLevel(logging.WARNING)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
