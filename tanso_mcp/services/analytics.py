"""Margin analytics use cases: margins grouped by customer, feature, model or plan; one
customer's margins with MRR; margin time series. Read-only; the REST routes and the MCP
tools call these same functions.

Keys: a customer's reference, a feature's key, the model name as the events sent it,
the plan key of the subscription the events were attributed to (its current plan).
Events without that dimension are grouped under ``(none)`` — e.g. customers without a
plan appear under plan ``(none)`` with their cost.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Customer, Environment, Feature, Plan, Subscription
from ..domain.analytics import (
    Sums,
    bucket_start,
    buckets,
    decompose,
    decompose_for,
    default_window,
    margin_row,
    sort_rows,
    validate_window,
)
from ..domain.margins import monthly_recurring_revenue
from ..domain.money import from_minor
from ..domain.periods import parse_datetime
from ..errors import InvalidRequest
from ..principal import Principal
from . import customers
from .analytics_rollup import read_sums
from .outputs_analytics import CustomerMarginOut, MarginsOut, MarginsPageOut, TimeseriesOut

if TYPE_CHECKING:
    from ..context import AppContext

NONE_KEY = "(none)"
GROUPS = ("customer", "feature", "model", "plan")
SORTS = ("grossMargin", "revenue", "cost")


def window(
    now: datetime, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    """``[from, to)``; a missing bound is the current calendar month's (UTC, environment
    clock)."""
    d_start, d_end = default_window(now)
    start, end = start or d_start, end or d_end
    validate_window(start, end)
    return start, end


async def _currency(s: AsyncSession, env: str) -> str:
    return await s.scalar(select(Environment.currency).where(Environment.id == env)) or "USD"


# customer references and feature keys never change: remembered per process
_KNOWN_NAMES: dict[tuple[str, str], str] = {}
_MAX_KNOWN = 200_000


async def _names(s: AsyncSession, env: str, dim: str, ids: set[str]) -> dict[str, str]:
    """Display keys of dimension ids ('' -> ``(none)``). ``subscription`` maps to the
    plan key (its current plan: not remembered)."""
    out = {"": NONE_KEY}
    ids = {i for i in ids if i}
    if dim == "model":
        return {**out, **{i: i for i in ids}}
    cacheable = dim in ("customer", "feature")
    if cacheable:
        for i in list(ids):
            name = _KNOWN_NAMES.get((env, i))
            if name is not None:
                out[i] = name
                ids.discard(i)
    id_list = sorted(ids)
    for n in range(0, len(id_list), 500):
        chunk = id_list[n : n + 500]
        if dim == "customer":
            stmt = select(Customer.id, Customer.reference_id).where(
                Customer.environment_id == env, Customer.id.in_(chunk)
            )
        elif dim == "feature":
            stmt = select(Feature.id, Feature.key).where(
                Feature.environment_id == env, Feature.id.in_(chunk)
            )
        else:
            stmt = (
                select(Subscription.id, Plan.key)
                .join(Plan, Plan.id == Subscription.plan_id)
                .where(Subscription.environment_id == env, Subscription.id.in_(chunk))
            )
        for i, name in (await s.execute(stmt)).all():
            out[i] = name
            if cacheable:
                if len(_KNOWN_NAMES) >= _MAX_KNOWN:
                    _KNOWN_NAMES.clear()
                _KNOWN_NAMES[(env, i)] = name
    return out


def _dim(group_by: str) -> str:
    if group_by not in GROUPS:
        raise InvalidRequest(
            "groupBy must be one of customer, feature, model, plan", field="groupBy"
        )
    return "subscription" if group_by == "plan" else group_by


async def _grouped(
    s: AsyncSession,
    env: str,
    start: datetime,
    end: datetime,
    group_by: str,
    *,
    customer_id: str | None = None,
    parts: list | None = None,
) -> dict[str, Sums]:
    dim = _dim(group_by)
    if parts is None:
        parts = decompose(start, end)
    raw = await read_sums(s, env, start, end, parts=parts, dim=dim, customer_id=customer_id)
    names = await _names(s, env, dim, {k for k, _ in raw})
    out: dict[str, Sums] = {}
    for (k, _b), sums in raw.items():
        out.setdefault(names.get(k, NONE_KEY if not k else k), Sums()).add(sums)
    return out


def _totals(groups: dict[str, Sums]) -> dict[str, Any]:
    total = Sums()
    for sums in groups.values():
        total.add(sums)
    row = margin_row(None, total)
    row.pop("key")
    return row


def _check_sort(sort: str, order: str) -> None:
    if sort not in SORTS:
        raise InvalidRequest("sort must be one of grossMargin, revenue, cost", field="sort")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", field="order")


async def margins(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    group_by: str = "customer",
    start: datetime | None = None,
    end: datetime | None = None,
    sort: str = "grossMargin",
    order: str = "asc",
    limit: int = 50,
    offset: int = 0,
) -> tuple[MarginsOut, int]:
    """Margin rows of one page plus totals over all rows; returns ``(data, total rows)``.
    Default order: the worst margin first."""
    _check_sort(sort, order)
    start, end = window(now, start, end)
    groups = await _grouped(s, env, start, end, group_by)
    rows = sort_rows([margin_row(k, v) for k, v in groups.items()], sort, order)
    data = MarginsOut.model_validate(
        {
            "from": start,
            "to": end,
            "groupBy": group_by,
            "currency": await _currency(s, env),
            "rows": rows[offset : offset + limit],
            "totals": _totals(groups),
        }
    )
    return data, len(rows)


async def customer_margin(
    s: AsyncSession,
    env: str,
    now: datetime,
    ref: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> CustomerMarginOut:
    """One customer's margin over the window, by feature and by model, with MRR (list
    price per month of its active subscriptions) and effective MRR (MRR plus the usage
    revenue of each active subscription's current period)."""
    c = await customers.by_reference(s, env, ref, field="ref")
    start, end = window(now, start, end)
    by_feature = await _grouped(s, env, start, end, "feature", customer_id=c.id)
    by_model = await _grouped(s, env, start, end, "model", customer_id=c.id)
    currency = await _currency(s, env)
    subs = (
        await s.execute(
            select(Subscription, Plan)
            .join(Plan, Plan.id == Subscription.plan_id)
            .where(
                Subscription.environment_id == env,
                Subscription.customer_id == c.id,
                Subscription.is_active.is_(True),
                Subscription.ended_at.is_(None),
            )
            .order_by(Subscription.created_at)
        )
    ).all()
    mrr = Decimal(0)
    usage_micros = 0
    plans = []
    for sub, plan in subs:
        plan_mrr = monthly_recurring_revenue(
            from_minor(plan.price_minor, plan.currency), sub.interval_months, plan.currency
        )
        mrr += plan_mrr
        period = await _period_sums(s, env, c.id, sub)
        usage_micros += period.revenue_micros
        plans.append(
            {
                "subscriptionId": sub.id,
                "planKey": plan.key,
                "mrr": plan_mrr,
                "currentPeriodStart": sub.current_period_start,
                "currentPeriodEnd": sub.current_period_end,
                "periodUsageRevenue": Decimal(period.revenue_micros) / 1_000_000,
                "periodCost": Decimal(period.cost_micros) / 1_000_000,
            }
        )
    totals = _totals(by_feature)
    return CustomerMarginOut.model_validate(
        {
            "customerReferenceId": c.reference_id,
            "from": start,
            "to": end,
            "currency": currency,
            **totals,
            "byFeature": sort_rows(
                [margin_row(k, v) for k, v in by_feature.items()], "cost", "desc"
            ),
            "byModel": sort_rows([margin_row(k, v) for k, v in by_model.items()], "cost", "desc"),
            "mrr": mrr,
            "effectiveMrr": mrr + Decimal(usage_micros) / 1_000_000,
            "subscriptions": plans,
        }
    )


async def _period_sums(s: AsyncSession, env: str, customer_id: str, sub: Subscription) -> Sums:
    start, end = sub.current_period_start, sub.current_period_end
    inner_lo = start.replace(minute=0, second=0, microsecond=0)
    if inner_lo < start:
        from datetime import timedelta

        inner_lo += timedelta(hours=1)
    inner_hi = end.replace(minute=0, second=0, microsecond=0)
    parts = decompose(inner_lo, inner_hi) if inner_lo < inner_hi else []
    raw = await read_sums(
        s, env, start, end, parts=parts, customer_id=customer_id, subscription_id=sub.id
    )
    total = Sums()
    for sums in raw.values():
        total.add(sums)
    return total


async def timeseries(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    interval: str = "day",
    group_by: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    sort: str = "cost",
    order: str = "desc",
    limit: int = 10,
    offset: int = 0,
) -> TimeseriesOut:
    """Revenue, cost and margin per ``interval`` bucket (UTC; weeks start on Monday).
    With ``groupBy``, each bucket also splits by the keys of one page of the margins
    view (``sort``/``order``/``limit``/``offset``; default the 10 costliest)."""
    _check_sort(sort, order)
    start, end = window(now, start, end)
    spans = buckets(interval, start, end)
    parts = decompose_for(interval, start, end)
    dim = _dim(group_by) if group_by is not None else None
    keys: list[str] = []
    per_bucket: dict[datetime, dict[str, Sums]] = {}

    def add(raw: dict, names: dict[str, str] | None) -> dict[str, Sums]:
        merged: dict[str, Sums] = {}
        for (k, b), sums in raw.items():
            key = names.get(k, NONE_KEY if not k else k) if names is not None else ""
            at = max(bucket_start(interval, b), start)
            per_bucket.setdefault(at, {}).setdefault(key, Sums()).add(sums)
            merged.setdefault(key, Sums()).add(sums)
        return merged

    overall = add(await read_sums(s, env, start, end, parts=parts, with_bucket=True), None)
    if dim:
        # the page of keys first (few rows per bucket), then their series alone
        whole = await read_sums(s, env, start, end, parts=decompose(start, end), dim=dim)
        names = await _names(s, env, dim, {k for k, _ in whole})
        merged: dict[str, Sums] = {}
        for (k, _b), sums in whole.items():
            merged.setdefault(names.get(k, NONE_KEY if not k else k), Sums()).add(sums)
        ranked = sort_rows([margin_row(k, v) for k, v in merged.items()], sort, order)
        keys = [r["key"] for r in ranked[offset : offset + limit]]
        wanted = set(keys)
        ids = sorted(k for k, _ in whole if names.get(k, NONE_KEY if not k else k) in wanted)
        raw = await read_sums(
            s, env, start, end, parts=parts, dim=dim, with_bucket=True, dim_ids=ids
        )
        add(raw, names)
    series = []
    for a, b in spans:
        groups = per_bucket.get(a, {})
        point: dict[str, Any] = {"start": a, "end": b, **_totals({"": groups.get("", Sums())})}
        if dim:
            point["groups"] = [margin_row(k, groups.get(k, Sums())) for k in keys]
        series.append(point)
    return TimeseriesOut.model_validate(
        {
            "from": start,
            "to": end,
            "interval": interval,
            "groupBy": group_by,
            "currency": await _currency(s, env),
            "keys": keys if dim else None,
            "buckets": series,
            "totals": _totals({"": overall.get("", Sums())}),
        }
    )


# --------------------------------------------------------------------------- use cases
# What both transports call: the window's bounds as sent (ISO 8601 text, default the
# current month), the environment's clock, one read-only session.


async def _in_window(
    ctx: AppContext, p: Principal, view: Any, from_: str | None, to: str | None, **options: Any
) -> Any:
    start = parse_datetime(from_, "from") if from_ is not None else None
    end = parse_datetime(to, "to") if to is not None else None
    now = await ctx.now(p)
    async with ctx.db.reader() as s:
        return await view(s, p.environment_id, now, start=start, end=end, **options)


async def margin_summary(
    ctx: AppContext,
    p: Principal,
    *,
    from_: str | None = None,
    to: str | None = None,
    **options: Any,
) -> MarginsPageOut:
    """:func:`margins` (``options``: its keyword arguments) with the page in the answer."""
    data, total = await _in_window(ctx, p, margins, from_, to, **options)
    limit, offset = options.get("limit", 50), options.get("offset", 0)
    fields = dict(data)
    fields["from"] = fields.pop("from_")
    fields["pagination"] = {
        "limit": limit,
        "offset": offset,
        "total": total,
        "hasMore": offset + len(data.rows) < total,
    }
    return MarginsPageOut.model_validate(fields)


async def customer_summary(
    ctx: AppContext, p: Principal, ref: str, *, from_: str | None = None, to: str | None = None
) -> CustomerMarginOut:
    """:func:`customer_margin`."""
    return await _in_window(ctx, p, _of_customer(ref), from_, to)


def _of_customer(ref: str) -> Any:
    async def view(s: AsyncSession, env: str, now: datetime, **window: Any) -> CustomerMarginOut:
        return await customer_margin(s, env, now, ref, **window)

    return view


async def timeseries_summary(
    ctx: AppContext,
    p: Principal,
    *,
    from_: str | None = None,
    to: str | None = None,
    **options: Any,
) -> TimeseriesOut:
    """:func:`timeseries` (``options``: its keyword arguments)."""
    return await _in_window(ctx, p, timeseries, from_, to, **options)
