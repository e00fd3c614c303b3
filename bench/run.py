#!/usr/bin/env python3
"""tanso-mcp benchmark: throughput and latency of each scenario beside the bare-framework
ceiling measured in the same run on the same machine.

    python bench/run.py                         # every scenario (about 6 minutes)
    python bench/run.py --quick                 # short runs, one repetition
    python bench/run.py --scenarios ceiling_get entitlement_check --json out.json
    python bench/run.py --list

Each scenario gets its own server process on a free 127.0.0.1 port (a fresh temporary
directory, so a fresh database for the product), a setup hook, one probe request checked
by Python, a wrk warm-up, then several timed wrk runs whose median is reported. The
ceilings a selected scenario is compared with are always run too. This is a benchmark,
not a test: it exits 0 unless the harness itself cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from harness import (  # noqa: E402
    Context,
    RunConfig,
    Scenario,
    ScenarioUnavailable,
    ServerContext,
    ServerProcess,
    SetupError,
    free_port,
    request_shape,
)
from scenarios import BY_NAME, SCENARIOS  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent


@dataclass
class Result:
    name: str
    status: str = "ok"  # ok | n/a | error
    reason: str = ""
    unit: str = "req/s"
    req_per_s: float | None = None
    throughput: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    requests: int = 0
    ceiling: str | None = None
    pct_of_ceiling: float | None = None
    target: str | None = None
    target_met: bool | None = None
    note: str = ""
    runs: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- one scenario


def probe(ctx: Context, scenario: Scenario, shape) -> None:
    """Send the request once from Python and check the answer before timing it."""
    method, path, headers, body = shape
    if body is not None:
        body = body.replace("{{uid}}", f"probe-{os.getpid()}-{time.time_ns()}")
    r = ctx.request(method, path, headers=headers, body=body)
    if r.status == 404:
        raise ScenarioUnavailable(f"{method} {path.split('?')[0]} answered 404")
    if r.status not in scenario.expect_status:
        raise SetupError(f"probe {method} {path} answered {r.status}: {r.text[:300]}")
    if scenario.check:
        problem = scenario.check(r.status, r.json)
        if problem:
            raise SetupError(f"probe answer is wrong: {problem}")


def run_http(ctx: Context, scenario: Scenario, cfg: RunConfig, res: Result) -> None:
    shape = request_shape(scenario, ctx.state)
    probe(ctx, scenario, shape)
    ctx.close()
    method, path, headers, body = shape
    conns = scenario.connections or cfg.connections
    wrk_cpus = "1" if cfg.pin else None

    def once(duration: float) -> loadgen.WrkRun:
        return loadgen.run_wrk(
            cfg.wrk, ctx.base_url, method, path, headers, body,
            duration_s=duration, connections=conns, threads=cfg.threads,
            timeout_s=cfg.timeout_s, uid_header=scenario.uid_header, cpus=wrk_cpus,
        )

    if cfg.warmup_s > 0:
        w = once(cfg.warmup_s)
        if cfg.verbose:
            log(f"    warm-up: {w.req_per_s:,.0f} req/s, {w.errors} errors")
    runs = []
    for i in range(cfg.reps):
        run = once(cfg.duration_s)
        runs.append(run)
        log(f"    run {i + 1}/{cfg.reps}: {run.req_per_s:,.0f} req/s  p50 {run.p50_ms:.2f} ms"
            f"  p99 {run.p99_ms:.2f} ms  errors {run.errors}")
    res.req_per_s = statistics.median(r.req_per_s for r in runs)
    res.throughput = res.req_per_s * scenario.items_per_request
    res.p50_ms = statistics.median(r.p50_ms for r in runs)
    res.p99_ms = statistics.median(r.p99_ms for r in runs)
    res.errors = sum(r.errors for r in runs)
    res.requests = sum(r.requests for r in runs)
    res.runs = [r.to_dict() for r in runs]
    res.note = f"{conns} connections, {cfg.threads} wrk thread(s), median of {cfg.reps}"


def run_scenario(scenario: Scenario, cfg: RunConfig, keep: bool) -> Result:
    res = Result(name=scenario.name, unit=scenario.unit, ceiling=scenario.ceiling)
    if scenario.target:
        res.target = scenario.target.describe(scenario.unit)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{scenario.name}-"))
    server = None
    ctx = None
    t0 = time.monotonic()
    try:
        port = free_port()
        sctx = ServerContext(port=port, tmpdir=tmp)
        argv = scenario.server.argv(sctx)
        env = scenario.server.env(sctx)
        if cfg.pin:
            argv = ["taskset", "-c", "0", *argv]
        base_url = f"http://127.0.0.1:{port}"
        loadgen.assert_loopback(base_url)
        log(f"  starting {scenario.server.name} on {base_url}")
        server = ServerProcess(argv, env, tmp / "server.log", cwd=REPO_DIR)
        server.wait_ready(base_url, scenario.server.ready_path, scenario.server.startup_timeout_s)
        ctx = Context(scenario, server, base_url, tmp, cfg)
        if scenario.setup:
            s0 = time.monotonic()
            scenario.setup(ctx)
            log(f"  setup done in {time.monotonic() - s0:.1f}s")
        if scenario.run is not None:
            m = scenario.run(ctx, cfg)
            res.throughput, res.req_per_s = m.throughput, m.req_per_s
            res.p50_ms, res.p99_ms, res.errors = m.p50_ms, m.p99_ms, m.errors
            res.runs, res.note = m.runs, m.note
        else:
            run_http(ctx, scenario, cfg, res)
    except ScenarioUnavailable as e:
        res.status, res.reason = "n/a", str(e)
    except (SetupError, Exception) as e:  # a broken scenario must not stop the others
        res.status, res.reason = "error", str(e).splitlines()[0][:300] if str(e) else repr(e)
        log(f"  ERROR in {scenario.name}: {e}")
        if cfg.verbose or not isinstance(e, SetupError):
            log(traceback.format_exc())
        if server is not None:
            log("  last server output:\n" + server.tail(20))
    finally:
        if ctx is not None:
            ctx.close()
        if server is not None:
            server.stop()
        if keep:
            log(f"  kept {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    res.seconds = time.monotonic() - t0
    return res


# --------------------------------------------------------------------------- table


def fmt_num(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def markdown_table(results: list[Result]) -> str:
    head = ("| scenario | req/s | throughput | p50 ms | p99 ms | errors | % of ceiling "
            "| target |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        if r.status != "ok":
            why = f"{r.status} ({r.reason})"
            lines.append(f"| {r.name} | {why} | | | | | | {r.target or ''} |")
            continue
        thr = f"{fmt_num(r.throughput)} {r.unit}"
        if r.pct_of_ceiling is not None:
            pct = f"{r.pct_of_ceiling:.0%} of {r.ceiling}"
        elif r.ceiling:
            pct = f"— ({r.ceiling} n/a)"
        else:
            pct = "ceiling" if BY_NAME[r.name].is_ceiling else "—"
        target = ""
        if r.target:
            mark = {True: "met", False: "MISSED", None: "?"}[r.target_met]
            target = f"{r.target}: {mark}"
        errs = str(r.errors)
        if r.requests and r.errors:
            errs = f"{r.errors} ({r.errors / r.requests:.1%})"
        lines.append(
            f"| {r.name} | {fmt_num(r.req_per_s)} | {thr} | {fmt_ms(r.p50_ms)} | "
            f"{fmt_ms(r.p99_ms)} | {errs} | {pct} | {target} |"
        )
    return "\n".join(lines)


def fill_ratios(results: list[Result]) -> None:
    by = {r.name: r for r in results}
    for r in results:
        c = by.get(r.ceiling) if r.ceiling else None
        if r.status == "ok" and c and c.status == "ok" and c.req_per_s and r.req_per_s:
            r.pct_of_ceiling = r.req_per_s / c.req_per_s
        t = BY_NAME[r.name].target
        if r.status == "ok" and t:
            r.target_met = t.met(r.throughput, r.pct_of_ceiling)


# --------------------------------------------------------------------------- environment


def environment(cfg: RunConfig) -> dict:
    versions = {}
    for pkg in ("starlette", "uvicorn", "uvloop", "httptools", "orjson", "mcp", "sqlalchemy",
                "aiosqlite", "tanso-mcp"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "wrk": loadgen.wrk_version(cfg.wrk),
        "packages": versions,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark tanso-mcp beside a bare Starlette ceiling (loopback only).")
    p.add_argument("--quick", action="store_true",
                   help="3 s runs, 1 s warm-up, one repetition, 100 renewals")
    p.add_argument("--scenarios", nargs="+", metavar="NAME",
                   help="scenarios to run (names or comma lists; default: all). The ceilings "
                        "they compare with are added.")
    p.add_argument("--json", metavar="OUT", help="also write all results as JSON to OUT")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--duration", type=float, help="seconds per timed run (default 10)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up (default 3)")
    p.add_argument("--reps", type=int, help="timed runs per scenario, median kept (default 3)")
    p.add_argument("--connections", type=int,
                   help="concurrent connections (default 64; scenarios may set their own)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--renewals", type=int, help="subscriptions per advance (default 500)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the server to CPU 0 and wrk to CPU 1")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    p.add_argument("--keep", action="store_true",
                   help="keep each scenario's temporary directory (server log, database)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def select(names: list[str] | None) -> list[Scenario]:
    if not names:
        return list(SCENARIOS)
    wanted = [n.strip() for arg in names for n in arg.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; "
                         f"known: {', '.join(BY_NAME)}")
    chosen: set[str] = set()

    def add(name: str) -> None:
        if name in chosen:
            return
        chosen.add(name)
        c = BY_NAME[name].ceiling
        if c:
            add(c)

    for n in wanted:
        add(n)
    return [s for s in SCENARIOS if s.name in chosen]  # registry order: ceilings first


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            kind = "ceiling" if s.is_ceiling else ("tanso-mcp" if s.product else "")
            vs = f" (vs {s.ceiling})" if s.ceiling else ""
            print(f"{s.name:20} {kind:10} {s.description}{vs}")
        return 0
    quick = args.quick
    cfg = RunConfig(
        duration_s=args.duration or (3.0 if quick else 10.0),
        warmup_s=args.warmup if args.warmup is not None else (1.0 if quick else 3.0),
        reps=args.reps or (1 if quick else 3),
        connections=args.connections or 64,
        threads=max(1, args.threads),
        pin=not args.no_pin and (os.cpu_count() or 1) >= 2 and _has_taskset(),
        quick=quick,
        renewals=args.renewals or (100 if quick else 500),
        verbose=args.verbose,
    )
    chosen = select(args.scenarios)
    try:
        cfg.wrk = loadgen.ensure_wrk(install=not args.no_install, log=log)
    except loadgen.LoadgenUnavailable as e:
        log(f"cannot run the benchmark: {e}")
        return 2
    env = environment(cfg)
    log(f"bench: {len(chosen)} scenario(s); {cfg.duration_s:g}s x {cfg.reps} after "
        f"{cfg.warmup_s:g}s warm-up; {cfg.connections} connections; {env['wrk']}; "
        f"{env['cpus']} CPUs{' (server CPU 0, wrk CPU 1)' if cfg.pin else ''}")
    results: list[Result] = []
    for s in chosen:
        log(f"[{s.name}] {s.description}")
        r = run_scenario(s, cfg, keep=args.keep)
        if r.status != "ok":
            log(f"  -> {r.status}: {r.reason}")
        results.append(r)
    fill_ratios(results)
    print()
    print(f"tanso-mcp bench — {env['time']} — commit {env['commit'] or '?'} — "
          f"{env['cpus']} CPUs {env['cpu_model']} — Python {env['python']} — {env['wrk']}")
    print(f"{cfg.duration_s:g}s runs x {cfg.reps} (median) after {cfg.warmup_s:g}s warm-up, "
          f"{cfg.connections} connections unless noted, "
          f"{'server pinned to CPU 0 and wrk to CPU 1' if cfg.pin else 'no CPU pinning'}")
    print()
    print(markdown_table(results))
    notes = [f"- {r.name}: {r.note}" for r in results if r.status == "ok" and r.note]
    if notes:
        print()
        print("\n".join(notes))
    if args.json:
        out = {
            "environment": env,
            "config": {k: v for k, v in vars(cfg).items() if k != "verbose"},
            "results": [vars(r) for r in results],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


def _has_taskset() -> bool:
    from shutil import which

    return which("taskset") is not None


if __name__ == "__main__":
    sys.exit(main())
