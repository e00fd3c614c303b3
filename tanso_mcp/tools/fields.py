"""Parameter types shared by the tool parameter models.

Agents call tools with JSON produced by a language model, so the types here are
deliberately strict about *meaning* and lenient about *spelling*:

- ``Text``/``RequiredText``: JSON strings only (a number is not silently stringified).
- ``NumberText``: a decimal quantity that the seed types as a string. A JSON string
  (``"0.10"``) or a JSON number (``0.1``) is accepted; the handler always receives a
  ``str`` holding the exact value: the string as sent (trimmed) or, for a number, its
  shortest round-trip repr (``0.1`` → ``"0.1"``, ``5`` → ``"5"``). No float arithmetic
  ever happens here; services parse the text with ``Decimal``.
- ``UnitsText``: ``NumberText`` without the trimming (usage quantities: the same rule as
  the REST API).
- ``Flag``: JSON ``true``/``false``; the strings ``"true"``/``"false"`` are accepted too.
- ``Annotated[Literal[...], Choice()]``: a closed set of upper-case words, matched
  case-insensitively, with optional legacy aliases normalised to the canonical spelling.
- ``JsonText``: a JSON document passed as a string (``valueJson``). The string must
  parse; an object/array sent directly is accepted and re-encoded compactly.

Every validator raises ``ValueError`` with a short message that does not repeat the
rejected value at length; the server turns it into ``invalid_request`` naming the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, get_args

from pydantic import (
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictStr,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

__all__ = [
    "Flag",
    "JsonText",
    "NumberText",
    "RequiredText",
    "Text",
    "UnitsText",
    "Choice",
    "number_text",
]

Text = StrictStr
RequiredText = Annotated[StrictStr, Field(min_length=1)]

# A plain decimal literal as JSON writes it (no NaN/Infinity, no underscores, no hex).
_DECIMAL_LITERAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def number_text(value: Any) -> str:
    """Normalise a numeric argument to the exact text of its value (see module doc)."""
    if isinstance(value, bool):  # bool is an int subclass: true is not 1 here
        raise ValueError("must be a number or a numeric string, not a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return repr(value)
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL_LITERAL.fullmatch(text):
            raise ValueError('must be a decimal number such as "12.50"')
        return text
    raise ValueError("must be a number or a numeric string")


NumberText = Annotated[
    str,
    BeforeValidator(number_text),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]}),
]


def units_text(value: Any) -> str:
    """Usage quantities follow the REST rule exactly: a number, or a decimal string as
    written (a padded ``" 5 "`` is refused, not trimmed)."""
    if isinstance(value, str) and value != value.strip():
        raise ValueError("must be a decimal string without spaces")
    return number_text(value)


UnitsText = Annotated[
    str,
    BeforeValidator(units_text),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]}),
]


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be true or false")


Flag = Annotated[bool, BeforeValidator(_flag), WithJsonSchema({"type": "boolean"})]


def _json_text(value: Any) -> str:
    if isinstance(value, Mapping | list):
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError("must be a JSON document") from exc
    if isinstance(value, str):
        try:
            json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise ValueError("must be a string holding valid JSON") from exc
        return value
    raise ValueError("must be a string holding a JSON document")


JsonText = Annotated[str, BeforeValidator(_json_text), WithJsonSchema({"type": "string"})]


class Choice:
    """Metadata for ``Annotated[Literal["A", "B"], Choice()]``: the literal's words,
    matched case-insensitively (``aliases`` map legacy words to a canonical one). The
    words are stated once, in the ``Literal``, so the checker and pydantic see the same
    closed set; the JSON schema advertises only the canonical words."""

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        self.aliases = {k.upper(): v for k, v in (aliases or {}).items()}

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        canonical = get_args(source)
        listing = ", ".join(canonical)

        def normalise(value: Any) -> Any:
            if not isinstance(value, str):
                raise ValueError(f"must be one of {listing}")
            word = value.strip().upper()
            word = self.aliases.get(word, word)
            if word not in canonical:
                raise ValueError(f"must be one of {listing}")
            return word

        return core_schema.no_info_before_validator_function(normalise, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        if "const" in out:  # a single word: an enum like the others
            return {"type": "string", "enum": [out["const"]]}
        return out
