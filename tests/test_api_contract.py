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

import pytest

from tests.contract_report import report
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


async def test_schemathesis_finds_nothing(db_url, tmp_path):
    served = Served(tmp_path, db_url)
    try:
        served.wait_ready()
        key = served.admin_key()
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
