"""Configuration: `tanso.toml` (path from TANSO_CONFIG) overlaid by TANSO_* environment
variables. Every setting is documented with its default in config.example.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError

DEFAULT_DB_FILE = "tanso.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TANSO_", extra="forbid")

    # --- storage ---
    database_url: str = Field(
        default=f"sqlite+aiosqlite:///{DEFAULT_DB_FILE}",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///file.db or postgresql+asyncpg://…",
    )
    database_pool_size: int = Field(default=10, ge=1, le=200)

    # --- HTTP server ---
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    # Host header values the MCP endpoint accepts (DNS-rebinding protection).
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    )
    public_base_url: str = Field(
        default="http://127.0.0.1:8080",
        description="externally reachable base URL (Stripe webhooks are sent to it)",
    )
    log_level: str = "INFO"

    # --- MCP ---
    api_key: str | None = Field(default=None, description="API key used by `tanso-mcp stdio`")
    mcp_tool_groups: list[Literal["testing", "analytics", "stripe"]] = Field(
        default_factory=list,
        description="optional MCP tool groups offered besides the 34 standard tools, "
        'e.g. ["testing", "analytics"]',
    )

    # --- jobs ---
    jobs_interval_seconds: float = Field(default=30.0, gt=0, le=86_400)
    jobs_enabled: bool = True

    # --- auth ---
    key_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="how long a verified key is trusted without a database read "
        "(a revocation in another process takes effect within this time)",
    )

    # --- events ---
    event_future_skew_seconds: int = Field(default=300, ge=0, le=86_400)
    event_max_age_days: int = Field(
        default=35,
        ge=1,
        le=36_500,
        description="events whose occurredAt is further in the past than this on the "
        "environment's clock are refused (400)",
    )
    entitlement_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="how long an entitlement check may answer from this process's cache; "
        "writes made in this process are seen at once, writes made by other processes "
        "sharing the database within this time (0 = read the database on every check)",
    )

    # --- secrets / Stripe ---
    secret_key: str | None = Field(
        default=None,
        description="Fernet key that encrypts provider secrets; generated and stored in "
        "the database on first start when unset",
    )
    stripe_api_base: str | None = Field(
        default=None,
        description="Stripe API base URL (tests point it at a local fake); the SDK's "
        "default https://api.stripe.com when unset",
    )

    # --- Stripe Integration mode ---
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    stripe_checkout_success_url: str | None = Field(
        default=None,
        description="where Stripe Checkout sends a customer after paying; default "
        "{public_base_url}/checkout/success?session_id={CHECKOUT_SESSION_ID} "
        "(an environment may override it when connecting its key)",
    )
    stripe_checkout_cancel_url: str | None = Field(
        default=None,
        description="where Stripe Checkout sends a customer who gives up; default "
        "{public_base_url}/checkout/cancel",
    )
    stripe_days_until_due: int = Field(
        default=30,
        ge=0,
        le=365,
        description="payment term of the invoices of directly created Stripe "
        "subscriptions (in-arrears and free plans)",
    )
    stripe_retry_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="first wait before a failed webhook is processed again (doubles per "
        "attempt, at most an hour)",
    )

    # --- plugins ---
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-plugin configuration tables, e.g. [plugins.webhooks] (see plugins/README.md)",
    )

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (async drivers)"
            )
        return v

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return v

    @field_validator(
        "public_base_url",
        "stripe_api_base",
        "stripe_checkout_success_url",
        "stripe_checkout_cancel_url",
    )
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/") if v else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("TANSO_CONFIG")
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        elif Path("tanso.toml").is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path("tanso.toml")))
        return tuple(sources)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides: Any) -> Settings:
    """Load and validate settings; a bad value raises ConfigError naming the setting."""
    path = os.environ.get("TANSO_CONFIG")
    if path and not Path(path).is_file():
        raise ConfigError(f"TANSO_CONFIG: file not found: {path}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(f"{name} (TANSO_{name.upper()}): {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except Exception as exc:  # e.g. a TOML syntax error
        raise ConfigError(f"invalid configuration: {exc}") from None
