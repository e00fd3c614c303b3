"""Pure rules for forwarding overage to a payment provider's usage meter.

Per (subscription, feature, period) the reporter sends the overage not reported yet as
one meter event. Reports chain — each starts at the cumulative total the previous one
reached — and each carries an identifier derived from what it reports, so the same
step is the same event however often it is sent.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

# the provider's window for usage timestamps: at most this far in the past (Stripe
# accepts 35 days; keep an hour of margin for slow retries) and never in the future
MAX_PAST = timedelta(days=35) - timedelta(hours=1)
RETRY_BASE = timedelta(seconds=5)
RETRY_MAX = timedelta(minutes=15)
CLAIM_LEASE = timedelta(seconds=60)


def meter_identifier(
    environment_id: str,
    subscription_id: str,
    feature_id: str,
    period_start: datetime,
    from_q: int,
    to_q: int,
) -> str:
    """Deterministic, at most 100 characters (the provider's limit)."""
    raw = "|".join(
        (
            environment_id,
            subscription_id,
            feature_id,
            period_start.isoformat(),
            str(from_q),
            str(to_q),
        )
    )
    return "tanso_" + hashlib.sha256(raw.encode()).hexdigest()[:48]


def reportable_total(overage_q: int, scale: int) -> int:
    """Meter values are whole units: the part of a cumulative overage (scaled by
    ``scale``) that may be reported; a fraction waits until it adds up to a unit."""
    return (max(overage_q, 0) // scale) * scale


def meter_timestamp(desired: datetime, real_now: datetime) -> datetime:
    """A timestamp the provider accepts: ``desired`` (the environment's time, which a
    test clock may have moved anywhere) kept within [real now − MAX_PAST, real now]."""
    return max(min(desired, real_now), real_now - MAX_PAST).replace(microsecond=0)


def retry_delay(attempts: int) -> timedelta:
    """Back-off after ``attempts`` failed sends (1, 2, …): 5 s doubling, at most 15 min."""
    delay = RETRY_BASE * (2 ** max(0, min(attempts - 1, 16)))
    return min(delay, RETRY_MAX)
