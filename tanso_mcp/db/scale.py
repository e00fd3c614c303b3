"""Scaled-integer storage for quantities that SQL adds up or updates in place.

money: integer minor units of the row's currency (see tanso_mcp.domain.money)
credits and usage units: integer ten-thousandths (4 dp)
event cost and revenue: integer micro-units (6 dp)
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

QTY_SCALE = 10_000  # credits and usage units: 4 dp
MICROS = 1_000_000  # event cost / revenue: 6 dp

_Q4 = Decimal("0.0001")
_Q6 = Decimal("0.000001")


def qty_to_int(value: Decimal) -> int:
    return int(
        (Decimal(value).quantize(_Q4, rounding=ROUND_HALF_UP) * QTY_SCALE).to_integral_value()
    )


def int_to_qty(value: int | None) -> Decimal:
    return (Decimal(value or 0) / QTY_SCALE).quantize(_Q4)


def micros_from(value: Decimal) -> int:
    return int((Decimal(value).quantize(_Q6, rounding=ROUND_HALF_UP) * MICROS).to_integral_value())


def micros_to(value: int | None) -> Decimal | None:
    return None if value is None else (Decimal(value) / MICROS).quantize(_Q6)
