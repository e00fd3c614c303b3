from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tanso_mcp.domain.credits import (
    CreditAllocation,
    RolloverPolicy,
    available_credits,
    covered_units,
    credit_coverage,
    credit_delta,
    credits_for_units,
    dumps_allocations,
    fifo_allocation,
    parse_credit_allocations,
    plan_draw,
    plan_grant_key,
    rollover_expiry,
)
from tanso_mcp.errors import InvalidRequest

PROPS = settings(database=None, deadline=None, max_examples=400)
NOW = datetime(2026, 1, 15, tzinfo=UTC)


def test_appendix_b_credits_before_overage():
    needed, deducted, covered, overage = credit_coverage(130, 1, 100)
    assert (needed, deducted, covered, overage) == (130, 100, 100, 30)
    assert credits_for_units(130, 1) == 130
    plan = plan_draw([("grant", 100, None)], int(needed), NOW)
    assert plan == [("grant", 100)]
    assert covered_units(sum(t for _, t in plan), 1) == 100


def test_credits_for_units_rounds_to_4dp():
    assert credits_for_units(D("3"), D("0.33333")) == D("1.0000")
    assert credits_for_units(D("1"), D("0.00005")) == D("0.0001")
    assert credits_for_units(D("2.5"), 2) == D("5")


def test_covered_units():
    assert covered_units(100, 1) == 100
    assert covered_units(D("99.9"), 1) == 99  # whole-unit floor (reference)
    assert covered_units(10, D("0.3"), units=130) == 33  # whole-unit event
    assert covered_units(D("2.5"), 1, units=D("2.50")) == D("2.50")  # fully covered
    assert covered_units(D("1.255"), 1, units=D("2.50")) == D(
        "1.25"
    )  # floor at the event's precision
    assert covered_units(0, 1, units=5) == 0
    assert (
        covered_units(D("1.0000"), D("0.33333"), units=3) == 3
    )  # 4-dp rounding never leaves overage
    with pytest.raises(ValueError):
        covered_units(1, 0)


def test_credit_coverage_fractional_and_weighted():
    cov = credit_coverage(D("2.5"), 2, 100)
    assert cov == (D("5"), D("5"), D("2.5"), D("0"))
    cov = credit_coverage(130, D("0.3"), 10)
    assert cov.credits_needed == D("39.0") and cov.covered_units == 33 and cov.overage_units == 97
    cov = credit_coverage(10, 1, 0)
    assert cov == (10, 0, 0, 10)
    cov = credit_coverage(10, 1, -5)
    assert cov.credits_deducted == 0


def test_plan_draw_fifo_skips_expired_and_empty():
    later = datetime(2026, 2, 1, tzinfo=UTC)
    grants = [
        ("old", 30, NOW),  # expired at NOW
        ("empty", 0, None),
        ("a", 10, later),
        ("b", 50, None),
    ]
    assert plan_draw(grants, 45, NOW) == [("a", 10), ("b", 35)]
    assert plan_draw(grants, 500, NOW) == [("a", 10), ("b", 50)]
    assert plan_draw(grants, 0, NOW) == []
    assert plan_draw([], 10, NOW) == []


def test_available_credits():
    assert available_credits(100, "ACTIVE") == 100
    assert available_credits(100, "FROZEN") == 0
    assert available_credits(100, "ACTIVE", draw_limit_q=30, drawn_q=10) == 20
    assert available_credits(100, "ACTIVE", draw_limit_q=30, drawn_q=40) == 0
    assert available_credits(100, "ACTIVE", live_grants_q=60) == 60


def test_fifo_allocation_oldest_first():
    t = lambda day: datetime(2025, 1, day, tzinfo=UTC)  # noqa: E731
    grants = [
        ("g3", D(10), t(3)),
        ("g1", D(5), t(1)),
        ("g0", D(0), t(0 + 1)),
        ("g2", D("2.5"), t(2)),
    ]
    assert fifo_allocation(grants, 6) == [("g1", D(5)), ("g2", D(1))]
    assert fifo_allocation(grants, 100) == [("g1", D(5)), ("g2", D("2.5")), ("g3", D(10))]
    assert fifo_allocation(grants, 0) == []


def test_rollover_expiry():
    assert rollover_expiry("NONE", None, D(80)) == 80
    assert rollover_expiry(RolloverPolicy.FULL, None, D(80)) == 0
    assert rollover_expiry("CAPPED", D(50), D(80)) == 30
    assert rollover_expiry("capped", D(100), D(80)) == 0
    assert rollover_expiry("NONE", None, D(-3)) == 0
    with pytest.raises(ValueError):
        rollover_expiry("CAPPED", None, D(1))
    with pytest.raises(ValueError):
        rollover_expiry("SOMETIMES", None, D(1))


def test_credit_delta():
    assert credit_delta({"A": 100, "B": 50}, {"A": 150, "B": 50, "C": 10}) == {"A": 50, "C": 10}
    assert credit_delta({"A": 100}, {"A": 20}) == {}


def test_plan_grant_key():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    assert plan_grant_key("sub_1", "AI_TOKENS", start) == "plan_grant_sub_1_AI_TOKENS_1735689600000"
    with pytest.raises(InvalidRequest):
        plan_grant_key("s", "A", datetime(2025, 1, 1))


def test_parse_credit_allocations():
    assert parse_credit_allocations(None) == []
    assert parse_credit_allocations("") == []
    allocations = parse_credit_allocations(
        '[{"denomination":"ai_tokens","creditAmount":1000,"grantExpiresMonths":2,"hardLimit":true,'
        '"rolloverPolicy":"capped","rolloverCap":200},{"denomination":"MESSAGES","credit_amount":"5.5"}]'
    )
    first, second = allocations
    assert first == CreditAllocation(
        denomination="AI_TOKENS",
        creditAmount=D(1000),
        grantExpiresMonths=2,
        hardLimit=True,
        rolloverPolicy=RolloverPolicy.CAPPED,
        rolloverCap=D(200),
    )
    assert second.credit_amount == D("5.5") and second.rollover_policy is None
    text = dumps_allocations(allocations)
    assert parse_credit_allocations(text) == allocations
    assert '"creditAmount":5.5' in text


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("{", "creditAllocations"),
        ('{"denomination":"A"}', "creditAllocations"),
        ("[5]", "creditAllocations[0]"),
        ('[{"creditAmount":1}]', "creditAllocations[0].denomination"),
        ('[{"denomination":"A"}]', "creditAllocations[0].creditAmount"),
        ('[{"denomination":"A","creditAmount":-1}]', "creditAllocations[0].creditAmount"),
        ('[{"denomination":"a b","creditAmount":1}]', "creditAllocations[0].denomination"),
        (
            '[{"denomination":"A","creditAmount":1,"grantExpiresMonths":0}]',
            "creditAllocations[0].grantExpiresMonths",
        ),
        (
            '[{"denomination":"A","creditAmount":1,"grantExpiresMonths":1.5}]',
            "creditAllocations[0].grantExpiresMonths",
        ),
        (
            '[{"denomination":"A","creditAmount":1,"hardLimit":"yes"}]',
            "creditAllocations[0].hardLimit",
        ),
        (
            '[{"denomination":"A","creditAmount":1,"rolloverPolicy":"SOME"}]',
            "creditAllocations[0].rolloverPolicy",
        ),
        (
            '[{"denomination":"A","creditAmount":1,"rolloverPolicy":"CAPPED"}]',
            "creditAllocations[0].rolloverCap",
        ),
        (
            '[{"denomination":"A","creditAmount":1,"rolloverCap":5}]',
            "creditAllocations[0].rolloverCap",
        ),
        ('[{"denomination":"A","creditAmount":1,"bonus":5}]', "creditAllocations[0].bonus"),
        (
            '[{"denomination":"A","creditAmount":1},{"denomination":"a","creditAmount":2}]',
            "creditAllocations[1].denomination",
        ),
    ],
)
def test_invalid_allocations_name_the_field(raw, field):
    with pytest.raises(InvalidRequest) as info:
        parse_credit_allocations(raw)
    assert info.value.field == field, info.value.message
    assert info.value.message.startswith(field)


# --- properties --------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False, allow_infinity=False)
grant_st = st.tuples(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.one_of(st.none(), st.sampled_from([NOW, datetime(2027, 1, 1, tzinfo=UTC)])),
)


@PROPS
@given(st.lists(grant_st, max_size=8, unique_by=lambda g: g[0]), st.integers(0, 10**7))
def test_plan_draw_properties(grants, amount):
    plan = plan_draw(grants, amount, NOW)
    valid = {g[0]: g[1] for g in grants if g[2] is None or g[2] > NOW}
    assert sum(t for _, t in plan) == min(amount, sum(valid.values()))
    for grant_id, take in plan:
        assert 0 < take <= valid[grant_id]
    order = [g[0] for g in grants]
    assert [order.index(i) for i, _ in plan] == sorted(order.index(i) for i, _ in plan)
    # every grant before the last one drawn is emptied (oldest first)
    if plan:
        last = order.index(plan[-1][0])
        assert all(valid.get(g, 0) == dict(plan).get(g, 0) for g in order[:last])


@PROPS
@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), amounts, st.integers(0, 100)),
        max_size=8,
        unique_by=lambda g: g[0],
    ),
    amounts,
)
def test_fifo_properties(grants, amount):
    plan = fifo_allocation(grants, amount)
    available = sum((g[1] for g in grants), D(0))
    assert sum((t for _, t in plan), D(0)) == min(amount, available)
    remaining = {g[0]: g[1] for g in grants}
    order = {g[0]: g[2] for g in grants}
    for grant_id, take in plan:
        assert 0 < take <= remaining[grant_id]
    assert [order[i] for i, _ in plan] == sorted(order[i] for i, _ in plan)
    # every grant before the last one used is fully consumed
    for grant_id, take in plan[:-1]:
        assert take == remaining[grant_id]


@PROPS
@given(
    st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False),
    st.decimals(
        min_value=D("0.01"), max_value=100, places=2, allow_nan=False, allow_infinity=False
    ),
    amounts,
)
def test_coverage_properties(units, weight, available):
    cov = credit_coverage(units, weight, available)
    assert cov.credits_deducted == min(cov.credits_needed, available)
    assert 0 <= cov.covered_units <= units
    assert cov.covered_units + cov.overage_units == units
    if available >= cov.credits_needed:
        assert cov.overage_units == 0
    # never more covered than the credits paid for (up to 4-dp credit rounding)
    assert cov.covered_units * weight <= cov.credits_deducted + D("0.00005")


@PROPS
@given(st.sampled_from(list(RolloverPolicy)), amounts, amounts)
def test_rollover_properties(policy, cap, balance):
    expired = rollover_expiry(policy, cap, balance)
    assert 0 <= expired <= balance
    if policy is RolloverPolicy.CAPPED:
        assert balance - expired == min(balance, cap)
