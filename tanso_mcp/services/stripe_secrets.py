"""Provider credentials at rest: Fernet-encrypted with the server's secret key.

The secret key comes from the ``secret_key`` setting, or is generated once and kept in
``system_settings`` (the first process to start wins the insert; every other process
reads the same key back). Secrets are only ever shown masked (``sk_test_…abcd``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import EnvironmentSecret, SystemSetting
from ..errors import PreconditionFailed
from .credits import insert_ignore

if TYPE_CHECKING:
    from ..bootstrap import AppContext

SECRET_KEY_SETTING = "secret_key"
API_KEY = "stripe.api_key"
WEBHOOK_SECRET = "stripe.webhook_secret"


def mask(value: str) -> str:
    """``sk_test_51Hx…abcd`` → ``sk_test_…abcd``; ``whsec_…`` keeps its prefix too."""
    parts = value.split("_")
    if parts[0] in ("sk", "rk", "pk") and len(parts) > 2:
        prefix = f"{parts[0]}_{parts[1]}_"
    elif len(parts) > 1 and len(parts[0]) <= 8:
        prefix = f"{parts[0]}_"
    else:
        prefix = ""
    return f"{prefix}…{value[-4:]}"


async def fernet(ctx: AppContext, s: AsyncSession) -> Fernet:
    cached = ctx.extras.get("fernet")
    if cached is not None:
        return cached
    key = ctx.settings.secret_key
    if not key:
        key = await s.scalar(
            select(SystemSetting.value).where(SystemSetting.name == SECRET_KEY_SETTING)
        )
    if not key:
        await insert_ignore(
            s,
            SystemSetting.__table__,
            {"name": SECRET_KEY_SETTING, "value": Fernet.generate_key().decode()},
        )
        key = await s.scalar(
            select(SystemSetting.value).where(SystemSetting.name == SECRET_KEY_SETTING)
        )
    if key is None:
        raise RuntimeError("the secret-encryption key could not be stored")
    f = Fernet(key.encode() if isinstance(key, str) else key)
    ctx.extras["fernet"] = f
    return f


async def put(
    ctx: AppContext,
    s: AsyncSession,
    env: str,
    name: str,
    value: str,
    now: datetime,
    *,
    external_id: str | None = None,
) -> EnvironmentSecret:
    f = await fernet(ctx, s)
    row = await s.get(EnvironmentSecret, (env, name))
    token = f.encrypt(value.encode()).decode()
    if row is None:
        row = EnvironmentSecret(
            environment_id=env,
            name=name,
            ciphertext=token,
            masked=mask(value),
            external_id=external_id,
            created_at=now,
            modified_at=now,
        )
        s.add(row)
    else:
        row.ciphertext = token
        row.masked = mask(value)
        row.external_id = external_id
        row.modified_at = now
    await s.flush()
    return row


async def rows(s: AsyncSession, env: str) -> dict[str, EnvironmentSecret]:
    result = await s.scalars(
        select(EnvironmentSecret)
        .where(EnvironmentSecret.environment_id == env)
        .execution_options(populate_existing=True)
    )
    return {r.name: r for r in result.all()}


async def decrypt_all(ctx: AppContext, s: AsyncSession, env: str) -> dict[str, str]:
    found = await rows(s, env)
    if not found:
        return {}
    f = await fernet(ctx, s)
    out = {}
    for name, row in found.items():
        try:
            out[name] = f.decrypt(row.ciphertext.encode()).decode()
        except InvalidToken:
            raise PreconditionFailed(
                f"the stored {name} cannot be decrypted: the server's secret_key changed; "
                "register the credential again"
            ) from None
    return out


def fingerprint(found: dict[str, EnvironmentSecret]) -> tuple:
    return tuple(sorted((n, r.modified_at.isoformat()) for n, r in found.items()))
