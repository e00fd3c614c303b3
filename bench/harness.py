"""The pieces a benchmark scenario is made of, and the context its hooks get.

A scenario (see `scenarios.py`) is a small `Scenario` object: which server to start
(`Server`: argv + env), an optional `setup(ctx)` hook that prepares data over HTTP and
stores what the request needs in `ctx.state`, the request shape (method, path, headers,
body template) that wrk repeats, the ceiling scenario it is compared with, and an
optional target. A Python-driven scenario gives `run(ctx, cfg)` instead of a request.

Templates: `path`, header values and `body` may contain `{{name}}` placeholders, filled
from `ctx.state` after setup. The placeholder `{{uid}}` is special: it is left for the
load generator, which puts a unique value there for every request (idempotency keys).
`body` may also be a function `state -> str` (for large generated bodies).

Exceptions a hook may raise:
- `ScenarioUnavailable(reason)`: the scenario cannot run here (yet) — e.g. the product
  is not installed, or an endpoint it needs answers 404. The runner prints the row as
  "n/a (reason)" and goes on.
- `SetupError(reason)` (or any other exception): something is broken. The runner prints
  the row as "error (reason)" and goes on.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MCP_PROTOCOL_VERSION = "2025-11-25"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_rpc_ids = itertools.count(1)


class ScenarioUnavailable(Exception):
    """The scenario cannot run here (yet); shown as "n/a (reason)"."""


class SetupError(Exception):
    """Setup or the probe request failed; shown as "error (reason)"."""


# --------------------------------------------------------------------------- config


@dataclass
class RunConfig:
    duration_s: float = 6.0
    warmup_s: float = 3.0
    reps: int = 5
    connections: int = 64
    threads: int = 1
    timeout_s: float = 10.0
    pin: bool = True  # server on CPU 0, wrk on CPU 1 (taskset), when there are >= 2 CPUs
    quick: bool = False
    renewals: int = 500  # subscriptions renewed per advance in the renewal scenario
    wrk: str = "wrk"
    verbose: bool = False


# --------------------------------------------------------------------------- scenario


@dataclass
class ServerContext:
    port: int
    tmpdir: Path


@dataclass
class Server:
    """How to start one server process.

    `argv(sctx)` and `env(sctx)` are called with the port and a fresh temporary directory;
    `env` is added to the runner's environment. Either may raise ScenarioUnavailable
    (e.g. "tanso-mcp is not installed"). The server must bind 127.0.0.1:<port>, and
    `ready_path` must answer 200 once it serves.
    """

    name: str
    argv: Callable[[ServerContext], list[str]]
    env: Callable[[ServerContext], dict[str, str]] = lambda sctx: {}
    ready_path: str = "/healthz"
    startup_timeout_s: float = 60.0


@dataclass
class Target:
    """A goal printed beside the result: a share of the ceiling or an absolute rate
    (`min_throughput_pg` replaces `min_throughput` when the product runs on PostgreSQL)."""

    pct_of_ceiling: float | None = None  # 0.60 means >= 60% of the ceiling's req/s
    min_throughput: float | None = None  # in the scenario's unit, e.g. 50_000 events/s
    min_throughput_pg: float | None = None

    def _min(self) -> float | None:
        if self.min_throughput_pg is not None and os.environ.get("BENCH_DATABASE_URL"):
            return self.min_throughput_pg
        return self.min_throughput

    def describe(self, unit: str) -> str:
        if self.pct_of_ceiling is not None:
            return f">= {self.pct_of_ceiling:.0%} of ceiling"
        return f">= {self._min():,.0f} {unit}"

    def met(self, throughput: float | None, pct: float | None) -> bool | None:
        if self.pct_of_ceiling is not None:
            return None if pct is None else pct >= self.pct_of_ceiling
        floor = self._min()
        if floor is not None:
            return None if throughput is None else throughput >= floor
        return None


@dataclass
class Measurement:
    """What a Python-driven scenario's `run` returns."""

    throughput: float  # in the scenario's unit
    p50_ms: float | None = None
    p99_ms: float | None = None
    req_per_s: float | None = None
    errors: int = 0
    runs: list[dict] = field(default_factory=list)
    note: str = ""


@dataclass
class Scenario:
    name: str
    description: str
    server: Server
    # the request wrk repeats (ignored when `run` is given)
    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | Callable[[dict], str] | None = None
    uid_header: str | None = None  # also send the unique value in this header
    expect_status: tuple[int, ...] = (200,)
    # check(status, parsed_json) -> None if the probe answer is right, else the problem
    check: Callable[[int, Any], str | None] | None = None
    # hooks
    setup: Callable[[Context], None] | None = None
    run: Callable[[Context, RunConfig], Measurement] | None = None
    # reporting
    ceiling: str | None = None  # name of the scenario this one is compared with
    is_ceiling: bool = False
    items_per_request: int = 1  # throughput = req/s * items_per_request
    unit: str = "req/s"
    connections: int | None = None  # overrides RunConfig.connections
    target: Target | None = None
    product: bool = False  # needs tanso-mcp (for --list and the README)


# --------------------------------------------------------------------------- templates


def render(template: str, state: dict[str, Any]) -> str:
    """Fill `{{name}}` placeholders from `state`; `{{uid}}` is left for the load generator."""

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name == "uid":
            return m.group(0)
        if name not in state:
            raise SetupError(f"template needs {{{{{name}}}}} but setup did not provide it")
        return str(state[name])

    return _PLACEHOLDER.sub(sub, template)


def request_shape(scenario: Scenario, state: dict[str, Any]):
    """(method, path, headers, body) with state filled in and `{{uid}}` left in place."""
    body = scenario.body(state) if callable(scenario.body) else scenario.body
    body = render(body, state) if body is not None else None
    headers = {k: render(v, state) for k, v in scenario.headers.items()}
    return scenario.method, render(scenario.path, state), headers, body


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started by the runner; its output is collected (and kept in a log file)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path):
        self.argv = argv
        self.log_path = log_path
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._log = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: stopped as a whole, by id
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def tail(self, n: int = 15) -> str:
        with self._cond:
            return "\n".join(self._lines[-n:])

    def wait_for_output(self, pattern: str, timeout_s: float) -> re.Match | None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))

    def wait_ready(self, base_url: str, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise SetupError(
                    f"server exited with code {self.proc.returncode} before it was ready"
                    f" ({self._last_line()})\n{self.tail()}"
                )
            try:
                status, _, _ = http_request(base_url, "GET", path, timeout=2)
                if status == 200:
                    return
                last = f"{path} answered {status}"
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise SetupError(f"server not ready after {timeout_s:.0f}s ({last})\n{self.tail()}")

    def _last_line(self) -> str:
        with self._cond:
            lines = [ln for ln in self._lines if ln.strip()]
        return lines[-1].strip()[:200] if lines else "no output"

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._reader.join(5)
        self._log.close()


# --------------------------------------------------------------------------- HTTP


def http_request(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    timeout: float = 60,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with the standard library (no client dependency for the harness)."""
    host_port = base_url.split("://", 1)[1].rstrip("/")
    own = conn is None
    c = conn or http.client.HTTPConnection(host_port, timeout=timeout)
    try:
        if isinstance(body, str):
            body = body.encode()
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        if own:
            c.close()


def parse_body(headers: dict[str, str], data: bytes) -> Any:
    """JSON, or the last JSON `data:` event of an SSE answer; None when neither."""
    text = data.decode("utf-8", "replace")
    if headers.get("content-type", "").startswith("text/event-stream"):
        found = None
        for line in text.splitlines():
            if line.startswith("data:"):
                try:
                    found = json.loads(line[5:].strip())
                except ValueError:
                    pass
        return found
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return parse_body(self.headers, self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Context:
    """What `setup` and `run` hooks get: the running server, HTTP helpers and `state`.

    Hooks put what the request templates need into `state` (e.g. `api_key`, `ref`).
    """

    def __init__(
        self, scenario: Scenario, server: ServerProcess, base_url: str, tmpdir: Path, cfg: RunConfig
    ):
        self.scenario = scenario
        self.server = server
        self.base_url = base_url
        self.tmpdir = tmpdir
        self.cfg = cfg
        self.state: dict[str, Any] = {}
        self._conn: http.client.HTTPConnection | None = None

    # raw HTTP ---------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        body: bytes | str | None = None,
        timeout: float = 600,
    ) -> Response:
        """One request over a kept-alive connection (reopened once if it dropped)."""
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self.base_url.split("://", 1)[1].rstrip("/"), timeout=timeout
                )
            try:
                status, rh, data = http_request(
                    self.base_url, method, path, headers=hdrs, body=body, conn=self._conn
                )
                if rh.get("connection", "").lower() == "close":
                    self.close()
                return Response(status, rh, data)
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # REST API ----------------------------------------------------------------
    def api_headers(self) -> dict[str, str]:
        key = self.state.get("api_key")
        return {"X-API-Key": key} if key else {}

    def api(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        expect: tuple[int, ...] = (200, 201),
        need: str = "",
    ) -> Any:
        """Call the product's REST API with `state["api_key"]`; return the envelope's `data`.

        404/405 raise ScenarioUnavailable ("needs <need>: METHOD path answered 404"),
        any other unexpected status raises SetupError.
        """
        r = self.request(method, path, json_body=json_body, headers=self.api_headers())
        if r.status in (404, 405) and r.status not in expect:
            what = need or f"{method} {path}"
            raise ScenarioUnavailable(f"needs {what}: {method} {path} answered {r.status}")
        if r.status not in expect:
            raise SetupError(f"{method} {path} answered {r.status}: {r.text[:300]}")
        payload = r.json
        if isinstance(payload, dict) and "data" in payload:
            return payload["data"]
        return payload

    # MCP -------------------------------------------------------------------------
    def mcp(
        self, tool: str, arguments: dict[str, Any], *, need: str = "", path: str = "/mcp"
    ) -> Any:
        """Call an MCP tool over Streamable HTTP, stateless 2025-11-25 style (no handshake).

        Returns structuredContent, else the first text content parsed as JSON, else the
        text. A missing endpoint or unknown tool raises ScenarioUnavailable; a tool error
        raises SetupError.
        """
        need = need or f"the MCP tool {tool}"
        msg = {
            "jsonrpc": "2.0",
            "id": next(_rpc_ids),
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        r = self.request(
            "POST", path, json_body=msg, headers=mcp_headers(self.state.get("api_key"))
        )
        if r.status in (404, 405):
            raise ScenarioUnavailable(f"needs {need}: POST {path} answered {r.status}")
        reply = r.json
        if r.status != 200 or not isinstance(reply, dict):
            raise SetupError(f"MCP {tool} answered HTTP {r.status}: {r.text[:300]}")
        if "error" in reply:
            err = reply["error"] or {}
            message = str(err.get("message", err))
            if err.get("code") == -32601 or "unknown tool" in message.lower():
                raise ScenarioUnavailable(f"needs {need}: {message[:200]}")
            raise SetupError(f"MCP {tool} error: {message[:300]}")
        result = reply.get("result") or {}
        text = "".join(
            c.get("text", "") for c in result.get("content", []) if c.get("type") == "text"
        )
        if result.get("isError"):
            if "unknown tool" in text.lower() or "not found: tool" in text.lower():
                raise ScenarioUnavailable(f"needs {need}: {text[:200]}")
            raise SetupError(f"MCP {tool} failed: {text[:300]}")
        if result.get("structuredContent") is not None:
            return result["structuredContent"]
        try:
            return json.loads(text)
        except ValueError:
            return text


def mcp_headers(api_key: str | None = None) -> dict[str, str]:
    """The headers a Streamable HTTP POST needs (plus the API key when given)."""
    h = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MCP_PROTOCOL_VERSION,
    }
    if api_key:
        h["X-API-Key"] = api_key
    return h


def find_key(obj: Any, *names: str) -> Any:
    """The first value under any of `names`, searching nested dicts/lists breadth-first.

    Used to pick ids out of answers whose exact nesting is not fixed yet
    (`{"id": …}`, `{"plan": {"id": …}}`, `{"data": {"planId": …}}` all work).
    """
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            for n in names:
                if cur.get(n) not in (None, ""):
                    return cur[n]
            queue.extend(cur.values())
        elif isinstance(cur, list):
            queue.extend(cur)
    return None
