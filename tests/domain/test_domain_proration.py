from datetime import UTC, datetime
from decimal import Decimal as D
from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tanso_mcp.domain.money import round_money
from tanso_mcp.domain.periods import remaining_fraction, remaining_ratio
from tanso_mcp.domain.proration import cancellation_refund, prorate, upgrade_adjustment

PROPS = settings(database=None, deadline=None, max_examples=500)

START, END = datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC)


def test_appendix_b_upgrade():
    now = datetime(2025, 4, 21, tzinfo=UTC)  # 10 of 30 days left
    for ratio in (
        remaining_fraction(now, START, END),
        remaining_ratio(now, START, END),
        D("0.3333"),
    ):
        old_line, new_line, total = upgrade_adjustment(ratio, D(49), D(99), "USD")
        assert (old_line, new_line, total) == (D("-16.33"), D("33.00"), D("16.67"))
        assert str(total) == "16.67"


def test_appendix_b_cancellation():
    now = datetime(2025, 4, 11, tzinfo=UTC)  # 20 of 30 days unused
    assert cancellation_refund(remaining_fraction(now, START, END), D(49), "USD") == D("-32.67")
    assert cancellation_refund(remaining_ratio(now, START, END), D(49), "USD") == D("-32.67")


def test_edges():
    assert cancellation_refund(0, D(49), "USD") == 0
    assert not cancellation_refund(0, D(49), "USD").is_signed()
    assert cancellation_refund(1, D(49), "USD") == D("-49.00")
    adj = upgrade_adjustment(0, D(49), D(99), "USD")
    assert adj == (0, 0, 0) and not adj.old_credit_line.is_signed()
    assert upgrade_adjustment(1, D(49), D(99), "USD").total == D("50.00")
    # "upgrade" to a cheaper plan: negative total
    assert upgrade_adjustment(F(1, 2), D(99), D(49), "USD").total == D("-25.00")
    assert upgrade_adjustment(F(1, 3), 4900, 9900, "JPY") == (D(-1633), D(3300), D(1667))


def test_exact_fraction_rounds_ties_up():
    # 1/9800 of $49.00 is exactly half a cent: the exact ratio rounds it up
    assert prorate(F(1, 9800), D("49.00"), "USD") == D("0.01")


def test_validation():
    for bad in (D("-0.1"), D("1.01"), F(3, 2)):
        with pytest.raises(ValueError):
            prorate(bad, D(1), "USD")
    with pytest.raises(TypeError):
        prorate(0.5, D(1), "USD")
    with pytest.raises(ValueError):
        prorate(F(1, 2), D(-1), "USD")
    with pytest.raises(TypeError):
        upgrade_adjustment(F(1, 2), 1.5, D(1), "USD")


prices = st.decimals(min_value=0, max_value=10**7, places=2, allow_nan=False, allow_infinity=False)
ratios = st.one_of(
    st.fractions(min_value=0, max_value=1, max_denominator=10**11),
    st.decimals(min_value=0, max_value=1, places=20, allow_nan=False, allow_infinity=False),
)


@PROPS
@given(ratios, prices, prices)
def test_upgrade_properties(ratio, old, new):
    old_line, new_line, total = upgrade_adjustment(ratio, old, new, "USD")
    assert total == old_line + new_line
    assert -old <= total <= new
    assert -old <= old_line <= 0 <= new_line <= new
    assert abs(F(new_line) - F(ratio) * F(new)) <= F(1, 200)
    assert abs(F(old_line) + F(ratio) * F(old)) <= F(1, 200)


@PROPS
@given(ratios, prices)
def test_refund_properties(ratio, price):
    refund = cancellation_refund(ratio, price, "USD")
    assert -price <= refund <= 0
    assert refund == -round_money(F(ratio) * F(price), "USD")
