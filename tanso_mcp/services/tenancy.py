"""Accounts, environments and API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Account, ApiKey, Environment
from ..errors import Conflict, InvalidRequest, NotFound
from ..principal import Mode, Principal, Role

ROLES = ("admin", "client", "read")
MODES = ("test", "live")


def hash_key(key: str) -> str:
    # API keys carry 190+ bits of randomness, so a fast hash is as strong as a slow one
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key(mode: str) -> str:
    return f"sk_{mode}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class IssuedKey:
    id: str
    key: str  # shown once
    role: str
    mode: str
    account: str


async def create_account(
    session: AsyncSession, name: str, now: datetime
) -> tuple[Account, dict[str, Environment]]:
    if (await session.scalar(select(Account.id).where(Account.name == name))) is not None:
        raise Conflict(f"account {name!r} already exists", field="name")
    account = Account(name=name, created_at=now)
    session.add(account)
    await session.flush()
    envs = {}
    for mode in MODES:
        env = Environment(
            account_id=account.id,
            mode=mode,
            clock_now=now if mode == "test" else None,
            payment_provider="native",
            stripe_mode="NONE",
            currency="USD",
            settings={},
            created_at=now,
        )
        session.add(env)
        envs[mode] = env
    await session.flush()
    return account, envs


async def get_environment(session: AsyncSession, account_name: str, mode: str) -> Environment:
    if mode not in MODES:
        raise InvalidRequest("mode must be test or live", field="mode")
    env = await session.scalar(
        select(Environment)
        .join(Account, Account.id == Environment.account_id)
        .where(Account.name == account_name, Environment.mode == mode)
    )
    if env is None:
        raise NotFound(f"account {account_name!r} not found", field="account")
    return env


async def create_api_key(
    session: AsyncSession,
    env: Environment,
    role: str,
    now: datetime,
    name: str | None = None,
    account_name: str = "",
) -> IssuedKey:
    if role not in ROLES:
        raise InvalidRequest("role must be admin, client or read", field="role")
    key = generate_key(env.mode)
    row = ApiKey(
        environment_id=env.id,
        role=role,
        name=name,
        key_hash=hash_key(key),
        key_prefix=key[:12],
        created_at=now,
    )
    session.add(row)
    await session.flush()
    return IssuedKey(id=row.id, key=key, role=role, mode=env.mode, account=account_name)


async def list_api_keys(session: AsyncSession) -> list[dict]:
    rows = await session.execute(
        select(ApiKey, Environment.mode, Account.name)
        .join(Environment, Environment.id == ApiKey.environment_id)
        .join(Account, Account.id == Environment.account_id)
        .order_by(ApiKey.created_at)
    )
    return [
        {
            "id": k.id,
            "account": acct,
            "mode": mode,
            "role": k.role,
            "prefix": k.key_prefix + "…",
            "name": k.name,
            "createdAt": k.created_at,
            "revokedAt": k.revoked_at,
        }
        for k, mode, acct in rows
    ]


async def revoke_api_key(session: AsyncSession, key_id: str, now: datetime) -> str:
    """Returns the revoked key's hash (for cache invalidation)."""
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found", field="id")
    if row.revoked_at is None:
        await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=now))
    return row.key_hash


async def principal_for_key(session: AsyncSession, key: str) -> Principal | None:
    row = (
        await session.execute(
            select(
                ApiKey.id,
                ApiKey.role,
                ApiKey.revoked_at,
                Environment.id,
                Environment.mode,
                Environment.account_id,
            )
            .join(Environment, Environment.id == ApiKey.environment_id)
            .where(ApiKey.key_hash == hash_key(key))
        )
    ).first()
    if row is None or row[2] is not None:
        return None
    key_id, role, _revoked, env_id, mode, account_id = row
    # the columns hold only the words create_account and create_api_key validated
    return Principal(
        account_id=account_id,
        environment_id=env_id,
        mode=cast(Mode, mode),
        role=cast(Role, role),
        key_id=key_id,
    )


async def ensure_default_account(session: AsyncSession, now: datetime) -> list[IssuedKey]:
    """On an empty database: create the `default` account and one admin key per
    environment. Returns the keys (to print once), or [] when accounts already exist."""
    if (await session.scalar(select(Account.id).limit(1))) is not None:
        return []
    _account, envs = await create_account(session, "default", now)
    return [
        await create_api_key(
            session, envs[m], "admin", now, name="initial admin key", account_name="default"
        )
        for m in MODES
    ]
