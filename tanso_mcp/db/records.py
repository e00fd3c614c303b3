"""Read-only records: a model's columns as plain rows.

``select(*record_of(Model))`` returns rows that read like the model's instances
(``row.balance_q``, ``row.metadata_``: the attribute names, the same column types) but
are not tracked by the session. A set-based job that reads thousands of rows only to
compute with them and writes back with Core statements skips the ORM's per-instance
bookkeeping that way (identity map, loaded state, expiry at commit): about half of the
cost of loading each row.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Row, inspect


@cache
def record_of(model: type) -> tuple[Any, ...]:
    """The model's column attributes, in mapping order, to select as a record."""
    attrs: Any = inspect(model).column_attrs
    for attr in attrs:
        if hasattr(Row, attr.key):  # row.count would be the tuple method, not the column
            raise TypeError(f"{model.__name__}.{attr.key} cannot be read from a record")
    return tuple(getattr(model, attr.key) for attr in attrs)
