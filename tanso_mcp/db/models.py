"""Database schema (SQLAlchemy 2 declarative). Changes go through Alembic migrations in
tanso_mcp/db/migrations/versions; `tests/test_migrations.py` fails when the models and
the migrations disagree.

Conventions:
- every tenant-owned row carries `environment_id`; repositories always filter on it;
- ids are time-ordered UUID strings;
- quantities SQL adds up are scaled integers (see db/scale.py): `*_minor` money in the
  row's currency minor units, `*_q` credits/usage in 1/10000, `*_micros` in 1/1e6;
- every "exactly once" is a unique constraint (named uq_*).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import ID, DecimalText, JSONDoc, UTCDateTime, new_id

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _id() -> Mapped[str]:
    return mapped_column(ID, primary_key=True, default=new_id)


def _env() -> Mapped[str]:
    return mapped_column(ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False)


# --------------------------------------------------------------------------- tenancy


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Environment(Base):
    __tablename__ = "environments"
    __table_args__ = (UniqueConstraint("account_id", "mode"),)
    id: Mapped[str] = _id()
    account_id: Mapped[str] = mapped_column(
        ID, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    )
    mode: Mapped[str] = mapped_column(String(8), nullable=False)  # test | live
    # test environments: the clock reads real time + clock_offset_us, or clock_now while
    # clock_frozen (both are written together at every change); live: real time
    clock_now: Mapped[datetime | None] = mapped_column(UTCDateTime)
    clock_offset_us: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    clock_frozen: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=sa_false()
    )
    payment_provider: Mapped[str] = mapped_column(String(40), nullable=False, default="native")
    stripe_mode: Mapped[str] = mapped_column(String(32), nullable=False, default="NONE")
    currency: Mapped[str] = mapped_column(String(3), nullable=False, default="USD")
    # environment default cost config, model price overrides, margin alert threshold…
    settings: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    role: Mapped[str] = mapped_column(String(8), nullable=False)  # admin | client | read
    name: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the full key; the key itself is never stored
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    # first characters, for listing ("sk_test_AbCd…")
    key_prefix: Mapped[str] = mapped_column(String(24), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SystemSetting(Base):
    """Process-wide values the server generates once (e.g. the secrets encryption key)."""

    __tablename__ = "system_settings"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class JobLease(Base):
    """Cluster-wide lease for a unit of job work, so that several server processes
    sharing one database do not run the same item at the same moment. Correctness
    never depends on it alone: every job effect is also guarded by a unique constraint
    or a conditional update."""

    __tablename__ = "job_leases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --------------------------------------------------------------------------- catalog


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("environment_id", "reference_id"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    reference_id: Mapped[str] = mapped_column(String(128), nullable=False)
    email: Mapped[str | None] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    phone_number: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32), nullable=False, default="API")
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDoc, nullable=False, default=dict
    )
    provider_customer_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Feature(Base):
    __tablename__ = "features"
    __table_args__ = (UniqueConstraint("environment_id", "key"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    key: Mapped[str] = mapped_column(String(128), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    is_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    source: Mapped[str] = mapped_column(String(32), nullable=False, default="API")
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDoc, nullable=False, default=dict
    )
    # the payment provider's meter that overage of this feature is reported to
    provider_meter_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Plan(Base):
    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("environment_id", "key"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    key: Mapped[str] = mapped_column(String(128), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    price_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, default="USD")
    interval_months: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    billing_timing: Mapped[str] = mapped_column(String(16), nullable=False, default="IN_ADVANCE")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="DRAFT")
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDoc, nullable=False, default=dict
    )
    provider_product_id: Mapped[str | None] = mapped_column(String(100))
    provider_price_id: Mapped[str | None] = mapped_column(String(100))
    # the base price terms provider_price_id was created for (provider prices are
    # immutable: other terms get a new price)
    provider_price_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class PlanFeature(Base):
    """Plan-feature rule: how one feature is priced (and costed) on one plan."""

    __tablename__ = "plan_features"
    __table_args__ = (UniqueConstraint("plan_id", "feature_id"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    plan_id: Mapped[str] = mapped_column(
        ID, ForeignKey("plans.id", ondelete="CASCADE"), nullable=False
    )
    feature_id: Mapped[str] = mapped_column(
        ID, ForeignKey("features.id", ondelete="CASCADE"), nullable=False, index=True
    )
    type: Mapped[str] = mapped_column(String(16), nullable=False, default="BASE")
    # normalised nested {"pricing", "cost", "credits"} document; NULL = boolean gate
    value: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    is_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    credit_denomination: Mapped[str | None] = mapped_column(String(64))
    # the payment provider's metered price of this feature on this plan, and the
    # pricing it was created for (other pricing gets a new price)
    provider_price_id: Mapped[str | None] = mapped_column(String(100))
    provider_price_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class CreditModel(Base):
    """Properties of a credit denomination within an environment."""

    __tablename__ = "credit_models"
    __table_args__ = (UniqueConstraint("environment_id", "denomination"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    denomination: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    hard_limit: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    rollover_policy: Mapped[str] = mapped_column(String(8), nullable=False, default="NONE")
    rollover_cap_q: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class PlanCreditAllocation(Base):
    __tablename__ = "plan_credit_allocations"
    __table_args__ = (UniqueConstraint("plan_id", "credit_model_id"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    plan_id: Mapped[str] = mapped_column(
        ID, ForeignKey("plans.id", ondelete="CASCADE"), nullable=False
    )
    credit_model_id: Mapped[str] = mapped_column(
        ID, ForeignKey("credit_models.id", ondelete="CASCADE"), nullable=False
    )
    credit_amount_q: Mapped[int] = mapped_column(BigInteger, nullable=False)
    grant_expires_months: Mapped[int | None] = mapped_column(Integer)
    hard_limit: Mapped[bool | None] = mapped_column(Boolean)  # overrides the model's
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --------------------------------------------------------------------------- subscriptions


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        Index("ix_subscriptions_env_period_end", "environment_id", "current_period_end"),
        Index("ix_subscriptions_env_cancel_at", "environment_id", "cancel_effective_at"),
        # a provider's subscription is mirrored once
        Index(
            "uq_subscriptions_provider",
            "environment_id",
            "provider_subscription_id",
            unique=True,
        ),
    )
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    customer_id: Mapped[str] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False, index=True
    )
    plan_id: Mapped[str] = mapped_column(ID, ForeignKey("plans.id"), nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    interval_months: Mapped[int] = mapped_column(Integer, nullable=False)
    grace_period_days: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    billing_anchor_day: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    current_period_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    current_period_end: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    cancel_mode: Mapped[str | None] = mapped_column(String(16))
    cancel_effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_subscription_id: Mapped[str | None] = mapped_column(String(100))
    # changes applied through the payment provider so far: the idempotency keys of the
    # provider calls are derived from it (a retry reuses the key, the next change not)
    provider_ops: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    # the provider prices its items carry as last set here: {"licensed": [price ids billed
    # in advance], "metered": [price ids billed in arrears], "period": the period start
    # the metered ones were aligned at}
    provider_items: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDoc, nullable=False, default=dict
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ScheduledChange(Base):
    __tablename__ = "scheduled_changes"
    __table_args__ = (
        # at most one pending change per subscription (a new one replaces the old)
        Index(
            "uq_scheduled_changes_pending",
            "subscription_id",
            unique=True,
            sqlite_where=text("status = 'PENDING'"),
            postgresql_where=text("status = 'PENDING'"),
        ),
    )
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    subscription_id: Mapped[str] = mapped_column(
        ID, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    type: Mapped[str] = mapped_column(String(16), nullable=False)  # UPGRADE | DOWNGRADE
    from_plan_id: Mapped[str] = mapped_column(ID, ForeignKey("plans.id"), nullable=False)
    to_plan_id: Mapped[str] = mapped_column(ID, ForeignKey("plans.id"), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    fulfilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    adjustment_invoice_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Entitlement(Base):
    __tablename__ = "entitlements"
    __table_args__ = (UniqueConstraint("subscription_id", "feature_id"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    customer_id: Mapped[str] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False, index=True
    )
    subscription_id: Mapped[str] = mapped_column(
        ID, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False
    )
    feature_id: Mapped[str] = mapped_column(
        ID, ForeignKey("features.id", ondelete="CASCADE"), nullable=False
    )
    feature_key: Mapped[str] = mapped_column(String(128), nullable=False)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --------------------------------------------------------------------------- invoices


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        # one REGULAR invoice per subscription period, ever
        Index(
            "uq_invoices_regular_period",
            "subscription_id",
            "period_start",
            unique=True,
            sqlite_where=text("type = 'REGULAR'"),
            postgresql_where=text("type = 'REGULAR'"),
        ),
        # one initial in-advance invoice per subscription
        Index(
            "uq_invoices_initial",
            "subscription_id",
            unique=True,
            sqlite_where=text("type = 'IN_ADVANCE_INITIAL'"),
            postgresql_where=text("type = 'IN_ADVANCE_INITIAL'"),
        ),
        Index("ix_invoices_env_status_due", "environment_id", "status", "due_date"),
        # one CREDIT (immediate-cancellation refund) invoice per subscription
        Index(
            "uq_invoices_credit",
            "subscription_id",
            unique=True,
            sqlite_where=text("type = 'CREDIT'"),
            postgresql_where=text("type = 'CREDIT'"),
        ),
        Index("ix_invoices_subscription_status", "subscription_id", "status"),
        # a provider's invoice is mirrored once
        Index("uq_invoices_provider", "environment_id", "provider_invoice_id", unique=True),
    )
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    customer_id: Mapped[str] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False, index=True
    )
    subscription_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("subscriptions.id", ondelete="CASCADE")
    )
    type: Mapped[str] = mapped_column(String(24), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    due_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_invoice_id: Mapped[str | None] = mapped_column(String(100))
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDoc, nullable=False, default=dict
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class InvoiceItem(Base):
    __tablename__ = "invoice_items"
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    invoice_id: Mapped[str] = mapped_column(
        ID, ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False, index=True
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # base|usage|adjustment|credit
    feature_id: Mapped[str | None] = mapped_column(ID)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    quantity_q: Mapped[int | None] = mapped_column(BigInteger)
    charge_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --------------------------------------------------------------------------- credits


class CreditPool(Base):
    __tablename__ = "credit_pools"
    __table_args__ = (UniqueConstraint("customer_id", "denomination"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    customer_id: Mapped[str] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False
    )
    denomination: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, default="USD")
    # balance only ever changes through one guarded UPDATE beside a ledger row
    balance_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    total_granted_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    total_consumed_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    total_expired_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    total_reversed_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    hard_limit: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    rollover_policy: Mapped[str] = mapped_column(String(8), nullable=False, default="NONE")
    rollover_cap_q: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="ACTIVE")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class CreditPoolSubscription(Base):
    __tablename__ = "credit_pool_subscriptions"
    __table_args__ = (UniqueConstraint("pool_id", "subscription_id"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    pool_id: Mapped[str] = mapped_column(
        ID, ForeignKey("credit_pools.id", ondelete="CASCADE"), nullable=False
    )
    subscription_id: Mapped[str] = mapped_column(
        ID, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    # unused: there is one pool per customer and denomination, so there is nothing to
    # order draws by (kept so the schema needs no migration)
    draw_priority: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    draw_limit_q: Mapped[int | None] = mapped_column(BigInteger)
    total_drawn_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class CreditGrant(Base):
    __tablename__ = "credit_grants"
    # plan grants use key plan_grant_<subscription>_<denomination>_<period start>:
    # issued once per (subscription, denomination, period)
    __table_args__ = (
        UniqueConstraint("environment_id", "idempotency_key"),
        Index("ix_credit_grants_pool_created", "pool_id", "created_at"),
        Index("ix_credit_grants_env_expires", "environment_id", "expires_at"),
        Index("ix_credit_grants_subscription", "subscription_id"),
    )
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    pool_id: Mapped[str] = mapped_column(
        ID, ForeignKey("credit_pools.id", ondelete="CASCADE"), nullable=False
    )
    grant_type: Mapped[str] = mapped_column(String(16), nullable=False)
    amount_q: Mapped[int] = mapped_column(BigInteger, nullable=False)
    remaining_q: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str] = mapped_column(String(200), nullable=False)
    subscription_id: Mapped[str | None] = mapped_column(ID)
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    description: Mapped[str | None] = mapped_column(Text)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class CreditTransaction(Base):
    """Append-only ledger. Invariant: pool.balance_q == Σ amount_q of its rows."""

    __tablename__ = "credit_transactions"
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    pool_id: Mapped[str] = mapped_column(
        ID, ForeignKey("credit_pools.id", ondelete="CASCADE"), nullable=False, index=True
    )
    grant_id: Mapped[str | None] = mapped_column(ID)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    amount_q: Mapped[int] = mapped_column(BigInteger, nullable=False)  # signed
    balance_before_q: Mapped[int] = mapped_column(BigInteger, nullable=False)
    balance_after_q: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_id: Mapped[str | None] = mapped_column(ID)
    subscription_id: Mapped[str | None] = mapped_column(ID)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --------------------------------------------------------------------------- metering


# Events' id and idempotency key compare bytewise on PostgreSQL (``COLLATE "C"``), as
# SQLite's default collation does: they are ASCII, only ever compared for equality or
# with parameters, and a B-tree insert into their indexes then costs memcmp instead of
# the database locale's strcoll per comparison.
_EVENT_ID = String(36).with_variant(String(36, collation="C"), "postgresql")
_EVENT_KEY = String(128).with_variant(String(128, collation="C"), "postgresql")


class Event(Base):
    """A usage event. ``environment_id`` has no foreign key on purpose: PostgreSQL checks
    one per row with a query (about a third of the database's cost of a batch insert),
    and it would guard nothing here: the writer stores the authenticated key's
    environment, environments are never deleted, and events never are (the analytics
    rollup relies on it), so there is no cascade to give either."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("environment_id", "idempotency_key"),
        Index("ix_events_env_customer_time", "environment_id", "customer_id", "occurred_at"),
        # PostgreSQL only fills tx_seq (see below); on SQLite the index stays empty
        Index(
            "ix_events_tx_seq",
            "tx_seq",
            sqlite_where=text("tx_seq IS NOT NULL"),
            postgresql_where=text("tx_seq IS NOT NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(_EVENT_ID, primary_key=True, default=new_id)
    environment_id: Mapped[str] = mapped_column(ID, nullable=False)
    idempotency_key: Mapped[str] = mapped_column(_EVENT_KEY, nullable=False)
    event_type: Mapped[str] = mapped_column(String(32), nullable=False, default="CLIENT_TRACKED")
    event_name: Mapped[str] = mapped_column(String(128), nullable=False)
    customer_id: Mapped[str] = mapped_column(ID, nullable=False)
    feature_id: Mapped[str | None] = mapped_column(ID)
    subscription_id: Mapped[str | None] = mapped_column(ID)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    usage_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    billable_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    overage_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    credits_deducted_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    usage_limit_exceeded: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)
    revenue_micros: Mapped[int | None] = mapped_column(BigInteger)
    cost_source: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(128))
    model_provider: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # PostgreSQL: id of the writing transaction (server default pg_current_xact_id()),
    # the order in which the analytics rollup takes events in; SQLite uses the rowid
    tx_seq: Mapped[int | None] = mapped_column(BigInteger)


class UsageCounter(Base):
    """Running usage per (subscription, feature, window). window_start is the period
    start for `reset` features and the subscription start for `accumulate` ones; a
    check reads one row instead of summing events."""

    __tablename__ = "usage_counters"
    __table_args__ = (UniqueConstraint("subscription_id", "feature_id", "window_start"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    subscription_id: Mapped[str] = mapped_column(
        ID, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False
    )
    feature_id: Mapped[str] = mapped_column(ID, nullable=False)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    overage_q: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --------------------------------------------------------------------------- analytics


class AnalyticsRollup(Base):
    """Sums of CLIENT_TRACKED events per (environment, grain, bucket, customer, feature,
    model, subscription). ``grain`` is the time grain h|d|m (hour, day, calendar month,
    UTC) followed by the row set: ``*`` every dimension, ``c``/``f``/``o``/``s`` only
    the customer/feature/model/subscription, ``t`` totals; ``bucket`` the epoch hour
    its bucket starts at. Absent dimensions are '' (so the
    unique key matches them). Maintained by the rollup job from a watermark over the
    events (``analytics_state``); every view adds the events past the watermark."""

    __tablename__ = "analytics_rollup"
    __table_args__ = (
        Index("ix_analytics_rollup_customer", "environment_id", "customer_id", "grain", "bucket"),
    )
    # the primary key is the rollup key (absent dimensions are '')
    environment_id: Mapped[str] = mapped_column(ID, primary_key=True)
    grain: Mapped[str] = mapped_column(String(2), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    feature_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger, nullable=False)
    usage_q: Mapped[int] = mapped_column(BigInteger, nullable=False)
    revenue_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cost_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    costed_events: Mapped[int] = mapped_column(BigInteger, nullable=False)
    unknown_model_events: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AnalyticsState(Base):
    """Named integers of the analytics jobs: the rollup watermark ('events': every event
    whose sequence is below it is in the rollup), alert schedules."""

    __tablename__ = "analytics_state"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class MarginAlert(Base):
    """A margin crossing: ``margin.alert`` (fell below its threshold) or
    ``margin.recovered``. ``seq`` counts a customer's crossings; the unique key makes
    each crossing fire once however many processes evaluate at the same moment."""

    __tablename__ = "margin_alerts"
    __table_args__ = (
        UniqueConstraint("environment_id", "customer_id", "seq"),
        Index("ix_margin_alerts_env_created", "environment_id", "created_at"),
    )
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    customer_id: Mapped[str] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(24), nullable=False)  # margin.alert|margin.recovered
    # exact decimals as text (never summed)
    threshold: Mapped[str] = mapped_column(String(32), nullable=False)
    gross_margin: Mapped[str | None] = mapped_column(String(32))
    revenue_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cost_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --------------------------------------------------------------------------- outbox


class OutboxEntry(Base):
    """Work a plugin handed over to be finished later — outbound webhook deliveries
    still pending when a process stops — retried by whichever process runs next.
    (plugin, key) is unique, so handing the same work over twice stores it once; a
    process claims an entry by a conditional update of ``lease_until``."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("plugin", "key"),
        Index("ix_outbox_plugin_due_at", "plugin", "due_at"),
    )
    id: Mapped[str] = _id()
    plugin: Mapped[str] = mapped_column(String(64), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


_ = Decimal, DecimalText  # exported for modules that need exact non-summed decimals


# --------------------------------------------------------------------------- providers


class EnvironmentSecret(Base):
    """A credential of an environment (e.g. its Stripe secret key), Fernet-encrypted
    with the server's secret key; ``masked`` is the only form ever shown."""

    __tablename__ = "environment_secrets"
    environment_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text, nullable=False)
    masked: Mapped[str] = mapped_column(String(64), nullable=False)
    external_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class WebhookInbox(Base):
    """Every verified provider callback, recorded once (unique on the provider's event
    id) before it is acknowledged, then processed after the commit; a failed
    processing is retried from here by the job runner, never dropped."""

    __tablename__ = "webhook_inbox"
    __table_args__ = (
        UniqueConstraint("environment_id", "provider", "event_id"),
        Index("ix_webhook_inbox_pending", "processed_at", "next_attempt_at"),
    )
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    provider: Mapped[str] = mapped_column(String(40), nullable=False)
    event_id: Mapped[str] = mapped_column(String(255), nullable=False)
    event_type: Mapped[str] = mapped_column(String(100), nullable=False)
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


class PendingSubscription(Base):
    """A subscription asked of the payment provider and not yet confirmed: a checkout
    the customer has to pay (``CHECKOUT``) or a direct creation (``DIRECT``). Written and
    committed before the provider is called, so a crash in between leaves a record to
    resume from; the call's idempotency key is derived from this row's id."""

    __tablename__ = "pending_subscriptions"
    __table_args__ = (
        UniqueConstraint("environment_id", "external_id"),
        Index("ix_pending_subscriptions_customer", "customer_id", "status"),
    )
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    customer_id: Mapped[str] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False
    )
    plan_id: Mapped[str] = mapped_column(ID, ForeignKey("plans.id"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # CHECKOUT | DIRECT
    # PENDING (provider not called yet) | OPEN (checkout waiting) | COMPLETED | FAILED
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    external_id: Mapped[str | None] = mapped_column(String(255))
    url: Mapped[str | None] = mapped_column(Text)
    subscription_id: Mapped[str | None] = mapped_column(ID)
    grace_period_days: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# Stripe usage reporting and import tables live in their own module (same metadata).
from .stripe_usage_models import MeterReport, StripeImportJob  # noqa: E402, F401
