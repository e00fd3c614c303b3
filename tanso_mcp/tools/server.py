"""The MCP server: the tool table of ``specs.py`` wired to pluggable handlers.

``build_mcp_server(app, handlers, stdio_principal=..., tool_groups=...)`` registers the 34
standard tools, plus those of the enabled optional groups, on an ``MCPServer`` named
``tanso-mcp``. Each call goes through the same steps, none of which
touches business data:

1. **Principal.** ``resolve_principal``: the ``current_principal`` ContextVar (set by the
   HTTP auth middleware; it is visible inside tool handlers in every Streamable HTTP
   mode, see ``tests/tools/test_http.py``), else ``scope["state"]["principal"]`` of the
   HTTP request (``request.state.principal`` for a Starlette middleware), else — only when
   the call did not come over HTTP (stdio, in-process) — ``stdio_principal``. No principal
   → ``forbidden``.
2. **Role.** The key's role must reach the tool's minimum role → else ``forbidden``.
3. **Arguments.** Validated with the tool's parameter model → ``invalid_request`` naming the
   (first) offending field; all problems are listed in the message.
4. **Availability.** A tool without a handler answers ``precondition_failed`` ("not
   available yet") and never pretends to succeed.
5. **Confirmation.** A guarded tool without ``confirmAction: true`` answers
   ``confirmation_required`` with a ``preview`` and writes nothing. The preview is the
   tool's default description of the effect, merged with what the optional preview
   function returns.
6. **Handler.** ``await handler(app, principal, params)``; the value is shaped by
   ``results.shape_success``. ``TansoError`` → its error object; anything else is logged
   and answered with a generic ``internal_error``.

``tools/list`` is filtered per caller by a server middleware (``RoleScopedToolList``): the
SDK builds the full list, the middleware drops the tools the caller's role may not see.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server import MCPServer
from mcp.server.caching import CacheHint
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult
from pydantic import BaseModel, ConfigDict, ValidationError

from tanso_mcp import __version__
from tanso_mcp.errors import (
    ConfirmationRequired,
    Forbidden,
    InvalidRequest,
    PreconditionFailed,
    TansoError,
)
from tanso_mcp.principal import Principal, current_principal
from tanso_mcp.tools import apps_analytics
from tanso_mcp.tools.groups import all_specs, all_specs_by_name, enabled_specs
from tanso_mcp.tools.results import (
    error_object,
    error_result,
    shape_success,
    success_result,
    to_json_value,
)
from tanso_mcp.tools.specs import ToolSpec, input_schema, output_schema

__all__ = [
    "PRINCIPAL_STATE_KEY",
    "SERVER_NAME",
    "Handler",
    "Preview",
    "RoleScopedToolList",
    "ToolImpl",
    "build_mcp_server",
    "handlers_from",
    "resolve_principal",
]

logger = logging.getLogger("tanso_mcp.tools")

SERVER_NAME = "tanso-mcp"
PRINCIPAL_STATE_KEY = "principal"
"""Key under ``scope["state"]`` where an HTTP middleware may leave the ``Principal``."""

Handler = Callable[[Any, Principal, Any], Awaitable[Any]]
"""``async (app, principal, params) -> dict | list`` — params is the tool's parameter model."""

Preview = Callable[[Any, Principal, Any], Awaitable[Mapping[str, Any]]]
"""``async (app, principal, params) -> dict``: what a guarded call would do. Must not write."""

INSTRUCTIONS = (
    "tanso-mcp is a monetization engine for B2B SaaS: plans and features, customers and "
    "subscriptions, entitlement checks, usage events, credits, invoices and Stripe. Every "
    'answer is JSON. Failures come back as tool errors holding {"error": <type>, '
    '"message": ...}; invalid_request names the offending parameter in "field". Tools '
    "marked destructive need confirmAction: true and otherwise return "
    "confirmation_required with a preview of what they would do, without doing it."
)


@dataclass(frozen=True, slots=True)
class ToolImpl:
    """A tool's implementation: the handler and, for guarded tools, an optional preview."""

    handler: Handler
    preview: Preview | None = None


def handlers_from(source: Any) -> dict[str, ToolImpl]:
    """Collect implementations from a module or object by the table's conventional names.

    For each tool, ``source.<spec.handler>`` (e.g. ``cancel_subscription``) is its handler and
    ``source.<spec.handler>_preview`` its preview, when present. Tools without a handler are
    left out (and answer "not available yet").
    """
    found: dict[str, ToolImpl] = {}
    for spec in all_specs():
        handler = getattr(source, spec.handler, None)
        if handler is None:
            continue
        found[spec.name] = ToolImpl(handler, getattr(source, f"{spec.handler}_preview", None))
    return found


def _normalise(handlers: Mapping[str, Handler | ToolImpl] | None) -> dict[str, ToolImpl]:
    specs = all_specs_by_name()
    impls: dict[str, ToolImpl] = {}
    for name, value in (handlers or {}).items():
        if name not in specs:
            raise ValueError(f"no tool named {name!r} (handlers are keyed by tool name)")
        if isinstance(value, ToolImpl):
            impls[name] = value
        elif callable(value):
            impls[name] = ToolImpl(value, getattr(value, "preview", None))
        else:
            raise TypeError(f"handler for {name!r} must be a ToolImpl or an async callable")
        if impls[name].preview is not None and not specs[name].confirm:
            raise ValueError(f"{name} is not a confirmAction tool; a preview would never run")
    return impls


# ---------------------------------------------------------------------------------------
# Principal


def resolve_principal(
    request_context: ServerRequestContext[Any, Any] | None,
    stdio_principal: Principal | None,
) -> Principal | None:
    """Who is calling (see module doc, step 1)."""
    principal = current_principal.get()
    if principal is not None:
        return principal
    request = request_context.request if request_context is not None else None
    if request is None:
        return stdio_principal
    scope = getattr(request, "scope", None)
    state = scope.get("state") if isinstance(scope, Mapping) else None
    candidate = state.get(PRINCIPAL_STATE_KEY) if isinstance(state, Mapping) else None
    return candidate if isinstance(candidate, Principal) else None


class RoleScopedToolList:
    """Server middleware: ``tools/list`` shows a caller only the tools its role may call.

    Runs around the SDK's own listing (``ServerMiddleware`` protocol) and filters the wire
    result, so nothing of the SDK is replaced. Tools that are not in the table (none today)
    are left alone.
    """

    def __init__(self, stdio_principal: Principal | None) -> None:
        self._stdio_principal = stdio_principal

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/list" or not isinstance(result, dict):
            return result
        tools = result.get("tools")
        if not isinstance(tools, list):
            return result
        principal = resolve_principal(ctx, self._stdio_principal)

        def visible(tool: Any) -> bool:
            spec = (
                all_specs_by_name().get(str(tool.get("name", "")))
                if isinstance(tool, dict)
                else None
            )
            if spec is None:
                return True
            return principal is not None and spec.allows(principal.role)

        return {**result, "tools": [tool for tool in tools if visible(tool)]}


class UnknownPromptIsInvalidParams:
    """Server middleware: ``prompts/get`` for a prompt that does not exist answers the
    JSON-RPC error the protocol names (-32602, invalid params), like an unknown resource.
    The SDK raises a plain ``ValueError`` there, which goes out as code 0 with an ERROR
    traceback in the log for what is only a client's mistake."""

    def __init__(self, server: MCPServer) -> None:
        self._server = server

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method == "prompts/get":
            name = (ctx.params or {}).get("name")
            known = {prompt.name for prompt in await self._server.list_prompts()}
            if name not in known:
                raise MCPError(INVALID_PARAMS, f"Unknown prompt: {name}", {"name": name})
        return await call_next(ctx)


# ---------------------------------------------------------------------------------------
# Calling a tool


class _RawArguments(ArgModelBase):
    """Hands the call's arguments through untouched: validation happens in ``_Runner``,
    where a failure becomes an ``invalid_request`` object instead of the SDK's text."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def model_dump_one_level(self) -> dict[str, Any]:
        return {"arguments": dict(self.__pydantic_extra__ or {})}


def _field_problem(err: Mapping[str, Any]) -> tuple[str | None, str]:
    loc = err.get("loc") or ()
    field = str(loc[0]) if loc else None
    kind = err.get("type", "")
    if kind == "missing":
        text = "is required"
    elif kind == "extra_forbidden":
        text = "is not a parameter of this tool"
    elif kind == "value_error":
        text = str(err.get("ctx", {}).get("error", "is invalid"))
    elif kind in ("string_type", "str_type"):
        text = "must be a string"
    elif kind == "too_short":
        text = "must not be empty"
    else:
        text = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        text = text[:1].lower() + text[1:]
    return field, f"{field} {text}" if field else text


def invalid_arguments(tool: str, exc: ValidationError) -> InvalidRequest:
    problems = [_field_problem(err) for err in exc.errors(include_input=False, include_url=False)]
    field = next((f for f, _ in problems if f), None)
    message = f"Invalid arguments for {tool}: " + "; ".join(text for _, text in problems) + "."
    return InvalidRequest(message, field=field)


class _Runner:
    def __init__(
        self,
        app: Any,
        impls: Mapping[str, ToolImpl],
        stdio_principal: Principal | None,
    ) -> None:
        self.app = app
        self.impls = impls
        self.stdio_principal = stdio_principal

    async def call(
        self,
        spec: ToolSpec,
        arguments: Mapping[str, Any],
        request_context: ServerRequestContext[Any, Any] | None,
    ) -> CallToolResult:
        principal = resolve_principal(request_context, self.stdio_principal)
        try:
            if principal is None:
                raise Forbidden("This request carries no authenticated API key.")
            if not spec.allows(principal.role):
                raise Forbidden(
                    f"{spec.name} needs a key with role {spec.role} or above; "
                    f"this key has role {principal.role}."
                )
            try:
                params = spec.params.model_validate(dict(arguments))
            except ValidationError as exc:
                raise invalid_arguments(spec.name, exc) from None
            impl = self.impls.get(spec.name)
            if impl is None:
                raise PreconditionFailed(
                    f"{spec.name} is not available yet: {spec.capability} has not been "
                    "implemented in this build"
                )
            if spec.confirm and getattr(params, "confirmAction", False) is not True:
                preview = await self._preview(spec, impl, principal, params)
                raise ConfirmationRequired(
                    f"{spec.name} needs confirmation. Nothing was changed. Check 'preview', "
                    "then call it again with confirmAction: true to go ahead.",
                    preview=preview,
                )
            value = await impl.handler(self.app, principal, params)
        except TansoError as exc:
            return error_result(error_object(exc))
        except Exception:
            logger.exception("tool %s failed unexpectedly", spec.name)
            return error_result(
                {
                    "error": "internal_error",
                    "message": f"{spec.name} failed because of an internal error; it has been "
                    "logged. Retrying may not help.",
                }
            )
        try:
            structured = shape_success(value)
        except (TypeError, ValueError, RecursionError):
            logger.exception("tool %s returned a value that cannot be sent as JSON", spec.name)
            return error_result(
                {
                    "error": "serialization_error",
                    "message": f"{spec.name} ran, but its result could not be serialised. "
                    "Check the outcome with a read tool before retrying.",
                }
            )
        result = success_result(structured)
        image = apps_analytics.fallback_image(spec.name, structured, request_context)
        if image is not None:  # hosts without MCP Apps still get the chart
            result.content.append(image)
        return result

    async def _preview(
        self, spec: ToolSpec, impl: ToolImpl, principal: Principal, params: BaseModel
    ) -> dict[str, Any]:
        arguments = params.model_dump(mode="json", exclude={"confirmAction"}, exclude_none=True)
        preview: dict[str, Any] = {"tool": spec.name, "effect": spec.effect, "arguments": arguments}
        if impl.preview is None:
            return preview
        try:
            extra = await impl.preview(self.app, principal, params)
            converted = to_json_value(extra) if extra is not None else {}
        except TansoError:
            raise  # e.g. not_found: the call could not succeed either
        except Exception:
            logger.exception("preview for %s failed; answering with the generic preview", spec.name)
            return preview
        if isinstance(converted, dict):
            preview.update(converted)
        return preview


def _make_tool(spec: ToolSpec, runner: _Runner) -> Tool:
    async def run(arguments: dict[str, Any], ctx: Context) -> CallToolResult:
        try:
            request_context = ctx.request_context
        except ValueError:  # called outside a request (server.call_tool in-process)
            request_context = None
        return await runner.call(spec, arguments, request_context)

    run.__name__ = spec.name
    return Tool(
        fn=run,
        name=spec.name,
        title=spec.title,
        description=spec.description,
        parameters=input_schema(spec),
        fn_metadata=FuncMetadata(arg_model=_RawArguments, output_schema=output_schema(spec)),
        is_async=True,
        context_kwarg="ctx",
        annotations=spec.annotations,
        meta=apps_analytics.tool_meta(spec.name),
    )


def build_mcp_server(
    app: Any,
    handlers: Mapping[str, Handler | ToolImpl] | None = None,
    *,
    stdio_principal: Principal | None = None,
    tool_groups: Iterable[str] = (),
) -> MCPServer:
    """Build the ``tanso-mcp`` MCP server.

    ``app`` is the application context, handed to every handler untouched. ``handlers``
    maps tool names to an async handler or a ``ToolImpl`` (handler + preview); a bare
    callable may carry its preview as a ``preview`` attribute. Unknown tool names are a
    ``ValueError``. ``stdio_principal`` is the caller for transports without HTTP requests
    (stdio, in-process clients); HTTP requests never fall back to it. ``tool_groups``
    names the optional tool groups to offer besides the standard tools (see ``groups``);
    handlers for tools of other groups are accepted and left unregistered.
    """
    runner = _Runner(app, _normalise(handlers), stdio_principal)
    specs = enabled_specs(tool_groups)
    # the margin tools' ui:// dashboard (MCP Apps), with the analytics group
    apps = [apps_analytics.extension()] if any(s.group == "analytics" for s in specs) else []
    server: MCPServer = MCPServer(
        SERVER_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        tools=[_make_tool(spec, runner) for spec in specs],
        extensions=apps,
        # The listing depends on the caller: never let a client share it across keys.
        cache_hints={"tools/list": CacheHint(ttl_ms=0, scope="private")},
        log_level="WARNING",
    )
    server.middleware.append(RoleScopedToolList(stdio_principal))
    server.middleware.append(UnknownPromptIsInvalidParams(server))
    return server
