"""Facts of the MCP tool contract (reference/seeds/mcp-integration.txt), transcribed.

Names, sections, parameters with their seed types and required flags, and the
confirmAction tools. ``test_specs.test_transcription_matches_seed`` re-checks this against
the seed file whenever it is reachable.
"""

from __future__ import annotations

# tool -> (section of the seed, [(parameter, seed type, required)])
SEED_TOOLS: dict[str, tuple[str, list[tuple[str, str, bool]]]] = {
    "listPlans": (
        "read",
        [],
    ),
    "listFeatures": (
        "read",
        [],
    ),
    "getFeature": (
        "read",
        [
            ("featureKey", "string", True),
        ],
    ),
    "getCustomer": (
        "read",
        [
            ("customerReferenceId", "string", True),
        ],
    ),
    "checkEntitlement": (
        "read",
        [
            ("customerReferenceId", "string", True),
            ("featureKey", "string", True),
        ],
    ),
    "listCustomerEntitlements": (
        "read",
        [
            ("customerReferenceId", "string", True),
        ],
    ),
    "evaluateEntitlement": (
        "read",
        [
            ("customerReferenceId", "string", True),
            ("featureKey", "string", True),
            ("requestedUsage", "string", False),
        ],
    ),
    "listCustomerInvoices": (
        "read",
        [
            ("customerReferenceId", "string", True),
        ],
    ),
    "getCreditPools": (
        "read",
        [
            ("customerReferenceId", "string", True),
        ],
    ),
    "getCreditBalance": (
        "read",
        [
            ("customerReferenceId", "string", True),
            ("poolId", "string", True),
        ],
    ),
    "getStripeIntegrationStatus": (
        "read",
        [],
    ),
    "discoverStripeData": (
        "read",
        [],
    ),
    "getStripeImportStatus": (
        "read",
        [
            ("jobId", "string", True),
        ],
    ),
    "createCustomer": (
        "write",
        [
            ("customerReferenceId", "string", True),
            ("email", "string", True),
            ("firstName", "string", False),
            ("lastName", "string", False),
        ],
    ),
    "updateCustomer": (
        "write",
        [
            ("customerReferenceId", "string", True),
            ("firstName", "string", False),
            ("lastName", "string", False),
            ("email", "string", False),
            ("phoneNumber", "string", False),
        ],
    ),
    "createSubscription": (
        "write",
        [
            ("customerReferenceId", "string", True),
            ("planId", "string", True),
        ],
    ),
    "ingestEvent": (
        "write",
        [
            ("eventIdempotencyKey", "string", True),
            ("eventName", "string", True),
            ("occurredAt", "string", True),
            ("customerReferenceId", "string", True),
            ("featureKey", "string", True),
            ("usageUnits", "string", False),
        ],
    ),
    "cancelSubscription": (
        "sensitive",
        [
            ("subscriptionId", "string", True),
            ("cancelMode", "string", False),
            ("confirmAction", "boolean", True),
        ],
    ),
    "changeSubscriptionPlan": (
        "sensitive",
        [
            ("subscriptionId", "string", True),
            ("newPlanId", "string", True),
            ("changeType", "string", True),
            ("confirmAction", "boolean", True),
        ],
    ),
    "markInvoicePaid": (
        "sensitive",
        [
            ("invoiceId", "string", True),
            ("confirmAction", "boolean", True),
        ],
    ),
    "registerStripeApiKey": (
        "sensitive",
        [
            ("stripeApiKey", "string", True),
            ("confirmAction", "boolean", True),
        ],
    ),
    "setupStripeIntegration": (
        "sensitive",
        [
            ("confirmAction", "boolean", True),
        ],
    ),
    "importStripeData": (
        "sensitive",
        [
            ("confirmAction", "boolean", True),
        ],
    ),
    "adminListFeatures": (
        "admin_read",
        [],
    ),
    "adminListPlans": (
        "admin_read",
        [],
    ),
    "adminCreateFeature": (
        "admin_write",
        [
            ("name", "string", True),
            ("key", "string", True),
            ("description", "string", False),
        ],
    ),
    "adminUpdateFeature": (
        "admin_write",
        [
            ("featureId", "string", True),
            ("name", "string", False),
            ("key", "string", False),
            ("description", "string", False),
            ("isEnabled", "boolean", False),
        ],
    ),
    "adminCreatePlan": (
        "admin_write",
        [
            ("key", "string", True),
            ("name", "string", True),
            ("priceAmount", "string", True),
            ("description", "string", False),
            ("intervalMonths", "string", False),
            ("billingTiming", "string", False),
        ],
    ),
    "adminUpdatePlan": (
        "admin_write",
        [
            ("planId", "string", True),
            ("key", "string", False),
            ("name", "string", False),
            ("priceAmount", "string", False),
            ("description", "string", False),
            ("intervalMonths", "string", False),
            ("billingTiming", "string", False),
            ("status", "string", False),
        ],
    ),
    "adminGetPlanWithFeatures": (
        "admin_write",
        [
            ("planId", "string", True),
        ],
    ),
    "adminGetFeatureRule": (
        "admin_write",
        [
            ("planId", "string", True),
            ("featureId", "string", True),
        ],
    ),
    "adminLinkFeatureToPlan": (
        "admin_write",
        [
            ("planId", "string", True),
            ("featureId", "string", True),
            ("type", "string", False),
            ("valueJson", "string", False),
            ("isEnabled", "boolean", False),
        ],
    ),
    "adminUpdateFeatureRule": (
        "admin_write",
        [
            ("planId", "string", True),
            ("featureId", "string", True),
            ("type", "string", False),
            ("valueJson", "string", False),
            ("isEnabled", "boolean", False),
        ],
    ),
    "adminUnlinkFeatureFromPlan": (
        "admin_sensitive",
        [
            ("planId", "string", True),
            ("featureId", "string", True),
            ("confirmAction", "boolean", True),
        ],
    ),
}

CONFIRM_TOOLS = frozenset(
    {
        "adminUnlinkFeatureFromPlan",
        "cancelSubscription",
        "changeSubscriptionPlan",
        "importStripeData",
        "markInvoicePaid",
        "registerStripeApiKey",
        "setupStripeIntegration",
    }
)

ALL_TOOLS = tuple(SEED_TOOLS)
READ_TOOLS = frozenset(name for name, (section, _) in SEED_TOOLS.items() if section == "read")
CLIENT_TOOLS = (
    READ_TOOLS
    | frozenset(name for name, (section, _) in SEED_TOOLS.items() if section == "write")
    | {"cancelSubscription", "changeSubscriptionPlan", "markInvoicePaid"}
)
ADMIN_TOOLS = frozenset(ALL_TOOLS)
TOOLS_BY_ROLE = {"read": READ_TOOLS, "client": CLIENT_TOOLS, "admin": ADMIN_TOOLS}

# Seed "string" parameters that carry numbers: they also accept JSON numbers.
NUMERIC_PARAMS = frozenset({"priceAmount", "intervalMonths", "usageUnits", "requestedUsage"})

# Parameters added on top of the seed; optional, never required.
EXTRA_PARAMS = {
    "adminCreatePlan": {"creditAllocations"},
    "adminUpdatePlan": {"creditAllocations"},
}

# Read tools that the seed files under "Admin Write Tools" although they only read.
ADMIN_READS = frozenset(
    {"adminListFeatures", "adminListPlans", "adminGetPlanWithFeatures", "adminGetFeatureRule"}
)
STRIPE_TOOLS = frozenset(
    {
        "getStripeIntegrationStatus",
        "discoverStripeData",
        "getStripeImportStatus",
        "registerStripeApiKey",
        "setupStripeIntegration",
        "importStripeData",
    }
)
OVERWRITING_UPDATES = frozenset(
    {"updateCustomer", "adminUpdateFeature", "adminUpdatePlan", "adminUpdateFeatureRule"}
)
"""Updates that replace stored field values: destructive, though not confirm-guarded."""

IDEMPOTENT_WRITES = frozenset(
    {
        "updateCustomer",
        "adminUpdateFeature",
        "adminUpdatePlan",
        "adminUpdateFeatureRule",
        "setupStripeIntegration",
        "ingestEvent",
    }
)


def minimal_arguments(tool: str, *, confirm: bool = True) -> dict[str, object]:
    """Valid arguments carrying only the required parameters."""
    samples = {
        "changeType": "UPGRADE",
        "priceAmount": "10.00",
        "occurredAt": "2026-03-16T10:30:00Z",
        "stripeApiKey": "sk_test_123",
    }
    args: dict[str, object] = {}
    for name, _type, required in SEED_TOOLS[tool][1]:
        if not required:
            continue
        if name == "confirmAction":
            if confirm:
                args[name] = True
            continue
        args[name] = samples.get(name, f"{name}-1")
    return args
