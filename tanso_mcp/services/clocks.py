"""Per-environment time.

A live environment follows the system clock. A test environment's clock runs with real
time shifted by everything it was advanced by: it reads ``system now + offset``, so an
application sending real timestamps works against it as it would against live. It can be
frozen, for scripted tests that need exact instants: it then reads ``clock_now`` until
advanced or unfrozen. The row always holds both values coherently (``clock_now`` is the
instant at the last change, ``clock_offset_us`` its distance from real time then).

The per-process cache keeps the *offset* of a running clock (never a computed instant),
so a cached running clock keeps running; only a change made by another process (an
advance, a freeze) takes up to ``ttl_seconds`` to be seen here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..clock import Clock, ensure_aware
from ..db.engine import Database
from ..db.models import Environment

__all__ = ["ClockState", "EnvironmentClocks", "micros"]


def micros(delta: timedelta) -> int:
    """A duration as whole microseconds (exact integer arithmetic, no float)."""
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class ClockState:
    frozen: bool
    frozen_at: datetime | None
    offset_us: int

    def now(self, system_now: datetime) -> datetime:
        if self.frozen and self.frozen_at is not None:
            return self.frozen_at
        return system_now + timedelta(microseconds=self.offset_us)


_LIVE = ClockState(frozen=False, frozen_at=None, offset_us=0)


class EnvironmentClocks:
    def __init__(self, db: Database, system: Clock, ttl_seconds: float = 5.0):
        self.db = db
        self.system = system
        self.ttl = ttl_seconds
        self._test: dict[str, tuple[float, ClockState]] = {}

    def system_now(self) -> datetime:
        return self.system.now()

    async def state(self, environment_id: str, mode: str | None = None) -> ClockState:
        """The environment's clock settings (cached for ``ttl_seconds``)."""
        if mode == "live":
            return _LIVE
        hit = self._test.get(environment_id)
        mono = time.monotonic()
        if hit is not None and hit[0] > mono:
            return hit[1]
        async with self.db.reader() as session:
            row = (
                await session.execute(
                    select(
                        Environment.mode,
                        Environment.clock_now,
                        Environment.clock_frozen,
                        Environment.clock_offset_us,
                    ).where(Environment.id == environment_id)
                )
            ).first()
        if row is None or row[0] == "live":
            return _LIVE
        state = ClockState(bool(row[2]) and row[1] is not None, row[1], int(row[3] or 0))
        self._test[environment_id] = (mono + self.ttl, state)
        return state

    async def now(self, environment_id: str, mode: str | None = None) -> datetime:
        return (await self.state(environment_id, mode)).now(self.system.now())

    async def set_test_clock(
        self,
        session: AsyncSession,
        environment_id: str,
        at: datetime,
        *,
        frozen: bool | None = None,
    ) -> None:
        """Make the clock read ``at`` from now on, inside the caller's transaction: a
        frozen clock stands at ``at``, a running one runs on from it. ``frozen`` changes
        the mode (None keeps it). Call ``remember`` after the commit so this process
        sees the change at once."""
        ensure_aware(at)
        values: dict = {
            "clock_now": at,
            "clock_offset_us": micros(at - self.system.now()),
        }
        if frozen is not None:
            values["clock_frozen"] = frozen
        await session.execute(
            update(Environment).where(Environment.id == environment_id).values(**values)
        )

    def remember(self, environment_id: str, at: datetime, *, frozen: bool | None = None) -> None:
        """After a committed ``set_test_clock``: serve the new value from the cache."""
        hit = self._test.get(environment_id)
        if frozen is None:
            if hit is None:  # mode unknown here: read it back on the next call
                return
            frozen = hit[1].frozen
        state = ClockState(frozen, at, micros(at - self.system.now()))
        self._test[environment_id] = (time.monotonic() + self.ttl, state)

    def forget(self, environment_id: str | None = None) -> None:
        if environment_id is None:
            self._test.clear()
        else:
            self._test.pop(environment_id, None)
