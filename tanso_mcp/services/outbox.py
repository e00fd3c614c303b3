"""The outbox: work a plugin hands over to be finished by whichever process runs next
(outbound webhook deliveries still pending when a process stops).

Plugins reach it through the public plugin API (``tanso_mcp.plugin.outbox_of(ctx)``),
never through this module. Exactly-once comes from the data: (plugin, key) is unique, so
the same work handed over twice is stored once, and a process claims an entry with a
conditional update of its lease, so two processes never work on it at once (an entry
whose lease ran out — its process died — is claimed again). Each call is its own unit
of work; no network call happens inside one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..db.engine import rowcount
from ..db.models import OutboxEntry
from ..plugin.api import OutboxItem

if TYPE_CHECKING:
    from ..db.engine import Database
    from .clocks import EnvironmentClocks


class DatabaseOutbox:
    """The :class:`tanso_mcp.plugin.Outbox` of an application context."""

    def __init__(self, db: Database, clocks: EnvironmentClocks):
        self.db = db
        self.clocks = clocks

    async def put(self, plugin: str, items: Mapping[str, Mapping[str, Any]]) -> int:
        if not items:
            return 0
        for _attempt in range(3):
            try:
                return await self._put(plugin, items)
            except IntegrityError:  # another process stored one of the keys meanwhile
                continue
        return await self._put(plugin, items)

    async def _put(self, plugin: str, items: Mapping[str, Mapping[str, Any]]) -> int:
        now = self.clocks.system_now()
        async with self.db.unit_of_work() as s:
            known = set(
                await s.scalars(
                    select(OutboxEntry.key).where(
                        OutboxEntry.plugin == plugin, OutboxEntry.key.in_(list(items))
                    )
                )
            )
            new = [k for k in items if k not in known]
            s.add_all(
                OutboxEntry(
                    plugin=plugin,
                    key=k,
                    payload=dict(items[k]),
                    attempts=0,
                    due_at=now,
                    created_at=now,
                )
                for k in new
            )
        return len(new)

    async def claim(
        self, plugin: str, *, limit: int = 100, lease_seconds: float = 60.0
    ) -> list[OutboxItem]:
        now = self.clocks.system_now()
        free = or_(OutboxEntry.lease_until.is_(None), OutboxEntry.lease_until < now)
        claimed: list[OutboxItem] = []
        async with self.db.unit_of_work() as s:
            rows = (
                await s.execute(
                    select(
                        OutboxEntry.id, OutboxEntry.key, OutboxEntry.payload, OutboxEntry.attempts
                    )
                    .where(OutboxEntry.plugin == plugin, OutboxEntry.due_at <= now, free)
                    .order_by(OutboxEntry.due_at, OutboxEntry.id)
                    .limit(limit)
                    # PostgreSQL: concurrent claims take different rows instead of
                    # queueing on the same ones (SQLite has one writer anyway)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                result = await s.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id == row.id, free)
                    .values(
                        lease_until=now + timedelta(seconds=lease_seconds),
                        attempts=OutboxEntry.attempts + 1,
                    )
                )
                if rowcount(result) == 1:
                    claimed.append(OutboxItem(row.id, row.key, row.payload, row.attempts + 1))
        return claimed

    async def done(self, item_id: str) -> None:
        async with self.db.unit_of_work() as s:
            await s.execute(delete(OutboxEntry).where(OutboxEntry.id == item_id))

    async def retry(self, item_id: str, *, delay_seconds: float, error: str | None = None) -> None:
        now = self.clocks.system_now()
        async with self.db.unit_of_work() as s:
            await s.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == item_id)
                .values(
                    due_at=now + timedelta(seconds=delay_seconds),
                    lease_until=None,
                    last_error=(error or "")[:500] or None,
                )
            )

    async def pending(self, plugin: str) -> int:
        async with self.db.reader() as s:
            ids = await s.scalars(select(OutboxEntry.id).where(OutboxEntry.plugin == plugin))
            return len(list(ids))
