"""``POST /api/v1/webhooks/stripe/{environmentId}``: Stripe's callbacks. No API key:
the Stripe signature over the raw body is the authentication (checked by the provider
with the environment's signing secret). Answered as soon as the events are recorded;
they are processed in the background after the commit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import TansoError
from ...services import stripe_webhooks
from ..jsonio import dumps
from ..routing import envelope_error

if TYPE_CHECKING:
    from ...bootstrap import AppContext

PATH = "/api/v1/webhooks/stripe/{environmentId}"


def webhook_routes(ctx: AppContext) -> list[Route]:
    async def endpoint(request: Request) -> Response:
        body = await request.body()
        try:
            ids = await stripe_webhooks.receive(
                ctx, request.path_params["environmentId"], dict(request.headers), body
            )
        except TansoError as exc:
            return envelope_error(exc)
        stripe_webhooks.schedule(ctx, ids)
        return Response(
            dumps({"success": True, "data": {"received": True}}), media_type="application/json"
        )

    return [Route(PATH, endpoint, methods=["POST"])]
