"""Exact arithmetic for money, event costs and credit quantities.

Rules:

* Every amount is a :class:`~decimal.Decimal`; binary floats never enter a calculation.
  A float that already came out of a JSON/pydantic parser is converted through its
  shortest ``repr`` (``0.1`` -> ``Decimal("0.1")``), never ``Decimal(0.1)``.
* Arithmetic runs in :data:`CONTEXT` (100 significant digits, traps on invalid
  operations), so products of two accepted inputs (each at most :data:`MAX_DIGITS`
  significant digits) are exact. Use :func:`decimal_context` when doing your own
  arithmetic on domain values; the module-level functions use it internally.
* Rounding is ``ROUND_HALF_UP`` as in Java's ``HALF_UP``: ties go *away from zero*
  (``2.345 -> 2.35``, ``-2.345 -> -2.35``).
* Invoice amounts and lines: rounded once per line to the currency's minor unit
  (:func:`round_money`); stored as integer minor units (:func:`to_minor`).
* Event costs and revenues: 6 dp (:func:`round_cost`); stored as integer micro-units
  (:func:`to_micros`) so that SQL ``SUM`` is exact on SQLite and PostgreSQL alike.
* Credit quantities: 4 dp (:func:`round_credits`); :func:`to_credit_units` gives the
  integer ten-thousandths used where SQL must add or subtract balances exactly.

Input limits (anything outside is an ``InvalidRequest`` naming the field): finite
numbers only, ``|x| < 10**18``, at most 40 significant digits, non-zero values not
smaller than ``1e-30``. Negative zero is normalised to zero.

Further decisions:

* ``to_minor`` rounds (half-up) rather than rejecting extra decimals; use
  :func:`parse_money_amount` at input boundaries where extra decimals must be refused
  (plan prices, top-up amounts).
* Currency codes are normalised to upper case; unknown but well-formed codes get 2
  minor digits.
"""

from __future__ import annotations

import json as _json
import math
import re
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from fractions import Fraction
from typing import Any

from tanso_mcp.errors import InvalidRequest

__all__ = [
    "CONTEXT",
    "COST_PLACES",
    "CREDIT_PLACES",
    "MAX_DIGITS",
    "MINOR_UNITS",
    "NumberError",
    "coerce_decimal",
    "decimal_context",
    "dumps_json",
    "floor_credits",
    "from_credit_units",
    "from_micros",
    "from_minor",
    "json_number",
    "minor_units",
    "normalize_currency",
    "parse_money_amount",
    "require_non_negative",
    "require_positive",
    "round_cost",
    "round_credits",
    "round_money",
    "round_places",
    "to_credit_units",
    "to_decimal",
    "to_micros",
    "to_minor",
    "to_non_negative",
    "to_positive",
]

#: Arithmetic context for all domain maths: wide enough that nothing we accept loses
#: precision in a product, HALF_UP rounding, and traps instead of silent NaN/Infinity.
CONTEXT = Context(
    prec=100,
    rounding=ROUND_HALF_UP,
    Emin=-999_999,
    Emax=999_999,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)

MAX_DIGITS = 40
_MAX_ADJUSTED = 17  # |x| < 1e18
_MIN_ADJUSTED = -30  # non-zero |x| >= 1e-30
_MAX_INT = 10**18

COST_PLACES = 6
CREDIT_PLACES = 4

_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_CURRENCY_RE = re.compile(r"[A-Z]{3}\Z")

#: ISO-4217 minor-unit exponents that differ from the default of 2.
MINOR_UNITS: dict[str, int] = {
    # zero-decimal currencies
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "UYI": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    # three-decimal currencies
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
    # four-decimal units of account
    "CLF": 4,
    "UYW": 4,
}
_DEFAULT_MINOR_UNITS = 2


def decimal_context():
    """A context manager running the block in :data:`CONTEXT`."""
    return localcontext(CONTEXT)


class NumberError(ValueError):
    """Raised by :func:`coerce_decimal`; the message is phrased to follow a field name
    ("must be a number")."""


def coerce_decimal(value: Any, *, allow_float: bool = True) -> Decimal:
    """Convert ``value`` to an exact Decimal or raise :class:`NumberError`.

    Accepts ``int`` (not ``bool``), ``Decimal``, numeric ``str`` (plain or exponent
    notation, surrounding whitespace ignored) and, unless ``allow_float`` is false, a
    finite ``float`` via ``Decimal(repr(f))``.
    """
    if isinstance(value, bool):
        raise NumberError("must be a number, not a boolean")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        if not -_MAX_INT < value < _MAX_INT:
            raise NumberError("is too large")
        d = Decimal(value)
    elif isinstance(value, float):
        if not allow_float:
            raise NumberError("must be an exact number, not a float")
        if not math.isfinite(value):
            raise NumberError("must be a finite number")
        d = Decimal(repr(value))
    elif isinstance(value, str):
        s = value.strip()
        if len(s) > 200 or not _NUMBER_RE.match(s):
            raise NumberError(f"must be a number (got {value[:40]!r})")
        d = Decimal(s)
    else:
        raise NumberError(f"must be a number (got {type(value).__name__})")
    if not d.is_finite():
        raise NumberError("must be a finite number")
    if d.is_zero():
        return d.copy_abs()  # normalise -0
    adjusted = d.adjusted()
    if adjusted > _MAX_ADJUSTED:
        raise NumberError("is too large")
    if adjusted < _MIN_ADJUSTED:
        raise NumberError("is too small (below 1e-30)")
    significant = "".join(map(str, d.as_tuple().digits)).strip("0")
    if len(significant) > MAX_DIGITS:
        raise NumberError(f"has too many significant digits (max {MAX_DIGITS})")
    return d


def to_decimal(value: Any, field: str, *, allow_float: bool = True) -> Decimal:
    """Parse ``value`` exactly; ``InvalidRequest`` naming ``field`` if it is not a
    finite number (bools, NaN, Infinity and non-numeric strings are refused)."""
    try:
        return coerce_decimal(value, allow_float=allow_float)
    except NumberError as exc:
        raise InvalidRequest(f"{field} {exc}", field=field) from None


def require_non_negative(value: Decimal, field: str) -> Decimal:
    if value < 0:
        raise InvalidRequest(f"{field} must be greater than or equal to 0", field=field)
    return value


def require_positive(value: Decimal, field: str) -> Decimal:
    if value <= 0:
        raise InvalidRequest(f"{field} must be greater than 0", field=field)
    return value


def to_non_negative(value: Any, field: str) -> Decimal:
    return require_non_negative(to_decimal(value, field), field)


def to_positive(value: Any, field: str) -> Decimal:
    return require_positive(to_decimal(value, field), field)


# ---------------------------------------------------------------------------
# currencies and rounding


def normalize_currency(code: Any, field: str = "currency") -> str:
    """Upper-case a three-letter currency code; ``InvalidRequest`` otherwise."""
    if not isinstance(code, str) or not _CURRENCY_RE.match(code.strip().upper()):
        raise InvalidRequest(f"{field} must be a three-letter ISO-4217 currency code", field=field)
    return code.strip().upper()


def minor_units(currency: str) -> int:
    """Number of decimal places of ``currency``'s minor unit (default 2)."""
    return MINOR_UNITS.get(currency.strip().upper(), _DEFAULT_MINOR_UNITS)


def _round_fraction(q: Fraction, places: int) -> Decimal:
    scaled = q * (10**places)
    magnitude = abs(scaled)
    n = magnitude.numerator // magnitude.denominator
    if (magnitude - n) * 2 >= 1:  # half away from zero
        n += 1
    if scaled < 0:
        n = -n
    return Decimal(n).scaleb(-places, CONTEXT)


def round_places(amount: Decimal | int | Fraction, places: int) -> Decimal:
    """Round half-up (away from zero) to ``places`` decimals. Accepts an exact
    :class:`~fractions.Fraction` too, rounded without any intermediate rounding."""
    if isinstance(amount, Fraction):
        result = _round_fraction(amount, places)
    else:
        if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
            raise TypeError(f"expected Decimal, int or Fraction, got {type(amount).__name__}")
        with decimal_context():
            result = Decimal(amount).quantize(Decimal(1).scaleb(-places))
    return result.copy_abs() if result.is_zero() else result


def round_money(amount: Decimal | int | Fraction, currency: str) -> Decimal:
    """Round to the minor unit of ``currency`` (USD 2 dp, JPY 0, KWD 3), half-up."""
    return round_places(amount, minor_units(currency))


def to_minor(amount: Decimal | int | Fraction, currency: str) -> int:
    """Integer minor units (cents) of ``amount``, rounded half-up first."""
    places = minor_units(currency)
    return int(round_places(amount, places).scaleb(places, CONTEXT))


def from_minor(minor: int, currency: str) -> Decimal:
    """Inverse of :func:`to_minor`: ``from_minor(1234, "USD") == Decimal("12.34")``."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"minor units must be an int, got {type(minor).__name__}")
    return Decimal(minor).scaleb(-minor_units(currency), CONTEXT)


def parse_money_amount(value: Any, currency: str, field: str) -> Decimal:
    """A non-negative amount with no more decimals than ``currency`` allows, returned
    at exactly that many decimals (``"49"`` -> ``Decimal("49.00")``)."""
    d = to_non_negative(value, field)
    places = minor_units(currency)
    if d != round_places(d, places):
        raise InvalidRequest(
            f"{field} has more than {places} decimal places for {currency.upper()}",
            field=field,
        )
    return round_places(d, places)


def round_cost(amount: Decimal | int | Fraction) -> Decimal:
    """Event cost/revenue precision: 6 dp, half-up."""
    return round_places(amount, COST_PLACES)


def to_micros(amount: Decimal | int | Fraction) -> int:
    """Integer micro-units (1e-6) of ``amount`` after :func:`round_cost`."""
    return int(round_cost(amount).scaleb(COST_PLACES, CONTEXT))


def from_micros(micros: int) -> Decimal:
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"micro-units must be an int, got {type(micros).__name__}")
    return Decimal(micros).scaleb(-COST_PLACES, CONTEXT)


def round_credits(amount: Decimal | int | Fraction) -> Decimal:
    """Credit-ledger precision: 4 dp, half-up."""
    return round_places(amount, CREDIT_PLACES)


def floor_credits(amount: Decimal | int) -> Decimal:
    """Truncate toward zero at 4 dp (used where rounding up would overdraw)."""
    with decimal_context():
        return Decimal(amount).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)


def to_credit_units(amount: Decimal | int | Fraction) -> int:
    """Integer ten-thousandths of a credit after :func:`round_credits`."""
    return int(round_credits(amount).scaleb(CREDIT_PLACES, CONTEXT))


def from_credit_units(units: int) -> Decimal:
    if isinstance(units, bool) or not isinstance(units, int):
        raise TypeError(f"credit units must be an int, got {type(units).__name__}")
    return Decimal(units).scaleb(-CREDIT_PLACES, CONTEXT)


def json_number(value: Decimal | int) -> str:
    """Plain (non-exponent) JSON number text for an exact value: ``1E+2`` -> ``100``."""
    if isinstance(value, bool):
        raise TypeError("bool is not a number")
    if isinstance(value, int):
        return str(value)
    if not value.is_finite():
        raise ValueError("non-finite Decimal cannot be written as JSON")
    return format(value.copy_abs() if value.is_zero() else value, "f")


def dumps_json(obj: Any) -> str:
    """Compact JSON text in which Decimals are written as exact JSON numbers (plain
    notation, no float round-trip). Accepts dict (str keys), list/tuple, str, int,
    bool, None and Decimal; floats are refused."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, Decimal | int):
        return json_number(obj)
    if isinstance(obj, str):
        return _json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, dict):
        parts = []
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, got {type(key).__name__}")
            parts.append(f"{_json.dumps(key, ensure_ascii=False)}:{dumps_json(value)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps_json(item) for item in obj) + "]"
    raise TypeError(f"cannot write {type(obj).__name__} as exact JSON")
