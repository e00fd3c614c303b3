from decimal import Decimal as D

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tanso_mcp.domain.money import round_money
from tanso_mcp.domain.pricing import (
    charge,
    event_revenue,
    graduated_charge,
    period_charge,
    usage_charge,
)
from tanso_mcp.domain.rules import GraduatedPricing, Tier, UsagePricing, parse_rule_value

PROPS = settings(database=None, deadline=None, max_examples=300)

# Worked example tiers: <=1000 @0.10, <=5000 @0.08, inf @0.05
DOC_TIERS = (
    Tier(up_to=D(1000), price_per_unit=D("0.10")),
    Tier(up_to=D(5000), price_per_unit=D("0.08")),
    Tier(up_to=None, price_per_unit=D("0.05")),
)


def graduated(tiers=DOC_TIERS, reset_mode="reset"):
    return GraduatedPricing(usage_unit_type="api_calls", tiers=tiers, reset_mode=reset_mode)


def test_appendix_b_graduated_1500_units():
    assert graduated_charge(1500, DOC_TIERS) == D("140.00")
    assert round_money(graduated_charge(1500, DOC_TIERS), "USD") == D("140.00")


def test_appendix_b_flat_fee_first_tier():
    tiers = (
        Tier(up_to=D(1000), price_per_unit=D("0.10"), flat_fee=D("5.00")),
        Tier(up_to=D(5000), price_per_unit=D("0.08")),
        Tier(up_to=None, price_per_unit=D("0.05")),
    )
    assert graduated_charge(100, tiers) == D("15.00")


def test_appendix_b_accumulate_invoice():
    pricing = graduated(reset_mode="accumulate")
    # lifetime before the period 800, period 400 -> cost(1200) - cost(800) = 116 - 80
    assert period_charge(pricing, 400, prior_units=800) == D("36.00")
    assert graduated_charge(1200, DOC_TIERS) == D("116.00")
    assert graduated_charge(800, DOC_TIERS) == D("80.00")


def test_graduated_brackets_and_flat_fees():
    tiers = (
        Tier(up_to=D(100), price_per_unit=D("0.10"), flat_fee=D(5)),
        Tier(up_to=None, price_per_unit=D("0.05"), flat_fee=D(1)),
    )
    assert graduated_charge(0, tiers) == 0
    assert graduated_charge(D("0.5"), tiers) == D("5.05")
    assert graduated_charge(100, tiers) == D("15.00")
    assert graduated_charge(101, tiers) == D("16.05")
    assert graduated_charge(300, tiers) == D("26.00")
    assert graduated_charge(1000, DOC_TIERS) == D("100.00")
    assert graduated_charge(5000, DOC_TIERS) == D("420.00")
    assert graduated_charge(6000, DOC_TIERS) == D("470.00")


def test_finite_last_tier_extends_at_its_rate():
    tiers = (Tier(up_to=D(10), price_per_unit=D(1)), Tier(up_to=D(20), price_per_unit=D(2)))
    assert graduated_charge(25, tiers) == D(10 + 15 * 2)


def test_usage_pricing():
    pricing = UsagePricing(usage_unit_type="x", price_per_unit=D("0.02"))
    assert usage_charge(130, D("0.02")) == D("2.60")
    assert charge(pricing, 30) == D("0.60")
    assert period_charge(pricing, 30, prior_units=1000) == D("0.60")
    acc = UsagePricing(usage_unit_type="x", price_per_unit=D("0.02"), reset_mode="accumulate")
    assert period_charge(acc, 30, prior_units=1000) == D("0.60")


def test_reset_ignores_prior_units():
    assert period_charge(graduated(), 400, prior_units=800) == graduated_charge(400, DOC_TIERS)


def test_event_revenue():
    usage = UsagePricing(usage_unit_type="x", price_per_unit=D("0.015"))
    assert event_revenue(usage, 1) == D("0.02")
    assert event_revenue(usage, 3) == D("0.05")
    assert event_revenue(graduated(), 10) == D("1.00")
    assert event_revenue(graduated(), 10, prior_units=995) == D("0.90")
    assert event_revenue(usage, 1, currency="JPY") == D("0")


def test_invalid_units():
    with pytest.raises(ValueError):
        usage_charge(-1, D(1))
    with pytest.raises(TypeError):
        usage_charge(1.5, D(1))
    with pytest.raises(TypeError):
        graduated_charge(True, DOC_TIERS)
    with pytest.raises(ValueError):
        graduated_charge(1, ())
    with pytest.raises(ValueError):
        period_charge(graduated(reset_mode="accumulate"), 1, prior_units=-1)


def test_charges_from_parsed_seed_rule():
    rule = parse_rule_value(
        '{"pricing":{"model":"graduated","usage_unit_type":"api_calls","reset_mode":"accumulate","tiers":[{"up_to":100,"price_per_unit":0.10,"flat_fee":5.00},{"up_to":"inf","price_per_unit":0.05}]}}'
    )
    assert period_charge(rule.pricing, 150) == D("17.50")
    assert period_charge(rule.pricing, 50, prior_units=100) == D("2.50")
    assert period_charge(rule.pricing, 50, prior_units=80) == D("2.00") + D("1.50")


# --- properties --------------------------------------------------------------

units_st = st.decimals(
    min_value=0, max_value=10**7, places=3, allow_nan=False, allow_infinity=False
)
price_st = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def tier_lists(draw):
    bounds = sorted(set(draw(st.lists(st.integers(1, 10**6), max_size=6))))
    tiers = []
    for bound in bounds:
        fee = draw(st.one_of(st.none(), price_st))
        tiers.append(Tier(up_to=D(bound), price_per_unit=draw(price_st), flat_fee=fee))
    tiers.append(
        Tier(
            up_to=None, price_per_unit=draw(price_st), flat_fee=draw(st.one_of(st.none(), price_st))
        )
    )
    return tuple(tiers)


@PROPS
@given(tier_lists(), units_st, units_st)
def test_graduated_is_monotone(tiers, a, b):
    low, high = min(a, b), max(a, b)
    assert graduated_charge(low, tiers) <= graduated_charge(high, tiers)
    assert graduated_charge(low, tiers) >= 0


@PROPS
@given(price_st, units_st)
def test_single_inf_tier_equals_usage(price, units):
    assert graduated_charge(units, [Tier(up_to=None, price_per_unit=price)]) == usage_charge(
        units, price
    )


@PROPS
@given(tier_lists(), units_st)
def test_graduated_matches_unit_by_unit_definition(tiers, units):
    # independent formulation: sum over tiers of overlap(bracket, [0, units]) * price + fee if overlap
    total = D(0)
    lower = D(0)
    for tier in tiers:
        upper = tier.up_to
        top = units if upper is None else min(units, upper)
        overlap = max(top - lower, D(0))
        if overlap > 0:
            total += overlap * tier.price_per_unit + (tier.flat_fee or 0)
        if upper is not None:
            lower = upper
    assert graduated_charge(units, tiers) == total


@PROPS
@given(
    st.one_of(
        tier_lists().map(
            lambda t: GraduatedPricing(usage_unit_type="u", tiers=t, reset_mode="accumulate")
        ),
        price_st.map(
            lambda p: UsagePricing(usage_unit_type="u", price_per_unit=p, reset_mode="accumulate")
        ),
    ),
    st.lists(units_st, min_size=1, max_size=8),
)
def test_accumulate_increments_sum_to_total(pricing, periods):
    prior = D(0)
    billed = D(0)
    for units in periods:
        increment = period_charge(pricing, units, prior_units=prior)
        assert increment >= 0
        billed += increment
        prior += units
    assert billed == charge(pricing, prior)


@PROPS
@given(price_st, st.lists(units_st, min_size=1, max_size=8))
def test_usage_revenue_per_event_rounds_each_event(price, events):
    pricing = UsagePricing(usage_unit_type="u", price_per_unit=price)
    for units in events:
        assume(units >= 0)
        assert event_revenue(pricing, units) == round_money(units * price, "USD")
