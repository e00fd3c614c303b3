"""The PostgreSQL writer's binary COPY of event rows stores exactly the values given
(the encoder writes PostgreSQL's binary format itself, column by column), refuses a
duplicate key as the INSERT did, and hands values it has no encoder for to asyncpg."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.util import greenlet_spawn

from tanso_mcp.services.metering import sqlio
from tanso_mcp.services.metering.batch import _EVENT_COLUMNS, _EVENT_EXTRA_COLUMNS
from tanso_mcp.services.metering.sqlio import AsyncpgTx
from tests.conftest import PG_URL

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (TANSO_TEST_DATABASE_URL)"),
]

COLUMNS = _EVENT_COLUMNS + _EVENT_EXTRA_COLUMNS
T = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def _rows(n: int, prefix: str) -> list[tuple]:
    plus2 = timezone(timedelta(hours=2))
    rows = []
    for i in range(n):
        rows.append(
            (
                f"{prefix}-id-{i:04d}",
                "env-1",
                f"{prefix}-key-{i}",
                "CLIENT_TRACKED",
                "café ☕" if i % 3 == 0 else "api_call",  # not ASCII
                f"cust-{i % 4}",
                None if i % 2 else "feat-1",  # NULL beside values in one column
                "sub-1",
                (T + timedelta(microseconds=i)).astimezone(plus2),  # another offset
                i * 10_000,
                -(2**62) if i == 1 else i,
                2**63 - 1,
                0,
                i % 2 == 0,
                None,
                '{"n": "' + "x" * 5000 + '"}' if i == 2 else None,
                T,
                -5 if i == 3 else None,
                "rule",
                None,
                None,
                2**40,
                None,
                None,
            )
        )
    return rows


async def _copy_and_read(ctx, rows, *, table="ev") -> list[tuple]:
    async with ctx.db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        async with raw.transaction():
            await raw.execute(
                f"CREATE TEMP TABLE {table} (LIKE events INCLUDING ALL) ON COMMIT DROP"
            )
            await greenlet_spawn(AsyncpgTx(raw).insert_many, table, COLUMNS, rows)
            cols = ", ".join(COLUMNS)
            return [tuple(r) for r in await raw.fetch(f"SELECT {cols} FROM {table} ORDER BY id")]


async def test_copied_rows_read_back_as_given(ctx):
    rows = _rows(40, "a")
    sqlio._COPY_ENCODERS.pop(("ev", COLUMNS), None)
    back = await _copy_and_read(ctx, rows)
    assert back == rows  # datetimes compare as instants
    encoders = sqlio._COPY_ENCODERS[("ev", COLUMNS)]
    assert encoders and sqlio._copy_binary(encoders, rows) is not None  # not asyncpg's


async def test_a_value_without_encoder_goes_through_asyncpg(ctx):
    rows = _rows(3, "b")
    rows[1] = rows[1][:9] + (10_000.0,) + rows[1][10:]  # a float in a bigint column
    back = await _copy_and_read(ctx, rows, table="ev2")
    assert back == rows and type(back[1][9]) is int


async def test_a_duplicate_key_fails_the_copy_as_an_integrity_error(ctx):
    rows = _rows(5, "c")
    rows.append(("c-id-9999",) + rows[0][1:])  # same (environment, key) as row 0
    with pytest.raises(IntegrityError):
        await _copy_and_read(ctx, rows, table="ev3")
