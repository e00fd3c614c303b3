"""Credit maths: credits an event burns, credits before overage, grants.

* ``credits_for_units``: credits an event burns, ``units × weight`` rounded to 4 dp.
* ``covered_units``: how many of an event's units the deducted credits paid for. The
  covered count is ``deducted / weight`` floored. Usage may be fractional, so the
  floor is taken at the precision of the event's own units (whole units for a
  whole-unit event; 2 decimals for ``2.50`` units), and when the
  deduction covered the event's full credit cost every unit is covered (no overage from
  4-dp rounding). Without ``units`` the floor is to whole units. The remainder is
  *overage*, which is what gets billed (``credit_coverage`` does both).
* ``available_credits``: what a subscription's usage may draw from its customer's pool
  of a denomination (there is one pool per customer and denomination; a subscription's
  link to it may cap what it draws per period).
* ``plan_draw``: the usage draw, FIFO over the pool's unexpired grants (ingest, single
  and batch, and ``services/credits.deduct`` all draw through it).
* ``fifo_allocation``: spread an amount over a pool's grants, oldest first (ties by the
  caller's order).
* ``rollover_expiry``: what a pool loses at period end before the new grant: ``NONE``
  everything, ``FULL`` nothing, ``CAPPED`` ``balance − cap`` when positive. Which grants
  lose it is ``fifo_allocation(grants, expiry)`` (oldest first).

All allocation functions return exact Decimals, never take more than is available, and
take in total exactly ``min(amount, total available)``.

Additions: :class:`Coverage`/:func:`credit_coverage`, :func:`credit_delta` (upgrade
grants), :func:`plan_grant_key`, :class:`CreditAllocation` and
:func:`parse_credit_allocations` (the ``creditAllocations`` JSON of
``adminCreatePlan``/``adminUpdatePlan``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from tanso_mcp.domain.money import decimal_context, dumps_json, round_credits
from tanso_mcp.domain.periods import ensure_utc
from tanso_mcp.domain.rules import (
    NonNegative,
    _denomination,
    _fail,
    _load,
    _translate,
    field_path,
)

__all__ = [
    "DRAWABLE_POOL_STATUSES",
    "Coverage",
    "available_credits",
    "CreditAllocation",
    "GrantSlice",
    "RolloverPolicy",
    "covered_units",
    "credit_coverage",
    "credit_delta",
    "credits_for_units",
    "dumps_allocations",
    "fifo_allocation",
    "parse_credit_allocations",
    "plan_draw",
    "plan_grant_key",
    "rollover_expiry",
]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# pools usage may draw from (a pool in any other status gives nothing)
DRAWABLE_POOL_STATUSES = frozenset({"ACTIVE"})


def available_credits(
    balance_q: int,
    pool_status: str,
    draw_limit_q: int | None = None,
    drawn_q: int = 0,
    live_grants_q: int | None = None,
) -> int:
    """Credits (ten-thousandths) a subscription's usage may draw from its customer's pool
    of one denomination now: the balance — no more than the unexpired grants hold, when
    known — within the subscription's draw limit (``None``: none); 0 from a pool that is
    not drawable. Used by the entitlement check and by ingest alike."""
    if pool_status not in DRAWABLE_POOL_STATUSES:
        return 0
    room = balance_q if live_grants_q is None else min(balance_q, live_grants_q)
    if draw_limit_q is not None:
        room = min(room, draw_limit_q - drawn_q)
    return room if room > 0 else 0


class RolloverPolicy(StrEnum):
    NONE = "NONE"
    FULL = "FULL"
    CAPPED = "CAPPED"


def _amount(value: Decimal | int, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name} must be a Decimal or int, got {type(value).__name__}")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{name} must be finite")
    return result


def credits_for_units(units: Decimal | int, weight: Decimal | int = 1) -> Decimal:
    """Credits burnt by ``units`` at ``weight`` credits per unit, 4 dp half-up."""
    with decimal_context():
        return round_credits(_amount(units, "units") * _amount(weight, "weight"))


def covered_units(
    deducted: Decimal | int, weight: Decimal | int = 1, units: Decimal | int | None = None
) -> Decimal:
    """Units paid for by ``deducted`` credits (see the module docstring)."""
    deducted = _amount(deducted, "deducted")
    weight = _amount(weight, "weight")
    if weight <= 0:
        raise ValueError("weight must be > 0")
    if deducted <= 0:
        return Decimal(0)
    if units is None:
        places = 0
        cap = None
    else:
        cap = _amount(units, "units")
        if deducted >= credits_for_units(cap, weight):
            return cap
        exponent = cap.as_tuple().exponent
        places = max(0, -exponent) if isinstance(exponent, int) else 0
    with decimal_context():
        covered = (deducted / weight).quantize(Decimal(1).scaleb(-places), rounding=ROUND_FLOOR)
    if cap is not None:
        covered = min(covered, cap)
    return covered


class Coverage(NamedTuple):
    credits_needed: Decimal
    credits_deducted: Decimal
    covered_units: Decimal
    overage_units: Decimal


def credit_coverage(
    units: Decimal | int, weight: Decimal | int, available: Decimal | int
) -> Coverage:
    """Deduct-before-overage for one event: ``available`` is what the pools can give
    (sum of their draw limits). Worked example: 130 units, weight 1, 100 available ->
    ``(130, 100, 100, 30)``. With a hard limit the caller rejects the event instead when
    ``credits_deducted < credits_needed``."""
    units = _amount(units, "units")
    needed = credits_for_units(units, weight)
    available = max(_amount(available, "available"), Decimal(0))
    deducted = min(needed, available)
    covered = covered_units(deducted, weight, units)
    with decimal_context():
        overage = units - covered
    return Coverage(needed, deducted, covered, overage)


def plan_draw(
    grants: Iterable[tuple[Any, int, datetime | None]], amount_q: int, now: datetime
) -> list[tuple[Any, int]]:
    """The credit draw of usage: ``[(grant, take_q), …]`` taking ``amount_q``
    ten-thousandths of a credit from one pool's grants ``(grant, remaining_q,
    expires_at)``, oldest first in the caller's order (by creation), skipping grants
    expired at ``now`` and empty ones. Takes ``min(amount_q, what the valid grants
    hold)``; how much to ask for is :func:`available_credits` and the entitlement
    decision's business. Integers only: it runs once per credit-drawing event."""
    plan: list[tuple[Any, int]] = []
    left = amount_q
    for grant, remaining_q, expires_at in grants:
        if left <= 0:
            break
        if remaining_q <= 0 or (expires_at is not None and expires_at <= now):
            continue
        take = remaining_q if remaining_q < left else left
        plan.append((grant, take))
        left -= take
    return plan


class GrantSlice(NamedTuple):
    grant_id: Any
    remaining: Decimal
    order: Any
    """Sort key, oldest first: typically ``created_at`` or ``(created_at, id)``."""


def fifo_allocation(
    grants: Iterable[GrantSlice | tuple[Any, Decimal, Any]], amount: Decimal | int
) -> list[tuple[Any, Decimal]]:
    """Ordered ``[(grant_id, take), …]`` consuming ``amount`` from the oldest grants."""
    remaining = _amount(amount, "amount")
    slices = [GrantSlice(*grant) for grant in grants]
    order = sorted(range(len(slices)), key=lambda i: (slices[i].order, i))
    plan: list[tuple[Any, Decimal]] = []
    with decimal_context():
        for i in order:
            if remaining <= 0:
                break
            grant = slices[i]
            take = min(_amount(grant.remaining, "remaining"), remaining)
            if take > 0:
                plan.append((grant.grant_id, take))
                remaining -= take
    return plan


def rollover_expiry(
    policy: RolloverPolicy | str, cap: Decimal | int | None, balance: Decimal | int
) -> Decimal:
    """Credits to expire at period end under ``policy`` (never negative)."""
    policy = RolloverPolicy(policy.upper() if isinstance(policy, str) else policy)
    balance = max(_amount(balance, "balance"), Decimal(0))
    if policy is RolloverPolicy.FULL:
        return Decimal(0)
    if policy is RolloverPolicy.NONE:
        return balance
    if cap is None:
        raise ValueError("CAPPED rollover needs a cap")
    with decimal_context():
        return max(balance - max(_amount(cap, "cap"), Decimal(0)), Decimal(0))


def credit_delta(
    old: Mapping[str, Decimal | int], new: Mapping[str, Decimal | int]
) -> dict[str, Decimal]:
    """Per denomination, what an upgrade grants now: ``new − old`` when positive
    (the credit delta rule); denominations that do not grow are omitted."""
    out: dict[str, Decimal] = {}
    with decimal_context():
        for denomination, amount in new.items():
            delta = _amount(amount, "amount") - _amount(old.get(denomination, 0), "amount")
            if delta > 0:
                out[denomination] = delta
    return out


def plan_grant_key(subscription_id: Any, denomination: str, period_start: datetime) -> str:
    """Idempotency key of a period's plan grant:
    ``plan_grant_<subscriptionId>_<DENOMINATION>_<periodStartEpochMillis>``."""
    start = ensure_utc(period_start, "periodStart")
    millis = (start - _EPOCH) // timedelta(milliseconds=1)
    return f"plan_grant_{subscription_id}_{denomination}_{millis}"


# ---------------------------------------------------------------------------
# plan credit allocations


class CreditAllocation(BaseModel):
    """One entry of a plan's ``creditAllocations``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    denomination: Annotated[str, BeforeValidator(_denomination)]
    credit_amount: NonNegative = Field(alias="creditAmount")
    grant_expires_months: Annotated[int, Field(ge=1, le=1200, strict=True)] | None = Field(
        default=None, alias="grantExpiresMonths"
    )
    hard_limit: Annotated[bool, Field(strict=True)] | None = Field(default=None, alias="hardLimit")
    rollover_policy: (
        Annotated[
            RolloverPolicy,
            BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v),
        ]
        | None
    ) = Field(default=None, alias="rolloverPolicy")
    rollover_cap: NonNegative | None = Field(default=None, alias="rolloverCap")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "denomination": self.denomination,
            "creditAmount": self.credit_amount,
        }
        if self.grant_expires_months is not None:
            out["grantExpiresMonths"] = self.grant_expires_months
        if self.hard_limit is not None:
            out["hardLimit"] = self.hard_limit
        if self.rollover_policy is not None:
            out["rolloverPolicy"] = self.rollover_policy.value
        if self.rollover_cap is not None:
            out["rolloverCap"] = self.rollover_cap
        return out


_ALLOCATION_KEYS = {
    "denomination": "denomination",
    "creditAmount": "credit_amount",
    "grantExpiresMonths": "grant_expires_months",
    "hardLimit": "hard_limit",
    "rolloverPolicy": "rollover_policy",
    "rolloverCap": "rollover_cap",
}


def parse_credit_allocations(raw: Any, field: str = "creditAllocations") -> list[CreditAllocation]:
    """Parse a ``creditAllocations`` JSON string (or already-parsed list): a list of
    ``{"denomination", "creditAmount" >= 0, "grantExpiresMonths"? (1..1200),
    "hardLimit"? (bool), "rolloverPolicy"? NONE|FULL|CAPPED, "rolloverCap"? >= 0}``.
    ``None``/blank -> ``[]``. ``rolloverCap`` is required with ``CAPPED`` and refused with
    the other policies; a denomination may appear once. Keys are camelCase (snake_case
    accepted)."""
    if isinstance(raw, str | bytes | bytearray):
        data = _load(raw, field)
    else:
        data = raw
    if data is None:
        return []
    if isinstance(data, Mapping) or not isinstance(data, list | tuple):
        raise _fail(field, "must be a JSON array of allocation objects")
    out: list[CreditAllocation] = []
    seen: set[str] = set()
    for index, item in enumerate(data):
        path = field_path(field, index)
        if not isinstance(item, Mapping):
            raise _fail(path, "must be an object")
        snake_to_camel = {v: k for k, v in _ALLOCATION_KEYS.items()}
        normalized: dict[str, Any] = {}
        for key, value in item.items():
            camel = snake_to_camel.get(key, key) if isinstance(key, str) else key
            if camel in normalized:
                raise _fail(field_path(path, key), f"duplicates {camel}")
            normalized[camel] = value
        try:
            allocation = CreditAllocation.model_validate(normalized)
        except ValidationError as exc:
            raise _translate(exc, path) from None
        if allocation.rollover_policy is RolloverPolicy.CAPPED and allocation.rollover_cap is None:
            raise _fail(
                field_path(path, "rolloverCap"), "is required when rolloverPolicy is CAPPED"
            )
        if allocation.rollover_cap is not None and allocation.rollover_policy is not (
            RolloverPolicy.CAPPED
        ):
            raise _fail(
                field_path(path, "rolloverCap"), "is only allowed with rolloverPolicy CAPPED"
            )
        if allocation.denomination in seen:
            raise _fail(
                field_path(path, "denomination"), f"{allocation.denomination} is listed twice"
            )
        seen.add(allocation.denomination)
        out.append(allocation)
    return out


def dumps_allocations(allocations: Iterable[CreditAllocation]) -> str:
    """JSON text of allocations (exact numbers)."""
    return dumps_json([allocation.to_json() for allocation in allocations])
