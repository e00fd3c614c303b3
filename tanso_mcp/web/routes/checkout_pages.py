"""The pages Stripe Checkout sends a customer back to when the environment set no
success or cancel URL of its own: plain static confirmations, no API key, nothing read
from the request (the session id Stripe appends is not echoed)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    "<title>{title}</title></head><body><h1>{title}</h1><p>{text}</p></body></html>"
)
SUCCESS = _PAGE.format(
    title="Payment received",
    text="Thank you. Your subscription starts as soon as Stripe confirms the payment. "
    "You can close this page.",
)
CANCEL = _PAGE.format(
    title="Payment cancelled", text="Nothing was charged. You can close this page."
)
PATHS = ("/checkout/success", "/checkout/cancel")


def checkout_routes() -> list[Route]:
    async def success(_: Request) -> HTMLResponse:
        return HTMLResponse(SUCCESS, headers={"Cache-Control": "no-store"})

    async def cancel(_: Request) -> HTMLResponse:
        return HTMLResponse(CANCEL, headers={"Cache-Control": "no-store"})

    return [
        Route(PATHS[0], success, methods=["GET"]),
        Route(PATHS[1], cancel, methods=["GET"]),
    ]
