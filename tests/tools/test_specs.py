"""The declarative tool table against the contract, without any transport."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from tanso_mcp.tools.fields import number_text
from tanso_mcp.tools.specs import (
    LIST_TOOLS,
    SPECS_BY_NAME,
    TOOL_SPECS,
    CancelSubscriptionParams,
    CreatePlanParams,
    LinkFeatureParams,
    UpdatePlanParams,
    input_schema,
    specs_for_role,
    strict_output_schema,
)

from .contract import (
    ADMIN_READS,
    CONFIRM_TOOLS,
    EXTRA_PARAMS,
    IDEMPOTENT_WRITES,
    NUMERIC_PARAMS,
    OVERWRITING_UPDATES,
    SEED_TOOLS,
    STRIPE_TOOLS,
    TOOLS_BY_ROLE,
)
from .seed import find_seed, parse_seed


def test_transcription_matches_seed() -> None:
    path = find_seed()
    if path is None:
        pytest.skip("seed file not reachable from this checkout")
    tools, confirm = parse_seed(path.read_text())
    assert tools == SEED_TOOLS
    assert confirm == CONFIRM_TOOLS


def test_table_has_exactly_the_seed_tools_in_seed_order() -> None:
    assert [spec.name for spec in TOOL_SPECS] == list(SEED_TOOLS)
    assert len(SPECS_BY_NAME) == 34


@pytest.mark.parametrize("role", ["read", "client", "admin"])
def test_roles(role: str) -> None:
    assert {spec.name for spec in specs_for_role(role)} == TOOLS_BY_ROLE[role]
    assert len(specs_for_role(role)) == {"read": 13, "client": 20, "admin": 34}[role]


@pytest.mark.parametrize("name", list(SEED_TOOLS))
def test_parameters_match_seed(name: str) -> None:
    spec = SPECS_BY_NAME[name]
    seed_params = SEED_TOOLS[name][1]
    fields = list(spec.params.model_fields)
    assert fields[: len(seed_params)] == [p for p, _, _ in seed_params]
    assert set(fields[len(seed_params) :]) == EXTRA_PARAMS.get(name, set())

    schema = input_schema(spec)
    assert list(schema["properties"]) == fields
    assert set(schema.get("required", [])) == {p for p, _, required in seed_params if required}
    assert schema["additionalProperties"] is False
    for param, seed_type, _ in seed_params:
        prop = schema["properties"][param]
        assert prop.get("description"), (name, param)
        assert "title" not in prop
        if param in NUMERIC_PARAMS:
            assert prop["anyOf"] == [{"type": "string"}, {"type": "number"}]
        else:
            assert prop["type"] == seed_type, (name, param)


@pytest.mark.parametrize("spec", TOOL_SPECS, ids=lambda s: s.name)
def test_metadata_and_annotations(spec) -> None:
    assert spec.title and spec.title[0].isupper()
    assert len(spec.description) > 100
    assert re.fullmatch(r"[a-z][a-z_]+", spec.handler)
    assert spec.capability
    assert spec.confirm is (spec.name in CONFIRM_TOOLS)
    if spec.confirm:
        assert spec.effect and "confirmAction" in spec.description
        assert spec.params.model_fields["confirmAction"].alias is None
    reads = {n for n, (section, _) in SEED_TOOLS.items() if section == "read"} | ADMIN_READS
    ann = spec.annotations
    assert ann.read_only_hint is (spec.name in reads)
    assert ann.destructive_hint is (spec.confirm or spec.name in OVERWRITING_UPDATES)
    assert ann.idempotent_hint is (spec.name in reads or spec.name in IDEMPOTENT_WRITES)
    assert ann.open_world_hint is (spec.name in STRIPE_TOOLS)
    out = strict_output_schema(spec)
    assert out["type"] == "object"
    if spec.name in LIST_TOOLS:
        assert out["required"] == ["items"]


def test_handler_names_are_unique() -> None:
    handlers = [spec.handler for spec in TOOL_SPECS]
    assert len(set(handlers)) == len(handlers)


def test_list_tools() -> None:
    assert LIST_TOOLS == {
        "listPlans",
        "listFeatures",
        "listCustomerEntitlements",
        "listCustomerInvoices",
        "getCreditPools",
        "adminListFeatures",
        "adminListPlans",
    }


def _shingles(text: str, size: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def test_descriptions_are_written_in_our_own_words() -> None:
    path = find_seed()
    if path is None:
        pytest.skip("seed file not reachable from this checkout")
    seed = _shingles(path.read_text())
    for spec in TOOL_SPECS:
        texts = [spec.description] + [
            str(f.description) for f in spec.params.model_fields.values() if f.description
        ]
        for text in texts:
            shared = _shingles(text) & seed
            assert not shared, (spec.name, shared)


# --- parameter types -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("0.10", "0.10"),
        (0.1, "0.1"),
        (5, "5"),
        (99.0, "99.0"),
        ("  12 ", "12"),
        ("-3.5", "-3.5"),
        ("1e3", "1e3"),
        (1e21, "1e+21"),
        (12345678901234567890, "12345678901234567890"),
    ],
)
def test_number_text_keeps_exact_value(raw, text) -> None:
    assert number_text(raw) == text


@pytest.mark.parametrize(
    "raw", [True, False, "abc", "", "1,5", "NaN", "inf", float("nan"), [1], None, "1_000"]
)
def test_number_text_rejects(raw) -> None:
    with pytest.raises(ValueError):
        number_text(raw)


def test_enums_normalise_and_reject() -> None:
    ok = CancelSubscriptionParams.model_validate(
        {"subscriptionId": "s", "cancelMode": "immediately"}
    )
    assert ok.cancelMode == "IMMEDIATE"
    assert (
        CancelSubscriptionParams.model_validate({"subscriptionId": "s"}).cancelMode
        == "END_OF_PERIOD"
    )
    with pytest.raises(ValidationError) as info:
        UpdatePlanParams.model_validate({"planId": "p", "status": "LIVE", "billingTiming": "LATER"})
    assert {e["loc"][0] for e in info.value.errors()} == {"status", "billingTiming"}


def test_create_plan_defaults_and_numbers() -> None:
    params = CreatePlanParams.model_validate({"key": "k", "name": "n", "priceAmount": 0.1})
    assert (params.priceAmount, params.intervalMonths, params.billingTiming) == (
        "0.1",
        "1",
        "IN_ADVANCE",
    )


def test_value_json_accepts_text_or_object() -> None:
    text = '{"pricing": {"model": "usage", "price_per_unit": 0.10}}'
    assert (
        LinkFeatureParams.model_validate(
            {"planId": "p", "featureId": "f", "valueJson": text}
        ).valueJson
        == text
    )
    obj = LinkFeatureParams.model_validate(
        {"planId": "p", "featureId": "f", "valueJson": {"pricing": {"model": "usage"}}}
    )
    assert obj.valueJson == '{"pricing":{"model":"usage"}}'
    with pytest.raises(ValidationError):
        LinkFeatureParams.model_validate(
            {"planId": "p", "featureId": "f", "valueJson": "{not json"}
        )
