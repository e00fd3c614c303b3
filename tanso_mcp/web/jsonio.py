"""JSON in and out. Numbers are parsed as Decimal (never float), bounded (see
``jsonnum``), and Decimals are written as JSON numbers, exactly. Request bodies are
UTF-8 (nothing else is guessed: the standard library would also take UTF-16 and raw
surrogates), nest at most ``MAX_DEPTH`` levels and hold only storable text
(``textrules``)."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from .. import jsonnum, textrules
from ..clock import iso
from ..errors import InvalidRequest

MAX_DEPTH = 64


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
    raise InvalidRequest(f"{name} is not a valid JSON number", field="body")


def loads(body: bytes) -> Any:
    if not body:
        raise InvalidRequest("request body is empty; a JSON object is expected", field="body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid UTF-8 (byte {exc.start})", field="body"
        ) from None
    try:
        data = json.loads(
            text,
            parse_float=jsonnum.parse_float,
            parse_constant=_reject_constant,
        )
    except InvalidRequest:
        raise
    except jsonnum.NumberOutOfRange as exc:
        raise InvalidRequest(str(exc), field="body") from None
    except RecursionError:
        raise too_deep() from None
    except ValueError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}", field="body") from None
    check_shape(data)
    if textrules.body_may_hold_bad_text(body):
        textrules.check_document(data)
    return data


def too_deep() -> InvalidRequest:
    return InvalidRequest(f"JSON nested deeper than {MAX_DEPTH} levels", field="body")


def check_shape(data: Any) -> None:
    """Nesting, level by level (no recursion), so a deep document cannot exhaust the stack
    here or in whatever walks it later; and integers orjson cannot write back
    (beyond 64 bits; a larger number can be sent with an exponent, as a Decimal)."""
    level = [data] if type(data) is dict or type(data) is list else []
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            raise too_deep()
        below = []
        for container in level:
            for child in container.values() if type(container) is dict else container:
                t = type(child)
                if t is dict or t is list:
                    below.append(child)
                elif t is int and not jsonnum.INT_MIN <= child <= jsonnum.INT_MAX:
                    raise InvalidRequest(
                        f"the integer {str(child)[:40]} is out of the 64-bit range", field="body"
                    )
        level = below
        depth += 1


def strip_nones(obj: Any) -> Any:
    """The envelope omits nulls."""
    if isinstance(obj, dict):
        return {k: strip_nones(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [strip_nones(v) for v in obj]
    return obj
