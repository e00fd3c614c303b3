"""Configuration validation and storage types."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from tanso_mcp.errors import ConfigError
from tanso_mcp.settings import load_settings


def test_defaults_are_secure(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.host == "127.0.0.1" and s.port == 8080
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.max_body_bytes == 1_048_576


@pytest.mark.parametrize(
    "var, value, named",
    [
        ("TANSO_PORT", "eighty", "port"),
        ("TANSO_PORT", "70000", "port"),
        ("TANSO_DATABASE_URL", "mysql://x", "database_url"),
        ("TANSO_LOG_LEVEL", "LOUD", "log_level"),
        ("TANSO_MAX_BODY_BYTES", "10", "max_body_bytes"),
        ("TANSO_PUBLIC_BASE_URL", "ftp://x", "public_base_url"),
    ],
)
def test_bad_environment_values_name_the_setting(monkeypatch, tmp_path, var, value, named):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert named in str(exc.value) and var in str(exc.value)


def test_toml_file_is_read_and_validated(monkeypatch, tmp_path):
    cfg = tmp_path / "conf.toml"
    cfg.write_text('port = 9999\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("TANSO_CONFIG", str(cfg))
    s = load_settings()
    assert (s.host, s.port) == ("0.0.0.0", 9999)
    monkeypatch.setenv("TANSO_PORT", "9000")  # environment wins over the file
    assert load_settings().port == 9000
    cfg.write_text('port = "x"\n')
    monkeypatch.delenv("TANSO_PORT")
    with pytest.raises(ConfigError, match="port"):
        load_settings()
    cfg.write_text("unknown_setting = 1\n")
    with pytest.raises(ConfigError, match="unknown_setting"):
        load_settings()


def test_missing_config_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TANSO_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="TANSO_CONFIG"):
        load_settings()


def test_example_config_documents_every_setting(repo_root):
    from tanso_mcp.settings import Settings

    text = (repo_root / "config.example.toml").read_text()
    for name in Settings.model_fields:
        assert f"{name} =" in text or f"# {name} =" in text, name


def test_time_ordered_ids():
    import os
    import uuid

    from tanso_mcp.db.types import new_id

    ids = [new_id() for _ in range(1000)]  # past several refills of the random buffer
    assert len(set(ids)) == 1000 and ids == sorted(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 7 and u.variant == uuid.RFC_4122
    # a forked child draws its own random bits, not the rest of its parent's buffer
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.write(write, ",".join(new_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split(",")
    os.close(read)
    mine = [new_id() for _ in range(5)]
    assert len(child) == 5 and not {c[-12:] for c in child} & {m[-12:] for m in mine}


@pytest.mark.anyio
async def test_datetimes_come_back_aware_utc_and_naive_is_rejected(ctx):
    from tanso_mcp.db.models import Account

    t = datetime(2026, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)
    async with ctx.db.unit_of_work() as s:
        s.add(Account(name="tz", created_at=t))
    async with ctx.db.reader() as s:
        got = await s.scalar(select(Account.created_at).where(Account.name == "tz"))
    assert got == t and got.tzinfo is not None
    with pytest.raises(Exception, match="naive"):
        async with ctx.db.unit_of_work() as s:
            s.add(Account(name="naive", created_at=datetime(2026, 1, 1)))


def test_sqlite_datetimes_are_stored_as_sqlalchemy_stores_them():
    """Stored datetimes are compared as text on SQLite: the product's own encoding must
    give exactly the text SQLAlchemy's DATETIME gives (databases written before it)."""
    from datetime import timedelta, timezone

    from sqlalchemy.dialects import sqlite

    from tanso_mcp.db.types import UTCDateTime

    dialect = sqlite.dialect()
    ours = UTCDateTime().bind_processor(dialect)
    theirs = sqlite.DATETIME().bind_processor(dialect)
    assert ours is not None and theirs is not None
    for t in (
        datetime(2026, 1, 15, tzinfo=UTC),
        datetime(1, 1, 1, 0, 0, 0, 5, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
    ):
        assert ours(t) == theirs(t.astimezone(UTC).replace(tzinfo=None))
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive"):
        ours(datetime(2026, 1, 1))


def test_scaled_quantities_are_exact():
    from tanso_mcp.db.scale import int_to_qty, micros_from, micros_to, qty_to_int

    assert qty_to_int(Decimal("0.00005")) == 1  # half-up at 4 dp
    assert int_to_qty(qty_to_int(Decimal("123456789.1234"))) == Decimal("123456789.1234")
    assert micros_to(micros_from(Decimal("0.0125"))) == Decimal("0.012500")


@pytest.mark.anyio
async def test_a_key_list_matches_whole_keys_only(ctx):
    """``among`` (an array parameter on PostgreSQL, IN on SQLite) matches exactly what
    IN matches: no key cut to the column's length, nothing for an empty list."""
    from tanso_mcp.db.guards import among
    from tanso_mcp.db.models import Account

    t = datetime(2026, 5, 1, tzinfo=UTC)
    async with ctx.db.unit_of_work() as s:
        a, b = Account(name="among-a", created_at=t), Account(name="among-b", created_at=t)
        s.add_all([a, b])
    async with ctx.db.reader() as s:

        async def names(keys: list[str]) -> list[str]:
            q = select(Account.name).where(among(s, Account.id, keys)).order_by(Account.name)
            return list(await s.scalars(q))

        assert await names([a.id, b.id, "nope"]) == ["among-a", "among-b"]
        assert await names([a.id + "XYZ"]) == []
        assert await names([]) == []
