"""`copyloop_client` against the real app (its `http` is the app's TestClient, an httpx.Client):
typed variants, deferred activation, events by either key, the original copy on every failure
(unknown product, API down, API too slow), retries that honour 429's Retry-After."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from copyloop_client import Client, Variant
from core.broker import free_port
from core.settings import Settings

Reader = Callable[..., list[tuple[int, bytes | None, bytes]]]
Headers = dict[str, dict[str, str]]


def _key(headers: Headers, role: str) -> str:
    return headers[role]["Authorization"].removeprefix("Bearer ")


def test_variant_activate_and_events(
    client: TestClient,
    product: Any,
    headers: Headers,
    api_settings: Settings,
    read_topic: Reader,
) -> None:
    copy = Client(
        "http://unused", _key(headers, "serve"), events_key=_key(headers, "events"), http=client
    )
    v = copy.variant(product.product_id, original="orig", defer=True, device="mobile", new=True)
    assert v.served and v.error is None
    assert v.variant_id in product.variant_ids
    assert v.activated is False and v.token
    assert copy.activate(v)
    assert copy.event(v, "purchase", value=19.5, event_id="p-1")
    # A publishable key alone: events go with the decision's token.
    shop = Client("http://unused", _key(headers, "storefront"), http=client)
    assert shop.event(v, "click", event_id="c-1")
    messages = [json.loads(m) for _, _, m in read_topic(api_settings.events_topic, expected=3)]
    assert [m["type"] for m in messages] == ["activation", "purchase", "click"]
    assert messages[1]["value"] == 19.5
    [(_, _, raw)] = [m for m in read_topic(api_settings.decisions_topic, expected=1)]
    assert json.loads(raw)["context"] == {"device": "mobile", "new": "true"}


def test_failures_give_the_original_copy_and_never_raise(
    client: TestClient, product: Any, headers: Headers
) -> None:
    copy = Client("http://unused", _key(headers, "serve"), http=client)
    missing = copy.variant("nope", original="The original.")
    assert missing == Variant("nope", "The original.", error=missing.error)
    assert missing.error is not None and "product_not_found" in missing.error
    assert not copy.activate(missing)
    assert not copy.event(missing, "click")
    # A serve key cannot post events (no events key given, no token accepted from it).
    served = copy.variant(product.product_id)
    refused = copy.event(served, "click")
    assert (refused.ok, refused.status) == (False, 403)

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for url in (
            f"http://127.0.0.1:{free_port()}",
            f"http://127.0.0.1:{silent.getsockname()[1]}",
        ):
            with Client(url, "cl_x", timeout_s=0.2, retries=1, backoff_s=0.01) as down:
                started = time.monotonic()
                v = down.variant("lamp-1", original="The original.", device="mobile")
                elapsed = time.monotonic() - started
                assert (v.text, v.served) == ("The original.", False), url
                assert v.error
                assert elapsed < 2.0  # two tries of 0.2 s, not a hung page
                assert not down.event(served, "click")
                assert not down.activate(served)
    finally:
        silent.close()


def test_a_rate_limited_call_waits_its_retry_after_and_succeeds(
    api_settings: Settings, product: Any, headers: Headers
) -> None:
    settings = api_settings.model_copy(
        update={"storefront_rate_per_s": 2.0, "storefront_burst": 1.0}
    )
    with TestClient(create_app(settings)) as app:
        shop = Client("http://unused", _key(headers, "storefront"), retries=1, http=app)
        first = shop.variant(product.product_id, original="o")
        second = shop.variant(product.product_id, original="o")  # 429, then Retry-After: 1
        assert first.served and second.served
        no_retry = Client("http://unused", _key(headers, "storefront"), retries=0, http=app)
        limited = no_retry.variant(product.product_id, original="o")
        assert not limited.served and "rate_limited" in (limited.error or "")


def test_html_attributes_mark_the_copy_for_the_snippet() -> None:
    v = Variant('a"b', "text", decision_id="d1", token="t<1>")
    assert v.html_attributes() == (
        'data-copyloop-product="a&quot;b" data-copyloop-decision="d1" '
        'data-copyloop-token="t&lt;1&gt;"'
    )
    assert Variant("p", "original").html_attributes() == 'data-copyloop-product="p"'


def test_a_product_id_holding_a_slash_is_served_through_the_client(
    client: TestClient, seed: Callable[..., Any], headers: Headers
) -> None:
    """The client sends `/` in a product id as `%2F`; the API finds the product."""
    sku = seed("AB-12/XL")
    copy = Client("http://unused", _key(headers, "serve"), http=client)
    v = copy.variant(sku.product_id, original="orig", device="mobile")
    assert v.served and v.error is None, v.error
    assert v.product_id == "AB-12/XL" and v.variant_id in sku.variant_ids
