"""The 34 standard MCP tools of tanso-mcp, as data (optional groups: ``specs_<group>.py``).

One ``ToolSpec`` per tool: its name, title, description, parameter model, the minimum
role that may see and call it, its annotations, whether it is guarded by
``confirmAction``, the conventional name of the function implementing it, and the shape
of its successful result. No behaviour lives here; ``server.py`` turns the table into an
MCP server and the services plug handlers into it.

Parameter models follow the tool contract exactly: field names are the contract's
parameter names, required fields are the contract's required parameters. Two deliberate
extensions: ``adminCreatePlan`` and ``adminUpdatePlan`` take an optional
``creditAllocations`` JSON string. ``confirmAction`` is a plain field
(never an alias), defaults to ``False`` in the model so that an omitted value reaches the
confirmation guard instead of failing validation, and is still advertised as required in
the tool's input schema, as the contract lists it.

Result conventions (``output_schema``): every result is a JSON object whose schema is
generated from its answer model in ``services.outputs`` (the models the REST API
documents too). Tools whose natural answer is a list answer ``{"items": [...]}``; the
server wraps a list returned by a handler accordingly. Write tools answer
``{"success": true, "message": ..., <resource key>: ...}``. The declared schema is the
model's, relaxed at the top level only so that it also admits the tool's error objects
(see ``_Declared``); ``strict_output_schema`` is the model's own, which successful answers
match exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from tanso_mcp.principal import Role, role_allows
from tanso_mcp.services.outputs import (
    CatalogPlanOut,
    CheckOut,
    CreditPoolDetailOut,
    CustomerOut,
    CustomerWriteOut,
    EffectsOut,
    EventOut,
    FeatureOut,
    FeatureWriteOut,
    InvoiceOut,
    PlanOut,
    PlanWriteOut,
    RuleOut,
    RuleWriteOut,
    SubscribedWriteOut,
    SubscriptionEntitlementsOut,
    UnlinkOut,
)
from tanso_mcp.services.outputs_stripe import (
    ImportJobOut,
    StripeDiscoveryOut,
    StripeKeyOut,
    StripeSetupOut,
    StripeStatusOut,
)
from tanso_mcp.tools.fields import (
    Choice,
    Flag,
    JsonText,
    NumberText,
    RequiredText,
    Text,
    UnitsText,
)

__all__ = [
    "LIST_TOOLS",
    "SPECS_BY_NAME",
    "TOOL_SPECS",
    "ToolParams",
    "ToolSpec",
    "input_schema",
    "specs_for_role",
]


class ToolParams(BaseModel):
    """Base of every tool's parameter model: immutable, unknown parameters rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    title: str
    description: str
    params: type[ToolParams]
    role: Role
    """Minimum role (admin ⊇ client ⊇ read) that sees the tool and may call it."""
    annotations: ToolAnnotations
    confirm: bool
    """Guarded by ``confirmAction``: without ``confirmAction: true`` nothing runs."""
    handler: str
    """Conventional name of the implementing function (see ``server.handlers_from``)."""
    capability: str
    """What the tool needs from the build, named in the 'not available yet' answer."""
    output_schema: Mapping[str, Any]
    effect: str = ""
    """For guarded tools: one sentence on what confirming would do (default preview)."""
    group: str = "core"
    """``core`` (always offered) or the optional tool group it belongs to (see ``groups``)."""

    def allows(self, role: str) -> bool:
        return role_allows(role, self.role)


# ---------------------------------------------------------------------------------------
# Shared wording and schema fragments

_CUSTOMER = "The customer's ID in your own system (its customerReferenceId), e.g. `user_abc123`"
_CONFIRM = (
    "Must be true to carry out the action. Omitted or false: nothing is changed and the "
    "answer is a confirmation_required error with a preview of the consequences."
)
_PLAN_ID = "ID of the plan (UUID), as returned by adminListPlans or adminCreatePlan"
_FEATURE_ID = "ID of the feature (UUID), as returned by adminListFeatures or adminCreateFeature"
_VALUE_JSON = (
    'Pricing/cost rule as a JSON string: {"pricing": {...}, "cost": {...}}. Omit for a '
    "plain on/off feature. See the tool description for the models and their fields."
)
_CREDIT_ALLOCATIONS = (
    "Optional JSON string: a list of credit grants issued each period, e.g. "
    '[{"denomination": "AI_TOKENS", "creditAmount": 100000, "grantExpiresMonths": 1, '
    '"hardLimit": true, "rolloverPolicy": "NONE|FULL|CAPPED", "rolloverCap": 50000}]'
)


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """Resolve ``$ref``s into ``$defs`` (the models are not recursive) and drop pydantic's
    titles: an outputSchema that stands alone, readable by any client."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = _inline(defs[ref.rsplit("/", 1)[-1]], defs)
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return {**target, **_inline(extra, defs)}
        return {
            k: _inline(v, defs)
            for k, v in node.items()
            if k not in ("$defs", "title") or isinstance(v, dict) and k == "title"
        }
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


class _Declared(dict):
    """A tool's declared output schema (what ``tools/list`` shows) that also keeps the
    answer model's strict schema (``strict``: every field declared, required ones listed)
    for the tests.

    The declared form relaxes only the top level (no required fields, other properties
    allowed): the same outputSchema also covers the tool's error answers
    (``{"error", "message", …}`` with ``isError: true``), which clients such as the
    TypeScript SDK validate against it as well."""

    strict: dict[str, Any]


def _declare(strict: dict[str, Any]) -> _Declared:
    declared = _Declared(copy.deepcopy(strict))
    declared.pop("required", None)
    declared["additionalProperties"] = True
    declared.strict = strict
    return declared


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="serialization")
    out = _inline(schema, schema.get("$defs", {}))
    out.setdefault("description", (model.__doc__ or "").strip() or model.__name__)
    return out


def _model(model: type[BaseModel]) -> _Declared:
    """The tool's output schema, generated from the answer's model (``services.outputs``),
    the same model the REST API documents."""
    return _declare(_model_schema(model))


def _items(model: type[BaseModel], description: str) -> _Declared:
    return _declare(
        {
            "type": "object",
            "description": description + ' Wrapped as {"items": [...]}.',
            "properties": {"items": {"type": "array", "items": _model_schema(model)}},
            "required": ["items"],
            "additionalProperties": False,
        }
    )


def group_tools(group: str, capability: str) -> Callable[..., ToolSpec]:
    """The spec maker of an optional tool group: each tool states its name, title,
    description, parameters, role, handler and answer model (``items``: the answer is a
    list of that model, described so); the group and capability are the group's."""

    def tool(
        name: str,
        title: str,
        description: str,
        params: type[ToolParams],
        *,
        role: Role,
        handler: str,
        answer: type[BaseModel],
        items: str | None = None,
        annotations: ToolAnnotations | None = None,
    ) -> ToolSpec:
        return ToolSpec(
            name=name,
            title=title,
            description=description,
            params=params,
            role=role,
            annotations=annotations or _ann(read_only=True, idempotent=True),
            confirm=False,
            handler=handler,
            capability=capability,
            output_schema=_items(answer, items) if items else _model(answer),
            group=group,
        )

    return tool


def _ann(
    *,
    read_only: bool = False,
    destructive: bool = False,
    idempotent: bool = False,
    open_world: bool = False,
) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )


_READ = _ann(read_only=True, idempotent=True)
# updates replace the stored values of the fields they are given: the old ones are lost
_OVERWRITE = _ann(destructive=True, idempotent=True)
_READ_STRIPE = _ann(read_only=True, idempotent=True, open_world=True)


CancelMode = Annotated[
    Literal["END_OF_PERIOD", "IMMEDIATE"], Choice(aliases={"IMMEDIATELY": "IMMEDIATE"})
]
ChangeType = Annotated[Literal["UPGRADE", "DOWNGRADE"], Choice()]
BillingTiming = Annotated[Literal["IN_ADVANCE", "IN_ARREARS"], Choice()]
PlanStatus = Annotated[Literal["DRAFT", "ACTIVE", "ARCHIVED"], Choice()]
RuleType = Annotated[Literal["BASE"], Choice()]


# ---------------------------------------------------------------------------------------
# Parameter models


class NoParams(ToolParams):
    pass


class FeatureKeyParams(ToolParams):
    featureKey: Annotated[
        RequiredText, Field(description="The feature's unique key, e.g. `api_access`")
    ]


class CustomerParams(ToolParams):
    customerReferenceId: Annotated[RequiredText, Field(description=_CUSTOMER)]


class CustomerFeatureParams(ToolParams):
    customerReferenceId: Annotated[RequiredText, Field(description=_CUSTOMER)]
    featureKey: Annotated[
        RequiredText, Field(description="Key of the feature to check, e.g. `api_access`")
    ]


class EvaluateEntitlementParams(ToolParams):
    customerReferenceId: Annotated[RequiredText, Field(description=_CUSTOMER)]
    featureKey: Annotated[RequiredText, Field(description="Key of the feature to evaluate")]
    requestedUsage: Annotated[
        NumberText | None,
        Field(
            description="Usage units to simulate, as a number or numeric string, e.g. `100`. "
            "Omit to evaluate access only."
        ),
    ] = None


class CreditBalanceParams(ToolParams):
    customerReferenceId: Annotated[RequiredText, Field(description=_CUSTOMER)]
    poolId: Annotated[RequiredText, Field(description="ID of the credit pool, from getCreditPools")]


class ImportStatusParams(ToolParams):
    jobId: Annotated[
        RequiredText,
        Field(description="ID (UUID) of the import job, as returned by importStripeData"),
    ]


class CreateCustomerParams(ToolParams):
    customerReferenceId: Annotated[
        RequiredText,
        Field(description="Unique ID of this customer in your own system, e.g. `user_abc123`"),
    ]
    email: Annotated[RequiredText, Field(description="The customer's email address")]
    firstName: Annotated[Text | None, Field(description="First name")] = None
    lastName: Annotated[Text | None, Field(description="Last name")] = None


class UpdateCustomerParams(ToolParams):
    customerReferenceId: Annotated[RequiredText, Field(description=_CUSTOMER)]
    firstName: Annotated[Text | None, Field(description="New first name")] = None
    lastName: Annotated[Text | None, Field(description="New last name")] = None
    email: Annotated[Text | None, Field(description="New email address")] = None
    phoneNumber: Annotated[Text | None, Field(description="New phone number")] = None


class CreateSubscriptionParams(ToolParams):
    customerReferenceId: Annotated[RequiredText, Field(description=_CUSTOMER)]
    planId: Annotated[
        RequiredText, Field(description="ID of the ACTIVE plan to subscribe to (see listPlans)")
    ]


class IngestEventParams(ToolParams):
    eventIdempotencyKey: Annotated[
        RequiredText,
        Field(
            description="Your unique key for this event, e.g. `evt_abc123`; reusing a key "
            "is rejected as duplicate_event"
        ),
    ]
    eventName: Annotated[RequiredText, Field(description="What happened, e.g. `api_call`")]
    occurredAt: Annotated[
        RequiredText,
        Field(description="When it happened, ISO-8601 with timezone, e.g. `2026-03-16T10:30:00Z`"),
    ]
    customerReferenceId: Annotated[RequiredText, Field(description=_CUSTOMER)]
    featureKey: Annotated[
        RequiredText, Field(description="Key of the feature the usage counts against")
    ]
    usageUnits: Annotated[
        UnitsText,
        Field(description="Units consumed, as a number or numeric string; defaults to `1`"),
    ] = "1"


class CancelSubscriptionParams(ToolParams):
    subscriptionId: Annotated[
        RequiredText, Field(description="ID of the subscription to cancel (see getCustomer)")
    ]
    cancelMode: Annotated[
        CancelMode,
        Field(
            description="`END_OF_PERIOD` (default: access lasts until the period ends, undoable "
            "until then) or `IMMEDIATE` (access ends now). `IMMEDIATELY` is read as `IMMEDIATE`."
        ),
    ] = "END_OF_PERIOD"
    confirmAction: Annotated[Flag, Field(description=_CONFIRM)] = False


class ChangePlanParams(ToolParams):
    subscriptionId: Annotated[
        RequiredText, Field(description="ID of the subscription to change (see getCustomer)")
    ]
    newPlanId: Annotated[
        RequiredText, Field(description="ID of the plan to move to (see listPlans)")
    ]
    changeType: Annotated[
        ChangeType,
        Field(
            description="`UPGRADE` (takes effect now, prorated) or `DOWNGRADE` (takes effect at "
            "the end of the current period)"
        ),
    ]
    confirmAction: Annotated[Flag, Field(description=_CONFIRM)] = False


class MarkInvoicePaidParams(ToolParams):
    invoiceId: Annotated[
        RequiredText,
        Field(description="ID of the invoice to mark as paid (see listCustomerInvoices)"),
    ]
    confirmAction: Annotated[Flag, Field(description=_CONFIRM)] = False


class RegisterStripeKeyParams(ToolParams):
    stripeApiKey: Annotated[
        SecretStr,
        Field(
            min_length=1,
            description="Stripe secret API key, starting with `sk_test_` or `sk_live_`",
        ),
    ]
    confirmAction: Annotated[Flag, Field(description=_CONFIRM)] = False


class ConfirmOnlyParams(ToolParams):
    confirmAction: Annotated[Flag, Field(description=_CONFIRM)] = False


class CreateFeatureParams(ToolParams):
    name: Annotated[RequiredText, Field(description="Display name, e.g. `API Access`")]
    key: Annotated[
        RequiredText,
        Field(description="Unique key used by checks and events, e.g. `api_access`"),
    ]
    description: Annotated[Text | None, Field(description="What the feature is")] = None


class UpdateFeatureParams(ToolParams):
    featureId: Annotated[RequiredText, Field(description=_FEATURE_ID)]
    name: Annotated[Text | None, Field(description="New display name")] = None
    key: Annotated[Text | None, Field(description="New unique key")] = None
    description: Annotated[Text | None, Field(description="New description")] = None
    isEnabled: Annotated[Flag | None, Field(description="Enable (true) or disable (false)")] = None


class CreatePlanParams(ToolParams):
    key: Annotated[RequiredText, Field(description="Unique plan key, e.g. `pro_tier`")]
    name: Annotated[RequiredText, Field(description="Display name, e.g. `Pro Tier`")]
    priceAmount: Annotated[
        NumberText,
        Field(description="Price per billing interval, number or numeric string, e.g. `99.00`"),
    ]
    description: Annotated[Text | None, Field(description="What the plan offers")] = None
    intervalMonths: Annotated[
        NumberText,
        Field(description="Length of a billing interval in months; defaults to `1`"),
    ] = "1"
    billingTiming: Annotated[
        BillingTiming,
        Field(description="`IN_ADVANCE` (default: billed at period start) or `IN_ARREARS`"),
    ] = "IN_ADVANCE"
    creditAllocations: Annotated[JsonText | None, Field(description=_CREDIT_ALLOCATIONS)] = None


class UpdatePlanParams(ToolParams):
    planId: Annotated[RequiredText, Field(description=_PLAN_ID)]
    key: Annotated[Text | None, Field(description="New unique key (DRAFT plans only)")] = None
    name: Annotated[Text | None, Field(description="New display name")] = None
    priceAmount: Annotated[
        NumberText | None, Field(description="New price per interval (DRAFT plans only)")
    ] = None
    description: Annotated[Text | None, Field(description="New description")] = None
    intervalMonths: Annotated[
        NumberText | None, Field(description="New interval in months (DRAFT plans only)")
    ] = None
    billingTiming: Annotated[
        BillingTiming | None,
        Field(description="`IN_ADVANCE` or `IN_ARREARS` (DRAFT plans only)"),
    ] = None
    status: Annotated[
        PlanStatus | None,
        Field(
            description="`DRAFT`, `ACTIVE` or `ARCHIVED`. Allowed moves: DRAFT→ACTIVE (needs "
            "name, description, priceAmount, intervalMonths and a linked feature), "
            "ACTIVE→ARCHIVED, ARCHIVED→ACTIVE."
        ),
    ] = None
    creditAllocations: Annotated[JsonText | None, Field(description=_CREDIT_ALLOCATIONS)] = None


class PlanIdParams(ToolParams):
    planId: Annotated[RequiredText, Field(description=_PLAN_ID)]


class PlanFeatureParams(ToolParams):
    planId: Annotated[RequiredText, Field(description=_PLAN_ID)]
    featureId: Annotated[RequiredText, Field(description=_FEATURE_ID)]


class LinkFeatureParams(ToolParams):
    planId: Annotated[RequiredText, Field(description=_PLAN_ID)]
    featureId: Annotated[RequiredText, Field(description=_FEATURE_ID)]
    type: Annotated[
        RuleType | None,
        Field(description="Rule type; only `BASE` exists (the default)"),
    ] = None
    valueJson: Annotated[JsonText | None, Field(description=_VALUE_JSON)] = None
    isEnabled: Annotated[
        Flag | None, Field(description="Whether the rule is active (default true)")
    ] = None


class UpdateRuleParams(ToolParams):
    planId: Annotated[RequiredText, Field(description=_PLAN_ID)]
    featureId: Annotated[RequiredText, Field(description=_FEATURE_ID)]
    type: Annotated[RuleType | None, Field(description="Rule type; must be `BASE` if given")] = None
    valueJson: Annotated[
        JsonText | None,
        Field(
            description="New pricing/cost rule as a JSON string (format as in adminLinkFeatureToPlan)"
        ),
    ] = None
    isEnabled: Annotated[Flag | None, Field(description="Enable or disable the rule")] = None


class UnlinkFeatureParams(ToolParams):
    planId: Annotated[RequiredText, Field(description=_PLAN_ID)]
    featureId: Annotated[RequiredText, Field(description=_FEATURE_ID)]
    confirmAction: Annotated[Flag, Field(description=_CONFIRM)] = False


# ---------------------------------------------------------------------------------------
# Capabilities (named in the "not available yet" answer)

_CATALOG = "the product catalog (plans and features)"
_CUSTOMERS = "customer management"
_ENTITLEMENTS = "entitlement checks"
_BILLING = "invoicing"
_CREDITS = "credit pools"
_STRIPE = "the Stripe integration"
_SUBSCRIPTIONS = "subscription management"
_EVENTS = "usage event ingestion"
_ADMIN_CATALOG = "catalog administration"


# ---------------------------------------------------------------------------------------
# The table

TOOL_SPECS: tuple[ToolSpec, ...] = (
    # --- read-only (role read) ---------------------------------------------------------
    ToolSpec(
        name="listPlans",
        title="List available plans",
        description=(
            "Lists the plans customers can subscribe to right now (status ACTIVE), each with "
            "its price, currency, billing interval and timing, the features it grants with "
            "their pricing rules, and its credit allocations. Read-only. Use it to find the "
            "planId for createSubscription or changeSubscriptionPlan; draft and archived plans "
            "only show up in adminListPlans."
        ),
        params=NoParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="list_plans",
        capability=_CATALOG,
        output_schema=_items(
            CatalogPlanOut, "Active plans with their features and credit allocations."
        ),
    ),
    ToolSpec(
        name="listFeatures",
        title="List features",
        description=(
            "Lists the features defined in this environment (key, name, description). "
            "Read-only. A feature's key is what checkEntitlement, evaluateEntitlement and "
            "ingestEvent expect as featureKey."
        ),
        params=NoParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="list_features",
        capability=_CATALOG,
        output_schema=_items(FeatureOut, "Features of this environment."),
    ),
    ToolSpec(
        name="getFeature",
        title="Get a feature",
        description=(
            "Looks up one feature by its key and returns its details. Read-only. Answers "
            "not_found when no feature has that key; listFeatures shows the keys that exist."
        ),
        params=FeatureKeyParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="get_feature",
        capability=_CATALOG,
        output_schema=_model(FeatureOut),
    ),
    ToolSpec(
        name="getCustomer",
        title="Get a customer",
        description=(
            "Fetches a customer by the ID your own system uses for them: name, email, their "
            "subscriptions (id, status, plan, current period, any scheduled change) and their "
            "credit pools. Read-only. Start here before changing or cancelling a "
            "subscription: it gives you the subscriptionId."
        ),
        params=CustomerParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="get_customer",
        capability=_CUSTOMERS,
        output_schema=_model(CustomerOut),
    ),
    ToolSpec(
        name="checkEntitlement",
        title="Check feature access",
        description=(
            "Tells whether a customer may use a feature right now and, for metered features, "
            "the limit, the usage so far and what remains (plus the credit balance when the "
            "feature draws on credits). Read-only and records nothing. An unknown customer or "
            "feature gives allowed: false with a reason, not an error. Call it before "
            "ingestEvent when you need to know whether usage is allowed."
        ),
        params=CustomerFeatureParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="check_entitlement",
        capability=_ENTITLEMENTS,
        output_schema=_model(CheckOut),
    ),
    ToolSpec(
        name="listCustomerEntitlements",
        title="List a customer's entitlements",
        description=(
            "Lists every feature a customer can currently use through their subscriptions, "
            "with the usage limit and consumption so far for metered ones. Read-only."
        ),
        params=CustomerParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="list_customer_entitlements",
        capability=_ENTITLEMENTS,
        output_schema=_items(
            SubscriptionEntitlementsOut, "The customer's entitlements, per subscription."
        ),
    ),
    ToolSpec(
        name="evaluateEntitlement",
        title="Simulate feature usage",
        description=(
            "Dry-runs an entitlement check for a proposed amount of usage: returns the normal "
            "access decision plus a simulation (requested usage, projected usage and remaining "
            "quota; for credit features the credits required and available; "
            "wouldExceedLimit is true when the usage limit or a hard credit limit would be "
            "passed, and then allowed is false). Consumes no quota or credits and "
            "bills nothing; it only leaves a zero-usage audit event. Use it before ingestEvent "
            "to see whether a batch of usage would fit."
        ),
        params=EvaluateEntitlementParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="evaluate_entitlement",
        capability=_ENTITLEMENTS,
        output_schema=_model(CheckOut),
    ),
    ToolSpec(
        name="listCustomerInvoices",
        title="List a customer's invoices",
        description=(
            "Lists a customer's invoices: type, status (PENDING, DUE, PAID, PAST_DUE, VOID), "
            "amount, currency, due date, billing period and line items. Read-only. "
            "markInvoicePaid takes an invoiceId from this list."
        ),
        params=CustomerParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="list_customer_invoices",
        capability=_BILLING,
        output_schema=_items(InvoiceOut, "The customer's invoices, newest first."),
    ),
    ToolSpec(
        name="getCreditPools",
        title="List a customer's credit pools",
        description=(
            "Lists a customer's prepaid credit pools, one per denomination: current balance, "
            "totals granted, consumed and expired, hard-limit and rollover settings. "
            "Read-only. Use getCreditBalance for a single pool."
        ),
        params=CustomerParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="get_credit_pools",
        capability=_CREDITS,
        output_schema=_items(CreditPoolDetailOut, "The customer's credit pools."),
    ),
    ToolSpec(
        name="getCreditBalance",
        title="Get a credit pool balance",
        description=(
            "Returns one of a customer's credit pools, with its balance and totals, by the "
            "poolId that getCreditPools lists. Read-only."
        ),
        params=CreditBalanceParams,
        role="read",
        annotations=_READ,
        confirm=False,
        handler="get_credit_balance",
        capability=_CREDITS,
        output_schema=_model(CreditPoolDetailOut),
    ),
    ToolSpec(
        name="getStripeIntegrationStatus",
        title="Stripe integration status",
        description=(
            "Shows how far Stripe is connected for this environment: whether a secret key is "
            "stored (shown masked), whether the webhook exists (secret masked), the Stripe "
            "mode, whether Stripe is enabled, the currency and whether setup is complete. "
            "Read-only. Call this first when working on Stripe: it tells you which of "
            "registerStripeApiKey and setupStripeIntegration are still needed."
        ),
        params=NoParams,
        role="read",
        annotations=_READ_STRIPE,
        confirm=False,
        handler="get_stripe_integration_status",
        capability=_STRIPE,
        output_schema=_model(StripeStatusOut),
    ),
    ToolSpec(
        name="discoverStripeData",
        title="Discover Stripe data",
        description=(
            "Reads the connected Stripe account and lists its products, customers and "
            "subscriptions, flagging the ones already linked to records here. Changes nothing "
            "on either side. Needs a registered Stripe key (precondition_failed otherwise). "
            "Use it to see what importStripeData would bring in."
        ),
        params=NoParams,
        role="read",
        annotations=_READ_STRIPE,
        confirm=False,
        handler="discover_stripe_data",
        capability=_STRIPE,
        output_schema=_model(StripeDiscoveryOut),
    ),
    ToolSpec(
        name="getStripeImportStatus",
        title="Stripe import progress",
        description=(
            "Reports the progress of an import started by importStripeData: status and the "
            "total, processed and failed item counts, with error details for failed items. "
            "Read-only. Pass the jobId importStripeData returned."
        ),
        params=ImportStatusParams,
        role="read",
        annotations=_READ_STRIPE,
        confirm=False,
        handler="get_stripe_import_status",
        capability=_STRIPE,
        output_schema=_model(ImportJobOut),
    ),
    # --- writes (role client) ----------------------------------------------------------
    ToolSpec(
        name="createCustomer",
        title="Create a customer",
        description=(
            "Creates a customer identified by the ID your own system uses for them. Writes a "
            "permanent record; a reference ID that already exists is refused. When Stripe "
            "collects payments the customer is created in Stripe too. Usually followed by "
            "createSubscription."
            ' Answers {"success": true, "message", "customer": {...}}.'
        ),
        params=CreateCustomerParams,
        role="client",
        annotations=_ann(),
        confirm=False,
        handler="create_customer",
        capability=_CUSTOMERS,
        output_schema=_model(CustomerWriteOut),
    ),
    ToolSpec(
        name="updateCustomer",
        title="Update a customer",
        description=(
            "Changes a customer's first or last name, email or phone number. Only the fields "
            "you pass change; omitted ones keep their values, and repeating the call has no "
            "further effect. When Stripe collects payments the change is mirrored there."
            ' Answers {"success": true, "message", "customer": {...}}.'
        ),
        params=UpdateCustomerParams,
        role="client",
        annotations=_OVERWRITE,
        confirm=False,
        handler="update_customer",
        capability=_CUSTOMERS,
        output_schema=_model(CustomerWriteOut),
    ),
    ToolSpec(
        name="createSubscription",
        title="Subscribe a customer to a plan",
        description=(
            "Subscribes a customer to an ACTIVE plan (planId from listPlans) and issues the "
            "first invoice. On a paid plan billed IN_ADVANCE, access starts once that invoice "
            "is paid (when Stripe collects payments, a checkout URL is returned for that); "
            "IN_ARREARS and free plans grant access immediately. Writes data."
            ' Answers {"success": true, "message", "subscription": {...}, "invoice": {...}}.'
        ),
        params=CreateSubscriptionParams,
        role="client",
        annotations=_ann(),
        confirm=False,
        handler="create_subscription",
        capability=_SUBSCRIPTIONS,
        output_schema=_model(SubscribedWriteOut),
    ),
    ToolSpec(
        name="ingestEvent",
        title="Record a usage event",
        description=(
            "Records one usage event for a customer and feature. It counts towards the "
            "feature's limit, draws matching credits first and leaves any remainder as "
            "billable overage. Safe to retry: an eventIdempotencyKey that was already used is "
            "answered with duplicate_event and changes nothing. Unknown customers and feature "
            "keys are created on the fly. Check access first with checkEntitlement or "
            "evaluateEntitlement when it matters."
        ),
        params=IngestEventParams,
        role="client",
        annotations=_ann(idempotent=True),
        confirm=False,
        handler="ingest_event",
        capability=_EVENTS,
        output_schema=_model(EventOut),
    ),
    # --- guarded (role client) ---------------------------------------------------------
    ToolSpec(
        name="cancelSubscription",
        title="Cancel a subscription",
        description=(
            "Cancels a subscription. END_OF_PERIOD (default) keeps access until the current "
            "period ends and can be undone until then. IMMEDIATE ends access now, voids open "
            "invoices, credits the unused prepaid part of the period and takes back unused "
            "plan-included credits (purchased and promotional credits stay). Requires "
            "confirmAction: true; without it nothing happens and the answer previews the "
            "consequences. Find the subscriptionId with getCustomer."
        ),
        params=CancelSubscriptionParams,
        role="client",
        annotations=_ann(destructive=True),
        confirm=True,
        handler="cancel_subscription",
        capability=_SUBSCRIPTIONS,
        output_schema=_model(EffectsOut),
        effect="Cancels the subscription: at the end of the current period, or at once with "
        "cancelMode IMMEDIATE (access revoked, open invoices voided, unused prepaid time "
        "credited, unused plan credits removed).",
    ),
    ToolSpec(
        name="changeSubscriptionPlan",
        title="Change a subscription's plan",
        description=(
            "Moves a subscription to another plan. UPGRADE takes effect at once: entitlements "
            "switch and a prorated adjustment invoice covers the rest of the period. DOWNGRADE "
            "is scheduled for the end of the current period. Requires confirmAction: true; "
            "without it nothing changes and the answer previews the consequences. Find the "
            "subscriptionId with getCustomer and the newPlanId with listPlans."
        ),
        params=ChangePlanParams,
        role="client",
        annotations=_ann(destructive=True),
        confirm=True,
        handler="change_subscription_plan",
        capability=_SUBSCRIPTIONS,
        output_schema=_model(EffectsOut),
        effect="Switches the subscription to the new plan: now with proration for an UPGRADE, "
        "at the end of the current period for a DOWNGRADE.",
    ),
    ToolSpec(
        name="markInvoicePaid",
        title="Mark an invoice paid",
        description=(
            "Records that an invoice was paid outside the system (manual reconciliation): the "
            "invoice becomes PAID, and a subscription waiting for it is activated or restored "
            "from past due. When Stripe collects payments, Stripe records the invoice paid "
            "out of band and its paid invoice is mirrored here. Requires confirmAction: "
            "true; without it nothing changes and the answer previews the consequences. Get "
            "the invoiceId from listCustomerInvoices."
        ),
        params=MarkInvoicePaidParams,
        role="client",
        annotations=_ann(destructive=True),
        confirm=True,
        handler="mark_invoice_paid",
        capability=_BILLING,
        output_schema=_model(EffectsOut),
        effect="Marks the invoice PAID, which may activate or restore the subscription it "
        "belongs to.",
    ),
    # --- guarded (role admin) ----------------------------------------------------------
    ToolSpec(
        name="registerStripeApiKey",
        title="Register a Stripe API key",
        description=(
            "Stores a Stripe secret key (sk_test_… or sk_live_…) for this environment, "
            "encrypted, replacing any key stored before; afterwards it is only ever shown "
            "masked. Requires confirmAction: true; without it nothing is stored. Next step: "
            "setupStripeIntegration."
        ),
        params=RegisterStripeKeyParams,
        role="admin",
        annotations=_ann(destructive=True, open_world=True),
        confirm=True,
        handler="register_stripe_api_key",
        capability=_STRIPE,
        output_schema=_model(StripeKeyOut),
        effect="Stores the Stripe secret key for this environment, replacing any existing key.",
    ),
    ToolSpec(
        name="setupStripeIntegration",
        title="Set up the Stripe integration",
        description=(
            "Finishes connecting Stripe: creates the webhook endpoint in the Stripe account "
            "(which also proves the key works) and switches this environment to STRIPE_DRIVEN "
            "mode, in which Stripe invoices and collects payments. Steps already done are "
            "skipped, so repeating it is harmless. Needs a key from registerStripeApiKey. "
            "Requires confirmAction: true; without it nothing changes and the answer previews "
            "the consequences."
        ),
        params=ConfirmOnlyParams,
        role="admin",
        annotations=_ann(destructive=True, idempotent=True, open_world=True),
        confirm=True,
        handler="setup_stripe_integration",
        capability=_STRIPE,
        output_schema=_model(StripeSetupOut),
        effect="Creates a webhook endpoint in Stripe and switches billing to STRIPE_DRIVEN "
        "mode: Stripe then issues invoices and collects payments.",
    ),
    ToolSpec(
        name="importStripeData",
        title="Import data from Stripe",
        description=(
            "Starts a job that creates plans, features, customers and subscriptions here from "
            "what the connected Stripe account holds, skipping anything already linked, so "
            "re-running never duplicates. Returns a jobId to follow with "
            "getStripeImportStatus. Needs a registered key; warns unless the mode is "
            "STRIPE_DRIVEN. Run discoverStripeData first to see what will come in. Requires "
            "confirmAction: true; without it nothing is imported."
        ),
        params=ConfirmOnlyParams,
        role="admin",
        annotations=_ann(destructive=True, open_world=True),
        confirm=True,
        handler="import_stripe_data",
        capability=_STRIPE,
        output_schema=_model(ImportJobOut),
        effect="Creates plans, features, customers and subscriptions from the Stripe account "
        "(items already linked are skipped).",
    ),
    # --- admin reads -------------------------------------------------------------------
    ToolSpec(
        name="adminListFeatures",
        title="Catalog: list features",
        description=(
            "Lists every feature of the catalog with its id, key, name, description and "
            "enabled flag. Read-only. The ids are what the plan-linking tools take as "
            "featureId."
        ),
        params=NoParams,
        role="admin",
        annotations=_READ,
        confirm=False,
        handler="admin_list_features",
        capability=_ADMIN_CATALOG,
        output_schema=_items(FeatureOut, "Features of this environment."),
    ),
    ToolSpec(
        name="adminListPlans",
        title="Catalog: list plans",
        description=(
            "Lists every plan of the catalog whatever its status (DRAFT, ACTIVE, ARCHIVED), "
            "with id, key, name, price, billing interval, billing timing and status. "
            "Read-only."
        ),
        params=NoParams,
        role="admin",
        annotations=_READ,
        confirm=False,
        handler="admin_list_plans",
        capability=_ADMIN_CATALOG,
        output_schema=_items(PlanOut, "Plans of every status."),
    ),
    # --- admin writes ------------------------------------------------------------------
    ToolSpec(
        name="adminCreateFeature",
        title="Catalog: create a feature",
        description=(
            "Adds a feature to the catalog. Its key must be unique in this environment; it is "
            "the identifier entitlement checks and usage events refer to. Writes data. Attach "
            "it to plans with adminLinkFeatureToPlan."
            ' Answers {"success": true, "message", "feature": {...}} (the new id is feature.id).'
        ),
        params=CreateFeatureParams,
        role="admin",
        annotations=_ann(),
        confirm=False,
        handler="admin_create_feature",
        capability=_ADMIN_CATALOG,
        output_schema=_model(FeatureWriteOut),
    ),
    ToolSpec(
        name="adminUpdateFeature",
        title="Catalog: update a feature",
        description=(
            "Changes a feature's name, key, description or enabled flag; omitted fields stay "
            "as they are and repeating the call has no further effect. A new key must still "
            "be unique."
            ' Answers {"success": true, "message", "feature": {...}}.'
        ),
        params=UpdateFeatureParams,
        role="admin",
        annotations=_OVERWRITE,
        confirm=False,
        handler="admin_update_feature",
        capability=_ADMIN_CATALOG,
        output_schema=_model(FeatureWriteOut),
    ),
    ToolSpec(
        name="adminCreatePlan",
        title="Catalog: create a plan",
        description=(
            "Creates a plan in DRAFT status, invisible to customers until activated. "
            "priceAmount is the price per billing interval; intervalMonths defaults to 1 and "
            "billingTiming to IN_ADVANCE; creditAllocations optionally grants credits every "
            "period. Next: link features with adminLinkFeatureToPlan, then activate with "
            "adminUpdatePlan(status: ACTIVE)."
            ' Answers {"success": true, "message", "plan": {...}, "features", "creditAllocations"} (the new id is plan.id).'
        ),
        params=CreatePlanParams,
        role="admin",
        annotations=_ann(),
        confirm=False,
        handler="admin_create_plan",
        capability=_ADMIN_CATALOG,
        output_schema=_model(PlanWriteOut),
    ),
    ToolSpec(
        name="adminUpdatePlan",
        title="Catalog: update a plan",
        description=(
            "Changes a plan; omitted fields stay as they are. Everything may change while the "
            "plan is DRAFT. Activating it (status ACTIVE) only works once it has a name, a "
            "description, a price and an interval and grants one feature or more; from then "
            "on key, priceAmount, intervalMonths and billingTiming are frozen. An ACTIVE plan can be ARCHIVED (no "
            "new subscriptions) and an ARCHIVED one reactivated; archived plans accept only "
            "that status change."
            ' Answers {"success": true, "message", "plan": {...}, "features", "creditAllocations"}.'
        ),
        params=UpdatePlanParams,
        role="admin",
        annotations=_OVERWRITE,
        confirm=False,
        handler="admin_update_plan",
        capability=_ADMIN_CATALOG,
        output_schema=_model(PlanWriteOut),
    ),
    ToolSpec(
        name="adminGetPlanWithFeatures",
        title="Catalog: get a plan in full",
        description=(
            "Shows one plan completely: its fields, every linked feature with its pricing and "
            "cost rule, and its credit allocations. Read-only. Useful to check a plan before "
            "activating it."
        ),
        params=PlanIdParams,
        role="admin",
        annotations=_READ,
        confirm=False,
        handler="admin_get_plan_with_features",
        capability=_ADMIN_CATALOG,
        output_schema=_model(CatalogPlanOut),
    ),
    ToolSpec(
        name="adminGetFeatureRule",
        title="Catalog: get a plan-feature rule",
        description=(
            "Returns the rule that links a feature to a plan: its type, enabled flag and "
            "pricing/cost configuration (valueJson). Read-only."
        ),
        params=PlanFeatureParams,
        role="admin",
        annotations=_READ,
        confirm=False,
        handler="admin_get_feature_rule",
        capability=_ADMIN_CATALOG,
        output_schema=_model(RuleOut),
    ),
    ToolSpec(
        name="adminLinkFeatureToPlan",
        title="Catalog: link a feature to a plan",
        description=(
            "Attaches a feature to a plan. Without valueJson the plan simply grants the "
            "feature (on/off). With valueJson the feature is metered and priced; valueJson is "
            'a JSON string {"pricing": {...}, "cost": {...}}. Pricing models: "usage" '
            "(usage_unit_type, price_per_unit, optional max_usage ≥ 0 and reset_mode "
            '"reset" (default, zero each period) or "accumulate") and "graduated" '
            '(usage_unit_type, tiers [{"up_to": number or "inf", "price_per_unit", optional '
            '"flat_fee"}] in ascending order, optional max_usage and reset_mode). The optional '
            'cost block, used for margin analytics: "simple" (cost_per_unit, optional '
            'cost_unit TOKENS|CREDITS|CURRENCY) or "model_aware" (default_cost_per_unit, '
            'model_costs {"model name": cost per unit}, optional cost_unit). Add "credits": '
            '{"denomination": "AI_TOKENS", "weight": 1} to draw usage from credit pools. The '
            "older flat form with cost keys inside pricing is accepted and converted. Example: "
            '{"pricing":{"model":"usage","usage_unit_type":"api_calls","price_per_unit":0.02,'
            '"max_usage":5000}}. Writes data.'
            ' Answers {"success": true, "message", "rule": {...}}.'
        ),
        params=LinkFeatureParams,
        role="admin",
        annotations=_ann(),
        confirm=False,
        handler="admin_link_feature_to_plan",
        capability=_ADMIN_CATALOG,
        output_schema=_model(RuleWriteOut),
    ),
    ToolSpec(
        name="adminUpdateFeatureRule",
        title="Catalog: update a plan-feature rule",
        description=(
            "Changes an existing plan-feature rule: its type, its valueJson (same format as "
            "adminLinkFeatureToPlan) or its enabled flag. Omitted fields stay as they are and "
            "repeating the call has no further effect."
            ' Answers {"success": true, "message", "rule": {...}}.'
        ),
        params=UpdateRuleParams,
        role="admin",
        annotations=_OVERWRITE,
        confirm=False,
        handler="admin_update_feature_rule",
        capability=_ADMIN_CATALOG,
        output_schema=_model(RuleWriteOut),
    ),
    ToolSpec(
        name="adminUnlinkFeatureFromPlan",
        title="Catalog: unlink a feature from a plan",
        description=(
            "Detaches a feature from a plan by deleting their rule, so the plan no longer "
            "grants or prices it. Requires confirmAction: true; without it nothing changes "
            "and the answer previews the consequences."
            ' Answers {"success": true, "message", "ruleId"}.'
        ),
        params=UnlinkFeatureParams,
        role="admin",
        annotations=_ann(destructive=True),
        confirm=True,
        handler="admin_unlink_feature_from_plan",
        capability=_ADMIN_CATALOG,
        output_schema=_model(UnlinkOut),
        effect="Deletes the plan-feature rule: the plan stops granting and pricing the feature.",
    ),
)

SPECS_BY_NAME: Mapping[str, ToolSpec] = {spec.name: spec for spec in TOOL_SPECS}

LIST_TOOLS: frozenset[str] = frozenset(
    spec.name
    for spec in TOOL_SPECS
    if getattr(spec.output_schema, "strict", spec.output_schema).get("required") == ["items"]
)
"""Tools whose result is a list, answered as ``{"items": [...]}``."""


def specs_for_role(role: str) -> tuple[ToolSpec, ...]:
    """The tools a key of ``role`` sees and may call, in table order."""
    return tuple(spec for spec in TOOL_SPECS if spec.allows(role))


def input_schema(spec: ToolSpec) -> dict[str, Any]:
    """The tool's JSON input schema, tidied for agents.

    Derived from the parameter model: pydantic's per-property titles and the ``null`` arm
    of optional parameters are dropped (omitting a parameter is the way to leave it unset;
    an explicit null is still accepted), unknown parameters are declared forbidden, and
    ``confirmAction`` is listed as required as the contract says.
    """
    schema = spec.params.model_json_schema()
    properties: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        properties[name] = _tidy_property(prop)
    required = list(schema.get("required", []))
    if spec.confirm and "confirmAction" not in required:
        required.append("confirmAction")
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def _tidy_property(prop: Mapping[str, Any]) -> dict[str, Any]:
    prop = dict(prop)
    prop.pop("title", None)
    arms = prop.get("anyOf")
    if isinstance(arms, list) and {"type": "null"} in arms:
        rest = [arm for arm in arms if arm != {"type": "null"}]
        del prop["anyOf"]
        if len(rest) == 1:
            prop = {**rest[0], **prop}
        else:
            prop["anyOf"] = rest
        if prop.get("default", ...) is None:
            del prop["default"]
    return prop


def output_schema(spec: ToolSpec) -> dict[str, Any]:
    """A private copy of the tool's declared output schema (the table's stays untouched)."""
    return copy.deepcopy(dict(spec.output_schema))


def strict_output_schema(spec: ToolSpec) -> dict[str, Any]:
    """The schema a successful answer must match exactly: the answer model's, with its
    required fields (the declared schema relaxes the top level, see ``_Declared``)."""
    return copy.deepcopy(getattr(spec.output_schema, "strict", dict(spec.output_schema)))
