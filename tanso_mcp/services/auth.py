"""API key verification with a short in-process cache (the hot paths must not read the
database to authenticate every request)."""

from __future__ import annotations

import asyncio
import time

from ..db.engine import Database
from ..principal import Principal
from .tenancy import hash_key, principal_for_key


class KeyResolver:
    def __init__(self, db: Database, ttl_seconds: float):
        self.db = db
        self.ttl = ttl_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._loading: dict[str, asyncio.Future] = {}
        # bumped by every invalidation: a read that started before one is not cached
        self._generation = 0

    async def resolve(self, key: str) -> Principal | None:
        if not key.startswith(("sk_test_", "sk_live_")) or len(key) > 200:
            return None
        h = hash_key(key)
        hit = self._cache.get(h)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        # single flight: when the entry expires under load, every request in flight
        # misses at once; one database read answers them all
        pending = self._loading.get(h)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled
                # the reading request was cancelled: read here instead
        pending = self._loading[h] = asyncio.get_running_loop().create_future()
        generation = self._generation
        try:
            async with self.db.reader() as session:
                principal = await principal_for_key(session, key)
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: the joiners re-raise it themselves
            raise
        except BaseException:
            pending.cancel()
            raise
        finally:
            if self._loading.get(h) is pending:
                del self._loading[h]
        pending.set_result(principal)
        if generation == self._generation:  # else it may predate a revocation
            if len(self._cache) > 10_000:
                self._cache.clear()
            # unknown keys are cached too (briefly), so a flood of bad keys is cheap
            self._cache[h] = (now + self.ttl, principal)
        return principal

    def invalidate(self, key_hash: str | None = None) -> None:
        # a read in flight may predate the change: later requests do not join it and
        # its answer is not cached
        self._generation += 1
        if key_hash is None:
            self._cache.clear()
            self._loading.clear()
        else:
            self._cache.pop(key_hash, None)
            self._loading.pop(key_hash, None)
