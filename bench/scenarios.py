"""The benchmark scenarios: a registry of small `Scenario` objects (see harness.py).

Two groups:
- ceilings: the bare Starlette app of `ceiling.py` (and the bare MCP SDK), served the
  way the product is served. They need nothing but this directory.
- tanso-mcp: the product itself, started as `tanso-mcp serve` on an empty SQLite
  database in a temporary directory. They are n/a, with the reason, until the product
  has what they need (the executable, the REST endpoints, the MCP admin tools).

To add a scenario, append a `Scenario(...)` to SCENARIOS (README.md shows how).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pg_databases
from harness import (
    Context,
    Measurement,
    RunConfig,
    Scenario,
    ScenarioUnavailable,
    Server,
    ServerContext,
    SetupError,
    Target,
    find_key,
    mcp_headers,
)

BENCH_DIR = Path(__file__).resolve().parent
API = "/api/v1/client"
BATCH_SIZE = 1000

# --------------------------------------------------------------------------- servers


def _ceiling_argv(app: str):
    def argv(sctx: ServerContext) -> list[str]:
        if app == "mcp" and importlib.util.find_spec("mcp") is None:
            raise ScenarioUnavailable("the `mcp` package is not installed in this Python")
        return [
            sys.executable,
            str(BENCH_DIR / "ceiling.py"),
            "--port",
            str(sctx.port),
            "--app",
            app,
        ]

    return argv


CEILING = Server(name="ceiling (bare Starlette)", argv=_ceiling_argv("bare"))
CEILING_MCP = Server(name="ceiling (bare MCP SDK)", argv=_ceiling_argv("mcp"))


def tanso_command() -> list[str]:
    """How to start the product: $BENCH_TANSO_CMD (run.py --tanso-cmd / --self-check), else
    `tanso-mcp` from this Python's environment, else from PATH."""
    override = os.environ.get("BENCH_TANSO_CMD")
    if override:
        return shlex.split(override)
    beside = Path(sys.executable).parent / "tanso-mcp"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("tanso-mcp")
    if found:
        return [found]
    raise ScenarioUnavailable(
        "tanso-mcp is not installed in this environment (pip install -e . from the repo root)"
    )


def _tanso_argv(sctx: ServerContext) -> list[str]:
    argv = [*tanso_command(), "serve", "--host", "127.0.0.1", "--port", str(sctx.port)]
    workers = int(os.environ.get("BENCH_WORKERS") or 1)
    return argv + (["--workers", str(workers)] if workers > 1 else [])


def _tanso_env(sctx: ServerContext) -> dict[str, str]:
    base = os.environ.get("BENCH_DATABASE_URL")
    if base:  # run.py --database: a fresh PostgreSQL database per scenario
        return {"TANSO_DATABASE_URL": pg_databases.fresh(base)}
    return {"TANSO_DATABASE_URL": f"sqlite+aiosqlite:///{sctx.tmpdir}/bench.db"}


def tanso_name() -> str:
    db = "PostgreSQL" if os.environ.get("BENCH_DATABASE_URL") else "SQLite"
    workers = int(os.environ.get("BENCH_WORKERS") or 1)
    return f"tanso-mcp serve ({db}{f', {workers} workers' if workers > 1 else ''})"


TANSO = Server(
    name=tanso_name(),
    argv=_tanso_argv,
    env=_tanso_env,
    ready_path="/readyz",
    startup_timeout_s=60,
)

# --------------------------------------------------------------------------- bodies

EVENT = (
    '{"eventIdempotencyKey":"%s","eventName":"api_call",'
    '"customerReferenceId":"{{ref}}","featureKey":"{{feature_key}}","usageUnits":1}'
)
SINGLE_EVENT_BODY = EVENT % "{{uid}}"


def batch_body(state: dict[str, Any]) -> str:
    """1000 events, keys `<uid>-0` … `<uid>-999` (unique per request and item)."""
    return '{"events":[' + ",".join(EVENT % f"{{{{uid}}}}-{i}" for i in range(BATCH_SIZE)) + "]}"


MCP_CHECK_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "checkEntitlement",
            "arguments": {"customerReferenceId": "{{ref}}", "featureKey": "{{feature_key}}"},
        },
    },
    separators=(",", ":"),
)

# --------------------------------------------------------------------------- checks
# check(status, parsed_json) -> None when the probe answer is what the load should repeat.


def _data(js: Any) -> Any:
    return js.get("data") if isinstance(js, dict) else None


def check_entitlement(status: int, js: Any) -> str | None:
    d = _data(js)
    if not isinstance(d, dict) or "allowed" not in d:
        return f"no data.allowed in the answer: {str(js)[:200]}"
    if d["allowed"] is not True:
        return f"entitlement denied (setup is wrong, the load would time the deny path): {d}"
    return None


def check_event(status: int, js: Any) -> str | None:
    d = _data(js)
    if not isinstance(d, dict) or not d.get("eventId"):
        return f"no data.eventId in the answer: {str(js)[:200]}"
    return None


def check_batch(status: int, js: Any) -> str | None:
    d = _data(js)
    if not isinstance(d, dict):
        return f"no data in the answer: {str(js)[:200]}"
    if d.get("accepted") != BATCH_SIZE:
        return f"expected {BATCH_SIZE} accepted, got {d.get('accepted')!r} ({d.get('errors')!r} errors)"
    return None


def check_ceiling_batch(status: int, js: Any) -> str | None:
    d = _data(js)
    if not isinstance(d, dict) or d.get("accepted") != BATCH_SIZE:
        return f"ceiling did not parse {BATCH_SIZE} events: {str(js)[:200]}"
    return None


def check_mcp(status: int, js: Any) -> str | None:
    if not isinstance(js, dict) or "result" not in js:
        return f"no JSON-RPC result: {str(js)[:300]}"
    if js["result"].get("isError"):
        return f"tool error: {str(js['result'])[:300]}"
    return None


# --------------------------------------------------------------------------- tanso setup
#
# Contract of the tanso-mcp setup hooks (what they assume about the product, and what
# they leave in ctx.state for the request templates):
#
# 1. Admin key: on its first start on an empty database the server prints its admin
#    keys once, in output lines containing `sk_test_…` and `sk_live_…`. The sk_test_ key
#    is taken from the server's output -> state["api_key"]. No key -> n/a.
# 2. Catalog, over MCP (`POST /mcp`, stateless, X-API-Key): adminCreateFeature
#    {name, key} -> feature id; adminCreatePlan {key, name, priceAmount "10.00",
#    description, intervalMonths "1", billingTiming IN_ARREARS} -> plan id;
#    adminLinkFeatureToPlan {planId, featureId, type BASE, valueJson: metered usage
#    pricing with a max_usage far above anything the load reaches}; adminUpdatePlan
#    {planId, status ACTIVE}. Ids are read from `id`/`featureId`/`planId` anywhere in the
#    tool's result. -> state["feature_key"], ["feature_id"], ["plan_id"], ["plan_key"].
#    /mcp answering 404, or an unknown tool -> n/a "needs the catalog API (…)".
# 3. Customers and subscriptions, over REST: POST /customers {customerReferenceId, email}
#    (201); POST /subscriptions {customerReferenceId, planKey, gracePeriod: 365}
#    (201, data.subscription.id). IN_ARREARS -> active at once, and the long grace period
#    keeps unpaid invoices from pausing renewals. -> state["ref"], ["subscription_id"].
#    An endpoint answering 404 -> n/a naming it.

CATALOG = (
    "the catalog API (MCP admin tools adminCreateFeature/adminCreatePlan/"
    "adminLinkFeatureToPlan/adminUpdatePlan)"
)


def tanso_admin_key(ctx: Context, timeout_s: float = 10) -> str:
    m = ctx.server.wait_for_output(r"(sk_test_[A-Za-z0-9_\-]+)", timeout_s)
    if not m:
        raise ScenarioUnavailable("the server printed no sk_test_ admin key on its first start")
    ctx.state["api_key"] = m.group(1)
    return m.group(1)


def tanso_catalog(ctx: Context) -> None:
    """One metered feature on one active monthly IN_ARREARS plan (see the contract above)."""
    feature_key, plan_key = "bench_api_calls", "bench_plan"
    feature = ctx.mcp(
        "adminCreateFeature",
        {
            "name": "Bench API calls",
            "key": feature_key,
            "description": "metered feature used by bench/",
        },
        need=CATALOG,
    )
    feature_id = find_key(feature, "featureId", "id")
    plan = ctx.mcp(
        "adminCreatePlan",
        {
            "key": plan_key,
            "name": "Bench plan",
            "priceAmount": "10.00",
            "description": "plan used by bench/",
            "intervalMonths": "1",
            "billingTiming": "IN_ARREARS",
        },
        need=CATALOG,
    )
    plan_id = find_key(plan, "planId", "id")
    if not feature_id or not plan_id:
        raise SetupError(f"no ids in the catalog answers: feature={feature!r} plan={plan!r}")
    rule = {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "api_calls",
            "price_per_unit": 0.001,
            "max_usage": 10**12,
        }
    }
    ctx.mcp(
        "adminLinkFeatureToPlan",
        {"planId": plan_id, "featureId": feature_id, "type": "BASE", "valueJson": json.dumps(rule)},
        need=CATALOG,
    )
    ctx.mcp("adminUpdatePlan", {"planId": plan_id, "status": "ACTIVE"}, need=CATALOG)
    ctx.state.update(
        feature_key=feature_key, feature_id=feature_id, plan_id=plan_id, plan_key=plan_key
    )


def tanso_subscribed_customer(ctx: Context, ref: str) -> str:
    """Create customer `ref` and subscribe it to the bench plan; return the subscription id."""
    ctx.api(
        "POST",
        f"{API}/customers",
        {"customerReferenceId": ref, "email": f"{ref}@bench.example"},
        need="POST /customers",
    )
    data = ctx.api(
        "POST",
        f"{API}/subscriptions",
        {"customerReferenceId": ref, "planKey": ctx.state["plan_key"], "gracePeriod": 365},
        need="POST /subscriptions",
    )
    sub = data.get("subscription", data) if isinstance(data, dict) else data
    sub_id = find_key(sub, "id", "subscriptionId")
    if not sub_id:
        raise SetupError(f"no subscription id in the answer: {data!r}")
    return str(sub_id)


def setup_tanso_customer(ctx: Context) -> None:
    """Key + catalog + one subscribed customer: what check/ingest/MCP scenarios need."""
    tanso_admin_key(ctx)
    tanso_catalog(ctx)
    ctx.state["ref"] = "cus_bench"
    ctx.state["subscription_id"] = tanso_subscribed_customer(ctx, "cus_bench")


def setup_ceiling_state(ctx: Context) -> None:
    """Fill the placeholders the product's bodies use, for the ceiling twins."""
    ctx.state.update(ref="cus_bench", feature_key="bench_api_calls")


# --------------------------------------------------------------------------- renewal


def setup_renewal(ctx: Context) -> None:
    tanso_admin_key(ctx)
    tanso_catalog(ctx)
    n = ctx.cfg.renewals
    ctx.state["subscription_ids"] = [
        tanso_subscribed_customer(ctx, f"cus_renew_{i:06d}") for i in range(n)
    ]


def _parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _period(ctx: Context, sub_id: str) -> tuple[datetime, datetime]:
    sub = ctx.api("GET", f"{API}/subscriptions/{sub_id}", need="GET /subscriptions/{id}")
    sub = sub.get("subscription", sub) if isinstance(sub, dict) else sub
    start, end = find_key(sub, "currentPeriodStart"), find_key(sub, "currentPeriodEnd")
    if not start or not end:
        raise SetupError(f"no currentPeriodStart/End on subscription {sub_id}: {sub!r}")
    return _parse_ts(start), _parse_ts(end)


def run_renewal(ctx: Context, cfg: RunConfig) -> Measurement:
    """Time test-clock advances that each renew every subscription exactly once.

    All subscriptions were created at the same frozen test-clock instant, so they share
    one period. Each round reads the period end, advances the clock to one second past
    it (`{"to": …}`: the call returns after every due job ran), and checks on the first
    and the last subscription that a new period began. renewals/s = subscriptions ×
    rounds / time spent in the advance calls; p50/p99 are of one advance (ms).
    """
    ids: list[str] = ctx.state["subscription_ids"]
    if not ids:
        raise SetupError("no subscriptions to renew")
    rounds = 1 if cfg.quick else max(1, cfg.reps)
    times: list[float] = []
    for r in range(rounds):
        _, end = _period(ctx, ids[0])
        to = (end + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        t0 = time.perf_counter()
        ctx.api("POST", f"{API}/test-clock/advance", {"to": to}, need="POST /test-clock/advance")
        times.append(time.perf_counter() - t0)
        for sid in (ids[0], ids[-1]):
            start, _ = _period(ctx, sid)
            if start < end:
                raise SetupError(
                    f"round {r + 1}: subscription {sid} did not renew (period starts {start})"
                )
    total = sum(times)
    ms = sorted(t * 1000 for t in times)
    return Measurement(
        throughput=len(ids) * rounds / total,
        p50_ms=statistics.median(ms),
        p99_ms=ms[-1] if len(ms) < 100 else ms[int(0.99 * len(ms)) - 1],
        runs=[{"subscriptions": len(ids), "seconds": t} for t in times],
        note=f"{len(ids)} subscriptions x {rounds} advance(s); latency = one advance",
    )


# --------------------------------------------------------------------------- registry

_JSON = {"Content-Type": "application/json"}

SCENARIOS: list[Scenario] = [
    # ---- ceilings: bare Starlette served like the product ---------------------------
    Scenario(
        name="ceiling_get",
        description="bare Starlette GET, small orjson document (the ceiling for GETs)",
        server=CEILING,
        method="GET",
        path="/ceiling/get",
        is_ceiling=True,
    ),
    Scenario(
        name="ceiling_post",
        description="bare Starlette POST, parses a one-event JSON body (ceiling for POSTs)",
        server=CEILING,
        method="POST",
        path="/ceiling/post",
        headers=_JSON,
        body=SINGLE_EVENT_BODY,
        setup=setup_ceiling_state,
        expect_status=(201,),
        is_ceiling=True,
    ),
    Scenario(
        name="ceiling_post_batch",
        description="bare Starlette POST, parses a 1000-event JSON body (ceiling for batches)",
        server=CEILING,
        method="POST",
        path="/ceiling/post",
        headers=_JSON,
        body=batch_body,
        setup=setup_ceiling_state,
        expect_status=(201,),
        check=check_ceiling_batch,
        is_ceiling=True,
        items_per_request=BATCH_SIZE,
        unit="events/s",
        connections=8,
    ),
    Scenario(
        name="ceiling_mcp",
        description="bare MCP SDK (stateless, JSON answers) no-op checkEntitlement tool",
        server=CEILING_MCP,
        method="POST",
        path="/mcp",
        headers=mcp_headers(),
        body=MCP_CHECK_BODY,
        setup=setup_ceiling_state,
        check=check_mcp,
        is_ceiling=True,
        ceiling="ceiling_post",
    ),
    # ---- tanso-mcp (n/a with the reason until the product provides what they need) ----
    Scenario(
        name="entitlement_check",
        description="REST GET /entitlements/{ref}/{featureKey}, subscribed customer, "
        "metered feature",
        server=TANSO,
        method="GET",
        path=API + "/entitlements/{{ref}}/{{feature_key}}",
        headers={"X-API-Key": "{{api_key}}"},
        setup=setup_tanso_customer,
        check=check_entitlement,
        ceiling="ceiling_get",
        target=Target(pct_of_ceiling=0.60),
        product=True,
    ),
    Scenario(
        name="ingest_single",
        description="REST POST /events, one event, unique eventIdempotencyKey, durable "
        "when acknowledged",
        server=TANSO,
        method="POST",
        path=API + "/events",
        headers={**_JSON, "X-API-Key": "{{api_key}}"},
        body=SINGLE_EVENT_BODY,
        setup=setup_tanso_customer,
        expect_status=(201,),
        check=check_event,
        ceiling="ceiling_post",
        target=Target(pct_of_ceiling=0.40),
        product=True,
    ),
    Scenario(
        name="ingest_batch",
        description="REST POST /events/batch, 1000 events per request, unique keys",
        server=TANSO,
        method="POST",
        path=API + "/events/batch",
        headers={**_JSON, "X-API-Key": "{{api_key}}"},
        body=batch_body,
        setup=setup_tanso_customer,
        expect_status=(200, 201, 207),
        check=check_batch,
        ceiling="ceiling_post_batch",
        items_per_request=BATCH_SIZE,
        unit="events/s",
        connections=8,
        target=Target(min_throughput=50_000, min_throughput_pg=100_000),
        product=True,
    ),
    Scenario(
        name="mcp_tool_call",
        description="MCP tools/call checkEntitlement over Streamable HTTP, stateless "
        "2025-11-25 (no handshake)",
        server=TANSO,
        method="POST",
        path="/mcp",
        headers=mcp_headers("{{api_key}}"),
        body=MCP_CHECK_BODY,
        setup=setup_tanso_customer,
        check=check_mcp,
        ceiling="ceiling_mcp",
        product=True,
    ),
    Scenario(
        name="renewal",
        description="subscription renewals through POST /test-clock/advance "
        "(Python-driven, timed per advance)",
        server=TANSO,
        setup=setup_renewal,
        run=run_renewal,
        unit="renewals/s",
        product=True,
    ),
]


def _more_scenarios() -> None:
    """Scenario groups kept in their own modules (imported last: they build on this one)."""
    import scenarios_stripe

    SCENARIOS.extend(scenarios_stripe.scenarios())


_more_scenarios()

BY_NAME = {s.name: s for s in SCENARIOS}
