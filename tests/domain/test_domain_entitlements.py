from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tanso_mcp.domain.entitlements import (
    REASON_CREDITS,
    REASON_LIMIT,
    attribute,
    eligible_at,
    event_time_problem,
    grants_features,
    is_past_due,
    limit_q,
    simulate,
    subscription_status,
    verdict,
)

NOW = datetime(2026, 1, 15, 10, tzinfo=UTC)


@dataclass
class Sub:
    id: str
    started_at: datetime
    room: bool = True


def test_status_and_past_due():
    assert is_past_due({"PAID", "PAST_DUE"}) and not is_past_due({"DUE", "PENDING"})
    base = dict(ended_at=None, cancelled_at=None, cancel_mode=None, cancel_effective_at=None)
    assert subscription_status(is_active=True, past_due=False, **base) == "active"
    assert subscription_status(is_active=True, past_due=True, **base) == "past_due"
    assert subscription_status(is_active=False, past_due=False, **base) == "pending_payment"
    scheduled = {**base, "cancel_mode": "END_OF_PERIOD", "cancel_effective_at": NOW}
    assert subscription_status(is_active=True, past_due=False, **scheduled) == "cancel_scheduled"
    assert subscription_status(is_active=True, past_due=False, **{**base, "ended_at": NOW}) == (
        "cancelled"
    )
    assert grants_features(is_active=True, ended_at=None, past_due=False)
    assert not grants_features(is_active=True, ended_at=None, past_due=True)


def test_eligible_at_and_attribution():
    a, b = Sub("a", NOW - timedelta(days=9), room=False), Sub("b", NOW - timedelta(days=1))
    subs = [a, b]
    assert eligible_at(subs, NOW) is subs
    assert eligible_at(subs, NOW - timedelta(days=2)) == [a]
    assert eligible_at(subs, NOW - timedelta(days=20)) == []

    def room(s):
        return s.room

    def ident(s):
        return s.id

    assert attribute(subs, None, room, ident) is b  # the oldest with room
    assert attribute(subs, "a", room, ident) is a  # named wins
    assert attribute(subs, "zzz", room, ident) is b  # named but not eligible: the rule
    b.room = False
    assert attribute(subs, None, room, ident) is a  # none has room: the oldest
    assert attribute([], None, room, ident) is None


def test_verdict_order_and_simulation():
    assert limit_q(5) == 50_000 and limit_q(None) is None
    assert verdict(49_999, 50_000) is None
    assert verdict(50_000, 50_000) == REASON_LIMIT
    assert verdict(50_000, 50_000, True, 0, 10_000) == REASON_LIMIT  # limit first
    assert verdict(0, None, True, 9_999, 10_000) == REASON_CREDITS
    assert verdict(0, None, False, 0, 10_000) is None  # soft: overage
    assert verdict(0, None, True, 0, None) is None  # no credit rule
    sim = simulate(0, 7_000_000, None, True, 6_000_000, 7_000_000)
    assert sim.would_exceed_credits and sim.would_exceed_limit and not sim.would_exceed_usage
    sim = simulate(0, 7_000_000, None, False, 6_000_000, 7_000_000)
    assert sim.would_exceed_credits and not sim.would_exceed_limit
    assert simulate(40_000, 10_000, 50_000).would_exceed_limit is False  # lands on it
    assert simulate(40_000, 10_001, 50_000).would_exceed_limit is True


def test_event_time():
    skew, age = timedelta(seconds=300), timedelta(days=35)
    clock = "the test environment's clock"
    assert event_time_problem(NOW, NOW, skew, age, clock) is None
    assert event_time_problem(NOW - timedelta(days=35), NOW, skew, age, clock) is None
    old = event_time_problem(NOW - timedelta(days=36), NOW, skew, age, clock)
    assert "35 days in the past" in old and "2026-01-15T10:00:00.000Z" in old
    future = event_time_problem(NOW + timedelta(seconds=301), NOW, skew, age, clock)
    assert "300 seconds in the future" in future and clock in future


@settings(database=None, deadline=None, max_examples=300)
@given(
    st.integers(0, 10**6),
    st.one_of(st.none(), st.integers(0, 10**6)),
    st.booleans(),
    st.integers(0, 10**6),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_verdict_matches_its_parts(used, limit, hard, available, needed):
    reason = verdict(used, limit, hard, available, needed)
    over = limit is not None and used >= limit
    short = hard and needed is not None and available < needed
    assert reason == (REASON_LIMIT if over else REASON_CREDITS if short else None)
