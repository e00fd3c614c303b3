"""`tanso-mcp` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from .errors import ConfigError, TansoError


def _settings(**overrides: Any):
    from .settings import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _with_ctx(settings, fn):
    from .bootstrap import build_context

    ctx = build_context(settings)
    try:
        await ctx.migrate()
        return await fn(ctx)
    finally:
        await ctx.close()


def _print_keys(keys, out=sys.stdout) -> None:
    print("", file=out)
    print("  Default account created. These API keys are shown ONCE; store them now:", file=out)
    for k in keys:
        print(f"    {k.mode:<4} {k.role:<6} {k.key}", file=out)
    print("", file=out, flush=True)


def cmd_serve(args) -> int:
    import uvicorn

    from .db.startup import claim_sqlite_server, startup_lock
    from .services.tenancy import ensure_default_account

    settings = _settings(host=args.host, port=args.port)
    _configure_logging(settings.log_level)
    workers = args.workers or 1
    if workers < 1:
        raise ConfigError("--workers: must be at least 1")
    if workers > 1 and settings.database_url.startswith("sqlite"):
        raise ConfigError(
            "--workers: SQLite is served by one process; use PostgreSQL "
            "(TANSO_DATABASE_URL=postgresql+asyncpg://…) for several workers"
        )
    # a lock held (by its open descriptor) for the life of the process: a second server
    # on the same SQLite file is refused
    claim_sqlite_server(settings.database_url)

    async def setup(ctx):
        # processes started together create the default account once
        async with startup_lock(ctx.db.engine), ctx.db.unit_of_work() as s:
            return await ensure_default_account(s, ctx.clocks.system_now())

    keys = asyncio.run(_with_ctx(settings, setup))
    if keys:
        _print_keys(keys)
    print(
        f"tanso-mcp serving on http://{settings.host}:{settings.port} "
        f"(REST /api/v1/client, MCP /mcp)" + (f" with {workers} workers" if workers > 1 else ""),
        flush=True,
    )
    common = dict(
        host=settings.host,
        port=settings.port,
        # uvloop + httptools: twice the throughput of the plain loop, and no per-request
        # stall with several workers (the plain loop's sockets lack TCP_NODELAY)
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level.lower(),
        lifespan="on",
    )
    if workers > 1:
        # each worker process builds its own context (writer, caches, change feed) from
        # the same settings; the CLI's --host/--port only choose where uvicorn binds
        uvicorn.run("tanso_mcp.web.app:worker_app", factory=True, workers=workers, **common)
        return 0
    from .bootstrap import build_context
    from .web.app import create_app
    from .web.hotpath import tune_gc

    # a fresh context: database connections must belong to uvicorn's event loop
    ctx = build_context(settings)
    app = create_app(ctx, run_jobs=settings.jobs_enabled)
    tune_gc()
    uvicorn.run(app, **common)
    return 0


def cmd_stdio(args) -> int:
    """MCP over stdio for desktop clients; the key comes from TANSO_API_KEY."""
    from .bootstrap import build_context
    from .tools.registry import all_handlers
    from .tools.server import build_mcp_server

    settings = _settings()
    # stdout carries the protocol: logs go to stderr only
    _configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    if not settings.api_key:
        raise ConfigError("api_key (TANSO_API_KEY): set the API key the stdio server acts with")

    async def run() -> int:
        ctx = build_context(settings)
        try:
            await ctx.migrate()
            principal = await ctx.keys.resolve(settings.api_key)
            if principal is None:
                raise ConfigError("api_key (TANSO_API_KEY): unknown or revoked API key")
            server = build_mcp_server(
                ctx,
                all_handlers(),
                stdio_principal=principal,
                tool_groups=settings.mcp_tool_groups,
            )
            await server.run_stdio_async()
        finally:
            await ctx.close()
        return 0

    return asyncio.run(run())


def cmd_migrate(args) -> int:
    from .db.migrate import current_revision

    settings = _settings()
    _configure_logging(settings.log_level)

    async def show(ctx):
        return await current_revision(ctx.db.engine)

    rev = asyncio.run(_with_ctx(settings, show))
    print(f"database at revision {rev}")
    return 0


def cmd_keys(args) -> int:
    from .services import tenancy

    settings = _settings()

    async def run(ctx):
        now = ctx.clocks.system_now()
        if args.keys_cmd == "create":
            async with ctx.db.unit_of_work() as s:
                env = await tenancy.get_environment(s, args.account, args.mode)
                issued = await tenancy.create_api_key(
                    s, env, args.role, now, name=args.name, account_name=args.account
                )
            print(f"id:   {issued.id}")
            print(f"key:  {issued.key}")
            print("This key is shown once; store it now.")
        elif args.keys_cmd == "list":
            async with ctx.db.reader() as s:
                rows = await tenancy.list_api_keys(s)
            for r in rows:
                status = "revoked" if r["revokedAt"] else "active"
                print(
                    f"{r['id']}  {r['account']:<12} {r['mode']:<4} {r['role']:<6} "
                    f"{r['prefix']:<16} {status}  {r['name'] or ''}"
                )
        elif args.keys_cmd == "revoke":
            async with ctx.db.unit_of_work() as s:
                await tenancy.revoke_api_key(s, args.id, now)
            if ctx.db.dialect == "postgresql":
                # running servers drop their cached keys at once (not after key_cache_seconds)
                from .db.changefeed import Change, announce_once

                await announce_once(ctx.db.url, Change("keys"))
            print(f"revoked {args.id}")
        return 0

    return asyncio.run(_with_ctx(settings, run))


def cmd_jobs(args) -> int:
    from .services.jobs import run_all_due

    settings = _settings()
    _configure_logging(settings.log_level)
    ran = asyncio.run(_with_ctx(settings, run_all_due))
    print(f"ran {ran} due job item(s)")
    return 0


def cmd_plugins(args) -> int:
    """List the payment providers and plugin hooks this installation has."""
    from .plugin import build_plugins

    info = build_plugins().describe()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print("Payment providers:")
    for p in info["providers"]:
        caps = ", ".join(p["capabilities"])
        print(f"  {p['name']:<12} {p['title']}  [{caps}]  (plugin {p['plugin']})")
    print("Plugins:")
    for p in info["plugins"]:
        origin = "built-in" if p["builtin"] else (p["distribution"] or "registered in code")
        desc = (p["info"] or {}).get("description", "")
        print(f"  {p['name']:<20} {origin}{'  - ' + desc if desc else ''}")
    print("Hooks:")
    for h in info["hooks"]:
        impls = ", ".join(h["implementations"]) or "-"
        print(f"  {h['name']:<30} {h['summary']}")
        print(f"  {'':<30} implemented by: {impls}")
    return 0


def cmd_accounts(args) -> int:
    from .services import tenancy

    settings = _settings()

    async def run(ctx):
        async with ctx.db.unit_of_work() as s:
            _acct, envs = await tenancy.create_account(s, args.name, ctx.clocks.system_now())
            keys = [
                await tenancy.create_api_key(
                    s,
                    envs[m],
                    "admin",
                    ctx.clocks.system_now(),
                    name="initial admin key",
                    account_name=args.name,
                )
                for m in ("test", "live")
            ]
        print(json.dumps({"account": args.name, "keys": {k.mode: k.key for k in keys}}))
        return 0

    return asyncio.run(_with_ctx(settings, run))


def cmd_report(args) -> int:
    from pathlib import Path

    from sqlalchemy import select

    from .analytics_report import gather, render
    from .db.models import Environment
    from .domain.periods import parse_datetime
    from .services import tenancy

    settings = _settings()
    start = parse_datetime(args.from_, "from") if args.from_ else None
    end = parse_datetime(args.to, "to") if args.to else None

    async def run(ctx):
        async with ctx.db.reader() as s:
            if args.environment in ("test", "live"):
                env = await tenancy.get_environment(s, args.account, args.environment)
            else:
                env = await s.scalar(select(Environment).where(Environment.id == args.environment))
                if env is None:
                    raise TansoError(f"no environment {args.environment!r}")
        return render(await gather(ctx, env.id, env.mode, start, end))

    document = asyncio.run(_with_ctx(settings, run))
    Path(args.out).write_text(document, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tanso-mcp", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="serve REST + MCP + webhooks + jobs")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, help="worker processes (PostgreSQL only; default 1)")
    s.set_defaults(fn=cmd_serve)

    sub.add_parser("stdio", help="MCP over stdio (key from TANSO_API_KEY)").set_defaults(
        fn=cmd_stdio
    )
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="create a key (printed once)")
    kc.add_argument("--role", choices=["admin", "client", "read"], required=True)
    kc.add_argument("--mode", choices=["test", "live"], required=True)
    kc.add_argument("--account", default="default")
    kc.add_argument("--name")
    ksub.add_parser("list", help="list keys (never the secrets)")
    kr = ksub.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("id")
    k.set_defaults(fn=cmd_keys)

    a = sub.add_parser("accounts", help="manage accounts (tenants)")
    asub = a.add_subparsers(dest="accounts_cmd", required=True)
    ac = asub.add_parser("create", help="create an account with test and live environments")
    ac.add_argument("name")
    a.set_defaults(fn=cmd_accounts)

    pl = sub.add_parser("plugins", help="list payment providers and plugin hooks")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(fn=cmd_plugins)

    r = sub.add_parser("report", help="write a self-contained HTML report")
    rsub = r.add_subparsers(dest="report_cmd", required=True)
    rm = rsub.add_parser("margins", help="revenue, cost and margins (default: this month)")
    rm.add_argument("--from", dest="from_", help="window start, ISO 8601 on a whole hour")
    rm.add_argument("--to", help="window end (excluded), ISO 8601 on a whole hour")
    rm.add_argument(
        "--environment", default="live", help="test, live (of --account) or an environment id"
    )
    rm.add_argument("--account", default="default")
    rm.add_argument("--out", required=True, help="the HTML file to write")
    r.set_defaults(fn=cmd_report)

    j = sub.add_parser("jobs", help="background jobs")
    jsub = j.add_subparsers(dest="jobs_cmd", required=True)
    jsub.add_parser("run", help="run every due job once and exit")
    j.set_defaults(fn=cmd_jobs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"tanso-mcp: {exc}", file=sys.stderr)
        return 2
    except TansoError as exc:
        print(f"tanso-mcp: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
