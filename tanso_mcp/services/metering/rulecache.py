"""Parsed plan rules and environment cost settings, memoised by their raw JSON text:
parsing is far dearer than the lookup, and the entitlement loader and the batch writer
both need them."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from ...db.types import _json_default
from ...domain.rules import (
    DefaultCostConfig,
    RuleValue,
    parse_default_cost_config,
    parse_rule_value,
)
from ...errors import TansoError

# parsed rule values by (rule id, raw JSON text): parsing is far dearer than the lookup
_RULE_CACHE: dict[tuple[str, str], RuleValue | None] = {}
_SETTINGS_CACHE: dict[str, tuple[DefaultCostConfig | None]] = {}


def rule_value(rule_id: str, raw: Any) -> RuleValue | None:
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else orjson.dumps(raw, default=_json_default).decode()
    key = (rule_id, text)
    hit = _RULE_CACHE.get(key, _RULE_CACHE)
    if hit is not _RULE_CACHE:
        return hit  # type: ignore[return-value]
    try:
        value = parse_rule_value(json.loads(text, parse_float=Decimal))
    except TansoError:
        value = None
    if len(_RULE_CACHE) > 50_000:
        _RULE_CACHE.clear()
    _RULE_CACHE[key] = value
    return value


def default_cost(raw: Any) -> DefaultCostConfig | None:
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else orjson.dumps(raw, default=_json_default).decode()
    hit = _SETTINGS_CACHE.get(text)
    if hit is not None:
        return hit[0]
    config = None
    try:
        settings = json.loads(text, parse_float=Decimal)
        if isinstance(settings, dict) and settings.get("defaultCostConfig") is not None:
            config = parse_default_cost_config(settings["defaultCostConfig"])
    except (TansoError, ValueError):
        config = None
    if len(_SETTINGS_CACHE) > 10_000:
        _SETTINGS_CACHE.clear()
    _SETTINGS_CACHE[text] = (config,)
    return config
