"""The optional ``testing`` tool group: the same use cases as the test-clock endpoints."""

from __future__ import annotations

from typing import Any

from ...bootstrap import AppContext
from ...principal import Principal
from ...services import test_clock as svc


async def get_test_clock(app: AppContext, p: Principal, params: Any):
    return await svc.clock_state(app, p)


async def advance_test_clock(app: AppContext, p: Principal, params: Any):
    return await svc.advance(app, p, days=params.days, seconds=params.seconds, to=params.to)


async def set_test_clock_frozen(app: AppContext, p: Principal, params: Any):
    return await svc.set_frozen(app, p, params.frozen)
