"""An in-memory stand-in for `tanso-mcp serve`, to check the harness itself.

NOT the product and NOT a benchmark of anything: it keeps everything in dicts and
answers just enough of the product's contract (the one documented in scenarios.py) for
every tanso-mcp scenario to run end to end. Use it after changing the harness:

    python bench/run.py --quick --self-check

which starts this file instead of `tanso-mcp` and labels the rows "[self-check]".

    python bench/selfcheck_server.py serve --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

API = "/api/v1/client"
TEST_KEY = "sk_test_" + secrets.token_hex(16)
LIVE_KEY = "sk_live_" + secrets.token_hex(16)

features: dict[str, dict] = {}
plans: dict[str, dict] = {}
customers: dict[str, dict] = {}
subscriptions: dict[str, dict] = {}
event_keys: set[str] = set()
clock = {"now": datetime.now(UTC).replace(microsecond=0)}


def j(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def ok(data, status: int = 200) -> Response:
    return j({"success": True, "data": data}, status)


def err(code: str, message: str, status: int) -> Response:
    return j({"success": False, "error": {"code": code, "message": message}}, status)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def add_month(dt: datetime) -> datetime:
    y, m = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
    return dt.replace(year=y, month=m, day=min(dt.day, calendar.monthrange(y, m)[1]))


def authed(request: Request) -> bool:
    return request.headers.get("x-api-key") == TEST_KEY


async def health(request: Request) -> Response:
    return j({"status": "ok"})


async def create_customer(request: Request) -> Response:
    if not authed(request):
        return err("unauthorized", "bad key", 401)
    body = orjson.loads(await request.body())
    ref = body["customerReferenceId"]
    if ref in customers:
        return err("conflict", "duplicate customer", 409)
    customers[ref] = {"customerReferenceId": ref, "email": body.get("email")}
    return ok(customers[ref], 201)


async def create_subscription(request: Request) -> Response:
    if not authed(request):
        return err("unauthorized", "bad key", 401)
    body = orjson.loads(await request.body())
    plan = next((p for p in plans.values() if p["key"] == body.get("planKey")), None)
    if plan is None or plan["status"] != "ACTIVE":
        return err("invalid_request", "planKey: no such active plan", 400)
    sid = str(uuid.uuid4())
    start = clock["now"]
    subscriptions[sid] = {
        "id": sid,
        "status": "active",
        "planId": plan["id"],
        "customerReferenceId": body["customerReferenceId"],
        "start": start,
        "end": add_month(start),
    }
    return ok({"subscription": view(subscriptions[sid])}, 201)


def view(sub: dict) -> dict:
    return {
        "id": sub["id"],
        "status": sub["status"],
        "planId": sub["planId"],
        "customerReferenceId": sub["customerReferenceId"],
        "currentPeriodStart": iso(sub["start"]),
        "currentPeriodEnd": iso(sub["end"]),
    }


async def get_subscription(request: Request) -> Response:
    sub = subscriptions.get(request.path_params["sid"])
    return ok(view(sub)) if sub else err("not_found", "subscription", 404)


async def entitlement(request: Request) -> Response:
    if not authed(request):
        return err("unauthorized", "bad key", 401)
    ref, fk = request.path_params["ref"], request.path_params["fk"]
    allowed = ref in customers and fk in features
    return ok(
        {
            "customerReferenceId": ref,
            "featureKey": fk,
            "allowed": allowed,
            "isAllowed": allowed,
            "usage": {"used": 0, "limit": 10**12},
        }
    )


def ingest_one(ev: dict) -> tuple[str, str | None]:
    key = ev.get("eventIdempotencyKey") or str(uuid.uuid4())
    if key in event_keys:
        return "duplicate", None
    event_keys.add(key)
    return "accepted", str(uuid.uuid4())


async def events(request: Request) -> Response:
    if not authed(request):
        return err("unauthorized", "bad key", 401)
    status, eid = ingest_one(orjson.loads(await request.body()))
    if status == "duplicate":
        return err("duplicate_event", "duplicate", 409)
    return ok(
        {
            "eventId": eid,
            "usageLimitExceeded": False,
            "creditsDeducted": 0,
            "overageUnits": 0,
            "customerAutoCreated": False,
        },
        201,
    )


async def events_batch(request: Request) -> Response:
    if not authed(request):
        return err("unauthorized", "bad key", 401)
    results = []
    for i, ev in enumerate(orjson.loads(await request.body())["events"]):
        status, eid = ingest_one(ev)
        results.append({"index": i, "status": status, "eventId": eid})
    acc = sum(r["status"] == "accepted" for r in results)
    # The harness sends unique keys only: a duplicate here means it is broken, and a 409
    # makes wrk count it as an error.
    return ok(
        {"results": results, "accepted": acc, "duplicates": len(results) - acc, "errors": 0},
        200 if acc == len(results) else 409,
    )


async def advance(request: Request) -> Response:
    if not authed(request):
        return err("unauthorized", "bad key", 401)
    body = orjson.loads(await request.body())
    if "to" in body:
        to = datetime.fromisoformat(body["to"].replace("Z", "+00:00"))
    else:
        to = clock["now"] + timedelta(days=body.get("days", 0), seconds=body.get("seconds", 0))
    for sub in subscriptions.values():
        while sub["end"] <= to:
            sub["start"], sub["end"] = sub["end"], add_month(sub["end"])
    clock["now"] = to
    return ok({"now": iso(to)})


def tool(name: str, args: dict):
    if name == "adminCreateFeature":
        fid = str(uuid.uuid4())
        features[args["key"]] = {"id": fid, "key": args["key"], "name": args["name"]}
        return {"feature": features[args["key"]]}
    if name == "adminCreatePlan":
        pid = str(uuid.uuid4())
        plans[pid] = {"id": pid, "key": args["key"], "status": "DRAFT"}
        return {"plan": plans[pid]}
    if name == "adminLinkFeatureToPlan":
        return {"success": True}
    if name == "adminUpdatePlan":
        plans[args["planId"]]["status"] = args.get("status", "DRAFT")
        return {"success": True}
    if name == "checkEntitlement":
        allowed = args["customerReferenceId"] in customers and args["featureKey"] in features
        return {"allowed": allowed, "isAllowed": allowed}
    raise KeyError(name)


async def mcp(request: Request) -> Response:
    if not authed(request):
        return err("unauthorized", "bad key", 401)
    msg = orjson.loads(await request.body())
    params = msg.get("params") or {}
    try:
        out = tool(params.get("name"), params.get("arguments") or {})
    except KeyError as e:
        return j(
            {
                "jsonrpc": "2.0",
                "id": msg.get("id"),
                "result": {
                    "isError": True,
                    "content": [{"type": "text", "text": f"Unknown tool: {e}"}],
                },
            }
        )
    return j(
        {
            "jsonrpc": "2.0",
            "id": msg.get("id"),
            "result": {
                "content": [{"type": "text", "text": orjson.dumps(out).decode()}],
                "structuredContent": out,
                "isError": False,
            },
        }
    )


@contextlib.asynccontextmanager
async def lifespan(app):
    print(f"admin keys (shown once): test {TEST_KEY}  live {LIVE_KEY}", flush=True)
    yield


app = Starlette(
    routes=[
        Route("/healthz", health),
        Route("/readyz", health),
        Route(f"{API}/customers", create_customer, methods=["POST"]),
        Route(f"{API}/subscriptions", create_subscription, methods=["POST"]),
        Route(f"{API}/subscriptions/{{sid}}", get_subscription),
        Route(f"{API}/entitlements/{{ref}}/{{fk}}", entitlement),
        Route(f"{API}/events", events, methods=["POST"]),
        Route(f"{API}/events/batch", events_batch, methods=["POST"]),
        Route(f"{API}/test-clock/advance", advance, methods=["POST"]),
        Route("/mcp", mcp, methods=["POST"]),
    ],
    lifespan=lifespan,
)


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["serve"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    a = p.parse_args()
    uvicorn.run(
        app,
        host=a.host,
        port=a.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
