"""The seam between invoicing and metering: the usage lines of an invoice.

Invoicing (services/billing, services/invoices) calls `usage_lines_for` whenever it
builds an invoice that closes a subscription period (or a plan's part of one, after a
plan change) or works out an open invoice as of now — for a whole page of invoices at
once; metering owns how usage is counted and priced. Contract:

- only overage is priced (units covered by credits are never billed twice);
- `reset` features: graduated tiers on the period total; `accumulate` features: the
  period's increment, charge(prior + period) − charge(prior);
- one line per metered feature with a non-zero charge; `amount` is exact (the caller
  rounds once per line, half-up, to the currency's minor unit).

How: the events themselves are summed (never the counters, which serve limits): the
overage units (``events.overage_q``: usage neither covered by credits nor beyond
``max_usage``) of the subscription's ``CLIENT_TRACKED`` events whose ``occurredAt``
falls in ``[period_start, period_end)``, per feature, priced by the rules of ``plan``
(the plan in force during that window). For ``accumulate`` features the prior units are
the subscription's overage before ``period_start``. Exact integer sums in SQL on both
databases (scaled integers).

Prices: a period is priced by the plan's rules as they stood when it started (the
invoice's usage window carries a :func:`pricing_snapshot`); a rule's price edited
mid-period applies from each subscription's next period.

Late events: an event whose ``occurredAt`` lies in a period is billed as long as the
invoice closing that period is still open (``PENDING``/``DUE``: billing recomputes it);
once the invoice has left those states it is never recomputed, so usage that arrives
later is recorded (analytics, limits) but not billed retroactively.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Integer, String, bindparam, func, literal, select, true, union_all
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Event, Feature, Plan, PlanFeature, Subscription
from ..db.scale import QTY_SCALE
from ..domain.pricing import period_charge
from ..domain.rules import ResetMode, parse_rule_value
from ..errors import TansoError


@dataclass(frozen=True)
class UsageLine:
    feature_id: str
    description: str
    quantity: Decimal  # billed (overage) units
    amount: Decimal  # exact, unrounded


def _units(q: int) -> Decimal:
    return (Decimal(q) / QTY_SCALE).normalize() if q else Decimal(0)


def _fmt(units: Decimal) -> str:
    return format(units, "f")


@dataclass(frozen=True)
class UsageRequest:
    """The usage of ``sub`` with ``occurredAt`` in ``[start, end)``, priced by the rules
    of the plan ``plan_id`` — as they were when the period started when ``pricing`` (a
    :func:`pricing_snapshot`) is given: a rule edited since keeps its old price for
    this window, a feature linked since is priced by its rule."""

    sub: Subscription
    plan_id: str
    start: datetime
    end: datetime
    pricing: dict[str, Any] | None = None


async def pricing_snapshot(s: AsyncSession, plan_id: str) -> dict[str, Any]:
    """The plan's rules as they stand now, to price a period that starts now with:
    ``{featureId: {"key": featureKey, "value": rule JSON or None}}``."""
    return (await pricing_snapshots(s, [plan_id]))[plan_id]


async def pricing_snapshots(s: AsyncSession, plan_ids: list[str]) -> dict[str, dict[str, Any]]:
    """:func:`pricing_snapshot` of several plans in one statement."""
    out: dict[str, dict[str, Any]] = {pid: {} for pid in plan_ids}
    if not plan_ids:
        return out
    rows = await s.execute(
        select(PlanFeature.plan_id, PlanFeature.feature_id, Feature.key, PlanFeature.value)
        .join(Feature, Feature.id == PlanFeature.feature_id)
        .where(PlanFeature.plan_id.in_(plan_ids))
    )
    for pid, fid, key, value in rows:
        out[pid][fid] = {"key": key, "value": value}
    return out


def _metered(value: Any) -> Any:
    """The pricing of a stored rule value, or None (unpriced or unreadable)."""
    if not value:
        return None
    try:  # a billing run prices thousands of windows with the same few rules
        key = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return _parse_pricing(value)
    return _parse_pricing_cached(key)


def _parse_pricing(value: Any) -> Any:
    try:
        rule = parse_rule_value(value)
    except TansoError:  # a stored rule is always valid; never fail an invoice on it
        return None
    return rule.pricing if rule is not None else None


@functools.lru_cache(maxsize=4096)
def _parse_pricing_cached(key: str) -> Any:
    return _parse_pricing(json.loads(key))


def _with_snapshot(
    live: list[tuple[str, str, Any]], snapshot: dict[str, Any] | None
) -> list[tuple[str, str, Any]]:
    if snapshot is None:
        return live
    out = [(fid, key, p) for fid, key, p in live if fid not in snapshot]
    for fid, entry in snapshot.items():
        pricing = _metered(entry.get("value"))
        if pricing is not None:
            out.append((fid, entry.get("key") or fid, pricing))
    return sorted(out, key=lambda r: r[1])


_CHUNK = 200  # windows per statement (one UNION ALL of grouped sums)
_SHARED_CHUNK = 500  # subscriptions per statement for a window they share


async def _overage_sums(
    s: AsyncSession, parts: list[tuple[int, Subscription, datetime | None, datetime]]
) -> dict[int, dict[str, int]]:
    """Per request index: overage units per feature of the subscription's events with
    ``occurredAt`` in ``[start, end)`` (no lower bound when ``start`` is None). One
    statement per chunk of windows, so a page of open invoices costs one round trip."""
    out: dict[int, dict[str, int]] = {i: {} for i, *_ in parts}
    lateral = _dialect(s) == "postgresql"
    # a page of windows: only those of subscriptions with overage (PostgreSQL probes the
    # subscriptions' own events anyway, see _shared_sums)
    if len(parts) > 4 and not lateral:
        billed = await _with_overage(s, parts)
        parts = [p for p in parts if p[1].id in billed]
    # windows shared by many subscriptions (a billing run renews a whole period at once):
    # one grouped statement per window and chunk of subscriptions
    shared: dict[tuple[str, datetime | None, datetime], list[tuple[int, Subscription]]] = {}
    for i, sub, start, end in parts:
        shared.setdefault((sub.environment_id, start, end), []).append((i, sub))
    single = []
    for (env, start, end), members in shared.items():
        if len(members) < 2 or len({sub.id for _i, sub in members}) < len(members):
            single += [(i, sub, start, end) for i, sub in members]
            continue
        for at in range(0, len(members), _SHARED_CHUNK):
            chunk = members[at : at + _SHARED_CHUNK]
            index = {sub.id: i for i, sub in chunk}
            if lateral:
                q = _shared_sums(env, [sub for _i, sub in chunk], start, end)
            else:
                q = _shared_sums_in(env, [sub for _i, sub in chunk], start, end)
            for sid, fid, total in (await s.execute(q)).all():
                if sid is not None and fid is not None:
                    out[index[sid]][fid] = int(total)
    parts = single
    for at in range(0, len(parts), _CHUNK):
        selects = []
        for i, sub, start, end in parts[at : at + _CHUNK]:
            part = (
                select(
                    literal(i, Integer).label("i"),
                    Event.feature_id,
                    func.coalesce(func.sum(Event.overage_q), 0),
                )
                .where(
                    Event.environment_id == sub.environment_id,
                    Event.customer_id == sub.customer_id,
                    Event.subscription_id == sub.id,
                    Event.event_type == "CLIENT_TRACKED",
                    Event.occurred_at < end,
                )
                .group_by(Event.feature_id)
            )
            if start is not None:
                part = part.where(Event.occurred_at >= start)
            selects.append(part)
        stmt = selects[0] if len(selects) == 1 else union_all(*selects)
        for at_i, fid, total in (await s.execute(stmt)).all():
            if fid is not None:
                out[int(at_i)][fid] = int(total)
    return out


def _dialect(s: AsyncSession) -> str:
    return s.bind.dialect.name if s.bind is not None else "sqlite"


def _in_window(q: Any, start: datetime | None, end: datetime) -> Any:
    q = q.where(Event.event_type == "CLIENT_TRACKED", Event.occurred_at < end)
    return q if start is None else q.where(Event.occurred_at >= start)


def _shared_sums_in(env: str, subs: list[Subscription], start: datetime | None, end: datetime):
    """(subscription, feature, overage) of ``subs`` in one window: IN lists, which SQLite
    plans as probes of the (environment, customer, time) index."""
    q = select(
        Event.subscription_id, Event.feature_id, func.coalesce(func.sum(Event.overage_q), 0)
    ).where(
        Event.environment_id == env,
        Event.customer_id.in_(sorted({sub.customer_id for sub in subs})),
        Event.subscription_id.in_(sorted(sub.id for sub in subs)),
    )
    return _in_window(q, start, end).group_by(Event.subscription_id, Event.feature_id)


def _shared_sums(env: str, subs: list[Subscription], start: datetime | None, end: datetime):
    """The same on PostgreSQL, as a LATERAL sum per subscription: each one is an index
    probe by (environment, customer), whatever the statistics say. With IN lists the
    planner may scan the environment's whole window and test each event against the lists
    (a cost that grows with the environment, not with the batch)."""
    pairs = (
        func.unnest(
            bindparam("sub_ids", [sub.id for sub in subs], type_=ARRAY(String)),
            bindparam("customer_ids", [sub.customer_id for sub in subs], type_=ARRAY(String)),
        )
        .table_valued("sid", "cid")
        .render_derived()
    )
    inner = _in_window(
        select(Event.feature_id, func.coalesce(func.sum(Event.overage_q), 0).label("q")).where(
            Event.environment_id == env,
            Event.customer_id == pairs.c.cid,
            Event.subscription_id == pairs.c.sid,
        ),
        start,
        end,
    )
    per_sub = inner.group_by(Event.feature_id).lateral("per_sub")
    return select(pairs.c.sid, per_sub.c.feature_id, per_sub.c.q).select_from(
        pairs.join(per_sub, true())
    )


async def _with_overage(
    s: AsyncSession, parts: list[tuple[int, Subscription, datetime | None, datetime]]
) -> set[str]:
    """The subscriptions among ``parts`` with any overage in the span of their windows
    (one cheap statement, so a page of invoices without usage costs no per-window sums)."""
    starts = [p[2] for p in parts if p[2] is not None]
    first = min(starts) if len(starts) == len(parts) else None
    q = select(Event.subscription_id).where(
        Event.environment_id.in_(sorted({p[1].environment_id for p in parts})),
        Event.customer_id.in_(sorted({p[1].customer_id for p in parts})),
        Event.subscription_id.in_(sorted({p[1].id for p in parts})),
        Event.event_type == "CLIENT_TRACKED",
        Event.overage_q > 0,
        Event.occurred_at < max(p[3] for p in parts),
    )
    if first is not None:
        q = q.where(Event.occurred_at >= first)
    # never None: the statement keeps only the given subscriptions
    return {sid for sid in (await s.scalars(q.distinct())).all() if sid is not None}


async def _metered_rules(
    s: AsyncSession, plan_ids: list[str]
) -> dict[str, list[tuple[str, str, Any]]]:
    out: dict[str, list[tuple[str, str, Any]]] = {pid: [] for pid in plan_ids}
    if not plan_ids:
        return out
    rows = (
        await s.execute(
            select(PlanFeature.plan_id, PlanFeature.value, Feature.id, Feature.key)
            .join(Feature, Feature.id == PlanFeature.feature_id)
            .where(PlanFeature.plan_id.in_(plan_ids))
            .order_by(Feature.key)
        )
    ).all()
    for pid, value, fid, key in rows:
        pricing = _metered(value)
        if pricing is not None:
            out[pid].append((fid, key, pricing))
    return out


async def usage_lines_for(s: AsyncSession, requests: list[UsageRequest]) -> list[list[UsageLine]]:
    """The usage lines of each request (see the module contract), computed together:
    one statement for the rules, one per chunk of windows for the period sums, one more
    for the prior usage of ``accumulate`` features."""
    out: list[list[UsageLine]] = [[] for _ in requests]
    plan_rules = await _metered_rules(s, sorted({r.plan_id for r in requests}))
    rules = [_with_snapshot(plan_rules[r.plan_id], r.pricing) for r in requests]
    live = [(i, r) for i, r in enumerate(requests) if rules[i]]
    if not live:
        return out
    period = await _overage_sums(s, [(i, r.sub, r.start, r.end) for i, r in live])
    need_prior: list[tuple[int, Subscription, datetime | None, datetime]] = [
        (i, r.sub, None, r.start)
        for i, r in live
        if any(
            p.reset_mode == ResetMode.ACCUMULATE and period[i].get(fid, 0) > 0
            for fid, _k, p in rules[i]
        )
    ]
    prior = await _overage_sums(s, need_prior) if need_prior else {}
    for i, _r in live:
        for fid, key, pricing in rules[i]:
            units_q = period[i].get(fid, 0)
            if units_q <= 0:
                continue
            units = _units(units_q)
            if pricing.reset_mode == ResetMode.ACCUMULATE:
                amount = period_charge(pricing, units, _units(prior[i].get(fid, 0)))
            else:
                amount = period_charge(pricing, units)
            if amount == 0:
                continue
            out[i].append(
                UsageLine(
                    feature_id=fid,
                    description=f"Usage for {key}: {_fmt(units)} units",
                    quantity=units,
                    amount=amount,
                )
            )
    return out


async def usage_lines(
    s: AsyncSession, sub: Subscription, plan: Plan, period_start: datetime, period_end: datetime
) -> list[UsageLine]:
    return (await usage_lines_for(s, [UsageRequest(sub, plan.id, period_start, period_end)]))[0]
