"""Test clock endpoints (test environments only)."""

from __future__ import annotations

from pydantic import AwareDatetime, Field, StrictBool, model_validator

from ...errors import InvalidRequest
from ...services import test_clock
from ...services.outputs import ClockOut
from ..routing import Api, ApiModel, Call

api = Api("/api/v1/client")


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


class FreezeClock(ApiModel):
    frozen: StrictBool


@api.route(
    "GET",
    "/test-clock",
    role="read",
    summary="Current time of the test clock, whether it is frozen, and its offset from real time",
    response=ClockOut,
    tags=["test clock"],
)
async def get_test_clock(call: Call):
    return await test_clock.clock_state(call.ctx, call.principal)


@api.route(
    "POST",
    "/test-clock",
    role="admin",
    body=FreezeClock,
    response=ClockOut,
    summary="Freeze the test clock at its current instant, or let it run with real time again",
    tags=["test clock"],
)
async def set_test_clock_frozen(call: Call):
    return await test_clock.set_frozen(call.ctx, call.principal, call.body.frozen)


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
    body: AdvanceClock = call.body
    return await test_clock.advance(
        call.ctx, call.principal, days=body.days, seconds=body.seconds, to=body.to
    )
