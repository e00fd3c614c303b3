"""Cost of goods sold (COGS) per event and the built-in model price table.

Resolution chain of :func:`resolve_cost` (first match wins):

1. ``explicit`` — the event's ``costAmount`` (currency units, e.g. dollars);
2. ``rule`` — the plan rule's cost model (billing-eligible events only):
   ``simple``: ``usage_units × cost_per_unit``; ``model_aware``: two-rate
   ``input_tokens × in + output_tokens × out`` when token counts are given (rates of
   ``model_costs[model]`` else the defaults), otherwise
   ``(cost_units or usage_units) × (model rate or default rate)``;
3. ``account_default`` — the environment's default cost config, same maths; skipped
   when it has no rate for the event (no matching ``model_costs`` entry and no default);
4. ``global_model_pricing`` — the model price table, keyed by ``cost_input.model``:
   ``(in × input_per_million + out × output_per_million) / 1e6``; without token counts
   ``cost_units`` (else ``usage_units``) count as input tokens;
5. nothing: amount ``None``, source ``None``.

Amounts are rounded to 6 dp once, at the end (not to 4 dp for cost-model maths,
which would turn per-token rates such as 0.00003 into 0).

Model names (in the table and in ``model_costs`` maps) are matched by
:func:`match_model_name`: exact (case-insensitive) first,
then after normalisation (provider prefixes such as ``openai/``, ``models/``,
``anthropic.``, ``us.anthropic.``, ``meta-``; ``@version`` and ``:tag`` suffixes; date
and version suffixes such as ``-2024-08-06``, ``-20240620``, ``-0613``, ``-001``,
``-v2``, ``-latest``, ``-preview``, ``-exp``; dotted Claude versions ``claude-3.5-…``),
then the longest table key that is a prefix of the normalised name ending at a
``-``/``.``/``_`` boundary (``gpt-4o-audio-preview`` -> ``gpt-4o``, never ``gpt-4`` for
``gpt-4o``). Exact snapshot keys (e.g. ``gpt-4o-2024-05-13``, which kept its launch
price) win over normalisation.

The table holds public list prices in USD per million tokens (standard tier, no
caching/batch discounts, shortest-context price band), each effective-dated; the entry
used is the latest whose ``effective_from`` is on or before the event date (UTC), or the
earliest entry if the event predates them all. Meta Llama models have no first-party
API price: their entries are Together AI serverless list prices. Environments can
override or extend the table (``overrides``, which win over built-in entries for the
same model). Prices as published up to late 2025; check before relying on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from tanso_mcp.domain.money import (
    decimal_context,
    require_non_negative,
    round_cost,
    to_decimal,
)
from tanso_mcp.domain.periods import ensure_utc
from tanso_mcp.domain.rules import (
    CostModel,
    CostUnit,
    DefaultCostConfig,
    ModelAwareCost,
    ModelRate,
    SimpleCost,
    field_path,
)
from tanso_mcp.errors import InvalidRequest

__all__ = [
    "MODEL_PRICES",
    "CostInput",
    "ModelPrice",
    "ModelPriceMatch",
    "ResolvedCost",
    "lookup_model_price",
    "match_model_name",
    "normalize_model_name",
    "parse_cost_input",
    "resolve_cost",
    "rule_cost",
    "table_cost",
]

MILLION = Decimal(1_000_000)


# ---------------------------------------------------------------------------
# event cost input


@dataclass(frozen=True)
class CostInput:
    """The event's ``costInput``: ``model``, ``modelProvider``, ``inputTokens``,
    ``outputTokens``, ``costUnits`` (all optional)."""

    model: str | None = None
    model_provider: str | None = None
    input_tokens: Decimal | None = None
    output_tokens: Decimal | None = None
    cost_units: Decimal | None = None

    @property
    def has_tokens(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None


_COST_INPUT_KEYS = {
    "model": "model",
    "modelProvider": "model_provider",
    "model_provider": "model_provider",
    "inputTokens": "input_tokens",
    "input_tokens": "input_tokens",
    "outputTokens": "output_tokens",
    "output_tokens": "output_tokens",
    "costUnits": "cost_units",
    "cost_units": "cost_units",
}


def parse_cost_input(raw: Any, field: str = "costInput") -> CostInput | None:
    """Validate an event's ``costInput`` object (camelCase or snake_case keys);
    ``None``/``{}`` -> ``None``. Token counts and cost units must be numbers >= 0;
    ``model``/``modelProvider`` non-empty strings of at most 200 characters."""
    if raw is None:
        return None
    if isinstance(raw, CostInput):
        return raw
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{field} must be an object", field=field)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _COST_INPUT_KEYS.get(key) if isinstance(key, str) else None
        where = field_path(field, str(key))
        if name is None:
            raise InvalidRequest(f"{where} is not a recognised field", field=where)
        if name in values:
            raise InvalidRequest(f"{where} is given twice", field=where)
        if value is None:
            continue
        if name in ("model", "model_provider"):
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                raise InvalidRequest(
                    f"{where} must be a non-empty string of at most 200 characters",
                    field=where,
                )
            values[name] = value.strip()
        else:
            values[name] = require_non_negative(to_decimal(value, where), where)
    if not values:
        return None
    return CostInput(**values)


# ---------------------------------------------------------------------------
# model price table


@dataclass(frozen=True)
class ModelPrice:
    model: str
    provider: str
    input_per_million: Decimal
    output_per_million: Decimal
    effective_from: date


def _p(model: str, provider: str, inp: str, out: str, since: str) -> ModelPrice:
    return ModelPrice(model, provider, Decimal(inp), Decimal(out), date.fromisoformat(since))


# fmt: off
MODEL_PRICES: tuple[ModelPrice, ...] = (
    # OpenAI
    _p("gpt-4", "openai", "30.00", "60.00", "2023-03-14"),
    _p("gpt-4-turbo", "openai", "10.00", "30.00", "2023-11-06"),
    _p("gpt-3.5-turbo", "openai", "0.50", "1.50", "2024-01-25"),
    _p("gpt-4o", "openai", "5.00", "15.00", "2024-05-13"),
    _p("gpt-4o", "openai", "2.50", "10.00", "2024-10-02"),
    _p("gpt-4o-2024-05-13", "openai", "5.00", "15.00", "2024-05-13"),
    _p("gpt-4o-mini", "openai", "0.15", "0.60", "2024-07-18"),
    _p("gpt-4.1", "openai", "2.00", "8.00", "2025-04-14"),
    _p("gpt-4.1-mini", "openai", "0.40", "1.60", "2025-04-14"),
    _p("gpt-4.1-nano", "openai", "0.10", "0.40", "2025-04-14"),
    _p("gpt-5", "openai", "1.25", "10.00", "2025-08-07"),
    _p("gpt-5-mini", "openai", "0.25", "2.00", "2025-08-07"),
    _p("gpt-5-nano", "openai", "0.05", "0.40", "2025-08-07"),
    _p("gpt-5-pro", "openai", "15.00", "120.00", "2025-10-06"),
    _p("o1", "openai", "15.00", "60.00", "2024-09-12"),
    _p("o1-mini", "openai", "3.00", "12.00", "2024-09-12"),
    _p("o1-mini", "openai", "1.10", "4.40", "2025-01-31"),
    _p("o1-pro", "openai", "150.00", "600.00", "2025-03-19"),
    _p("o3-mini", "openai", "1.10", "4.40", "2025-01-31"),
    _p("o3", "openai", "10.00", "40.00", "2025-04-16"),
    _p("o3", "openai", "2.00", "8.00", "2025-06-10"),
    _p("o3-pro", "openai", "20.00", "80.00", "2025-06-10"),
    _p("o4-mini", "openai", "1.10", "4.40", "2025-04-16"),
    _p("text-embedding-3-small", "openai", "0.02", "0", "2024-01-25"),
    _p("text-embedding-3-large", "openai", "0.13", "0", "2024-01-25"),
    _p("text-embedding-ada-002", "openai", "0.10", "0", "2022-12-15"),
    # Anthropic
    _p("claude-3-opus", "anthropic", "15.00", "75.00", "2024-03-04"),
    _p("claude-3-sonnet", "anthropic", "3.00", "15.00", "2024-03-04"),
    _p("claude-3-haiku", "anthropic", "0.25", "1.25", "2024-03-13"),
    _p("claude-3-5-sonnet", "anthropic", "3.00", "15.00", "2024-06-20"),
    _p("claude-3-5-haiku", "anthropic", "0.80", "4.00", "2024-10-22"),
    _p("claude-3-7-sonnet", "anthropic", "3.00", "15.00", "2025-02-24"),
    _p("claude-sonnet-4", "anthropic", "3.00", "15.00", "2025-05-22"),
    _p("claude-opus-4", "anthropic", "15.00", "75.00", "2025-05-22"),
    _p("claude-opus-4-1", "anthropic", "15.00", "75.00", "2025-08-05"),
    _p("claude-sonnet-4-5", "anthropic", "3.00", "15.00", "2025-09-29"),
    _p("claude-haiku-4-5", "anthropic", "1.00", "5.00", "2025-10-15"),
    _p("claude-opus-4-5", "anthropic", "5.00", "25.00", "2025-11-24"),
    # Google (Gemini API, prompts up to the first context band)
    _p("gemini-1.5-pro", "google", "3.50", "10.50", "2024-05-14"),
    _p("gemini-1.5-pro", "google", "1.25", "5.00", "2024-10-01"),
    _p("gemini-1.5-flash", "google", "0.35", "1.05", "2024-05-14"),
    _p("gemini-1.5-flash", "google", "0.075", "0.30", "2024-08-12"),
    _p("gemini-1.5-flash-8b", "google", "0.0375", "0.15", "2024-10-03"),
    _p("gemini-2.0-flash", "google", "0.10", "0.40", "2025-02-05"),
    _p("gemini-2.0-flash-lite", "google", "0.075", "0.30", "2025-02-25"),
    _p("gemini-2.5-pro", "google", "1.25", "10.00", "2025-04-04"),
    _p("gemini-2.5-flash", "google", "0.15", "0.60", "2025-04-17"),
    _p("gemini-2.5-flash", "google", "0.30", "2.50", "2025-06-17"),
    _p("gemini-2.5-flash-lite", "google", "0.10", "0.40", "2025-07-22"),
    _p("gemini-3-pro", "google", "2.00", "12.00", "2025-11-18"),
    # Mistral
    _p("mistral-large", "mistral", "3.00", "9.00", "2024-07-24"),
    _p("mistral-large", "mistral", "2.00", "6.00", "2024-11-18"),
    _p("mistral-medium", "mistral", "0.40", "2.00", "2025-05-07"),
    _p("mistral-small", "mistral", "0.20", "0.60", "2024-09-17"),
    _p("mistral-small", "mistral", "0.10", "0.30", "2025-01-30"),
    _p("mistral-nemo", "mistral", "0.15", "0.15", "2024-07-18"),
    _p("open-mistral-nemo", "mistral", "0.15", "0.15", "2024-07-18"),
    _p("codestral", "mistral", "0.30", "0.90", "2025-01-13"),
    _p("ministral-8b", "mistral", "0.10", "0.10", "2024-10-16"),
    _p("ministral-3b", "mistral", "0.04", "0.04", "2024-10-16"),
    _p("pixtral-large", "mistral", "2.00", "6.00", "2024-11-18"),
    # Meta Llama (Together AI serverless list prices)
    _p("llama-3.1-8b", "meta", "0.18", "0.18", "2024-07-23"),
    _p("llama-3.1-70b", "meta", "0.88", "0.88", "2024-07-23"),
    _p("llama-3.1-405b", "meta", "3.50", "3.50", "2024-07-23"),
    _p("llama-3.3-70b", "meta", "0.88", "0.88", "2024-12-06"),
    _p("llama-4-scout", "meta", "0.18", "0.59", "2025-04-05"),
    _p("llama-4-maverick", "meta", "0.27", "0.85", "2025-04-05"),
    # DeepSeek
    _p("deepseek-chat", "deepseek", "0.27", "1.10", "2025-02-09"),
    _p("deepseek-chat", "deepseek", "0.28", "0.42", "2025-09-29"),
    _p("deepseek-reasoner", "deepseek", "0.55", "2.19", "2025-01-20"),
    _p("deepseek-reasoner", "deepseek", "0.28", "0.42", "2025-09-29"),
    # xAI
    _p("grok-2", "xai", "2.00", "10.00", "2024-12-12"),
    _p("grok-3", "xai", "3.00", "15.00", "2025-04-09"),
    _p("grok-3-mini", "xai", "0.30", "0.50", "2025-04-09"),
    _p("grok-4", "xai", "3.00", "15.00", "2025-07-09"),
    # Cohere
    _p("command-r", "cohere", "0.15", "0.60", "2024-08-30"),
    _p("command-r-plus", "cohere", "2.50", "10.00", "2024-08-30"),
    _p("command-a", "cohere", "2.50", "10.00", "2025-03-13"),
)
# fmt: on


def _index(entries: Iterable[ModelPrice]) -> dict[str, list[ModelPrice]]:
    out: dict[str, list[ModelPrice]] = {}
    for entry in entries:
        out.setdefault(entry.model.strip().lower(), []).append(entry)
    for versions in out.values():
        versions.sort(key=lambda e: e.effective_from)
    return out


_BUILTIN = _index(MODEL_PRICES)

_PROVIDER_PREFIX_RE = re.compile(
    r"^(?:(?:us|eu|apac|global)\.)?"
    r"(?:anthropic|meta|mistral|mistralai|cohere|amazon|openai|google|deepseek|xai|ai21)[.:]"
)
_SUFFIX_RE = re.compile(
    r"-(?:\d{4}-\d{2}-\d{2}|\d{2}-\d{4}|\d{2}-\d{2}|\d{8}|\d{3,4}|v\d+(?:[.-]\d+)?|latest|preview|exp)$"
)
_BOUNDARY = "-._"


@lru_cache(maxsize=4096)
def _strip_prefix(name: str) -> str:
    s = name.strip().lower()
    s = s.rsplit("/", 1)[-1]
    s = _PROVIDER_PREFIX_RE.sub("", s)
    if s.startswith("meta-llama"):
        s = s[len("meta-") :]
    return s


@lru_cache(maxsize=4096)
def normalize_model_name(name: str) -> str:
    """The comparable core of a model name (see the module docstring)."""
    s = _strip_prefix(name)
    s = s.split("@", 1)[0].split(":", 1)[0]
    if s.startswith("claude"):
        s = s.replace(".", "-")
    while True:
        stripped = _SUFFIX_RE.sub("", s)
        if stripped == s or not stripped:
            return s
        s = stripped


def match_model_name(name: str, keys: Iterable[str]) -> tuple[str, bool] | None:
    """Find ``name`` among ``keys`` (compared case-insensitively): returns
    ``(matching key, fuzzy)`` or ``None``. ``fuzzy`` is false only when the key equals
    the name up to case and surrounding whitespace."""
    if not isinstance(name, str) or not name.strip():
        return None
    by_lower: dict[str, str] = {}
    for key in keys:
        by_lower.setdefault(key.strip().lower(), key)
    raw = name.strip().lower()
    if raw in by_lower:
        return by_lower[raw], False
    candidates = [_strip_prefix(name), normalize_model_name(name)]
    normalized_keys: dict[str, str] = {}
    for low, key in by_lower.items():
        normalized_keys.setdefault(normalize_model_name(low), key)
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate], True
        if candidate in normalized_keys:
            return normalized_keys[candidate], True
    core = candidates[-1]
    best: str | None = None
    for low in by_lower:
        if (
            len(low) < len(core)
            and core.startswith(low)
            and core[len(low)] in _BOUNDARY
            and (best is None or len(low) > len(best))
        ):
            best = low
    if best is None:
        return None
    return by_lower[best], True


@lru_cache(maxsize=4096)
def _match_builtin(model: str) -> tuple[str, bool] | None:
    return match_model_name(model, _BUILTIN.keys())


@dataclass(frozen=True)
class ModelPriceMatch:
    requested: str
    model: str
    provider: str
    input_per_million: Decimal
    output_per_million: Decimal
    effective_from: date
    fuzzy: bool
    source: str
    """``"override"`` (environment table) or ``"builtin"``."""


def _pick(versions: list[ModelPrice], day: date) -> ModelPrice | None:
    chosen = None
    for entry in versions:
        if entry.effective_from <= day:
            chosen = entry
    return chosen


def lookup_model_price(
    model: str, at: datetime, overrides: Iterable[ModelPrice] | None = None
) -> ModelPriceMatch | None:
    """The price of ``model`` in force at ``at`` (aware datetime), or ``None`` if the
    name matches no table entry. ``overrides`` (an environment's own entries) win over
    built-in entries of the same model."""
    day = ensure_utc(at, "at").date()
    override_index = _index(overrides) if overrides else {}
    if override_index:
        found = match_model_name(model, {**_BUILTIN, **override_index}.keys())
    elif isinstance(model, str):
        found = _match_builtin(model)
    else:
        found = None
    if found is None:
        return None
    key, fuzzy = found
    own = override_index.get(key, [])
    builtin = _BUILTIN.get(key, [])
    entry, source = _pick(own, day), "override"
    if entry is None:
        entry, source = _pick(builtin, day), "builtin"
    if entry is None:  # the event predates every entry: use the earliest known price
        entry, source = (own[0], "override") if own else (builtin[0], "builtin")
    return ModelPriceMatch(
        requested=model,
        model=entry.model,
        provider=entry.provider,
        input_per_million=entry.input_per_million,
        output_per_million=entry.output_per_million,
        effective_from=entry.effective_from,
        fuzzy=fuzzy,
        source=source,
    )


def _table_amount(
    match: ModelPriceMatch,
    input_tokens: Decimal | None,
    output_tokens: Decimal | None,
    units: Decimal | None,
) -> Decimal:
    with decimal_context():
        if input_tokens is None and output_tokens is None:
            tokens_in, tokens_out = (units or Decimal(0)), Decimal(0)
        else:
            tokens_in, tokens_out = input_tokens or Decimal(0), output_tokens or Decimal(0)
        return (
            tokens_in * match.input_per_million + tokens_out * match.output_per_million
        ) / MILLION


def table_cost(
    model: str,
    input_tokens: Decimal | int | None,
    output_tokens: Decimal | int | None,
    units: Decimal | int | None,
    at: datetime,
    overrides: Iterable[ModelPrice] | None = None,
) -> Decimal | None:
    """``(in × input_per_million + out × output_per_million) / 1e6`` at the price in force
    at ``at``, exact (not rounded); ``units`` count as input tokens when both token
    counts are ``None``. ``None`` when the model is unknown."""
    match = lookup_model_price(model, at, overrides)
    if match is None:
        return None
    return _table_amount(match, _dec(input_tokens), _dec(output_tokens), _dec(units))


def _dec(value: Decimal | int | None) -> Decimal | None:
    return None if value is None else Decimal(value)


# ---------------------------------------------------------------------------
# cost models


def _model_rate(model_costs: Mapping[str, ModelRate], model: str | None) -> ModelRate | None:
    if not model or not model_costs:
        return None
    found = match_model_name(model, model_costs.keys())
    return None if found is None else model_costs[found[0]]


def _rate_cost(
    model_costs: Mapping[str, ModelRate],
    default_in: Decimal | None,
    default_out: Decimal | None,
    usage_units: Decimal,
    cost_input: CostInput | None,
) -> Decimal | None:
    """Shared ``model_aware`` maths; ``None`` when no rate applies."""
    rate = _model_rate(model_costs, cost_input.model if cost_input else None)
    if rate is not None:
        in_rate, out_rate = rate.input, rate.output_rate
    elif default_in is not None:
        in_rate = default_in
        out_rate = default_in if default_out is None else default_out
    else:
        return None
    with decimal_context():
        if cost_input is not None and cost_input.has_tokens:
            return (cost_input.input_tokens or 0) * in_rate + (
                cost_input.output_tokens or 0
            ) * out_rate
        quantity = (
            cost_input.cost_units
            if cost_input is not None and cost_input.cost_units is not None
            else usage_units
        )
        return quantity * in_rate


def rule_cost(
    cost_model: CostModel, usage_units: Decimal | int, cost_input: CostInput | None = None
) -> Decimal:
    """Exact cost of an event under a rule's cost model (see the module docstring)."""
    units = Decimal(usage_units)
    if isinstance(cost_model, SimpleCost):
        with decimal_context():
            return units * cost_model.cost_per_unit
    if isinstance(cost_model, ModelAwareCost):
        amount = _rate_cost(
            cost_model.model_costs,
            cost_model.default_cost_per_unit,
            cost_model.default_output_cost_per_unit,
            units,
            cost_input,
        )
        assert amount is not None  # a rule's model_aware cost always has a default rate
        return amount
    raise TypeError(f"unknown cost model {type(cost_model).__name__}")


@dataclass(frozen=True)
class ResolvedCost:
    """Result of :func:`resolve_cost`. Unpacks as ``(amount, source)``."""

    amount: Decimal | None
    source: str | None
    """``"explicit"``, ``"rule"``, ``"account_default"``, ``"global_model_pricing"`` or
    ``None``."""
    cost_unit: CostUnit | None = None
    """What ``amount`` counts; only ``CURRENCY`` amounts belong in money margins."""
    provider: str | None = None
    """Provider from the model table (or ``costInput.modelProvider``)."""
    model_resolved: str | None = None
    """Table entry used, when it differs from the requested name (fuzzy match)."""
    fuzzy: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.amount, self.source))


def resolve_cost(
    *,
    at: datetime,
    usage_units: Decimal | int,
    cost_amount: Any = None,
    cost_input: CostInput | None = None,
    rule_cost_model: CostModel | None = None,
    default_config: DefaultCostConfig | None = None,
    overrides: Iterable[ModelPrice] | None = None,
    field: str = "costAmount",
) -> ResolvedCost:
    """Apply the cost chain (module docstring). ``rule_cost_model`` should be passed only
    for billing-eligible events. ``cost_amount`` may be any exact number; a negative or
    non-numeric one is an ``InvalidRequest`` naming ``field``. Amounts are rounded to
    6 dp."""
    provider = cost_input.model_provider if cost_input else None
    if cost_amount is not None:
        amount = require_non_negative(to_decimal(cost_amount, field), field)
        return ResolvedCost(round_cost(amount), "explicit", CostUnit.CURRENCY, provider)
    units = Decimal(usage_units)
    if rule_cost_model is not None:
        amount = rule_cost(rule_cost_model, units, cost_input)
        return ResolvedCost(round_cost(amount), "rule", rule_cost_model.cost_unit, provider)
    if default_config is not None:
        rated = _rate_cost(
            default_config.model_costs,
            default_config.default_cost_per_unit,
            default_config.default_output_cost_per_unit,
            units,
            cost_input,
        )
        if rated is not None:
            return ResolvedCost(
                round_cost(rated), "account_default", default_config.cost_unit, provider
            )
    if cost_input is not None and cost_input.model:
        match = lookup_model_price(cost_input.model, at, overrides)
        if match is not None:
            tokens_units = cost_input.cost_units if cost_input.cost_units is not None else units
            amount = _table_amount(
                match, cost_input.input_tokens, cost_input.output_tokens, tokens_units
            )
            return ResolvedCost(
                round_cost(amount),
                "global_model_pricing",
                CostUnit.CURRENCY,
                provider or match.provider,
                match.model if match.fuzzy else None,
                match.fuzzy,
            )
    return ResolvedCost(None, None, None, provider)
