"""Fresh PostgreSQL databases for `run.py --database postgresql+asyncpg://…`: one per
scenario (created on the given server, dropped when the run ends), so every scenario
starts from an empty database as it does on SQLite. Each is named after the database
in the URL plus a random suffix (`…/tanso_x` → `tanso_x_1a2b3c4d5e`), so a shared server
only ever sees names derived from the one it was given."""

from __future__ import annotations

import asyncio
import atexit
import uuid

_created: list[tuple[str, str]] = []


def _admin_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(url)
        .set(drivername="postgresql", database="postgres")
        .render_as_string(hide_password=False)
    )


async def _execute(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_admin_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh(url: str) -> str:
    """Create an empty database on the server of `url`; its URL."""
    from sqlalchemy.engine import make_url

    base = make_url(url).database or "tanso_bench"
    name = f"{base[:40]}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_execute(url, f'CREATE DATABASE "{name}"'))
    if not _created:
        atexit.register(_drop_all)
    _created.append((url, name))
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _drop_all() -> None:
    for url, name in _created:
        try:
            asyncio.run(_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as exc:  # noqa: BLE001 - best effort at exit
            print(f"could not drop bench database {name}: {exc}")
