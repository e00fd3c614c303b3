"""A small declarative layer over Starlette routes: each REST endpoint declares its role,
body/query models and response model once; the same declaration validates requests,
builds the envelope and generates /openapi.json, so the document cannot drift from the
handlers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import Forbidden, InvalidRequest, TansoError
from ..principal import Principal, Role, current_principal
from .jsonio import dumps, loads, strip_nones

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger("tanso_mcp.web")


class ApiModel(BaseModel):
    """Base for request bodies: unknown fields are an error (a misspelt `usageUnit`
    must not silently bill the default)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class QueryModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


MAX_OFFSET = 2**31 - 1  # far beyond any real list; keeps OFFSET a database integer


class Pagination(QueryModel):
    limit: int = 50
    offset: int = 0

    def model_post_init(self, _ctx: Any) -> None:
        if not 1 <= self.limit <= 500:
            raise InvalidRequest("limit must be between 1 and 500", field="limit")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise InvalidRequest(f"offset must be between 0 and {MAX_OFFSET}", field="offset")


@dataclass
class Page:
    items: list[Any]
    total: int
    limit: int
    offset: int


@dataclass
class Result:
    data: Any = None
    status: int = 200


@dataclass
class Call:
    ctx: AppContext
    principal: Principal
    request: Request
    path: dict[str, str]
    body: Any = None
    query: Any = None
    headers: Any = None


Handler = Callable[[Call], Awaitable[Any]]


def validation_to_error(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    errs = exc.errors(include_url=False)
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"] if p != "__root__")
    fieldname = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or None)
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    # a TansoError raised inside a validator keeps its own message
    ctx_err = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_err, TansoError):
        return InvalidRequest(ctx_err.message, field=ctx_err.field or fieldname)
    detail = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in errs[1:10]
    ]
    return InvalidRequest(
        f"{fieldname}: {msg}" if fieldname else msg, field=fieldname, detail=detail or None
    )


def envelope_error(exc: TansoError) -> Response:
    body: dict[str, Any] = {"success": False, "error": strip_nones(exc.to_dict())}
    return Response(dumps(body), status_code=exc.status, media_type="application/json")


def envelope_ok(data: Any, status: int = 200, pagination: dict | None = None) -> Response:
    body: dict[str, Any] = {"success": True}
    if data is not None:
        body["data"] = strip_nones(data)
    if pagination is not None:
        body["pagination"] = pagination
    return Response(dumps(body), status_code=status, media_type="application/json")


@dataclass
class ApiRoute:
    method: str
    path: str
    handler: Handler
    role: Role
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    # True: data is a list; "object": data is one object whose rows are paged
    paginated: bool | str = False
    tags: list[str] = field(default_factory=list)
    errors: tuple[int, ...] = ()
    # documents the request body in /openapi.json when the handler reads and validates
    # the body itself (hot paths, per-item validation of batches)
    body_doc: Any = None


class Api:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.routes: list[ApiRoute] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        role: Role,
        summary: str,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        paginated: bool | str = False,
        tags: list[str] | None = None,
        errors: tuple[int, ...] = (),
        body_doc: Any = None,
    ) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.routes.append(
                ApiRoute(
                    method,
                    self.prefix + path,
                    fn,
                    role,
                    summary,
                    body,
                    query,
                    response,
                    status,
                    paginated,
                    tags or [],
                    errors,
                    body_doc,
                )
            )
            return fn

        return deco

    def include(self, other: Api) -> None:
        self.routes.extend(other.routes)

    def starlette_routes(self, ctx: AppContext) -> list[Route]:
        grouped: dict[str, dict[str, ApiRoute]] = {}
        for r in self.routes:
            grouped.setdefault(r.path, {})[r.method] = r
        return [
            Route(path, _endpoint(ctx, methods), methods=list(methods))
            for path, methods in grouped.items()
        ]


def _endpoint(ctx: AppContext, methods: dict[str, ApiRoute]):
    async def endpoint(request: Request) -> Response:
        route = methods[request.method]
        try:
            principal = current_principal.get()
            if principal is None:  # the auth middleware guarantees this never happens
                raise Forbidden("no authenticated principal")
            if not principal.allows(route.role):
                raise Forbidden(f"this operation needs a key with the {route.role} role")
            call = Call(ctx, principal, request, dict(request.path_params), headers=request.headers)
            if route.query is not None:
                try:
                    call.query = route.query.model_validate(dict(request.query_params))
                except ValidationError as exc:
                    raise validation_to_error(exc) from None
            if route.body is not None:
                raw = loads(await request.body())
                if not isinstance(raw, dict):
                    raise InvalidRequest("request body must be a JSON object", field="body")
                try:
                    call.body = route.body.model_validate(raw)
                except ValidationError as exc:
                    raise validation_to_error(exc) from None
            out = await route.handler(call)
        except TansoError as exc:
            return envelope_error(exc)
        if isinstance(out, Response):
            return out
        if isinstance(out, Page):
            return envelope_ok(
                out.items,
                route.status,
                {
                    "limit": out.limit,
                    "offset": out.offset,
                    "total": out.total,
                    "hasMore": out.offset + len(out.items) < out.total,
                },
            )
        if isinstance(out, Result):
            return envelope_ok(out.data, out.status)
        return envelope_ok(out, route.status)

    return endpoint
