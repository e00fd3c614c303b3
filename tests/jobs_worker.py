"""A job-runner process for tests/test_billing_concurrency.py: like `tanso-mcp jobs run`,
against the database given on the command line, started at an agreed wall-clock time so
that all workers hit the same due items together. ``--no-lease`` disables the
best-effort job leases, so only the database guards (conditional updates and unique
indexes) stand between the workers."""

from __future__ import annotations

import asyncio
import logging
import sys
import time


async def main(url: str, start_at: float, no_lease: bool) -> None:
    from tanso_mcp.bootstrap import build_context
    from tanso_mcp.services import jobs
    from tanso_mcp.settings import Settings

    failures: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                failures.append(record.getMessage())

    logging.getLogger("tanso_mcp").addHandler(Catch())
    ctx = build_context(Settings(database_url=url, key_cache_seconds=0, jobs_enabled=False))
    if no_lease:

        async def always(*_a, **_k):
            return True

        async def nothing(*_a, **_k):
            return None

        jobs.try_lease = always
        jobs.release_lease = nothing
    # warm the connection pool before the start signal
    async with ctx.db.reader() as s:
        from sqlalchemy import text

        await s.execute(text("SELECT 1"))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    ran = 0
    for _ in range(4):
        ran += await jobs.run_all_due(ctx)
    await ctx.close()
    print(f"ran={ran} failures={len(failures)}")
    for f in failures:
        print(f"FAILURE {f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), "--no-lease" in sys.argv))
