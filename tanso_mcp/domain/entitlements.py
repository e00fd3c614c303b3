"""Who may use a feature, when an event may be counted, which subscription a usage event counts on, and why a use is
refused — the one statement of these rules, used by the entitlement check, the
evaluate simulation, single and batch ingest, the fast lane and the MCP tools alike.

Pure: callers load plain snapshots (in bulk SQL where it matters) and take every
decision here. Quantities are scaled integers (ten-thousandths of a unit or a credit).

**Status.** A subscription is *past due* while it has an invoice in status
``PAST_DUE``. Its status is ``cancelled`` (ended, or deactivated by a cancellation),
``pending_payment`` (not yet active), ``past_due``, ``cancel_scheduled`` (ends at the
period end) or ``active``. Only ``active`` and ``cancel_scheduled`` subscriptions grant
features.

**Event time.** An event counts in the period that contains its ``occurredAt``. It is
refused (400 naming ``occurredAt``) when it lies more than the allowed skew in the
future or more than the maximum age in the past of the environment's clock
(:func:`event_time_problem`).

**Eligibility.** A subscription can take an event occurring at ``at`` for a feature when
it grants features (above), it had started by ``at`` (an event dated before a
subscription's start belongs to no subscription: no limit, no credits), and the feature
is granted: a non-revoked entitlement, the plan's rule enabled and the feature enabled.

**Attribution.** Among the eligible subscriptions, oldest first: the one the event names
(``subscriptionId``) when it is eligible; else the oldest that still *has room* (the
decision below allows the usage on it); else the oldest. A check answers for the
subscription an event of the same usage would be attributed to, so the check always
predicts the next ingest.

**Decision**, on the attributed subscription, in this order:

1. ``used >= limit`` in the rule's window → "Usage limit exceeded" (an ingested event is
   recorded with zero billable usage: the event that crosses the line counts in full);
2. a hard-limited credit denomination that cannot cover the usage's credits →
   "Credit limit reached" (an ingested event is refused, nothing stored);
3. otherwise allowed (credits short of a soft limit leave the rest as overage).

A simulation of ``requested`` usage also refuses when ``used + requested > limit``
("Proposed usage would exceed limit") and reports the credit projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Protocol, TypeVar

__all__ = [
    "NO_CUSTOMER",
    "NO_SUBSCRIPTION",
    "PAST_DUE_INVOICE_STATUS",
    "REASON_CREDITS",
    "REASON_LIMIT",
    "REASON_PROPOSED",
    "Simulation",
    "attribute",
    "eligible_at",
    "event_time_problem",
    "grants_feature",
    "grants_features",
    "is_past_due",
    "limit_q",
    "simulate",
    "subscription_status",
    "verdict",
]

PAST_DUE_INVOICE_STATUS = "PAST_DUE"

REASON_LIMIT = "Usage limit exceeded"
REASON_CREDITS = "Credit limit reached"
REASON_PROPOSED = "Proposed usage would exceed limit"
NO_CUSTOMER = "Customer not found"
NO_SUBSCRIPTION = "No active subscription found for this feature"

_SCALE = 10_000  # ten-thousandths, as stored


# --------------------------------------------------------------------------- status


def is_past_due(invoice_statuses: Iterable[str]) -> bool:
    """Whether a subscription with invoices in these statuses is past due."""
    return PAST_DUE_INVOICE_STATUS in invoice_statuses


def subscription_status(
    *,
    is_active: bool,
    ended_at: datetime | None,
    cancelled_at: datetime | None,
    cancel_mode: str | None,
    cancel_effective_at: datetime | None,
    past_due: bool,
) -> str:
    """pending_payment | active | cancel_scheduled | past_due | cancelled."""
    if ended_at is not None or (not is_active and cancelled_at is not None):
        return "cancelled"
    if not is_active:
        return "pending_payment"
    if past_due:
        return "past_due"
    if cancel_mode == "END_OF_PERIOD" and cancel_effective_at is not None:
        return "cancel_scheduled"
    return "active"


def grants_features(*, is_active: bool, ended_at: datetime | None, past_due: bool) -> bool:
    """Whether a subscription in this state grants its features (status ``active`` or
    ``cancel_scheduled``)."""
    return is_active and ended_at is None and not past_due


def grants_feature(*, entitled: bool, rule_enabled: bool, feature_enabled: bool) -> bool:
    """Whether a subscription that grants features grants this one."""
    return entitled and rule_enabled and feature_enabled


class _Started(Protocol):
    @property
    def started_at(self) -> datetime: ...


S = TypeVar("S", bound=_Started)


def eligible_at(candidates: Sequence[S], at: datetime) -> Sequence[S]:
    """The candidates (subscriptions granting the feature, oldest first) that had started
    by ``at``. Returns ``candidates`` itself when all had (no allocation on the hot
    path)."""
    for c in candidates:
        if c.started_at > at:
            return [c for c in candidates if c.started_at <= at]
    return candidates


def event_time_problem(
    occurred_at: datetime,
    now: datetime,
    future_skew: timedelta,
    max_age: timedelta,
    clock: str,
) -> str | None:
    """Why an event at ``occurred_at`` cannot be accepted at ``now`` on the environment
    clock described by ``clock``, else ``None``."""
    if occurred_at - now > future_skew:
        return (
            f"occurredAt is more than {int(future_skew.total_seconds())} seconds in the "
            f"future: {clock} says it is {_iso(now)}"
        )
    if now - occurred_at > max_age:
        return (
            f"occurredAt is more than {max_age.days} days in the past: {clock} says it is "
            f"{_iso(now)}"
        )
    return None


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- attribution


T = TypeVar("T")


def attribute(
    candidates: Sequence[T],
    named: str | None,
    has_room: Callable[[T], bool],
    id_of: Callable[[T], str],
) -> T | None:
    """The candidate (eligible, oldest first) an event is attributed to: the named one,
    else the oldest with room, else the oldest. ``has_room`` is only called when there
    is a choice to make."""
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if named is not None:
        for c in candidates:
            if id_of(c) == named:
                return c
    for c in candidates:
        if has_room(c):
            return c
    return candidates[0]


# --------------------------------------------------------------------------- decision


def limit_q(max_usage: Decimal | int | None) -> int | None:
    """A rule's ``max_usage`` in ten-thousandths: ``used_q >= limit_q(m)`` exactly when
    ``used >= m``."""
    if max_usage is None:
        return None
    return int((Decimal(max_usage) * _SCALE).to_integral_value(rounding=ROUND_CEILING))


def verdict(
    used_q: int,
    limit: int | None,
    hard_limit: bool = False,
    available_q: int = 0,
    needed_q: int | None = None,
) -> str | None:
    """``None`` when allowed, else the reason. ``needed_q`` ``None``: the rule draws no
    credits."""
    if limit is not None and used_q >= limit:
        return REASON_LIMIT
    if hard_limit and needed_q is not None and available_q < needed_q:
        return REASON_CREDITS
    return None


class Simulation(tuple):
    """(would_exceed_usage, would_exceed_credits, would_exceed_limit)."""

    __slots__ = ()

    @property
    def would_exceed_usage(self) -> bool:
        return self[0]

    @property
    def would_exceed_credits(self) -> bool:
        return self[1]

    @property
    def would_exceed_limit(self) -> bool:
        return self[2]


def simulate(
    used_q: int,
    requested_q: int,
    limit: int | None,
    hard_limit: bool = False,
    available_q: int = 0,
    needed_q: int | None = None,
) -> Simulation:
    """What ``requested_q`` more usage would do: exceed the usage limit (``used +
    requested > limit``: landing exactly on it is allowed), need more credits than are
    available, and exceed a *limit* — the usage limit or a hard credit limit (credits
    short of a soft limit are billed as overage, not refused)."""
    usage = limit is not None and used_q + requested_q > limit
    credits = needed_q is not None and available_q < needed_q
    return Simulation((usage, credits, usage or (credits and hard_limit)))
