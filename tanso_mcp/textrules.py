"""Text every database can store, checked once where input arrives.

PostgreSQL refuses a NUL character in text and nothing can encode an unpaired UTF-16
surrogate as UTF-8, while SQLite stores both: without one rule the same request would
be a 500 on one database and accepted on the other. So any string (body value, object
key, path or query parameter, MCP argument) holding U+0000 or a lone surrogate
(U+D800-U+DFFF) is refused with a 400 naming the field, on every database alike.

In a JSON body such characters can only arrive escaped (``\\u0000``, ``\\ud800``): JSON
forbids raw control characters and a raw surrogate is not valid UTF-8, which the
decoder refuses. :func:`body_may_hold_bad_text` looks for those escapes in the raw bytes
(one regular-expression scan, no Python loop), so the walk over the decoded document
runs only for the rare body that has one.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidRequest

_BAD = re.compile("[\x00\ud800-\udfff]")
# \u0000 or \uD800-\uDFFF as JSON escapes (hex digits in either case)
_BAD_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def body_may_hold_bad_text(body: bytes) -> bool:
    return _BAD_ESCAPE.search(body) is not None


def bad_text(value: str) -> bool:
    return _BAD.search(value) is not None


def refusal(field: str) -> InvalidRequest:
    return InvalidRequest(
        f"{field} contains a NUL character or an unpaired UTF-16 surrogate, which cannot be stored",
        field=field,
    )


def check_text(value: str, field: str) -> str:
    if _BAD.search(value) is not None:
        raise refusal(field)
    return value


def find_bad_text(data: Any, prefix: str = "") -> str | None:
    """The path (``events[3].customerReferenceId``, as batch errors name fields) of the
    first string, or object
    key, in ``data`` that holds a NUL or an unpaired surrogate; ``None`` when all are
    clean. Iterative, so nesting depth costs no stack."""
    stack: list[tuple[str, Any]] = [(prefix, data)]
    while stack:
        path, value = stack.pop()
        t = type(value)
        if t is str:
            if _BAD.search(value) is not None:
                return path or "body"
        elif t is dict:
            for key, child in value.items():
                name = f"{path}.{key}" if path else str(key)
                if type(key) is str and _BAD.search(key) is not None:
                    return path or "body"
                stack.append((name, child))
        elif t is list:
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
    return None


def check_document(data: Any, prefix: str = "") -> None:
    """Raise the 400 for the first bad string in ``data`` (see :func:`find_bad_text`)."""
    field = find_bad_text(data, prefix)
    if field is not None:
        raise refusal(field)
