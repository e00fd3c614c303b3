"""A mixed-cost scenario for the margin analytics tests, with its figures worked out by
hand (micro-units). The clock stands at 2026-01-15 10:00 UTC; the default window is
January 2026.

Plan ``pro`` (49.00 a month): ``chat`` priced 0.10/unit with a simple cost of
0.02/unit; ``search`` priced 0.05/unit with no cost model. Environment default cost
config prices ``my-model`` at 0.000001 in / 0.000002 out per token; an override prices
``gpt-4o-mini`` at 0.20 / 0.80 per million tokens from 2026-01-01.

| ev | customer | feature | how it is costed                                  | cost      | revenue   |
|----|----------|---------|---------------------------------------------------|-----------|-----------|
| e1 | A (pro)  | chat    | explicit costAmount 0.5; 10 units                 | 0.500000  | 1.000000  |
| e2 | A        | chat    | rule: 5 x 0.02                                    | 0.100000  | 0.500000  |
| e3 | A        | search  | env default: 1000 x 0.000001 + 500 x 0.000002     | 0.002000  | 0.200000  |
| e4 | A        | search  | table, gpt-4o-2024-08-06 -> gpt-4o (2.50/10.00):  | 1.500000  | 0.050000  |
|    |          |         | 0.2M x 2.50 + 0.1M x 10.00                        |           |           |
| e5 | A        | search  | override gpt-4o-mini: 1M x 0.20 + 1M x 0.80       | 1.000000  | 0.050000  |
| e6 | B (none) | chat    | unknown model mystery-llm-9: no cost              | —         | 0.300000 (explicit) |
| e7 | B        | chat    | nothing: no cost, no revenue; 2 units             | —         | —         |
| e8 | B        | chat    | explicit costAmount 0.25                          | 0.250000  | —         |
| e9 | C (pro)  | chat    | rule: 100 x 0.02                                  | 2.000000  | 10.000000 |

Each event's answer reports the cost chain's step that priced it (``COST_SOURCES``): the
unknown model (e6) and the event without any cost (e7) report ``none``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from tests.factories import make_plan
from tests.metering_factories import subscribe

API = "/api/v1/client"
JAN1 = datetime(2026, 1, 1, tzinfo=UTC)

CHAT = {
    "pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.10"},
    "cost": {"model": "simple", "cost_per_unit": "0.02"},
}
SEARCH = {"pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.05"}}

EVENTS = [
    ("e1", "A", "chat", "2026-01-03T12:30:00Z", {"usageUnits": 10, "costAmount": "0.5"}),
    ("e2", "A", "chat", "2026-01-03T12:45:00Z", {"usageUnits": 5}),
    (
        "e3",
        "A",
        "search",
        "2026-01-03T23:10:00Z",
        {
            "usageUnits": 4,
            "costInput": {"model": "my-model", "inputTokens": 1000, "outputTokens": 500},
        },
    ),
    (
        "e4",
        "A",
        "search",
        "2026-01-10T00:05:00Z",
        {
            "usageUnits": 1,
            "costInput": {
                "model": "gpt-4o-2024-08-06",
                "inputTokens": 200000,
                "outputTokens": 100000,
            },
        },
    ),
    (
        "e5",
        "A",
        "search",
        "2026-01-10T05:00:00Z",
        {
            "usageUnits": 1,
            "costInput": {"model": "gpt-4o-mini", "inputTokens": 1000000, "outputTokens": 1000000},
        },
    ),
    (
        "e6",
        "B",
        "chat",
        "2026-01-14T08:00:00Z",
        {
            "usageUnits": 1,
            "revenueAmount": "0.30",
            "costInput": {"model": "mystery-llm-9", "inputTokens": 100},
        },
    ),
    ("e7", "B", "chat", "2026-01-15T09:00:00Z", {"usageUnits": 2}),
    ("e8", "B", "chat", "2026-01-15T09:30:00Z", {"usageUnits": 1, "costAmount": "0.25"}),
    ("e9", "C", "chat", "2026-01-12T14:00:00Z", {"usageUnits": 100}),
]

# the costSource each event's answer reports
COST_SOURCES = {
    "e1": "explicit",
    "e2": "rule",
    "e3": "account_default",
    "e4": "global_model_pricing",
    "e5": "global_model_pricing",  # the environment's override of the model table
    "e6": "none",  # unknown model: reported, never priced at zero silently
    "e7": "none",
    "e8": "explicit",
    "e9": "rule",
}

# key -> (events, usage units, revenue micros, cost micros, grossMargin, status)
BY_CUSTOMER = {
    "A": (5, 21, 1_800_000, 3_102_000, Decimal("-0.7233"), "underwater"),
    "B": (3, 4, 300_000, 250_000, Decimal("0.1667"), "underwater"),
    "C": (1, 100, 10_000_000, 2_000_000, Decimal("0.8"), "healthy"),
}
BY_FEATURE = {
    "chat": (6, 119, 11_800_000, 2_850_000, Decimal("0.7585"), "healthy"),
    "search": (3, 6, 300_000, 2_502_000, Decimal("-7.34"), "underwater"),
}
BY_MODEL = {
    "(none)": (5, 118, 11_500_000, 2_850_000, Decimal("0.7522"), "healthy"),
    "my-model": (1, 4, 200_000, 2_000, Decimal("0.99"), "healthy"),
    "gpt-4o-2024-08-06": (1, 1, 50_000, 1_500_000, Decimal("-29"), "underwater"),
    "gpt-4o-mini": (1, 1, 50_000, 1_000_000, Decimal("-19"), "underwater"),
    "mystery-llm-9": (1, 1, 300_000, 0, Decimal("1"), "healthy"),
}
BY_PLAN = {
    "pro": (6, 121, 11_800_000, 5_102_000, Decimal("0.5676"), "at_risk"),
    "(none)": (3, 4, 300_000, 250_000, Decimal("0.1667"), "underwater"),
}
TOTALS = (9, 125, 12_100_000, 5_352_000, Decimal("0.5577"), "at_risk")
# day -> (revenue micros, cost micros)
BY_DAY = {
    "2026-01-03": (1_700_000, 602_000),
    "2026-01-10": (100_000, 2_500_000),
    "2026-01-12": (10_000_000, 2_000_000),
    "2026-01-14": (300_000, 0),
    "2026-01-15": (0, 250_000),
}


async def set_up(ctx, client, tenant) -> None:
    env = tenant.env_ids["test"]
    plan = await make_plan(
        ctx,
        env,
        key="pro",
        price="49.00",
        timing="IN_ARREARS",
        features={"chat": json.dumps(CHAT), "search": json.dumps(SEARCH)},
    )
    for ref in ("A", "C"):
        await subscribe(ctx, env, ref, plan["plan_id"], start=JAN1)
    r = await client.put(
        f"{API}/settings/costs",
        json={
            "defaultCostConfig": {
                "model_costs": {"my-model": {"input": "0.000001", "output": "0.000002"}}
            },
            "modelPriceOverrides": [
                {
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "inputPricePerMillion": "0.20",
                    "outputPricePerMillion": "0.80",
                    "effectiveFrom": "2026-01-01",
                }
            ],
        },
        headers=tenant.headers("admin"),
    )
    assert r.status_code == 200, r.text


def _body(key: str, ref: str, feature: str, at: str, extra: dict) -> dict:
    return {
        "eventIdempotencyKey": key,
        "eventName": "call",
        "customerReferenceId": ref,
        "featureKey": feature,
        "occurredAt": at,
        **extra,
    }


async def send(client, tenant, names: set[str] | None = None) -> None:
    """The events one request each; each answer reports the event's cost source."""
    for key, *event in EVENTS:
        if names is not None and key not in names:
            continue
        r = await client.post(
            f"{API}/events", json=_body(key, *event), headers=tenant.headers("client")
        )
        assert r.status_code == 201, r.text
        assert r.json()["data"]["costSource"] == COST_SOURCES[key], (key, r.json())


async def send_batch(client, tenant) -> None:
    """The events in one batch; each item's result reports the event's cost source."""
    r = await client.post(
        f"{API}/events/batch",
        json={"events": [_body(*event) for event in EVENTS]},
        headers=tenant.headers("client"),
    )
    assert r.status_code == 200, r.text
    results = r.json()["data"]["results"]
    assert [i["status"] for i in results] == ["accepted"] * len(EVENTS), results
    assert {key: i["costSource"] for (key, *_), i in zip(EVENTS, results, strict=True)} == (
        COST_SOURCES
    )


def check_rows(rows: list[dict], expected: dict) -> None:
    got = {r["key"]: r for r in rows}
    assert set(got) == set(expected), (set(got), set(expected))
    for key, (events, units, revenue, cost, margin, status) in expected.items():
        r = got[key]
        assert r["events"] == events, (key, r)
        assert Decimal(str(r["usageUnits"])) == units, (key, r)
        assert r["revenueMicros"] == revenue, (key, r)
        assert r["costMicros"] == cost, (key, r)
        assert Decimal(str(r["revenue"])) == Decimal(revenue) / 1_000_000
        assert Decimal(str(r["cost"])) == Decimal(cost) / 1_000_000
        assert Decimal(str(r["grossMargin"])) == margin, (key, r)
        assert r["status"] == status, (key, r)


def check_totals(t: dict) -> None:
    events, units, revenue, cost, margin, status = TOTALS
    assert t["events"] == events and Decimal(str(t["usageUnits"])) == units
    assert t["revenueMicros"] == revenue and t["costMicros"] == cost
    assert Decimal(str(t["grossMargin"])) == margin and t["status"] == status
    assert t["unknownModelEvents"] == 1
    assert t["eventsWithoutCost"] == 2  # e6 (unknown model) and e7
