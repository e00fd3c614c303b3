"""Every answer checked against what it declares, in every test that produces one.

An autouse fixture wraps the three places where answers leave the application: the MCP
tool runner (each successful ``structuredContent``, whatever the transport: in-memory,
Streamable HTTP, in-process stdio), the REST endpoint wrapper and the fast lane of the
per-request calls (``web/hotpath.py``: entitlement check, single and batch ingest), each
2xx body for the last two. Each answer is validated against the schema generated from its answer model (the tool's
strict output schema, the endpoint's /openapi.json response). The models in
``services.outputs`` forbid undeclared fields, so for them an extra field fails as surely
as a missing or mistyped one; ``tests/test_answer_schemas.py`` additionally closes every
object in its copy of the schemas. The workflow tests thereby double as schema tests: a
new field in an answer must be declared in ``tanso_mcp/services/outputs.py``.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest

RECORD = os.environ.get("TANSO_SCHEMA_RECORD")


def closed(schema: Any) -> Any:
    """A copy of ``schema`` in which every object schema forbids undeclared properties."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            # a declared structure is closed; a free-form map (no properties) stays open
            if "properties" in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def _violations(schema: Any, value: Any) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message[:300]}"
        for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ][:5]


def _rest_schema(route: Any) -> dict[str, Any] | None:
    """The schema /openapi.json declares for a route's successful body."""
    from tanso_mcp.web.openapi import REF, _schema_for

    defs: dict[str, Any] = {}
    data = _schema_for(route.response, "serialization", defs)
    if not data:
        return None
    if route.paginated is True:
        data = {"type": "array", "items": data}
    properties: dict[str, Any] = {"success": {"const": True}, "data": data}
    if route.paginated:
        properties["pagination"] = {"type": "object"}
    schema = {
        "type": "object",
        "required": ["success", "data"],
        "properties": properties,
        "$defs": defs,
    }
    # openapi's refs point into components/schemas; here they live in $defs
    return json.loads(json.dumps(schema).replace(REF.format(model=""), "#/$defs/"))


def _record(kind: str, name: str, value: Any) -> None:
    with open(RECORD, "a") as fh:  # noqa: PTH123
        fh.write(json.dumps({"kind": kind, "name": name, "value": value}, default=str) + "\n")


@pytest.fixture(autouse=True)
def schema_guard(monkeypatch: pytest.MonkeyPatch):
    from tanso_mcp.bootstrap import AppContext
    from tanso_mcp.tools import server as tool_server
    from tanso_mcp.tools.specs import strict_output_schema
    from tanso_mcp.web import hotpath, routing
    from tanso_mcp.web.app import client_api

    problems: list[str] = []
    original_call = tool_server._Runner.call

    async def checked_call(self, spec, arguments, request_context):
        result = await original_call(self, spec, arguments, request_context)
        # tests/tools drives the server with stand-in handlers: only the real app counts
        if not result.is_error and isinstance(self.app, AppContext):
            if RECORD:
                _record("mcp", spec.name, result.structured_content)
            for problem in _violations(strict_output_schema(spec), result.structured_content):
                problems.append(f"tool {spec.name}: {problem}")
        return result

    monkeypatch.setattr(tool_server._Runner, "call", checked_call)

    def check_rest(route: Any, status: int, raw: bytes) -> None:
        if not (200 <= status < 300 and raw):
            return
        body = json.loads(raw)
        name = f"{route.method} {route.path}"
        if RECORD:
            _record("rest", name, body)
        schema = _rest_schema(route)
        if schema is not None:
            for problem in _violations(schema, body):
                problems.append(f"{name}: {problem}")

    original_endpoint = routing._endpoint

    def checked_endpoint(ctx, methods):
        inner = original_endpoint(ctx, methods)

        async def endpoint(request):
            response = await inner(request)
            check_rest(methods[request.method], response.status_code, response.body)
            return response

        return endpoint

    monkeypatch.setattr(routing, "_endpoint", checked_endpoint)

    # the fast lane answers for the routes declared in routes/metering.py
    declared = {(r.method, r.path): r for r in client_api().routes}
    original_lane = hotpath.HotPaths.__call__

    def lane_route(scope: Any) -> Any:
        method, path = scope.get("method"), scope.get("path", "")
        if scope["type"] != "http":
            return None
        if method == "POST" and path in (hotpath.EVENTS_PATH, hotpath.BATCH_PATH):
            return declared[(method, path)]
        if method == "GET" and path.startswith(hotpath.CHECK_PREFIX):
            if path[len(hotpath.CHECK_PREFIX) :].count("/") == 1:
                return declared[(method, hotpath.CHECK_PREFIX + "{ref}/{featureKey}")]
        return None

    async def checked_lane(self, scope, receive, send):
        route = lane_route(scope)
        if route is None:
            return await original_lane(self, scope, receive, send)
        sent: dict[str, Any] = {"body": b""}

        async def capture(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["body"] += message.get("body", b"")
            await send(message)

        await original_lane(self, scope, receive, capture)
        check_rest(route, sent.get("status", 0), sent["body"])

    monkeypatch.setattr(hotpath.HotPaths, "__call__", checked_lane)
    yield
    if problems:
        unique = list(dict.fromkeys(problems))
        pytest.fail(
            "answers that do not match their declared schema (declare new fields in "
            "tanso_mcp/services/outputs.py):\n" + "\n".join(unique[:40]),
            pytrace=False,
        )
