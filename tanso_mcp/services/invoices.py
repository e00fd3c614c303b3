"""Invoices: building, line items, usage recomputation, status changes, presenters.

Rules (SPEC §3 "Invoices", reference §2.10, §4.10):

* types ``IN_ADVANCE_INITIAL``, ``REGULAR``, ``ADJUSTMENT``, ``CREDIT``; statuses
  ``PENDING``, ``DUE``, ``PAID``, ``PAST_DUE``, ``VOID``;
* ``amount_minor`` is always the sum of the line items' ``charge_minor`` (lines are
  rounded half-up once each; the total is never rounded again);
* one ``REGULAR`` invoice per (subscription, period start) and one
  ``IN_ADVANCE_INITIAL`` / ``CREDIT`` per subscription, by unique indexes: creating one
  twice is a no-op that returns ``None``;
* fixed lines (base price, adjustment, credit) are written when the invoice is
  created; usage lines come from ``services.usage.usage_lines`` for the invoice's
  *usage windows* (``metadata.usageWindows``: ``[{planId, from, to}]``) and are
  recomputed while the invoice is ``PENDING`` or ``DUE``. A window is the period whose
  usage the invoice closes, priced with the plan that was in force then: for an
  IN_ARREARS plan the invoice's own period, for an IN_ADVANCE plan the period before
  it (usage is always billed in arrears);
* ``metadata.segments`` (IN_ARREARS ``REGULAR`` invoices): which plan covered which
  part of the period; the base lines are derived from them (an immediate upgrade
  splits the current segment, see services/subscriptions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Customer, Invoice, InvoiceItem, Plan
from ..db.scale import qty_to_int
from ..db.types import new_id
from ..domain.money import from_minor, round_money, to_minor
from ..domain.periods import parse_datetime
from ..errors import Conflict, InvalidRequest, NotFound
from . import usage as usage_seam
from .credits import insert_ignore

OPEN = ("PENDING", "DUE")
UNPAID = ("PENDING", "DUE", "PAST_DUE")
TYPES = ("IN_ADVANCE_INITIAL", "REGULAR", "ADJUSTMENT", "CREDIT")
UNIQUE_TYPES = ("IN_ADVANCE_INITIAL", "REGULAR", "CREDIT")


@dataclass
class Line:
    kind: str  # base | usage | adjustment | credit
    description: str
    amount: Decimal  # exact; rounded once when written
    feature_id: str | None = None
    quantity: Decimal | None = None


def window(plan: Plan, start: datetime, end: datetime) -> dict[str, Any]:
    return {"planId": plan.id, "from": start, "to": end}


def segment(plan: Plan, start: datetime, end: datetime) -> dict[str, Any]:
    return {"planId": plan.id, "from": start, "to": end}


def base_line(plan: Plan) -> Line:
    return Line(
        "base", f"Plan base price: {plan.name}", from_minor(plan.price_minor, plan.currency)
    )


async def segment_lines(
    s: AsyncSession, segments: list[dict[str, Any]], period_start: datetime, period_end: datetime
) -> list[Line]:
    """Base lines of an IN_ARREARS period from its plan segments: each segment bills
    its share of the period at its plan's price (a single segment = the full price)."""
    total_ms = (period_end - period_start).total_seconds() * 1000
    out: list[Line] = []
    for seg in segments:
        plan = await s.get(Plan, seg["planId"])
        start, end = _dt(seg["from"]), _dt(seg["to"])
        price = from_minor(plan.price_minor, plan.currency)
        if len(segments) == 1:
            out.append(base_line(plan))
            continue
        ms = int((end - start).total_seconds() * 1000)
        share = Fraction(ms, int(total_ms)) if total_ms else Fraction(0)
        amount = round_money(share * Fraction(price), plan.currency)
        out.append(
            Line(
                "base",
                f"Plan base price: {plan.name} ({start.date().isoformat()} – "
                f"{end.date().isoformat()}, {_percent(share)}% of the period)",
                amount,
            )
        )
    return out


def _percent(share: Fraction) -> str:
    value = Decimal(share.numerator) * 100 / Decimal(share.denominator)
    return str(value.quantize(Decimal("0.01")))


def _dt(v: Any) -> datetime:
    return v if isinstance(v, datetime) else parse_datetime(v, "window")


async def compute_usage_lines(
    s: AsyncSession, sub: Any, windows: list[dict[str, Any]]
) -> list[Line]:
    lines: list[Line] = []
    for w in windows:
        plan = await s.get(Plan, w["planId"])
        if plan is None:
            continue
        for u in await usage_seam.usage_lines(s, sub, plan, _dt(w["from"]), _dt(w["to"])):
            lines.append(Line("usage", u.description, u.amount, u.feature_id, u.quantity))
    return lines


async def create_invoice(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    customer_id: str,
    subscription_id: str | None,
    type: str,
    status: str,
    currency: str,
    due_date: datetime | None,
    period_start: datetime | None,
    period_end: datetime | None,
    lines: list[Line],
    metadata: dict[str, Any] | None = None,
    paid: bool = False,
) -> Invoice | None:
    """Insert an invoice and its lines. For the unique types, returns ``None`` when the
    invoice already exists (another process or an earlier run created it)."""
    inv_id = new_id()
    minors = [to_minor(line.amount, currency) for line in lines]
    values = {
        "id": inv_id,
        "environment_id": env,
        "customer_id": customer_id,
        "subscription_id": subscription_id,
        "type": type,
        "status": status,
        "amount_minor": sum(minors),
        "currency": currency,
        "due_date": due_date,
        "period_start": period_start,
        "period_end": period_end,
        "paid_at": now if paid or status == "PAID" else None,
        "metadata": metadata or {},
        "created_at": now,
        "modified_at": now,
    }
    if type in UNIQUE_TYPES:
        if not await insert_ignore(s, Invoice.__table__, values):
            return None
    else:
        await s.execute(Invoice.__table__.insert().values(**values))
    await _write_lines(s, env, inv_id, lines, minors, now)
    return await s.get(Invoice, inv_id)


async def _write_lines(
    s: AsyncSession, env: str, invoice_id: str, lines: list[Line], minors: list[int], now
) -> None:
    rows = [
        {
            "id": new_id(),
            "environment_id": env,
            "invoice_id": invoice_id,
            "kind": line.kind,
            "feature_id": line.feature_id,
            "description": line.description,
            "quantity_q": qty_to_int(line.quantity) if line.quantity is not None else None,
            "charge_minor": m,
            "created_at": now,
        }
        for line, m in zip(lines, minors, strict=True)
        if m != 0 or line.kind != "usage"
    ]
    if rows:
        await s.execute(InvoiceItem.__table__.insert(), rows)


async def items_of(s: AsyncSession, invoice_ids: list[str]) -> dict[str, list[InvoiceItem]]:
    out: dict[str, list[InvoiceItem]] = {i: [] for i in invoice_ids}
    if not invoice_ids:
        return out
    rows = await s.scalars(
        select(InvoiceItem)
        .where(InvoiceItem.invoice_id.in_(invoice_ids))
        .order_by(InvoiceItem.created_at, InvoiceItem.id)
        .execution_options(populate_existing=True)
    )
    for it in rows:
        out[it.invoice_id].append(it)
    return out


async def rewrite_lines(
    s: AsyncSession, inv: Invoice, now: datetime, *, kinds: tuple[str, ...], lines: list[Line]
) -> bool:
    """Replace the invoice's lines of ``kinds`` by ``lines`` and set the amount to the
    new sum, only while the invoice is open (PENDING/DUE). Returns False if it was not
    open any more (nothing changed)."""
    await s.execute(
        delete(InvoiceItem).where(InvoiceItem.invoice_id == inv.id, InvoiceItem.kind.in_(kinds))
    )
    minors = [to_minor(line.amount, inv.currency) for line in lines]
    await _write_lines(s, inv.environment_id, inv.id, lines, minors, now)
    total = await s.scalar(
        select(func.coalesce(func.sum(InvoiceItem.charge_minor), 0)).where(
            InvoiceItem.invoice_id == inv.id
        )
    )
    res = await s.execute(
        update(Invoice)
        .where(Invoice.id == inv.id, Invoice.status.in_(OPEN))
        .values(amount_minor=int(total or 0), modified_at=now)
        .execution_options(synchronize_session=False)
    )
    if (res.rowcount or 0) != 1:
        raise _NotOpen()
    inv.amount_minor, inv.modified_at = int(total or 0), now
    return True


class _NotOpen(Exception):
    pass


async def recompute(s: AsyncSession, inv: Invoice, sub: Any, now: datetime) -> bool:
    """Recompute the usage lines of an open invoice from its usage windows (and its
    base lines from its plan segments). No-op for closed invoices."""
    if inv.status not in OPEN:
        return False
    meta = inv.metadata_ or {}
    windows = meta.get("usageWindows") or []
    segments = meta.get("segments")
    try:
        if segments:
            lines = await segment_lines(s, segments, inv.period_start, inv.period_end)
            await rewrite_lines(s, inv, now, kinds=("base",), lines=lines)
        if windows:
            lines = await compute_usage_lines(s, sub, windows)
            await rewrite_lines(s, inv, now, kinds=("usage",), lines=lines)
    except _NotOpen:
        return False
    return True


async def set_status(
    s: AsyncSession, inv: Invoice, new: str, now: datetime, *, only_from: tuple[str, ...]
) -> bool:
    """Conditional status change (the guard against concurrent runs): True when this
    call made the change."""
    values: dict[str, Any] = {"status": new, "modified_at": now}
    if new == "PAID":
        values["paid_at"] = now
    if new == "VOID":
        values["voided_at"] = now
    res = await s.execute(
        update(Invoice)
        .where(Invoice.id == inv.id, Invoice.status.in_(only_from))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if (res.rowcount or 0) != 1:
        return False
    inv.status = new
    inv.modified_at = now
    if new == "PAID":
        inv.paid_at = now
    if new == "VOID":
        inv.voided_at = now
    return True


async def get_invoice(s: AsyncSession, env: str, invoice_id: str, field: str = "invoiceId"):
    inv = await s.scalar(
        select(Invoice)
        .where(Invoice.environment_id == env, Invoice.id == invoice_id)
        .execution_options(populate_existing=True)
    )
    if inv is None:
        raise NotFound(f"invoice {invoice_id} not found", field=field)
    return inv


def check_payable(inv: Invoice) -> None:
    if inv.status == "VOID":
        raise InvalidRequest(f"invoice {inv.id} is VOID and cannot be paid", field="invoiceId")
    if inv.status == "PAID":
        raise Conflict(f"invoice {inv.id} is already PAID", field="invoiceId")


# --------------------------------------------------------------------------- reads


def invoice_view(
    inv: Invoice,
    items: list[InvoiceItem] | None,
    customer_ref: str | None = None,
    *,
    with_id: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": inv.id if with_id else None,
        "type": inv.type,
        "status": inv.status,
        "amount": from_minor(inv.amount_minor, inv.currency),
        "currency": inv.currency,
        "dueDate": inv.due_date,
        "periodStart": inv.period_start,
        "periodEnd": inv.period_end,
        "subscriptionId": inv.subscription_id,
        "customerReferenceId": customer_ref,
        "paidAt": inv.paid_at,
        "voidedAt": inv.voided_at,
        "createdAt": inv.created_at,
        "modifiedAt": inv.modified_at,
    }
    if items is not None:
        out["items"] = [
            {
                "id": it.id if with_id else None,
                "kind": it.kind,
                "description": it.description,
                "chargeAmount": from_minor(it.charge_minor, inv.currency),
                "quantity": (Decimal(it.quantity_q) / 10000).quantize(Decimal("0.0001"))
                if it.quantity_q is not None
                else None,
            }
            for it in items
        ]
    return out


async def invoice_detail(s: AsyncSession, env: str, invoice_id: str) -> dict[str, Any]:
    inv = await get_invoice(s, env, invoice_id)
    items = (await items_of(s, [inv.id]))[inv.id]
    ref = await s.scalar(select(Customer.reference_id).where(Customer.id == inv.customer_id))
    return invoice_view(inv, items, ref)


async def list_for_customer(
    s: AsyncSession, env: str, customer: Customer, *, limit: int = 500, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """A customer's invoices across all subscriptions, newest first, with items."""
    q = select(Invoice).where(Invoice.environment_id == env, Invoice.customer_id == customer.id)
    total = await s.scalar(select(func.count()).select_from(q.subquery()))
    rows = list(
        (
            await s.scalars(
                q.order_by(Invoice.created_at.desc(), Invoice.id.desc()).limit(limit).offset(offset)
            )
        ).all()
    )
    items = await items_of(s, [i.id for i in rows])
    return [invoice_view(i, items[i.id], customer.reference_id) for i in rows], int(total or 0)


async def invoice_problems(s: AsyncSession, env: str) -> list[str]:
    """Invariant check for tests: every invoice's amount is the sum of its lines."""
    rows = await s.execute(
        select(
            Invoice.id, Invoice.amount_minor, func.coalesce(func.sum(InvoiceItem.charge_minor), 0)
        )
        .outerjoin(InvoiceItem, InvoiceItem.invoice_id == Invoice.id)
        .where(Invoice.environment_id == env)
        .group_by(Invoice.id, Invoice.amount_minor)
    )
    return [f"invoice {i}: amount {a} != Σ lines {int(t)}" for i, a, t in rows if int(a) != int(t)]
