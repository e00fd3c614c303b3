"""Time. The only module that reads the wall clock.

Live environments use real time. Each test environment has its own clock: real time
shifted by everything it was advanced by, or frozen at an instant on request; its
settings are stored on the environment row (see ``services.clocks``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


def utcnow() -> datetime:
    return datetime.now(UTC)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return utcnow()


class FrozenClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, at: datetime):
        ensure_aware(at)
        self._at = at

    def now(self) -> datetime:
        return self._at

    def set(self, at: datetime) -> None:
        ensure_aware(at)
        self._at = at


def ensure_aware(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("naive datetime: all times must be timezone-aware UTC")
    return dt


def iso(dt: datetime | None) -> str | None:
    """ISO-8601 UTC with a Z suffix and millisecond precision."""
    if dt is None:
        return None
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
