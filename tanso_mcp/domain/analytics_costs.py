"""An environment's cost configuration: the default cost config and its own model
prices (overrides of the built-in model table).

Stored in the environment's ``settings`` document under ``defaultCostConfig`` (the
``model_aware`` shape: ``default_cost_per_unit``, ``default_output_cost_per_unit``,
``model_costs``, ``cost_unit``) and ``modelPriceOverrides``: a list of
``{provider, model, inputPricePerMillion, outputPricePerMillion, effectiveFrom}``.
An override wins over the built-in entry of the same model from its ``effectiveFrom``
date (UTC) on; events keep the cost computed when they were ingested.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from tanso_mcp.domain.cost import MODEL_PRICES, ModelPrice, lookup_model_price
from tanso_mcp.domain.money import require_non_negative, to_decimal
from tanso_mcp.domain.rules import DefaultCostConfig, parse_default_cost_config
from tanso_mcp.errors import InvalidRequest

__all__ = [
    "MAX_OVERRIDES",
    "price_overrides",
    "overrides_to_json",
    "parse_overrides",
    "prices_in_force",
]

MAX_OVERRIDES = 500
_KEYS = {"provider", "model", "inputPricePerMillion", "outputPricePerMillion", "effectiveFrom"}


def _text(value: Any, field: str, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidRequest(
            f"{field} must be a non-empty string of at most {max_len} characters", field=field
        )
    return value.strip()


def parse_overrides(
    raw: Any, today: date | None = None, field: str = "modelPriceOverrides"
) -> tuple[ModelPrice, ...]:
    """Validate a list of model price overrides; ``effectiveFrom`` defaults to
    ``today`` (when given). One entry per (model, effectiveFrom)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest(f"{field} must be a list", field=field)
    if len(raw) > MAX_OVERRIDES:
        raise InvalidRequest(f"{field} holds at most {MAX_OVERRIDES} entries", field=field)
    out: list[ModelPrice] = []
    seen: set[tuple[str, date]] = set()
    for n, item in enumerate(raw):
        at = f"{field}[{n}]"
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"{at} must be an object", field=at)
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise InvalidRequest(
                f"{at}.{unknown[0]} is not a recognised field", field=f"{at}.{unknown[0]}"
            )
        model = _text(item.get("model"), f"{at}.model", 128)
        provider = _text(item.get("provider"), f"{at}.provider", 64)
        prices = []
        for name in ("inputPricePerMillion", "outputPricePerMillion"):
            if item.get(name) is None:
                raise InvalidRequest(f"{at}.{name} is required", field=f"{at}.{name}")
            prices.append(
                require_non_negative(to_decimal(item[name], f"{at}.{name}"), f"{at}.{name}")
            )
        since_raw = item.get("effectiveFrom")
        since: date | None
        if since_raw is None:
            if today is None:
                raise InvalidRequest(f"{at}.effectiveFrom is required", field=f"{at}.effectiveFrom")
            since = today
        else:
            try:
                since = (
                    date.fromisoformat(str(since_raw)[:10]) if isinstance(since_raw, str) else None
                )
            except ValueError:
                since = None
            if since is None:
                raise InvalidRequest(
                    f"{at}.effectiveFrom must be a date (YYYY-MM-DD)", field=f"{at}.effectiveFrom"
                )
        assert since is not None  # both branches above set it or raised
        key = (model.lower(), since)
        if key in seen:
            raise InvalidRequest(
                f"{at}: {model} already has a price effective from {since}", field=f"{at}.model"
            )
        seen.add(key)
        out.append(ModelPrice(model, provider, prices[0], prices[1], since))
    return tuple(out)


def overrides_to_json(overrides: tuple[ModelPrice, ...]) -> list[dict[str, Any]]:
    return [
        {
            "provider": o.provider,
            "model": o.model,
            "inputPricePerMillion": o.input_per_million,
            "outputPricePerMillion": o.output_per_million,
            "effectiveFrom": o.effective_from.isoformat(),
        }
        for o in overrides
    ]


def stored_config(
    settings: Mapping[str, Any],
) -> tuple[DefaultCostConfig | None, tuple[ModelPrice, ...]]:
    """The cost configuration kept in an environment's settings (already validated when
    it was written)."""
    config = parse_default_cost_config(settings.get("defaultCostConfig"))
    overrides = parse_overrides(settings.get("modelPriceOverrides"))
    return config, overrides


_OVERRIDES_CACHE: dict[str, tuple[ModelPrice, ...]] = {}


def price_overrides(settings: Any) -> tuple[ModelPrice, ...]:
    """The model price overrides in an environment's stored settings (a JSON text or a
    mapping), parsed once per distinct settings text: a changed setting is a new key, so
    there is nothing to invalidate. Unreadable settings give no overrides."""
    if settings is None:
        return ()
    text = settings if isinstance(settings, str) else json.dumps(settings, default=str)
    hit = _OVERRIDES_CACHE.get(text)
    if hit is not None:
        return hit
    try:
        data = json.loads(text, parse_float=Decimal)
        found = parse_overrides(data.get("modelPriceOverrides")) if isinstance(data, dict) else ()
    except (InvalidRequest, ValueError):
        found = ()
    if len(_OVERRIDES_CACHE) > 10_000:
        _OVERRIDES_CACHE.clear()
    _OVERRIDES_CACHE[text] = found
    return found


def prices_in_force(overrides: tuple[ModelPrice, ...], at: Any) -> list[dict[str, Any]]:
    """Every model of the built-in table and of the overrides, with the price in force at
    ``at`` (an aware datetime) and where it comes from (``builtin`` | ``override``)."""
    names: dict[str, str] = {}
    for entry in (*MODEL_PRICES, *overrides):
        names.setdefault(entry.model.strip().lower(), entry.model)
    rows = []
    for name in sorted(names.values(), key=str.lower):
        match = lookup_model_price(name, at, overrides)
        if match is None:  # pragma: no cover - every listed name matches itself
            continue
        rows.append(
            {
                "model": match.model,
                "provider": match.provider,
                "inputPricePerMillion": match.input_per_million,
                "outputPricePerMillion": match.output_per_million,
                "effectiveFrom": match.effective_from.isoformat(),
                "source": match.source,
            }
        )
    return rows
