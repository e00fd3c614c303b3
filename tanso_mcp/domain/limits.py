"""Usage limits (``max_usage``) of a plan-feature rule (reference §4.9, §7 item 27).

``used`` is the usage counted in the rule's ``reset_mode`` window (the caller picks the
window: the current period for ``reset``, the subscription's lifetime for
``accumulate``). ``max_usage`` ``None`` means unlimited.

* reached (entitlement check denies, ingest zeroes further events): ``used >= max_usage``
  — the event that crosses the line is recorded in full, the next ones are zeroed;
* simulation (evaluate with a requested usage) would exceed: ``used + requested >
  max_usage`` (a request that lands exactly on the limit is allowed);
* remaining: ``max(max_usage − used, 0)``.
"""

from __future__ import annotations

from decimal import Decimal

from tanso_mcp.domain.money import decimal_context

__all__ = ["limit_reached", "remaining_usage", "would_exceed"]


def limit_reached(used: Decimal | int, max_usage: Decimal | int | None) -> bool:
    return max_usage is not None and Decimal(used) >= Decimal(max_usage)


def would_exceed(
    used: Decimal | int, requested: Decimal | int, max_usage: Decimal | int | None
) -> bool:
    if max_usage is None:
        return False
    with decimal_context():
        return Decimal(used) + Decimal(requested) > Decimal(max_usage)


def remaining_usage(used: Decimal | int, max_usage: Decimal | int | None) -> Decimal | None:
    if max_usage is None:
        return None
    with decimal_context():
        return max(Decimal(max_usage) - Decimal(used), Decimal(0))
