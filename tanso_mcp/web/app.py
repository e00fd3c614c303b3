"""The Starlette application: REST client API, health endpoints, OpenAPI, and (mounted
last) the MCP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import NotFound, TansoError
from .hotpath import HotPaths
from .jsonio import dumps
from .middleware import (
    AuthMiddleware,
    FaultMiddleware,
    RequestRulesMiddleware,
    as_error,
    error_headers,
)
from .openapi import build_openapi
from .routing import Api, envelope_error

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger("tanso_mcp.web")


def client_api() -> Api:
    """Every REST module contributes its routes here."""
    from .routes import analytics, billing, catalog, metering, stripe, stripe_usage, system

    api = Api("")
    for module in (system, catalog, billing, metering, analytics, stripe, stripe_usage):
        api.include(module.api)
    return api


def create_app(ctx: AppContext, *, run_jobs: bool = False, own_context: bool = False) -> Starlette:
    """The application. ``own_context``: the app closes ``ctx`` when it stops (the
    server process's case: the group-commit writer drains, connections close)."""
    api = client_api()
    openapi_doc = build_openapi(api)

    async def healthz(_: Request) -> Response:
        return Response(
            dumps({"success": True, "data": {"status": "ok"}}), media_type="application/json"
        )

    async def readyz(_: Request) -> Response:
        try:
            await asyncio.wait_for(ctx.db.ping(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("readiness check failed: %s", type(exc).__name__)
            return Response(
                dumps(
                    {
                        "success": False,
                        "error": {"code": "unavailable", "message": "database unreachable"},
                    }
                ),
                status_code=503,
                media_type="application/json",
            )
        return Response(
            dumps({"success": True, "data": {"status": "ready"}}), media_type="application/json"
        )

    async def openapi(_: Request) -> Response:
        return Response(dumps(openapi_doc), media_type="application/json")

    from ..tools.http import mcp_http_app
    from ..tools.registry import all_handlers
    from ..tools.server import build_mcp_server
    from .routes.checkout_pages import checkout_routes
    from .routes.stripe_webhooks import webhook_routes

    server = build_mcp_server(ctx, all_handlers(), tool_groups=ctx.settings.mcp_tool_groups)
    mcp = mcp_http_app(server, ctx.settings.allowed_hosts)
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *api.starlette_routes(ctx),
        *webhook_routes(ctx),
        *checkout_routes(),
        # the SDK's app routes on the unchanged path /mcp; a plain Route (not a Mount)
        # keeps every other unknown path answering with our JSON 404
        Route("/mcp", endpoint=mcp.app),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return envelope_error(NotFound("no such endpoint", field="path"))
        err = TansoError(exc.detail or "request not allowed")
        err.status = exc.status_code
        if exc.status_code == 405:
            err.code = "method_not_allowed"
            err.field = "method"
            err.message = f"{request.method} is not allowed here"
        else:
            err.code = "invalid_request"
        response = envelope_error(err)
        # 405 carries Allow (the methods the path answers)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def tanso_error(_: Request, exc: TansoError) -> Response:
        return envelope_error(exc)

    async def server_error(request: Request, exc: Exception) -> Response:
        # reached only if FaultMiddleware itself failed; same mapping
        err = as_error(exc, request.url.path)
        response = envelope_error(err)
        for name, value in error_headers(err):
            response.headers[name.decode()] = value.decode()
        return response

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Shutdown order: the server has stopped accepting and answered every request in
        # flight; then jobs stop, plugins hand unfinished work to the outbox while the
        # database is still open, and last the writer drains and connections close.
        await ctx.start_feed()
        await ctx.plugins.lifecycle("tanso_startup", ctx)
        task = asyncio.create_task(_jobs_loop(ctx)) if run_jobs else None
        try:
            async with mcp.lifespan():
                yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await ctx.plugins.lifecycle("tanso_shutdown", ctx)
            if own_context:
                await ctx.close()

    # Starlette types a handler as taking any Exception; each takes its own class
    handlers: dict[Any, Any] = {
        HTTPException: http_error,
        TansoError: tanso_error,
        Exception: server_error,
    }
    app = Starlette(
        routes=routes,
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    # innermost: the entitlement-check fast lane runs after authentication
    app.add_middleware(HotPaths, ctx=ctx)
    app.add_middleware(AuthMiddleware, keys=ctx.keys)
    app.add_middleware(RequestRulesMiddleware, max_bytes=ctx.settings.max_body_bytes)
    # outermost of ours: answers whatever escapes (503 for database faults)
    app.add_middleware(FaultMiddleware)
    app.state.openapi = openapi_doc
    return app


async def _jobs_loop(ctx: AppContext) -> None:
    from ..services.jobs import run_all_due

    while True:
        try:
            ran = await run_all_due(ctx)
            if ran:
                log.info("jobs: ran %d due item(s)", ran)
        except Exception:
            log.exception("jobs pass failed")
        await asyncio.sleep(ctx.settings.jobs_interval_seconds)


def worker_app() -> Starlette:
    """App factory for `tanso-mcp serve --workers N`: each worker process builds its own
    context from the settings (TANSO_* environment and the config file)."""
    from ..bootstrap import build_context
    from ..settings import load_settings
    from .hotpath import tune_gc

    settings = load_settings()
    app = create_app(build_context(settings), run_jobs=settings.jobs_enabled, own_context=True)
    tune_gc()
    return app
