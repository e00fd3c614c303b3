#!/usr/bin/env python3
"""Memory soak: one `tanso-mcp serve` under a mixed load (entitlement checks and single
ingest at once) for a while, its resident memory sampled throughout.

    python bench/soak.py                                   # 10 minutes on SQLite
    python bench/soak.py --minutes 10 --database postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

Prints the server's RSS after the warm-up and at the end, and the growth in percent
(target: at most 10 %). A benchmark, not a test: bounded in time, loopback only.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from harness import RunConfig, request_shape  # noqa: E402
from run import Live  # noqa: E402
from scenarios import BY_NAME, TANSO, tanso_name  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn's workers), in MiB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before the first sample")
    ap.add_argument("--database", help="postgresql+asyncpg://… (default: SQLite)")
    args = ap.parse_args()
    if args.database:
        os.environ["BENCH_DATABASE_URL"] = args.database
    TANSO.name = tanso_name()

    cfg = RunConfig(pin=False)
    cfg.wrk = loadgen.ensure_wrk(install=True, log=print)
    live = Live(BY_NAME["entitlement_check"], cfg)
    live.start()
    try:
        assert live.ctx is not None and live.server is not None
        shapes = {
            "check": live.shape,
            "ingest": request_shape(BY_NAME["ingest_single"], live.ctx.state),
        }
        pid = live.server.proc.pid
        deadline = time.monotonic() + args.warmup + args.minutes * 60
        totals = {name: 0 for name in shapes}
        errors = {name: 0 for name in shapes}

        def drive(name: str) -> None:
            method, path, headers, body = shapes[name]
            while time.monotonic() < deadline - 1:
                run = loadgen.run_wrk(
                    cfg.wrk,
                    live.ctx.base_url,
                    method,
                    path,
                    headers,
                    body,
                    duration_s=min(30.0, max(1.0, deadline - time.monotonic())),
                    connections=32,
                    uid_header=BY_NAME[
                        "ingest_single" if name == "ingest" else "entitlement_check"
                    ].uid_header,
                )
                totals[name] += run.requests
                errors[name] += run.errors

        threads = [threading.Thread(target=drive, args=(n,), daemon=True) for n in shapes]
        for t in threads:
            t.start()
        time.sleep(args.warmup)
        start = rss_mib(pid)
        print(f"{TANSO.name}: RSS after {args.warmup:.0f} s warm-up: {start:.1f} MiB", flush=True)
        samples = [start]
        while time.monotonic() < deadline:
            time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
            samples.append(rss_mib(pid))
            print(f"  {len(samples) * 30 - 30:>4} s: {samples[-1]:.1f} MiB", flush=True)
        for t in threads:
            t.join(timeout=60)
        end = samples[-1]
        growth = (end - start) / start * 100 if start else 0.0
        print(
            f"{TANSO.name}: RSS start {start:.1f} MiB, end {end:.1f} MiB, growth {growth:+.1f} % "
            f"over {args.minutes:g} min; requests: {totals}, errors: {errors}"
        )
        return 0
    finally:
        live.stop()


if __name__ == "__main__":
    sys.exit(main())
