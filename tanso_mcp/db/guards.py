"""SQL conditions shared by services."""

from __future__ import annotations

from typing import Any


def in_environment(column: Any, env_id: str) -> Any:
    """The tenancy guard of a statement that addresses rows by a list of keys (ids,
    subscription ids): the rows are found by the keys' index, the guard only checks them.
    Written as an expression no index serves, because SQLite (which keeps no statistics
    here) otherwise prefers an ``(environment_id, …)`` index — walking every row of the
    environment and testing the keys on each, a cost that grows with the environment
    instead of with the list."""
    return column.concat("") == env_id
