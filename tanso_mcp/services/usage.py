"""The seam between invoicing and metering: the usage lines of an invoice.

Invoicing (services/billing) calls `usage_lines` whenever it builds or recomputes an
invoice that closes a subscription period; metering owns how usage is counted and
priced. Contract:

- only overage is priced (units covered by credits are never billed twice);
- `reset` features: graduated tiers on the period total; `accumulate` features: the
  period's increment, charge(prior + period) − charge(prior);
- one line per metered feature with a non-zero charge; `amount` is exact (the caller
  rounds once per line, half-up, to the currency's minor unit).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Plan, Subscription


@dataclass(frozen=True)
class UsageLine:
    feature_id: str
    description: str
    quantity: Decimal  # billed (overage) units
    amount: Decimal  # exact, unrounded


async def usage_lines(
    s: AsyncSession, sub: Subscription, plan: Plan, period_start: datetime, period_end: datetime
) -> list[UsageLine]:
    """Metering has not landed in this build yet: no usage is recorded, so no usage line
    exists to bill."""
    return []
