"""Authentication, roles, the JSON envelope and request-level bad input."""

from __future__ import annotations

import pytest

from tanso_mcp.services import tenancy

pytestmark = pytest.mark.anyio


async def test_missing_key_is_401(client):
    r = await client.get("/api/v1/client/test-clock")
    assert r.status_code == 401
    assert r.json() == {
        "success": False,
        "error": {
            "code": "unauthorized",
            "message": "missing API key: send X-API-Key or Authorization: Bearer",
            "field": "X-API-Key",
        },
    }


@pytest.mark.parametrize("key", ["sk_test_nope", "garbage", "sk_live_" + "x" * 43])
async def test_unknown_key_is_401(client, tenant, key):
    r = await client.get("/api/v1/client/test-clock", headers={"X-API-Key": key})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


async def test_bearer_header_is_accepted(client, tenant):
    r = await client.get(
        "/api/v1/client/test-clock", headers={"Authorization": f"Bearer {tenant.key('read')}"}
    )
    assert r.status_code == 200, r.text


async def test_read_key_on_admin_route_is_403(client, tenant):
    r = await client.post(
        "/api/v1/client/test-clock/advance", json={"days": 1}, headers=tenant.headers("read")
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    r = await client.post(
        "/api/v1/client/test-clock/advance", json={"days": 1}, headers=tenant.headers("client")
    )
    assert r.status_code == 403


async def test_revoked_key_is_401(ctx, client, tenant):
    key = tenant.key("admin")
    assert (
        await client.get("/api/v1/client/test-clock", headers={"X-API-Key": key})
    ).status_code == 200
    async with ctx.db.unit_of_work() as s:
        rows = await tenancy.list_api_keys(s)
        kid = next(r["id"] for r in rows if key.startswith(r["prefix"].rstrip("…")))
        h = await tenancy.revoke_api_key(s, kid, ctx.clocks.system_now())
    ctx.keys.invalidate(h)
    r = await client.get("/api/v1/client/test-clock", headers={"X-API-Key": key})
    assert r.status_code == 401


async def test_key_cache_serves_without_database_until_invalidated(ctx, tenant):
    ctx.keys.ttl = 60
    key = tenant.key("client")
    p1 = await ctx.keys.resolve(key)
    assert p1 is not None and p1.role == "client" and p1.mode == "test"
    async with ctx.db.unit_of_work() as s:
        rows = await tenancy.list_api_keys(s)
        kid = next(r["id"] for r in rows if key.startswith(r["prefix"].rstrip("…")))
        h = await tenancy.revoke_api_key(s, kid, ctx.clocks.system_now())
    assert await ctx.keys.resolve(key) == p1  # cached (bounded by key_cache_seconds)
    ctx.keys.invalidate(h)
    assert await ctx.keys.resolve(key) is None


async def test_concurrent_misses_of_one_key_read_the_database_once(ctx, tenant, monkeypatch):
    """When a cached key expires under load, the requests in flight share one read."""
    import asyncio

    from tanso_mcp.services import auth

    reads = []
    real = auth.principal_for_key

    async def counted(session, key):
        reads.append(key)
        return await real(session, key)

    monkeypatch.setattr(auth, "principal_for_key", counted)
    key = tenant.key("client")
    ctx.keys.invalidate()
    found = await asyncio.gather(*(ctx.keys.resolve(key) for _ in range(20)))
    assert len(reads) == 1
    assert all(p is not None and p.role == "client" for p in found)
    assert found.count(found[0]) == 20


async def test_keys_are_stored_only_as_hashes(ctx, tenant):
    from sqlalchemy import select

    from tanso_mcp.db.models import ApiKey

    async with ctx.db.reader() as s:
        rows = (await s.execute(select(ApiKey))).scalars().all()
    secrets = set(tenant.keys.values())
    for row in rows:
        assert row.key_hash not in secrets and len(row.key_hash) == 64
        assert row.key_prefix not in secrets
    assert {k[:8] for k in secrets} == {"sk_test_", "sk_live_"}


async def test_environments_are_isolated(client, tenant):
    # the live key sees no test clock: its environment has none
    r = await client.get("/api/v1/client/test-clock", headers=tenant.headers("admin", "live"))
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "environment"


async def test_unknown_route_uses_envelope(client, tenant):
    r = await client.get("/api/v1/client/nope", headers=tenant.headers())
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_wrong_method_uses_envelope(client, tenant):
    r = await client.delete("/api/v1/client/test-clock", headers=tenant.headers())
    assert r.status_code == 405
    assert r.json()["success"] is False


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"[1, 2]", "body"),
        (b'{"days": "many"}', "days"),
        (b'{"days": -1}', "days"),
        (b'{"dayz": 1}', "dayz"),
        (b'{"days": NaN}', None),
        (b'{"to": "2020-01-01T00:00:00"}', "to"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(client, tenant, body, field):
    r = await client.post(
        "/api/v1/client/test-clock/advance",
        content=body,
        headers=tenant.headers() | {"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    if field:
        assert err["field"] == field


async def test_body_over_limit_is_413(client, tenant):
    r = await client.post(
        "/api/v1/client/test-clock/advance",
        content=b"{" + b" " * 70000 + b"}",
        headers=tenant.headers(),
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_health_and_ready(client):
    assert (await client.get("/healthz")).json() == {"success": True, "data": {"status": "ok"}}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["data"]["status"] == "ready"


async def test_readyz_reports_unreachable_database(settings, clock):
    import httpx

    from tanso_mcp.bootstrap import build_context
    from tanso_mcp.web.app import create_app

    bad = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
    )
    c = build_context(bad, clock=clock)
    app = create_app(c)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as hc:
        r = await hc.get("/readyz")
    assert r.status_code == 503
    assert "nobody" not in r.text
    await c.close()


async def test_openapi_documents_every_route(client):
    from tanso_mcp.web.app import client_api

    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    for r in client_api().routes:
        assert r.method.lower() in doc["paths"][r.path], r.path
    adv = doc["paths"]["/api/v1/client/test-clock/advance"]["post"]
    body_ref = adv["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
