"""The hostile-input table: text no database can store, loose numbers, bodies that are
not UTF-8 JSON, too many or too large headers, oversized, deeply nested and huge-number
bodies. Each row gets the same 4xx naming the field on SQLite and on PostgreSQL, over
the declared routes, the fast lane and MCP, and nothing is written."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from tanso_mcp.db import models
from tanso_mcp.web.app import create_app
from tanso_mcp.web.server import HeaderLimitedHttpTools
from tests.conftest import PG_URL
from tests.contract_report import report
from tests.mcp_helpers import fails, free_port, inmemory, live_server, ok

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
JSON = {"content-type": "application/json"}
_RUN = {"cases": 0}


@pytest.fixture(scope="module", autouse=True)
def _table_report():
    yield
    db = "PostgreSQL" if PG_URL else "SQLite"
    report(f"hostile-input table on {db}: {_RUN['cases']} cases (any failure fails the run)")


@pytest.fixture(autouse=True)
def _count_case():
    _RUN["cases"] += 1


async def rows(ctx) -> tuple[int, int]:
    async with ctx.db.reader() as s:
        customers = await s.scalar(select(func.count()).select_from(models.Customer))
        events = await s.scalar(select(func.count()).select_from(models.Event))
    return int(customers), int(events)


def event(**extra) -> dict:
    return {"eventName": "call", "customerReferenceId": "c1", "featureKey": "api", **extra}


async def post_raw(client, tenant, path: str, body: bytes, headers=None, role="admin"):
    return await client.post(
        API + path, content=body, headers={**tenant.headers(role), **JSON, **(headers or {})}
    )


def refused(r, status: int, field: str, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field, err
    if code is not None:
        assert err["code"] == code, err


# ---------------------------------------------------------------------- text rules

NUL = "a\u0000b"
LONE = "x\ud800"

# (path, JSON body text with an escape, the field the 400 must name)
TEXT_CASES = [
    ("/customers", '{"customerReferenceId":"a\\u0000b"}', "customerReferenceId"),
    ("/customers", '{"customerReferenceId":"c9","firstName":"x\\ud800"}', "firstName"),
    ("/customers", '{"customerReferenceId":"c9","lastName":"\\uDFFFy"}', "lastName"),
    (
        "/events",
        '{"eventName":"e","customerReferenceId":"x\\ud800","featureKey":"api"}',
        "customerReferenceId",
    ),
    (
        "/events",
        '{"eventName":"e\\u0000","customerReferenceId":"c","featureKey":"api"}',
        "eventName",
    ),
    (
        "/events",
        '{"eventName":"e","customerReferenceId":"c","meta":{"note":"\\u0000"}}',
        "meta.note",
    ),
    (
        "/events/batch",
        '{"events":[{"eventName":"e","customerReferenceId":"c"},'
        '{"eventName":"e","customerReferenceId":"\\ud83d"}]}',
        "events[1].customerReferenceId",
    ),
    (
        "/entitlements",
        '{"customerReferenceId":"x\\ud800","featureKey":"api"}',
        "customerReferenceId",
    ),
    ("/entitlements/check", '{"customerReferenceId":"c","featureKey":"a\\u0000"}', "featureKey"),
]


@pytest.mark.parametrize(("path", "body", "field"), TEXT_CASES)
async def test_unstorable_text_in_a_body_is_400_naming_the_field(
    ctx, client, tenant, path, body, field
):
    before = await rows(ctx)
    r = await post_raw(client, tenant, path, body.encode())
    refused(r, 400, field, "invalid_request")
    assert await rows(ctx) == before


async def test_a_surrogate_pair_is_fine_and_stored_intact(ctx, client, tenant):
    r = await post_raw(
        client, tenant, "/customers", b'{"customerReferenceId":"c1","firstName":"\\ud83d\\ude00"}'
    )
    assert r.status_code == 201, r.text
    r = await client.get(f"{API}/customers/c1", headers=tenant.headers("read"))
    assert r.json()["data"]["firstName"] == "\U0001f600"


async def test_raw_surrogate_bytes_and_utf16_bodies_are_refused(ctx, client, tenant):
    before = await rows(ctx)
    # a surrogate encoded as UTF-8 bytes: invalid UTF-8 (the standard library would
    # decode it with surrogatepass)
    r = await post_raw(client, tenant, "/customers", b'{"customerReferenceId":"x\xed\xa0\x80"}')
    refused(r, 400, "body", "invalid_request")
    r = await post_raw(client, tenant, "/events", json.dumps(event()).encode("utf-16"))
    refused(r, 400, "body", "invalid_request")
    assert await rows(ctx) == before


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/customers/a%00b", "ref"),
        ("/entitlements/a%00b", "ref"),
        ("/entitlements/a%00b/api", "ref"),  # the fast lane
        ("/entitlements/c1/a%00", "featureKey"),  # the fast lane
        ("/credits/c1/pools/p%00", "poolId"),
    ],
)
async def test_nul_in_a_path_or_query_parameter_is_400_with_a_read_key(client, tenant, path, field):
    r = await client.get(API + path, headers=tenant.headers("read"))
    refused(r, 400, field, "invalid_request")


async def test_nul_in_a_query_parameter(client, tenant):
    r = await client.get(f"{API}/entitlements/c1?limit=5%00", headers=tenant.headers("read"))
    refused(r, 400, "limit", "invalid_request")


async def test_mcp_arguments_with_unstorable_text(ctx, tenant):
    before = await rows(ctx)
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        for value in (NUL, LONE):
            err = await fails(
                mcp,
                "ingestEvent",
                {
                    "eventIdempotencyKey": "k1",
                    "eventName": "call",
                    "occurredAt": "2026-01-15T09:00:00Z",
                    "customerReferenceId": value,
                    "featureKey": "api",
                },
            )
            assert err["error"] == "invalid_request" and err["field"] == "customerReferenceId"
            err = await fails(mcp, "getCustomer", {"customerReferenceId": value})
            assert err["error"] == "invalid_request" and err["field"] == "customerReferenceId"
    assert await rows(ctx) == before


# ---------------------------------------------------------------------- usageUnits


@pytest.mark.parametrize("units", [None, " 5 ", "5 ", " 5", "\t1", "", "5\n"])
async def test_loose_usage_units_are_refused_everywhere(ctx, client, tenant, units):
    before = await rows(ctx)
    body = json.dumps(event(usageUnits=units)).encode()
    # the fast lane (the app's own route for POST /events)
    r = await post_raw(client, tenant, "/events", body, role="client")
    refused(r, 400, "usageUnits", "invalid_request")
    # a batch: that item fails, naming the field
    r = await post_raw(
        client, tenant, "/events/batch", json.dumps({"events": [event(usageUnits=units)]}).encode()
    )
    assert r.status_code == 200, r.text
    item = r.json()["data"]["results"][0]
    assert item["status"] == "error", item
    assert item["error"]["field"] == "events[0].usageUnits", item
    assert await rows(ctx) == before


@pytest.mark.parametrize("units", [None, " 5 ", "5 "])
async def test_loose_usage_units_are_refused_over_mcp(ctx, tenant, units):
    before = await rows(ctx)
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        err = await fails(
            mcp,
            "ingestEvent",
            {
                "eventIdempotencyKey": "k1",
                "eventName": "call",
                "occurredAt": "2026-01-15T09:00:00Z",
                "customerReferenceId": "c1",
                "featureKey": "api",
                "usageUnits": units,
            },
        )
    assert err["error"] == "invalid_request" and err["field"] == "usageUnits", err
    assert await rows(ctx) == before


async def test_exact_usage_units_are_accepted(ctx, client, tenant):
    for n, units in enumerate([5, "5", "2.5", 0.25, "1e2"]):
        body = json.dumps(event(usageUnits=units, eventIdempotencyKey=f"k{n}")).encode()
        r = await post_raw(client, tenant, "/events", body, role="client")
        assert r.status_code == 201, (units, r.text)
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        await ok(
            mcp,
            "ingestEvent",
            {
                "eventIdempotencyKey": "m1",
                "eventName": "call",
                "occurredAt": "2026-01-15T09:00:00Z",
                "customerReferenceId": "c1",
                "featureKey": "api",
                "usageUnits": "3",
            },
        )
    assert (await rows(ctx))[1] == 6


# ---------------------------------------------------------------------- media types

MEDIA_CASES = [
    None,
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/json; charset=utf-16",
    "application/json; charset=latin-1",
    "application/jsonx",
]


@pytest.mark.parametrize("content_type", MEDIA_CASES)
@pytest.mark.parametrize("path", ["/customers", "/events", "/events/batch", "/entitlements"])
async def test_bodies_that_are_not_utf8_json_are_415(ctx, client, tenant, content_type, path):
    before = await rows(ctx)
    body = (
        json.dumps({"events": [event()]}) if path.endswith("batch") else json.dumps(event())
    ).encode()
    headers = dict(tenant.headers())
    if content_type is not None:
        headers["content-type"] = content_type
    r = await client.post(API + path, content=body, headers=headers)
    refused(r, 415, "Content-Type", "unsupported_media_type")
    assert await rows(ctx) == before


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON; Charset=UTF-8"],
)
async def test_utf8_json_is_accepted(client, tenant, content_type):
    r = await client.post(
        f"{API}/customers",
        content=b'{"customerReferenceId":"c1"}',
        headers={**tenant.headers(), "content-type": content_type},
    )
    assert r.status_code == 201, r.text


async def test_mcp_refuses_a_non_json_body(client, tenant):
    r = await client.post(
        "/mcp",
        content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        headers={**tenant.headers(), "content-type": "text/plain"},
    )
    # on the MCP endpoint the refusal is a JSON-RPC error holding the REST error object
    assert r.status_code == 415, r.text
    body = r.json()
    assert (body["jsonrpc"], body["id"], body["error"]["code"]) == ("2.0", None, -32600)
    assert body["error"]["message"] == body["error"]["data"]["message"]
    assert body["error"]["data"]["field"] == "Content-Type"
    assert body["error"]["data"]["code"] == "unsupported_media_type"


# ---------------------------------------------------------------------- headers


async def test_too_many_or_too_large_headers_are_431_in_the_app(client, tenant):
    many = {f"x-h{i}": "v" for i in range(101)}
    r = await client.get("/healthz", headers=many)
    refused(r, 431, "headers", "headers_too_large")
    r = await client.get("/healthz", headers={"x-big": "v" * 70_000})
    refused(r, 431, "headers", "headers_too_large")
    r = await client.get("/healthz", headers={f"x-h{i}": "v" for i in range(90)})
    assert r.status_code == 200


def _raw_request(port: int, head: bytes, chunk: int = 65536) -> bytes:
    """Send ``head`` (a request's start line and headers, maybe huge) over a socket and
    return what the server answered (stops sending when the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            for i in range(0, len(head), chunk):
                sock.sendall(head[i : i + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while True:
                got = sock.recv(65536)
                if not got:
                    break
                data += got
                if b"\r\n\r\n" in data and b'"success"' in data and data.endswith(b"}"):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return data


async def test_header_limits_on_the_real_server(ctx, tenant):
    """The protocol uvicorn runs for ``tanso-mcp serve``: a 16 MiB header and 2,000
    headers of 8 KB are refused with 431 while they arrive, without a key."""
    port = free_port()
    config = uvicorn.Config(
        create_app(ctx),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        http=HeaderLimitedHttpTools,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 * 1024 * 1024)
        answer = await asyncio.to_thread(_raw_request, port, huge + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b'"field":"headers"' in answer
        many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(2000)
        )
        answer = await asyncio.to_thread(_raw_request, port, many + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        count = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%d: v\r\n" % i for i in range(150)
        )
        answer = await asyncio.to_thread(_raw_request, port, count + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        # an ordinary request on the same server still works, keep-alive and all
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(3):
                r = await http.get("/healthz", headers={"x-a": "b" * 1000})
                assert r.status_code == 200
            r = await http.get(f"{API}/customers/a%00b", headers=tenant.headers("read"))
            refused(r, 400, "ref", "invalid_request")
    finally:
        server.should_exit = True
        await task


# ---------------------------------------------------------------------- size and shape


async def test_oversized_deep_and_huge_number_bodies(ctx, client, tenant):
    before = await rows(ctx)
    big = json.dumps(event(meta={"blob": "x" * 70_000})).encode()
    refused(await post_raw(client, tenant, "/events", big), 413, "body", "payload_too_large")
    deep = b'{"customerReferenceId":"c","metadata":' + b"[" * 200 + b"]" * 200 + b"}"
    refused(await post_raw(client, tenant, "/customers", deep), 400, "body", "invalid_request")
    deep_event = b'{"eventName":"e","customerReferenceId":"c","meta":' + b'{"a":' * 100
    deep_event += b"1" + b"}" * 101
    refused(await post_raw(client, tenant, "/events", deep_event), 400, "body")
    huge = b'{"eventName":"e","customerReferenceId":"c","usageUnits":1E+999999999}'
    refused(await post_raw(client, tenant, "/events", huge), 400, "body", "invalid_request")
    wide = b'{"eventName":"e","customerReferenceId":"c","usageUnits":' + b"9" * 400 + b"}"
    r = await post_raw(client, tenant, "/events", wide)
    assert r.status_code == 400 and r.json()["error"]["field"] in ("body", "usageUnits")
    assert await rows(ctx) == before


# ---------------------------------------------------------------------- every 4xx names it


async def test_method_path_and_role_errors_name_the_field(client, tenant):
    r = await client.put(f"{API}/customers", headers=tenant.headers(), json={})
    refused(r, 405, "method", "method_not_allowed")
    assert "POST" in r.headers["allow"]
    refused(await client.get(f"{API}/nowhere", headers=tenant.headers()), 404, "path")
    r = await client.post(
        f"{API}/customers", headers=tenant.headers("read"), json={"customerReferenceId": "c"}
    )
    refused(r, 403, "X-API-Key", "forbidden")
    r = await client.post(f"{API}/events", headers=tenant.headers("read"), json=event())
    refused(r, 403, "X-API-Key", "forbidden")  # the fast lane
    refused(await client.get(f"{API}/test-clock"), 401, "X-API-Key", "unauthorized")


async def test_mcp_request_with_a_lone_surrogate_is_a_parse_error_not_a_500(ctx, tenant):
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"getCustomer",'
        b'"arguments":{"customerReferenceId":"x\\ud800"}}}'
    )
    async with live_server(ctx) as base, httpx.AsyncClient(base_url=base) as http:
        r = await http.post(
            "/mcp",
            content=body,
            headers={
                **tenant.headers(),
                **JSON,
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2025-11-25",
            },
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == -32700  # JSON-RPC parse error


async def test_mcp_chunked_bodies_are_bounded_without_a_500(ctx, tenant):
    """A body of unknown length on the MCP endpoint: beyond the limit a 413 JSON-RPC error
    naming the body (the SDK's app would answer an exception raised while it reads with a
    bare 500), within it the ordinary answer."""

    async def chunks(body: bytes):
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    def request(pad: int) -> bytes:
        msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {}}}
        msg["params"]["_meta"]["pad"] = "x" * pad
        return json.dumps(msg).encode()

    headers = {
        **tenant.headers(),
        **JSON,
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-11-25",
    }
    limit = ctx.settings.max_body_bytes
    async with live_server(ctx) as base, httpx.AsyncClient(base_url=base) as http:
        r = await http.post("/mcp", content=chunks(request(limit)), headers=headers)
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert (error["data"]["code"], error["data"]["field"]) == ("payload_too_large", "body")
        r = await http.post("/mcp", content=chunks(request(limit // 2)), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["tools"]
