"""Metering use cases shared by the REST API and the MCP tools: ingest (single and batch),
entitlement check, evaluation (simulation + audit record) and the entitlement list.

``metering(ctx)`` returns the process's :class:`Metering` (writer + cache), created on
first use and closed with the application context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ...db.scale import QTY_SCALE
from ...domain.credits import available_credits, credits_for_units
from ...domain.entitlements import (
    NO_CUSTOMER,
    NO_SUBSCRIPTION,
    REASON_PROPOSED,
    attribute,
    eligible_at,
    simulate,
    verdict,
)
from ...domain.limits import remaining_usage
from ...domain.money import to_credit_units
from ...errors import DuplicateEvent, InvalidRequest, NotFound, TansoError
from ...principal import Principal
from .batch import ACCEPTED, DUPLICATE, Outcome
from .cache import CustomerInfo, MeteringCache, PoolInfo
from .grants import Grant, SubInfo
from .inputs import (
    ENTITLEMENT_CHECKED,
    MAX_TEXT,
    EventIn,
    parse_event,
    parse_units,
    time_ordered_key,
    units_to_q,
)
from .windows import window_start
from .writer import MeteringWriter

if TYPE_CHECKING:
    from ...context import AppContext

MAX_BATCH = 1000


class Metering:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.cache = MeteringCache(ctx, ctx.settings.entitlement_cache_seconds)
        self.writer = MeteringWriter(ctx, on_commit=self.cache.apply)

    async def close(self) -> None:
        await self.writer.close()
        await self.cache.close()


def metering(ctx: AppContext) -> Metering:
    m = ctx.metering
    if type(m) is not Metering:
        m = Metering(ctx)
        ctx.metering = m
        ctx.on_close(m.close)
    return m


def _q(value: int) -> Decimal | int:
    """A scaled quantity as a JSON-friendly number: an int when whole (orjson writes ints
    natively, Decimals need a callback), else the exact Decimal."""
    whole, rest = divmod(value, QTY_SCALE)
    return whole if rest == 0 else Decimal(value) / QTY_SCALE


def _num(value: Decimal) -> Decimal | int:
    return int(value) if value == value.to_integral_value() else value


# --------------------------------------------------------------------------- ingest


NO_COST = "none"  # the reported cost source of an event no cost chain step priced
DUPLICATE_MESSAGE = (
    "Duplicate event. An event with this idempotency key has already been processed."
)


def outcome_data(o: Outcome) -> dict[str, Any]:
    data: dict[str, Any] = {
        "eventId": o.event_id,
        "usageLimitExceeded": o.limit_exceeded,
        "creditsDeducted": o.credits_deducted,
        "overageUnits": o.overage_units,
        "customerAutoCreated": o.customer_auto_created,
        "costSource": o.cost_source or NO_COST,
    }
    if o.limit_exceeded:
        data["message"] = (
            f"Usage limit of {o.limit} exceeded. Event recorded but zeroed out."
            if o.limit is not None
            else "Usage limit exceeded. Event recorded but zeroed out."
        )
    return data


async def ingest_event(
    ctx: AppContext, principal: Principal, raw: Any, *, header_key: str | None = None
) -> tuple[dict[str, Any], int]:
    """One event: ``(data, status)``; 201 accepted, 200 accepted over the limit.
    Raises ``DuplicateEvent`` (409), ``InsufficientCredits`` (409) or ``InvalidRequest``."""
    now = await ctx.now(principal)
    item = parse_event(
        raw,
        environment_id=principal.environment_id,
        now=now,
        future_skew_seconds=ctx.settings.event_future_skew_seconds,
        max_age_days=ctx.settings.event_max_age_days,
        clock=_clock_name(principal),
        header_key=header_key,
    )
    (o,) = await metering(ctx).writer.submit([item])
    if o.status == DUPLICATE:
        raise DuplicateEvent(DUPLICATE_MESSAGE, field="eventIdempotencyKey")
    if o.status != ACCEPTED:
        assert o.error is not None
        raise o.error
    return outcome_data(o), 200 if o.limit_exceeded else 201


def _clock_name(principal: Principal) -> str:
    return f"the {principal.mode} environment's clock"


async def ingest_batch(ctx: AppContext, principal: Principal, events: Any) -> dict[str, Any]:
    """Up to 1000 events in one transaction; per-item results in input order."""
    if not isinstance(events, list):
        raise InvalidRequest("events must be an array of event objects", field="events")
    if not 1 <= len(events) <= MAX_BATCH:
        raise InvalidRequest(f"events must hold 1 to {MAX_BATCH} events", field="events")
    now = await ctx.now(principal)
    skew = ctx.settings.event_future_skew_seconds
    max_age = ctx.settings.event_max_age_days
    clock = _clock_name(principal)
    results: list[dict[str, Any] | None] = [None] * len(events)
    items: list[EventIn] = []
    positions: list[int] = []
    for index, raw in enumerate(events):
        try:
            items.append(
                parse_event(
                    raw,
                    environment_id=principal.environment_id,
                    now=now,
                    future_skew_seconds=skew,
                    max_age_days=max_age,
                    clock=clock,
                )
            )
            positions.append(index)
        except TansoError as exc:
            results[index] = {"index": index, "status": "error", "error": _error(exc, index)}
    outcomes = await metering(ctx).writer.submit(items) if items else []
    accepted = duplicates = 0
    for index, o in zip(positions, outcomes, strict=True):
        if o.status == ACCEPTED:
            accepted += 1
            # lean per-item answer (a batch answers 1000 of them): the defaults
            # (usageLimitExceeded false, no credits, overage = the units sent, customer
            # known) are left out
            item = {
                "index": index,
                "status": "accepted",
                "eventId": o.event_id,
                "costSource": o.cost_source or NO_COST,
            }
            if o.limit_exceeded:
                item["usageLimitExceeded"] = True
            if o.credits_deducted:
                item["creditsDeducted"] = o.credits_deducted
                item["overageUnits"] = o.overage_units
            if o.customer_auto_created:
                item["customerAutoCreated"] = True
            results[index] = item
        elif o.status == DUPLICATE:
            duplicates += 1
            results[index] = {
                "index": index,
                "status": "duplicate",
                "error": {"code": "duplicate_event", "message": DUPLICATE_MESSAGE},
            }
        else:
            assert o.error is not None
            results[index] = {"index": index, "status": "error", "error": _error(o.error, index)}
    return {
        "results": results,
        "accepted": accepted,
        "duplicates": duplicates,
        "errors": len(events) - accepted - duplicates,
    }


def _error(exc: TansoError, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.field:
        out["field"] = f"events[{index}].{exc.field}"
    return out


# --------------------------------------------------------------------------- entitlements


@dataclass(slots=True)
class Decision:
    allowed: bool
    reason: str | None = None
    sub: SubInfo | None = None
    grant: Grant | None = None
    usage: dict[str, Any] | None = None
    credit: dict[str, Any] | None = None
    simulation: dict[str, Any] | None = None


@dataclass(slots=True)
class Standing:
    """One subscription's state for a feature at ``now``, as the decision needs it."""

    sub: SubInfo
    grant: Grant
    used_q: int
    pool: PoolInfo | None
    hard: bool
    available_q: int


async def _standing(
    cache: MeteringCache,
    env: str,
    customer: CustomerInfo,
    sub: SubInfo,
    grant: Grant,
    now: datetime,
) -> Standing:
    rule = grant.rule
    used_q = 0
    if rule is not None and rule.pricing is not None:
        ws = window_start(sub.period, rule.pricing.reset_mode, now)
        used_q, _ = await cache.counter(env, (sub.id, grant.feature_id, ws))
    pool = None
    hard = False
    available_q = 0
    if rule is not None and rule.credits is not None:
        denom = rule.credits.denomination
        pool = customer.pools.get(denom)
        hard = pool.hard_limit if pool is not None else customer.model_hard.get(denom, False)
        if pool is not None:
            link = pool.links.get(sub.id)
            available_q = available_credits(
                pool.balance_q,
                pool.status,
                link[0] if link is not None else None,
                link[1] if link is not None else 0,
                pool.live_q(now),
            )
    return Standing(sub, grant, used_q, pool, hard, available_q)


def _judge(st: Standing, requested: Decimal | None) -> Decision:
    """The decision for one subscription, from the domain rule (probe usage: the
    requested usage, else one unit)."""
    rule = st.grant.rule
    grant = st.grant
    d = Decision(True, sub=st.sub, grant=grant)
    used = _q(st.used_q)
    needed_q = None
    if rule is not None and rule.pricing is not None:
        if grant.limit is None:
            d.usage = {"used": used}
        else:
            d.usage = {"used": used, "limit": grant.limit, "remaining": max(grant.limit - used, 0)}
    if rule is not None and rule.credits is not None:
        pool = st.pool
        d.credit = {
            "denomination": rule.credits.denomination,
            "balance": _q(pool.balance_q) if pool is not None else 0,
            "totalGranted": _q(pool.total_granted_q) if pool is not None else 0,
            "totalConsumed": _q(pool.total_consumed_q) if pool is not None else 0,
            "hardLimit": st.hard,
            "weight": _num(rule.credits.weight),
        }
        probe = requested if requested is not None else Decimal(1)
        needed_q = to_credit_units(credits_for_units(probe, rule.credits.weight))
    reason = verdict(st.used_q, grant.limit_q, st.hard, st.available_q, needed_q)
    if reason is not None:
        d.allowed, d.reason = False, reason
    if requested is not None:
        requested_q = units_to_q(requested)
        sim = simulate(st.used_q, requested_q, grant.limit_q, st.hard, st.available_q, needed_q)
        projected = used + requested
        d.simulation = {
            "requestedUsage": _num(requested),
            "projectedUsage": _num(Decimal(projected)),
            "wouldExceedLimit": sim.would_exceed_limit,
        }
        if grant.limit is not None:
            left = remaining_usage(projected, grant.limit)
            assert left is not None
            d.simulation["projectedRemaining"] = _num(left)
        if needed_q is not None:
            d.simulation["creditsRequired"] = _q(needed_q)
            d.simulation["creditsAvailable"] = _q(st.available_q)
            d.simulation["wouldExceedCredits"] = sim.would_exceed_credits
        if d.allowed and sim.would_exceed_usage:
            d.allowed, d.reason = False, REASON_PROPOSED
    return d


async def decide(
    ctx: AppContext,
    env: str,
    ref: str,
    feature_key: str,
    now: datetime,
    requested: Decimal | None = None,
) -> tuple[Decision, CustomerInfo | None]:
    """The decision on the subscription a usage of ``requested`` (else one unit) at
    ``now`` would be attributed to — the same rule ingest applies."""
    cache = metering(ctx).cache
    customer = await cache.customer(env, ref)
    if customer is None:
        return Decision(False, NO_CUSTOMER), None
    subs = eligible_at([sub for sub in customer.subs if feature_key in sub.by_key], now)
    if subs:
        standings = []
        for sub in subs:
            standings.append(
                await _standing(cache, env, customer, sub, sub.by_key[feature_key], now)
            )
        has_room = _room_for_one if requested is None else _room_for(requested)
        chosen = attribute(standings, None, has_room, _standing_id)
        assert chosen is not None
        return _judge(chosen, requested), customer
    feature = await cache.feature(env, feature_key)
    if feature is None:
        return Decision(False, f"Feature {feature_key!r} not found"), customer
    return Decision(False, NO_SUBSCRIPTION), customer


def _standing_id(st: Standing) -> str:
    return st.sub.id


def _room_for_one(st: Standing) -> bool:
    return _judge(st, None).allowed


def _room_for(requested: Decimal) -> Callable[[Standing], bool]:
    return lambda st: _judge(st, requested).allowed


def decision_view(ref: str, feature_key: str, d: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {
        "customerReferenceId": ref,
        "referenceCustomerId": ref,
        "featureKey": feature_key,
        "allowed": d.allowed,
        "isAllowed": d.allowed,
    }
    if d.sub is not None:
        out["subscriptionId"] = d.sub.id
    if d.usage is not None:
        out["usage"] = d.usage
    if d.credit is not None:
        out["credit"] = d.credit
    if d.simulation is not None:
        out["simulation"] = d.simulation
    if d.reason is not None:
        out["reason"] = d.reason
        out["meta"] = {"reason": {"description": d.reason}}
    return out


def check_text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field} is required", field=field)
    if len(value) > MAX_TEXT:
        raise InvalidRequest(f"{field} must be at most {MAX_TEXT} characters", field=field)
    return value


async def check_entitlement(
    ctx: AppContext, principal: Principal, ref: str, feature_key: str
) -> dict[str, Any]:
    """GET /entitlements/{ref}/{featureKey} and MCP checkEntitlement: a read; records
    nothing. An unknown customer or feature is ``allowed: false`` with a reason."""
    check_text(ref, "customerReferenceId")
    check_text(feature_key, "featureKey")
    now = await ctx.now(principal)
    d, _ = await decide(ctx, principal.environment_id, ref, feature_key, now)
    return decision_view(ref, feature_key, d)


async def evaluate_entitlement(
    ctx: AppContext,
    principal: Principal,
    ref: Any,
    feature_key: Any,
    *,
    requested: Any = None,
    event_name: str | None = None,
    meta: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    flow_id: str | None = None,
) -> dict[str, Any]:
    """Check with an optional usage simulation; records a zero-usage
    ``ENTITLEMENT_CHECKED`` audit event (never usage) for a known customer."""
    check_text(ref, "customerReferenceId")
    check_text(feature_key, "featureKey")
    req = None
    if requested is not None:
        req = parse_units(requested, "usageUnits")
        if req <= 0:
            raise InvalidRequest("usageUnits must be greater than 0", field="usageUnits")
    if event_name is not None:
        check_text(event_name, "eventName")
    if idempotency_key is not None:
        check_text(idempotency_key, "context.idempotencyKey")
    if flow_id is not None:
        check_text(flow_id, "context.flowId")
    now = await ctx.now(principal)
    env = principal.environment_id
    d, customer = await decide(ctx, env, ref, feature_key, now, req)
    flow = flow_id or time_ordered_key()
    out = decision_view(ref, feature_key, d)
    out["flowId"] = flow
    if customer is not None:
        feature_id = d.grant.feature_id if d.grant is not None else None
        if feature_id is None:
            feature = await metering(ctx).cache.feature(env, feature_key)
            feature_id = feature.id if feature is not None else None
        context: dict[str, Any] = {
            "sys_simulation": req is not None,
            "allowed": d.allowed,
            "featureKey": feature_key,
        }
        if req is not None:
            context["sys_simulated_usage"] = req
            context["sys_simulated_would_exceed"] = bool(
                d.simulation and d.simulation["wouldExceedLimit"]
            )
        if d.reason:
            context["reason"] = d.reason
        audit = EventIn(
            environment_id=env,
            key=idempotency_key or time_ordered_key(),
            event_name=event_name or feature_key,
            occurred_at=now,
            now=now,
            usage_q=0,
            units=Decimal(0),
            customer_id=customer.id,
            feature_id=feature_id,
            subscription_id=d.sub.id if d.sub is not None else None,
            meta=meta,
            flow_id=flow,
            event_type=ENTITLEMENT_CHECKED,
            context=context,
            key_generated=idempotency_key is None,
        )
        (o,) = await metering(ctx).writer.submit([audit])
        if o.status == ACCEPTED:
            out["auditEventId"] = o.event_id
    return out


async def list_entitlements(
    ctx: AppContext, principal: Principal, ref: str
) -> list[dict[str, Any]]:
    """Every feature the customer may use now, grouped by subscription, with limits,
    usage and credits."""
    check_text(ref, "customerReferenceId")
    env = principal.environment_id
    now = await ctx.now(principal)
    cache = metering(ctx).cache
    customer = await cache.customer(env, ref)
    if customer is None:
        raise NotFound(f"customer {ref!r} not found", field="customerReferenceId")
    out = []
    for sub in customer.subs:
        items = []
        for key in sorted(sub.by_key):
            grant = sub.by_key[key]
            d = _judge(await _standing(cache, env, customer, sub, grant, now), None)
            entry: dict[str, Any] = {
                "featureKey": key,
                "featureId": grant.feature_id,
                "allowed": d.allowed,
                "isAllowed": d.allowed,
            }
            if d.usage is not None:
                entry["usage"] = d.usage
            if d.credit is not None:
                entry["credit"] = d.credit
            if d.reason:
                entry["reason"] = d.reason
            items.append(entry)
        out.append(
            {
                "subscriptionId": sub.id,
                "planId": sub.plan_id,
                "planKey": sub.plan_key,
                "currentPeriodStart": sub.period.period_start,
                "currentPeriodEnd": sub.period.period_end,
                "entitlements": items,
            }
        )
    return out


__all__ = [
    "Metering",
    "check_entitlement",
    "evaluate_entitlement",
    "ingest_batch",
    "ingest_event",
    "list_entitlements",
    "metering",
    "units_to_q",
]
