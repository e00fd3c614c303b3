"""Plain async factory helpers for tests (no fixtures magic)."""

from __future__ import annotations

from typing import Any

from tanso_mcp.bootstrap import AppContext
from tanso_mcp.services import catalog


async def make_plan(
    ctx: AppContext,
    env: str,
    *,
    key: str = "pro",
    price: str = "49.00",
    timing: str = "IN_ADVANCE",
    interval: int = 1,
    features: dict[str, Any] | None = None,
    activate: bool = True,
    credit_allocations: Any = None,
    currency: str = "USD",
) -> dict[str, Any]:
    """A plan with features linked ({feature_key: valueJson or None}); returns ids."""
    now = ctx.clocks.system_now()
    features = features if features is not None else {"api_access": None}
    async with ctx.db.unit_of_work() as s:
        plan = await catalog.create_plan(
            s,
            env,
            now,
            key=key,
            name=key.title(),
            price_amount=price,
            description=f"{key} plan",
            interval_months=interval,
            billing_timing=timing,
            currency=currency,
            credit_allocations=credit_allocations,
        )
        ids = {}
        for fkey, value in features.items():
            try:
                f = await catalog.feature_by_key(s, env, fkey)
            except Exception:
                f = await catalog.create_feature(s, env, now, key=fkey, name=fkey)
            await catalog.link_feature(
                s, env, now, plan_id=plan.id, feature_id=f.id, value_json=value
            )
            ids[fkey] = f.id
        if activate:
            await catalog.update_plan(s, env, now, plan.id, status="ACTIVE")
    ctx.invalidate(env)
    return {"plan_id": plan.id, "feature_ids": ids}
