from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tanso_mcp.domain.limits import remaining_usage
from tanso_mcp.domain.margins import (
    MarginStatus,
    gross_margin,
    margin_status,
    monthly_recurring_revenue,
)


def test_limits():
    assert remaining_usage(9990, 10000) == 10
    assert remaining_usage(20000, 10000) == 0
    assert remaining_usage(5, None) is None
    assert remaining_usage(D("0.5"), 1) == D("0.5")


def test_margins():
    assert gross_margin(D(100), D(30)) == D("0.7000")
    assert margin_status(gross_margin(D(100), D(30))) is MarginStatus.HEALTHY
    assert margin_status(D("0.6999")) is MarginStatus.AT_RISK
    assert margin_status(D("0.40")) is MarginStatus.AT_RISK
    assert margin_status(D("0.3999")) is MarginStatus.UNDERWATER
    assert gross_margin(D(3), D(1)) == D("0.6667")
    assert gross_margin(D(10), D(25)) == D("-1.5000")
    assert gross_margin(0, D(5)) == -1
    assert gross_margin(0, 0) == 0
    assert margin_status(-1) == "underwater"


def test_mrr():
    assert monthly_recurring_revenue(D(600), 3, "USD") == D("200.00")
    assert monthly_recurring_revenue(D(100), 3, "USD") == D("33.33")
    assert monthly_recurring_revenue(D(1000), 12, "JPY") == D("83")
    with pytest.raises(ValueError):
        monthly_recurring_revenue(D(1), 0, "USD")


@given(st.integers(min_value=1, max_value=10**15), st.integers(min_value=0, max_value=10**16))
def test_gross_margin_integer_path_equals_decimal_path(revenue, cost):
    assert gross_margin(revenue, cost) == gross_margin(D(revenue), D(cost))
