"""Exact, bounded JSON numbers, shared by request parsing and the JSON columns.

Non-integers become ``Decimal`` (never float). Numbers are bounded because a JSON literal
such as ``1E+999999999`` is cheap to send and ruinous to use: turning it into an int or
writing it out in full takes minutes and gigabytes. Request bodies refuse integers
beyond 64 bits (``jsonio.check_shape``); stored documents read such values (written from
a Decimal like ``1e20``) back as exact ``Decimal`` so that orjson can write them again.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MAX_EXPONENT = 100  # |number| < 1e101, at most 100 decimal places
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


class NumberOutOfRange(ValueError):
    pass


def parse_float(text: str) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise NumberOutOfRange(f"{text[:40]} is not a valid JSON number") from None
    if d.adjusted() > MAX_EXPONENT or d.as_tuple().exponent < -MAX_EXPONENT:  # type: ignore[operator]
        raise NumberOutOfRange(
            f"the number {text[:40]} is out of range (at most 1e{MAX_EXPONENT}, "
            f"{MAX_EXPONENT} decimal places)"
        )
    return d


def wide_int(text: str) -> int | Decimal:
    """An int when orjson can write it, else the exact Decimal (stored documents)."""
    value = int(text)
    if INT_MIN <= value <= INT_MAX:
        return value
    return Decimal(text)
