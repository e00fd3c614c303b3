"""The one loader of "which subscriptions grant which features": the entitlement cache
and the batch writer both read eligibility through :func:`load_granting`, and take the
decisions (past due, which grants count) from :mod:`tanso_mcp.domain.entitlements`.

Synchronous over the :mod:`.sqlio` interface: the batch writer calls it inside its
transaction; the cache calls it through ``run_sync`` on a read session.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ...domain.entitlements import grants_feature, grants_features, is_past_due, limit_q
from ...domain.rules import RuleValue
from .rulecache import rule_value
from .sqlio import in_list
from .windows import SubPeriod


@dataclass(slots=True)
class Grant:
    """A feature granted through one subscription, with its plan rule."""

    feature_id: str
    feature_key: str
    rule_id: str
    rule: RuleValue | None
    currency: str
    # the rule's max_usage as a JSON-friendly number (int when whole); None = unlimited
    limit: Decimal | int | None = None
    limit_q: int | None = None

    def __post_init__(self) -> None:
        if self.rule is not None and self.rule.pricing is not None:
            m = self.rule.pricing.max_usage
            if m is not None:
                self.limit = int(m) if m == m.to_integral_value() else m
                self.limit_q = limit_q(m)


@dataclass(slots=True)
class SubInfo:
    """An active subscription that grants features, with the features it grants."""

    id: str
    customer_id: str
    plan_id: str
    plan_key: str
    period: SubPeriod
    grants: dict[str, Grant] = field(default_factory=dict)  # by feature id
    by_key: dict[str, Grant] = field(default_factory=dict)  # by feature key

    @property
    def started_at(self) -> datetime:
        return self.period.started_at


def load_granting(
    tx: Any, env: str, customer_ids: list[str], feature_ids: list[str] | None = None
) -> dict[str, list[SubInfo]]:
    """Per customer, its subscriptions that grant features (oldest first), each with the
    features it grants (restricted to ``feature_ids`` when given)."""
    out: dict[str, list[SubInfo]] = defaultdict(list)
    if not customer_ids or feature_ids == []:
        return out
    p: dict[str, Any] = {"env": env, "t": tx.b(True)}
    rows = tx.rows(
        "SELECT s.id, s.customer_id, s.plan_id, p.key, p.currency, s.started_at, "
        "s.current_period_start, s.current_period_end, s.interval_months, "
        "s.billing_anchor_day FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
        f"WHERE s.environment_id = :env AND s.customer_id IN ({in_list('c', customer_ids, p)}) "
        "AND s.is_active = :t AND s.ended_at IS NULL ORDER BY s.created_at, s.id",
        p,
    )
    if not rows:
        return out
    sub_ids = sorted(r[0] for r in rows)
    p = {}
    statuses: dict[str, set[str]] = defaultdict(set)
    for sid, status in tx.rows(
        "SELECT DISTINCT subscription_id, status FROM invoices "
        f"WHERE subscription_id IN ({in_list('s', sub_ids, p)})",
        p,
    ):
        statuses[sid].add(status)
    p = {"env": env}
    feature_filter = (
        f" AND feature_id IN ({in_list('f', feature_ids, p)})" if feature_ids is not None else ""
    )
    entitled = set(
        tx.rows(
            "SELECT subscription_id, feature_id FROM entitlements WHERE environment_id = :env "
            f"AND subscription_id IN ({in_list('s', sub_ids, p)}) AND revoked_at IS NULL"
            + feature_filter,
            p,
        )
    )
    plan_ids = sorted({r[2] for r in rows})
    p = {}
    feature_filter = (
        f" AND f.id IN ({in_list('f', feature_ids, p)})" if feature_ids is not None else ""
    )
    rules: dict[str, list[tuple]] = defaultdict(list)
    for plan_id, fid, fkey, f_enabled, rid, value, r_enabled in tx.rows(
        "SELECT pf.plan_id, f.id, f.key, f.is_enabled, pf.id, pf.value, pf.is_enabled "
        "FROM plan_features pf JOIN features f ON f.id = pf.feature_id "
        f"WHERE pf.plan_id IN ({in_list('p', plan_ids, p)})" + feature_filter,
        p,
    ):
        rules[plan_id].append((fid, fkey, bool(f_enabled), rid, value, bool(r_enabled)))
    for sid, cid, plan_id, plan_key, currency, started, ps, pe, interval, anchor in rows:
        if not grants_features(is_active=True, ended_at=None, past_due=is_past_due(statuses[sid])):
            continue
        sub = SubInfo(
            sid,
            cid,
            plan_id,
            plan_key,
            SubPeriod(
                tx.from_dt(started), tx.from_dt(ps), tx.from_dt(pe), int(interval), int(anchor)
            ),
        )
        for fid, fkey, f_enabled, rid, value, r_enabled in rules.get(plan_id, ()):
            if grants_feature(
                entitled=(sid, fid) in entitled, rule_enabled=r_enabled, feature_enabled=f_enabled
            ):
                g = Grant(fid, fkey, rid, rule_value(rid, value), currency)
                sub.grants[fid] = g
                sub.by_key[fkey] = g
        out[cid].append(sub)
    return out
