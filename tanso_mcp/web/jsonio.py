"""JSON in and out. Numbers are parsed as Decimal (never float) and Decimals are
written as JSON numbers, exactly."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from ..clock import iso
from ..errors import InvalidRequest


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise TypeError("non-finite decimal")
        return orjson.Fragment(format(obj, "f").encode())
    if isinstance(obj, datetime):
        return iso(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="python", by_alias=True, exclude_none=True)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z)


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not a valid JSON number")


def loads(body: bytes) -> Any:
    if not body:
        raise InvalidRequest("request body is empty; a JSON object is expected", field="body")
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except InvalidRequest:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON: {exc}", field="body") from None


def strip_nones(obj: Any) -> Any:
    """The envelope omits nulls."""
    if isinstance(obj, dict):
        return {k: strip_nones(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [strip_nones(v) for v in obj]
    return obj
