"""Domain errors. Each carries the stable machine code clients see (REST `error.code`,
MCP `error`), the HTTP status, and optionally the offending field."""

from __future__ import annotations

from typing import Any


class TansoError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, field: str | None = None, detail: Any = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.detail is not None:
            out["detail"] = self.detail
        return out


class InvalidRequest(TansoError):
    code = "invalid_request"
    status = 400


class Unauthorized(TansoError):
    code = "unauthorized"
    status = 401


class Forbidden(TansoError):
    code = "forbidden"
    status = 403


class NotFound(TansoError):
    code = "not_found"
    status = 404


class Conflict(TansoError):
    code = "conflict"
    status = 409


class DuplicateEvent(Conflict):
    code = "duplicate_event"


class InsufficientCredits(Conflict):
    code = "insufficient_credits"


class PreconditionFailed(TansoError):
    """A prerequisite is missing (e.g. no Stripe key, capability not available)."""

    code = "precondition_failed"
    status = 400


class ConfirmationRequired(TansoError):
    code = "confirmation_required"
    status = 400

    def __init__(self, message: str, *, preview: Any = None):
        super().__init__(message)
        self.preview = preview


class PayloadTooLarge(TansoError):
    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(TansoError):
    code = "unsupported_media_type"
    status = 415


class HeadersTooLarge(TansoError):
    code = "headers_too_large"
    status = 431


class Unavailable(TansoError):
    """The database cannot be reached or used right now (refused or lost connection,
    pool exhausted, lock wait or serialization retries exhausted). Nothing was done; the
    same request may simply be sent again after ``retry_after`` seconds."""

    code = "unavailable"
    status = 503
    retry_after = 1

    def __init__(self, message: str = "the service is temporarily unavailable; retry shortly"):
        super().__init__(message)


class StripeApiError(TansoError):
    code = "stripe_api_error"
    status = 502


class IngestionFailed(TansoError):
    code = "ingestion_failed"
    status = 400


class ConfigError(Exception):
    """Bad configuration: raised at start-up, names the setting."""
