"""Plan-feature rule values: the ``valueJson`` of ``adminLinkFeatureToPlan``.

Normalised (nested) form::

    {"pricing": {...}, "cost": {...}, "credits": {"denomination": "AI_TOKENS", "weight": 1}}

Every section is optional; a missing/empty value (``None``, ``""``, ``"null"``, ``{}``)
is a boolean gate ("included") and parses to ``None``.

Pricing models (``pricing.model``):

* ``usage``: ``usage_unit_type``, ``price_per_unit`` >= 0, ``max_usage`` >= 0 (optional),
  ``reset_mode`` ``reset`` (default) | ``accumulate``;
* ``graduated``: ``usage_unit_type``, ``tiers`` (1..100 of ``{up_to, price_per_unit,
  flat_fee?}``), ``max_usage``, ``reset_mode``.

Cost models (``cost.model``): ``simple`` (``cost_per_unit``, ``cost_unit``) and
``model_aware`` (``default_cost_per_unit`` alias ``default_input_cost_per_unit``,
``default_output_cost_per_unit``, ``model_costs`` ``{name: rate | {input, output}}``,
``cost_unit``). ``cost_unit`` is ``TOKENS`` | ``CREDITS`` | ``CURRENCY`` (default; the
docs' ``USD`` is read as ``CURRENCY``).

Numbers are parsed exactly (``parse_float=Decimal``); ``to_json`` returns Decimals, to be
written with :func:`tanso_mcp.domain.money.dumps_json` (or any exact encoder).

Every validation failure is an ``InvalidRequest`` whose ``field`` is the exact path of
the offending value *as the caller wrote it*, e.g. ``valueJson.pricing.tiers[1].up_to``
(or ``valueJson.price_per_unit`` in the legacy flat form).

Further decisions (all documented here):

* Tiers: ``up_to`` is a number > 0 or ``"inf"`` (case-insensitive); bounds strictly
  increase; ``"inf"`` only on the last tier; **the last tier must be ``"inf"``** (a
  finite last tier would leave usage above it unpriced or silently priced; Stripe
  requires the same). ``up_to`` may be fractional, like usage.
* Keys are snake_case; the camelCase spellings (``maxUsage``, ``pricePerUnit``,
  ``upTo``, ``flatFee``, ``resetMode``, ``usageUnitType``, ``costPerUnit`` …) are accepted
  and normalised. Giving both spellings, duplicate JSON keys, or unknown keys is an error
  (catches typos such as ``max_usgae``).
* Model names, ``reset_mode`` and ``cost_unit`` are case-insensitive and normalised
  (``usage``, ``reset``, ``CURRENCY``).
* ``model_costs`` values: a number (one rate for input and output) or ``{"input", "output"?}``
  (output defaults to input). ``default_output_cost_per_unit`` defaults to the input rate.
* ``credits.denomination`` is upper-cased and must match ``[A-Z][A-Z0-9_]{0,63}``;
  ``weight`` > 0, default 1.
* Legacy flat form (pricing keys at the top level, cost keys mixed in, either at the
  top level or inside ``pricing``): the pricing model is inferred when absent
  (``tiers`` -> ``graduated``, else ``usage``) and ``usage_unit_type`` defaults to
  ``"units"``; a usage price falls back ``price_per_unit`` -> ``cost_rate`` ->
  ``cost_per_unit`` (in that order) when no ``cost_model`` is given; the
  remaining legacy cost keys form the cost model: ``cost_model`` (a model name, or a
  whole cost object), else ``model_aware`` when ``model_costs``/``default_*`` keys are
  present, else ``simple`` (``cost_rate`` is read as ``cost_per_unit``). Legacy cost keys
  next to an explicit ``cost`` object, or pricing keys both flat and nested, are an
  error rather than silently dropped. Cost keys alone (no pricing key) make an included
  feature with a cost model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from tanso_mcp.domain.money import NumberError, coerce_decimal
from tanso_mcp.errors import InvalidRequest

__all__ = [
    "COST_MODELS",
    "PRICING_MODELS",
    "CostModel",
    "CostUnit",
    "CreditsConfig",
    "DefaultCostConfig",
    "GraduatedPricing",
    "ModelAwareCost",
    "ModelRate",
    "PricingModel",
    "ResetMode",
    "RuleValue",
    "SimpleCost",
    "Tier",
    "UsagePricing",
    "field_path",
    "parse_cost_model",
    "parse_default_cost_config",
    "parse_rule_value",
    "render_pricing",
]

PRICING_MODELS = ("usage", "graduated")
COST_MODELS = ("simple", "model_aware")
MAX_TIERS = 100
MAX_MODEL_COSTS = 1000
MAX_JSON_CHARS = 100_000
INF = "inf"


class ResetMode(StrEnum):
    RESET = "reset"
    ACCUMULATE = "accumulate"


class CostUnit(StrEnum):
    TOKENS = "TOKENS"
    CREDITS = "CREDITS"
    CURRENCY = "CURRENCY"


# ---------------------------------------------------------------------------
# field types


def _number(value: Any) -> Decimal:
    try:
        return coerce_decimal(value)
    except NumberError as exc:
        raise PydanticCustomError("number", str(exc)) from None


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise PydanticCustomError("non_negative", "must be greater than or equal to 0")
    return value


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise PydanticCustomError("positive", "must be greater than 0")
    return value


def _up_to(value: Any) -> Decimal | None:
    if isinstance(value, str) and value.strip().lower() in (INF, "infinity"):
        return None
    if value is None:  # Python callers: None means "inf"; JSON null is refused earlier
        return None
    try:
        number = coerce_decimal(value)
    except NumberError as exc:
        raise PydanticCustomError("up_to", f'{exc} or "inf"') from None
    return _positive(number)


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _cost_unit(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip().upper()
        return CostUnit.CURRENCY.value if value == "USD" else value
    return value


_DENOMINATION_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")


def _denomination(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("denomination", "must be a string")
    text = value.strip().upper()
    if not _DENOMINATION_RE.match(text):
        raise PydanticCustomError(
            "denomination",
            "must be an identifier of letters, digits and underscores starting with a "
            "letter (e.g. AI_TOKENS), at most 64 characters",
        )
    return text


def _rate(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value
    return {"input": value}


Number = Annotated[Decimal, BeforeValidator(_number)]
NonNegative = Annotated[Decimal, BeforeValidator(_number), AfterValidator(_non_negative)]
Positive = Annotated[Decimal, BeforeValidator(_number), AfterValidator(_positive)]
UnitLabel = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
ModelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Reset = Annotated[ResetMode, BeforeValidator(_lower)]
Unit = Annotated[CostUnit, BeforeValidator(_cost_unit)]

_CONFIG = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


def _opt(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


# ---------------------------------------------------------------------------
# pricing models


class Tier(BaseModel):
    model_config = _CONFIG

    up_to: Annotated[Decimal | None, BeforeValidator(_up_to)]
    """Upper bound (inclusive) of the bracket; ``None`` means ``"inf"`` (JSON ``null`` is
    refused by :func:`parse_rule_value`; ``"inf"`` must be written out)."""
    price_per_unit: NonNegative
    flat_fee: NonNegative | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "up_to": INF if self.up_to is None else self.up_to,
            "price_per_unit": self.price_per_unit,
        }
        _opt(out, "flat_fee", self.flat_fee)
        return out


class UsagePricing(BaseModel):
    model_config = _CONFIG

    model: Literal["usage"] = "usage"
    usage_unit_type: UnitLabel
    price_per_unit: NonNegative
    max_usage: NonNegative | None = None
    reset_mode: Reset = ResetMode.RESET

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "usage_unit_type": self.usage_unit_type,
            "price_per_unit": self.price_per_unit,
        }
        _opt(out, "max_usage", self.max_usage)
        out["reset_mode"] = self.reset_mode.value
        return out


class GraduatedPricing(BaseModel):
    model_config = _CONFIG

    model: Literal["graduated"] = "graduated"
    usage_unit_type: UnitLabel
    tiers: Annotated[tuple[Tier, ...], Field(min_length=1, max_length=MAX_TIERS)]
    max_usage: NonNegative | None = None
    reset_mode: Reset = ResetMode.RESET

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "usage_unit_type": self.usage_unit_type,
            "tiers": [tier.to_json() for tier in self.tiers],
        }
        _opt(out, "max_usage", self.max_usage)
        out["reset_mode"] = self.reset_mode.value
        return out


PricingModel = UsagePricing | GraduatedPricing


# ---------------------------------------------------------------------------
# cost models


class ModelRate(BaseModel):
    model_config = _CONFIG

    input: NonNegative
    output: NonNegative | None = None
    """``None``: same as ``input``."""

    @property
    def output_rate(self) -> Decimal:
        return self.input if self.output is None else self.output

    def to_json(self) -> Decimal | dict[str, Any]:
        if self.output is None:
            return self.input
        return {"input": self.input, "output": self.output}


ModelCosts = Annotated[
    dict[ModelName, Annotated[ModelRate, BeforeValidator(_rate)]],
    Field(max_length=MAX_MODEL_COSTS),
]


class SimpleCost(BaseModel):
    model_config = _CONFIG

    model: Literal["simple"] = "simple"
    cost_per_unit: NonNegative
    cost_unit: Unit = CostUnit.CURRENCY

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "cost_per_unit": self.cost_per_unit,
            "cost_unit": self.cost_unit.value,
        }


class ModelAwareCost(BaseModel):
    model_config = _CONFIG

    model: Literal["model_aware"] = "model_aware"
    default_cost_per_unit: NonNegative
    """Default input rate (alias ``default_input_cost_per_unit``)."""
    default_output_cost_per_unit: NonNegative | None = None
    model_costs: ModelCosts = Field(default_factory=dict)
    cost_unit: Unit = CostUnit.CURRENCY

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "default_cost_per_unit": self.default_cost_per_unit,
        }
        _opt(out, "default_output_cost_per_unit", self.default_output_cost_per_unit)
        out["model_costs"] = {name: rate.to_json() for name, rate in self.model_costs.items()}
        out["cost_unit"] = self.cost_unit.value
        return out


CostModel = SimpleCost | ModelAwareCost


class DefaultCostConfig(BaseModel):
    """An environment's default cost configuration (step 3 of the cost chain):
    like ``model_aware`` but every rate is optional, so a config holding only
    ``model_costs`` falls through to the built-in model table for other models."""

    model_config = _CONFIG

    model: Literal["model_aware"] = "model_aware"
    default_cost_per_unit: NonNegative | None = None
    default_output_cost_per_unit: NonNegative | None = None
    model_costs: ModelCosts = Field(default_factory=dict)
    cost_unit: Unit = CostUnit.CURRENCY

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "default_cost_per_unit", self.default_cost_per_unit)
        _opt(out, "default_output_cost_per_unit", self.default_output_cost_per_unit)
        out["model_costs"] = {name: rate.to_json() for name, rate in self.model_costs.items()}
        out["cost_unit"] = self.cost_unit.value
        return out


# ---------------------------------------------------------------------------
# credits and the whole value


class CreditsConfig(BaseModel):
    model_config = _CONFIG

    denomination: Annotated[str, BeforeValidator(_denomination)]
    weight: Positive = Decimal(1)

    def to_json(self) -> dict[str, Any]:
        return {"denomination": self.denomination, "weight": self.weight}


class RuleValue(BaseModel):
    model_config = _CONFIG

    pricing: PricingModel | None = None
    cost: CostModel | None = None
    credits: CreditsConfig | None = None

    @property
    def is_metered(self) -> bool:
        return self.pricing is not None

    @property
    def max_usage(self) -> Decimal | None:
        return None if self.pricing is None else self.pricing.max_usage

    @property
    def reset_mode(self) -> ResetMode:
        return ResetMode.RESET if self.pricing is None else self.pricing.reset_mode

    @property
    def denomination(self) -> str | None:
        return None if self.credits is None else self.credits.denomination

    def to_json(self) -> dict[str, Any]:
        """Normalised nested form; numbers are Decimals (write with ``dumps_json``)."""
        out: dict[str, Any] = {}
        if self.pricing is not None:
            out["pricing"] = self.pricing.to_json()
        if self.cost is not None:
            out["cost"] = self.cost.to_json()
        if self.credits is not None:
            out["credits"] = self.credits.to_json()
        return out


# ---------------------------------------------------------------------------
# parsing

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_CAMEL = {
    "usageUnitType": "usage_unit_type",
    "pricePerUnit": "price_per_unit",
    "maxUsage": "max_usage",
    "resetMode": "reset_mode",
    "upTo": "up_to",
    "flatFee": "flat_fee",
    "costPerUnit": "cost_per_unit",
    "costRate": "cost_rate",
    "costModel": "cost_model",
    "costUnit": "cost_unit",
    "defaultCostPerUnit": "default_cost_per_unit",
    "defaultInputCostPerUnit": "default_input_cost_per_unit",
    "defaultOutputCostPerUnit": "default_output_cost_per_unit",
    "modelCosts": "model_costs",
}
_TOP_KEYS = frozenset({"pricing", "cost", "credits"})
_PRICING_KEYS = ("model", "usage_unit_type", "price_per_unit", "tiers", "max_usage", "reset_mode")
_LEGACY_COST_KEYS = (
    "cost_model",
    "cost_per_unit",
    "cost_rate",
    "cost_unit",
    "default_cost_per_unit",
    "default_input_cost_per_unit",
    "default_output_cost_per_unit",
    "model_costs",
)
_MODEL_AWARE_KEYS = (
    "model_costs",
    "default_cost_per_unit",
    "default_input_cost_per_unit",
    "default_output_cost_per_unit",
)

_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a recognised field",
    "string_type": "must be a string",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be an array",
    "tuple_type": "must be an array",
    "bool_type": "must be true or false",
}


def field_path(base: str, *parts: str | int) -> str:
    """``field_path("valueJson", "pricing", "tiers", 1, "up_to")`` ->
    ``"valueJson.pricing.tiers[1].up_to"``; keys that are not identifiers are quoted
    (``model_costs["gpt-4o"]``)."""
    out = base
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT_RE.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def _fail(path: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{path} {message}", field=path)


def _translate(exc: ValidationError, path: str) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    loc = [part for part in err["loc"] if part != "[key]"]
    where = field_path(path, *loc)
    kind = err["type"]
    if kind in _MESSAGES:
        message = _MESSAGES[kind]
    elif kind in ("too_short", "too_long") and "tiers" in loc:
        message = f"must contain between 1 and {MAX_TIERS} tiers"
    elif kind == "too_long":
        message = f"has too many entries (max {err.get('ctx', {}).get('max_length')})"
    elif kind in ("string_too_short",):
        message = "must not be empty"
    elif kind in ("string_too_long",):
        message = f"must be at most {err.get('ctx', {}).get('max_length')} characters"
    elif kind in ("literal_error", "enum"):
        message = f"must be {err.get('ctx', {}).get('expected')}"
    else:
        message = err["msg"]
        if message.startswith("Input should be "):
            message = "must be " + message[len("Input should be ") :]
        elif message[:1].isupper():
            message = message[0].lower() + message[1:]
    return _fail(where, message)


def _validate(cls: type[BaseModel], data: dict[str, Any], path: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, path) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _load(raw: Any, field: str) -> Any:
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(field, "is not valid UTF-8") from None
    if isinstance(raw, str):
        if not raw.strip():
            return None
        if len(raw) > MAX_JSON_CHARS:
            raise _fail(field, f"is too large (max {MAX_JSON_CHARS} characters)")
        try:
            return json.loads(
                raw,
                parse_float=Decimal,
                parse_constant=_reject_constant,
                object_pairs_hook=_no_duplicates,
            )
        except json.JSONDecodeError as exc:
            raise _fail(
                field, f"is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise _fail(field, f"is not valid JSON: {exc}") from None
    if isinstance(raw, RuleValue | Mapping):
        return raw
    raise _fail(field, "must be a JSON object (as a string) or omitted")


def _snake(obj: Mapping[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise _fail(path, "keys must be strings")
        name = _CAMEL.get(key, key)
        if name in out:
            raise _fail(field_path(path, key), f"duplicates {name}")
        out[name] = value
    return out


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, "must be an object")
    return _snake(value, path)


def _legacy_cost(
    legacy: dict[str, Any], path: str, pricing: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, str]:
    """Turn legacy cost keys found at ``path`` into a cost object (and maybe a price)."""
    legacy = dict(legacy)
    if (
        pricing is not None
        and _lower(pricing.get("model")) == "usage"
        and "price_per_unit" not in pricing
        and "cost_model" not in legacy
    ):
        for key in ("cost_rate", "cost_per_unit"):
            if key in legacy:
                value = legacy.pop(key)
                try:
                    coerce_decimal(value)
                except NumberError as exc:
                    raise _fail(field_path(path, key), str(exc)) from None
                pricing["price_per_unit"] = value
                break
    if not legacy:
        return None, path
    cost_model = legacy.pop("cost_model", None)
    if isinstance(cost_model, Mapping):
        if legacy:
            raise _fail(
                field_path(path, next(iter(legacy))),
                "cannot be combined with a cost_model object",
            )
        return _object(cost_model, field_path(path, "cost_model")), field_path(path, "cost_model")
    if cost_model is not None:
        name = _lower(cost_model)
        if name not in COST_MODELS:
            raise _fail(field_path(path, "cost_model"), "must be one of: simple, model_aware")
    elif any(key in legacy for key in _MODEL_AWARE_KEYS):
        name = "model_aware"
    else:
        name = "simple"
    if "cost_rate" in legacy:
        rate = legacy.pop("cost_rate")
        if "cost_per_unit" in legacy:
            try:
                same = coerce_decimal(rate) == coerce_decimal(legacy["cost_per_unit"])
            except NumberError:
                same = False
            if not same:
                raise _fail(field_path(path, "cost_rate"), "conflicts with cost_per_unit")
        else:
            legacy["cost_per_unit"] = rate
    return {"model": name, **legacy}, path


def _split(data: Mapping[str, Any], field: str) -> dict[str, tuple[Any, str]]:
    """Locate the pricing, cost and credits objects (nested or legacy flat form)."""
    data = _snake(data, field)
    for key in data:
        if key not in _TOP_KEYS and key not in _PRICING_KEYS and key not in _LEGACY_COST_KEYS:
            raise _fail(field_path(field, key), "is not a recognised field")
    flat_keys = [key for key in data if key in _PRICING_KEYS]
    pricing: dict[str, Any] | None = None
    pricing_path = field_path(field, "pricing")
    if "pricing" in data:
        if flat_keys:
            raise _fail(
                field_path(field, flat_keys[0]),
                f"must be inside {pricing_path} (do not mix the flat and nested forms)",
            )
        if data["pricing"] is not None:
            pricing = _object(data["pricing"], pricing_path)
    elif flat_keys:
        pricing_path = field
        pricing = {key: data[key] for key in flat_keys}
        if "model" not in pricing:
            pricing["model"] = "graduated" if "tiers" in pricing else "usage"
        pricing.setdefault("usage_unit_type", "units")

    legacy = {key: data[key] for key in data if key in _LEGACY_COST_KEYS}
    legacy_path = field
    if pricing is not None and "pricing" in data:
        inner = {key: pricing.pop(key) for key in list(pricing) if key in _LEGACY_COST_KEYS}
        if inner:
            if legacy:
                raise _fail(
                    field_path(field, next(iter(legacy))),
                    f"conflicts with the cost fields inside {pricing_path}",
                )
            legacy, legacy_path = inner, pricing_path

    cost: Any = data.get("cost")
    cost_path = field_path(field, "cost")
    if legacy:
        if cost is not None:
            raise _fail(
                field_path(legacy_path, next(iter(legacy))),
                f"is a legacy cost field and conflicts with {cost_path}; "
                f"put cost settings in {cost_path} only",
            )
        cost, cost_path = _legacy_cost(legacy, legacy_path, pricing)

    return {
        "pricing": (pricing, pricing_path),
        "cost": (cost, cost_path),
        "credits": (data.get("credits"), field_path(field, "credits")),
    }


def _parse_pricing(value: Any, path: str) -> PricingModel | None:
    if value is None:
        return None
    data = _object(value, path)
    if "model" not in data:
        raise _fail(field_path(path, "model"), "is required (usage or graduated)")
    model = _lower(data["model"])
    if model not in PRICING_MODELS:
        raise _fail(
            field_path(path, "model"),
            f"must be one of: {', '.join(PRICING_MODELS)} (got {data['model']!r})",
        )
    data["model"] = model
    tiers = data.get("tiers")
    if isinstance(tiers, list | tuple):
        data["tiers"] = [
            _snake(tier, field_path(path, "tiers", index)) if isinstance(tier, Mapping) else tier
            for index, tier in enumerate(tiers)
        ]
        for index, tier in enumerate(data["tiers"]):
            if isinstance(tier, dict) and "up_to" in tier and tier["up_to"] is None:
                raise _fail(field_path(path, "tiers", index, "up_to"), 'must be a number or "inf"')
    if model == "usage":
        return _validate(UsagePricing, data, path)
    pricing: GraduatedPricing = _validate(GraduatedPricing, data, path)
    _check_tiers(pricing.tiers, field_path(path, "tiers"))
    return pricing


def _check_tiers(tiers: tuple[Tier, ...], path: str) -> None:
    last = len(tiers) - 1
    previous: Decimal | None = None
    for index, tier in enumerate(tiers):
        where = field_path(path, index, "up_to")
        if tier.up_to is None:
            if index != last:
                raise _fail(where, 'may be "inf" only on the last tier')
            continue
        if previous is not None and tier.up_to <= previous:
            raise _fail(where, f"must be greater than the previous tier's up_to ({previous})")
        previous = tier.up_to
    if tiers[last].up_to is not None:
        raise _fail(field_path(path, last, "up_to"), 'must be "inf" on the last tier')


def _model_aware_data(data: dict[str, Any], path: str) -> dict[str, Any]:
    if "default_input_cost_per_unit" in data:
        alias = data.pop("default_input_cost_per_unit")
        if "default_cost_per_unit" in data:
            try:
                same = coerce_decimal(alias) == coerce_decimal(data["default_cost_per_unit"])
            except NumberError:
                same = False
            if not same:
                raise _fail(
                    field_path(path, "default_input_cost_per_unit"),
                    "conflicts with default_cost_per_unit (they are the same setting)",
                )
        else:
            data["default_cost_per_unit"] = alias
    return data


def _parse_cost(value: Any, path: str) -> CostModel | None:
    if value is None:
        return None
    data = _object(value, path)
    if "model" not in data:
        raise _fail(field_path(path, "model"), "is required (simple or model_aware)")
    model = _lower(data["model"])
    if model not in COST_MODELS:
        raise _fail(
            field_path(path, "model"),
            f"must be one of: {', '.join(COST_MODELS)} (got {data['model']!r})",
        )
    data["model"] = model
    if model == "simple":
        return _validate(SimpleCost, data, path)
    return _validate(ModelAwareCost, _model_aware_data(data, path), path)


def parse_cost_model(raw: Any, field: str = "cost") -> CostModel | None:
    """Parse a stand-alone cost object (same rules as ``valueJson.cost``)."""
    data = _load(raw, field)
    if data is None:
        return None
    if isinstance(data, RuleValue):
        raise _fail(field, "must be a cost object")
    return _parse_cost(data, field)


def parse_default_cost_config(
    raw: Any, field: str = "defaultCostConfig"
) -> DefaultCostConfig | None:
    """Parse an environment default cost config: ``{"model_costs"?, "default_cost_per_unit"?
    (alias ``default_input_cost_per_unit``), "default_output_cost_per_unit"?,
    "cost_unit"?}`` (``"model": "model_aware"`` tolerated). Empty -> ``None``."""
    data = _load(raw, field)
    if data is None:
        return None
    if isinstance(data, RuleValue):
        raise _fail(field, "must be a cost object")
    data = _object(data, field)
    if not data:
        return None
    if "model" in data and _lower(data["model"]) != "model_aware":
        raise _fail(field_path(field, "model"), "must be model_aware (or omitted)")
    data.pop("model", None)
    return _validate(DefaultCostConfig, _model_aware_data(data, field), field)


def _parse_credits(value: Any, path: str) -> CreditsConfig | None:
    if value is None:
        return None
    return _validate(CreditsConfig, _object(value, path), path)


def parse_rule_value(raw: Any, field: str = "valueJson") -> RuleValue | None:
    """Parse and normalise a rule value: a JSON string, an already-parsed mapping (floats
    in it are read through ``repr``), a :class:`RuleValue`, or ``None``.

    Returns ``None`` for a boolean gate (``None``, blank string, JSON ``null``, ``{}``).
    Raises ``InvalidRequest`` naming the exact field path on any problem.
    """
    data = _load(raw, field)
    if data is None:
        return None
    if isinstance(data, RuleValue):
        return data
    if not isinstance(data, Mapping):
        raise _fail(field, "must be a JSON object")
    parts = _split(data, field)
    pricing = _parse_pricing(*parts["pricing"])
    cost = _parse_cost(*parts["cost"])
    credits = _parse_credits(*parts["credits"])
    if pricing is None and cost is None and credits is None:
        return None
    return RuleValue(pricing=pricing, cost=cost, credits=credits)


# ---------------------------------------------------------------------------
# client catalog rendering


def render_pricing(rule_value: RuleValue | None) -> dict[str, Any]:
    """The client-facing pricing of a rule (``GET /plans`` features):

    ``{"pricingType": "included"}`` for a boolean gate (or a rule without pricing), else
    ``{"pricingType": "usage_based" | "graduated", "pricing": {"model", "pricePerUnit",
    "unitLabel", "maxUsage", "resetMode", "tiers"?}}``. ``maxUsage`` ``None`` means
    unlimited; ``pricePerUnit`` is ``None`` for graduated pricing (see the tiers), whose
    ``tiers`` entries are ``{"upTo": number | "inf", "pricePerUnit", "flatFee"}``.
    Numbers are Decimals.
    """
    pricing = None if rule_value is None else rule_value.pricing
    if pricing is None:
        return {"pricingType": "included"}
    body: dict[str, Any] = {
        "model": pricing.model,
        "pricePerUnit": pricing.price_per_unit if isinstance(pricing, UsagePricing) else None,
        "unitLabel": pricing.usage_unit_type,
        "maxUsage": pricing.max_usage,
        "resetMode": pricing.reset_mode.value,
    }
    if isinstance(pricing, GraduatedPricing):
        body["tiers"] = [
            {
                "upTo": INF if tier.up_to is None else tier.up_to,
                "pricePerUnit": tier.price_per_unit,
                "flatFee": tier.flat_fee,
            }
            for tier in pricing.tiers
        ]
        return {"pricingType": "graduated", "pricing": body}
    return {"pricingType": "usage_based", "pricing": body}
