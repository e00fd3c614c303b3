"""Column types that behave the same on SQLite and PostgreSQL.

- UTCDateTime: aware UTC datetimes in and out (SQLite drops tzinfo; we re-attach it).
- DecimalText: exact Decimals for values SQL never does arithmetic on (unit prices,
  caps): TEXT on SQLite, NUMERIC on PostgreSQL.
- Quantities that SQL sums or updates in place (money, credits, usage) are stored as
  scaled integers (see `tanso_mcp.db.scale`), because SQLite arithmetic on TEXT or
  NUMERIC would go through floats.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from sqlalchemy import DateTime, Numeric, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from .. import jsonnum


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not UTC:
            if value.tzinfo is None:
                raise ValueError("naive datetime passed to the database")
            value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def bind_processor(self, dialect: Dialect):
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite: the text SQLAlchemy's DATETIME stores ("YYYY-MM-DD HH:MM:SS.ffffff",
        # compared as text), made in one C call instead of a %-format per value (a
        # billing run binds hundreds of thousands)
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is not UTC:
                if value.tzinfo is None:
                    raise ValueError("naive datetime passed to the database")
                value = value.astimezone(UTC)
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is UTC:  # asyncpg's own
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class DecimalText(TypeDecorator[Decimal]):
    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(38, 12))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value, dialect: Dialect):
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("floats are not accepted for exact decimal columns")
        d = Decimal(value)
        return d if dialect.name == "postgresql" else format(d, "f")

    def process_result_value(self, value, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value)) if not isinstance(value, Decimal) else value


class JSONDoc(TypeDecorator):
    """A JSON document stored as text, with Decimals written as exact JSON numbers and
    read back as Decimals (the database never computes with these values)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return orjson.dumps(value, default=_json_default).decode()

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return json.loads(value, parse_float=Decimal, parse_int=jsonnum.wide_int)


def _json_default(v):
    if isinstance(v, Decimal):
        return orjson.Fragment(format(v, "f").encode())
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


_ID_LOCK = threading.Lock()
_last_id = 0
_RAND_B = (1 << 62) - 1
# random bytes are drawn from the OS 256 ids' worth at a time: a call per id releases
# the GIL, and with the SQLite thread waiting for it that costs several microseconds
_RAND_CHUNK = 10 * 256
_rand = b""
_rand_at = 0


def _forget_random() -> None:
    # a forked child must not hand out the random bits its parent is also using, nor
    # continue its parent's sequence (both would make "last + 1" in the same millisecond)
    global _rand, _rand_at, _last_id
    _rand, _rand_at, _last_id = b"", 0, 0


if hasattr(os, "register_at_fork"):  # not on Windows (no fork there)
    os.register_at_fork(after_in_child=_forget_random)


def new_id() -> str:
    """Time-ordered UUID (v7 layout): index-friendly primary keys. Monotonic within a
    process (RFC 9562 §6.2, method 2): an id made in the same millisecond as the
    previous one is that one plus one, so rows created in sequence sort in sequence."""
    global _last_id, _rand, _rand_at
    ms = time.time_ns() // 1_000_000
    with _ID_LOCK:
        if _rand_at >= len(_rand):
            _rand, _rand_at = os.urandom(_RAND_CHUNK), 0
        rand = int.from_bytes(_rand[_rand_at : _rand_at + 10], "big")
        _rand_at += 10
        value = (ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76
        value |= ((rand >> 68) & 0xFFF) << 64
        value |= 0b10 << 62
        value |= rand & _RAND_B
        if value <= _last_id and (_last_id & _RAND_B) != _RAND_B:
            value = _last_id + 1
        _last_id = value
    h = f"{value:032x}"  # the UUID's canonical text, without building a UUID object
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


ID = String(36)
