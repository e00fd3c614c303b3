"""Margin alerts: thresholds per environment (and per customer), evaluated hourly on the
environment clock over a rolling window of whole hours ending at the current hour.

A customer whose margin over the window is below its threshold gets one
``margin.alert``; once its margin is back at or above the threshold, one
``margin.recovered``. A customer with neither revenue nor cost in the window keeps its
state (nothing to judge). Each crossing is a row of ``margin_alerts`` numbered per
customer (``seq``) under a unique key, so however many processes evaluate at once, a
crossing is recorded, and announced as a domain event after the commit, exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.engine import after_commit, rowcount
from ..db.models import AnalyticsState, Customer, Environment, MarginAlert
from ..db.types import new_id
from ..domain.analytics import Sums, decompose, margin_of
from ..domain.money import to_decimal
from ..errors import InvalidRequest, NotFound
from ..principal import Principal
from .analytics_rollup import read_sums
from .jobs import JobRegistry
from .outputs_analytics import AlertOut, AlertSettingsOut

if TYPE_CHECKING:
    from ..bootstrap import AppContext

JOB = "analytics.margin_alerts"
EVERY = timedelta(hours=1)
ALERT, RECOVERED = "margin.alert", "margin.recovered"
DEFAULTS = {"enabled": True, "threshold": Decimal("0.40"), "windowDays": 30, "customers": {}}
MAX_CUSTOMER_THRESHOLDS = 10_000


def _threshold(value: Any, field: str) -> Decimal:
    d = to_decimal(value, field)
    if not Decimal(-1000) <= d <= 1:
        raise InvalidRequest(f"{field} must be a margin between -1000 and 1", field=field)
    return d


def parse_settings(raw: Any, field: str = "marginAlerts") -> dict[str, Any]:
    """``{"threshold", "windowDays", "customers": {ref: threshold}, "enabled"}``; omitted
    keys take their defaults (0.40, 30 days, none, enabled)."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{field} must be an object", field=field)
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise InvalidRequest(f"{unknown[0]} is not a recognised field", field=unknown[0])
    out = dict(DEFAULTS)
    if raw.get("threshold") is not None:
        out["threshold"] = _threshold(raw["threshold"], "threshold")
    if raw.get("windowDays") is not None:
        days = raw["windowDays"]
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 366:
            raise InvalidRequest(
                "windowDays must be a whole number from 1 to 366", field="windowDays"
            )
        out["windowDays"] = days
    if raw.get("enabled") is not None:
        if not isinstance(raw["enabled"], bool):
            raise InvalidRequest("enabled must be true or false", field="enabled")
        out["enabled"] = raw["enabled"]
    customers = raw.get("customers") or {}
    if not isinstance(customers, Mapping) or len(customers) > MAX_CUSTOMER_THRESHOLDS:
        raise InvalidRequest(
            f"customers must map customer references to thresholds (at most "
            f"{MAX_CUSTOMER_THRESHOLDS})",
            field="customers",
        )
    out["customers"] = {str(ref): _threshold(v, f"customers.{ref}") for ref, v in customers.items()}
    return out


def settings_view(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not stored:
        return None
    return parse_settings(stored)


async def _settings_of(s: AsyncSession, env: str) -> dict[str, Any] | None:
    raw = await s.scalar(select(Environment.settings).where(Environment.id == env))
    stored = (raw or {}).get("marginAlerts")
    return parse_settings(stored) if stored else None


async def get_settings(ctx: AppContext, p: Principal) -> AlertSettingsOut:
    async with ctx.db.reader() as s:
        found = await _settings_of(s, p.environment_id)
    return AlertSettingsOut.model_validate(found or {**DEFAULTS, "enabled": False})


async def put_settings(ctx: AppContext, p: Principal, raw: Any) -> AlertSettingsOut:
    """Replace the settings (omitted keys take their defaults); evaluated at the next
    job run."""
    parsed = parse_settings(raw, "body")
    async with ctx.db.unit_of_work() as s:
        await _store_settings(s, p.environment_id, parsed)
    return AlertSettingsOut.model_validate(parsed)


async def _store_settings(s: AsyncSession, env: str, parsed: dict[str, Any]) -> None:
    row = await s.scalar(select(Environment).where(Environment.id == env))
    if row is None:
        raise NotFound("no such environment")
    settings = dict(row.settings or {})
    settings["marginAlerts"] = {
        "enabled": parsed["enabled"],
        "threshold": str(parsed["threshold"]),
        "windowDays": parsed["windowDays"],
        "customers": {k: str(v) for k, v in parsed["customers"].items()},
    }
    row.settings = settings
    # evaluate at the next job run
    await s.execute(text("DELETE FROM analytics_state WHERE name = :n"), {"n": f"alerts:{env}"})
    await s.flush()


def alert_view(a: MarginAlert, ref: str) -> AlertOut:
    return AlertOut(
        id=a.id,
        type=a.kind,  # one of the two kinds, checked by the model
        customerReferenceId=ref,
        threshold=Decimal(a.threshold),
        grossMargin=Decimal(a.gross_margin) if a.gross_margin is not None else None,
        revenue=Decimal(a.revenue_micros).scaleb(-6),
        cost=Decimal(a.cost_micros).scaleb(-6),
        windowStart=a.window_start,
        windowEnd=a.window_end,
        createdAt=a.created_at,
    )


async def list_alerts(
    ctx: AppContext, p: Principal, limit: int, offset: int
) -> tuple[list[AlertOut], int]:
    """Alerts and recoveries, newest first: one page and the total."""
    env = p.environment_id
    async with ctx.db.reader() as s:
        total = await s.scalar(
            select(func.count()).select_from(MarginAlert).where(MarginAlert.environment_id == env)
        )
        rows = (
            await s.execute(
                select(MarginAlert, Customer.reference_id)
                .join(Customer, Customer.id == MarginAlert.customer_id)
                .where(MarginAlert.environment_id == env)
                .order_by(MarginAlert.created_at.desc(), MarginAlert.seq.desc())
                .limit(limit)
                .offset(offset)
            )
        ).all()
    return [alert_view(a, ref) for a, ref in rows], int(total or 0)


# --------------------------------------------------------------------------- the job


def _state_name(env: str) -> str:
    return f"alerts:{env}"


async def evaluate(s: AsyncSession, env: str, now: datetime) -> list[tuple[str, dict[str, Any]]]:
    """Record every crossing as of ``now``; returns the domain events to announce after
    the commit."""
    settings = await _settings_of(s, env)
    events: list[tuple[str, dict[str, Any]]] = []
    end = now.replace(minute=0, second=0, microsecond=0)
    await s.execute(
        text(
            "INSERT INTO analytics_state (name, value) VALUES (:n, :v) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        ),
        {"n": _state_name(env), "v": int((end + EVERY).timestamp())},
    )
    if settings is None or not settings["enabled"]:
        return events
    start = end - timedelta(days=settings["windowDays"])
    sums = await read_sums(s, env, start, end, parts=decompose(start, end), dim="customer")
    per_customer: dict[str, Sums] = {}
    for (cid, _b), v in sums.items():
        per_customer.setdefault(cid, Sums()).add(v)
    last: dict[str, tuple[int, str]] = {}
    for cid, seq, kind in (
        await s.execute(
            select(MarginAlert.customer_id, MarginAlert.seq, MarginAlert.kind)
            .where(MarginAlert.environment_id == env)
            .order_by(MarginAlert.customer_id, MarginAlert.seq)
        )
    ).all():
        last[cid] = (seq, kind)
    refs = dict(
        (
            await s.execute(
                select(Customer.id, Customer.reference_id).where(
                    Customer.environment_id == env, Customer.id.in_(list(per_customer) or [""])
                )
            )
        ).all()
    )
    for cid, total in sorted(per_customer.items()):
        margin, _status = margin_of(total.revenue_micros, total.cost_micros)
        if margin is None or cid not in refs:
            continue
        ref = refs[cid]
        threshold = settings["customers"].get(ref, settings["threshold"])
        seq, kind = last.get(cid, (0, RECOVERED))
        below = margin < threshold
        if below == (kind == ALERT):
            continue
        new_kind = ALERT if below else RECOVERED
        inserted = await s.execute(
            text(
                "INSERT INTO margin_alerts (id, environment_id, customer_id, seq, kind, "
                "threshold, gross_margin, revenue_micros, cost_micros, window_start, "
                "window_end, created_at) VALUES (:id, :env, :cid, :seq, :kind, :th, :gm, "
                ":rev, :cost, :ws, :we, :at) "
                "ON CONFLICT (environment_id, customer_id, seq) DO NOTHING"
            ),
            {
                "id": new_id(),
                "env": env,
                "cid": cid,
                "seq": seq + 1,
                "kind": new_kind,
                "th": str(threshold),
                "gm": str(margin),
                "rev": total.revenue_micros,
                "cost": total.cost_micros,
                "ws": _db_time(s, start),
                "we": _db_time(s, end),
                "at": _db_time(s, now),
            },
        )
        if rowcount(inserted) == 1:
            events.append(
                (
                    new_kind,
                    {
                        "customerReferenceId": ref,
                        "grossMargin": margin,
                        "threshold": threshold,
                        "revenue": Decimal(total.revenue_micros).scaleb(-6),
                        "cost": Decimal(total.cost_micros).scaleb(-6),
                        "windowStart": start,
                        "windowEnd": end,
                    },
                )
            )
    return events


def _db_time(s: AsyncSession, value: datetime) -> Any:
    from .analytics_rollup import db_time

    return db_time(s.get_bind().dialect.name, value)


def register(registry: JobRegistry) -> None:
    """Due hourly per environment with alerts set (the next evaluation instant is kept in
    ``analytics_state``; a change of settings makes it due at once)."""

    async def find_due(s: AsyncSession, env: str, until: datetime, limit: int):
        raw = await s.scalar(select(Environment.settings).where(Environment.id == env))
        if not (raw or {}).get("marginAlerts"):
            return []
        nxt = await s.scalar(
            select(AnalyticsState.value).where(AnalyticsState.name == _state_name(env))
        )
        if nxt is None:
            return [registry.item(JOB, until, "evaluate")]
        at = datetime.fromtimestamp(int(nxt), tz=UTC)
        return [registry.item(JOB, at, "evaluate")] if at <= until else []

    async def run(s: AsyncSession, ctx: AppContext, env: str, key: str, now: datetime):
        events = await evaluate(s, env, now)
        if not events:
            return
        from .billing_jobs import system_principal

        principal = await system_principal(s, env)

        async def announce() -> None:
            for name, payload in events:
                await ctx.emit(name, principal, payload)

        after_commit(s, announce)

    registry.register(JOB, find_due, run)
