"""Invoices: building, line items, the amount as of now, status changes, presenters.

Rules:

* types ``IN_ADVANCE_INITIAL``, ``REGULAR``, ``ADJUSTMENT``, ``CREDIT``; statuses
  ``PENDING``, ``DUE``, ``PAID``, ``PAST_DUE``, ``VOID``;
* ``amount_minor`` is always the sum of the line items' ``charge_minor`` (lines are
  rounded half-up once each; the total is never rounded again);
* one ``REGULAR`` invoice per (subscription, period start) and one
  ``IN_ADVANCE_INITIAL`` / ``CREDIT`` per subscription, by unique indexes: creating one
  twice is a no-op that returns ``None``;
* fixed lines (base price, adjustment, credit) are written when the invoice is
  created; usage lines come from ``services.usage.usage_lines`` for the invoice's
  *usage windows* (``metadata.usageWindows``: ``[{planId, from, to}]``). A window is
  the period whose usage the invoice closes, priced with the plan that was in force
  then: for an IN_ARREARS plan the invoice's own period, for an IN_ADVANCE plan the
  period before it (usage is always billed in arrears);
* ``metadata.segments`` (IN_ARREARS ``REGULAR`` invoices): which plan covered which
  part of the period; the base lines are derived from them (an immediate upgrade
  splits the current segment, an immediate cancellation ends the last one);
* while an invoice is ``PENDING`` or ``DUE`` its amount and lines are those of
  :func:`current` — as of now, from the events and segments — for every read, preview
  and payment; the billing jobs store them (:func:`refresh`), and every status change
  stores them first, so what leaves ``PENDING``/``DUE`` is exactly what was shown.
  After that an invoice never changes.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.guards import among
from ..db.models import Customer, Invoice, InvoiceItem, Plan, Subscription
from ..db.records import record_of
from ..db.scale import qty_to_int
from ..db.types import new_id
from ..domain.money import from_minor, to_minor
from ..domain.periods import parse_datetime
from ..domain.proration import prorate
from ..errors import Conflict, InvalidRequest, NotFound
from . import usage as usage_seam
from .credits import insert_ignore

OPEN = ("PENDING", "DUE")
_MS = timedelta(milliseconds=1)
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


def window(
    plan: Plan, start: datetime, end: datetime, pricing: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A usage window; ``pricing``: the plan's rules when the period started."""
    out: dict[str, Any] = {"planId": plan.id, "from": start, "to": end}
    if pricing is not None:
        out["pricing"] = pricing
    return out


def segment(plan: Plan, start: datetime, end: datetime) -> dict[str, Any]:
    return {"planId": plan.id, "from": start, "to": end}


def base_line(plan: Plan) -> Line:
    return Line(
        "base", f"Plan base price: {plan.name}", from_minor(plan.price_minor, plan.currency)
    )


async def segment_lines(
    s: AsyncSession,
    segments: list[dict[str, Any]],
    period_start: datetime,
    period_end: datetime,
    plans: dict[str, Plan] | None = None,
) -> list[Line]:
    """Base lines of an IN_ARREARS period ``[period_start, period_end)`` from its plan
    segments: a segment covering the whole period bills its plan's price; any other
    bills its share of the period (whole milliseconds) at its plan's price, rounded
    once, half-up — the proration rule of upgrades and cancellations."""
    total_ms = (period_end - period_start) // _MS
    out: list[Line] = []
    for seg in segments:
        plan = (plans or {}).get(seg["planId"]) or await s.get(Plan, seg["planId"])
        start, end = dt(seg["from"]), dt(seg["to"])
        if start <= period_start and end >= period_end:
            out.append(base_line(plan))
            continue
        ms = max((end - start) // _MS, 0)
        share = Fraction(min(ms, total_ms), total_ms) if total_ms > 0 else Fraction(0)
        amount = prorate(share, from_minor(plan.price_minor, plan.currency), plan.currency)
        out.append(
            Line(
                "base",
                f"Plan base price: {plan.name} ({start.date().isoformat()} – "
                f"{end.date().isoformat()}, {_percent(share)}% of the period)",
                amount,
            )
        )
    return out


def full_period_end(inv: Invoice) -> datetime | None:
    """The end of the period an invoice's plan segments are shares of (an immediate
    cancellation ends the invoice's own period early, not the shares' denominator)."""
    full = (inv.metadata_ or {}).get("fullPeriodEnd")
    return dt(full) if full else inv.period_end


def _percent(share: Fraction) -> str:
    value = Decimal(share.numerator) * 100 / Decimal(share.denominator)
    return str(value.quantize(Decimal("0.01")))


def dt(v: Any) -> datetime:
    """A datetime stored in invoice metadata (segments, windows)."""
    return v if isinstance(v, datetime) else parse_datetime(v, "window")


async def compute_usage_lines(
    s: AsyncSession, sub: Any, windows: list[dict[str, Any]]
) -> list[Line]:
    return (await _usage_lines_many(s, [(sub, windows)]))[0]


async def _usage_lines_many(
    s: AsyncSession, wanted: list[tuple[Any, list[dict[str, Any]]]]
) -> list[list[Line]]:
    """Usage lines for several (subscription, usage windows) pairs in one pass."""
    requests: list[usage_seam.UsageRequest] = []
    owner: list[int] = []
    for n, (sub, windows) in enumerate(wanted):
        for w in windows:
            requests.append(
                usage_seam.UsageRequest(
                    sub, w["planId"], dt(w["from"]), dt(w["to"]), w.get("pricing")
                )
            )
            owner.append(n)
    out: list[list[Line]] = [[] for _ in wanted]
    if not requests:
        return out
    for n, found in zip(owner, await usage_seam.usage_lines_for(s, requests), strict=True):
        for u in found:
            out[n].append(Line("usage", u.description, u.amount, u.feature_id, u.quantity))
    return out


@dataclass
class NewInvoice:
    """An invoice about to be inserted: its row and its rounded lines."""

    values: dict[str, Any]
    rows: list[ItemRow]

    @property
    def id(self) -> str:
        return self.values["id"]

    @property
    def unique(self) -> bool:
        return self.values["type"] in UNIQUE_TYPES

    def transient(self) -> Invoice:
        """The invoice as presenters read it, as it will be stored (a plain namespace:
        an ORM instance per invoice costs more than the rest of its renewal)."""
        v = dict(self.values)
        v["metadata_"] = v.pop("metadata")
        return cast(Invoice, SimpleNamespace(provider_invoice_id=None, voided_at=None, **v))


def build_invoice(
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
) -> NewInvoice:
    """The row and lines of a new invoice (pure: the one rule for what is inserted)."""
    inv_id = new_id()
    rows = _rows(inv_id, currency, lines, start=0)
    values = {
        "id": inv_id,
        "environment_id": env,
        "customer_id": customer_id,
        "subscription_id": subscription_id,
        "type": type,
        "status": status,
        "amount_minor": sum(r.charge_minor for r in rows),
        "currency": currency,
        "due_date": due_date,
        "period_start": period_start,
        "period_end": period_end,
        "paid_at": now if paid or status == "PAID" else None,
        "metadata": metadata or {},
        "created_at": now,
        "modified_at": now,
    }
    return NewInvoice(values, rows)


async def insert_invoices(
    s: AsyncSession, env: str, invoices: list[NewInvoice], now: datetime
) -> set[str]:
    """Insert several invoices and their lines with a few multi-row statements. The
    unique types are inserted with ``ON CONFLICT DO NOTHING``: returns the ids inserted
    (an invoice missing from it already existed, and its lines were not written)."""
    inserted: set[str] = set()
    unique = [n for n in invoices if n.unique]
    plain = [n for n in invoices if not n.unique]
    table = Invoice.__table__
    # executemany: one cached statement, sent as multi-row INSERTs by the driver layer
    if unique:
        stmt = _insert(s)(table).on_conflict_do_nothing().returning(table.c.id)
        inserted.update((await s.execute(stmt, [n.values for n in unique])).scalars().all())
    if plain:
        await s.execute(table.insert(), [n.values for n in plain])
        inserted.update(n.id for n in plain)
    await _insert_many_rows(
        s, env, [(n.id, r) for n in invoices if n.id in inserted for r in n.rows], now
    )
    return inserted


def _insert(s: AsyncSession) -> Any:
    dialect = s.bind.dialect.name if s.bind is not None else "sqlite"
    return pg_insert if dialect == "postgresql" else sqlite_insert


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
    new = build_invoice(
        env,
        now,
        customer_id=customer_id,
        subscription_id=subscription_id,
        type=type,
        status=status,
        currency=currency,
        due_date=due_date,
        period_start=period_start,
        period_end=period_end,
        lines=lines,
        metadata=metadata,
        paid=paid,
    )
    if new.unique:
        if not await insert_ignore(s, Invoice.__table__, new.values):
            return None
    else:
        await s.execute(Invoice.__table__.insert().values(**new.values))
    await _insert_rows(s, env, new.id, new.rows, now)
    return await s.get(Invoice, new.id)


# --------------------------------------------------------------------------- lines


@dataclass(frozen=True)
class ItemRow:
    """A line as stored or as it would be stored (the shape reads present)."""

    id: str
    kind: str
    description: str
    charge_minor: int
    quantity_q: int | None
    feature_id: str | None

    @classmethod
    def of(cls, it: InvoiceItem) -> ItemRow:
        return cls(it.id, it.kind, it.description, it.charge_minor, it.quantity_q, it.feature_id)

    def content(self) -> tuple:
        return (self.kind, self.description, self.charge_minor, self.quantity_q, self.feature_id)


def line_id(invoice_id: str, position: int, content: tuple) -> str:
    """Id of a line derived from its invoice, position and content: a read of an open
    invoice shows the ids its lines get when the recomputation is stored, and ids sort
    in line order (the position is the id's leading 16 bits)."""
    digest = hashlib.blake2b(
        repr((invoice_id, position, content)).encode(), digest_size=16
    ).digest()
    value = (min(position, 0xFFFF) << 112) | int.from_bytes(digest[2:], "big")
    value = (value & ~(0xF << 76)) | (0x8 << 76)  # UUID version 8 (custom)
    value = (value & ~(0b11 << 62)) | (0b10 << 62)
    return str(uuid.UUID(int=value))


def _rows(invoice_id: str, currency: str, lines: list[Line], *, start: int) -> list[ItemRow]:
    """Lines rounded once each to minor units; zero usage lines are not kept."""
    out: list[ItemRow] = []
    for line in lines:
        minor = to_minor(line.amount, currency)
        if minor == 0 and line.kind == "usage":
            continue
        qty = qty_to_int(line.quantity) if line.quantity is not None else None
        content = (line.kind, line.description, minor, qty, line.feature_id)
        out.append(
            ItemRow(
                line_id(invoice_id, start + len(out), content),
                line.kind,
                line.description,
                minor,
                qty,
                line.feature_id,
            )
        )
    return out


async def write_lines(
    s: AsyncSession,
    env: str,
    invoice_id: str,
    lines: list[Line],
    minors: list[int],
    now: datetime,
) -> None:
    """Store lines whose minor-unit amounts are already known (an invoice a payment
    provider issued); zero usage lines are not kept, as for the core's own invoices."""
    rows: list[ItemRow] = []
    for line, minor in zip(lines, minors, strict=True):
        if minor == 0 and line.kind == "usage":
            continue
        qty = qty_to_int(line.quantity) if line.quantity is not None else None
        content = (line.kind, line.description, minor, qty, line.feature_id)
        rows.append(
            ItemRow(
                line_id(invoice_id, len(rows), content),
                line.kind,
                line.description,
                minor,
                qty,
                line.feature_id,
            )
        )
    await _insert_rows(s, env, invoice_id, rows, now)


async def _insert_rows(
    s: AsyncSession, env: str, invoice_id: str, rows: list[ItemRow], now: datetime
) -> None:
    await _insert_many_rows(s, env, [(invoice_id, r) for r in rows], now)


async def _insert_many_rows(
    s: AsyncSession, env: str, rows: list[tuple[str, ItemRow]], now: datetime
) -> None:
    if rows:
        await s.execute(
            InvoiceItem.__table__.insert(),
            [
                {
                    "id": r.id,
                    "environment_id": env,
                    "invoice_id": invoice_id,
                    "kind": r.kind,
                    "feature_id": r.feature_id,
                    "description": r.description,
                    "quantity_q": r.quantity_q,
                    "charge_minor": r.charge_minor,
                    "created_at": now,
                }
                for invoice_id, r in rows
            ],
        )


async def items_of(s: AsyncSession, invoice_ids: list[str]) -> dict[str, list[InvoiceItem]]:
    out: dict[str, list[InvoiceItem]] = {i: [] for i in invoice_ids}
    if not invoice_ids:
        return out
    rows = await s.scalars(
        select(InvoiceItem)
        .where(among(s, InvoiceItem.invoice_id, invoice_ids))
        .order_by(InvoiceItem.created_at, InvoiceItem.id)
        .execution_options(populate_existing=True)
    )
    for it in rows:
        out[it.invoice_id].append(it)
    return out


# --------------------------------------------------------------------------- as of now


@dataclass
class Current:
    """An invoice's amount and lines as of now. ``changed``: they differ from what is
    stored (an open invoice whose usage or plan segments moved since it was stored)."""

    amount_minor: int
    items: list[ItemRow]
    changed: bool
    recomputed_kinds: tuple[str, ...] = ()


async def current(s: AsyncSession, inv: Invoice, stored: list[InvoiceItem]) -> Current:
    """The one rule for what an invoice amounts to now. Closed invoices (and open ones
    with nothing to recompute, e.g. an adjustment) are what is stored. An open
    (PENDING/DUE) invoice with plan segments re-derives its base lines from them, and
    one with usage windows re-prices the usage of those windows from the events; its
    other lines stay as stored. Reads, previews, payments and the jobs all use this."""
    return (await current_many(s, [inv], {inv.id: stored}))[inv.id]


async def current_many(
    s: AsyncSession, invoices: list[Invoice], stored: dict[str, list[InvoiceItem]]
) -> dict[str, Current]:
    """:func:`current` for a page of invoices, with a fixed number of statements."""
    out: dict[str, Current] = {}
    todo: list[tuple[Invoice, list[dict[str, Any]], list[dict[str, Any]]]] = []
    for inv in invoices:
        rows = [ItemRow.of(it) for it in stored[inv.id]]
        out[inv.id] = Current(inv.amount_minor, rows, False)
        meta = inv.metadata_ or {}
        windows = meta.get("usageWindows") or []
        segments = meta.get("segments") or []
        # an invoice mirrored from a payment provider has the provider's amount
        if inv.status in OPEN and (windows or segments) and inv.provider_invoice_id is None:
            todo.append((inv, windows, segments))
    if not todo:
        return out
    # what the lines need, in two statements
    sub_ids = {inv.subscription_id for inv, _w, _s in todo if inv.subscription_id}
    plan_ids = {x["planId"] for _i, w, sg in todo for x in (*w, *sg)}
    subs = {  # records (read-only rows): only read for their usage
        sub.id: sub
        for sub in await s.execute(
            select(*record_of(Subscription)).where(among(s, Subscription.id, sub_ids))
        )
    }
    plans = {p.id: p for p in await s.scalars(select(Plan).where(Plan.id.in_(plan_ids)))}
    usage = await _usage_lines_many(
        s,
        [
            (subs[inv.subscription_id], windows)
            if windows and inv.subscription_id in subs
            else (None, [])
            for inv, windows, _sg in todo
        ],
    )
    for (inv, windows, segments), usage_lines in zip(todo, usage, strict=True):
        kinds = tuple(k for k, on in (("base", bool(segments)), ("usage", bool(windows))) if on)
        lines: list[Line] = []
        if segments:
            lines += await segment_lines(s, segments, inv.period_start, full_period_end(inv), plans)
        lines += usage_lines
        rows = out[inv.id].items
        fixed = [r for r in rows if r.kind not in kinds]
        fresh = _rows(inv.id, inv.currency, lines, start=len(fixed))
        items = fixed + fresh
        amount = sum(r.charge_minor for r in items)
        before = [r.content() for r in rows if r.kind in kinds]
        changed = before != [r.content() for r in fresh] or amount != inv.amount_minor
        out[inv.id] = Current(amount, items, changed, kinds)
    return out


async def refresh(s: AsyncSession, inv: Invoice, now: datetime, *, touch: bool = False) -> bool:
    """Store an open invoice's amount and lines as of now (``current``); True when the
    stored invoice changed. No-op for closed invoices. ``touch``: record ``now`` as its
    modification time even when nothing changed (the refresh job's mark that the usage
    recorded so far has been looked at)."""
    if inv.status not in OPEN:
        return False
    stored = (await items_of(s, [inv.id]))[inv.id]
    cur = await current(s, inv, stored)
    if not cur.changed:
        if touch and inv.modified_at < now:
            await s.execute(
                update(Invoice)
                .where(Invoice.id == inv.id, Invoice.status.in_(OPEN))
                .values(modified_at=now)
                .execution_options(synchronize_session=False)
            )
            inv.modified_at = now
        return False
    await _store_lines(s, inv.environment_id, [(inv, cur)], now)
    res = await s.execute(
        update(Invoice)
        .where(Invoice.id == inv.id, Invoice.status.in_(OPEN))
        .values(amount_minor=cur.amount_minor, modified_at=now)
        .execution_options(synchronize_session=False)
    )
    if (res.rowcount or 0) != 1:  # closed under us: leave it as it was
        raise Conflict(f"invoice {inv.id} changed concurrently; retry", field="invoiceId")
    inv.amount_minor, inv.modified_at = cur.amount_minor, now
    return True


async def _store_lines(
    s: AsyncSession, env: str, changed: list[tuple[Invoice, Current]], now: datetime
) -> None:
    """Replace the recomputed lines of invoices whose amount as of now changed."""
    by_kinds: dict[tuple[str, ...], list[str]] = {}
    for inv, cur in changed:
        by_kinds.setdefault(cur.recomputed_kinds, []).append(inv.id)
    for kinds, ids in by_kinds.items():
        await s.execute(
            delete(InvoiceItem)
            .where(among(s, InvoiceItem.invoice_id, ids), InvoiceItem.kind.in_(kinds))
            # the loaded items are marked deleted by the ids the statement returns (the
            # ORM cannot evaluate "= ANY" in Python, and would find that out each time)
            .execution_options(synchronize_session="fetch")
        )
    await _insert_many_rows(
        s,
        env,
        [(inv.id, r) for inv, cur in changed for r in cur.items if r.kind in cur.recomputed_kinds],
        now,
    )


async def refresh_many(s: AsyncSession, env: str, invoices: list[Invoice], now: datetime) -> None:
    """:func:`refresh` for several invoices with a fixed number of statements (the caller
    holds their subscriptions, so nobody closes them in between)."""
    todo = [inv for inv in invoices if inv.status in OPEN]
    if not todo:
        return
    stored = await items_of(s, [inv.id for inv in todo])
    curs = await current_many(s, todo, stored)
    changed = [(inv, curs[inv.id]) for inv in todo if curs[inv.id].changed]
    if not changed:
        return
    await _store_lines(s, env, changed, now)
    t = Invoice.__table__
    await s.execute(
        update(t)
        # no IN (…): expanding parameters cannot be used with executemany
        .where(t.c.id == bindparam("b_id"), or_(*(t.c.status == st for st in OPEN)))
        .values(amount_minor=bindparam("b_amount"), modified_at=now),
        [{"b_id": inv.id, "b_amount": cur.amount_minor} for inv, cur in changed],
    )
    for inv, cur in changed:
        inv.amount_minor, inv.modified_at = cur.amount_minor, now
        _committed(inv, ("amount_minor", "modified_at"))


async def set_status_many(
    s: AsyncSession, invoices: list[Invoice], new: str, now: datetime, *, only_from: str
) -> None:
    """:func:`set_status` for several invoices held by the caller (all are in
    ``only_from``): one executemany."""
    if not invoices:
        return
    t = Invoice.__table__
    await s.execute(
        update(t)
        .where(t.c.id == bindparam("b_id"), t.c.status == only_from)
        .values(status=new, modified_at=now),
        [{"b_id": inv.id} for inv in invoices],
    )
    for inv in invoices:
        inv.status, inv.modified_at = new, now
        _committed(inv, ("status", "modified_at"))


def _committed(obj: Any, keys: tuple[str, ...]) -> None:
    from sqlalchemy.orm.attributes import set_committed_value

    for key in keys:
        set_committed_value(obj, key, getattr(obj, key))


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
    items: list[ItemRow] | None,
    customer_ref: str | None = None,
    *,
    with_id: bool = True,
    amount_minor: int | None = None,
) -> dict[str, Any]:
    amount = inv.amount_minor if amount_minor is None else amount_minor
    out: dict[str, Any] = {
        "id": inv.id if with_id else None,
        "type": inv.type,
        "status": inv.status,
        "amount": from_minor(amount, inv.currency),
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


async def views(
    s: AsyncSession, invoices: list[Invoice], customer_ref: str | None = None
) -> list[dict[str, Any]]:
    """Invoices as every answer shows them: amount and lines as of now (``current``)."""
    items = await items_of(s, [i.id for i in invoices])
    now = await current_many(s, invoices, items)
    return [
        invoice_view(inv, now[inv.id].items, customer_ref, amount_minor=now[inv.id].amount_minor)
        for inv in invoices
    ]


async def invoice_detail(s: AsyncSession, env: str, invoice_id: str) -> dict[str, Any]:
    inv = await get_invoice(s, env, invoice_id)
    ref = await s.scalar(select(Customer.reference_id).where(Customer.id == inv.customer_id))
    return (await views(s, [inv], ref))[0]


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
    return await views(s, rows, customer.reference_id), int(total or 0)


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
