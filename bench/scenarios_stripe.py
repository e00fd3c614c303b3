"""Stripe Integration mode scenarios (see README.md, "Stripe mode").

The product runs against the project's fake Stripe server (``tests/stripe_fake``, a
subprocess on a free loopback port, started once per bench run), with an environment
switched to STRIPE_DRIVEN through the MCP setup tools:

- ``ingest_single_stripe`` / ``ingest_batch_stripe``: the ingest scenarios in that
  environment, each timed alternately with its native twin (``ingest_single`` /
  ``ingest_batch``), so "% of ceiling" reads as "% of native" (target: at least 90%).
  Ingest never calls Stripe; the overage reporter runs in the server's job loop meanwhile.
- ``stripe_meter_reporter``: the background reporter against batch ingest. Rounds of
  batches spread over many customers, then one job pass (``POST /test-clock/advance``
  with 0 s runs it; the server's own job loop is off), checked through the
  reconciliation view (nothing pending, everything reported). Throughput: meter events
  (customers) per second; the note compares with the batch ingest of the same events.
"""

from __future__ import annotations

import atexit
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import scenarios as base
from harness import (
    Context,
    Measurement,
    RunConfig,
    Scenario,
    ScenarioUnavailable,
    Server,
    ServerContext,
    SetupError,
    Target,
    find_key,
)

REPO = base.BENCH_DIR.parent
FAKE_KEY = "sk_test_bench_4242424242424242"
_fake: dict[str, Any] = {}


def fake_stripe_base() -> str:
    """The fake Stripe server's URL (started on first use, stopped at exit)."""
    if "url" in _fake:
        return _fake["url"]
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.stripe_fake.server",
                "--port",
                "0",
                "--api-key",
                FAKE_KEY,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=os.environ | {"PYTHONWARNINGS": "ignore"},
        )
    except OSError as exc:
        raise ScenarioUnavailable(f"cannot start the fake Stripe server: {exc}") from None
    line = proc.stdout.readline().decode() if proc.stdout else ""
    if not line.startswith("LISTENING "):
        proc.kill()
        raise ScenarioUnavailable(
            "the fake Stripe server did not start (pip install -e '.[test]' brings localstripe)"
        )

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)

    atexit.register(stop)
    _fake["url"] = f"http://127.0.0.1:{int(line.split()[1])}"
    return _fake["url"]


def _stripe_env(sctx: ServerContext) -> dict[str, str]:
    return {
        **base._tanso_env(sctx),
        "TANSO_STRIPE_API_BASE": fake_stripe_base(),
        "TANSO_PUBLIC_BASE_URL": f"http://127.0.0.1:{sctx.port}",
    }


TANSO_STRIPE = Server(
    name="tanso-mcp serve (STRIPE_DRIVEN)",  # on --database when given
    argv=base._tanso_argv,
    env=_stripe_env,
    ready_path="/readyz",
    startup_timeout_s=60,
)


def connect_stripe(ctx: Context) -> None:
    """Key, webhook endpoint, STRIPE_DRIVEN mode — through the MCP setup tools, on an
    empty fake Stripe account (one per scenario, as each scenario's server is new)."""
    import urllib.request

    urllib.request.urlopen(
        urllib.request.Request(fake_stripe_base() + "/_test/reset", method="POST"), timeout=10
    ).close()
    ctx.mcp("registerStripeApiKey", {"stripeApiKey": FAKE_KEY, "confirmAction": True})
    out = ctx.mcp("setupStripeIntegration", {"confirmAction": True})
    status = ctx.mcp("getStripeIntegrationStatus", {})
    if find_key(status, "stripeMode") != "STRIPE_DRIVEN":
        raise SetupError(f"setup did not switch to STRIPE_DRIVEN: {out!r} / {status!r}")


def _reporter_env(sctx: ServerContext) -> dict[str, str]:
    # the job loop off: each timed job pass (a test-clock advance) does the whole work
    return {**_stripe_env(sctx), "TANSO_JOBS_ENABLED": "false"}


TANSO_STRIPE_NO_LOOP = Server(
    name="tanso-mcp serve (STRIPE_DRIVEN, no job loop)",
    argv=base._tanso_argv,
    env=_reporter_env,
    ready_path="/readyz",
    startup_timeout_s=60,
)


def setup_stripe_customer(ctx: Context) -> None:
    base.tanso_admin_key(ctx)
    connect_stripe(ctx)
    base.tanso_catalog(ctx)
    ctx.state["ref"] = "cus_bench"
    ctx.state["subscription_id"] = base.tanso_subscribed_customer(ctx, "cus_bench")


# --------------------------------------------------------------------------- reporter


def setup_reporter(ctx: Context) -> None:
    base.tanso_admin_key(ctx)
    connect_stripe(ctx)
    base.tanso_catalog(ctx)
    n = 50 if ctx.cfg.quick else 200
    ctx.state["refs"] = [f"cus_meter_{i:04d}" for i in range(n)]
    for ref in ctx.state["refs"]:
        base.tanso_subscribed_customer(ctx, ref)


def _batch(refs: list[str], feature: str, offset: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex
    return {
        "events": [
            {
                "eventIdempotencyKey": f"{tag}-{i}",
                "eventName": "api_call",
                "customerReferenceId": refs[(offset + i) % len(refs)],
                "featureKey": feature,
                "usageUnits": 1,
            }
            for i in range(base.BATCH_SIZE)
        ]
    }


def run_reporter(ctx: Context, cfg: RunConfig) -> Measurement:
    refs: list[str] = ctx.state["refs"]
    feature = ctx.state["feature_key"]
    rounds = 2 if cfg.quick else max(3, cfg.reps)
    batches = 5 if cfg.quick else 20
    ingest_s: list[float] = []
    report_s: list[float] = []
    for r in range(rounds):
        t0 = time.perf_counter()
        for b in range(batches):
            ctx.api("POST", f"{base.API}/events/batch", _batch(refs, feature, b), need="batch")
        ingest_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ctx.api("POST", f"{base.API}/test-clock/advance", {"seconds": 0})
        report_s.append(time.perf_counter() - t0)
        view = ctx.api("GET", f"{base.API}/stripe/usage-reconciliation")
        pending = sum(float(i.get("unitsPending", 0)) for i in view.get("items", []))
        reported = sum(float(i.get("unitsReported", 0)) for i in view.get("items", []))
        if pending or reported != (r + 1) * batches * base.BATCH_SIZE:
            raise SetupError(
                f"round {r + 1}: {pending} units still pending, {reported} reported after "
                "the job pass"
            )
    events = batches * base.BATCH_SIZE
    per_pass = statistics.median(report_s)
    ingest = statistics.median(ingest_s)
    ms = sorted(t * 1000 for t in report_s)
    return Measurement(
        throughput=len(refs) / per_pass,
        p50_ms=statistics.median(ms),
        p99_ms=ms[-1],
        runs=[
            {"ingest_s": i, "report_s": p, "customers": len(refs), "events": events}
            for i, p in zip(ingest_s, report_s, strict=True)
        ],
        note=f"one pass forwards {len(refs)} customers' overage ({events} events, "
        f"{events / per_pass:,.0f} events/s covered) in {per_pass:.2f} s; batch ingest of "
        f"those events took {ingest:.2f} s ({events / ingest:,.0f} events/s). A pass costs "
        "one meter event per customer with new overage, whatever the number of events: "
        f"with a {JOB_INTERVAL_S:.0f} s job interval it keeps up with about "
        f"{JOB_INTERVAL_S * len(refs) / per_pass:,.0f} active customers per interval",
    )


JOB_INTERVAL_S = 30.0  # the jobs_interval_seconds default


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            name="ingest_single_stripe",
            description="ingest_single in a STRIPE_DRIVEN environment (fake Stripe), "
            "paired with native ingest_single",
            server=TANSO_STRIPE,
            method="POST",
            path=base.API + "/events",
            headers={**base._JSON, "X-API-Key": "{{api_key}}"},
            body=base.SINGLE_EVENT_BODY,
            setup=setup_stripe_customer,
            expect_status=(201,),
            check=base.check_event,
            ceiling="ingest_single",
            target=Target(pct_of_ceiling=0.90),
            product=True,
        ),
        Scenario(
            name="ingest_batch_stripe",
            description="ingest_batch in a STRIPE_DRIVEN environment (fake Stripe), "
            "paired with native ingest_batch",
            server=TANSO_STRIPE,
            method="POST",
            path=base.API + "/events/batch",
            headers={**base._JSON, "X-API-Key": "{{api_key}}"},
            body=base.batch_body,
            setup=setup_stripe_customer,
            expect_status=(200, 201, 207),
            check=base.check_batch,
            ceiling="ingest_batch",
            items_per_request=base.BATCH_SIZE,
            unit="events/s",
            connections=8,
            target=Target(pct_of_ceiling=0.90),
            product=True,
        ),
        Scenario(
            name="stripe_meter_reporter",
            description="background overage reporter vs batch ingest (events covered per "
            "second of reporter time), fake Stripe",
            server=TANSO_STRIPE_NO_LOOP,
            setup=setup_reporter,
            run=run_reporter,
            unit="meter events/s",
            product=True,
        ),
    ]
