"""How a payment provider reports a failed call to the core.

The core must know whether the backend did the work, because that decides what it
records and whether it may try again:

* :class:`ProviderRejected` — the backend answered and refused (bad input, unknown
  object, invalid key): nothing happened there. The core reports the error and records
  nothing half-done.
* :class:`OutcomeUnknown` — the call may or may not have taken effect (timeout,
  connection lost, the backend unreachable or answering 5xx). The core keeps the work
  *pending* and retries it later **with the same idempotency key**, so the backend
  applies it at most once.
* :class:`WebhookRejected` — a callback whose signature is missing or wrong: it is
  refused (HTTP 400) and nothing is stored.

Any other exception is a bug in the provider; the core treats it like
:class:`OutcomeUnknown` (it retries) and logs it.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of the errors a provider raises on purpose."""

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code


class ProviderRejected(ProviderError):
    """The backend refused the call; it did nothing."""


class OutcomeUnknown(ProviderError):
    """The call may have taken effect; retry it later with the same idempotency key."""


class WebhookRejected(ProviderError):
    """A callback that is not authentic (missing or bad signature)."""


__all__ = ["OutcomeUnknown", "ProviderError", "ProviderRejected", "WebhookRejected"]
