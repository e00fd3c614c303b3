"""SQL conditions shared by services."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import String, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY


def in_environment(column: Any, env_id: str) -> Any:
    """The tenancy guard of a statement that addresses rows by a list of keys (ids,
    subscription ids): the rows are found by the keys' index, the guard only checks them.
    Written as an expression no index serves, because SQLite (which keeps no statistics
    here) otherwise prefers an ``(environment_id, …)`` index — walking every row of the
    environment and testing the keys on each, a cost that grows with the environment
    instead of with the list."""
    return column.concat("") == env_id


def among(s: Any, column: Any, values: Iterable[Any]) -> Any:
    """``column IN (values)`` for a list of keys (ids of a batch). On PostgreSQL it is
    written ``column = ANY(:values)`` with one array parameter: the statement's text is
    the same whatever the number of keys, so the server prepares it once, and the client
    does not render and type each key as its own parameter (for the 500-key lists of a
    billing batch that rendering was about a tenth of the run's client CPU)."""
    keys = list(values)
    bind = s.bind
    if bind is not None and bind.dialect.name == "postgresql":
        # no length on the elements: a cast to VARCHAR(36)[] would cut a longer key to
        # 36 characters and match the row it starts with
        item = String() if isinstance(column.type, String) else column.type
        return column == any_(bindparam(None, keys, type_=ARRAY(item)))
    return column.in_(keys)
