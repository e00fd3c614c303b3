"""The optional ``testing`` tool group: see and move a test environment's clock.

Off by default; enabled with ``mcp_tool_groups = ["testing"]``. Each tool works only with
a test key (``sk_test_…``); a live environment always runs on real time.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, Field

from tanso_mcp.services.outputs import ClockOut
from tanso_mcp.tools.fields import Flag
from tanso_mcp.tools.specs import ToolParams, ToolSpec, _ann, group_tools

__all__ = ["TOOL_SPECS"]


class NoParams(ToolParams):
    pass


class AdvanceParams(ToolParams):
    days: Annotated[int | None, Field(ge=0, le=3660, description="Days to move forward")] = None
    seconds: Annotated[
        int | None, Field(ge=0, le=3660 * 86400, description="Seconds to move forward")
    ] = None
    to: Annotated[
        AwareDatetime | None,
        Field(description="Instant to move to (ISO 8601 with a time zone), not in the past"),
    ] = None


class FrozenParams(ToolParams):
    frozen: Annotated[
        Flag,
        Field(
            description="true: stop the clock at its current instant; false: let it run "
            "with real time again from there"
        ),
    ]


_tool = group_tools("testing", "test clocks")

TOOL_SPECS: tuple[ToolSpec, ...] = (
    _tool(
        "getTestClock",
        "Get test clock",
        "Shows the current time of this test environment's clock, whether it is frozen, "
        "and how far it is ahead of real time. A test environment's clock runs with "
        "real time, shifted by every advance. Test keys only.",
        NoParams,
        role="read",
        handler="get_test_clock",
        answer=ClockOut,
    ),
    _tool(
        "advanceTestClock",
        "Advance test clock",
        "Moves this test environment's clock forward by `days` or `seconds`, or to the "
        "instant `to` (give exactly one), and runs every job that became due on the way "
        "(renewals, invoice due dates, grace periods, credit expiry) in time order "
        "before answering. The clock never moves back. Test keys only.",
        AdvanceParams,
        role="admin",
        handler="advance_test_clock",
        answer=ClockOut,
        annotations=_ann(),
    ),
    _tool(
        "setTestClockFrozen",
        "Freeze or unfreeze test clock",
        "frozen: true stops this test environment's clock at its current instant, for "
        "scripted tests that need exact times (only advances move it then); "
        "frozen: false lets it run with real time again from where it stands. "
        "Test keys only.",
        FrozenParams,
        role="admin",
        handler="set_test_clock_frozen",
        answer=ClockOut,
        annotations=_ann(idempotent=True),
    ),
)
