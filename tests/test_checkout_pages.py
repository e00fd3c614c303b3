"""The default pages Stripe Checkout returns a customer to: served without an API key,
static (nothing from the request is echoed), never cached; other methods are refused."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("path", "title"),
    [("/checkout/success", "Payment received"), ("/checkout/cancel", "Payment cancelled")],
)
async def test_checkout_return_pages(client, path, title):
    r = await client.get(path, params={"session_id": "<script>alert(1)</script>"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert f"<h1>{title}</h1>" in r.text and "alert" not in r.text
    assert (await client.post(path)).status_code == 405
