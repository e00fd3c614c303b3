"""OpenAPI 3.1 document generated from the route declarations and their pydantic models.

Declares what the server really answers, so a schema-driven client (or fuzzer) can
hold it to the document: money and quantities as JSON numbers (that is how they are
written; pydantic alone would say strings), every status an operation can answer (401
and 403 from authentication, 404 for a path with ids, 413/415 for a body, 431 for
headers, 503 ``unavailable`` with ``Retry-After`` when the database cannot be reached),
and the bounds of ``limit``/``offset``."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from .. import __version__
from .routing import Api

REF = "#/components/schemas/{model}"

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
                "detail": {},
            },
        },
    },
}
PAGINATION_SCHEMA = {
    "type": "object",
    "required": ["limit", "offset", "total", "hasMore"],
    "properties": {k: {"type": "integer"} for k in ("limit", "offset", "total")}
    | {"hasMore": {"type": "boolean"}},
}
STATUS_TEXT = {
    400: "Invalid request (the error names the field)",
    401: "Missing or invalid API key",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Body is not UTF-8 application/json",
    431: "Request headers too large or too many",
    502: "The payment provider (Stripe) refused or failed; nothing was applied",
    503: "Database unavailable: nothing was done; retry after Retry-After seconds",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before sending the request again",
        "schema": {"type": "string"},
    }
}


class _ExactNumbers(GenerateJsonSchema):
    """Decimals are written as JSON numbers (``jsonio``) and accepted as numbers or
    decimal strings."""

    def decimal_schema(self, schema: Any) -> dict[str, Any]:
        if self.mode == "serialization":
            return {"type": "number"}
        return {"anyOf": [{"type": "number"}, {"type": "string"}]}


def _schema_for(obj: Any, mode: JsonSchemaMode, defs: dict[str, Any]) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, type) and issubclass(obj, BaseModel):
        _, top = models_json_schema([(obj, mode)], ref_template=REF, schema_generator=_ExactNumbers)
        defs.update(top.get("$defs", {}))
        return {"$ref": REF.format(model=obj.__name__)}
    schema = TypeAdapter(obj).json_schema(
        ref_template=REF, mode=mode, schema_generator=_ExactNumbers
    )
    defs.update(schema.pop("$defs", {}))
    return schema


def _error_codes(r: Any, has_path_ids: bool) -> list[int]:
    codes = {400, 401, 403, 431, 503, *r.errors}
    if has_path_ids:
        codes.add(404)
    if r.body is not None or r.body_doc is not None:
        codes |= {413, 415}
    return sorted(codes)


def build_openapi(api: Api, extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for r in api.routes:
        op: dict[str, Any] = {
            "operationId": r.handler.__name__,
            "summary": r.summary,
            "tags": r.tags,
            "x-required-role": r.role,
        }
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in re.findall(r"{(\w+)}", r.path)
        ]
        if r.query is not None:
            qs = r.query.model_json_schema(schema_generator=_ExactNumbers)
            for name, prop in qs.get("properties", {}).items():
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in qs.get("required", []),
                        "schema": prop,
                    }
                )
        if params:
            op["parameters"] = params
        body = r.body if r.body is not None else r.body_doc
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema_for(body, "validation", defs)}},
            }
        data_schema = _schema_for(r.response, "serialization", defs)
        ok: dict[str, Any] = {"success": {"const": True}}
        if r.paginated == "object":  # one object (rows and totals) paged by its rows
            ok["data"] = data_schema
            ok["pagination"] = {"$ref": REF.format(model="Pagination")}
        elif r.paginated:
            ok["data"] = {"type": "array", "items": data_schema}
            ok["pagination"] = {"$ref": REF.format(model="Pagination")}
        elif data_schema:
            ok["data"] = data_schema
        op["responses"] = {
            str(r.status): {
                "description": "OK" if r.status == 200 else "Created",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "required": ["success"], "properties": ok}
                    }
                },
            },
            **{
                str(code): {
                    "description": STATUS_TEXT[code],
                    "content": {
                        "application/json": {"schema": {"$ref": REF.format(model="Error")}}
                    },
                    **({"headers": RETRY_AFTER} if code == 503 else {}),
                }
                for code in _error_codes(r, bool(re.search(r"{\w+}", r.path)))
            },
        }
        oapi_path = re.sub(r"{(\w+)(:\w+)?}", r"{\1}", r.path)
        paths.setdefault(oapi_path, {})[r.method.lower()] = op
    defs["Error"] = ERROR_SCHEMA
    defs["Pagination"] = PAGINATION_SCHEMA
    if extra_paths:
        paths.update(extra_paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tanso-mcp client API", "version": __version__},
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}, {"bearer": []}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": defs,
        },
        "paths": paths,
    }
