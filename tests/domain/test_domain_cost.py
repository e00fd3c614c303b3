from datetime import UTC, date, datetime
from decimal import Decimal as D

import pytest

from tanso_mcp.domain.cost import (
    MODEL_PRICES,
    CostInput,
    ModelPrice,
    lookup_model_price,
    match_model_name,
    normalize_model_name,
    parse_cost_input,
    resolve_cost,
    rule_cost,
    table_cost,
)
from tanso_mcp.domain.rules import (
    CostUnit,
    ModelAwareCost,
    SimpleCost,
    parse_default_cost_config,
    parse_rule_value,
)
from tanso_mcp.errors import InvalidRequest

NOW = datetime(2025, 11, 1, tzinfo=UTC)


def test_appendix_b_model_pricing():
    overrides = [ModelPrice("my-model", "acme", D("2.50"), D("10.00"), date(2020, 1, 1))]
    assert table_cost("my-model", 3000, 500, None, NOW, overrides) == D("0.0125")
    # gpt-4o is listed at $2.50 / $10.00 today
    assert table_cost("gpt-4o", 3000, 500, None, NOW) == D("0.0125")
    resolved = resolve_cost(
        at=NOW,
        usage_units=1,
        cost_input=CostInput(model="gpt-4o", input_tokens=D(3000), output_tokens=D(500)),
    )
    assert resolved.amount == D("0.012500")
    assert resolved.source == "global_model_pricing"
    assert resolved.provider == "openai"
    assert resolved.cost_unit is CostUnit.CURRENCY
    amount, source = resolved
    assert (amount, source) == (D("0.0125"), "global_model_pricing")


def test_table_effective_dating():
    early = datetime(2024, 6, 1, tzinfo=UTC)
    match = lookup_model_price("gpt-4o", early)
    assert (match.input_per_million, match.output_per_million) == (D("5.00"), D("15.00"))
    match = lookup_model_price("gpt-4o", datetime(2024, 10, 2, tzinfo=UTC))
    assert match.input_per_million == D("2.50")
    match = lookup_model_price("gpt-4o", datetime(2024, 10, 1, 23, 59, tzinfo=UTC))
    assert match.input_per_million == D("5.00")
    # before any entry: the earliest known price
    match = lookup_model_price("gpt-4o", datetime(2020, 1, 1, tzinfo=UTC))
    assert match.input_per_million == D("5.00")
    # a snapshot that kept its launch price
    assert lookup_model_price("gpt-4o-2024-05-13", NOW).input_per_million == D("5.00")


def test_table_covers_common_providers():
    providers = {entry.provider for entry in MODEL_PRICES}
    assert {"openai", "anthropic", "google", "mistral", "meta"} <= providers
    for entry in MODEL_PRICES:
        assert entry.input_per_million >= 0 and entry.output_per_million >= 0
        assert entry.model == entry.model.lower()
    keys = [(e.model, e.effective_from) for e in MODEL_PRICES]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("name", "model", "fuzzy"),
    [
        ("gpt-4o", "gpt-4o", False),
        ("GPT-4o", "gpt-4o", False),
        (" gpt-4o ", "gpt-4o", False),
        ("openai/gpt-4o", "gpt-4o", True),
        ("gpt-4o-2024-08-06", "gpt-4o", True),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", True),
        ("gpt-4o-mini", "gpt-4o-mini", False),
        ("gpt-4o-audio-preview", "gpt-4o", True),
        ("gpt-4-0613", "gpt-4", True),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo", True),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo", True),
        ("o1-preview", "o1", True),
        ("o1-pro", "o1-pro", False),
        ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet", True),
        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet", True),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet", True),
        ("us.anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku", True),
        ("anthropic/claude-3.5-sonnet", "claude-3-5-sonnet", True),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet", True),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", True),
        ("claude-sonnet-4-20250514", "claude-sonnet-4", True),
        ("claude-opus-4-1-20250805", "claude-opus-4-1", True),
        ("models/gemini-1.5-pro-002", "gemini-1.5-pro", True),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash", True),
        ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite", False),
        ("gemini-3-pro-preview", "gemini-3-pro", True),
        ("mistral-large-latest", "mistral-large", True),
        ("mistral-large-2411", "mistral-large", True),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "llama-3.1-8b", True),
        ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "llama-3.3-70b", True),
        ("command-r-08-2024", "command-r", True),
        ("deepseek/deepseek-chat", "deepseek-chat", True),
    ],
)
def test_fuzzy_model_matching(name, model, fuzzy):
    match = lookup_model_price(name, NOW)
    assert match is not None, name
    assert (match.model, match.fuzzy) == (model, fuzzy)


@pytest.mark.parametrize("name", ["unknown-model", "", "   ", "gpt", "claude", "4o"])
def test_unknown_models(name):
    assert lookup_model_price(name, NOW) is None
    assert table_cost(name, 1, 1, None, NOW) is None


def test_prefix_match_needs_a_boundary():
    assert match_model_name("gpt-4oxyz", ["gpt-4o"]) is None
    assert match_model_name("gpt-4o-x", ["gpt-4", "gpt-4o"]) == ("gpt-4o", True)
    assert normalize_model_name("OpenAI/GPT-4o-2024-08-06") == "gpt-4o"


def test_overrides_win_and_extend():
    overrides = [
        ModelPrice("gpt-4o", "openai", D("1"), D("2"), date(2025, 1, 1)),
        ModelPrice("in-house-llm", "self", D("0.5"), D("0.5"), date(2025, 1, 1)),
    ]
    match = lookup_model_price("gpt-4o-2024-08-06", NOW, overrides)
    assert (match.input_per_million, match.source) == (D("1"), "override")
    # before the override takes effect, the built-in entry applies
    match = lookup_model_price("gpt-4o", datetime(2024, 12, 1, tzinfo=UTC), overrides)
    assert (match.input_per_million, match.source) == (D("2.50"), "builtin")
    assert table_cost("in-house-llm", 1_000_000, 0, None, NOW, overrides) == D("0.5")


def test_table_cost_units_as_input_tokens():
    assert table_cost("gpt-4o", None, None, 1000, NOW) == D("0.0025")
    assert table_cost("gpt-4o", None, 1000, 5000, NOW) == D("0.01")
    assert table_cost("gpt-4o", None, None, None, NOW) == 0


def test_rule_cost_simple_and_model_aware():
    assert rule_cost(SimpleCost(cost_per_unit=D("0.03")), 100) == D("3.00")
    cost = parse_rule_value(
        '{"cost":{"model":"model_aware","default_cost_per_unit":0.00003,'
        '"model_costs":{"gpt-4":0.00006,"claude-3-opus":{"input":0.000015,"output":0.000075}}}}'
    ).cost
    assert isinstance(cost, ModelAwareCost)
    # single-rate: quantity x (model rate or default)
    assert rule_cost(cost, 1000, CostInput(model="gpt-4")) == D("0.06")
    assert rule_cost(cost, 1000, CostInput(model="gpt-4-0613")) == D("0.06")  # fuzzy
    assert rule_cost(cost, 1000, CostInput(model="other")) == D("0.03")
    assert rule_cost(cost, 1000) == D("0.03")
    assert rule_cost(cost, 1000, CostInput(model="gpt-4", cost_units=D(10))) == D("0.0006")
    # two-rate
    two = CostInput(model="claude-3-opus", input_tokens=D(1000), output_tokens=D(100))
    assert rule_cost(cost, 1, two) == D("0.015") + D("0.0075")
    # defaults: output falls back to the input default
    assert rule_cost(cost, 1, CostInput(input_tokens=D(10), output_tokens=D(10))) == D("0.0006")
    cost2 = ModelAwareCost(
        default_cost_per_unit=D("0.001"), default_output_cost_per_unit=D("0.002")
    )
    assert rule_cost(cost2, 1, CostInput(output_tokens=D(10))) == D("0.02")


def test_resolve_cost_chain_order():
    rule = SimpleCost(cost_per_unit=D("0.01"), cost_unit="TOKENS")
    default = parse_default_cost_config({"model_costs": {"gpt-4o": 0.5}})
    gpt = CostInput(model="gpt-4o", input_tokens=D(1000), output_tokens=D(0))
    explicit = resolve_cost(
        at=NOW, usage_units=10, cost_amount="0.1234567", rule_cost_model=rule, cost_input=gpt
    )
    assert tuple(explicit) == (D("0.123457"), "explicit")
    assert explicit.cost_unit is CostUnit.CURRENCY
    by_rule = resolve_cost(
        at=NOW, usage_units=10, rule_cost_model=rule, default_config=default, cost_input=gpt
    )
    assert tuple(by_rule) == (D("0.100000"), "rule")
    assert by_rule.cost_unit is CostUnit.TOKENS
    by_default = resolve_cost(at=NOW, usage_units=10, default_config=default, cost_input=gpt)
    assert tuple(by_default) == (D("500"), "account_default")
    # the default config has no rate for this model and no default: fall through to the table
    fallthrough = resolve_cost(
        at=NOW,
        usage_units=10,
        default_config=default,
        cost_input=CostInput(model="claude-3-haiku", input_tokens=D(1_000_000)),
    )
    assert tuple(fallthrough) == (D("0.25"), "global_model_pricing")
    fuzzy = resolve_cost(
        at=NOW, usage_units=2000, cost_input=CostInput(model="openai/gpt-4o-2024-08-06")
    )
    assert tuple(fuzzy) == (D("0.005"), "global_model_pricing")
    assert fuzzy.fuzzy and fuzzy.model_resolved == "gpt-4o"
    nothing = resolve_cost(at=NOW, usage_units=10, cost_input=CostInput(model="mystery"))
    assert tuple(nothing) == (None, None)
    assert tuple(resolve_cost(at=NOW, usage_units=10)) == (None, None)


def test_resolve_cost_default_with_default_rate_applies_without_model():
    default = parse_default_cost_config({"default_cost_per_unit": "0.0001"})
    assert tuple(resolve_cost(at=NOW, usage_units=50, default_config=default)) == (
        D("0.005"),
        "account_default",
    )


def test_resolve_cost_rounds_to_six_places_and_validates_explicit():
    rule = SimpleCost(cost_per_unit=D("0.0000001"))
    assert resolve_cost(at=NOW, usage_units=7, rule_cost_model=rule).amount == D("0.000001")
    for bad in ("-1", "abc", True, float("nan")):
        with pytest.raises(InvalidRequest) as info:
            resolve_cost(at=NOW, usage_units=1, cost_amount=bad)
        assert info.value.field == "costAmount"


def test_parse_cost_input():
    assert parse_cost_input(None) is None
    assert parse_cost_input({}) is None
    parsed = parse_cost_input(
        {
            "model": " gpt-4o ",
            "modelProvider": "openai",
            "inputTokens": 3000,
            "output_tokens": "500",
        }
    )
    assert parsed == CostInput(
        model="gpt-4o", model_provider="openai", input_tokens=D(3000), output_tokens=D(500)
    )
    assert parsed.has_tokens
    assert parse_cost_input({"costUnits": 5}).cost_units == 5
    cases = [
        ({"inputTokens": -1}, "costInput.inputTokens"),
        ({"inputTokens": "many"}, "costInput.inputTokens"),
        ({"model": ""}, "costInput.model"),
        ({"model": 5}, "costInput.model"),
        ({"tokens": 5}, "costInput.tokens"),
        ({"inputTokens": 1, "input_tokens": 2}, "costInput.input_tokens"),
    ]
    for raw, field in cases:
        with pytest.raises(InvalidRequest) as info:
            parse_cost_input(raw)
        assert info.value.field == field
    with pytest.raises(InvalidRequest):
        parse_cost_input([1])
