import json
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tanso_mcp.domain.money import dumps_json
from tanso_mcp.domain.rules import (
    CostUnit,
    GraduatedPricing,
    ModelAwareCost,
    ResetMode,
    RuleValue,
    SimpleCost,
    UsagePricing,
    field_path,
    parse_cost_model,
    parse_default_cost_config,
    parse_rule_value,
    render_pricing,
)
from tanso_mcp.errors import InvalidRequest

PROPS = settings(database=None, deadline=None, max_examples=200)

# The seed's adminLinkFeatureToPlan examples (the fifth is the boolean gate: no valueJson).
SEED_FLAT_CAP = '{"pricing":{"model":"usage","price_per_unit":0.10,"usage_unit_type":"api_calls","max_usage":10000}}'
SEED_GRADUATED = '{"pricing":{"model":"graduated","usage_unit_type":"api_calls","reset_mode":"accumulate","tiers":[{"up_to":100,"price_per_unit":0.10,"flat_fee":5.00},{"up_to":"inf","price_per_unit":0.05}]}}'
SEED_SIMPLE_COST = '{"pricing":{"model":"usage","price_per_unit":0.10,"usage_unit_type":"api_calls"},"cost":{"model":"simple","cost_per_unit":0.03,"cost_unit":"CURRENCY"}}'
SEED_MODEL_AWARE = '{"pricing":{"model":"usage","price_per_unit":0.01,"usage_unit_type":"api_calls"},"cost":{"model":"model_aware","default_cost_per_unit":0.00003,"model_costs":{"gpt-4":0.00006,"claude-3-opus":0.000075},"cost_unit":"CURRENCY"}}'


@pytest.mark.parametrize("raw", [None, "", "   ", "null", "{}", {}, b""])
def test_boolean_gate(raw):
    assert parse_rule_value(raw) is None
    assert render_pricing(parse_rule_value(raw)) == {"pricingType": "included"}


def test_seed_flat_rate_with_cap():
    rule = parse_rule_value(SEED_FLAT_CAP)
    assert rule.pricing == UsagePricing(
        usage_unit_type="api_calls", price_per_unit=D("0.10"), max_usage=D(10000)
    )
    assert rule.max_usage == 10000
    assert rule.reset_mode is ResetMode.RESET
    assert rule.to_json() == {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "api_calls",
            "price_per_unit": D("0.10"),
            "max_usage": 10000,
            "reset_mode": "reset",
        }
    }
    assert render_pricing(rule) == {
        "pricingType": "usage_based",
        "pricing": {
            "model": "usage",
            "pricePerUnit": D("0.10"),
            "unitLabel": "api_calls",
            "maxUsage": D(10000),
            "resetMode": "reset",
        },
    }


def test_seed_graduated_with_flat_fee_and_accumulate():
    rule = parse_rule_value(SEED_GRADUATED)
    assert isinstance(rule.pricing, GraduatedPricing)
    assert rule.reset_mode is ResetMode.ACCUMULATE
    first, last = rule.pricing.tiers
    assert (first.up_to, first.price_per_unit, first.flat_fee) == (100, D("0.10"), D("5.00"))
    assert (last.up_to, last.price_per_unit, last.flat_fee) == (None, D("0.05"), None)
    assert rule.to_json()["pricing"]["tiers"] == [
        {"up_to": 100, "price_per_unit": D("0.10"), "flat_fee": D("5.00")},
        {"up_to": "inf", "price_per_unit": D("0.05")},
    ]
    assert render_pricing(rule) == {
        "pricingType": "graduated",
        "pricing": {
            "model": "graduated",
            "pricePerUnit": None,
            "unitLabel": "api_calls",
            "maxUsage": None,
            "resetMode": "accumulate",
            "tiers": [
                {"upTo": D(100), "pricePerUnit": D("0.10"), "flatFee": D("5.00")},
                {"upTo": "inf", "pricePerUnit": D("0.05"), "flatFee": None},
            ],
        },
    }


def test_seed_simple_cost():
    rule = parse_rule_value(SEED_SIMPLE_COST)
    assert rule.cost == SimpleCost(cost_per_unit=D("0.03"), cost_unit=CostUnit.CURRENCY)


def test_seed_model_aware_cost():
    rule = parse_rule_value(SEED_MODEL_AWARE)
    cost = rule.cost
    assert isinstance(cost, ModelAwareCost)
    assert cost.default_cost_per_unit == D("0.00003")
    assert cost.model_costs["gpt-4"].input == D("0.00006")
    assert cost.model_costs["gpt-4"].output_rate == D("0.00006")
    assert cost.model_costs["claude-3-opus"].input == D("0.000075")
    assert render_pricing(rule)["pricingType"] == "usage_based"


@pytest.mark.parametrize("raw", [SEED_FLAT_CAP, SEED_GRADUATED, SEED_SIMPLE_COST, SEED_MODEL_AWARE])
def test_seed_examples_roundtrip(raw):
    rule = parse_rule_value(raw)
    normalised = rule.to_json()
    text = dumps_json(normalised)
    assert parse_rule_value(text) == rule
    assert parse_rule_value(normalised) == rule
    assert parse_rule_value(rule) is rule
    # the normalised text is the seed's JSON plus explicit defaults, numbers unchanged
    original = json.loads(raw, parse_float=D)
    reparsed = json.loads(text, parse_float=D)
    for section, body in original.items():
        for key, value in body.items():
            assert reparsed[section][key] == value


def test_numbers_keep_their_digits():
    rule = parse_rule_value(
        '{"pricing":{"model":"usage","usage_unit_type":"t","price_per_unit":0.1000000000000000055511151231257827}}'
    )
    assert rule.pricing.price_per_unit == D("0.1000000000000000055511151231257827")
    text = dumps_json(rule.to_json())
    assert "0.1000000000000000055511151231257827" in text


def test_already_parsed_mapping_with_floats():
    rule = parse_rule_value(
        {"pricing": {"model": "usage", "usage_unit_type": "x", "price_per_unit": 0.1}}
    )
    assert rule.pricing.price_per_unit == D("0.1")


def test_case_and_camel_normalisation():
    rule = parse_rule_value(
        '{"pricing":{"model":"GRADUATED","usageUnitType":"calls","resetMode":"Accumulate","maxUsage":5,'
        '"tiers":[{"upTo":10,"pricePerUnit":1,"flatFee":2},{"upTo":"INF","pricePerUnit":0.5}]},'
        '"cost":{"model":"Simple","costPerUnit":0.1,"costUnit":"usd"},'
        '"credits":{"denomination":"ai_tokens"}}'
    )
    assert rule.pricing.model == "graduated"
    assert rule.pricing.reset_mode is ResetMode.ACCUMULATE
    assert rule.pricing.max_usage == 5
    assert rule.cost.cost_unit is CostUnit.CURRENCY
    assert rule.credits.denomination == "AI_TOKENS"
    assert rule.credits.weight == 1
    assert rule.denomination == "AI_TOKENS"


def test_credits_and_cost_without_pricing_are_included():
    rule = parse_rule_value('{"credits":{"denomination":"MESSAGES","weight":2.5}}')
    assert rule.pricing is None and not rule.is_metered
    assert rule.credits.weight == D("2.5")
    assert rule.to_json() == {"credits": {"denomination": "MESSAGES", "weight": D("2.5")}}
    assert render_pricing(rule) == {"pricingType": "included"}


def test_model_aware_aliases_and_two_rate_map():
    rule = parse_rule_value(
        {
            "cost": {
                "model": "model_aware",
                "default_input_cost_per_unit": "0.000002",
                "default_output_cost_per_unit": "0.000008",
                "model_costs": {
                    "gpt-4o": {"input": 0.0000025, "output": 0.00001},
                    "x": {"input": 1},
                },
                "cost_unit": "tokens",
            }
        }
    )
    cost = rule.cost
    assert cost.default_cost_per_unit == D("0.000002")
    assert cost.model_costs["gpt-4o"].output_rate == D("0.00001")
    assert cost.model_costs["x"].output_rate == 1
    assert cost.cost_unit is CostUnit.TOKENS
    assert cost.to_json()["model_costs"] == {
        "gpt-4o": {"input": D("0.0000025"), "output": D("0.00001")},
        "x": 1,
    }
    assert parse_rule_value(rule.to_json()) == rule
    same = parse_rule_value(
        {
            "cost": {
                "model": "model_aware",
                "default_cost_per_unit": 1,
                "default_input_cost_per_unit": "1.0",
            }
        }
    )
    assert same.cost.default_cost_per_unit == 1


# --- legacy flat form --------------------------------------------------------------


def test_legacy_flat_usage_with_cost():
    rule = parse_rule_value(
        '{"model":"usage","usage_unit_type":"api_calls","price_per_unit":0.10,"max_usage":100,"cost_per_unit":0.03}'
    )
    assert rule == parse_rule_value(
        '{"pricing":{"model":"usage","usage_unit_type":"api_calls","price_per_unit":0.10,"max_usage":100},'
        '"cost":{"model":"simple","cost_per_unit":0.03}}'
    )


def test_legacy_price_fallback_order():
    rule = parse_rule_value('{"model":"usage","cost_rate":0.2}')
    assert rule.pricing.price_per_unit == D("0.2")
    assert rule.pricing.usage_unit_type == "units"
    assert rule.cost is None
    rule = parse_rule_value('{"model":"usage","cost_per_unit":0.3}')
    assert rule.pricing.price_per_unit == D("0.3") and rule.cost is None
    rule = parse_rule_value('{"model":"usage","cost_rate":0.2,"cost_per_unit":0.03}')
    assert rule.pricing.price_per_unit == D("0.2")
    assert rule.cost == SimpleCost(cost_per_unit=D("0.03"))
    rule = parse_rule_value('{"model":"usage","price_per_unit":1,"cost_rate":0.04}')
    assert rule.cost == SimpleCost(cost_per_unit=D("0.04"))


def test_legacy_model_inference_and_cost_model_forms():
    rule = parse_rule_value('{"usage_unit_type":"t","tiers":[{"up_to":"inf","price_per_unit":1}]}')
    assert isinstance(rule.pricing, GraduatedPricing)
    rule = parse_rule_value('{"price_per_unit":1}')
    assert isinstance(rule.pricing, UsagePricing)
    rule = parse_rule_value(
        '{"model":"usage","usage_unit_type":"t","price_per_unit":1,"cost_model":"model_aware",'
        '"default_cost_per_unit":0.001,"model_costs":{"gpt-4":0.002}}'
    )
    assert isinstance(rule.cost, ModelAwareCost)
    rule = parse_rule_value(
        '{"model":"usage","usage_unit_type":"t","price_per_unit":1,"model_costs":{"a":1},"default_cost_per_unit":2}'
    )
    assert isinstance(rule.cost, ModelAwareCost)
    rule = parse_rule_value(
        '{"model":"usage","usage_unit_type":"t","price_per_unit":1,"cost_model":{"model":"simple","cost_per_unit":0.5}}'
    )
    assert rule.cost == SimpleCost(cost_per_unit=D("0.5"))
    rule = parse_rule_value(
        '{"model":"usage","cost_model":"simple","cost_per_unit":0.5,"price_per_unit":2}'
    )
    assert rule.cost == SimpleCost(cost_per_unit=D("0.5"))
    assert rule.pricing.price_per_unit == 2
    rule = parse_rule_value('{"cost_per_unit":0.03}')
    assert rule.pricing is None and rule.cost == SimpleCost(cost_per_unit=D("0.03"))


def test_legacy_cost_inside_nested_pricing():
    rule = parse_rule_value(
        '{"pricing":{"model":"usage","usage_unit_type":"api_calls","price_per_unit":0.1,"cost_per_unit":0.03,"cost_unit":"TOKENS"}}'
    )
    assert rule.cost == SimpleCost(cost_per_unit=D("0.03"), cost_unit=CostUnit.TOKENS)
    assert rule.to_json() == {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "api_calls",
            "price_per_unit": D("0.1"),
            "reset_mode": "reset",
        },
        "cost": {"model": "simple", "cost_per_unit": D("0.03"), "cost_unit": "TOKENS"},
    }


# --- invalid values name their field ---------------------------------------------------

GRAD = '{"pricing":{"model":"graduated","usage_unit_type":"x","tiers":%s}}'
USAGE = '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":%s}}'

INVALID = [
    ("{", "valueJson"),
    ("[1,2]", "valueJson"),
    ('"text"', "valueJson"),
    ('{"a":1,"a":2}', "valueJson"),
    (USAGE % "NaN", "valueJson"),
    (USAGE % "Infinity", "valueJson"),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":1e999}}',
        "valueJson.pricing.price_per_unit",
    ),
    ('{"unknown":1}', "valueJson.unknown"),
    ('{"pricing":5}', "valueJson.pricing"),
    ('{"pricing":{"usage_unit_type":"x"}}', "valueJson.pricing.model"),
    ('{"pricing":{"model":"tiered"}}', "valueJson.pricing.model"),
    ('{"pricing":{"model":7}}', "valueJson.pricing.model"),
    (USAGE % "-0.01", "valueJson.pricing.price_per_unit"),
    (USAGE % "true", "valueJson.pricing.price_per_unit"),
    (USAGE % '"abc"', "valueJson.pricing.price_per_unit"),
    (USAGE % "null", "valueJson.pricing.price_per_unit"),
    ('{"pricing":{"model":"usage","usage_unit_type":"x"}}', "valueJson.pricing.price_per_unit"),
    ('{"pricing":{"model":"usage","price_per_unit":1}}', "valueJson.pricing.usage_unit_type"),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"  ","price_per_unit":1}}',
        "valueJson.pricing.usage_unit_type",
    ),
    (
        '{"pricing":{"model":"usage","usage_unit_type":3,"price_per_unit":1}}',
        "valueJson.pricing.usage_unit_type",
    ),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":1,"max_usage":-1}}',
        "valueJson.pricing.max_usage",
    ),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":1,"reset_mode":"never"}}',
        "valueJson.pricing.reset_mode",
    ),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":1,"max_usgae":1}}',
        "valueJson.pricing.max_usgae",
    ),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":1,"maxUsage":1,"max_usage":2}}',
        "valueJson.pricing.max_usage",
    ),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":1,"tiers":[]}}',
        "valueJson.pricing.tiers",
    ),
    ('{"pricing":{"model":"graduated","usage_unit_type":"x"}}', "valueJson.pricing.tiers"),
    (GRAD % "[]", "valueJson.pricing.tiers"),
    (GRAD % "{}", "valueJson.pricing.tiers"),
    (GRAD % "[5]", "valueJson.pricing.tiers[0]"),
    (
        GRAD
        % '[{"up_to":100,"price_per_unit":1},{"up_to":100,"price_per_unit":1},{"up_to":"inf","price_per_unit":1}]',
        "valueJson.pricing.tiers[1].up_to",
    ),
    (
        GRAD
        % '[{"up_to":100,"price_per_unit":1},{"up_to":50,"price_per_unit":1},{"up_to":"inf","price_per_unit":1}]',
        "valueJson.pricing.tiers[1].up_to",
    ),
    (
        GRAD % '[{"up_to":"inf","price_per_unit":1},{"up_to":100,"price_per_unit":1}]',
        "valueJson.pricing.tiers[0].up_to",
    ),
    (
        GRAD % '[{"up_to":100,"price_per_unit":1},{"up_to":200,"price_per_unit":1}]',
        "valueJson.pricing.tiers[1].up_to",
    ),
    (
        GRAD % '[{"up_to":0,"price_per_unit":1},{"up_to":"inf","price_per_unit":1}]',
        "valueJson.pricing.tiers[0].up_to",
    ),
    (
        GRAD % '[{"up_to":-5,"price_per_unit":1},{"up_to":"inf","price_per_unit":1}]',
        "valueJson.pricing.tiers[0].up_to",
    ),
    (GRAD % '[{"up_to":null,"price_per_unit":1}]', "valueJson.pricing.tiers[0].up_to"),
    (GRAD % '[{"up_to":"lots","price_per_unit":1}]', "valueJson.pricing.tiers[0].up_to"),
    (GRAD % '[{"price_per_unit":1}]', "valueJson.pricing.tiers[0].up_to"),
    (
        GRAD % '[{"up_to":10,"price_per_unit":1},{"up_to":"inf","price_per_unit":-1}]',
        "valueJson.pricing.tiers[1].price_per_unit",
    ),
    (
        GRAD % '[{"up_to":10,"price_per_unit":1,"flat_fee":-5},{"up_to":"inf","price_per_unit":1}]',
        "valueJson.pricing.tiers[0].flat_fee",
    ),
    (
        GRAD % '[{"up_to":10,"price_per_unit":1,"fee":5},{"up_to":"inf","price_per_unit":1}]',
        "valueJson.pricing.tiers[0].fee",
    ),
    (
        GRAD
        % (
            "["
            + ",".join(f'{{"up_to":{i},"price_per_unit":1}}' for i in range(1, 101))
            + ',{"up_to":"inf","price_per_unit":1}]'
        ),
        "valueJson.pricing.tiers",
    ),
    ('{"cost":{"cost_per_unit":1}}', "valueJson.cost.model"),
    ('{"cost":{"model":"fancy"}}', "valueJson.cost.model"),
    ('{"cost":{"model":"simple"}}', "valueJson.cost.cost_per_unit"),
    ('{"cost":{"model":"simple","cost_per_unit":-1}}', "valueJson.cost.cost_per_unit"),
    ('{"cost":{"model":"simple","cost_per_unit":1,"cost_unit":"EUR"}}', "valueJson.cost.cost_unit"),
    ('{"cost":{"model":"model_aware","model_costs":{}}}', "valueJson.cost.default_cost_per_unit"),
    (
        '{"cost":{"model":"model_aware","default_cost_per_unit":-1}}',
        "valueJson.cost.default_cost_per_unit",
    ),
    (
        '{"cost":{"model":"model_aware","default_cost_per_unit":1,"default_input_cost_per_unit":2}}',
        "valueJson.cost.default_input_cost_per_unit",
    ),
    (
        '{"cost":{"model":"model_aware","default_cost_per_unit":1,"default_output_cost_per_unit":-2}}',
        "valueJson.cost.default_output_cost_per_unit",
    ),
    (
        '{"cost":{"model":"model_aware","default_cost_per_unit":1,"model_costs":[]}}',
        "valueJson.cost.model_costs",
    ),
    (
        '{"cost":{"model":"model_aware","default_cost_per_unit":1,"model_costs":{"gpt-4":-1}}}',
        'valueJson.cost.model_costs["gpt-4"].input',
    ),
    (
        '{"cost":{"model":"model_aware","default_cost_per_unit":1,"model_costs":{"gpt-4":{"input":1,"output":"x"}}}}',
        'valueJson.cost.model_costs["gpt-4"].output',
    ),
    (
        '{"cost":{"model":"model_aware","default_cost_per_unit":1,"model_costs":{"gpt4":{"output":1}}}}',
        "valueJson.cost.model_costs.gpt4.input",
    ),
    ('{"credits":{"weight":1}}', "valueJson.credits.denomination"),
    ('{"credits":{"denomination":"ai tokens"}}', "valueJson.credits.denomination"),
    ('{"credits":{"denomination":""}}', "valueJson.credits.denomination"),
    ('{"credits":{"denomination":5}}', "valueJson.credits.denomination"),
    ('{"credits":{"denomination":"AI","weight":0}}', "valueJson.credits.weight"),
    ('{"credits":{"denomination":"AI","weight":-1}}', "valueJson.credits.weight"),
    ('{"credits":"AI"}', "valueJson.credits"),
    # legacy-form problems
    ('{"model":"usage","usage_unit_type":"x","price_per_unit":-1}', "valueJson.price_per_unit"),
    ('{"model":"bogus","price_per_unit":1}', "valueJson.model"),
    ('{"model":"usage","cost_rate":"abc"}', "valueJson.cost_rate"),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":1},"price_per_unit":2}',
        "valueJson.price_per_unit",
    ),
    (
        '{"pricing":{"model":"usage","usage_unit_type":"x","price_per_unit":1,"cost_per_unit":1},"cost":{"model":"simple","cost_per_unit":1}}',
        "valueJson.pricing.cost_per_unit",
    ),
    (
        '{"price_per_unit":1,"cost_per_unit":1,"cost":{"model":"simple","cost_per_unit":1}}',
        "valueJson.cost_per_unit",
    ),
    ('{"price_per_unit":1,"cost_model":"fancy","cost_per_unit":1}', "valueJson.cost_model"),
    (
        '{"price_per_unit":1,"cost_model":{"model":"simple","cost_per_unit":1},"cost_per_unit":1}',
        "valueJson.cost_per_unit",
    ),
    ('{"price_per_unit":1,"cost_model":{"model":"simple"}}', "valueJson.cost_model.cost_per_unit"),
    ('{"price_per_unit":1,"cost_per_unit":1,"cost_rate":2}', "valueJson.cost_rate"),
    ('{"price_per_unit":1,"cost_unit":"TOKENS"}', "valueJson.cost_per_unit"),
]


@pytest.mark.parametrize(("raw", "field"), INVALID)
def test_invalid_values_name_the_field(raw, field):
    with pytest.raises(InvalidRequest) as info:
        parse_rule_value(raw)
    assert info.value.field == field, info.value.message
    assert info.value.message.startswith(field)
    assert info.value.code == "invalid_request"


def test_custom_field_prefix_and_non_object_inputs():
    with pytest.raises(InvalidRequest) as info:
        parse_rule_value(USAGE % "-1", field="rules[2].valueJson")
    assert info.value.field == "rules[2].valueJson.pricing.price_per_unit"
    for raw in (5, [1], 1.5, b"\xff"):
        with pytest.raises(InvalidRequest) as info:
            parse_rule_value(raw)
        assert info.value.field == "valueJson"
    with pytest.raises(InvalidRequest):
        parse_rule_value("x" * 200_000)


def test_field_path():
    assert (
        field_path("valueJson", "pricing", "tiers", 1, "up_to")
        == "valueJson.pricing.tiers[1].up_to"
    )
    assert field_path("v", "model_costs", "gpt-4o") == 'v.model_costs["gpt-4o"]'
    assert field_path("", "a") == "a"


def test_parse_cost_model_and_default_config():
    assert parse_cost_model('{"model":"simple","cost_per_unit":1}') == SimpleCost(
        cost_per_unit=D(1)
    )
    assert parse_cost_model(None) is None
    assert parse_default_cost_config(None) is None
    assert parse_default_cost_config("{}") is None
    config = parse_default_cost_config(
        {"model_costs": {"gpt-4o": {"input": "0.0000025", "output": "0.00001"}}}
    )
    assert config.default_cost_per_unit is None
    assert config.model_costs["gpt-4o"].output == D("0.00001")
    config = parse_default_cost_config(
        {"model": "model_aware", "default_input_cost_per_unit": 0.001}
    )
    assert config.default_cost_per_unit == D("0.001")
    assert parse_default_cost_config(config.to_json()) == config
    with pytest.raises(InvalidRequest) as info:
        parse_default_cost_config({"model": "simple"}, "settings.defaultCost")
    assert info.value.field == "settings.defaultCost.model"
    with pytest.raises(InvalidRequest) as info:
        parse_default_cost_config({"model_costs": {"a": -1}}, "cfg")
    assert info.value.field == "cfg.model_costs.a.input"


def test_models_are_frozen():
    rule = parse_rule_value(SEED_FLAT_CAP)
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError
        rule.pricing.price_per_unit = D(1)
    assert isinstance(rule, RuleValue)


# --- property: any valid rule round-trips -------------------------------------------

amounts = st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def rule_values(draw):
    value = {}
    kind = draw(st.sampled_from(["usage", "graduated", None]))
    reset = draw(st.sampled_from(["reset", "accumulate"]))
    if kind == "usage":
        value["pricing"] = {
            "model": "usage",
            "usage_unit_type": "u",
            "price_per_unit": draw(amounts),
            "reset_mode": reset,
        }
    elif kind == "graduated":
        bounds = sorted(set(draw(st.lists(st.integers(1, 10**6), max_size=5))))
        tiers = [{"up_to": b, "price_per_unit": draw(amounts)} for b in bounds]
        tiers.append({"up_to": "inf", "price_per_unit": draw(amounts), "flat_fee": draw(amounts)})
        value["pricing"] = {
            "model": "graduated",
            "usage_unit_type": "u",
            "tiers": tiers,
            "reset_mode": reset,
        }
    if kind and draw(st.booleans()):
        value["pricing"]["max_usage"] = draw(amounts)
    if draw(st.booleans()):
        value["cost"] = {"model": "simple", "cost_per_unit": draw(amounts), "cost_unit": "CREDITS"}
    if draw(st.booleans()):
        value["credits"] = {
            "denomination": "AI_TOKENS",
            "weight": draw(amounts.filter(lambda d: d > 0)),
        }
    return value


@PROPS
@given(rule_values())
def test_valid_rules_roundtrip(value):
    rule = parse_rule_value(dumps_json(value))
    if not value:
        assert rule is None
        return
    assert rule.to_json() == value
    assert parse_rule_value(dumps_json(rule.to_json())) == rule
