"""Customer use cases: :func:`create` and :func:`update` are the whole use case (one
unit of work, cache invalidation and the domain event recorded on it), called alike by
the REST routes and the MCP tools; the session-level functions below are their parts,
also used by other use cases (subscribe auto-creates customers)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import CreditPool, Customer
from ..errors import Conflict, InvalidRequest, NotFound
from ..principal import Principal
from .subscriptions import subscriptions_for_customer_view
from .views import customer_base_view, pool_view

if TYPE_CHECKING:
    from ..context import AppContext

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def check_reference(value: Any, field: str = "customerReferenceId") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field} is required", field=field)
    if len(value) > 128:
        raise InvalidRequest(f"{field} must be at most 128 characters", field=field)
    return value


def _opt_text(value: Any, field: str, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string", field=field)
    if len(value) > max_len:
        raise InvalidRequest(f"{field} must be at most {max_len} characters", field=field)
    return value


def check_email(value: Any, field: str = "email") -> str | None:
    value = _opt_text(value, field, 320)
    if value is not None and not EMAIL_RE.match(value):
        raise InvalidRequest(f"{field} is not a valid email address", field=field)
    return value


async def by_reference(
    s: AsyncSession, env: str, ref: str, field: str = "customerReferenceId"
) -> Customer:
    c = await find_by_reference(s, env, ref)
    if c is None:
        raise NotFound(f"customer {ref!r} not found", field=field)
    return c


async def find_by_reference(s: AsyncSession, env: str, ref: str) -> Customer | None:
    return await s.scalar(
        select(Customer).where(Customer.environment_id == env, Customer.reference_id == ref)
    )


async def create_customer(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    reference_id: Any,
    email: Any = None,
    first_name: Any = None,
    last_name: Any = None,
    phone_number: Any = None,
    source: str = "API",
) -> Customer:
    ref = check_reference(reference_id)
    c = Customer(
        environment_id=env,
        reference_id=ref,
        email=check_email(email),
        first_name=_opt_text(first_name, "firstName", 200),
        last_name=_opt_text(last_name, "lastName", 200),
        phone_number=_opt_text(phone_number, "phoneNumber", 64),
        source=source,
        metadata_={},
        created_at=now,
        modified_at=now,
    )
    if await find_by_reference(s, env, ref) is not None:
        raise Conflict(
            f"a customer with reference {ref!r} already exists", field="customerReferenceId"
        )
    try:
        async with s.begin_nested():
            s.add(c)
            await s.flush()
    except IntegrityError:  # a concurrent create won the race
        raise Conflict(
            f"a customer with reference {ref!r} already exists", field="customerReferenceId"
        ) from None
    return c


async def update_customer(
    s: AsyncSession, env: str, now: datetime, ref: str, **changes: Any
) -> Customer:
    c = await by_reference(s, env, ref)
    if changes.get("email") is not None:
        c.email = check_email(changes["email"])
    if changes.get("firstName") is not None:
        c.first_name = _opt_text(changes["firstName"], "firstName", 200)
    if changes.get("lastName") is not None:
        c.last_name = _opt_text(changes["lastName"], "lastName", 200)
    if changes.get("phoneNumber") is not None:
        c.phone_number = _opt_text(changes["phoneNumber"], "phoneNumber", 64)
    c.modified_at = now
    await s.flush()
    return c


async def create(
    ctx: AppContext,
    p: Principal,
    *,
    reference_id: Any,
    email: Any = None,
    first_name: Any = None,
    last_name: Any = None,
    phone_number: Any = None,
) -> dict[str, Any]:
    """Create a customer; its view. A check that cached "no such customer" sees it as
    soon as this commits."""
    now = await ctx.now(p)
    async with ctx.db.unit_of_work() as s:
        c = await create_customer(
            s,
            p.environment_id,
            now,
            reference_id=reference_id,
            email=email,
            first_name=first_name,
            last_name=last_name,
            phone_number=phone_number,
        )
        view = await customer_view(s, c)
        ctx.changed(s, p.environment_id)
        ctx.announce(s, "customer.created", p, {"customer": view})
    # Stripe Integration mode: created in Stripe too, after the commit (never inside it)
    from . import stripe_sync

    if ext := await stripe_sync.after_customer_write(ctx, p.environment_id, c.id):
        view["stripeCustomerId"] = ext
    return view


async def update(ctx: AppContext, p: Principal, ref: str, **changes: Any) -> dict[str, Any]:
    """Update the given fields of a customer; its view."""
    now = await ctx.now(p)
    async with ctx.db.unit_of_work() as s:
        c = await update_customer(s, p.environment_id, now, ref, **changes)
        view = await customer_view(s, c)
        ctx.changed(s, p.environment_id)
        ctx.announce(s, "customer.updated", p, {"customer": view})
    from . import stripe_sync

    await stripe_sync.after_customer_write(ctx, p.environment_id, c.id)
    return view


async def customer_view(s: AsyncSession, c: Customer) -> dict[str, Any]:
    """A customer with its subscriptions and credit pools."""
    out = customer_base_view(c)
    out["subscriptions"] = await subscriptions_for_customer_view(s, c)
    pools = (
        (
            await s.execute(
                select(CreditPool)
                .where(CreditPool.customer_id == c.id)
                .order_by(CreditPool.denomination)
            )
        )
        .scalars()
        .all()
    )
    if pools:
        out["creditPools"] = [pool_view(p) for p in pools]
    return out
