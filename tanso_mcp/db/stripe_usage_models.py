"""Tables of Stripe usage reporting and data import (kept beside ``models.py`` so the
Stripe work does not crowd the core schema; ``models.py`` imports this module, so
``Base.metadata`` always holds them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, Customer, Feature, Plan, _env, _id
from .types import ID, JSONDoc, UTCDateTime


class MeterReport(Base):
    """One meter event sent (or to send) to the payment provider: the overage of one
    (subscription, feature, period) from ``from_q`` to ``to_q`` (cumulative, 1/10000
    units). Reports chain: each starts where the previous one ended, and the unique
    ``(subscription, feature, period, from_q)`` lets exactly one process claim each
    step. The row is committed (``pending``) before the call and marked ``sent``
    after it; the ``identifier`` is derived from the row's content, so re-sending after
    a crash or a timeout is recognised by the provider as the same event."""

    __tablename__ = "meter_reports"
    __table_args__ = (
        UniqueConstraint("subscription_id", "feature_id", "period_start", "from_q"),
        UniqueConstraint("environment_id", "identifier"),
        Index("ix_meter_reports_env_status_next", "environment_id", "status", "next_attempt_at"),
    )
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    subscription_id: Mapped[str] = mapped_column(
        ID, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False
    )
    customer_id: Mapped[str] = mapped_column(ID, nullable=False)
    feature_id: Mapped[str] = mapped_column(ID, nullable=False)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    from_q: Mapped[int] = mapped_column(BigInteger, nullable=False)
    to_q: Mapped[int] = mapped_column(BigInteger, nullable=False)
    identifier: Mapped[str] = mapped_column(String(100), nullable=False)
    # pending (claimed, not yet answered) | unknown (outcome unknown: retried with the
    # same identifier) | rejected (refused: retried, the cause may be fixed) | sent
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # the usage timestamp sent, fixed at claim so a retry repeats the very same request
    event_timestamp: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    external_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StripeImportJob(Base):
    """A background import of Stripe products, customers and subscriptions."""

    __tablename__ = "stripe_import_jobs"
    __table_args__ = (Index("ix_stripe_import_jobs_env_status", "environment_id", "status"),)
    id: Mapped[str] = _id()
    environment_id: Mapped[str] = _env()
    # PENDING | RUNNING | COMPLETED | COMPLETED_WITH_ERRORS | FAILED
    status: Mapped[str] = mapped_column(String(24), nullable=False, default="PENDING")
    total_items: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    processed_items: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed_items: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error_details: Mapped[list[Any]] = mapped_column(JSONDoc, nullable=False, default=list)
    warnings: Mapped[list[Any]] = mapped_column(JSONDoc, nullable=False, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# A Stripe customer or product is linked to one record per environment, so importing
# (or re-importing, or two imports at once) can never create a second one.
Index(
    "uq_customers_provider",
    Customer.environment_id,
    Customer.provider_customer_id,
    unique=True,
)
Index("uq_plans_provider_product", Plan.environment_id, Plan.provider_product_id, unique=True)
Index("uq_features_provider_meter", Feature.environment_id, Feature.provider_meter_id, unique=True)

__all__ = ["MeterReport", "StripeImportJob"]
