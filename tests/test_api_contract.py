"""The served ``/openapi.json`` holds: schemathesis runs every phase (examples,
coverage, fuzzing, stateful) against a real ``tanso-mcp serve`` with a fixed seed and
example budget, and finds no server error, no answer that violates its declared schema,
status code, content type or headers, and no method answered without ``Allow``."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tanso_mcp.bootstrap import build_context
from tanso_mcp.services import tenancy
from tanso_mcp.settings import Settings
from tests.contract_report import report
from tests.factories import make_plan
from tests.servekit import Served

pytestmark = pytest.mark.anyio

SEED = 42
EXAMPLES = 10
CHECKS = ",".join(
    [
        "not_a_server_error",
        "response_schema_conformance",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "unsupported_method",
        "ignored_auth",
    ]
)


def _st() -> list[str]:
    found = shutil.which("st", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is part of the test extra: pip install -e '.[test]'"
    return [found]


async def seed(db_url: str, base: str, key: str) -> None:
    """Data for the answers to carry (plans and invoices with money, a subscription,
    credits, usage), so their schemas are checked on real values, not empty lists."""
    ctx = build_context(Settings(database_url=db_url, jobs_enabled=False))
    try:
        async with ctx.db.reader() as s:
            env = (await tenancy.get_environment(s, "default", "test")).id
        plan = await make_plan(
            ctx,
            env,
            key="pro",
            price="49.90",
            features={
                "api": '{"pricing": {"model": "usage", "usage_unit_type": "call", '
                '"price_per_unit": 0.02, "max_usage": 1000}}'
            },
        )
    finally:
        await ctx.close()
    h = {"X-API-Key": key}
    async with httpx.AsyncClient(base_url=base + "/api/v1/client", timeout=30) as http:
        for r in (
            await http.post("/customers", json={"customerReferenceId": "c1"}, headers=h),
            await http.post(
                "/subscriptions",
                json={"customerReferenceId": "c1", "planId": plan["plan_id"]},
                headers=h,
            ),
            await http.post(
                "/credits/c1/grants",
                json={"denomination": "tokens", "amount": "12.5", "idempotencyKey": "g1"},
                headers=h,
            ),
            await http.post(
                "/events",
                json={
                    "eventName": "call",
                    "customerReferenceId": "c1",
                    "featureKey": "api",
                    "usageUnits": "2.5",
                },
                headers=h,
            ),
        ):
            assert r.status_code in (200, 201), r.text


async def test_schemathesis_finds_nothing(db_url, tmp_path):
    served = Served(tmp_path, db_url)
    try:
        served.wait_ready()
        key = served.admin_key()
        await seed(db_url, served.base, key)
        run = await asyncio.to_thread(
            subprocess.run,
            [
                *_st(),
                "run",
                f"{served.base}/openapi.json",
                "-H",
                f"X-API-Key: {key}",
                "--seed",
                str(SEED),
                "--max-examples",
                str(EXAMPLES),
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--checks",
                CHECKS,
                "--workers",
                "1",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    finally:
        served.terminate()
    out = run.stdout + run.stderr
    generated = re.search(r"(\d+) generated", out)
    failures = re.search(r"(\d+) (?:unique )?failures?", out.split("Test cases:")[-1])
    report(
        f"schemathesis: {generated.group(1) if generated else '?'} requests "
        f"(seed {SEED}, {EXAMPLES} examples per operation, all phases), "
        f"{failures.group(1) if failures else 0} failures, exit {run.returncode}"
    )
    assert run.returncode == 0, out[-6000:]
    assert generated and int(generated.group(1)) > 500, out[-3000:]
    assert "Traceback" not in served.output, served.output[-3000:]
