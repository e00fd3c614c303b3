#!/usr/bin/env python3
"""tanso-mcp benchmark: throughput and latency of each scenario beside the bare-framework
ceiling measured in the same run on the same machine.

    python bench/run.py                         # every scenario (about 8 minutes)
    python bench/run.py --quick                 # short runs, one repetition
    python bench/run.py --scenarios ceiling_get entitlement_check --json out.json
    python bench/run.py --list

Each scenario gets its own server process on a free 127.0.0.1 port (a fresh temporary
directory, so a fresh database for the product), a setup hook, one probe request checked
by Python, a wrk warm-up, then several timed wrk runs whose median is reported. The
ceilings a selected scenario is compared with are always run too, on their own and,
unless --no-pair, alternately with the scenario (its "% of ceiling" is the median of
the per-pair ratios). This is a benchmark, not a test: it exits 0 unless the harness
itself cannot run. See bench/README.md.
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
from scenarios import BY_NAME, SCENARIOS, TANSO, tanso_name  # noqa: E402

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
    paired_ceiling_req_per_s: float | None = None  # the ceiling timed alternately with it
    note: str = ""
    runs: list[dict] = field(default_factory=list)
    paired_runs: list[dict] = field(default_factory=list)
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


class Live:
    """A scenario's server, started, set up and probed: ready for load."""

    def __init__(self, scenario: Scenario, cfg: RunConfig):
        self.scenario = scenario
        self.cfg = cfg
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{scenario.name}-"))
        self.server: ServerProcess | None = None
        self.ctx: Context | None = None
        self.shape = None

    def start(self) -> None:
        s, cfg = self.scenario, self.cfg
        port = free_port()
        sctx = ServerContext(port=port, tmpdir=self.tmp)
        argv = s.server.argv(sctx)
        env = s.server.env(sctx)
        if cfg.pin:
            argv = ["taskset", "-c", "0", *argv]
        base_url = f"http://127.0.0.1:{port}"
        loadgen.assert_loopback(base_url)
        log(f"  starting {s.server.name} on {base_url} for {s.name}")
        self.server = ServerProcess(argv, env, self.tmp / "server.log", cwd=REPO_DIR)
        self.server.wait_ready(base_url, s.server.ready_path, s.server.startup_timeout_s)
        self.ctx = Context(s, self.server, base_url, self.tmp, cfg)
        if s.setup:
            t0 = time.monotonic()
            s.setup(self.ctx)
            log(f"  setup of {s.name} done in {time.monotonic() - t0:.1f}s")
        if s.run is None:
            self.shape = request_shape(s, self.ctx.state)
            probe(self.ctx, s, self.shape)
            self.ctx.close()

    def load(self, duration_s: float) -> loadgen.WrkRun:
        assert self.ctx is not None and self.shape is not None
        method, path, headers, body = self.shape
        return loadgen.run_wrk(
            self.cfg.wrk,
            self.ctx.base_url,
            method,
            path,
            headers,
            body,
            duration_s=duration_s,
            connections=self.connections,
            threads=self.cfg.threads,
            timeout_s=self.cfg.timeout_s,
            uid_header=self.scenario.uid_header,
            cpus="1" if self.cfg.pin else None,
        )

    @property
    def connections(self) -> int:
        return self.scenario.connections or self.cfg.connections

    def stop(self, keep: bool = False) -> None:
        if self.ctx is not None:
            self.ctx.close()
        if self.server is not None:
            self.server.stop()
        if keep:
            log(f"  kept {self.tmp}")
        else:
            subprocess.run(["rm", "-rf", str(self.tmp)], check=False)


def _fail(res: Result, e: BaseException, live: Live | None, cfg: RunConfig) -> None:
    if isinstance(e, ScenarioUnavailable):
        res.status, res.reason = "n/a", str(e)
        return
    text = str(e)
    res.status, res.reason = "error", (text.splitlines()[0][:300] if text else repr(e))
    log(f"  ERROR in {res.name}: {e}")
    if cfg.verbose or not isinstance(e, SetupError):
        log(traceback.format_exc())
    if live is not None and live.server is not None:
        log("  last server output:\n" + live.server.tail(20))


def _log_run(label: str, run: loadgen.WrkRun) -> None:
    log(
        f"    {label}: {run.req_per_s:,.0f} req/s  p50 {run.p50_ms:.2f} ms"
        f"  p99 {run.p99_ms:.2f} ms  errors {run.errors}"
    )


def run_scenario(
    scenario: Scenario, cfg: RunConfig, keep: bool, paired: Scenario | None = None
) -> Result:
    """Start, set up, probe, warm up and time one scenario.

    With `paired` (its ceiling), the ceiling's server runs beside it and the timed runs
    alternate between the two (C S, S C, C S, …), so both see the same machine; the
    share of the ceiling is then the median of the per-pair ratios. A ceiling that
    cannot start leaves the scenario unpaired.
    """
    res = Result(name=scenario.name, unit=scenario.unit, ceiling=scenario.ceiling)
    if scenario.target:
        res.target = scenario.target.describe(scenario.unit)
    t0 = time.monotonic()
    live = Live(scenario, cfg)
    twin: Live | None = None
    try:
        live.start()
        if scenario.run is not None:
            m = scenario.run(live.ctx, cfg)
            res.throughput, res.req_per_s = m.throughput, m.req_per_s
            res.p50_ms, res.p99_ms, res.errors = m.p50_ms, m.p99_ms, m.errors
            res.runs, res.note = m.runs, m.note
            return res
        if paired is not None and paired.run is None:
            twin = Live(paired, cfg)
            try:
                twin.start()
            except Exception as e:  # noqa: BLE001 - pairing is best effort
                log(f"  paired ceiling {paired.name} unavailable ({e}); running unpaired")
                twin.stop()
                twin = None
        if cfg.warmup_s > 0:
            for lv in (twin, live):
                if lv is not None:
                    w = lv.load(cfg.warmup_s)
                    if cfg.verbose:
                        _log_run(f"warm-up {lv.scenario.name}", w)
        runs, twin_runs = [], []
        for i in range(cfg.reps):
            order = [live] if twin is None else ([twin, live] if i % 2 == 0 else [live, twin])
            for lv in order:
                run = lv.load(cfg.duration_s)
                (runs if lv is live else twin_runs).append(run)
                _log_run(f"run {i + 1}/{cfg.reps} {lv.scenario.name}", run)
        res.req_per_s = statistics.median(r.req_per_s for r in runs)
        res.throughput = res.req_per_s * scenario.items_per_request
        res.p50_ms = statistics.median(r.p50_ms for r in runs)
        res.p99_ms = statistics.median(r.p99_ms for r in runs)
        res.errors = sum(r.errors for r in runs)
        res.requests = sum(r.requests for r in runs)
        res.runs = [r.to_dict() for r in runs]
        lo, hi = min(r.req_per_s for r in runs), max(r.req_per_s for r in runs)
        res.note = (
            f"{live.connections} connections, {cfg.threads} wrk thread(s), median of "
            f"{cfg.reps} runs ({lo:,.0f}–{hi:,.0f} req/s)"
        )
        if twin_runs:
            ratios = [
                r.req_per_s / c.req_per_s
                for r, c in zip(runs, twin_runs, strict=True)
                if c.req_per_s > 0
            ]
            res.paired_ceiling_req_per_s = statistics.median(c.req_per_s for c in twin_runs)
            res.pct_of_ceiling = statistics.median(ratios) if ratios else None
            res.paired_runs = [c.to_dict() for c in twin_runs]
            res.note += (
                f"; paired {paired.name} runs: median {res.paired_ceiling_req_per_s:,.0f} req/s"
            )
    except Exception as e:  # a broken scenario must not stop the others
        _fail(res, e, live, cfg)
    finally:
        if twin is not None:
            twin.stop(keep)
        live.stop(keep)
        res.seconds = time.monotonic() - t0
    return res


# --------------------------------------------------------------------------- table


def fmt_num(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def markdown_table(results: list[Result], self_check: bool = False) -> str:
    head = "| scenario | req/s | throughput | p50 ms | p99 ms | errors | % of ceiling | target |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        name = r.name
        if self_check and BY_NAME[r.name].product:
            name += " [self-check]"
        if r.status != "ok":
            why = f"{r.status} ({r.reason})".replace("|", "\\|")
            lines.append(f"| {name} | {why} | | | | | | {r.target or ''} |")
            continue
        thr = f"{fmt_num(r.throughput)} {r.unit}"
        if r.pct_of_ceiling is not None:
            paired = " (paired)" if r.paired_ceiling_req_per_s is not None else ""
            pct = f"{r.pct_of_ceiling:.0%} of {r.ceiling}{paired}"
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
            f"| {name} | {fmt_num(r.req_per_s)} | {thr} | {fmt_ms(r.p50_ms)} | "
            f"{fmt_ms(r.p99_ms)} | {errs} | {pct} | {target} |"
        )
    return "\n".join(lines)


def fill_ratios(results: list[Result]) -> None:
    by = {r.name: r for r in results}
    for r in results:
        c = by.get(r.ceiling) if r.ceiling else None
        if r.pct_of_ceiling is not None:
            pass  # measured against a paired ceiling, alternating runs
        elif r.status == "ok" and c and c.status == "ok" and c.req_per_s and r.req_per_s:
            r.pct_of_ceiling = r.req_per_s / c.req_per_s
        t = BY_NAME[r.name].target
        if r.status == "ok" and t:
            r.target_met = t.met(r.throughput, r.pct_of_ceiling)


# --------------------------------------------------------------------------- environment


def environment(cfg: RunConfig) -> dict:
    versions = {}
    for pkg in (
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "orjson",
        "mcp",
        "sqlalchemy",
        "aiosqlite",
        "tanso-mcp",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
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
        description="Benchmark tanso-mcp beside a bare Starlette ceiling (loopback only)."
    )
    p.add_argument(
        "--quick", action="store_true", help="3 s runs, 1 s warm-up, one repetition, 100 renewals"
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        metavar="NAME",
        help="scenarios to run (names or comma lists; default: all). The ceilings "
        "they compare with are added.",
    )
    p.add_argument("--json", metavar="OUT", help="also write all results as JSON to OUT")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--duration", type=float, help="seconds per timed run (default 6)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up (default 3)")
    p.add_argument("--reps", type=int, help="timed runs per scenario, median kept (default 5)")
    p.add_argument(
        "--connections",
        type=int,
        help="concurrent connections (default 64; scenarios may set their own)",
    )
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--renewals", type=int, help="subscriptions per advance (default 500)")
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin the server to CPU 0 and wrk to CPU 1"
    )
    p.add_argument(
        "--no-pair",
        action="store_true",
        help="do not time each scenario alternately with its ceiling; compare "
        "with the ceiling's own row instead",
    )
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    p.add_argument(
        "--tanso-cmd",
        metavar="CMD",
        help="command that starts the product (default: tanso-mcp from this "
        "Python's environment or PATH); `serve --host --port` is appended",
    )
    p.add_argument(
        "--self-check",
        action="store_true",
        help="check the harness: run the tanso-mcp scenarios against the in-memory "
        "stand-in bench/selfcheck_server.py (numbers mean nothing)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep each scenario's temporary directory (server log, database)",
    )
    p.add_argument(
        "--database",
        metavar="URL",
        help="serve the product on PostgreSQL (postgresql+asyncpg://…): each scenario gets a "
        "fresh database on that server, dropped at the end (default: a SQLite file)",
    )
    p.add_argument(
        "--workers",
        default="1",
        help="`tanso-mcp serve --workers N` (PostgreSQL only; N > 1 turns CPU pinning off); "
        "a comma list (e.g. 1,2) runs the selection once per count, each beside its own "
        "paired ceilings, and ends with the scaling between them",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def select(names: list[str] | None) -> list[Scenario]:
    if not names:
        return list(SCENARIOS)
    wanted = [n.strip() for arg in names for n in arg.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
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
    try:
        counts = [int(n) for n in str(args.workers).split(",") if n.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        print("--workers: a positive number or a comma list such as 1,2", file=sys.stderr)
        return 2
    quick = args.quick
    can_pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and _has_taskset()
    cfg = RunConfig(
        duration_s=args.duration or (3.0 if quick else 6.0),
        warmup_s=args.warmup if args.warmup is not None else (1.0 if quick else 3.0),
        reps=args.reps or (1 if quick else 5),
        connections=args.connections or 64,
        threads=max(1, args.threads),
        pin=can_pin and max(counts) <= 1,
        quick=quick,
        renewals=args.renewals or (100 if quick else 500),
        verbose=args.verbose,
    )
    if args.database:
        if not args.database.startswith("postgresql"):
            print("--database: a postgresql+asyncpg:// URL", file=sys.stderr)
            return 2
        os.environ["BENCH_DATABASE_URL"] = args.database
    if max(counts) > 1 and not args.database:
        print("--workers needs --database (SQLite is served by one process)", file=sys.stderr)
        return 2
    chosen = select(args.scenarios)
    if args.self_check:
        args.tanso_cmd = f"{sys.executable} {BENCH_DIR / 'selfcheck_server.py'}"
    if args.tanso_cmd:
        os.environ["BENCH_TANSO_CMD"] = args.tanso_cmd
    try:
        cfg.wrk = loadgen.ensure_wrk(install=not args.no_install, log=log)
    except loadgen.LoadgenUnavailable as e:
        log(f"cannot run the benchmark: {e}")
        return 2
    env = environment(cfg)
    passes: list[dict] = []
    for workers in counts:
        os.environ["BENCH_WORKERS"] = str(workers)
        cfg.pin = can_pin and workers <= 1
        TANSO.name = tanso_name()
        log(
            f"bench: {TANSO.name}: {len(chosen)} scenario(s); {cfg.duration_s:g}s x "
            f"{cfg.reps} after {cfg.warmup_s:g}s warm-up; {cfg.connections} connections; "
            f"{env['wrk']}; {env['cpus']} CPUs"
            f"{' (server CPU 0, wrk CPU 1)' if cfg.pin else ''}"
        )
        results: list[Result] = []
        for s in chosen:
            log(f"[{s.name}] {s.description}")
            paired = BY_NAME[s.ceiling] if (s.ceiling and not args.no_pair) else None
            r = run_scenario(s, cfg, keep=args.keep, paired=paired)
            if r.status != "ok":
                log(f"  -> {r.status}: {r.reason}")
            results.append(r)
        fill_ratios(results)
        if args.self_check:
            for r in results:
                if BY_NAME[r.name].product:
                    r.note = ("[self-check: in-memory stand-in, not the product] " + r.note).strip()
        print_pass(args, cfg, env, results)
        passes.append(
            {
                "workers": workers,
                "server": TANSO.name,
                "config": {k: v for k, v in vars(cfg).items() if k != "verbose"},
                "results": results,
            }
        )
    if len(passes) > 1:
        print()
        print(scaling_table(passes))
    if args.json:
        out = {
            "environment": env,
            "config": passes[0]["config"],
            "results": [vars(r) for r in passes[0]["results"]],
            "passes": [{**p, "results": [vars(r) for r in p["results"]]} for p in passes],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


def print_pass(args: argparse.Namespace, cfg: RunConfig, env: dict, results: list[Result]) -> None:
    print()
    print(
        f"tanso-mcp bench — {env['time']} — commit {env['commit'] or '?'} — "
        f"{env['cpus']} CPUs {env['cpu_model']} — Python {env['python']} — {env['wrk']}"
    )
    print(f"product: {TANSO.name}")
    print(
        f"{cfg.duration_s:g}s runs x {cfg.reps} (median) after {cfg.warmup_s:g}s warm-up, "
        f"{cfg.connections} connections unless noted, "
        f"{'server pinned to CPU 0 and wrk to CPU 1' if cfg.pin else 'no CPU pinning'}"
    )
    if args.self_check:
        print(
            "SELF-CHECK: the tanso-mcp rows ran against bench/selfcheck_server.py, an "
            "in-memory stand-in; their numbers say nothing about the product."
        )
    elif args.tanso_cmd:
        print(f"tanso-mcp started with: {args.tanso_cmd}")
    print()
    print(markdown_table(results, self_check=args.self_check))
    notes = [f"- {r.name}: {r.note}" for r in results if r.status == "ok" and r.note]
    if notes:
        print()
        print("\n".join(notes))


def scaling_table(passes: list[dict]) -> str:
    """Each product row of every pass against the first pass (usually one worker): the
    ratio of throughputs, and the ratio of the shares of their paired ceilings, which
    holds still when the machine's speed drifts between the passes."""
    base = {r.name: r for r in passes[0]["results"]}
    w0 = passes[0]["workers"]
    lines = [
        f"Scaling against {w0} worker{'s' if w0 > 1 else ''}:",
        "",
        "| scenario | workers | throughput | x throughput | % of ceiling | x % of ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in passes:
        for r in p["results"]:
            b = base.get(r.name)
            if not BY_NAME[r.name].product or r.status != "ok" or b is None or b.status != "ok":
                continue
            x_thr = r.throughput / b.throughput if r.throughput and b.throughput else None
            x_pct = (
                r.pct_of_ceiling / b.pct_of_ceiling
                if r.pct_of_ceiling and b.pct_of_ceiling
                else None
            )
            pct = f"{r.pct_of_ceiling:.0%}" if r.pct_of_ceiling is not None else "—"
            lines.append(
                f"| {r.name} | {p['workers']} | {fmt_num(r.throughput)} {r.unit} | "
                f"{'—' if x_thr is None else f'{x_thr:.2f}'} | {pct} | "
                f"{'—' if x_pct is None else f'{x_pct:.2f}'} |"
            )
    return "\n".join(lines)


def _has_taskset() -> bool:
    from shutil import which

    return which("taskset") is not None


if __name__ == "__main__":
    sys.exit(main())
