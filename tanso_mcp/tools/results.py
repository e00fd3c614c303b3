"""Shaping of tool answers: successful results and error objects, both as JSON.

Success: the handler's value becomes the ``structuredContent`` object (a list is wrapped
as ``{"items": [...]}``, ``None`` becomes ``{"success": true}``) and its compact JSON text
is the single text content block, for clients that ignore structured content.

Errors: ``CallToolResult(isError=True)`` whose structured content and text are the same
object ``{"error": <type>, "message": ..., "field"?, "preview"?, "detail"?, "reason"?}``.
``error`` is one of the contract's types (not_found, invalid_request, confirmation_required,
precondition_failed, stripe_api_error, duplicate_event, ingestion_failed,
serialization_error), ``forbidden``, ``unavailable`` (the database cannot be reached or
used right now: nothing was done, call again shortly), or ``internal_error`` for a failure
we cannot explain without leaking internals. Domain codes without an MCP counterpart are mapped onto the
closest contract type and the original code is kept in ``reason``.

Values are converted to JSON here, never with float arithmetic on money: a ``Decimal``
becomes a JSON integer when integral, a JSON number when the float's shortest repr is
exactly the same decimal, and otherwise its exact string.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping, Set
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, SecretStr

from tanso_mcp.errors import TansoError

__all__ = [
    "MCP_ERROR_TYPES",
    "error_object",
    "error_result",
    "shape_success",
    "success_result",
    "to_json_value",
]

MCP_ERROR_TYPES = frozenset(
    {
        "not_found",
        "invalid_request",
        "confirmation_required",
        "precondition_failed",
        "stripe_api_error",
        "duplicate_event",
        "ingestion_failed",
        "serialization_error",
        "forbidden",
        "unavailable",
        "internal_error",
    }
)

# Domain codes that have no MCP type of their own.
_CODE_TO_MCP = {
    "conflict": "invalid_request",
    "insufficient_credits": "ingestion_failed",
    "payload_too_large": "invalid_request",
    "unsupported_media_type": "invalid_request",
    "headers_too_large": "invalid_request",
    "unauthorized": "forbidden",
}


def to_json_value(value: Any) -> Any:
    """Convert ``value`` to plain JSON types (dict/list/str/int/float/bool/None).

    Raises ``TypeError`` for a value that has no faithful JSON form and ``ValueError``
    for non-finite floats.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite number")
        return value
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, enum.Enum):
                key = key.value
            if not isinstance(key, str | int):
                raise TypeError(f"object key of type {type(key).__name__}")
            out[str(key)] = to_json_value(item)
        return out
    if isinstance(value, list | tuple | Set):
        return [to_json_value(item) for item in value]
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        text = value.astimezone(UTC).isoformat()
        return text.removesuffix("+00:00") + "Z"
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_json_value(value.value)
    if isinstance(value, SecretStr):
        return str(value)  # the masked form, never the secret
    if isinstance(value, BaseModel):
        return to_json_value(value.model_dump(mode="python", by_alias=True, exclude_none=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    raise TypeError(f"value of type {type(value).__name__} has no JSON form")


def _decimal(value: Decimal) -> int | float | str:
    if not value.is_finite():
        raise ValueError("non-finite number")
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == value:
        return as_float
    return str(value)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def shape_success(value: Any) -> dict[str, Any]:
    """The structured content for a handler's return value (see module doc)."""
    if value is None:
        return {"success": True}
    if isinstance(value, list | tuple):
        return {"items": to_json_value(value)}
    converted = to_json_value(value)
    if not isinstance(converted, dict):
        raise TypeError(f"handler returned {type(value).__name__}; expected an object or a list")
    return converted


def success_result(structured: dict[str, Any]) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=dumps(structured))],
        structured_content=structured,
    )


def error_object(exc: TansoError) -> dict[str, Any]:
    """The MCP error object for a domain error (see module doc)."""
    code = _CODE_TO_MCP.get(exc.code, exc.code)
    out: dict[str, Any] = {"error": code, "message": exc.message}
    if exc.field is not None:
        out["field"] = exc.field
    if code != exc.code:
        out["reason"] = exc.code
    for key, extra in (("preview", getattr(exc, "preview", None)), ("detail", exc.detail)):
        if extra is None:
            continue
        try:
            out[key] = to_json_value(extra)
        except (TypeError, ValueError, RecursionError):
            # Never let an unserialisable extra hide the error itself.
            pass
    return out


def error_result(obj: Mapping[str, Any]) -> CallToolResult:
    structured = dict(obj)
    return CallToolResult(
        content=[TextContent(type="text", text=dumps(structured))],
        structured_content=structured,
        is_error=True,
    )
