"""Connecting an environment to Stripe: register the secret key, set the integration up
(webhook endpoint + STRIPE_DRIVEN mode), report the connection state.

The Stripe call of the setup (creating the webhook endpoint, which also proves the key
works) runs between two units of work, never inside one: read what is needed, commit,
call Stripe, then record the result in a second unit of work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Environment, Subscription
from ..errors import InvalidRequest, NotFound, PreconditionFailed, StripeApiError
from ..plugin.api import InvoicingProvider, PaymentProvider, ProviderError
from ..principal import Principal
from . import payments, stripe_secrets
from .outputs_stripe import StripeKeyOut, StripeSetupOut, StripeStatusOut
from .stripe_secrets import API_KEY, WEBHOOK_SECRET

if TYPE_CHECKING:
    from ..bootstrap import AppContext

PROVIDER = "stripe"
STRIPE_DRIVEN = "STRIPE_DRIVEN"
KEY_PREFIXES = {"test": "sk_test_", "live": "sk_live_"}
# restricted keys (rk_…) cannot create webhook endpoints; publishable ones (pk_…) are
# not secret keys at all


T = TypeVar("T")


async def required(s: AsyncSession, model: type[T], ident: str | None) -> T:
    """A row the caller's ids guarantee (foreign keys): NotFound if it vanished."""
    row = await s.get(model, ident) if ident is not None else None
    if row is None:
        raise NotFound(f"{model.__name__} {ident} not found")
    return row


def invoicing(provider: PaymentProvider) -> InvoicingProvider:
    """The provider as one that invoices itself (Stripe mode needs its methods)."""
    if not isinstance(provider, InvoicingProvider):
        raise PreconditionFailed(
            f"payment provider {provider.name!r} does not issue invoices itself"
        )
    return provider


def stripe_error(exc: ProviderError) -> StripeApiError:
    return StripeApiError(
        f"Stripe: {exc.message}", detail={"stripeCode": exc.code} if exc.code else None
    )


def webhook_url(ctx: AppContext, env_id: str) -> str:
    return f"{ctx.settings.public_base_url}/api/v1/webhooks/stripe/{env_id}"


def checkout_urls(ctx: AppContext, env: Environment) -> tuple[str, str]:
    own = (env.settings or {}).get("stripe") or {}
    base = ctx.settings.public_base_url
    success = (
        own.get("successUrl")
        or ctx.settings.stripe_checkout_success_url
        or f"{base}/checkout/success?session_id={{CHECKOUT_SESSION_ID}}"
    )
    cancel = (
        own.get("cancelUrl") or ctx.settings.stripe_checkout_cancel_url or f"{base}/checkout/cancel"
    )
    return success, cancel


def _check_url(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.startswith(("https://", "http://"))
        or len(value) > 2000
    ):
        raise InvalidRequest(f"{field} must be an http(s) URL", field=field)
    return value


def check_key(mode: str, key: Any, field: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidRequest(f"{field} is required", field=field)
    key = key.strip()
    want = KEY_PREFIXES[mode]
    other = KEY_PREFIXES["live" if mode == "test" else "test"]
    if key.startswith(other):
        raise InvalidRequest(
            f"this is the {mode} environment: it takes a {want}… key, not a {other}… key",
            field=field,
        )
    if (
        not key.startswith(want)
        or len(key) < len(want) + 4
        or len(key) > 255
        or any(c.isspace() for c in key)
    ):
        raise InvalidRequest(
            f"{field} must be a Stripe secret key starting with {want}", field=field
        )
    return key


async def register_key(
    ctx: AppContext,
    p: Principal,
    key: Any,
    *,
    field: str = "stripeApiKey",
    success_url: Any = None,
    cancel_url: Any = None,
) -> StripeKeyOut:
    key = check_key(p.mode, key, field)
    success_url = _check_url(success_url, "successUrl")
    cancel_url = _check_url(cancel_url, "cancelUrl")
    now = await ctx.now(p)
    async with ctx.db.unit_of_work() as s:
        replaced = API_KEY in await stripe_secrets.rows(s, p.environment_id)
        row = await stripe_secrets.put(ctx, s, p.environment_id, API_KEY, key, now)
        if success_url or cancel_url:
            env = await required(s, Environment, p.environment_id)
            settings = dict(env.settings or {})
            own = dict(settings.get("stripe") or {})
            if success_url:
                own["successUrl"] = success_url
            if cancel_url:
                own["cancelUrl"] = cancel_url
            settings["stripe"] = own
            env.settings = settings
        masked = row.masked
    payments.forget_provider(ctx, p.environment_id)
    return StripeKeyOut(
        success=True,
        message=("Stripe key replaced." if replaced else "Stripe key stored.")
        + " Next step: setupStripeIntegration.",
        maskedApiKey=masked,
        replaced=replaced,
    )


async def status(ctx: AppContext, p: Principal) -> StripeStatusOut:
    async with ctx.db.reader() as s:
        env = await required(s, Environment, p.environment_id)
        found = await stripe_secrets.rows(s, p.environment_id)
    key = found.get(API_KEY)
    hook = found.get(WEBHOOK_SECRET)
    enabled = env.payment_provider == PROVIDER
    success, cancel = checkout_urls(ctx, env)
    return StripeStatusOut(
        hasApiKey=key is not None,
        maskedApiKey=key.masked if key else None,
        hasWebhook=hook is not None,
        maskedWebhookSecret=hook.masked if hook else None,
        webhookEndpointId=hook.external_id if hook else None,
        webhookUrl=webhook_url(ctx, p.environment_id),
        stripeMode=env.stripe_mode,
        stripeEnabled=enabled,
        currency=env.currency,
        setupComplete=key is not None and hook is not None and enabled,
        checkoutSuccessUrl=success,
        checkoutCancelUrl=cancel,
    )


async def _active_native_subscriptions(s, env_id: str) -> int:
    return int(
        await s.scalar(
            select(func.count())
            .select_from(Subscription)
            .where(
                Subscription.environment_id == env_id,
                Subscription.ended_at.is_(None),
                Subscription.provider_subscription_id.is_(None),
            )
        )
        or 0
    )


async def _preconditions(
    ctx: AppContext, s: AsyncSession, p: Principal
) -> tuple[Environment, dict[str, Any]]:
    env = await required(s, Environment, p.environment_id)
    found = await stripe_secrets.rows(s, p.environment_id)
    if API_KEY not in found:
        raise PreconditionFailed(
            "no Stripe secret key is registered for this environment: call "
            "registerStripeApiKey first"
        )
    if env.payment_provider != PROVIDER:
        live = await _active_native_subscriptions(s, p.environment_id)
        if live:
            raise PreconditionFailed(
                f"this environment has {live} active subscription(s) billed natively; "
                "Stripe cannot take them over: cancel them (cancelSubscription) or "
                "recreate them in Stripe and import them (importStripeData) before "
                "switching to Stripe"
            )
    return env, found


async def _needs(ctx: AppContext, p: Principal, *, probe: bool) -> tuple[bool, bool, Any, Any]:
    """``(webhook needed, mode change needed, provider, stored webhook)``; ``probe``:
    ask Stripe whether the stored webhook endpoint is still there (and so prove the key
    works)."""
    async with ctx.db.reader() as s:
        env, found = await _preconditions(ctx, s, p)
        need_webhook = WEBHOOK_SECRET not in found
        need_mode = env.payment_provider != PROVIDER or env.stripe_mode != STRIPE_DRIVEN
        provider = invoicing(await payments.provider_for(ctx, s, p.environment_id, name=PROVIDER))
    hook = found.get(WEBHOOK_SECRET)
    if probe and hook is not None and hook.external_id:
        # still there (the key may now be another account's, or it was deleted)?
        try:
            ref = await provider.retrieve("webhook_endpoint", hook.external_id)
            url = webhook_url(ctx, p.environment_id)
            need_webhook = ref is None or getattr(ref, "url", url) != url
        except ProviderError as exc:
            if exc.status != 404:
                raise stripe_error(exc) from None
            need_webhook = True
    return need_webhook, need_mode, provider, hook


async def setup_preview(ctx: AppContext, p: Principal) -> dict[str, Any]:
    """What confirming the setup would do (no call to Stripe)."""
    need_webhook, need_mode, _, _ = await _needs(ctx, p, probe=False)
    url = webhook_url(ctx, p.environment_id)
    return {
        "dryRun": True,
        "webhookUrl": url,
        "wouldCreateWebhook": need_webhook,
        "wouldChangeMode": need_mode,
        "stripeModeAfter": STRIPE_DRIVEN,
        "effects": [
            *([f"create a Stripe webhook endpoint for {url}"] if need_webhook else []),
            *(
                [
                    "switch billing to STRIPE_DRIVEN: Stripe issues invoices and collects "
                    "payments; new customers are created in Stripe too"
                ]
                if need_mode
                else []
            ),
        ],
    }


async def setup(ctx: AppContext, p: Principal) -> StripeSetupOut:
    env_id = p.environment_id
    need_webhook, _, provider, hook = await _needs(ctx, p, probe=True)
    url = webhook_url(ctx, env_id)
    secret = endpoint_id = None
    if need_webhook:
        try:
            ref = await provider.create_webhook_endpoint(
                url, idempotency_key=f"webhook:{env_id}:{hook.external_id if hook else 0}"
            )
        except ProviderError as exc:
            raise stripe_error(exc) from None
        if ref is None or not ref.data.get("secret"):
            raise StripeApiError("Stripe did not return a webhook signing secret")
        secret, endpoint_id = str(ref.data["secret"]), ref.external_id
    now = await ctx.now(p)
    async with ctx.db.unit_of_work() as s:
        env, found = await _preconditions(ctx, s, p)  # again, as of this transaction
        webhook_created = False
        if secret is not None:
            await stripe_secrets.put(
                ctx, s, env_id, WEBHOOK_SECRET, secret, now, external_id=endpoint_id
            )
            webhook_created = True
        mode_changed = env.payment_provider != PROVIDER or env.stripe_mode != STRIPE_DRIVEN
        env.payment_provider = PROVIDER
        env.stripe_mode = STRIPE_DRIVEN
    payments.forget_provider(ctx, env_id)
    ctx.invalidate(env_id)
    return StripeSetupOut(
        success=True,
        message="Stripe integration is set up: Stripe now invoices and collects payments "
        "for this environment."
        if (webhook_created or mode_changed)
        else "Stripe integration was already set up; nothing changed.",
        webhookCreated=webhook_created,
        modeChanged=mode_changed,
        stripeMode=STRIPE_DRIVEN,
        webhookUrl=url,
    )
