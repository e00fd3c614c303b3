"""Per-environment time: live environments follow the system clock; a test environment
has a frozen clock stored on its row that only an explicit advance moves."""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..clock import Clock, ensure_aware
from ..db.engine import Database
from ..db.models import Environment


class EnvironmentClocks:
    def __init__(self, db: Database, system: Clock, ttl_seconds: float = 5.0):
        self.db = db
        self.system = system
        self.ttl = ttl_seconds
        self._test: dict[str, tuple[float, datetime]] = {}

    def system_now(self) -> datetime:
        return self.system.now()

    async def now(self, environment_id: str, mode: str | None = None) -> datetime:
        if mode == "live":
            return self.system.now()
        hit = self._test.get(environment_id)
        mono = time.monotonic()
        if hit is not None and hit[0] > mono:
            return hit[1]
        async with self.db.reader() as session:
            row = (
                await session.execute(
                    select(Environment.mode, Environment.clock_now).where(
                        Environment.id == environment_id
                    )
                )
            ).first()
        if row is None or row[0] == "live" or row[1] is None:
            return self.system.now()
        self._test[environment_id] = (mono + self.ttl, row[1])
        return row[1]

    async def set_test_clock(self, session: AsyncSession, environment_id: str, at: datetime):
        """Persist a test clock value inside the caller's transaction; call `remember`
        after the commit so this process sees it at once."""
        ensure_aware(at)
        await session.execute(
            update(Environment).where(Environment.id == environment_id).values(clock_now=at)
        )

    def remember(self, environment_id: str, at: datetime) -> None:
        self._test[environment_id] = (time.monotonic() + self.ttl, at)

    def forget(self, environment_id: str | None = None) -> None:
        if environment_id is None:
            self._test.clear()
        else:
            self._test.pop(environment_id, None)
