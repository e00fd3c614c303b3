"""Start-up serialisation: several processes started at once on one database take turns
migrating it (and creating the default account), so none of them trips over another's
half-made schema.

PostgreSQL: a session-level advisory lock held on a dedicated connection for the whole
start-up section. SQLite: an exclusive ``flock`` on a file beside the database (SQLite's
own locks cannot cover a section that spans several transactions).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import ConfigError

# an arbitrary constant identifying "tanso-mcp start-up" among advisory locks
_ADVISORY_KEY = 0x7A4E50


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory)."""
    u = make_url(url)
    if not u.drivername.startswith("sqlite"):
        return None
    if not u.database or u.database == ":memory:":
        return None
    return Path(u.database).resolve()


@contextlib.asynccontextmanager
async def startup_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold the start-up lock for the duration of the block (waits for other holders)."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_KEY})
            await conn.commit()
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
                await conn.commit()
        return
    path = sqlite_path(str(engine.url))
    if path is None:
        yield
        return
    fd = os.open(f"{path}.startup.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class AlreadyServing(ConfigError):
    """A second server on a SQLite database that is already being served."""


def claim_sqlite_server(url: str) -> int | None:
    """SQLite is served by one process by design (its in-process caches are kept fresh
    by that process's own writes only). Take an exclusive, non-blocking lock on a file
    beside the database for the life of the process; a second server on the same file
    is refused. Returns the lock's file descriptor (keep it open), None off SQLite."""
    path = sqlite_path(url)
    if path is None:
        return None
    fd = os.open(f"{path}.serve.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyServing(
            f"another tanso-mcp server is already serving the SQLite database {path}; "
            "SQLite is served by one process (use PostgreSQL, TANSO_DATABASE_URL="
            "postgresql+asyncpg://…, to run several)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
