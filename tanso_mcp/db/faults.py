"""Which failures mean "the database cannot be reached or used right now".

Such a failure is not the client's fault and not a bug: the request did nothing and may
be sent again once the database is back. Every transport answers it the same way (REST
503 ``unavailable`` with ``Retry-After``, MCP error ``unavailable``), so the decision is
made here, once, from the exception alone:

- the connection was refused, reset or lost, or the server is shutting down or starting
  (PostgreSQL SQLSTATE classes 08 and 57P, asyncpg's connection errors, ``OSError``);
- no pooled connection became free in time (SQLAlchemy's pool ``TimeoutError``);
- SQLite stayed busy or locked beyond its timeout, or could not open its file;
- a serialization failure or deadlock that reached the transport (its retries, if any,
  are exhausted; PostgreSQL SQLSTATE 40001, 40P01); too many connections (53300).
"""

from __future__ import annotations

import asyncio
import sqlite3

from sqlalchemy import exc as sa_exc

_TRANSIENT_STATES = {"40001", "40P01", "53300", "57P01", "57P02", "57P03", "55P03"}
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o error")
_MESSAGES = (
    "connection was closed",
    "connection is closed",
    "connection refused",
    "connection reset",
    "connection lost",
    "cannot connect",
    "the database system is",
    "terminating connection",
    "server closed the connection",
    "underlying connection is closed",
)


def _chain(exc: BaseException):
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend((e.__cause__, e.__context__, getattr(e, "orig", None)))


class ConnectionLost(Exception):
    """Raised where the connection is known to be gone, whatever the driver raised (a
    connection cut in the middle of a ``COPY`` may surface as a protocol error)."""


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a database fault a retry can cure."""
    for e in _chain(exc):
        if isinstance(e, ConnectionLost):
            return True
        if isinstance(e, sa_exc.TimeoutError):  # pool exhausted
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, OSError | asyncio.TimeoutError):
            return True
        if isinstance(e, sqlite3.OperationalError):
            text = str(e).lower()
            if any(m in text for m in _SQLITE_TRANSIENT):
                return True
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and (state.startswith("08") or state in _TRANSIENT_STATES):
            return True
        module = type(e).__module__ or ""
        if module.startswith("asyncpg"):
            name = type(e).__name__
            if "Connection" in name or name in ("InterfaceError", "InternalClientError"):
                text = str(e).lower()
                if "Connection" in name or any(m in text for m in _MESSAGES):
                    return True
        if isinstance(e, sa_exc.InterfaceError | sa_exc.OperationalError):
            text = str(e).lower()
            if any(m in text for m in _MESSAGES + _SQLITE_TRANSIENT):
                return True
    return False
