"""API key verification with a short in-process cache (the hot paths must not read the
database to authenticate every request)."""

from __future__ import annotations

import time

from ..db.engine import Database
from ..principal import Principal
from .tenancy import hash_key, principal_for_key


class KeyResolver:
    def __init__(self, db: Database, ttl_seconds: float):
        self.db = db
        self.ttl = ttl_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def resolve(self, key: str) -> Principal | None:
        if not key.startswith(("sk_test_", "sk_live_")) or len(key) > 200:
            return None
        h = hash_key(key)
        hit = self._cache.get(h)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.db.reader() as session:
            principal = await principal_for_key(session, key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        # unknown keys are cached too (briefly), so a flood of bad keys is cheap
        self._cache[h] = (now + self.ttl, principal)
        return principal

    def invalidate(self, key_hash: str | None = None) -> None:
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)
