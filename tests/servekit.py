"""Real processes for fault tests: ``tanso-mcp serve`` as a subprocess, a private
PostgreSQL cluster this test session starts and stops itself (never the shared one),
and a local HTTP receiver for outbound webhooks."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

TANSO = [sys.executable, "-m", "tanso_mcp.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- PostgreSQL


def pg_available() -> bool:
    return shutil.which("pg_config") is not None and shutil.which("runuser") is not None


class PgCluster:
    """A PostgreSQL cluster in a temporary directory on a free loopback port. ``initdb``
    refuses to run as root, so the cluster belongs to the ``postgres`` user."""

    def __init__(self) -> None:
        self.bindir = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
        self.root = Path(tempfile.mkdtemp(prefix="tanso-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        shutil.chown(self.root, "postgres", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", f"{self.bindir}/{tool}", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c max_connections=100"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            f'CREATE DATABASE "{name}"',
        )
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- serve


class Served:
    """``tanso-mcp serve`` on a free port; its output is collected by a thread."""

    def __init__(self, workdir: Path, database_url: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("TANSO_")}
        full.update({"TANSO_DATABASE_URL": database_url, "TANSO_JOBS_ENABLED": "false"})
        full.update(env)
        self.proc = subprocess.Popen(
            [*TANSO, "serve", "--port", str(self.port)],
            cwd=workdir,
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.output}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server did not become ready: {self.output}")

    def admin_key(self, mode: str = "test") -> str:
        keys = re.findall(rf"sk_{mode}_[A-Za-z0-9_-]{{20,}}", self.output)
        assert keys, self.output
        return keys[0]

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


# --------------------------------------------------------------------------- receiver


class Receiver:
    """A local HTTP endpoint recording the bodies POSTed to it; ``status`` is what it
    answers (set it to 503 to make deliveries fail)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if outer.status == 200:
                    outer.received.append((dict(self.headers), body))
                self.send_response(outer.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
