"""What is left under a usage limit (``max_usage``) of a plan-feature rule:
``max(max_usage − used, 0)``, ``None`` when unlimited. Whether a limit is reached or
would be exceeded is the entitlement decision (:mod:`tanso_mcp.domain.entitlements`).
"""

from __future__ import annotations

from decimal import Decimal

from tanso_mcp.domain.money import decimal_context

__all__ = ["remaining_usage"]


def remaining_usage(used: Decimal | int, max_usage: Decimal | int | None) -> Decimal | None:
    if max_usage is None:
        return None
    with decimal_context():
        return max(Decimal(max_usage) - Decimal(used), Decimal(0))
