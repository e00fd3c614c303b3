"""The `tanso-mcp` command line, run as a real process."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

TANSO = [sys.executable, "-m", "tanso_mcp.cli"]


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANSO_")}
    env["TANSO_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path, port):
    return subprocess.Popen(
        TANSO + ["serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_ready(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("server did not become ready")


def _stop(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_serve_prints_keys_once_and_serves(tmp_path):
    port = _free_port()
    proc = _serve(tmp_path, port)
    try:
        _wait_ready(port, proc)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/v1/client/test-clock").status_code == 401
    finally:
        out = _stop(proc)
    test_keys = re.findall(r"sk_test_[A-Za-z0-9_-]{20,}", out)
    live_keys = re.findall(r"sk_live_[A-Za-z0-9_-]{20,}", out)
    assert len(test_keys) == 1 and len(live_keys) == 1, out
    assert "127.0.0.1" in out

    # second start on the same database: keys are not shown again, and they still work
    proc = _serve(tmp_path, port)
    try:
        _wait_ready(port, proc)
        r = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/client/test-clock", headers={"X-API-Key": test_keys[0]}
        )
        assert r.status_code == 200
    finally:
        out2 = _stop(proc)
    assert "sk_test_" not in out2 and "sk_live_" not in out2


def test_bad_configuration_stops_startup_naming_the_setting(tmp_path):
    r = subprocess.run(
        TANSO + ["serve"],
        cwd=tmp_path,
        env=_env(tmp_path, TANSO_PORT="x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "TANSO_PORT" in r.stderr and "port" in r.stderr


def test_migrate_keys_and_jobs_commands(tmp_path):
    def run(*args):
        r = subprocess.run(
            TANSO + list(args),
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "revision 0001" in run("migrate") or "revision" in run("migrate")
    run("accounts", "create", "default")
    out = run("keys", "create", "--role", "read", "--mode", "live")
    key = re.search(r"sk_live_\S+", out).group(0)
    key_id = re.search(r"id:\s+(\S+)", out).group(1)
    listing = run("keys", "list")
    assert key_id in listing and key not in listing and "read" in listing
    run("keys", "revoke", key_id)
    assert "revoked" in run("keys", "list")
    assert "ran 0" in run("jobs", "run")


def test_keys_create_for_unknown_account_fails_cleanly(tmp_path):
    r = subprocess.run(
        TANSO + ["keys", "create", "--role", "admin", "--mode", "test", "--account", "ghost"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "ghost" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(autouse=True)
def _only_sqlite():
    # the CLI tests use their own SQLite files whatever the suite's database is
    yield
