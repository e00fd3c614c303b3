"""Test clock endpoints (test environments only)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import AwareDatetime, Field, model_validator

from ...errors import InvalidRequest
from ...services.jobs import run_due
from ..routing import Api, ApiModel, Call

api = Api("/api/v1/client")

MAX_ADVANCE = timedelta(days=3660)


class AdvanceClock(ApiModel):
    days: int | None = Field(default=None, ge=0, le=3660)
    seconds: int | None = Field(default=None, ge=0, le=3660 * 86400)
    to: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [n for n in ("days", "seconds", "to") if getattr(self, n) is not None]
        if len(given) != 1:
            raise InvalidRequest("give exactly one of days, seconds or to", field="days")
        return self


class ClockOut(ApiModel):
    now: datetime
    jobsRun: int | None = None


def _require_test(call: Call) -> None:
    if call.principal.mode != "test":
        raise InvalidRequest(
            "test clocks exist only in test environments (use an sk_test_ key)", field="environment"
        )


@api.route(
    "GET",
    "/test-clock",
    role="read",
    summary="Current time of the test clock",
    response=ClockOut,
    tags=["test clock"],
)
async def get_test_clock(call: Call):
    _require_test(call)
    return {"now": await call.ctx.now(call.principal)}


@api.route(
    "POST",
    "/test-clock/advance",
    role="admin",
    body=AdvanceClock,
    response=ClockOut,
    summary="Move the test clock forward and run every job that became due, in time order",
    tags=["test clock"],
)
async def advance_test_clock(call: Call):
    _require_test(call)
    body: AdvanceClock = call.body
    env_id = call.principal.environment_id
    call.ctx.clocks.forget(env_id)  # read the stored value, not a cached one
    now = await call.ctx.now(call.principal)
    if body.to is not None:
        target = body.to
        if target < now:
            raise InvalidRequest("the test clock only moves forward", field="to")
        if target - now > MAX_ADVANCE:
            raise InvalidRequest("advance at most 3660 days at a time", field="to")
    elif body.days is not None:
        target = now + timedelta(days=body.days)
    else:
        target = now + timedelta(seconds=body.seconds or 0)
    ran = await run_due(call.ctx, env_id, until=target, move_clock=True)
    return {"now": await call.ctx.now(call.principal), "jobsRun": ran}
