"""An ingest process for tests/test_metering_concurrency.py: its own application context
(its own group-commit writer and cache) on the database given on the command line,
firing its events concurrently at an agreed wall-clock time so that all processes race
on the same customer, feature, counters, credit pool and idempotency keys.

    python -m tests.metering_worker <database url> <api key> <start at> <feature> <key>...

Prints one JSON line: {"<key>": "accepted" | "duplicate" | "<error code>", ...}."""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def main(url: str, api_key: str, start_at: float, feature: str, keys: list[str]) -> None:
    from tanso_mcp.bootstrap import build_context
    from tanso_mcp.errors import DuplicateEvent, TansoError
    from tanso_mcp.services.metering import ingest_event
    from tanso_mcp.settings import Settings

    ctx = build_context(Settings(database_url=url, key_cache_seconds=60, jobs_enabled=False))
    principal = await ctx.keys.resolve(api_key)
    assert principal is not None
    await ctx.now(principal)  # warm the clock cache before the start signal
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def one(key: str) -> tuple[str, str]:
        try:
            await ingest_event(
                ctx,
                principal,
                {
                    "eventIdempotencyKey": key,
                    "eventName": "race",
                    "customerReferenceId": "cus_1",
                    "featureKey": feature,
                    "usageUnits": 1,
                },
            )
            return key, "accepted"
        except DuplicateEvent:
            return key, "duplicate"
        except TansoError as exc:
            return key, exc.code

    results = dict(await asyncio.gather(*(one(k) for k in keys)))
    await ctx.close()
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5:]))
