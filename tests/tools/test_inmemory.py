"""The MCP server through the SDK's in-process client, in both protocol eras."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from mcp.client import Client

from tanso_mcp.errors import (
    ConfirmationRequired,
    Conflict,
    DuplicateEvent,
    InsufficientCredits,
    NotFound,
    PreconditionFailed,
    StripeApiError,
)
from tanso_mcp.principal import current_principal
from tanso_mcp.tools import ToolImpl, build_mcp_server, handlers_from
from tanso_mcp.tools.specs import TOOL_SPECS

from .conftest import MODES, PRINCIPALS, Recorder, call, connect
from .contract import (
    ADMIN_READS,
    CONFIRM_TOOLS,
    EXTRA_PARAMS,
    OVERWRITING_UPDATES,
    SEED_TOOLS,
    TOOLS_BY_ROLE,
    minimal_arguments,
)

pytestmark = pytest.mark.anyio


# --- listing ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ["read", "client", "admin"])
async def test_tools_list_per_role(role: str, mode: str) -> None:
    async with connect(role=role, mode=mode) as client:
        assert client.server_info is not None and client.server_info.name == "tanso-mcp"
        listed = (await client.list_tools()).tools
    names = [tool.name for tool in listed]
    assert len(names) == {"read": 13, "client": 20, "admin": 34}[role]
    assert set(names) == TOOLS_BY_ROLE[role]
    assert names == [name for name in SEED_TOOLS if name in TOOLS_BY_ROLE[role]]  # seed order

    reads = {n for n, (section, _) in SEED_TOOLS.items() if section == "read"} | ADMIN_READS
    for tool in listed:
        seed_params = SEED_TOOLS[tool.name][1]
        assert tool.title and tool.description
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is (tool.name in reads)
        assert tool.annotations.destructive_hint is (
            tool.name in CONFIRM_TOOLS or tool.name in OVERWRITING_UPDATES
        )
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        schema = tool.input_schema
        assert set(schema.get("required", [])) == {p for p, _, req in seed_params if req}
        assert set(schema["properties"]) == {p for p, _, _ in seed_params} | EXTRA_PARAMS.get(
            tool.name, set()
        )


async def test_no_principal_sees_nothing_and_may_call_nothing() -> None:
    recorder = Recorder()
    async with connect({"listPlans": recorder}, role=None) as client:
        assert (await client.list_tools()).tools == []
        is_error, body = await call(client, "listPlans", {})
    assert is_error and body["error"] == "forbidden"
    assert recorder.calls == []


async def test_contextvar_principal_wins_over_stdio_principal() -> None:
    recorder = Recorder()
    server = build_mcp_server("app", {"getCustomer": recorder}, stdio_principal=PRINCIPALS["admin"])
    token = current_principal.set(PRINCIPALS["read"])
    try:
        async with Client(server) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            is_error, _ = await call(client, "getCustomer", {"customerReferenceId": "c1"})
    finally:
        current_principal.reset(token)
    assert names == TOOLS_BY_ROLE["read"]
    assert not is_error
    assert recorder.calls[0][1] is PRINCIPALS["read"]


# --- roles -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("role", "tool"),
    [
        ("read", "createCustomer"),
        ("read", "cancelSubscription"),
        ("client", "adminCreatePlan"),
        ("client", "importStripeData"),
    ],
)
async def test_hidden_tools_are_forbidden(role: str, tool: str, mode: str) -> None:
    recorder = Recorder()
    async with connect({tool: recorder}, role=role, mode=mode) as client:
        is_error, body = await call(client, tool, minimal_arguments(tool))
    assert is_error
    assert body["error"] == "forbidden"
    assert role in body["message"]
    assert recorder.calls == []


# --- handlers and results --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_handler_receives_app_principal_and_typed_params(mode: str) -> None:
    app = object()
    recorder = Recorder({"success": True, "message": "created"})
    async with connect({"createCustomer": recorder}, role="client", mode=mode, app=app) as client:
        is_error, body = await call(
            client,
            "createCustomer",
            {"customerReferenceId": "user_1", "email": "a@b.c", "lastName": "Doe"},
        )
    assert not is_error and body == {"success": True, "message": "created"}
    [(got_app, principal, params)] = recorder.calls
    assert got_app is app
    assert principal is PRINCIPALS["client"]
    assert params.customerReferenceId == "user_1"
    assert params.lastName == "Doe" and params.firstName is None


async def test_list_results_are_wrapped_and_values_made_json() -> None:
    when = datetime(2026, 3, 16, 10, 30, tzinfo=UTC)
    plan = {
        "id": "p1",
        "key": "pro",
        "name": "Pro",
        "priceAmount": Decimal("99.00"),
        "currency": "USD",
        "intervalMonths": 1,
        "billingTiming": "IN_ADVANCE",
        "status": "ACTIVE",
        "createdAt": when,
        "modifiedAt": when,
    }
    recorder = Recorder([plan, {**plan, "id": "p2", "priceAmount": Decimal("0.10")}])
    async with connect({"adminListPlans": recorder}, role="admin") as client:
        # The SDK client validates structuredContent against the declared outputSchema.
        is_error, body = await call(client, "adminListPlans", {})
    assert not is_error
    wire = {**plan, "priceAmount": 99, "createdAt": "2026-03-16T10:30:00Z"}
    wire["modifiedAt"] = wire["createdAt"]
    assert body == {"items": [wire, {**wire, "id": "p2", "priceAmount": 0.1}]}


async def test_decimal_that_a_float_cannot_hold_stays_exact() -> None:
    recorder = Recorder({"balance": Decimal("0.12345678901234567890")})
    async with connect({"getCreditBalance": recorder}, role="read") as client:
        _, body = await call(
            client, "getCreditBalance", {"customerReferenceId": "c", "poolId": "p"}
        )
    assert body == {"balance": "0.12345678901234567890"}


async def test_unserialisable_result_is_serialization_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder({"value": object()})
    async with connect({"getFeature": recorder}, role="read") as client:
        with caplog.at_level(logging.ERROR, logger="tanso_mcp.tools"):
            is_error, body = await call(client, "getFeature", {"featureKey": "api"})
    assert is_error and body["error"] == "serialization_error"


@pytest.mark.parametrize("mode", MODES)
async def test_not_found_becomes_error_object(mode: str) -> None:
    recorder = Recorder(
        NotFound("No customer with that reference ID.", field="customerReferenceId")
    )
    async with connect({"getCustomer": recorder}, role="read", mode=mode) as client:
        is_error, body = await call(client, "getCustomer", {"customerReferenceId": "nobody"})
    assert is_error
    assert body == {
        "error": "not_found",
        "message": "No customer with that reference ID.",
        "field": "customerReferenceId",
    }


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (DuplicateEvent("seen before"), {"error": "duplicate_event", "message": "seen before"}),
        (
            StripeApiError("card declined"),
            {"error": "stripe_api_error", "message": "card declined"},
        ),
        (PreconditionFailed("no key"), {"error": "precondition_failed", "message": "no key"}),
        (
            InsufficientCredits("pool empty", detail={"balance": Decimal("0")}),
            {
                "error": "ingestion_failed",
                "message": "pool empty",
                "reason": "insufficient_credits",
                "detail": {"balance": 0},
            },
        ),
        (
            Conflict("taken", field="customerReferenceId"),
            {
                "error": "invalid_request",
                "message": "taken",
                "field": "customerReferenceId",
                "reason": "conflict",
            },
        ),
    ],
)
async def test_domain_errors(exc: Exception, expected: dict[str, Any]) -> None:
    async with connect({"ingestEvent": Recorder(exc)}, role="client") as client:
        is_error, body = await call(client, "ingestEvent", minimal_arguments("ingestEvent"))
    assert is_error and body == expected


async def test_unexpected_exception_is_generic_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(RuntimeError("db password is hunter2"))
    async with connect({"getFeature": recorder}, role="read") as client:
        with caplog.at_level(logging.ERROR, logger="tanso_mcp.tools"):
            is_error, body = await call(client, "getFeature", {"featureKey": "api"})
    assert is_error and body["error"] == "internal_error"
    assert "hunter2" not in body["message"]
    assert any("getFeature" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("tool", list(SEED_TOOLS))
async def test_tools_without_handler_are_not_available(tool: str) -> None:
    async with connect(role="admin") as client:
        is_error, body = await call(client, tool, minimal_arguments(tool))
    assert is_error
    assert body["error"] == "precondition_failed"
    assert body["message"].startswith(f"{tool} is not available yet: ")
    assert body["message"].endswith("has not been implemented in this build")


def test_unknown_handler_name_is_refused() -> None:
    with pytest.raises(ValueError, match="cancelSubscriptions"):
        build_mcp_server(None, {"cancelSubscriptions": Recorder()})
    with pytest.raises(ValueError, match="not a confirmAction tool"):
        build_mcp_server(None, {"getCustomer": ToolImpl(Recorder(), preview=Recorder())})


async def test_handlers_from_module_like_object() -> None:
    class Impl:
        get_customer = Recorder({"customerReferenceId": "c"})
        cancel_subscription = Recorder()
        cancel_subscription_preview = Recorder({"accessEndsAt": "2026-04-01T00:00:00Z"})

    found = handlers_from(Impl)
    assert set(found) == {"getCustomer", "cancelSubscription"}
    assert found["cancelSubscription"].preview is Impl.cancel_subscription_preview
    async with connect(found, role="client") as client:
        _, body = await call(client, "cancelSubscription", {"subscriptionId": "s1"})
    assert body["preview"]["accessEndsAt"] == "2026-04-01T00:00:00Z"
    assert Impl.cancel_subscription.calls == []


# --- argument validation ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("getCustomer", {}, "customerReferenceId"),
        ("getCustomer", {"customerReferenceId": 42}, "customerReferenceId"),
        ("getCustomer", {"customerReferenceId": ""}, "customerReferenceId"),
        ("getCustomer", {"customerReferenceId": "c", "customerId": "x"}, "customerId"),
        (
            "cancelSubscription",
            {"subscriptionId": "s", "cancelMode": "NOW", "confirmAction": True},
            "cancelMode",
        ),
        (
            "changeSubscriptionPlan",
            {"subscriptionId": "s", "newPlanId": "p", "confirmAction": True},
            "changeType",
        ),
        (
            "changeSubscriptionPlan",
            {
                "subscriptionId": "s",
                "newPlanId": "p",
                "changeType": "SIDEWAYS",
                "confirmAction": True,
            },
            "changeType",
        ),
        ("adminCreatePlan", {"key": "k", "name": "n", "priceAmount": "ten"}, "priceAmount"),
        ("adminCreatePlan", {"key": "k", "name": "n", "priceAmount": True}, "priceAmount"),
        (
            "adminCreatePlan",
            {"key": "k", "name": "n", "priceAmount": "1", "billingTiming": "LATER"},
            "billingTiming",
        ),
        ("adminUpdatePlan", {"planId": "p", "status": "LIVE"}, "status"),
        ("adminUpdateFeature", {"featureId": "f", "isEnabled": "maybe"}, "isEnabled"),
        (
            "adminLinkFeatureToPlan",
            {"planId": "p", "featureId": "f", "valueJson": "{oops"},
            "valueJson",
        ),
        ("adminLinkFeatureToPlan", {"planId": "p", "featureId": "f", "type": "EXTRA"}, "type"),
        ("ingestEvent", {**minimal_arguments("ingestEvent"), "usageUnits": [1]}, "usageUnits"),
        ("cancelSubscription", {"subscriptionId": "s", "confirmAction": "yes"}, "confirmAction"),
    ],
)
async def test_bad_arguments_are_invalid_request_naming_the_field(
    tool: str, arguments: dict[str, Any], field: str, mode: str
) -> None:
    recorder = Recorder()
    async with connect({tool: recorder}, role="admin", mode=mode) as client:
        is_error, body = await call(client, tool, arguments)
    assert is_error
    assert body["error"] == "invalid_request"
    assert body["field"] == field
    assert field in body["message"]
    assert recorder.calls == []


async def test_every_problem_is_listed_in_the_message() -> None:
    async with connect({"createCustomer": Recorder()}, role="client") as client:
        _, body = await call(client, "createCustomer", {"email": 7})
    assert body["field"] == "customerReferenceId"
    assert "customerReferenceId is required" in body["message"]
    assert "email must be a string" in body["message"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("tool", "param", "sent", "received"),
    [
        ("adminCreatePlan", "priceAmount", "0.10", "0.10"),
        ("adminCreatePlan", "priceAmount", 0.1, "0.1"),
        ("adminCreatePlan", "priceAmount", 99, "99"),
        ("adminCreatePlan", "intervalMonths", 12, "12"),
        ("adminUpdatePlan", "intervalMonths", "3", "3"),
        ("adminUpdatePlan", "priceAmount", 19.99, "19.99"),
        ("ingestEvent", "usageUnits", 2.5, "2.5"),
        ("ingestEvent", "usageUnits", "1000000", "1000000"),
        ("evaluateEntitlement", "requestedUsage", 100, "100"),
        ("evaluateEntitlement", "requestedUsage", "0.000001", "0.000001"),
    ],
)
async def test_numeric_parameters_accept_strings_and_numbers_exactly(
    tool: str, param: str, sent: Any, received: str, mode: str
) -> None:
    recorder = Recorder()
    arguments = {**minimal_arguments(tool), param: sent}
    async with connect({tool: recorder}, role="admin", mode=mode) as client:
        is_error, _ = await call(client, tool, arguments)
    assert not is_error
    value = getattr(recorder.calls[0][2], param)
    assert value == received and type(value) is str


async def test_defaults_reach_the_handler() -> None:
    event, plan = Recorder(), Recorder()
    async with connect({"ingestEvent": event, "adminCreatePlan": plan}, role="admin") as client:
        await call(client, "ingestEvent", minimal_arguments("ingestEvent"))
        await call(client, "adminCreatePlan", minimal_arguments("adminCreatePlan"))
    assert event.calls[0][2].usageUnits == "1"
    created = plan.calls[0][2]
    assert (created.intervalMonths, created.billingTiming, created.creditAllocations) == (
        "1",
        "IN_ADVANCE",
        None,
    )


# --- confirmation guard ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tool", sorted(CONFIRM_TOOLS))
@pytest.mark.parametrize("confirm", [None, False, "false"])
async def test_guarded_tools_need_confirmation(tool: str, confirm: Any, mode: str) -> None:
    recorder = Recorder()
    arguments = minimal_arguments(tool, confirm=False)
    if confirm is not None:
        arguments["confirmAction"] = confirm
    async with connect({tool: recorder}, role="admin", mode=mode) as client:
        is_error, body = await call(client, tool, arguments)
    assert is_error
    assert body["error"] == "confirmation_required"
    assert "confirmAction" in body["message"]
    preview = body["preview"]
    assert preview["tool"] == tool and preview["effect"]
    assert "confirmAction" not in preview["arguments"]
    assert recorder.calls == []  # nothing ran, nothing written


@pytest.mark.parametrize("confirm", [True, "true", "TRUE"])
async def test_confirmed_calls_run(confirm: Any) -> None:
    recorder = Recorder()
    async with connect({"markInvoicePaid": recorder}, role="client") as client:
        is_error, body = await call(
            client, "markInvoicePaid", {"invoiceId": "inv_1", "confirmAction": confirm}
        )
    assert not is_error and body == {"success": True}
    assert recorder.calls[0][2].confirmAction is True


async def test_preview_function_is_merged_and_sees_validated_params() -> None:
    handler = Recorder()
    preview = Recorder({"entitlementsLost": ["api_access"], "creditAmount": Decimal("12.50")})
    impl = ToolImpl(handler, preview)
    async with connect({"cancelSubscription": impl}, role="client") as client:
        _, body = await call(
            client, "cancelSubscription", {"subscriptionId": "sub_1", "cancelMode": "IMMEDIATELY"}
        )
    assert body["error"] == "confirmation_required"
    assert body["preview"]["entitlementsLost"] == ["api_access"]
    assert body["preview"]["creditAmount"] == 12.5
    assert body["preview"]["arguments"] == {"subscriptionId": "sub_1", "cancelMode": "IMMEDIATE"}
    assert preview.calls[0][2].cancelMode == "IMMEDIATE"
    assert handler.calls == []


async def test_preview_not_found_is_reported_as_such() -> None:
    impl = ToolImpl(Recorder(), Recorder(NotFound("No such subscription.", field="subscriptionId")))
    async with connect({"cancelSubscription": impl}, role="client") as client:
        _, body = await call(client, "cancelSubscription", {"subscriptionId": "nope"})
    assert body == {
        "error": "not_found",
        "message": "No such subscription.",
        "field": "subscriptionId",
    }


async def test_broken_preview_falls_back_to_the_generic_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    impl = ToolImpl(Recorder(), Recorder(RuntimeError("boom")))
    async with connect({"adminUnlinkFeatureFromPlan": impl}, role="admin") as client:
        with caplog.at_level(logging.ERROR, logger="tanso_mcp.tools"):
            _, body = await call(
                client, "adminUnlinkFeatureFromPlan", {"planId": "p", "featureId": "f"}
            )
    assert body["error"] == "confirmation_required"
    assert body["preview"]["tool"] == "adminUnlinkFeatureFromPlan"


async def test_stripe_key_is_masked_in_the_preview() -> None:
    handler = Recorder()
    async with connect({"registerStripeApiKey": handler}, role="admin") as client:
        _, body = await call(
            client, "registerStripeApiKey", {"stripeApiKey": "sk_test_supersecret"}
        )
        assert "supersecret" not in str(body)
        await call(
            client,
            "registerStripeApiKey",
            {"stripeApiKey": "sk_test_supersecret", "confirmAction": True},
        )
    assert handler.calls[0][2].stripeApiKey.get_secret_value() == "sk_test_supersecret"


async def test_handler_raising_confirmation_required_keeps_its_preview() -> None:
    handler = Recorder(ConfirmationRequired("really?", preview={"invoices": 2}))
    async with connect({"markInvoicePaid": handler}, role="client") as client:
        _, body = await call(client, "markInvoicePaid", {"invoiceId": "i", "confirmAction": True})
    assert body == {
        "error": "confirmation_required",
        "message": "really?",
        "preview": {"invoices": 2},
    }


def test_every_spec_is_registered() -> None:
    server = build_mcp_server(None)
    assert [spec.name for spec in TOOL_SPECS] == list(SEED_TOOLS)
    assert server.name == "tanso-mcp"
