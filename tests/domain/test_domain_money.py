from decimal import Decimal as D
from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tanso_mcp.domain import money
from tanso_mcp.domain.money import (
    dumps_json,
    from_credit_units,
    from_micros,
    from_minor,
    json_number,
    minor_units,
    normalize_currency,
    parse_money_amount,
    round_cost,
    round_credits,
    round_money,
    to_credit_units,
    to_decimal,
    to_micros,
    to_minor,
    to_non_negative,
    to_positive,
)
from tanso_mcp.errors import InvalidRequest

PROPS = settings(database=None, deadline=None, max_examples=300)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, D("1")),
        (0, D("0")),
        ("0.10", D("0.10")),
        (" 2.5 ", D("2.5")),
        ("1e-5", D("0.00001")),
        ("-3", D("-3")),
        (D("12.3400"), D("12.3400")),
        (0.1, D("0.1")),
        (2.675, D("2.675")),
        (1e-7, D("1e-7")),
        ("-0", D("0")),
        (10**17, D(10**17)),
    ],
)
def test_to_decimal_accepts_exact_values(value, expected):
    result = to_decimal(value, "amount")
    assert result == expected
    assert isinstance(result, D)


def test_float_goes_through_repr_not_binary_expansion():
    assert to_decimal(0.1, "x") == D("0.1")
    assert to_decimal(0.1, "x") != D(0.1)
    assert str(to_decimal(1.1, "x")) == "1.1"


def test_negative_zero_is_normalised():
    assert not to_decimal("-0.00", "x").is_signed()
    assert not to_decimal(D("-0"), "x").is_signed()


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        "abc",
        "",
        "NaN",
        "nan",
        "Infinity",
        "-inf",
        "1_000",
        "0x10",
        "1,5",
        float("nan"),
        float("inf"),
        D("NaN"),
        D("Infinity"),
        D("sNaN"),
        [1],
        {"a": 1},
        "1e18",
        10**18,
        -(10**30),
        "1e-31",
        "1." + "1" * 45,
    ],
)
def test_to_decimal_rejects_with_field(value):
    with pytest.raises(InvalidRequest) as info:
        to_decimal(value, "body.amount")
    assert info.value.field == "body.amount"
    assert info.value.message.startswith("body.amount ")
    assert info.value.code == "invalid_request"


def test_to_decimal_can_refuse_floats():
    with pytest.raises(InvalidRequest):
        to_decimal(1.5, "x", allow_float=False)


def test_sign_helpers():
    assert to_non_negative("0", "x") == 0
    assert to_positive("0.0001", "x") == D("0.0001")
    with pytest.raises(InvalidRequest) as info:
        to_non_negative(-1, "a.b")
    assert info.value.field == "a.b"
    with pytest.raises(InvalidRequest):
        to_positive(0, "x")


def test_currency_minor_units():
    assert minor_units("USD") == 2
    assert minor_units("eur") == 2
    assert minor_units("JPY") == 0
    assert minor_units("KWD") == 3
    assert minor_units("XYZ") == 2
    assert normalize_currency(" usd ") == "USD"
    for bad in ("US", "usdd", "", 1, None, "U5D"):
        with pytest.raises(InvalidRequest) as info:
            normalize_currency(bad, "plan.currency")
        assert info.value.field == "plan.currency"


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (D("2.345"), "USD", D("2.35")),
        (D("2.344999"), "USD", D("2.34")),
        (D("-2.345"), "USD", D("-2.35")),
        (D("16.333333"), "USD", D("16.33")),
        (D("32.666666"), "USD", D("32.67")),
        (D("0.005"), "USD", D("0.01")),
        (D("-0.004"), "USD", D("0.00")),
        (D("1234.5"), "JPY", D("1235")),
        (D("1.0005"), "KWD", D("1.001")),
        (7, "USD", D("7.00")),
        (F(1, 200), "USD", D("0.01")),
        (F(-1, 200), "USD", D("-0.01")),
        (F(1, 3), "USD", D("0.33")),
    ],
)
def test_round_money_half_up(amount, currency, expected):
    result = round_money(amount, currency)
    assert result == expected
    assert str(result) == str(expected)
    assert not (result.is_zero() and result.is_signed())


def test_minor_units_roundtrip():
    assert to_minor(D("12.345"), "USD") == 1235
    assert to_minor(D("12"), "JPY") == 12
    assert to_minor(D("-0.015"), "USD") == -2
    assert from_minor(1234, "USD") == D("12.34")
    assert str(from_minor(0, "USD")) == "0.00"
    assert from_minor(5, "JPY") == D("5")
    assert from_minor(1001, "KWD") == D("1.001")
    with pytest.raises(TypeError):
        from_minor(True, "USD")
    with pytest.raises(TypeError):
        from_minor(1.5, "USD")


def test_cost_and_credit_precision():
    assert round_cost(D("0.0000005")) == D("0.000001")
    assert round_cost(D("0.0125")) == D("0.012500")
    assert to_micros(D("0.0125")) == 12500
    assert to_micros(D("1.0000004")) == 1000000
    assert from_micros(12500) == D("0.0125")
    assert str(from_micros(1)) == "0.000001"
    assert round_credits(D("1.00005")) == D("1.0001")
    assert to_credit_units(D("2.5")) == 25000
    assert from_credit_units(25000) == D("2.5")


def test_parse_money_amount():
    assert str(parse_money_amount("49", "USD", "priceAmount")) == "49.00"
    assert parse_money_amount(0.1, "USD", "priceAmount") == D("0.10")
    assert parse_money_amount(500, "JPY", "priceAmount") == D("500")
    for bad, currency in (("9.999", "USD"), ("1.5", "JPY"), ("-1", "USD"), ("x", "USD")):
        with pytest.raises(InvalidRequest) as info:
            parse_money_amount(bad, currency, "priceAmount")
        assert info.value.field == "priceAmount"


def test_precision_is_not_lost_in_products():
    a = to_decimal("123456789012345.123456789", "a")
    b = to_decimal("0.000000123456789123456789", "b")
    with money.decimal_context():
        product = a * b
    assert F(product) == F(a) * F(b)


def test_json_number_and_dumps():
    assert json_number(D("1E+2")) == "100"
    assert json_number(D("1E-7")) == "0.0000001"
    assert json_number(D("-0.00")) == "0.00"
    assert json_number(5) == "5"
    text = dumps_json({"a": [D("0.10"), 1, None, True, False, 'é"'], "b": {"c": D("5.00")}})
    assert text == '{"a":[0.10,1,null,true,false,"é\\""],"b":{"c":5.00}}'
    with pytest.raises(TypeError):
        dumps_json({"a": 0.1})
    with pytest.raises(TypeError):
        dumps_json({1: 2})


# --- properties --------------------------------------------------------------

money_values = st.decimals(
    min_value=D("-1e12"), max_value=D("1e12"), allow_nan=False, allow_infinity=False, places=6
)


@PROPS
@given(money_values, st.sampled_from(["USD", "JPY", "KWD"]))
def test_round_money_is_half_up_to_the_minor_unit(amount, currency):
    places = minor_units(currency)
    result = round_money(amount, currency)
    quantum = F(1, 10**places)
    diff = F(amount) - F(result)
    assert abs(diff) <= quantum / 2
    if abs(diff) == quantum / 2:
        # ties go away from zero
        assert abs(F(result)) > abs(F(amount))
    assert -result.as_tuple().exponent == places or result == 0
    assert round_money(result, currency) == result
    assert from_minor(to_minor(amount, currency), currency) == result


@PROPS
@given(st.fractions(min_value=-(10**6), max_value=10**6, max_denominator=10**6))
def test_fraction_rounding_matches_exact_decimal_when_representable(q):
    result = round_money(q, "USD")
    assert abs(q - F(result)) <= F(1, 200)


@PROPS
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_float_inputs_roundtrip_through_repr(f):
    if f != 0 and abs(f) < 1e-30:
        with pytest.raises(InvalidRequest):
            to_decimal(f, "x")
        return
    d = to_decimal(f, "x")
    assert float(d) == f


@PROPS
@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_micros_roundtrip(n):
    assert to_micros(from_micros(n)) == n
    assert to_credit_units(from_credit_units(n)) == n
