"""Which features a plan grants, and keeping existing subscriptions in step with catalog
edits.

A plan grants a feature when the plan-feature rule and the feature are both enabled
(:func:`grants`); billing reconciles one subscription with that rule when it starts,
renews, changes plan or is restored (services/billing.py), and a catalog edit of a
feature — a rule's enabled flag, linking or unlinking it, the feature's own flag or key
— reconciles every live subscription of the affected plans in the same unit of work
(:func:`sync_feature`), a few statements whatever the number of subscriptions. Limits
and prices are read from the rule itself, so changing them needs no entitlement change.

Entitlements are granted to a subscription that is active, not ended and not past due
(the states in which billing grants them); revoking applies to every subscription of
the plan.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Entitlement, Feature, PlanFeature, Subscription
from ..db.types import new_id


def grants(rule_enabled: bool, feature_enabled: bool) -> bool:
    """A plan grants a linked feature when its rule and the feature are enabled."""
    return bool(rule_enabled) and bool(feature_enabled)


def _grantable(env: str, plan_ids: list[str]):
    # imported here: subscriptions -> views -> catalog -> this module at import time
    from .subscriptions import past_due_clause

    past_due = past_due_clause(Subscription.id)
    return select(Subscription.id, Subscription.customer_id).where(
        Subscription.environment_id == env,
        Subscription.plan_id.in_(plan_ids),
        Subscription.is_active.is_(True),
        Subscription.ended_at.is_(None),
        ~past_due,
    )


async def sync_feature(
    s: AsyncSession, env: str, now: datetime, feature_id: str, plan_ids: list[str] | None = None
) -> None:
    """Make the entitlement rows of ``feature_id`` match the catalog on every live
    subscription of ``plan_ids`` (default: every plan that links the feature)."""
    feature = await s.scalar(
        select(Feature)
        .where(Feature.environment_id == env, Feature.id == feature_id)
        .execution_options(populate_existing=True)
    )
    if feature is None:
        return
    rules = {
        pid: enabled
        for pid, enabled in await s.execute(
            select(PlanFeature.plan_id, PlanFeature.is_enabled).where(
                PlanFeature.feature_id == feature_id
            )
        )
    }
    if plan_ids is None:
        plan_ids = sorted(rules)
    on = sorted(p for p in plan_ids if p in rules and grants(rules[p], feature.is_enabled))
    off = sorted(p for p in plan_ids if p not in on)
    if off:
        await s.execute(
            update(Entitlement)
            .where(
                Entitlement.environment_id == env,
                Entitlement.feature_id == feature_id,
                Entitlement.revoked_at.is_(None),
                Entitlement.subscription_id.in_(
                    select(Subscription.id).where(Subscription.plan_id.in_(off))
                ),
            )
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
    if on:
        subs = dict((await s.execute(_grantable(env, on))).all())
        rows = dict(
            (
                await s.execute(
                    select(Entitlement.subscription_id, Entitlement.revoked_at).where(
                        Entitlement.feature_id == feature_id,
                        Entitlement.subscription_id.in_(
                            _grantable(env, on).with_only_columns(Subscription.id)
                        ),
                    )
                )
            ).all()
        )
        back = sorted(sid for sid, revoked in rows.items() if revoked is not None)
        if back:
            await s.execute(
                update(Entitlement)
                .where(
                    Entitlement.feature_id == feature_id,
                    Entitlement.subscription_id.in_(back),
                    Entitlement.revoked_at.is_not(None),
                )
                .values(revoked_at=None, granted_at=now)
                .execution_options(synchronize_session=False)
            )
        missing = sorted(sid for sid in subs if sid not in rows)
        if missing:
            dialect = s.bind.dialect.name if s.bind is not None else "sqlite"
            ins = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
            await s.execute(
                ins(Entitlement).on_conflict_do_nothing(),
                [
                    {
                        "id": new_id(),
                        "environment_id": env,
                        "customer_id": subs[sid],
                        "subscription_id": sid,
                        "feature_id": feature_id,
                        "feature_key": feature.key,
                        "granted_at": now,
                        "revoked_at": None,
                    }
                    for sid in missing
                ],
            )
    await s.execute(
        update(Entitlement)
        .where(Entitlement.feature_id == feature_id, Entitlement.feature_key != feature.key)
        .values(feature_key=feature.key)
        .execution_options(synchronize_session=False)
    )
